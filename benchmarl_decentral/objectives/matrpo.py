"""MATRPO's policy update on cached linearisations (paper 001_8ff130c17487d6e3.txt).

Sec. IV-C eqs. (13)-(14), sec. V eqs. (20)-(22), Algorithm 1. Everything
here is math on torch tensors (no BenchMARL, no TorchRL):

* :class:`CachedLinearisation`: the operators of
  :class:`~benchmarl_decentral.objectives.trust_region.Linearisation`
  (``J x``, ``J^T u``, the true-KL Fisher ``H v``) with one cached forward per
  agent subset, in Gauss-Newton form; for plain MLPs by explicit
  forward/back-propagation (:class:`_MlpOperators`), otherwise with
  ``torch.func`` (:class:`_SubsetOperators`);
* :func:`mask_joint_output`: action masks on a joint policy output;
* :func:`matrpo_update`: one policy iteration, ADMM
  (:func:`~benchmarl_decentral.objectives.admm.run_admm`) then the per-agent
  line search, returning :class:`MatrpoStats`.

:mod:`benchmarl_decentral.algorithms.matrpo` (the BenchMARL glue) re-exports
these names.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, kl_divergence

from benchmarl_decentral.distributed.transport import Transport
from benchmarl_decentral.objectives.admm import (
    init_state,
    measured_links,
    per_agent_relative_residuals,
    per_agent_residuals,
    relative_residuals,
    run_admm,
)
from benchmarl_decentral.objectives.trust_region import (
    Linearisation,
    LineSearchResult,
    backtracking_line_search,
    flat_params,
    unflatten,
)

__all__ = [
    "CachedLinearisation",
    "MASKED_LOGIT",
    "MatrpoStats",
    "mask_joint_output",
    "matrpo_update",
    "stacked_network",
]

#: Logit given to illegal actions: finite, so that ``exp`` underflows to exactly 0 in float32/64
#: and every KL, gradient and Hessian term of an illegal action is 0 (never ``inf * 0``).
MASKED_LOGIT = -1e9


def mask_joint_output(out: Tensor, mask: Tensor) -> Tensor:
    """Action masks on a joint output: head ``n`` of every agent gets agent ``n``'s mask.

    ``out`` is ``(..., K * F)`` categorical logits (``K`` heads of ``F``) and
    ``mask`` a bool tensor broadcastable to ``(..., K, F)``: agent ``n``'s legal
    actions at that sample. Illegal logits become :data:`MASKED_LOGIT`, so the
    joint policy ``prod_n pi^i(a^n | o^i)`` puts no mass on illegal actions of
    any agent, like the executed (masked) policy of agent ``n``.
    """
    blocks = out.unflatten(-1, (mask.shape[-2], mask.shape[-1]))
    return blocks.masked_fill(~mask, MASKED_LOGIT).flatten(-2)


def stacked_network(template: nn.Module) -> Callable[[Mapping[str, Tensor], Tensor], Tensor]:
    """``(params {name: (n, ...)}, obs (n, M, d)) -> out (n, M, O)``: vmap of ``functional_call``.

    ``template`` is one agent's network (torchrl ``MultiAgentMLP._empty_net``,
    a meta-device copy); each agent runs its own parameter slice on its own
    observations.
    """

    def one(p, o):
        return torch.func.functional_call(template, p, (o,))

    batched = torch.func.vmap(one)

    def network(params: Mapping[str, Tensor], obs: Tensor) -> Tensor:
        return batched(dict(params), obs)

    return network


class _SubsetOperators:
    """Cached network Jacobian products of one agent subset at ``theta_old`` (any network).

    ``J_f x`` by :func:`torch.func.linearize` (the primal pass is done once,
    each product is one tangent pass) and ``J_f^T w`` by a retained autograd
    graph (one backward per product), on the full batch and on the Fisher
    subsample.
    """

    def __init__(self, network, params: Dict[str, Tensor], obs: Tensor, fisher_subsample: int) -> None:
        self.like = params
        obs_f = obs if fisher_subsample == 1 else obs[:, ::fisher_subsample]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # make_fx chatter inside linearize
            _, jvp_full = torch.func.linearize(lambda p: network(p, obs), params)
            jvp_f = jvp_full if fisher_subsample == 1 else torch.func.linearize(lambda p: network(p, obs_f), params)[1]
        self._jvp = {False: jvp_full, True: jvp_f}
        with torch.enable_grad():
            self.leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
            out_full = network(self.leaves, obs)
            out_f = out_full if fisher_subsample == 1 else network(self.leaves, obs_f)
        self._out = {False: out_full, True: out_f}

    def jvp(self, tangent: Dict[str, Tensor], fisher: bool) -> Tensor:
        return self._jvp[fisher](tangent)

    def vjp(self, w: Tensor, fisher: bool) -> Tensor:
        grads = torch.autograd.grad(self._out[fisher], list(self.leaves.values()), w, retain_graph=True)
        return flat_params(dict(zip(self.leaves, grads)))


class _ForwardModeOperators:
    """:class:`_SubsetOperators` of all agents on all samples without ``linearize``'s trace.

    ``J_f x`` is one ``torch.func.jvp`` (a primal and a tangent pass) per product: tracing a whole
    model once with ``make_fx`` (``linearize``) costs more than a whole update's products on a
    recurrent model, whose replay is a Python loop over time steps (a 30-step GRU: about 35 s to
    trace, 2.5 s for an update of 2 ADMM x 2 CG iterations by jvp). ``J_f^T w`` by the retained
    autograd graph. The Fisher subsample is taken from the full products (:class:`_RowOperators`):
    the model runs on the whole batch either way.
    """

    def __init__(self, network, params: Dict[str, Tensor], obs: Tensor) -> None:
        self.like, self.network, self.obs = params, network, obs
        with torch.enable_grad():
            self.leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
            self._out = {False: network(self.leaves, obs)}

    def jvp(self, tangent: Dict[str, Tensor], fisher: bool) -> Tensor:
        return torch.func.jvp(lambda p: self.network(p, self.obs), (self.like,), (tangent,))[1]

    def vjp(self, w: Tensor, fisher: bool) -> Tensor:
        grads = torch.autograd.grad(self._out[False], list(self.leaves.values()), w, retain_graph=True)
        return flat_params(dict(zip(self.leaves, grads)))


class _RowOperators:
    """A subset's (or the Fisher subsample's) operators as rows of the all-agent, all-sample ones.

    For a network that evaluates every agent on every sample at each call anyway (a whole model
    whose agents read each other's observations, e.g. a graph network): ``J_f x`` of agents ``s``
    is the rows ``s`` of the all-agent product with a zero tangent for the other agents, ``J_f^T w``
    the rows ``s`` of the all-agent product with ``w`` zero on the other agents' rows (agent ``i``'s
    output depends on ``theta^i`` only), and the Fisher subsample is every ``k``-th sample of
    them. One cached primal pass serves every link of the ADMM.
    """

    def __init__(self, full: _ForwardModeOperators, agents: Optional[Tensor], n_agents: int, fisher_subsample: int) -> None:
        if agents is not None:
            agents = agents.to(next(iter(full.like.values())).device)
        self.full, self.agents, self.n, self.step = full, agents, n_agents, fisher_subsample
        self.like = full.like if agents is None else {k: v[agents] for k, v in full.like.items()}

    def jvp(self, tangent: Dict[str, Tensor], fisher: bool) -> Tensor:
        if self.agents is not None:
            tangent = {k: torch.zeros_like(self.full.like[k]).index_copy(0, self.agents, v) for k, v in tangent.items()}
        out = self.full.jvp(tangent, False)
        if self.agents is not None:
            out = out[self.agents]
        return out[:, :: self.step] if fisher and self.step > 1 else out

    def vjp(self, w: Tensor, fisher: bool) -> Tensor:
        n_rows = self.n if self.agents is None else self.agents.numel()
        if fisher and self.step > 1:
            M = self.full._out[False].shape[1]
            pad = w.new_zeros(n_rows, M, *w.shape[2:])
            pad[:, :: self.step] = w
            w = pad
        if self.agents is not None:
            w = w.new_zeros(self.n, *w.shape[1:]).index_copy(0, self.agents, w)
        g = self.full.vjp(w, False)
        return g if self.agents is None else g[self.agents]


_ELEMENTWISE = (nn.SELU, nn.Tanh, nn.ReLU, nn.ELU, nn.CELU, nn.GELU, nn.LeakyReLU, nn.Sigmoid,
                nn.SiLU, nn.Softplus, nn.Mish, nn.Identity)


def _mlp_layers(template: nn.Module) -> Optional[List[Tuple[str, bool, Optional[nn.Module]]]]:
    """``[(linear name, has bias, activation or None), ...]`` if ``template`` is a plain MLP, else ``None``.

    A plain MLP is an ``nn.Sequential`` of ``nn.Linear`` layers, each followed
    by at most one elementwise activation (torchrl's ``MLP`` without norm or dropout).
    """
    if not isinstance(template, nn.Sequential):
        return None
    layers: List[List[Any]] = []
    for name, module in template.named_children():
        if isinstance(module, nn.Linear):
            layers.append([name, module.bias is not None, None])
        elif isinstance(module, _ELEMENTWISE) and layers and layers[-1][2] is None:
            layers[-1][2] = module
        else:
            return None
    return [tuple(layer) for layer in layers] or None


class _MlpOperators:
    """The operators of :class:`_SubsetOperators` for a plain MLP, by explicit forward/back-propagation.

    One forward stores every layer's input ``h`` and activation derivative
    ``D = sigma'(z)`` (elementwise), then
    ``J_f x``: ``dz_l = h_{l-1} dW_l^T + db_l + dh_{l-1} W_l^T``, ``dh_l = D_l dz_l``;
    ``J_f^T w``: ``dz_l = D_l dh_l``, ``gW_l = dz_l^T h_{l-1}``, ``gb_l = sum_m dz_l``,
    ``dh_{l-1} = dz_l W_l``. Same numbers as autograd, without re-deriving the
    activation at every product; the Fisher subsample is a slice of the cache.
    """

    def __init__(self, layers, params: Dict[str, Tensor], obs: Tensor, fisher_subsample: int) -> None:
        self.layers = layers
        self.like = params
        self.step = fisher_subsample
        self.weights = [params[f"{name}.weight"] for name, _, _ in layers]
        self.h: List[Tensor] = []  # input of every layer
        self.D: List[Optional[Tensor]] = []
        h = obs
        for (name, has_bias, act), W in zip(layers, self.weights):
            self.h.append(h)
            z = torch.bmm(h, W.transpose(1, 2))
            if has_bias:
                z = z + params[f"{name}.bias"][:, None]
            if act is None:
                self.D.append(None)
                h = z
            else:
                with torch.enable_grad():
                    zz = z.detach().requires_grad_(True)
                    y = act(zz)
                    (D,) = torch.autograd.grad(y.sum(), zz)
                self.D.append(D)
                h = y.detach()

        # contiguous copies of the Fisher subsample, so that no product re-slices
        sub = (lambda t: t) if self.step == 1 else (lambda t: None if t is None else t[:, :: self.step].contiguous())
        self._h = {False: self.h, True: [sub(t) for t in self.h]}
        self._D = {False: self.D, True: [sub(t) for t in self.D]}

    def jvp(self, tangent: Dict[str, Tensor], fisher: bool) -> Tensor:
        dh = None
        for (name, has_bias, _), W, h, D in zip(self.layers, self.weights, self._h[fisher], self._D[fisher]):
            # in place where possible: large temporaries are page-faulted afresh on every allocation
            dz = torch.bmm(h, tangent[f"{name}.weight"].transpose(1, 2))
            if has_bias:
                dz.add_(tangent[f"{name}.bias"][:, None])
            if dh is not None:
                dz.baddbmm_(dh, W.transpose(1, 2))
            dh = dz if D is None else dz.mul_(D)
        return dh

    def vjp(self, w: Tensor, fisher: bool) -> Tensor:
        grads: Dict[str, Tensor] = {}
        delta = w
        hs, Ds = self._h[fisher], self._D[fisher]
        for i in reversed(range(len(self.layers))):
            name, has_bias, _ = self.layers[i]
            if Ds[i] is not None:
                delta = delta * Ds[i] if delta is w else delta.mul_(Ds[i])
            grads[f"{name}.weight"] = torch.bmm(delta.transpose(1, 2), hs[i])
            if has_bias:
                grads[f"{name}.bias"] = delta.sum(1)
            if i > 0:
                delta = torch.bmm(delta, self.weights[i])
        return flat_params({k: grads[k] for k in self.like})


class CachedLinearisation(Linearisation):
    """001 eqs. (13), (14), (20): :class:`Linearisation`'s operators with cached forwards.

    Same operators as the base class, in the Gauss-Newton form of the
    network output ``f(theta)`` (``(n, M, O)``, ``K`` blocks of ``F``):

    * ``J x = G . (J_f x)`` with ``G = d log pi / d f`` at ``theta_old`` (each
      component's log-probability depends on its own block only);
    * ``J^T u = J_f^T (G u)``;
    * ``H v = 1/M_F J_f^T (H_f (J_f v)) + damping v``, with ``H_f`` the exact
      per-sample, per-head Hessian of the true KL
      ``kl_divergence(pi(f_old) detached, pi(f))`` w.r.t. ``f`` at ``f_old``.
      At ``theta_old`` this *is* the Hessian of the mean KL (the first-order
      term vanishes because the KL is minimal there), so it equals
      :func:`~benchmarl_decentral.objectives.make_fvp`, at about a third of
      the cost of its double backward.

    The network's primal pass for an agent subset (a link's two agents, or
    all agents) is done once and reused by every product
    (:class:`_SubsetOperators`). ``fisher_subsample = k > 1`` evaluates the
    Fisher on every ``k``-th sample only (``M_F = ceil(M / k)``), as OpenAI
    Baselines' TRPO (the paper's code base) does; ``J`` and the KL bound of
    the line search still use all samples.

    Args:
        network: ``(params, obs (n, M, d)) -> out (n, M, O)``, e.g. :func:`stacked_network`.
        template: the single-agent network behind ``network``; when it is a
            plain MLP the products use explicit back-propagation
            (:class:`_MlpOperators`), otherwise ``torch.func``. (default: None)
        make_dist: ``out (..., O) -> Distribution`` with batch ``(..., K)``.
        params_old: stacked ``theta_old``.
        obs: ``(n, M, d)``.
        actions: joint actions ``(n, M, K, ...)``.
        damping: Fisher damping (> 0).
        fisher_subsample: Fisher on every k-th sample (>= 1). (default: 1)
        shared_operators: ``network`` evaluates every agent on every sample at each call (e.g.
            :class:`~benchmarl_decentral.algorithms.matrpo.GatheredJointNetwork`): one cached
            all-agent linearisation serves every agent subset and the Fisher subsample
            (:class:`_RowOperators`) instead of one per subset. Same numbers. (default: False)
        mask: action masks, bool, broadcastable to ``(n, M, K, F)`` (head ``n``
            of every agent masked with agent ``n``'s legal actions, see
            :func:`mask_joint_output`), or ``None``. The network's Jacobian
            products stay those of the unmasked output: ``G`` and ``H_f`` are
            taken at the masked output, where they are exactly 0 on illegal
            actions, so the chain rule through the mask changes nothing.
            (default: None)
    """

    def __init__(
        self,
        network: Callable[[Mapping[str, Tensor], Tensor], Tensor],
        make_dist: Callable[[Tensor], Distribution],
        params_old: Mapping[str, Tensor],
        obs: Tensor,
        actions: Tensor,
        *,
        damping: float,
        fisher_subsample: int = 1,
        template: Optional[nn.Module] = None,
        mask: Optional[Tensor] = None,
        shared_operators: bool = False,
    ) -> None:
        policy = _MaskedJointPolicy(network, make_dist, mask) if mask is not None else (
            lambda p, o: make_dist(network(p, o)))
        super().__init__(policy, params_old, obs, actions, damping=damping)
        self._mlp = None if template is None else _mlp_layers(template)
        if fisher_subsample < 1:
            raise ValueError(f"fisher_subsample must be >= 1, got {fisher_subsample}")
        self.network = network
        self.make_dist = make_dist
        self.fisher_subsample = int(fisher_subsample)
        n, M, K = self.n_agents, self.n_samples, self.n_components
        with torch.no_grad():
            out_old = network(self.params_old, self.obs)
        if out_old.shape[:2] != (n, M) or out_old.shape[-1] % K:
            raise ValueError(
                f"network output {tuple(out_old.shape)} must be (n, M, K * F) with K={K} heads"
            )
        self.head_size = out_old.shape[-1] // K
        if mask is not None:
            out_old = policy.masked(out_old)
        with torch.enable_grad():
            f = out_old.clone().requires_grad_(True)
            (G,) = torch.autograd.grad(make_dist(f).log_prob(self.actions).sum(), f)
        self._G = G.unflatten(-1, (K, self.head_size))  # (n, M, K, F)
        self.obs_fisher = self.obs if self.fisher_subsample == 1 else self.obs[:, :: self.fisher_subsample]
        out_fisher = out_old if self.fisher_subsample == 1 else out_old[:, :: self.fisher_subsample]
        self._H_out = self._output_hessian(out_fisher)  # (n, M_F, K, F, F)
        self._ops: Dict[Any, _SubsetOperators] = {}
        self._parts: Dict[Any, Tensor] = {}
        self.shared_operators = bool(shared_operators)

    @property
    def n_fisher_samples(self) -> int:
        return self.obs_fisher.shape[1]

    def _output_hessian(self, out_old: Tensor) -> Tensor:
        """Per sample and head, the ``F x F`` Hessian of the true KL w.r.t. the head's outputs at ``f_old``."""
        old = out_old.detach()

        def kl_sum(f: Tensor) -> Tensor:
            # the old distribution is built inside (its lazy attributes must not escape
            # the transform); ``old`` carries no tangent, so it is held fixed
            return kl_divergence(self.make_dist(old), self.make_dist(f)).sum()

        grad = torch.func.grad(kl_sum)
        K, F = self.n_components, self.head_size
        columns = []
        for j in range(F):  # one forward-over-reverse product per output coordinate of a head
            e = torch.zeros(*old.shape[:-1], K, F, dtype=old.dtype, device=old.device)
            e[..., j] = 1.0
            _, col = torch.func.jvp(grad, (old,), (e.flatten(-2),))
            columns.append(col.unflatten(-1, (K, F)))
        return torch.stack(columns, dim=-1)

    def _sel_key(self, agents: Tensor | None):
        return None if agents is None else tuple(int(a) for a in agents.tolist())

    def operators(self, agents: Tensor | None):
        """The cached operators of ``agents`` (built on first use)."""
        key = self._sel_key(agents)
        ops = self._ops.get(key)
        if ops is None and self.shared_operators:
            if "all" not in self._ops:
                self._ops["all"] = _ForwardModeOperators(self.network, self.params_old, self.obs)
            ops = _RowOperators(self._ops["all"], agents, self.n_agents, self.fisher_subsample)
            self._ops[key] = ops
        elif ops is None:
            if agents is None:
                params, obs = self.params_old, self.obs
            else:
                params = {k: v[agents] for k, v in self.params_old.items()}
                obs = self.obs[agents]
            if self._mlp is not None:
                ops = _MlpOperators(self._mlp, params, obs, self.fisher_subsample)
            else:
                ops = _SubsetOperators(self.network, params, obs, self.fisher_subsample)
            self._ops[key] = ops
        return ops

    def _part(self, t: Tensor, agents: Tensor | None) -> Tensor:
        """Rows ``agents`` of a per-agent constant of this batch (``G``, ``H_f``), indexed once per subset."""
        if agents is None:
            return t
        key = (id(t), self._sel_key(agents))
        part = self._parts.get(key)
        if part is None:
            part = self._parts[key] = t[agents]
        return part

    def jvp(self, x: Tensor, agents: Tensor | None = None) -> Tensor:
        ops = self.operators(agents)
        tangent = ops.jvp(unflatten(x.detach().to(self.dtype), ops.like), False)
        return (tangent.unflatten(-1, (self.n_components, self.head_size)) * self._part(self._G, agents)).sum(-1)

    def vjp(self, u: Tensor, agents: Tensor | None = None) -> Tensor:
        ops = self.operators(agents)
        w = (u.detach().to(self.dtype)[..., None] * self._part(self._G, agents)).flatten(-2)
        return ops.vjp(w, False)

    def fvp(self, agents: Tensor | None = None) -> Callable[[Tensor], Tensor]:
        ops = self.operators(agents)
        H = self._part(self._H_out, agents)
        m = self.n_fisher_samples
        damping = self.damping

        def fvp(v: Tensor) -> Tensor:
            t = ops.jvp(unflatten(v.detach().to(self.dtype), ops.like), True)
            t = t.unflatten(-1, (self.n_components, self.head_size))
            w = torch.einsum("amkfg,amkg->amkf", H, t).flatten(-2) / m
            return ops.vjp(w, True) + damping * v

        return fvp

    def release(self) -> None:
        """Free the cached graphs."""
        self._ops.clear()
        self._parts.clear()


class _MaskedJointPolicy:
    """``policy(params, obs)`` of :mod:`~benchmarl_decentral.objectives` with action masks (all ``M`` samples)."""

    def __init__(self, network, make_dist, mask: Tensor) -> None:
        self.network, self.make_dist, self.mask = network, make_dist, mask

    def masked(self, out: Tensor) -> Tensor:
        """The network output ``(n, M, K * F)`` with the masks applied (:func:`mask_joint_output`)."""
        K, F = self.mask.shape[-2:]
        if out.shape[-2] != self.mask.shape[-3] and self.mask.shape[-3] != 1:
            raise ValueError(
                f"masked joint policy: output {tuple(out.shape)} has another sample count than the "
                f"masks {tuple(self.mask.shape)}; call it on the samples the masks were given for"
            )
        return mask_joint_output(out, self.mask.expand(*out.shape[:-1], K, F))

    def __call__(self, params: Mapping[str, Tensor], obs: Tensor) -> Distribution:
        return self.make_dist(self.masked(self.network(params, obs)))


@dataclass
class MatrpoStats:
    """One MATRPO policy update, per agent (``(n,)`` tensors) unless noted.

    Attributes:
        kl: mean true ``D_KL(pi_old || pi_new)`` after the line search.
        step_fraction: accepted fraction of the ADMM step (1 = full, 0 = reverted).
        primal_residual: mean over the agent's links of the log-ratio disagreement ``RMS(J^i x^i - J^j x^j)``.
        dual_residual: mean over the agent's links of ``beta RMS(dz)`` at their last update.
        admm_updates: primal updates the agent took.
        iterations: ADMM iterations used (scalar int; early stop with ``admm_tol``).
        history: max primal residual after every iteration.
        improvement: surrogate improvement ``L^i(theta_new) - L^i(theta_old)``
            at the accepted step (zeros when the line search checks the KL only).
        primal_residual_rel: mean over the agent's links of the *relative*
            primal residual (:func:`~benchmarl_decentral.objectives.relative_residuals`).
        dual_residual_rel: the same for the relative dual residual.
        converged_links: fraction of the agent's links whose own stop test
            (``admm_tol``) held at their last check (0 when ``admm_tol`` is off).
        links_up: fraction of the link activations that were not lost to
            ``link_failure`` (scalar; below 1 with ``link_failure``; a link
            idling under ``admm_tol`` counts as up; None without links).
        cg_iterations: conjugate-gradient iterations the agent ran over its primal
            steps (each one product with the metric).
        primal_residual_rel_max: the largest relative primal residual over the
            links (scalar; None without links).
        bytes_sent: bytes each agent sent over its links in the ADMM (one
            ``(M, K)`` value ``y + beta C J x`` per link end and z/y update,
            eq. 22; :attr:`~benchmarl_decentral.objectives.admm.AdmmState.comm`),
            int64; with a distributed transport, of the agents held here only
            (``(n_local,)``, in the order of ``transport.local_agents``).
        network_bytes_sent: the part of ``bytes_sent`` that left the process
            (links to agents of other processes; zeros in one process), int64.
    """

    kl: Tensor
    step_fraction: Tensor
    primal_residual: Tensor
    dual_residual: Tensor
    admm_updates: Tensor
    iterations: int
    history: List[float]
    improvement: Optional[Tensor] = None
    primal_residual_rel: Optional[Tensor] = None
    dual_residual_rel: Optional[Tensor] = None
    converged_links: Optional[Tensor] = None
    links_up: Optional[float] = None
    bytes_sent: Optional[Tensor] = None
    cg_iterations: Optional[Tensor] = None
    primal_residual_rel_max: Optional[float] = None
    network_bytes_sent: Optional[Tensor] = None


def _line_search(lin: Linearisation, x: Tensor, advantages: Tensor, transport: Transport | None, *, bound: float,
                 require_improvement: bool, backtrack_ratio: float, max_backtracks: int) -> LineSearchResult:
    """The per-agent line search of :func:`matrpo_update`; with a distributed transport, of the agents held here.

    Every agent's search reads its own parameters, observations, actions and
    advantages only, so the held agents' results are the all-agent call's
    rows; the others keep ``theta_old`` (fraction, KL and improvement 0).
    """
    rows = None if transport is None else transport.local_agents(lin.n_agents).to(x.device)

    def cut(t: Tensor) -> Tensor:
        return t if rows is None else t[rows.to(t.device)]

    ls = backtracking_line_search(
        lin.policy, {k: cut(v) for k, v in lin.params_old.items()}, cut(x), cut(lin.obs), bound=bound,
        actions=cut(lin.actions) if require_improvement else None,
        advantages=cut(advantages).to(lin.dtype) if require_improvement else None,
        backtrack_ratio=backtrack_ratio, max_backtracks=max_backtracks,
    )
    if rows is None:
        return ls

    def place(held: Tensor, base: Tensor) -> Tensor:
        out = base.clone()
        out[rows.to(out.device)] = held.to(out)
        return out

    zeros = x.new_zeros(lin.n_agents)
    return LineSearchResult(
        params={k: place(ls.params[k], v.detach()) for k, v in lin.params_old.items()},
        fraction=place(ls.fraction, zeros), kl=place(ls.kl, zeros), improvement=place(ls.improvement, zeros),
        accepted=place(ls.accepted, torch.zeros(lin.n_agents, dtype=torch.bool, device=x.device)),
    )


def matrpo_update(
    lin: Linearisation,
    advantages: Tensor,
    links: Tensor,
    *,
    delta: float,
    beta: float,
    iterations: int,
    mode: str,
    link_failure: float = 0.0,
    generator: torch.Generator | None = None,
    round_robin_offset: int = 0,
    tol: float | None = None,
    exact_kkt: bool = False,
    cg_iters: int = 10,
    backtrack_ratio: float = 0.8,
    max_backtracks: int = 10,
    isolated: str = "error",
    require_improvement: bool = True,
    metric: str = "kl",
    cg_rtol: float = 0.0,
    transport: Transport | None = None,
) -> Tuple[Dict[str, Tensor], MatrpoStats, int]:
    """001 Algorithm 1 (one policy iteration): ADMM (eqs. 21-22, 40) then the per-agent line search.

    The line search gives agent ``i`` the largest fraction ``f`` in
    ``1, r, r^2, ..., r^max_backtracks`` of its ADMM step ``x^i`` with
    ``D_KL(pi^i_old || pi^i(theta^i_old + f x^i)) <= delta/N`` (eq. 8) and,
    with ``require_improvement``, ``L^i(theta^i_old + f x^i) > L^i(theta^i_old)``
    (below); an agent for which no fraction passes keeps ``theta^i_old``.

    Args:
        lin: every agent's linearisation at ``theta_old`` (eqs. 13-14, 20).
        advantages: private advantages ``(n, M)`` (already standardised per agent if wanted).
        links: ``(L, 2)`` communication links (CPU; the ADMM state lives on ``lin.device``).
        delta: per-agent KL bound ``delta/N`` (eq. 8).
        beta: ADMM penalty (eq. 11).
        iterations: ADMM iterations.
        mode: ``random`` / ``round_robin`` (asynchronous, one link per
            iteration) or ``synchronous`` (all links).
        link_failure: probability that an activated link fails. (default: 0)
        generator: RNG for link selection and failures. (default: None)
        round_robin_offset: link to start the round robin at (continues across updates). (default: 0)
        tol: early stop on primal and dual residuals. (default: None)
        exact_kkt: see :func:`~benchmarl_decentral.objectives.primal_step`. (default: False)
        cg_iters: CG iterations per primal step. (default: 10)
        backtrack_ratio: line-search shrink factor. (default: 0.8)
        max_backtracks: line-search shrinks. (default: 10)
        isolated: an agent without a link: ``"error"`` or ``"local"`` (its own
            TRPO step; :func:`~benchmarl_decentral.objectives.run_admm`). (default: "error")
        require_improvement: the line search also requires that agent ``i``'s
            own surrogate (eq. 8) improved, ``L^i(theta) - L^i(theta_old) > 0``
            with ``L^i(theta) = 1/M sum_m prod_n Upsilon^n_m(theta^i) A^i_m``
            (``L^i(theta_old) = mean_m A^i_m``), as the public TF2 code and
            OpenAI Baselines' TRPO do; ``False`` checks the KL bound only. (default: True)
        metric: trust-region metric of the ADMM primal step, ``"kl"``, ``"gauss_newton"`` or
            ``"kl_exact"`` (:func:`~benchmarl_decentral.objectives.primal_step`). (default: "kl")
        cg_rtol: relative CG stop of every primal step
            (:func:`~benchmarl_decentral.objectives.primal_step`). (default: 0, off)
        transport: ``None`` (one process) or a distributed transport
            (:func:`~benchmarl_decentral.objectives.run_admm`): the ADMM steps
            the agents this process holds and exchanges their link values;
            only their entries of ``params_new`` and of the per-agent
            statistics are this update's (the others keep ``theta_old``:
            their step is 0 here), and ``primal_residual_rel_max`` is over
            their links. (default: None)

    Returns:
        ``(params_new, stats, next_round_robin_offset)``.
    """
    state = init_state(links, lin.n_samples, n_params=lin.n_params, n_agents=lin.n_agents,
                       n_components=lin.n_components, dtype=lin.dtype, device=lin.device)
    state.iteration = int(round_robin_offset)  # only read by the round-robin link choice
    state = run_admm(
        lin, advantages, links, delta=delta, beta=beta, iterations=iterations, mode=mode,
        link_failure_prob=link_failure, generator=generator, tol=tol, exact_kkt=exact_kkt,
        cg_iters=cg_iters, state=state, isolated=isolated, metric=metric, cg_rtol=cg_rtol, transport=transport,
    )
    used = state.iteration - int(round_robin_offset)
    # eq. (8): the linearised model puts each step on the quadratic KL boundary;
    # the true KL is only second-order close, so enforce it by backtracking.
    # With require_improvement a fraction is accepted only if the agent's true
    # surrogate (eq. 8, the exact ratio, not its linearisation) also went up.
    ls = _line_search(lin, state.x, advantages, transport, bound=delta, require_improvement=require_improvement,
                      backtrack_ratio=backtrack_ratio, max_backtracks=max_backtracks)
    primal, dual = per_agent_residuals(state)
    held = state.n_agents if transport is None else transport.local_agents(state.n_agents).numel()
    if state.comm.link_bytes is not None:
        sent, network = state.comm.link_bytes.clone(), state.comm.network_bytes.clone()
    else:  # nothing sent (no link, or none of this process's links was activated)
        sent, network = (torch.zeros(held, dtype=torch.int64) for _ in range(2))
    rel_links = relative_residuals(state)[0][measured_links(state, transport)]
    primal_rel, dual_rel, converged = per_agent_relative_residuals(state)
    # one link activated per iteration (random, round_robin), every link (synchronous)
    attempts = used * (state.n_links if mode == "synchronous" else 1)
    stats = MatrpoStats(
        kl=ls.kl, step_fraction=ls.fraction, primal_residual=primal, dual_residual=dual,
        admm_updates=state.agent_updates.clone(), iterations=used, history=list(state.history),
        improvement=ls.improvement, primal_residual_rel=primal_rel, dual_residual_rel=dual_rel,
        converged_links=converged, cg_iterations=state.cg_iterations.clone(),
        primal_residual_rel_max=float(rel_links.max()) if rel_links.numel() else None,
        links_up=1.0 - state.link_failures / attempts if state.n_links and attempts else None,
        bytes_sent=sent,
        network_bytes_sent=network,
    )
    next_offset = state.iteration % max(state.n_links, 1)
    return ls.params, stats, next_offset
