"""Matrix-free trust-region linear algebra for MATRPO, batched over agents.

001_8ff130c17487d6e3.txt (MATRPO), sec. IV-C eqs. (13)-(14), sec. V-B eq. (20),
eq. (22) / Appendix B eqs. (40)-(52).

Every agent ``i`` owns a policy ``pi^i(a | o^i; theta^i)`` that models the
joint policy as a product of ``K`` components (one head per agent ``n``), so one
sample ``m`` gives ``K`` log-probabilities ``log pi^i(a^n_m | o^i_m)``. Around
``theta_old`` the paper linearises the per-sample log policy ratios
(eqs. 13, 20) and takes a second-order model of the mean KL (eq. 14):

.. math::

    \\log \\Upsilon^n(\\theta^i) \\approx J^{in} (\\theta^i - \\theta^i_{old}),
    \\qquad
    \\bar D_{KL}(\\theta^i_{old}, \\theta^i) \\approx
    \\tfrac12 (\\theta^i - \\theta^i_{old})^T \\bar H^i (\\theta^i - \\theta^i_{old}),

with ``J^{in}`` the ``M x D`` Jacobian of the sampled log-probabilities and
``H^i`` the Hessian of the *true* sample-average KL (not a logit
approximation). Nothing here materialises ``J`` or ``H``:

* ``J x`` by forward mode (:func:`torch.func.jvp`), ``J^T u`` by
  :func:`torch.func.vjp`;
* ``H v`` by double backward through
  :func:`torch.distributions.kl_divergence` (old distribution detached);
* ``H^{-1} V`` by conjugate gradient with one set of CG scalars per agent.

Shapes (the whole module):
    ``n`` agents, ``M`` samples, ``K`` policy components, ``D`` parameters per
    agent. Parameters are a dict of tensors stacked on a leading agent dim
    (``TensorDict.from_modules`` / :func:`torch.func.stack_module_state`
    layout); flat parameters are ``(n, D)``. Observations ``(n, M, ...)``,
    actions ``(n, M, K, ...)`` (every agent scores the *joint* action, so a
    shared action tensor is passed as ``actions.expand(n, ...)``),
    advantages ``(n, M)``, per-sample log-probabilities ``(n, M, K)``.

A *policy function* ``policy(params, obs) -> Distribution`` maps stacked
parameters and observations to a distribution with batch shape ``(n, M, K)``
whose ``log_prob(actions)`` is ``(n, M, K)``; :func:`stacked_policy` builds one
from an ``nn.Module`` with :func:`torch.func.vmap` + ``functional_call``.

No BenchMARL or TorchRL import: the ``matrpo`` algorithm wraps these.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, kl_divergence

__all__ = [
    "LineSearchResult",
    "Linearisation",
    "NaturalStep",
    "PolicyFn",
    "add_step",
    "backtracking_line_search",
    "boundary_scale",
    "cg_iterations",
    "check_agent_dims",
    "conjugate_gradient",
    "fisher_vector_product",
    "flat_params",
    "jvp_logratio",
    "log_prob",
    "make_fvp",
    "mean_kl",
    "natural_step",
    "stacked_policy",
    "surrogate",
    "trpo_step",
    "unflatten",
    "vjp_logratio",
]

Params = dict[str, Tensor]
PolicyFn = Callable[[Mapping[str, Tensor], Tensor], Distribution]
"""``policy(params, obs) -> Distribution`` with batch shape ``(n, M, K)``."""


# --------------------------------------------------------------------------- checks


def _check_positive(name: str, value: float | Tensor, hint: str) -> None:
    bad = (value <= 0).any().item() if isinstance(value, Tensor) else not value > 0
    if bad:
        raise ValueError(f"{name} must be > 0, got {name}={value}; {hint}")


def _check_delta(delta: float | Tensor) -> None:
    _check_positive(
        "delta", delta,
        "delta is the per-agent KL bound delta/N of eq. (8), e.g. 0.003 (Table III)",
    )


def _check_rtol(rtol: float) -> None:
    if not 0.0 <= rtol < 1.0:
        raise ValueError(
            f"rtol must be in [0, 1), got rtol={rtol}; it is the factor by which conjugate gradient shrinks "
            "the residual of its warm start (e.g. 0.1), 0 to run every iteration"
        )


def _check_damping(damping: float) -> None:
    _check_positive(
        "damping", damping,
        "the Fisher of a policy net is singular, CG needs H + damping * I with damping > 0 "
        "(e.g. 1e-2)",
    )


def check_agent_dims(params: Mapping[str, Tensor], **others: Tensor | None) -> int:
    """Checks that every parameter leaf and every other tensor share the leading agent dim.

    Args:
        params: stacked parameters, each leaf ``(n, ...)``.
        **others: named tensors that must also start with ``n`` (``None`` is skipped).

    Returns:
        The number of agents ``n``.
    """
    if not params:
        raise ValueError("params is empty; pass the stacked policy parameters (leading agent dim)")
    sizes = {k: (v.shape[0] if v.dim() else None) for k, v in params.items()}
    n = next(iter(sizes.values()))
    if n is None or any(s != n for s in sizes.values()):
        raise ValueError(
            f"parameter leaves disagree on the leading agent dim: {sizes}; stack every "
            "leaf on dim 0 with one entry per agent (TensorDict.from_modules / "
            "torch.func.stack_module_state)"
        )
    for name, t in others.items():
        if t is None:
            continue
        if t.dim() == 0 or t.shape[0] != n:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)} but the parameters have n={n} agents on "
                f"dim 0; give {name} a leading agent dim of size {n}"
            )
    return n


def _check_flat(name: str, t: Tensor, n: int, d: int | None = None) -> None:
    if t.dim() != 2 or t.shape[0] != n or (d is not None and t.shape[1] != d):
        want = f"({n}, {d})" if d is not None else f"({n}, D)"
        raise ValueError(f"{name} must be flat per agent with shape {want}, got {tuple(t.shape)}")


# ------------------------------------------------------------------ flat parameters


def flat_params(params: Mapping[str, Tensor]) -> Tensor:
    """Flattens stacked parameters ``{name: (n, ...)}`` to ``theta`` of shape ``(n, D)``.

    The order is the dict's order; :func:`unflatten` with the same dict inverts it.
    """
    n = check_agent_dims(params)
    return torch.cat([v.reshape(n, -1) for v in params.values()], dim=1)


def unflatten(flat: Tensor, like: Mapping[str, Tensor]) -> Params:
    """Inverse of :func:`flat_params`: ``(n, D)`` back to ``{name: (n, ...)}`` shaped as ``like``."""
    n = check_agent_dims(like)
    sizes = [v[0].numel() for v in like.values()]
    _check_flat("flat", flat, n, sum(sizes))
    chunks = torch.split(flat, sizes, dim=1)
    return {k: c.reshape(v.shape) for (k, v), c in zip(like.items(), chunks)}


def add_step(params: Mapping[str, Tensor], step: Tensor, alpha: float | Tensor = 1.0) -> Params:
    """``theta_old + alpha * x`` for stacked ``params`` and a flat step ``x`` ``(n, D)``.

    ``alpha`` is a scalar or a per-agent ``(n,)`` fraction.
    """
    if isinstance(alpha, Tensor) and alpha.dim() == 1:
        step = step * alpha.to(step)[:, None]
    else:
        step = step * alpha
    upd = unflatten(step, params)
    return {k: params[k] + upd[k] for k in params}


def _detach(params: Mapping[str, Tensor]) -> Params:
    return {k: v.detach() for k, v in params.items()}


def _select(params: Mapping[str, Tensor], agents: Tensor | None) -> Params:
    return dict(params) if agents is None else {k: v[agents] for k, v in params.items()}


# ------------------------------------------------------------------- the policy


def stacked_policy(module: nn.Module, make_dist: Callable[[Any], Distribution]) -> PolicyFn:
    """Per-agent networks as one stacked call: :func:`torch.func.vmap` over ``functional_call``.

    ``module`` is one agent's network (any device, e.g. a meta-device template),
    run with each agent's slice of the stacked parameters on that agent's
    observations; ``make_dist`` turns the stacked output (a tensor or a tuple,
    leading dims ``(n, M)``) into a distribution with batch shape ``(n, M, K)``,
    e.g. ``lambda logits: Categorical(logits=logits)`` for ``logits`` of shape
    ``(n, M, K, n_actions)``, or ``lambda out: Independent(Normal(*out), 1)``.
    The distribution is built outside ``vmap`` (its argument checks are
    data-dependent), so any ``torch.distributions`` class works.

    Args:
        module: single-agent template network; its own parameters are ignored.
        make_dist: stacked network output -> distribution.

    Returns:
        ``policy(params, obs)`` for stacked ``params`` and ``obs`` of shape ``(n, M, ...)``.
    """

    def one_agent(p: Params, o: Tensor) -> Any:
        return torch.func.functional_call(module, p, (o,))

    batched = torch.func.vmap(one_agent)

    def policy(params: Mapping[str, Tensor], obs: Tensor) -> Distribution:
        return make_dist(batched(dict(params), obs))

    return policy


def log_prob(policy: PolicyFn, params: Mapping[str, Tensor], obs: Tensor, actions: Tensor) -> Tensor:
    """001 eq. (20): per-sample, per-component ``log pi^i(a^n_m | o^i_m; theta^i)``, shape ``(n, M, K)``."""
    n = check_agent_dims(params, obs=obs, actions=actions)
    lp = policy(params, obs).log_prob(actions)
    if lp.dim() != 3 or lp.shape[0] != n:
        raise ValueError(
            f"policy(params, obs).log_prob(actions) must have shape (n, M, K) = (agents, samples, "
            f"policy components), got {tuple(lp.shape)}; sum event dims in the distribution "
            "(e.g. Independent(Normal(loc, scale), 1)) and keep a component dim (K=1 for a "
            "single-head policy)"
        )
    return lp


# ----------------------------------------------------------- Jacobian products


def jvp_logratio(
    policy: PolicyFn, params: Mapping[str, Tensor], obs: Tensor, actions: Tensor, x: Tensor
) -> Tensor:
    """001 eqs. (13), (20): ``J^{in} x^i`` for every agent by forward mode, never forming ``J``.

    ``J^{in}`` is the Jacobian of the sampled log-ratios ``log Upsilon^n(theta^i)``
    at ``theta^i = params`` (equal to that of the log-probabilities).

    Args:
        policy: policy function (module docstring).
        params: stacked parameters ``theta`` (the linearisation point, usually ``theta_old``).
        obs: ``(n, M, ...)``.
        actions: ``(n, M, K, ...)``.
        x: flat tangent ``(n, D)``, e.g. ``theta - theta_old``.

    Returns:
        ``J x`` of shape ``(n, M, K)``: the linearised log-ratios.
    """
    params = _detach(params)
    n = check_agent_dims(params, obs=obs, actions=actions)
    _check_flat("x", x, n, flat_params(params).shape[1])
    tangent = unflatten(x.detach().to(next(iter(params.values()))), params)
    _, jx = torch.func.jvp(lambda p: log_prob(policy, p, obs, actions), (params,), (tangent,))
    return jx


def vjp_logratio(
    policy: PolicyFn, params: Mapping[str, Tensor], obs: Tensor, actions: Tensor, u: Tensor
) -> Tensor:
    """001 eq. (22) (the ``J^{qn T}`` in ``V``): ``sum_n J^{in T} u^{in}`` for every agent by vjp.

    Agents do not share parameters, so one vjp through the stacked call gives
    each agent its own ``J^T u`` (the Jacobian is block diagonal over agents).

    Args:
        policy: policy function.
        params: stacked parameters (linearisation point).
        obs: ``(n, M, ...)``.
        actions: ``(n, M, K, ...)``.
        u: per-sample, per-component weights ``(n, M, K)``.

    Returns:
        Flat ``J^T u`` of shape ``(n, D)`` (no ``1/M`` factor).
    """
    params = _detach(params)
    n = check_agent_dims(params, obs=obs, actions=actions, u=u)
    out, pullback = torch.func.vjp(lambda p: log_prob(policy, p, obs, actions), params)
    if u.shape != out.shape:
        raise ValueError(
            f"u must have the log-prob shape (n, M, K) = {tuple(out.shape)}, got {tuple(u.shape)}"
        )
    (grad,) = pullback(u.detach().to(out))
    return flat_params({k: grad[k] for k in params})


# -------------------------------------------------------------- KL and Fisher


def mean_kl(
    policy: PolicyFn,
    params: Mapping[str, Tensor],
    params_old: Mapping[str, Tensor],
    obs: Tensor,
) -> Tensor:
    """001 eq. (8): ``D_KL(pi_old^i || pi^i)`` averaged over samples, per agent, shape ``(n,)``.

    The true KL (:func:`torch.distributions.kl_divergence`) with the old
    distribution detached; the KL of the factored joint policy is the sum over
    its ``K`` components (eq. 46, first line). Differentiable in ``params``.
    """
    n = check_agent_dims(params, obs=obs)
    check_agent_dims(params_old, obs=obs)
    with torch.no_grad():
        old = policy(_detach(params_old), obs)
    kl = kl_divergence(old, policy(params, obs))
    if kl.dim() != 3 or kl.shape[0] != n:
        raise ValueError(f"KL must have the batch shape (n, M, K), got {tuple(kl.shape)}")
    return kl.sum(-1).mean(-1)


def make_fvp(
    policy: PolicyFn, params: Mapping[str, Tensor], obs: Tensor, *, damping: float
) -> Callable[[Tensor], Tensor]:
    """001 eq. (14): the damped Fisher-vector product ``v -> (H^i + damping I) v`` for all agents.

    ``H^i`` is the Hessian at ``theta_old = params`` of the sample-average true
    KL ``D_KL(pi(theta_old) detached || pi(theta))``. The gradient graph is
    built once (double backward, ``create_graph``) and reused by every call,
    so CG pays one backward per product. Per-agent KLs are summed before
    differentiating; with no shared parameters this keeps each agent's block
    of the (block-diagonal) Hessian separate.

    Args:
        policy: policy function.
        params: stacked parameters ``theta_old``.
        obs: ``(n, M, ...)``.
        damping: Tikhonov damping, > 0.

    Returns:
        ``Avp(v)`` mapping ``(n, D)`` to ``(n, D)``.
    """
    _check_damping(damping)
    n = check_agent_dims(params, obs=obs)
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    names = list(leaves)
    d = flat_params(leaves).shape[1]
    with torch.enable_grad():
        kl = mean_kl(policy, leaves, params, obs).sum()
        grads = torch.autograd.grad(kl, [leaves[k] for k in names], create_graph=True)
        flat_grad = torch.cat([g.reshape(n, -1) for g in grads], dim=1)

    def fvp(v: Tensor) -> Tensor:
        _check_flat("v", v, n, d)
        with torch.enable_grad():
            gv = (flat_grad * v.detach().to(flat_grad)).sum()
            hv = torch.autograd.grad(gv, [leaves[k] for k in names], retain_graph=True)
        return torch.cat([h.reshape(n, -1) for h in hv], dim=1) + damping * v

    return fvp


def fisher_vector_product(
    policy: PolicyFn, params: Mapping[str, Tensor], obs: Tensor, v: Tensor, *, damping: float
) -> Tensor:
    """001 eq. (14): one damped Fisher-vector product ``(H + damping I) v``, ``(n, D)``.

    See :func:`make_fvp`; prefer that when several products share ``theta_old``.
    """
    return make_fvp(policy, params, obs, damping=damping)(v)


# --------------------------------------------------------- conjugate gradient


def conjugate_gradient(
    Avp: Callable[[Tensor], Tensor],
    b: Tensor,
    iters: int = 10,
    residual_tol: float = 1e-10,
    *,
    x0: Tensor | None = None,
    rtol: float = 0.0,
    counts: Tensor | None = None,
) -> Tensor:
    """001 eq. (22) (the ``H^{-1} V`` of the closed-form step): batched conjugate gradient.

    Solves ``A_i x_i = b_i`` for every agent ``i`` (row of ``b``) at once, with
    its own step sizes ``alpha_i``, ``beta_i`` and its own stopping test
    ``||r_i||^2 < residual_tol`` (and, with ``rtol > 0``, ``||r_i|| <= rtol
    ||r_i^{(0)}||``, the residual of the start ``x0``); a converged agent's
    iterate is frozen, so the result equals running CG agent by agent. No
    statistic crosses agents.

    Args:
        Avp: ``(n, D) -> (n, D)``, symmetric positive definite per row.
        b: right-hand sides ``(n, D)``.
        iters: maximum CG iterations. (default: 10)
        residual_tol: squared-residual tolerance per agent. (default: 1e-10)
        x0: warm start ``(n, D)``. (default: zeros)
        rtol: stop an agent once its residual norm is ``rtol`` times that of
            its start, in ``[0, 1)``; 0: off (``iters`` iterations unless
            ``residual_tol`` holds). Relative to the *warm start's* residual, so
            repeated solves of slowly changing systems (the ADMM's primal steps)
            keep shrinking the residual by that factor on every call. (default: 0)
        counts: ``(n,)`` integer tensor; each agent's CG iterations are added to
            it in place. (default: None)

    Returns:
        ``x`` of shape ``(n, D)``.
    """
    if b.dim() != 2:
        raise ValueError(f"b must be (n_agents, D), got shape {tuple(b.shape)}")
    if iters < 0:
        raise ValueError(f"iters must be >= 0, got {iters}")
    _check_rtol(rtol)
    if x0 is None:
        x = torch.zeros_like(b)
        r = b.clone()
    else:
        _check_flat("x0", x0, b.shape[0], b.shape[1])
        x = x0.clone()
        r = b - Avp(x)
    return cg_iterations(Avp, x, r, iters, residual_tol, rtol=rtol, counts=counts)[0]


def cg_iterations(
    Avp: Callable[[Tensor], Any],
    x: Tensor,
    r: Tensor,
    iters: int,
    residual_tol: float,
    *,
    rtol: float = 0.0,
    counts: Tensor | None = None,
    aux: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The loop of :func:`conjugate_gradient` from an iterate ``x`` and its residual ``r = b - A x``.

    With ``aux`` (a linear image ``L x`` of the start, any shape with a leading
    agent dim), ``Avp(p)`` returns ``(A p, L p)`` and ``L x`` is updated along
    with ``x`` (``L x_{k+1} = L x_k + alpha_k L p_k``), so that a product that
    ``A`` computes anyway (e.g. ``J p`` inside ``G p = J^T J p / M``) also gives
    the solution's image without another product. Arguments as in
    :func:`conjugate_gradient`.

    Returns:
        ``(x, r, aux)`` at the stop (``aux`` None when not tracked).
    """
    shape = (-1,) + (1,) * (aux.dim() - 1) if aux is not None else None
    p = r.clone()
    rdotr = (r * r).sum(-1)
    stop = torch.full_like(rdotr, residual_tol)
    if rtol > 0:  # relative to the start's residual: ||r|| <= rtol ||r0||
        stop = torch.maximum(stop, rtol**2 * rdotr)
    active = rdotr >= stop
    for _ in range(iters):
        if not bool(active.any()):
            break
        if counts is not None:
            counts += active.to(counts.device, counts.dtype)
        if aux is None:
            Ap = Avp(p)
        else:
            Ap, Lp = Avp(p)
        pAp = (p * Ap).sum(-1)
        ok = active & (pAp > 0)  # pAp <= 0: not SPD along p, stop that agent
        alpha = torch.where(ok, rdotr / torch.where(ok, pAp, torch.ones_like(pAp)), torch.zeros_like(pAp))
        x = x + alpha[:, None] * p
        if aux is not None:
            aux = aux + alpha.reshape(shape) * Lp
        r = r - alpha[:, None] * Ap
        new_rdotr = (r * r).sum(-1)
        ratio = new_rdotr / torch.where(ok, rdotr, torch.ones_like(rdotr))
        beta_cg = torch.where(ok, ratio, torch.zeros_like(rdotr))
        p = r + beta_cg[:, None] * p
        rdotr = torch.where(ok, new_rdotr, rdotr)
        active = ok & (new_rdotr >= stop)
    return x, r, aux


# ----------------------------------------------------------- the closed-form step


@dataclass
class NaturalStep:
    """Result of :func:`natural_step`; all per agent.

    Attributes:
        step: ``x = theta_new - theta_old``, ``(n, D)``.
        direction: ``H^{-1} V`` from CG, ``(n, D)`` (a warm start for the next solve).
        quad: ``V^T H^{-1} V``, evaluated as ``d^T (H + damping I) d`` for the CG solution ``d``, ``(n,)``.
        scale: ``sqrt(2 delta / quad)`` (or the capped value), ``(n,)``.
    """

    step: Tensor
    direction: Tensor
    quad: Tensor
    scale: Tensor


def natural_step(
    Avp: Callable[[Tensor], Tensor],
    V: Tensor,
    *,
    delta: float | Tensor,
    cg_iters: int = 10,
    residual_tol: float = 1e-10,
    x0: Tensor | None = None,
    max_scale: Tensor | None = None,
    cg_rtol: float = 0.0,
    cg_counts: Tensor | None = None,
) -> NaturalStep:
    """001 eq. (22) / (40), (51): ``x = sqrt(2 delta / (V^T H^{-1} V)) H^{-1} V`` per agent.

    The maximiser of ``V^T x`` on the ellipsoid ``1/2 x^T H x <= delta``: with
    ``V`` the surrogate gradient it is the natural-gradient TRPO step, with
    ``V`` of eq. (22) it is MATRPO's ADMM primal update. ``delta`` is the
    per-agent bound (the paper's ``delta/N``). ``V^T H^{-1} V`` is evaluated as
    ``d^T (H + damping I) d`` for the CG solution ``d`` (one more product):
    equal at CG convergence, and it puts the *taken* step exactly on the
    quadratic model's boundary when CG stops early.

    Args:
        Avp: damped Fisher-vector product ``(n, D) -> (n, D)`` (:func:`make_fvp`).
        V: ``(n, D)``.
        delta: per-agent KL bound ``delta/N`` (> 0), float or ``(n,)``.
        cg_iters: CG iterations. (default: 10)
        residual_tol: CG squared-residual tolerance. (default: 1e-10)
        x0: CG warm start for ``H^{-1} V``. (default: None)
        max_scale: optional per-agent cap ``(n,)`` on the scale (see
            :func:`benchmarl_decentral.objectives.admm.primal_step`). (default: None)
        cg_rtol: relative CG stop (:func:`conjugate_gradient`'s ``rtol``). (default: 0, off)
        cg_counts: per-agent CG iteration counter, added to in place. (default: None)

    Returns:
        :class:`NaturalStep`. An agent with ``V = 0`` gets a zero step.
    """
    _check_delta(delta)
    if V.dim() != 2:
        raise ValueError(f"V must be (n_agents, D), got shape {tuple(V.shape)}")
    d = conjugate_gradient(Avp, V, cg_iters, residual_tol, x0=x0, rtol=cg_rtol, counts=cg_counts)
    quad = (d * Avp(d)).sum(-1)
    scale = boundary_scale(quad, delta, max_scale)
    return NaturalStep(step=scale[:, None] * d, direction=d, quad=quad, scale=scale)


def boundary_scale(quad: Tensor, delta: float | Tensor, max_scale: Tensor | None = None) -> Tensor:
    """001 eq. (51): ``sqrt(2 delta / quad)`` per agent (0 where ``quad <= 0``), capped at ``max_scale``."""
    delta_t = torch.as_tensor(delta, dtype=quad.dtype, device=quad.device)
    pos = quad > 0
    scale = torch.where(pos, torch.sqrt(2 * delta_t / torch.where(pos, quad, torch.ones_like(quad))),
                        torch.zeros_like(quad))
    if max_scale is not None:
        scale = torch.minimum(scale, max_scale.to(scale))
    return scale


# ------------------------------------------------------------- surrogate, search


def surrogate(
    policy: PolicyFn,
    params: Mapping[str, Tensor],
    obs: Tensor,
    actions: Tensor,
    advantages: Tensor,
    *,
    logp_old: Tensor,
) -> Tensor:
    """001 eq. (8) objective: ``mean_m [Upsilon(theta^i) A^i]`` per agent, shape ``(n,)``.

    ``Upsilon`` is the joint ratio ``exp(sum_n log Upsilon^n)`` over the ``K`` components.
    """
    check_agent_dims(params, obs=obs, actions=actions, advantages=advantages)
    lp = log_prob(policy, params, obs, actions)
    ratio = torch.exp((lp - logp_old).sum(-1))
    return (ratio * advantages).mean(-1)


@dataclass
class LineSearchResult:
    """Result of :func:`backtracking_line_search`; all per agent.

    Attributes:
        params: accepted stacked parameters ``theta_old + fraction * step``.
        fraction: accepted step fraction ``(n,)``; 0 means reverted to ``theta_old``.
        kl: mean ``D_KL(pi_old || pi_new)`` at the accepted parameters ``(n,)``.
        improvement: surrogate improvement at the accepted parameters ``(n,)``
            (zeros when no advantages were given).
        accepted: whether a fraction > 0 passed ``(n,)``.
    """

    params: Params
    fraction: Tensor
    kl: Tensor
    improvement: Tensor
    accepted: Tensor


def backtracking_line_search(
    policy: PolicyFn,
    params_old: Mapping[str, Tensor],
    step: Tensor,
    obs: Tensor,
    *,
    bound: float | Tensor,
    actions: Tensor | None = None,
    advantages: Tensor | None = None,
    backtrack_ratio: float = 0.8,
    max_backtracks: int = 10,
) -> LineSearchResult:
    """001 eq. (8) trust region: shrink each agent's step until its true mean KL <= bound.

    Tries fractions ``1, r, r^2, ..., r^max_backtracks`` (``r = backtrack_ratio``)
    for all agents at once (one stacked forward per fraction) and gives every
    agent its largest fraction with ``mean_m D_KL(pi_old || pi_new) <= bound``
    (the paper's KL direction, old first) and, when ``actions`` and
    ``advantages`` are given, a strictly positive surrogate improvement. An
    agent for which no fraction passes is reverted (fraction 0). The
    quadratic model of eq. (14) is exact only to second order, so this is
    what makes the bound hold.

    Args:
        policy: policy function.
        params_old: stacked ``theta_old``.
        step: flat step ``(n, D)``.
        obs: ``(n, M, ...)``.
        bound: per-agent KL bound ``delta/N`` (> 0), float or ``(n,)``.
        actions: ``(n, M, K, ...)``, only for the improvement test. (default: None)
        advantages: ``(n, M)``, only for the improvement test. (default: None)
        backtrack_ratio: shrink factor in ``(0, 1)``. (default: 0.8)
        max_backtracks: shrinks after the full step. (default: 10)

    Returns:
        :class:`LineSearchResult`.
    """
    _check_positive("bound", bound, "the KL bound is delta/N of eq. (8), e.g. 0.003")
    if not 0.0 < backtrack_ratio < 1.0:
        raise ValueError(f"backtrack_ratio must be in (0, 1), got {backtrack_ratio}")
    if max_backtracks < 0:
        raise ValueError(f"max_backtracks must be >= 0, got {max_backtracks}")
    if (actions is None) != (advantages is None):
        raise ValueError("pass both actions and advantages (surrogate test) or neither (KL only)")
    params_old = _detach(params_old)
    n = check_agent_dims(params_old, obs=obs, actions=actions, advantages=advantages)
    _check_flat("step", step, n, flat_params(params_old).shape[1])
    step = step.detach()
    bound_t = torch.as_tensor(bound, dtype=step.dtype, device=step.device).expand(n)
    check_improve = advantages is not None
    with torch.no_grad():
        if check_improve:
            logp_old = log_prob(policy, params_old, obs, actions)
            surr_old = advantages.mean(-1)
        fraction = torch.zeros(n, dtype=step.dtype, device=step.device)
        kl_acc = torch.zeros_like(fraction)
        imp_acc = torch.zeros_like(fraction)
        accepted = torch.zeros(n, dtype=torch.bool, device=step.device)
        for k in range(max_backtracks + 1):
            f = backtrack_ratio**k
            trial = add_step(params_old, step, f)
            kl = mean_kl(policy, trial, params_old, obs)
            ok = kl <= bound_t
            if check_improve:
                imp = surrogate(policy, trial, obs, actions, advantages, logp_old=logp_old) - surr_old
                ok = ok & (imp > 0)
            else:
                imp = torch.zeros_like(kl)
            new = ok & ~accepted
            fraction = torch.where(new, torch.full_like(fraction, f), fraction)
            kl_acc = torch.where(new, kl, kl_acc)
            imp_acc = torch.where(new, imp, imp_acc)
            accepted = accepted | ok
            if bool(accepted.all()):
                break
        params_new = add_step(params_old, step, fraction)
    return LineSearchResult(params=params_new, fraction=fraction, kl=kl_acc, improvement=imp_acc,
                            accepted=accepted)


# --------------------------------------------------------------- linearisation


class Linearisation:
    """001 sec. IV-C eqs. (13)-(14): every agent's local model around ``theta_old``, batched.

    Bundles the policy function with ``theta_old``, the observations and the
    joint actions of one batch, and exposes the three matrix-free operators
    MATRPO needs, for all agents or a subset ``agents`` (a ``LongTensor`` of
    agent ids; the asynchronous ADMM activates two at a time):

    * :meth:`jvp` — ``J^{qn} x^q`` (linearised log-ratios), ``(|agents|, M, K)``;
    * :meth:`vjp` — ``sum_n J^{qn T} u^{qn}``, ``(|agents|, D)``;
    * :meth:`fvp` — ``v -> (H^q + damping I) v``; the all-agent operator is
      built once and cached (one gradient graph reused by every CG iteration),
      a subset's is built on demand from that subset only.
    * :meth:`gnvp` — ``v -> (G^q + damping I) v`` with the empirical Fisher
      ``G^q = 1/M sum_n J^{qnT} J^{qn}`` of eq. (46) (``jvp`` then ``vjp``).

    Args:
        policy: policy function.
        params_old: stacked ``theta_old`` (detached here).
        obs: ``(n, M, ...)``.
        actions: ``(n, M, K, ...)``.
        damping: Fisher damping > 0. (default: 1e-2, OpenAI Baselines' TRPO
            value, the code base of the paper)
    """

    def __init__(
        self,
        policy: PolicyFn,
        params_old: Mapping[str, Tensor],
        obs: Tensor,
        actions: Tensor,
        *,
        damping: float = 1e-2,
    ) -> None:
        _check_damping(damping)
        self.policy = policy
        self.params_old = _detach(params_old)
        self.obs = obs.detach()
        self.actions = actions.detach()
        self.damping = float(damping)
        self.n_agents = check_agent_dims(self.params_old, obs=obs, actions=actions)
        with torch.no_grad():
            self.logp_old = log_prob(policy, self.params_old, self.obs, self.actions)
        _, self.n_samples, self.n_components = self.logp_old.shape
        self.n_params = flat_params(self.params_old).shape[1]
        self._fvp_all: Callable[[Tensor], Tensor] | None = None

    @property
    def dtype(self) -> torch.dtype:
        return self.logp_old.dtype

    @property
    def device(self) -> torch.device:
        return self.logp_old.device

    def _sel(self, agents: Tensor | None) -> tuple[Params, Tensor, Tensor]:
        if agents is None:
            return self.params_old, self.obs, self.actions
        return _select(self.params_old, agents), self.obs[agents], self.actions[agents]

    def jvp(self, x: Tensor, agents: Tensor | None = None) -> Tensor:
        """``J x`` (eqs. 13, 20) for all agents or ``agents``; ``x`` is ``(|agents|, D)``."""
        p, o, a = self._sel(agents)
        return jvp_logratio(self.policy, p, o, a, x)

    def vjp(self, u: Tensor, agents: Tensor | None = None) -> Tensor:
        """``sum_n J^{nT} u^n`` (eq. 22) for all agents or ``agents``; ``u`` is ``(|agents|, M, K)``."""
        p, o, a = self._sel(agents)
        return vjp_logratio(self.policy, p, o, a, u)

    def fvp(self, agents: Tensor | None = None) -> Callable[[Tensor], Tensor]:
        """The damped Fisher-vector product (eq. 14) of all agents (cached) or of ``agents``."""
        if agents is None:
            if self._fvp_all is None:
                self._fvp_all = make_fvp(self.policy, self.params_old, self.obs, damping=self.damping)
            return self._fvp_all
        p, o, _ = self._sel(agents)
        return make_fvp(self.policy, p, o, damping=self.damping)

    def gnvp(self, agents: Tensor | None = None) -> Callable[[Tensor], Tensor]:
        """``v -> (G^q + damping I) v`` with ``G^q = 1/M sum_n J^{qnT} J^{qn}`` (eq. 46), by one jvp and one vjp.

        The empirical Fisher of the sampled log-ratios: the curvature of the
        ADMM penalty of eq. (21) (``|E(q)| beta G^q``), which eq. (46) equates
        with the KL Hessian as ``M -> inf``. Uses :meth:`jvp` and :meth:`vjp`,
        so a subclass with cached operators gets cached products here too.
        """
        m, damping = self.n_samples, self.damping

        def gnvp(v: Tensor) -> Tensor:
            return self.vjp(self.jvp(v, agents), agents) / m + damping * v

        return gnvp

    def surrogate_gradient(self, advantages: Tensor, agents: Tensor | None = None) -> Tensor:
        """``g^i = 1/M sum_n J^{inT} A^i``, eq. (8)'s objective gradient at ``theta_old``, ``(n, D)``."""
        n = self.n_agents if agents is None else int(agents.numel())
        if advantages.shape != (n, self.n_samples):
            raise ValueError(
                f"advantages must be (n, M) = ({n}, {self.n_samples}), got {tuple(advantages.shape)}"
            )
        u = advantages[..., None].expand(n, self.n_samples, self.n_components)
        return self.vjp(u, agents) / self.n_samples


def trpo_step(
    lin: Linearisation,
    advantages: Tensor,
    *,
    delta: float | Tensor,
    cg_iters: int = 10,
    residual_tol: float = 1e-10,
    line_search: bool = True,
    backtrack_ratio: float = 0.8,
    max_backtracks: int = 10,
) -> tuple[Params, NaturalStep, LineSearchResult | None]:
    """001 eq. (1) per agent (independent TRPO, MATRPO with no links): natural step + line search.

    ``x^i = sqrt(2 delta / (g^T H^{-1} g)) H^{-1} g`` with ``g`` the surrogate
    gradient, then (optionally) a backtracking search on the true KL and the
    surrogate improvement.

    Returns:
        ``(params_new, natural_step_result, line_search_result or None)``.
    """
    g = lin.surrogate_gradient(advantages)
    nat = natural_step(lin.fvp(), g, delta=delta, cg_iters=cg_iters, residual_tol=residual_tol)
    if not line_search:
        return add_step(lin.params_old, nat.step), nat, None
    ls = backtracking_line_search(
        lin.policy, lin.params_old, nat.step, lin.obs, bound=delta, actions=lin.actions,
        advantages=advantages, backtrack_ratio=backtrack_ratio, max_backtracks=max_backtracks,
    )
    return ls.params, nat, ls

