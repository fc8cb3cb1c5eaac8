"""Asynchronous ADMM consensus on per-sample log policy ratios (MATRPO).

001_8ff130c17487d6e3.txt (MATRPO) sec. IV-B/C eqs. (9)-(17), sec. V eqs.
(20)-(22), Algorithm 1, Appendix B eqs. (39)-(63).

Each undirected communication link ``e = (i, j)`` carries, for both endpoints
``q in N(e) = {i, j}`` and every policy component ``n``, an estimator
``z_e^{qn}`` and a dual ``y_e^{qn}`` (one value per sample, ``R^M``). The
linearised consensus constraints of eq. (15) with log-ratios (eq. 20) are

.. math::

    C_e^q J^{qn} (\\theta^q - \\theta^q_{old}) = z_e^{qn}, \\qquad
    z_e^{in} + z_e^{jn} = 0,

i.e. ``J^{in} x^i = J^{jn} x^j``: both ends agree on every sampled log-ratio.
Activating a link (eq. 22 = eq. 40) updates, for ``q in {i, j}``:

.. math::

    V^q &= \\tfrac1M \\sum_n J^{qnT} \\big(A^q - \\sum_{e \\in E(q)} C_e^q y_e^{qn}
           + \\beta \\sum_{e \\in E(q)} C_e^q z_e^{qn}\\big), \\\\
    \\theta^q &\\leftarrow \\theta^q_{old}
           + \\sqrt{\\tfrac{2\\delta/N}{V^T \\bar H^{q-1} V}}\\, \\bar H^{q-1} V, \\\\
    \\nu_e^n &= \\tfrac12 \\sum_{q \\in N(e)} [y_e^{qn} + \\beta C_e^q J^{qn} x^q], \\quad
    z_e^{qn} \\leftarrow \\tfrac1\\beta (y_e^{qn} - \\nu_e^n) + C_e^q J^{qn} x^q, \\quad
    y_e^{qn} \\leftarrow \\nu_e^n.

Decisions where the paper leaves room (each repeated where it applies):

* ``C_e^q``: ``+1`` for the lower agent id of a link, ``-1`` for the higher one.
* Initial ``z = y = 0`` (Algorithm 1 only says "initial"): ``x = 0`` gives
  zero log-ratios, so ``z = 0`` satisfies the constraints at ``theta_old``; and
  both are per-sample variables of *this* batch, so they restart every
  policy iteration (nothing to checkpoint).
* The trust-region metric ``H^q`` of the primal step (``metric``). The closed
  form (eqs. 47-51) is the minimiser of eq. (42) only when ``H^q`` equals the
  penalty's ``G^q = 1/M sum_n J^{qnT} J^{qn}`` (eq. 46, which equates the two
  as ``M -> inf``); otherwise it maximises ``V^T x`` on the ellipsoid, i.e. it
  drops the penalty's curvature ``|E(q)| beta/2 x^T G^q x``, which is not
  constant on the ``H^q`` ellipsoid. ``metric="kl"`` (the paper's ``H``, the
  true-KL Hessian, also the public code's) keeps that approximation: the
  iteration is then not ADMM on a fixed convex problem, and on finite batches
  its residual stalls or oscillates (growing with ``beta``).
  ``metric="gauss_newton"`` takes ``H^q = G^q + damping I``; the damping is
  matched by the proximal term ``|E(q)| beta damping/2 ||x - x^{q(k)}||^2``
  (zero at a fixed point), so the primal step is the closed form with
  ``V^q + |E(q)| beta damping x^{q(k)}`` and, with ``exact_kkt``, the exact
  minimiser: proximal ADMM on a convex problem, which converges for any
  ``beta > 0`` (up to the CG accuracy). ``metric="kl_exact"`` keeps the
  paper's true-KL ``H^q`` and solves eq. (42) itself: ``(lambda H^q + |E(q)|
  beta G^q) x = V^q`` with the trust-region multiplier ``lambda >= 0`` carried
  per agent and updated after every primal step (``_kl_exact_step``), so the
  iteration's fixed point is the consensus optimum of eq. (21) with the
  paper's KL trust regions (tested against a dense oracle). The true KL bound
  is enforced by the line search after the ADMM in every metric.
* The closed form (eq. 50-51) always lands on the trust-region boundary; it
  silently assumes ``lambda* = sqrt(V^T H^-1 V / (2 delta/N)) - |E(q)| beta >= 0``.
  ``exact_kkt=True`` clips ``lambda*`` at 0 (step ``H^-1 V / (|E(q)| beta)``
  when that is inside the region), which is the exact minimiser of eq. (42)
  under the same ``H`` substitution. Default: the paper's formula.
* z and y updates and the residuals use the linearised log-ratios
  ``J x`` (as eq. 22 does), not re-evaluated policies.
* Synchronous mode is Jacobi: every agent's primal step from the same
  ``z^(k), y^(k)``, then every link's z/y update.
* A failed link (``link_failure_prob``) makes its activation a no-op that
  still counts as an iteration (asynchronous), or skips its z/y update
  (synchronous).
* Residuals, per link: primal ``RMS_{m,n}(J^{in} x^i - J^{jn} x^j)``, the
  disagreement of the two ends' log-ratios; dual ``beta * RMS(z_e^{new} -
  z_e^{old})`` at the link's last update (Boyd et al.'s ``s = beta A^T B dz``
  measured in log-ratio space, which keeps it matrix free).

Shapes: ``n`` agents, ``L`` links, ``M`` samples, ``K`` policy components,
``D`` parameters per agent; ``z, y`` are ``(L, 2, M, K)`` (endpoint 0 = ``i``,
endpoint 1 = ``j``). No BenchMARL or TorchRL import.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from benchmarl_decentral.distributed.transport import CommCounter, InProcessTransport, Transport
from benchmarl_decentral.objectives.trust_region import (
    Linearisation,
    NaturalStep,
    _check_delta,
    _check_rtol,
    boundary_scale,
    cg_iterations,
    natural_step,
)

__all__ = [
    "ADMM_METRICS",
    "ADMM_MODES",
    "AdmmState",
    "activate_link",
    "canonical_links",
    "consensus_gradient",
    "dual_update",
    "init_state",
    "link_signs",
    "links_from_adjacency",
    "link_converged",
    "measured_links",
    "per_agent_relative_residuals",
    "per_agent_residuals",
    "primal_residual",
    "relative_residuals",
    "primal_step",
    "run_admm",
    "select_link",
    "synchronous_iteration",
]

ADMM_MODES: tuple[str, ...] = ("random", "round_robin", "synchronous")
#: Trust-region metric of the primal step (:func:`primal_step`): ``kl`` the Hessian of the true
#: sample-average KL (eq. 14), ``gauss_newton`` the empirical Fisher ``1/M sum_n J^T J`` (eq. 46),
#: ``kl_exact`` the true-KL Hessian with the penalty's curvature kept (the exact minimiser of eq. 42).
ADMM_METRICS: tuple[str, ...] = ("kl", "gauss_newton", "kl_exact")


# ------------------------------------------------------------------------- links


def _check_metric(metric: str) -> None:
    if metric not in ADMM_METRICS:
        raise ValueError(
            f"metric must be one of {ADMM_METRICS}, got {metric!r}; 'kl' is the paper's closed form with the "
            "true-KL Hessian, 'gauss_newton' makes that closed form the exact minimiser of eq. (42), 'kl_exact' "
            "solves eq. (42) exactly with the true-KL Hessian"
        )


def _check_beta(beta: float) -> None:
    if not beta > 0:
        raise ValueError(
            f"beta must be > 0, got beta={beta}; it is the ADMM penalty parameter of eq. (11) "
            "(Table III uses 1.0 or 5.0)"
        )


def canonical_links(edges: Tensor | Sequence[Sequence[int]], n_agents: int | None = None) -> Tensor:
    """001 sec. IV-B: undirected links ``e = (i, j)`` as a ``(L, 2)`` long tensor with ``i < j``.

    Accepts pairs in any order and direction (``(i, j)`` and ``(j, i)`` are one
    link), removes duplicates and sorts. Self loops are rejected.

    Args:
        edges: ``(L, 2)`` pairs (tensor or list); use :func:`links_from_adjacency`
            for the package's ``(n, n)`` bool adjacency.
        n_agents: if given, ids must lie in ``[0, n_agents)``. (default: None)

    Returns:
        ``(L, 2)`` long tensor.
    """
    e = torch.as_tensor(edges, dtype=torch.long)
    if e.numel() == 0:
        return torch.zeros(0, 2, dtype=torch.long)
    if e.dim() != 2 or e.shape[1] != 2:
        raise ValueError(
            f"edges must be (L, 2) pairs (i, j), got shape {tuple(e.shape)}; for a (2, E) "
            "edge_index pass edge_index.T, for an adjacency use links_from_adjacency"
        )
    if (e[:, 0] == e[:, 1]).any():
        raise ValueError("edges contain a self loop (i, i); a communication link joins two different agents")
    if (e < 0).any() or (n_agents is not None and (e >= n_agents).any()):
        raise ValueError(f"edges have agent ids outside [0, {n_agents}); pass links between existing agents")
    e, _ = torch.sort(e, dim=1)
    return torch.unique(e, dim=0)


def links_from_adjacency(adj: Tensor) -> Tensor:
    """Undirected links of a ``(n, n)`` adjacency (``consensus.topology`` convention): ``(L, 2)``.

    A pair is linked if either direction is present (ADMM links are two-way).
    """
    if adj.dim() != 2 or adj.shape[0] != adj.shape[1]:
        raise ValueError(f"adjacency must be (n, n), got shape {tuple(adj.shape)}")
    a = adj.bool()
    a = (a | a.T).triu(1)
    return canonical_links(a.nonzero(), adj.shape[0])


def link_signs(dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> Tensor:
    """001 eq. (10): ``C_e^q`` for the two ends ``(i, j)`` of a link, ``(+1, -1)`` (``C^i + C^j = 0``)."""
    return torch.tensor([1.0, -1.0], dtype=dtype, device=device)


# ------------------------------------------------------------------------- state


@dataclass
class AdmmState:
    """ADMM variables of one policy iteration (001 eq. 21), batched over links and agents.

    Attributes:
        links: ``(L, 2)`` undirected links ``(i, j)``, ``i < j``.
        z: estimators ``z_e^{qn}``, ``(L, 2, M, K)``.
        y: duals ``y_e^{qn}``, ``(L, 2, M, K)``.
        x: primal ``theta^q - theta^q_old``, ``(n, D)``.
        Jx: linearised log-ratios ``J^{qn} x^q``, ``(n, M, K)``.
        direction: last CG solution ``H^{-1} V`` per agent (warm start), ``(n, D)``.
        scale: last step scale ``sqrt(2 delta/N / V^T H^-1 V)`` per agent, ``(n,)``.
        dual_residual: per link, at its last update, ``(L,)``.
        dz_rms: per link, ``RMS(z_e^{new} - z_e^{old})`` at its last update
            (the dual residual without ``beta``), ``(L,)``.
        converged: per link, whether its own stop test (``tol`` of
            :func:`run_admm`) held at its last check and neither endpoint has
            moved since, ``(L,)`` bool.
        agent_updates: primal updates per agent, ``(n,)``.
        cg_iterations: conjugate-gradient iterations per agent over its primal steps, ``(n,)``.
        jdirection: ``J direction`` of the agents whose last step was a
            ``gauss_newton`` one (the warm start's image, so that the next step
            needs no product for it), ``(n, M, K)``; ``gn_warm`` marks those agents, ``(n,)`` bool.
        multiplier: the trust-region multiplier ``lambda^q`` of each agent's last
            ``kl_exact`` step, carried to its next one (NaN: none yet), ``(n,)``.
        link_updates: z/y updates per link, ``(L,)``.
        link_failures: link activations lost to ``link_failure_prob``
            (the link was picked but did not go through).
        iteration: ADMM iterations done (failed activations included).
        history: ``max_e`` primal residual after every iteration.
        comm: what the agents held here sent over the links (one ``(M, K)``
            value per link end and z/y update;
            :class:`~benchmarl_decentral.distributed.CommCounter`).
    """

    links: Tensor
    z: Tensor
    y: Tensor
    x: Tensor
    Jx: Tensor
    direction: Tensor
    scale: Tensor
    dual_residual: Tensor
    agent_updates: Tensor
    link_updates: Tensor
    iteration: int = 0
    history: list[float] = field(default_factory=list)
    dz_rms: Tensor | None = None
    converged: Tensor | None = None
    cg_iterations: Tensor | None = None
    jdirection: Tensor | None = None
    gn_warm: Tensor | None = None
    multiplier: Tensor | None = None
    link_failures: int = 0
    comm: CommCounter = field(default_factory=CommCounter)

    def __post_init__(self) -> None:
        if self.dz_rms is None:
            self.dz_rms = torch.zeros_like(self.dual_residual)
        if self.converged is None:
            self.converged = torch.zeros(self.links.shape[0], dtype=torch.bool, device=self.links.device)
        if self.cg_iterations is None:
            self.cg_iterations = torch.zeros_like(self.agent_updates)
        if self.jdirection is None:
            self.jdirection = torch.zeros_like(self.Jx)
        if self.gn_warm is None:
            self.gn_warm = torch.zeros(self.x.shape[0], dtype=torch.bool, device=self.x.device)
        if self.multiplier is None:
            self.multiplier = torch.full_like(self.scale, float("nan"))

    @property
    def n_agents(self) -> int:
        return self.x.shape[0]

    @property
    def n_links(self) -> int:
        return self.links.shape[0]


def init_state(
    edges: Tensor | Sequence[Sequence[int]],
    n_samples: int,
    *,
    n_params: int,
    n_agents: int | None = None,
    n_components: int = 1,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> AdmmState:
    """001 Algorithm 1 ("initial estimators z^(0) and dual variables y^(0)"): all zeros.

    ``z = 0`` is the log-ratio of ``theta_old`` itself, so the constraints of
    eq. (15) hold at the start; ``y = 0`` is the usual ADMM start.

    Args:
        edges: ``(L, 2)`` link pairs (see :func:`canonical_links`).
        n_samples: ``M``.
        n_params: ``D``, parameters per agent.
        n_agents: ``n``; inferred as ``max id + 1`` when omitted. (default: None)
        n_components: ``K``, policy components per sample. (default: 1)
        dtype: floating dtype. (default: torch default)
        device: device. (default: None)

    Returns:
        A fresh :class:`AdmmState`.
    """
    links = canonical_links(edges, n_agents)
    if n_agents is None:
        n_agents = int(links.max()) + 1 if links.numel() else 1
    if n_samples < 1 or n_params < 1 or n_components < 1 or n_agents < 1:
        raise ValueError(
            f"need n_samples, n_params, n_components, n_agents >= 1, got {n_samples}, {n_params}, "
            f"{n_components}, {n_agents}"
        )
    dtype = dtype or torch.get_default_dtype()
    links = links.to(device)
    L = links.shape[0]
    zeros = dict(dtype=dtype, device=device)
    return AdmmState(
        links=links,
        z=torch.zeros(L, 2, n_samples, n_components, **zeros),
        y=torch.zeros(L, 2, n_samples, n_components, **zeros),
        x=torch.zeros(n_agents, n_params, **zeros),
        Jx=torch.zeros(n_agents, n_samples, n_components, **zeros),
        direction=torch.zeros(n_agents, n_params, **zeros),
        scale=torch.zeros(n_agents, **zeros),
        dual_residual=torch.zeros(L, **zeros),
        agent_updates=torch.zeros(n_agents, dtype=torch.long, device=device),
        link_updates=torch.zeros(L, dtype=torch.long, device=device),
    )


def _check_state(lin: Linearisation, state: AdmmState, advantages: Tensor) -> None:
    want = (lin.n_agents, lin.n_params)
    if tuple(state.x.shape) != want or tuple(state.z.shape[2:]) != (lin.n_samples, lin.n_components):
        raise ValueError(
            f"ADMM state (x {tuple(state.x.shape)}, z {tuple(state.z.shape)}) does not match the "
            f"linearisation (n={lin.n_agents}, D={lin.n_params}, M={lin.n_samples}, "
            f"K={lin.n_components}); build it with init_state(..., n_params=lin.n_params, "
            "n_agents=lin.n_agents, n_components=lin.n_components)"
        )
    if tuple(advantages.shape) != (lin.n_agents, lin.n_samples):
        raise ValueError(
            f"advantages must be (n, M) = ({lin.n_agents}, {lin.n_samples}) (one private advantage "
            f"per agent and sample), got {tuple(advantages.shape)}"
        )


# ---------------------------------------------------------------------- updates


def consensus_gradient(
    lin: Linearisation,
    state: AdmmState,
    advantages: Tensor,
    *,
    beta: float,
    agents: Tensor | None = None,
) -> Tensor:
    """001 eq. (22) / (40): the ``V^q`` of the closed-form primal step, for the requested agents.

    ``V^q = 1/M sum_n J^{qnT} (A^q - sum_e C_e^q y_e^{qn} + beta sum_e C_e^q z_e^{qn})``.

    The sums run over the links ``E(q)`` at agent ``q``; they are one
    ``index_add`` over all links, then one vjp for the requested agents.

    Args:
        lin: the agents' linearisation at ``theta_old``.
        state: current ADMM variables.
        advantages: private advantages ``A^q``, ``(n, M)``.
        beta: ADMM penalty, > 0.
        agents: agent ids to compute ``V`` for. (default: all)

    Returns:
        ``V`` of shape ``(|agents|, D)``.
    """
    _check_beta(beta)
    return lin.vjp(_consensus_weights(state, advantages, beta, agents), agents) / lin.n_samples


def _consensus_weights(state: AdmmState, advantages: Tensor, beta: float, agents: Tensor | None) -> Tensor:
    """The per-sample weights of eq. (22)'s ``V^q = 1/M J^{qT} u^q``: ``u^q = A^q - sum_e C_e^q (y_e^q - beta z_e^q)``."""
    C = link_signs(state.z.dtype, state.z.device)[None, :, None, None]
    contrib = C * (beta * state.z - state.y)  # (L, 2, M, K)
    u = advantages.to(state.z)[..., None].expand_as(state.Jx).clone()
    if state.n_links:
        u.index_add_(0, state.links.reshape(-1), contrib.reshape(-1, *contrib.shape[2:]))
    return u if agents is None else u[agents]


def primal_step(
    lin: Linearisation,
    state: AdmmState,
    advantages: Tensor,
    agents: Tensor | None = None,
    *,
    delta: float,
    beta: float,
    cg_iters: int = 10,
    residual_tol: float = 1e-10,
    cg_rtol: float = 0.0,
    exact_kkt: bool = False,
    metric: str = "kl",
) -> NaturalStep:
    """001 eq. (22) / (40), (52): the closed-form ``theta^q`` update of the activated agents.

    ``theta^q = theta^q_old + sqrt(2 delta/N / (V^T H^{q-1} V)) H^{q-1} V`` with
    ``V`` from :func:`consensus_gradient`, ``H^{-1} V`` by CG on ``H`` of
    ``metric`` (warm-started from the agent's previous solution), batched over
    ``agents``. Writes ``x``, ``J x``, ``direction`` and ``scale`` of those
    agents into ``state``; ``z`` and ``y`` are left to :func:`dual_update`.

    Args:
        lin: linearisation at ``theta_old``.
        state: ADMM variables (updated in place).
        advantages: ``(n, M)``.
        agents: ids of the activated agents. (default: all)
        delta: per-agent KL bound ``delta/N`` (> 0).
        beta: ADMM penalty (> 0).
        cg_iters: CG iterations. (default: 10)
        residual_tol: CG squared-residual tolerance. (default: 1e-10)
        cg_rtol: stop an agent's CG once its residual is ``cg_rtol`` times that of
            the warm start (the agent's previous solution), in ``[0, 1)``; 0: off
            (``cg_iters`` iterations). Every primal step then shrinks the residual of
            the (slowly changing) system by that factor, so the iteration keeps the
            fixed point of exact solves (:func:`~benchmarl_decentral.objectives.trust_region.conjugate_gradient`).
            (default: 0)
        exact_kkt: clip the trust-region multiplier at 0 (module docstring);
            ``False`` is the paper's always-on-the-boundary step. (default: False)
        metric: ``"kl_exact"``: the exact minimiser of eq. (42) with the true-KL ``H^q``
            (``_kl_exact_step``; the agent's first step of a policy iteration is the closed
            form, ``exact_kkt`` has no effect: the multiplier is never negative);
            ``"kl"``: ``H^q`` is the true-KL Hessian (:meth:`Linearisation.fvp`),
            the closed form is then only approximately the minimiser of eq. (42);
            ``"gauss_newton"``: ``H^q`` is ``G^q + damping I`` with ``G^q = 1/M
            sum_n J^{qnT} J^{qn}`` (:meth:`Linearisation.gnvp`), the matrix of the
            penalty, and ``V^q`` gets the proximal term ``|E(q)| beta damping x^q``
            (module docstring): with ``exact_kkt`` the step is then the exact
            minimiser. (default: "kl")

    Returns:
        The :class:`~benchmarl_decentral.objectives.trust_region.NaturalStep` of ``agents``.
    """
    _check_delta(delta)
    _check_beta(beta)
    _check_metric(metric)
    _check_state(lin, state, advantages)
    idx = slice(None) if agents is None else agents
    with torch.no_grad():
        x0 = state.direction[idx]
        degree = torch.bincount(state.links.reshape(-1), minlength=state.n_agents).to(x0)[idx]
        max_scale = None
        if exact_kkt:
            # lambda* + |E(q)| beta >= |E(q)| beta  <=>  scale <= 1 / (|E(q)| beta)
            max_scale = torch.where(degree > 0, 1.0 / (beta * degree.clamp(min=1)),
                                    torch.full_like(degree, float("inf")))
        counts = torch.zeros(x0.shape[0], dtype=torch.long, device=x0.device)
        if metric == "kl_exact":
            nat, Jx = _kl_exact_step(lin, state, advantages, agents, degree, delta=delta, beta=beta,
                                     cg_iters=cg_iters, residual_tol=residual_tol, cg_rtol=cg_rtol, counts=counts)
            state.gn_warm[idx] = False
        elif metric == "gauss_newton":
            nat, Jd = _gauss_newton_step(lin, state, advantages, agents, degree, delta=delta, beta=beta,
                                         cg_iters=cg_iters, residual_tol=residual_tol, cg_rtol=cg_rtol,
                                         max_scale=max_scale, counts=counts)
            Jx = nat.scale[:, None, None] * Jd
            state.jdirection[idx] = Jd
            state.gn_warm[idx] = True
        else:
            nat, Jx = _closed_form_step(lin, state, advantages, agents, delta=delta, beta=beta, cg_iters=cg_iters,
                                        residual_tol=residual_tol, cg_rtol=cg_rtol, max_scale=max_scale,
                                        counts=counts)
            state.gn_warm[idx] = False
        state.x[idx] = nat.step
        state.direction[idx] = nat.direction
        state.scale[idx] = nat.scale
        state.Jx[idx] = Jx
        state.agent_updates[idx] += 1
        state.cg_iterations[idx] += counts.to(state.cg_iterations.device)
    return nat


def _closed_form_step(lin: Linearisation, state: AdmmState, advantages: Tensor, agents: Tensor | None, *,
                      delta: float, beta: float, cg_iters: int, residual_tol: float, cg_rtol: float,
                      max_scale: Tensor | None, counts: Tensor) -> tuple[NaturalStep, Tensor]:
    """The paper's closed-form primal step with the true-KL ``H`` (eqs. 22, 51), CG warm-started at the agents'
    previous direction; returns it and its ``J x`` (the ``metric="kl"`` step, and ``kl_exact``'s first one)."""
    V = consensus_gradient(lin, state, advantages, beta=beta, agents=agents)
    x0 = state.direction[slice(None) if agents is None else agents]
    nat = natural_step(lin.fvp(agents), V, delta=delta, cg_iters=cg_iters, residual_tol=residual_tol, x0=x0,
                       max_scale=max_scale, cg_rtol=cg_rtol, cg_counts=counts)
    return nat, lin.jvp(nat.step, agents)


def _gauss_newton_step(lin: Linearisation, state: AdmmState, advantages: Tensor, agents: Tensor | None,
                       degree: Tensor, *, delta: float, beta: float, cg_iters: int, residual_tol: float,
                       cg_rtol: float, max_scale: Tensor | None,
                       counts: Tensor) -> tuple[NaturalStep, Tensor]:
    """The ``metric="gauss_newton"`` primal step of :func:`primal_step`; returns it and ``J d`` of its direction ``d``.

    eq. (44) with ``H^q = G^q + eps I``: ``(lambda (G + eps I) + c G) x = V``, ``c = |E(q)| beta``. The
    proximal term ``c eps / 2 ||x - x^(k)||^2`` turns it into ``(lambda + c)(G + eps I) x = V + c eps x^(k)``,
    the closed form of eq. (47) with ``V' = V + c eps x^(k)``; it vanishes at the fixed point. ``d = (G + eps
    I)^{-1} V'`` by CG warm-started at the agent's previous ``d_0`` (same result as :func:`natural_step`, fewer
    products): every product ``G p = J^T (J p) / M`` computes ``J p``, so CG carries ``J d`` along
    (:func:`~benchmarl_decentral.objectives.trust_region.cg_iterations`), the start's residual
    ``V' - (G + eps I) d_0 = J^T (u - J d_0) / M + c eps x^(k) - eps d_0`` is one vjp (``V = J^T u / M``,
    :func:`consensus_gradient`; ``J d_0`` kept from the previous step), and ``V'^T d = d^T (G + eps I) d =
    ||J d||^2 / M + eps ||d||^2`` needs no product either.
    """
    idx = slice(None) if agents is None else agents
    M, eps = lin.n_samples, lin.damping
    d0 = state.direction[idx]
    warm = state.gn_warm[idx]
    Jd0 = state.jdirection[idx]
    if not bool(warm.all()):  # first step, or the last one was a "kl" step: J d_0 by one jvp
        Jd0 = torch.where(warm[:, None, None], Jd0, lin.jvp(d0, agents))
    u = _consensus_weights(state, advantages, beta, agents)
    x_prev = state.x[idx]
    r0 = lin.vjp(u - Jd0, agents) / M + (beta * eps) * degree[:, None] * x_prev - eps * d0

    def avp(p: Tensor) -> tuple[Tensor, Tensor]:
        Jp = lin.jvp(p, agents)
        return lin.vjp(Jp, agents) / M + eps * p, Jp

    d, _, Jd = cg_iterations(avp, d0.clone(), r0, cg_iters, residual_tol, rtol=cg_rtol, counts=counts,
                             aux=Jd0.clone())
    quad = Jd.pow(2).flatten(1).sum(1) / M + eps * d.pow(2).sum(1)
    scale = boundary_scale(quad, delta, max_scale)
    return NaturalStep(step=scale[:, None] * d, direction=d, quad=quad, scale=scale), Jd


def _kl_exact_step(lin: Linearisation, state: AdmmState, advantages: Tensor, agents: Tensor | None,
                   degree: Tensor, *, delta: float, beta: float, cg_iters: int, residual_tol: float,
                   cg_rtol: float, counts: Tensor) -> tuple[NaturalStep, Tensor]:
    """The ``metric="kl_exact"`` primal step of :func:`primal_step`; returns it and ``J x`` of the step.

    eq. (42) minimised with the paper's metric: its KKT conditions (eq. 44) with ``H^q`` the damped true-KL
    Hessian (eq. 14) *and* the penalty's own curvature ``c G^q`` kept (``c = |E(q)| beta``, ``G^q = 1/M
    sum_n J^{qnT} J^{qn}``, eq. 46), which the closed form of eqs. (47)-(51) drops:

    ``(lambda H + c (G + eps I)) x = V + c eps x^(k)``, ``lambda >= 0``, ``1/2 x^T H x <= delta``,
    ``lambda (1/2 x^T H x - delta) = 0``

    (the damping of ``G`` matched by the proximal term ``c eps / 2 ||x - x^(k)||^2``, zero at a fixed point,
    as in the ``gauss_newton`` step). For a given ``lambda`` that is one SPD solve: CG warm-started at the
    agent's previous step; each product computes ``J p`` and ``H p``, so CG carries ``J x`` and ``H x`` along
    and neither the residuals nor ``x^T H x`` need another product.

    The multiplier is found along the ADMM iterations, one update per primal step, not by a search per step:
    an agent's first step of a policy iteration is the paper's closed form (eq. 51, ``x = H^-1 V / mu``, ``mu
    = sqrt(V^T H^-1 V / 2 delta)``, on the boundary); after every step, with ``gamma = x^T (G + eps I) x / x^T
    H x`` the ratio of the two curvatures along the step,

    ``lambda <- max(0, (lambda + c gamma) sqrt(x^T H x / 2 delta) - c gamma)``

    for the agent's next step: Newton's step on ``1 / sqrt(x^T H x) = 1 / sqrt(2 delta)`` for a step along
    one generalised eigenvector of ``(G, H)``, where ``x^T H x`` is proportional to ``(lambda + c gamma)^-2``
    (so exact when ``G = H`` and for an agent without links, ``c = 0``). Its fixed points are the KKT points
    above: ``x^T H x = 2 delta`` with ``lambda > 0``, or ``lambda = 0`` with the step inside the region. So the
    ADMM's fixed point is the exact one of eq. (21) with the true-KL trust region; between fixed points a step
    can leave the region (the true KL is enforced by the line search after the ADMM in every metric).
    """
    ids = torch.arange(state.n_agents, device=state.x.device) if agents is None else agents
    M, eps = lin.n_samples, lin.damping
    c = beta * degree
    lam = state.multiplier[ids]
    first = torch.isnan(lam)
    x = torch.empty_like(state.x[ids])
    Jx = torch.empty_like(state.Jx[ids])
    mu = torch.empty_like(lam)  # lambda + c gamma of the closed form's steps
    quad = torch.empty_like(lam)  # x^T H x of the step taken
    if bool(first.any()):  # the paper's closed form (eq. 51)
        sub, n_cg = ids[first], torch.zeros(int(first.sum()), dtype=counts.dtype, device=counts.device)
        nat, Jx[first] = _closed_form_step(lin, state, advantages, sub, delta=delta, beta=beta, cg_iters=cg_iters,
                                           residual_tol=residual_tol, cg_rtol=cg_rtol, max_scale=None, counts=n_cg)
        counts[first] += n_cg
        x[first] = nat.step
        pos = nat.scale > 0
        mu[first] = torch.where(pos, 1.0 / torch.where(pos, nat.scale, torch.ones_like(nat.scale)),
                                torch.zeros_like(nat.scale))
        quad[first] = nat.scale.pow(2) * nat.quad
    rest = ~first
    if bool(rest.any()):
        sub, n_cg = ids[rest], torch.zeros(int(rest.sum()), dtype=counts.dtype, device=counts.device)
        lam_s, c_s = lam[rest], c[rest]
        fvp = lin.fvp(sub)
        x0, Jx0 = state.x[sub], state.Jx[sub]
        Hx0 = fvp(x0)
        u = _consensus_weights(state, advantages, beta, sub)
        r0 = lin.vjp(u - c_s[:, None, None] * Jx0, sub) / M - lam_s[:, None] * Hx0
        mk = Jx0[0].numel()

        def avp(p: Tensor) -> tuple[Tensor, Tensor]:
            Jp, Hp = lin.jvp(p, sub), fvp(p)
            Ap = lam_s[:, None] * Hp + c_s[:, None] * (lin.vjp(Jp, sub) / M + eps * p)
            return Ap, torch.cat([Jp.flatten(1), Hp], dim=1)

        xs, _, images = cg_iterations(avp, x0.clone(), r0, cg_iters, residual_tol, rtol=cg_rtol, counts=n_cg,
                                      aux=torch.cat([Jx0.flatten(1), Hx0], dim=1))
        counts[rest] += n_cg
        x[rest], Jx[rest] = xs, images[:, :mk].reshape(Jx0.shape)
        quad[rest] = (xs * images[:, mk:]).sum(1)
    # gamma = x^T (G + eps I) x / x^T H x along the step taken
    pos = quad > 0
    gquad = Jx.pow(2).flatten(1).sum(1) / M + eps * x.pow(2).sum(1)
    gamma = torch.where(pos, gquad / torch.where(pos, quad, torch.ones_like(quad)), torch.ones_like(quad))
    mu = torch.where(first, mu, lam + c * gamma)  # lambda + c gamma of the step taken
    delta_t = torch.as_tensor(delta, dtype=quad.dtype, device=quad.device)
    lam_next = (mu * torch.sqrt(quad.clamp(min=0) / (2 * delta_t)) - c * gamma).clamp(min=0)
    state.multiplier[ids] = torch.where(pos, lam_next, torch.where(first, torch.zeros_like(lam), lam))
    scale = torch.ones_like(quad)
    return NaturalStep(step=x, direction=x, quad=quad, scale=scale), Jx


def dual_update(state: AdmmState, link_ids: Tensor, *, beta: float, transport: Transport | None = None,
                idle: Tensor | None = None) -> AdmmState:
    """001 eq. (22) / (40), (60)-(63): z and y of the links ``link_ids`` from the agents' current ``J x``.

    ``nu_e^n = 1/2 sum_q [y_e^{qn} + beta C_e^q J^{qn} x^q]``,
    ``z_e^{qn} = (y_e^{qn} - nu_e^n) / beta + C_e^q J^{qn} x^q``, ``y_e^{qn} = nu_e^n``.
    Equivalently ``z_e^{in} = -z_e^{jn}`` is the link's average log-ratio (when
    the two ends' duals agree) and ``y`` ascends on the disagreement,
    ``y + beta/2 (J^i x^i - J^j x^j)``. Updates ``state`` in place and returns it.

    The only quantity that crosses a link is each end's
    ``u_e^{qn} = y_e^{qn} + beta C_e^q J^{qn} x^q`` (one ``(M, K)`` value):
    ``transport.exchange_link_ends`` carries it (in one process, the
    :class:`~benchmarl_decentral.distributed.InProcessTransport`, nothing
    moves), and each end updates its own ``z``, ``y`` from ``nu``. With a
    distributed transport, ``state`` holds valid ``J x``, ``z``, ``y`` for the
    agents (link ends) of this process only, and only those are updated; links
    with no end here are skipped. Bytes sent go to ``state.comm``.

    The far end's ``J x`` (a link to an agent of another process) is
    recovered from the value it sent, ``C (u - y) / beta`` (both ends hold the
    same ``y``), and written into its row of ``state.Jx``, so the residuals of
    the links at this process's agents (:func:`primal_residual`,
    :func:`relative_residuals`) read what one process would, up to rounding.

    Args:
        transport: how the link ends reach each other. (default: in one process)
        idle: bool ``(len(link_ids),)``: links whose values travel (so that
            each end holds the other's current ``J x``) but whose ``z``, ``y``
            are not updated; the distributed per-link stop
            (:func:`run_admm` with ``tol``). (default: None, none)
    """
    _check_beta(beta)
    if link_ids.numel() == 0:
        return state
    transport = InProcessTransport() if transport is None else transport
    with torch.no_grad():
        ends = state.links[link_ids]  # (l, 2)
        held = transport.holds(ends, state.n_agents)  # (l, 2): the link ends updated here
        touching = held.any(1)
        if not bool(touching.all()):
            link_ids, ends, held = link_ids[touching], ends[touching], held[touching]
            idle = None if idle is None else idle[touching.to(idle.device)]
            if link_ids.numel() == 0:
                return state
        C = link_signs(state.z.dtype, state.z.device)[None, :, None, None]
        CJx = C * state.Jx[ends]  # (l, 2, M, K); rows of ends held elsewhere are not read
        y = state.y[link_ids]
        u, record = transport.exchange_link_ends(ends, y + beta * CJx, state.n_agents)
        state.comm.add(record)
        nu = 0.5 * u.sum(1, keepdim=True)
        z_new = (y - nu) / beta + CJx
        z_old = state.z[link_ids]
        dz = z_new - z_old
        if bool(held.all()):
            dz_rms = dz.pow(2).flatten(1).mean(1).sqrt()
        else:  # one end here: z^i = -z^j, so its RMS is the link's
            w = held[:, :, None, None].to(dz).expand_as(dz)
            dz_rms = ((dz.pow(2) * w).flatten(1).sum(1) / w.flatten(1).sum(1)).sqrt()
            mask = held[:, :, None, None]
            z_new = torch.where(mask, z_new, z_old)
            nu = torch.where(mask, nu.expand_as(y), y)
            # the far end's log-ratios, from what it sent: J^{jn} x^j = C_e^j (u_e^{jn} - y_e^{jn}) / beta,
            # where y_e^{jn} = y_e^{in} (both ends set y to the same nu; 0 at the start), the near end's
            far = ~held
            state.Jx[ends[far]] = (C.expand_as(u) * (u - y.flip(1)) / beta)[far]
        if idle is not None and bool(idle.any()):  # their values travelled; their z, y stay
            keep = ~idle.to(link_ids.device)
            link_ids, dz_rms, z_new, nu, y = link_ids[keep], dz_rms[keep], z_new[keep], nu[keep], y[keep]
        state.dz_rms[link_ids] = dz_rms
        state.dual_residual[link_ids] = beta * dz_rms
        state.z[link_ids] = z_new
        state.y[link_ids] = nu.expand_as(y)
        state.link_updates[link_ids] += 1
    return state


def activate_link(
    lin: Linearisation,
    state: AdmmState,
    advantages: Tensor,
    link: int,
    *,
    delta: float,
    beta: float,
    cg_iters: int = 10,
    residual_tol: float = 1e-10,
    cg_rtol: float = 0.0,
    exact_kkt: bool = False,
    metric: str = "kl",
    transport: Transport | None = None,
) -> AdmmState:
    """001 Algorithm 1 inner loop, eq. (22): activate link ``e``; its two agents step, then z, y of ``e``.

    The endpoints ``q in N(e)`` take the closed-form primal step together (one
    batched 2-agent call), then ``z_e^{qn}`` and ``y_e^{qn}`` of that link only
    are updated. Other links' variables and other agents' ``theta`` are
    untouched. Updates ``state`` in place and returns it.

    Args:
        transport: ``None`` (one process) or a distributed transport: only the
            endpoints held by this process step, and the link's two values
            travel through it (:func:`dual_update`); a process holding
            neither endpoint does nothing. (default: None)
    """
    if not 0 <= link < state.n_links:
        raise ValueError(f"link must be in [0, {state.n_links}), got {link}")
    agents = state.links[link]
    if transport is not None:
        agents = agents[transport.holds(agents.cpu(), state.n_agents).to(agents.device)]
        if agents.numel() == 0:
            return state
    primal_step(lin, state, advantages, agents, delta=delta, beta=beta, cg_iters=cg_iters,
                residual_tol=residual_tol, cg_rtol=cg_rtol, exact_kkt=exact_kkt, metric=metric)
    return dual_update(state, torch.tensor([link], device=state.links.device), beta=beta, transport=transport)


def synchronous_iteration(
    lin: Linearisation,
    state: AdmmState,
    advantages: Tensor,
    *,
    delta: float,
    beta: float,
    working: Tensor | None = None,
    cg_iters: int = 10,
    residual_tol: float = 1e-10,
    cg_rtol: float = 0.0,
    exact_kkt: bool = False,
    transport: Transport | None = None,
    metric: str = "kl",
) -> AdmmState:
    """001 eq. (5) / (22), synchronous variant: all agents step (Jacobi), then every working link's z, y.

    Args:
        working: bool mask ``(L,)`` of links that did not fail. (default: all)
        transport: ``None`` (one process: every agent steps here) or a
            distributed transport: the agents of this process step
            (:meth:`~benchmarl_decentral.distributed.Transport.local_agents`)
            and the link ends travel through it (:func:`dual_update`).
            (default: None)
    """
    agents = None if transport is None else transport.local_agents(state.n_agents).to(state.links.device)
    primal_step(lin, state, advantages, agents, delta=delta, beta=beta, cg_iters=cg_iters,
                residual_tol=residual_tol, cg_rtol=cg_rtol, exact_kkt=exact_kkt, metric=metric)
    ids = torch.arange(state.n_links, device=state.links.device)
    if working is not None:
        ids = ids[working]
    return dual_update(state, ids, beta=beta, transport=transport)


# -------------------------------------------------------------------- residuals


def measured_links(state: AdmmState, transport: Transport | None = None) -> Tensor | slice:
    """The links whose residuals this process can measure: every link in one process, else those with an end here.

    An index into the ``(L,)`` per-link tensors (:func:`primal_residual`, :func:`relative_residuals`).
    """
    if transport is None:
        return slice(None)
    return transport.holds(state.links.cpu(), state.n_agents).any(1).to(state.links.device)


def primal_residual(state: AdmmState) -> Tensor:
    """Per-link disagreement of the linearised log-ratios, ``RMS_{m,n}(J^{in}x^i - J^{jn}x^j)``, ``(L,)``.

    Zero iff the consensus constraint of eq. (15) (with eq. 20) holds on the link.
    """
    if state.n_links == 0:
        return state.Jx.new_zeros(0)
    diff = state.Jx[state.links[:, 0]] - state.Jx[state.links[:, 1]]
    return diff.pow(2).flatten(1).mean(1).sqrt()


def relative_residuals(state: AdmmState, eps: float = 1e-12) -> tuple[Tensor, Tensor]:
    """Per-link residuals relative to the link's log-ratio scale, ``(L,)`` each.

    With ``s_e = sqrt((MS(J^i x^i) + MS(J^j x^j)) / 2)`` (``MS``: mean square
    over samples and components, ``e = (i, j)``):

    * primal ``r_e = RMS(J^i x^i - J^j x^j) / s_e`` (:func:`primal_residual` over
      the scale): 0 at consensus; about 1.4 when the two ends' log-ratios are
      uncorrelated;
    * dual ``s_e^dual = RMS(z_e^{new} - z_e^{old}) / s_e`` at the link's last
      update (the dual residual of :func:`dual_update` without ``beta``).

    Both use only what the link's two agents hold (their own log-ratios,
    which they exchange anyway, and the link's ``z``), so each link can test
    them without any other agent. ``s_e = 0`` (no step yet) gives 0 / eps.
    """
    if state.n_links == 0:
        empty = state.Jx.new_zeros(0)
        return empty, empty
    ms = state.Jx.pow(2).flatten(1).mean(1)  # (n,)
    scale = (0.5 * (ms[state.links[:, 0]] + ms[state.links[:, 1]])).sqrt()
    denom = scale + eps
    return primal_residual(state) / denom, state.dz_rms / denom


def link_converged(state: AdmmState, tol: float, links: Tensor | None = None) -> Tensor:
    """The per-link stop test of :func:`run_admm`: ``r_e < tol`` and ``s_e^dual < tol`` after >= 1 update.

    Args:
        state: ADMM variables.
        tol: relative tolerance (> 0).
        links: link ids to test. (default: all)

    Returns:
        bool ``(|links|,)``.
    """
    primal, dual = relative_residuals(state)
    ok = (primal < tol) & (dual < tol) & (state.link_updates > 0)
    return ok if links is None else ok[links]


def _invalidate(state: AdmmState, agents: Tensor) -> None:
    """Clear the ``converged`` flag of every link at an agent that just moved."""
    if state.n_links == 0 or agents.numel() == 0:
        return
    moved = torch.zeros(state.n_agents, dtype=torch.bool, device=state.links.device)
    moved[agents.to(state.links.device)] = True
    state.converged &= ~(moved[state.links[:, 0]] | moved[state.links[:, 1]])


def per_agent_relative_residuals(state: AdmmState) -> tuple[Tensor, Tensor, Tensor]:
    """Per agent, the mean over its own links of the relative primal and dual
    residuals (:func:`relative_residuals`) and the fraction of its links flagged
    ``converged``; each ``(n,)`` (0 for an agent without links)."""
    n = state.n_agents
    flat = state.links.reshape(-1)
    deg = torch.bincount(flat, minlength=n).to(state.x).clamp(min=1)
    primal, dual = relative_residuals(state)
    out = []
    for per_link in (primal, dual, state.converged.to(state.x)):
        acc = state.x.new_zeros(n)
        if state.n_links:
            acc.index_add_(0, flat, per_link.to(state.x).repeat_interleave(2))
        out.append(acc / deg)
    return out[0], out[1], out[2]


def per_agent_residuals(state: AdmmState) -> tuple[Tensor, Tensor]:
    """Primal and dual residuals per agent: the mean over the agent's links, each ``(n,)``.

    An agent's statistic uses only its own links (what it can measure locally).
    """
    n = state.n_agents
    flat = state.links.reshape(-1)
    deg = torch.bincount(flat, minlength=n).to(state.x).clamp(min=1)
    out = []
    for per_link in (primal_residual(state), state.dual_residual):
        acc = state.x.new_zeros(n)
        if state.n_links:
            acc.index_add_(0, flat, per_link.repeat_interleave(2))
        out.append(acc / deg)
    return out[0], out[1]


# -------------------------------------------------------------------------- driver


def select_link(
    state: AdmmState, mode: str, *, generator: torch.Generator | None = None
) -> int:
    """001 Algorithm 1 ("randomly select a communication link e"): the next link to activate.

    ``random``: uniform over links; ``round_robin``: link ``iteration mod L`` in
    canonical (sorted) order.
    """
    if state.n_links == 0:
        raise ValueError("there are no links to activate")
    if mode == "random":
        return int(torch.randint(state.n_links, (1,), generator=generator))
    if mode == "round_robin":
        return state.iteration % state.n_links
    raise ValueError(f"select_link mode must be 'random' or 'round_robin', got {mode!r}")


def run_admm(
    lin: Linearisation,
    advantages: Tensor,
    edges: Tensor | Sequence[Sequence[int]],
    *,
    delta: float,
    beta: float,
    iterations: int,
    mode: str = "random",
    link_failure_prob: float = 0.0,
    generator: torch.Generator | None = None,
    tol: float | None = None,
    exact_kkt: bool = False,
    cg_iters: int = 10,
    residual_tol: float = 1e-10,
    state: AdmmState | None = None,
    isolated: str = "error",
    metric: str = "kl",
    cg_rtol: float = 0.0,
    transport: Transport | None = None,
) -> AdmmState:
    """001 Algorithm 1: ``iterations`` ADMM iterations of one policy update; returns the final state.

    ``theta^q_new = theta^q_old + state.x[q]`` (before the KL line search of
    :func:`~benchmarl_decentral.objectives.trust_region.backtracking_line_search`).
    With one agent and no links the result is the natural-gradient TRPO step
    (``V = g``). More than one agent with an agent that has no link is an
    error (``isolated="error"``): that agent could never join the consensus.
    With ``isolated="local"`` (graphs that change between updates, e.g. SMAC
    ally visibility) such an agent takes the eq. (22) step with no link term,
    ``V^q = 1/M sum_n J^{qnT} A^q``, its own natural-gradient TRPO step, once
    (nothing it depends on changes); the linked agents run ADMM as usual, each
    connected component reaching consensus within itself.

    Args:
        lin: linearisation at ``theta_old`` of all agents.
        advantages: private advantages ``(n, M)``.
        edges: ``(L, 2)`` links (see :func:`canonical_links`).
        delta: per-agent KL bound ``delta/N`` (> 0); Table III: 0.003 / 0.001.
        beta: ADMM penalty (> 0); Table III: 1.0 / 5.0.
        iterations: ADMM iterations (>= 1); Table III: 100 to 500.
        mode: ``random`` or ``round_robin`` (asynchronous, one link per
            iteration) or ``synchronous`` (all links). (default: "random")
        link_failure_prob: probability that an activated link fails, in ``[0, 1)``. (default: 0.0)
        generator: random generator for link choice and failures. (default: None)
        tol: per-link stop on the relative residuals (:func:`relative_residuals`),
            ``> 0``; ``None`` or ``0``: every activation steps, all ``iterations`` run.
            Asynchronous modes: when link ``e`` is activated its two agents
            first run :func:`link_converged` on ``e`` alone; if it holds, the
            link stays idle (no primal step, no z/y update) and is flagged
            ``converged``. Synchronous mode: every link runs the same test at
            the start of an iteration; flagged links skip their z/y update and
            an agent all of whose links are flagged skips its primal step. A
            flag is cleared as soon as one of the link's agents moves (through
            another link), so every test uses only the link's own two agents;
            no residual is maximised or averaged over agents. The loop ends
            when every link is flagged: then no activation can change
            anything, so this equals running the remaining iterations.
            (default: None)
        exact_kkt: see :func:`primal_step`. (default: False)
        cg_iters: CG iterations per primal step. (default: 10)
        residual_tol: CG squared-residual tolerance. (default: 1e-10)
        cg_rtol: relative CG stop of every primal step (:func:`primal_step`). (default: 0, off)
        state: continue from this state. (default: fresh :func:`init_state`)
        isolated: ``"error"`` or ``"local"``: what an agent without a link
            does when there are several agents (see above). (default: "error")
        metric: trust-region metric of the primal step, ``"kl"``, ``"gauss_newton"``
            or ``"kl_exact"`` (see :func:`primal_step`); an agent without a
            link (no penalty) always takes the ``"kl"`` step, TRPO's. (default: "kl")
        transport: ``None`` (one process) or a distributed transport
            (:class:`~benchmarl_decentral.distributed.TorchDistributedTransport`):
            this process steps the agents it holds and sends their link values
            to the other ends' processes (:func:`dual_update`), nothing else.
            Every process must pass the same ``generator`` state (the link
            choice and failures are then the same everywhere, with no
            message: a shared schedule); asynchronous modes activate one link
            at a time, so only the processes of its two ends work in an
            iteration. ``state.history`` is the largest residual over the
            links at this process's agents. ``tol`` needs ``mode="synchronous"``
            and no link failures (a link's stop test reads its far end's
            current ``J x``, which then arrives every iteration); a link's two
            ends swap their verdicts and it idles only when both agree, and
            the loop runs all ``iterations`` (no process sees every link). (default: None)

    Returns:
        The :class:`AdmmState`; ``state.iteration`` is the number of iterations used.
    """
    _check_delta(delta)
    _check_beta(beta)
    if iterations < 1:
        raise ValueError(
            f"iterations must be >= 1 (ADMM iterations per policy update, e.g. 100), got {iterations}"
        )
    if mode not in ADMM_MODES:
        raise ValueError(f"mode must be one of {ADMM_MODES}, got {mode!r}")
    if not 0.0 <= link_failure_prob < 1.0:
        raise ValueError(f"link_failure_prob must be in [0, 1), got {link_failure_prob}")
    if isolated not in ("error", "local"):
        raise ValueError(f"isolated must be 'error' or 'local', got {isolated!r}")
    links = canonical_links(edges, lin.n_agents)
    if state is None:
        state = init_state(links, lin.n_samples, n_params=lin.n_params, n_agents=lin.n_agents,
                           n_components=lin.n_components, dtype=lin.dtype, device=lin.device)
    elif not torch.equal(state.links.cpu(), links):
        raise ValueError("state.links differ from edges; continue a state with the same links")
    _check_state(lin, state, advantages)
    _check_metric(metric)
    _check_rtol(cg_rtol)
    kw = dict(delta=delta, beta=beta, cg_iters=cg_iters, residual_tol=residual_tol, cg_rtol=cg_rtol,
              exact_kkt=exact_kkt, metric=metric)

    if transport is not None and tol and (mode != "synchronous" or link_failure_prob > 0):
        raise ValueError(
            f"tol={tol} with mode={mode!r} and link_failure_prob={link_failure_prob}: in a distributed run the "
            "per-link stop tests a link on its far end's current J x, which arrives every iteration only in "
            "synchronous mode without link failures; use mode='synchronous' and link_failure_prob=0, or tol=0 "
            "(admm_mode=synchronous, link_failure=0 or admm_tol=0)"
        )
    local = None if transport is None else transport.local_agents(lin.n_agents).to(state.x.device)
    degree = torch.bincount(links.reshape(-1), minlength=lin.n_agents)
    alone = (degree == 0).nonzero().flatten()
    if lin.n_agents > 1 and alone.numel() and isolated == "error":
        raise ValueError(
            f"agents {alone.tolist()} have no communication link, so they can never reach consensus; "
            "use a connected topology (e.g. ring) or a single agent"
        )
    # an agent without links has no penalty: the closed form is exact with any metric, and it takes
    # TRPO's step with the true-KL Hessian whatever ``metric`` says
    alone_kw = {**kw, "metric": "kl"}
    if state.n_links == 0:  # a single agent (or no link at all): plain TRPO, one step is the answer
        primal_step(lin, state, advantages, local, **alone_kw)
        state.iteration += 1
        state.history.append(0.0)
        return state
    if local is not None:
        alone = alone[torch.isin(alone, local.to(alone.device))]
    if alone.numel():  # isolated="local": V^q has no link term and never changes
        primal_step(lin, state, advantages, alone.to(state.x.device), **alone_kw)
    mine = measured_links(state, transport)
    if tol is not None and not tol >= 0:
        raise ValueError(f"tol must be >= 0 or None (0/None: no early stop), got {tol}")
    per_link_stop = bool(tol)

    for _ in range(iterations):
        if mode == "synchronous":
            working = None
            if link_failure_prob > 0:
                working = torch.rand(state.n_links, generator=generator) >= link_failure_prob
                state.link_failures += int((~working).sum())
                working = working.to(state.links.device)
            if per_link_stop:
                _synchronous_with_stop(lin, state, advantages, working, tol, kw, transport)
            else:
                synchronous_iteration(lin, state, advantages, working=working, transport=transport, **kw)
        else:
            link = select_link(state, mode, generator=generator)
            failed = link_failure_prob > 0 and float(torch.rand((), generator=generator)) < link_failure_prob
            state.link_failures += int(failed)
            if not failed:
                if per_link_stop and bool(link_converged(state, tol, torch.tensor([link]).to(state.links.device))):
                    state.converged[link] = True  # the link idles
                else:
                    activate_link(lin, state, advantages, link, transport=transport, **kw)
                    _invalidate(state, state.links[link])
        state.iteration += 1
        r_primal = primal_residual(state)[mine]
        state.history.append(float(r_primal.max()) if r_primal.numel() else 0.0)
        # a process sees its own links only, so a distributed run goes on to ``iterations`` (nothing moves once
        # every link idles: the same result, with no collective)
        if per_link_stop and transport is None and bool(state.converged.all()):
            break
    return state


def _synchronous_with_stop(lin, state: AdmmState, advantages: Tensor, working, tol: float, kw,
                           transport: Transport | None = None) -> None:
    """One synchronous iteration with the per-link stop of :func:`run_admm`.

    Distributed (``transport``): each end runs the link's test on what it holds
    (its own ``J x``, the far end's recovered from its last value, the link's
    ``z`` and dual residual), the two ends swap their verdicts (one byte each
    way) and the link idles only when both say so, so its ``z``, ``y`` stay the
    same at both ends even where rounding splits a test at the threshold. Every
    link's values travel every iteration, idle or not (:func:`dual_update`'s
    ``idle``): an end may move through another link, and the next test reads
    its current ``J x``.
    """
    ok = link_converged(state, tol)
    if working is not None:  # a failed link cannot run its test this iteration
        ok = ok & working
    if transport is not None:
        ok = _both_ends_agree(state, ok, transport)
    state.converged = ok.clone()  # cleared below for the links of the agents that move
    active_links = ~ok if working is None else (~ok & working)
    busy = torch.zeros(state.n_agents, dtype=torch.bool, device=state.links.device)
    busy[state.links[~ok].reshape(-1)] = True  # an agent idles only when all its links are converged
    if transport is not None:
        busy &= transport.holds(torch.arange(state.n_agents), state.n_agents).to(busy.device)
    agents = busy.nonzero().flatten()
    if agents.numel():
        primal_step(lin, state, advantages, agents.to(state.x.device), **kw)
        _invalidate(state, agents)
    if transport is None:
        dual_update(state, active_links.nonzero().flatten(), beta=kw["beta"])
    else:  # no failures here (run_admm): every link sends, the converged ones without a z/y update
        dual_update(state, torch.arange(state.n_links, device=ok.device), beta=kw["beta"], transport=transport,
                    idle=ok)


def _both_ends_agree(state: AdmmState, ok: Tensor, transport: Transport) -> Tensor:
    """The per-link stop verdicts of a link's two ends ANDed (one byte each way per link; bytes to ``state.comm``).

    Links with no end in this process come back ``False`` (not tested here).
    """
    ids = measured_links(state, transport).to(ok.device).nonzero().flatten()  # the links with an end here
    agreed = torch.zeros_like(ok)
    if ids.numel():
        verdicts = ok[ids][:, None].expand(-1, 2).to(torch.uint8).contiguous()
        got, record = transport.exchange_link_ends(state.links[ids], verdicts, state.n_agents)
        state.comm.add(record)
        agreed[ids] = got.bool().all(1).to(ok.device)
    return agreed
