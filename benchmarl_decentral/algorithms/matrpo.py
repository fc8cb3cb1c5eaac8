"""MATRPO: fully decentralised trust-region policy optimisation (paper 001_8ff130c17487d6e3.txt).

Multi-Agent TRPO (Li & He), sec. IV-V, eqs. (8)-(22), Algorithm 1, Appendix B,
Table III. Every agent ``i`` of a group owns

* a policy network on its own observation that models the *joint* policy of
  the group, ``pi^i(a | o^i) = prod_n pi^i(a^n | o^i)`` (eq. 8): one head per
  agent ``n`` of the group, all heads in one output layer. Agent ``i``
  executes only its own component ``pi^i(a^i | o^i)``; the other heads are
  there for the consensus;
* a value network ``V^i(o^i)`` trained on its own (private) reward ``r^i``.

Nothing is shared: no parameters, no global state, no statistic computed over
agents (advantages are scaled with each agent's own statistics, ``advantage_norm``). One
policy iteration (Algorithm 1) on a collected batch of ``M`` samples:

1. per-agent GAE (eqs. 18-19) with the agent's own critic and reward;
2. the per-sample, per-component log-ratios ``log Upsilon^n(theta^i)`` of
   every agent, linearised around ``theta_old`` (eqs. 13, 20) and the
   true-KL Fisher ``H^i`` (eq. 14), all matrix free;
3. ``admm_iterations`` iterations of ADMM over the links of the
   communication graph (eqs. 21-22, Appendix B eq. 40): asynchronous (one
   random or round-robin link per iteration, the paper) or synchronous (all
   links), with an optional link failure probability. On SMAC-family tasks
   ``topology=visibility`` takes the links of each update from the batch:
   two agents are linked when they saw each other (SMAC ally visibility, read
   from their observations) in more than ``visibility_min_fraction`` of its
   samples. A component of that graph reaches consensus within itself; an
   agent that saw no ally takes its own TRPO step (eq. 22 without links);
4. a backtracking line search per agent on the true mean KL, so that
   ``D_KL(pi^i_old || pi^i_new) <= delta/N`` holds for every agent (eq. 8),
   and (``line_search_improvement``) the agent's own surrogate improved.

The math lives in :mod:`benchmarl_decentral.objectives` (``run_admm``,
``backtracking_line_search``, ``Linearisation``) and
:mod:`benchmarl_decentral.objectives.matrpo` (:class:`CachedLinearisation`,
which evaluates the same operators as ``Linearisation`` with one cached
forward per agent subset (Gauss-Newton form of the true-KL Hessian, exact at
``theta_old``), optionally on a Fisher subsample, and :func:`matrpo_update`);
they are re-exported here. This module builds the networks and feeds the batch.

How it sits in BenchMARL (1.5.2) without a fork:

* **Where the policy update runs.** BenchMARL calls
  :meth:`Algorithm.process_batch` exactly once per collected batch and group,
  before the batch enters the replay buffer (MAPPO computes its GAE there).
  :meth:`Matrpo.process_batch` computes the GAE and then runs the whole MATRPO
  policy update (all ADMM iterations) on the full batch. The policy is never
  touched by an optimizer: the only loss key is ``loss_critic``, so
  BenchMARL's minibatch loop (``on_policy_n_minibatch_iters`` x minibatches,
  Adam) trains the value networks as usual. That loop drives nothing else for
  MATRPO, so ``critic_epochs`` / ``critic_minibatch_size`` set its two counts
  on the run's (copied) experiment config: the critic's own schedule.
* **Networks.** The policy is any BenchMARL model built with
  ``share_params=False`` and ``n * F`` outputs per agent. Its per-agent
  parameters are stacked leaves (``layers/mlp``, ``cnn``, ``gru``, ``lstm``)
  or ``n`` copies (``gnn``, ``deepsets``) gathered into stacked leaves by
  :class:`~benchmarl_decentral.consensus.stacking.AgentStack`; a parameter no
  agent owns is refused. ``layers/mlp`` and sequences of it go through the
  stacked-MLP operators (the fast path); every other model through
  :class:`GatheredJointNetwork` (the whole model under ``torch.func``, the
  general path, tested equal to the fast one on MLPs). A recurrent policy
  updates on the samples that follow a reset in the batch
  (:meth:`Matrpo.update_samples`). ``num_cells`` / ``activation`` of this
  config (default 2 x 128 SELU, sec. VI) replace those of a ``layers/mlp``
  ``model`` and ``critic_model`` (``null`` keeps them). The critic is an
  independent per-agent critic on ``o^i`` (any model with per-agent parameters).
* **Collection and evaluation** use only each agent's own head (decentralised
  execution). Continuous actions use a diagonal Gaussian per head (the
  paper's TRPO head, ``IndependentNormal``); the action is clipped to the
  action bounds only on its way into the environment, so the stored action
  is the sampled one.
* **Action masks** (SMAC family): agent ``i`` executes its own head with
  its own mask (``MaskedCategorical``). In the update, head ``n`` of every
  agent's joint policy is masked with agent ``n``'s mask at that sample
  (:func:`mask_joint_output`), so every agent's model of ``pi^n`` is the
  masked policy agent ``n`` executes; illegal actions get probability 0 in
  every log-ratio, Fisher and KL term.
* **Gradient clipping.** BenchMARL clips the norm over all agents' critic
  parameters at once (a cross-agent statistic); ``critic_max_grad_norm``
  replaces it with a clip of each agent's own gradient norm.
* **Resume.** ADMM estimators and duals (z, y) are per-sample variables of one
  batch that Algorithm 1 re-initialises every policy iteration, so nothing of
  them outlives an update. What does (the link-selection / link-failure RNG
  and the round-robin position) is saved through the loss module's
  ``get_extra_state`` and so travels in BenchMARL's checkpoints; the critic's
  Adam state, the global random states and the environment state come with
  :mod:`benchmarl_decentral.resume`, so a resumed run equals the uninterrupted one.
* **Logging.** Per agent, every iteration, through ``experiment.logger``:
  ``matrpo/<group>/<agent>/{kl, primal_residual, dual_residual,
  primal_residual_rel, dual_residual_rel, converged_links,
  surrogate_improvement, admm_updates, step_fraction}`` and
  ``matrpo/<group>/links_up`` (the fraction of link activations that went
  through, < 1 with ``link_failure``); group means also go to the training
  TensorDict (``train/<group>/matrpo_*``) as BenchMARL logs loss entries.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, MISSING
from typing import Any, Dict, Iterable, List, Optional, Tuple, Type

import torch
from benchmarl.algorithms.common import Algorithm, AlgorithmConfig
from benchmarl.experiment.callback import Callback
from benchmarl.models import MlpConfig
from benchmarl.models.mlp import Mlp
from benchmarl.models.common import ModelConfig, SequenceModel, SequenceModelConfig
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictSequential
from tensordict.nn.distributions import NormalParamExtractor
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent, Normal
from torchrl.envs import Transform, TransformedEnv
from torchrl.modules import IndependentNormal, MaskedCategorical, ProbabilisticActor
from torchrl.objectives import LossModule
from torchrl.objectives.utils import distance_loss
from torchrl.objectives.value import GAE

from benchmarl_decentral.algorithms._common import config_error, per_agent_model, visibility_layout
from benchmarl_decentral.algorithms._yaml import algorithm_defaults, load_algorithm_yaml
from benchmarl_decentral.evaluation_dropout import check_evaluation_dropout
from benchmarl_decentral.consensus.groups import (
    STATIC_TOPOLOGIES,
    check_group_topology,
    resolve_static_group_topologies,
)
from benchmarl_decentral.consensus.topology import (
    build_topology,
    check_topology_options,
    component_labels,
    is_connected,
    TOPOLOGIES,
)
from benchmarl_decentral.consensus.stacking import AgentStack
from benchmarl_decentral.consensus.visibility import visibility_adjacency
from benchmarl_decentral.distributed.local import (
    JOINT_ACTION,
    JOINT_ACTION_MASK,
    block_of_group_draw,
    block_sampling,
    every_agent_observation,
    group_size,
    grown,
    local_block,
)
from benchmarl_decentral.distributed.transport import (
    InProcessTransport,
    Transport,
    bytes_per_agent_metrics,
    current_transport,
)
from benchmarl_decentral.objectives import ADMM_METRICS, ADMM_MODES, links_from_adjacency
# the linearisation operators and the update live in objectives/ (math); re-exported here
from benchmarl_decentral.objectives.matrpo import (  # noqa: F401
    _MaskedJointPolicy,
    _mlp_layers,
    _MlpOperators,
    _SubsetOperators,
    CachedLinearisation,
    MASKED_LOGIT,
    mask_joint_output,
    MatrpoStats,
    matrpo_update,
    stacked_network,
)

__all__ = [
    "CachedLinearisation",
    "Matrpo",
    "MatrpoConfig",
    "MatrpoLoss",
    "MatrpoPaper",
    "MatrpoPaperConfig",
    "MatrpoStats",
    "joint_distribution",
    "mask_joint_output",
    "matrpo_update",
    "normalise_per_agent",
    "own_component",
    "scale_advantages",
    "value_fit",
]

ACTIVATIONS: Dict[str, Type[nn.Module]] = {
    "selu": nn.SELU,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
}
CRITIC_LOSSES = ("l1", "l2", "smooth_l1")
#: Static topologies plus the SMAC-family ally-visibility graph (rebuilt from every batch).
MATRPO_TOPOLOGIES = (*TOPOLOGIES, "visibility")
#: Options read by some topologies only (refused with any other, see ``check_topology_options``).
MATRPO_TOPOLOGY_OPTIONS = {"k": ("knn_ring",), "adjacency": ("custom",), "visibility_min_fraction": ("visibility",)}
LOGGER = logging.getLogger("benchmarl_decentral")
#: What ``group_topology`` may set for one group (ally visibility is task-wide).
MATRPO_GROUP_KEYS = ("topology", "k", "adjacency")
JOINT_KEY = "matrpo_joint"


# =========================================================================== math glue
# (no BenchMARL / TorchRL in the functions below: torch and tensordict only)


def joint_distribution(
    out: Tensor, *, n_components: int, continuous: bool, scale_mapping: str = "biased_softplus_1.0"
) -> Distribution:
    """001 eq. (8): the factored joint policy ``prod_n pi^i(a^n | o^i)`` from one agent's network output.

    Args:
        out: network output ``(..., K * F)``; block ``n`` (``F`` values) is head ``n``.
        n_components: ``K``, the number of heads (agents of the group).
        continuous: ``F = 2 d`` Gaussian parameters (loc, raw scale) per head,
            else ``F`` categorical logits.
        scale_mapping: positive map of the raw scale (BenchMARL's ``NormalParamExtractor``).

    Returns:
        A distribution with batch shape ``(..., K)``: ``Categorical`` or
        ``Independent(Normal, 1)`` (a diagonal Gaussian per head).
    """
    blocks = out.unflatten(-1, (n_components, -1))
    if continuous:
        loc, scale = NormalParamExtractor(scale_mapping=scale_mapping)(blocks)
        return Independent(Normal(loc, scale), 1)
    return Categorical(logits=blocks)


def own_component(joint: Tensor, n_agents: int, first: int = 0) -> Tensor:
    """Decentralised execution: agent ``i`` keeps head ``i`` of its joint output.

    ``joint`` is ``(..., n, n * F)`` (agent ``i``'s output in row ``i``);
    returns ``(..., n, F)`` with row ``i`` = block ``i`` of row ``i``. A
    process holding agents ``first .. first + m - 1`` of the ``n_agents``
    only passes ``(..., m, n_agents * F)``: row ``r`` keeps head ``first + r``.
    """
    blocks = joint.unflatten(-1, (n_agents, -1))  # (..., i, n, F)
    rows = blocks.shape[-3]
    if rows != n_agents or first:
        blocks = blocks.narrow(-2, first, rows)
    return torch.diagonal(blocks, dim1=-3, dim2=-2).movedim(-1, -2)


def normalise_per_agent(advantages: Tensor, eps: float = 1e-8) -> Tensor:
    """Standardise ``(n, M)`` advantages with each agent's *own* mean and std (no cross-agent statistic)."""
    mean = advantages.mean(-1, keepdim=True)
    std = advantages.std(-1, keepdim=True, correction=0)
    return (advantages - mean) / (std + eps)


#: ``advantage_norm`` values: every statistic is the agent's own (no cross-agent statistic).
ADVANTAGE_NORMS = ("agent_std", "center", "none")


def scale_advantages(advantages: Tensor, mode: str, eps: float = 1e-8) -> Tensor:
    """Scale ``(n, M)`` advantages per agent before the policy update.

    * ``agent_std``: ``(A^i - mean A^i) / std A^i`` (:func:`normalise_per_agent`).
      An agent whose private reward is almost always 0 has a small std made
      mostly of critic noise, which this scales up to unit variance.
    * ``center``: ``A^i - mean A^i``; the scale of ``A^i`` is kept, so such an
      agent's noise stays as small as it is. The closed-form step of eq. (22)
      is scale-free in the advantage when the agent has no link (it is
      normalised to the KL boundary); with links, ``A^i`` and the consensus
      terms ``beta z - y`` share the log-ratio scale, so the agent with the
      larger advantages pulls harder.
    * ``none``: ``A^i`` as GAE returns it.
    """
    if mode == "agent_std":
        return normalise_per_agent(advantages, eps)
    if mode == "center":
        return advantages - advantages.mean(-1, keepdim=True)
    if mode == "none":
        return advantages
    raise ValueError(f"advantage_norm must be one of {list(ADVANTAGE_NORMS)}, got {mode!r}")


def value_fit(values: Tensor, targets: Tensor) -> Tuple[Tensor, Tensor]:
    """How well each agent's critic predicts its own targets: ``(explained variance, MSE)``, each ``(n,)``.

    ``values`` and ``targets`` are ``(n, M)`` (agent ``i``'s row: ``V^i(o^i_m)`` and its GAE target
    of eq. 19). Explained variance ``1 - Var(target - V) / Var(target)`` (Baselines' ``ev_tdlam_before``
    when measured on a batch the critic has not trained on): 1 is a perfect fit, 0 no better than a
    constant, negative worse; ``nan`` where the agent's targets are constant (e.g. it is never rewarded).
    Each agent's own statistics only.
    """
    var = targets.var(-1, correction=0)
    ev = 1 - (targets - values).var(-1, correction=0) / var
    ev = torch.where(var > 0, ev, torch.full_like(ev, float("nan")))
    return ev, (targets - values).pow(2).mean(-1)


# =========================================================================== BenchMARL glue


class _OwnComponent(nn.Module):
    """TensorDictModule body: ``(..., n, n F)`` joint output -> ``(..., n, F)`` own head (a block: from ``first``)."""

    def __init__(self, n_agents: int, first: int = 0) -> None:
        super().__init__()
        self.n_agents = n_agents
        self.first = first

    def forward(self, joint: Tensor) -> Tensor:
        return own_component(joint, self.n_agents, self.first)


class _ClipActions(Transform):
    """Clip continuous actions to the action bounds on their way *into* the env only.

    An inverse-only transform: the rollout keeps the sampled Gaussian action
    (whose probability ratios MATRPO uses), the environment receives it
    clipped (as VMAS's ``clamp_actions`` does; PettingZoo would clip with a warning).
    """

    def __init__(self, bounds: Dict[Any, Tuple[Tensor, Tensor]]) -> None:
        keys = list(bounds)
        super().__init__(in_keys=[], out_keys=[], in_keys_inv=keys, out_keys_inv=keys)
        self._bounds = bounds

    def _inv_call(self, tensordict: TensorDictBase) -> TensorDictBase:
        for key, (low, high) in self._bounds.items():
            action = tensordict.get(key, None)
            if action is not None:
                tensordict.set(key, torch.maximum(torch.minimum(action, high.to(action)), low.to(action)))
        return tensordict


#: Why matrpo cannot yet run a block of agents (``--agents local``) on continuous actions.
LOCAL_CONTINUOUS_REFUSAL = (
    "matrpo with --agents local on continuous actions: each agent's joint policy model scores every agent's "
    "sampled action, but a rank receives the others' actions as they reach the environment, clipped to the "
    "action bounds (matrpo's clip transform), not as sampled; launch with --agents all (or use a task with "
    "discrete actions, experiment.prefer_continuous_actions=false)."
)


class MatrpoLoss(LossModule):
    """Value loss of MATRPO's per-agent critics; holds the actor and the ADMM RNG for checkpoints.

    BenchMARL optimises every key of this loss that has an optimizer: only
    ``loss_critic`` (each agent's value net regressed on its own GAE target,
    eq. 19). The actor is a submodule so that its parameters travel in the
    loss ``state_dict`` (BenchMARL's checkpoint), and
    :meth:`get_extra_state` adds the link-selection RNG and the round-robin
    position. ``stats`` (group means of the last policy update) are returned
    with the loss so that BenchMARL logs them as ``train/<group>/matrpo_*``.
    """

    def __init__(
        self,
        actor_network: TensorDictModule,
        critic_network: TensorDictModule,
        *,
        group: str,
        loss_critic_type: str,
        critic_coef: float,
        seed: int,
        agent_share: float = 1.0,
    ) -> None:
        super().__init__()
        self.actor_network = actor_network
        self.critic_network = critic_network
        self.group = group
        self.loss_critic_type = loss_critic_type
        self.critic_coef = critic_coef
        #: the share of the group's agents whose critics this loss trains (a distributed rank's block: m / n):
        #: the loss is the group's mean over every agent and sample, of which a block computes its part
        self.agent_share = agent_share
        self.generator = torch.Generator().manual_seed(int(seed))
        self.round_robin_offset = 0
        self.stats: Dict[str, float] = {}

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        value_key, target_key = (self.group, "state_value"), (self.group, "value_target")
        # strict=False: a recurrent critic's hidden state is not in the batch (BenchMARL's training path)
        td = self.critic_network(tensordict.select(*self.critic_network.in_keys, strict=False).clone())
        value = td.get(value_key)
        target = tensordict.get(target_key).to(value)
        loss = distance_loss(value, target, self.loss_critic_type).mean() * self.critic_coef * self.agent_share
        out = TensorDict({"loss_critic": loss}, batch_size=[], device=loss.device)
        for key, val in self.stats.items():
            out.set(f"matrpo_{key}", torch.tensor(val, device=loss.device))
        return out

    def get_extra_state(self) -> Dict[str, Any]:
        return {"generator": self.generator.get_state(), "round_robin_offset": self.round_robin_offset}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.round_robin_offset = int(state["round_robin_offset"])


def _stacked_leaves(module: nn.Module, n: int) -> bool:
    leaves = [p for p in module.parameters()]
    return bool(leaves) and all(p.dim() > 0 and p.shape[0] == n for p in leaves)


def _mlp_chain(model: nn.Module) -> Optional[List[nn.Module]]:
    """The BenchMARL ``Mlp`` models a policy applies one after the other, or ``None``.

    A ``SequenceModel`` of MLPs computes ``f_K(... f_1(o^i))`` for every agent
    (each reads the previous one's per-agent output): one network per agent
    whose stacked parameters are those of its MLPs.
    """
    if isinstance(model, SequenceModel):
        chain: List[nn.Module] = []
        for sub in model.models.module:
            part = _mlp_chain(sub)
            if part is None:
                return None
            chain += part
        return chain
    mlp = getattr(model, "mlp", None)  # a Gru / Lstm / Cnn also has an ``mlp`` (its head): not a chain of MLPs
    return [model] if isinstance(model, Mlp) and hasattr(mlp, "_empty_net") else None


def _is_recurrent(config: ModelConfig) -> bool:
    return bool(getattr(config, "is_rnn", False))


class GatheredJointNetwork:
    """Every agent's joint policy network as one function of its stacked parameters, for any BenchMARL model.

    The general path of the joint-policy operators (eqs. 13-14): ``network(params, index) -> (s, M, O)``,
    the signature of :func:`~benchmarl_decentral.objectives.matrpo.stacked_network`, where

    * ``params`` are the per-agent leaves ``{name: (s, ...)}`` of ``s`` agents (the names of
      :class:`~benchmarl_decentral.consensus.stacking.AgentStack`: stacked leaves as they are,
      ``n`` per-agent copies gathered into one ``(n, ...)`` leaf);
    * ``index`` is a ``(s, M, 2)`` long tensor of ``(agent, sample)`` pairs (every row the same
      agent): it plays the part of the observations, so that the operators select agents
      (``index[agents]``) and the Fisher subsample (``index[:, ::k]``) as they do on observations.

    The whole BenchMARL model (``model``, e.g. a ``Gnn``, whose agent ``i`` reads every agent's
    observation through the graph) runs on the batch ``inputs`` once per call, with the parameters
    swapped in functionally (``TensorDict.to_module``; the leaves of agents outside ``s`` are held at
    ``params_old``), and the rows ``(sample, agent)`` of its ``(M, n, O)`` output are returned. Agent
    ``i``'s output depends on ``theta^i`` only (``share_params=False``: its row of every stacked
    leaf, its own copy), so this is ``f^i(theta^i)`` of eq. (8) for every ``i`` at once and
    ``torch.func`` (``linearize`` / ``jvp``) and autograd give the Jacobian products of
    :class:`~benchmarl_decentral.objectives.matrpo.CachedLinearisation`. A call computes all ``n``
    agents even for a link's two, the price of not knowing the model's inside.

    Args:
        model: the group's joint model (its output ``out_key`` is ``(*B, n, O)``).
        stack: the model's per-agent parameters.
        params_old: ``theta_old`` by leaf name (held for the agents a call leaves out).
        inputs: the batch the model reads, with its own batch dims ``B`` (a recurrent model
            replays the time dim); sample ``m`` is row ``m`` of ``inputs.reshape(-1)``.
        out_key: the model's output key.
    """

    def __init__(self, model: nn.Module, stack: AgentStack, params_old: Dict[str, Tensor],
                 inputs: TensorDictBase, out_key) -> None:
        self.model, self.out_key = model, out_key
        self.copies = dict(stack.gathered)
        self.base = {k: v.detach() for k, v in params_old.items()}
        self.n = stack.n_agents
        self.inputs = inputs
        self._skeleton = TensorDict.from_module(model).empty(recurse=True)

    def _full(self, params: Dict[str, Tensor], agents: Tensor) -> Dict[str, Tensor]:
        """Every agent's leaves: ``params`` for ``agents``, ``theta_old`` for the others.

        By a one-hot matrix (exact: the other terms are exact zeros), so that ``torch.func``'s
        tracing sees tensor algebra only and no data-dependent branch."""
        full = {}
        sel_all = (torch.arange(self.n, device=agents.device)[:, None] == agents[None, :])  # (n, s)
        for name, base in self.base.items():
            p = params[name]
            sel = sel_all.to(p.dtype)
            keep = (1 - sel.sum(1)).view(-1, *([1] * (base.dim() - 1)))
            full[name] = base * keep + torch.tensordot(sel, p, dims=1)
        return full

    def __call__(self, params: Dict[str, Tensor], index: Tensor) -> Tensor:
        agents, samples = index[:, 0, 0], index[0, :, 1]
        swapped = self._skeleton.clone(False)
        for name, leaf in self._full(params, agents).items():
            copies = self.copies.get(name)
            if copies is None:
                swapped.set(tuple(name.split(".")), leaf)
            else:  # copy i's parameter is row i of the gathered leaf
                for i, copy_name in enumerate(copies):
                    swapped.set(tuple(copy_name.split(".")), leaf[i])
        with swapped.to_module(self.model):
            out = self.model(self.inputs.clone(False)).get(self.out_key)
        out = out.reshape(-1, *out.shape[-2:])  # (M, n, O)
        return out.index_select(0, samples).index_select(1, agents).transpose(0, 1)


def unsupported_model_message(name: str, error: str) -> str:
    """A model whose parameters no agent owns, and the nearest working choice."""
    return (
        f"{name}: every agent's joint policy pi^i (eq. 8) is a function of its own parameters theta^i, "
        f"linearised and differentiated with torch.func for the ADMM consensus (eqs. 13-14, 21-22), so every "
        f"policy parameter must belong to one agent: {error}. Use a BenchMARL model with per-agent parameters "
        f"(layers/mlp, cnn, deepsets, gnn, gru, lstm or a sequence of them); nearest working choice: "
        f"model=layers/mlp (its depth and width from algorithm.num_cells, e.g. algorithm.num_cells=[128,128])."
    )


class Matrpo(Algorithm):
    """Multi-Agent TRPO with asynchronous ADMM consensus (paper 001, Algorithm 1).

    Args:
        delta: per-agent KL bound ``delta/N`` (eq. 8; Table III "Stepsize", 0.003).
        beta: ADMM penalty (eq. 11; Table III, 1.0).
        admm_iterations: ADMM iterations per policy update (Table III, 100).
        admm_mode: ``random`` (Algorithm 1), ``round_robin`` or ``synchronous``.
        admm_tol: per-link ADMM stop on the relative residuals (``0`` or ``None``: run all
            ``admm_iterations``; :func:`~benchmarl_decentral.objectives.run_admm`).
        exact_kkt: clip the trust-region multiplier at 0 in the primal step
            (see :mod:`benchmarl_decentral.objectives.admm`); ``False`` is the paper's formula.
        admm_metric: trust-region metric of the primal step: ``kl`` (the true-KL
            Hessian in the paper's closed form), ``gauss_newton`` (``1/M sum_n J^T J``,
            eq. 46, with which the closed form is the exact ADMM step) or ``kl_exact``
            (eq. 42 minimised exactly with the true-KL Hessian, its multiplier found
            along the ADMM iterations; :func:`~benchmarl_decentral.objectives.primal_step`).
        topology: communication graph: ``ring`` (sec. VI), ``knn_ring`` (``k``),
            ``full``, ``custom`` (``adjacency``) or ``visibility`` (SMAC-family
            tasks: rebuilt from every batch); links are undirected.
        visibility_min_fraction: ``topology=visibility``: link two agents that
            saw each other (either way) in more than this fraction of the
            batch's samples; 0 is the union over the batch.
        k: neighbours per agent for ``knn_ring``; the default is lowered to
            ``n - 1`` on a smaller group, a ``k`` the user set must fit every
            group (:mod:`benchmarl_decentral.consensus.groups`).
        adjacency: n x n 0/1 matrix for ``custom``.
        group_topology: per-group ``topology`` / ``k`` / ``adjacency``, e.g.
            ``{"adversary": {"topology": "full"}}``; ``None`` or ``{}``: none.
        link_failure: probability that an activated link fails (the
            asynchronous ADMM's robustness, sec. IV-B).
        gamma: discount (Table III, 0.995); replaces ``experiment.gamma`` (``None`` keeps it).
        lmbda: GAE lambda (Table III, 0.95).
        advantage_norm: scaling of each agent's advantages before the policy
            update, with the agent's own statistics only (:func:`scale_advantages`):
            ``agent_std`` (standardise), ``center`` (subtract the mean) or ``none``.
        cg_iters: conjugate-gradient iterations for ``H^-1 V`` (at most, with ``cg_rtol``).
        cg_rtol: stop each ADMM primal step's CG once the residual is ``cg_rtol`` times
            that of its warm start (the agent's previous solution); 0: all ``cg_iters``
            (:func:`~benchmarl_decentral.objectives.primal_step`).
        cg_damping: Fisher damping.
        fisher_subsample: Fisher-vector products on every k-th sample (OpenAI Baselines' TRPO: 5).
        backtrack_ratio: line-search shrink factor.
        max_backtracks: line-search shrinks before an agent's step is reverted.
        line_search_improvement: the line search also requires the agent's
            surrogate to improve (:func:`matrpo_update`), not only the KL bound.
        num_cells: hidden layers of every policy and value net (sec. VI: [128, 128]); ``None`` keeps the model's.
        activation: their activation (sec. VI: ``selu``); ``None`` keeps the model's.
        scale_mapping: map of the raw Gaussian scale (continuous actions).
        loss_critic_type: ``l2`` (Baselines' value loss), ``l1`` or ``smooth_l1``.
        critic_coef: value loss weight.
        critic_lr: critic learning rate (``None``: ``experiment.lr``).
        critic_max_grad_norm: clip of each agent's own critic gradient norm
            (``None``: no clip); BenchMARL's ``experiment.clip_grad_val`` (a clip
            of the norm over all agents at once) is always turned off.
        critic_epochs: passes of the critic over each collected batch (``None``:
            ``experiment.on_policy_n_minibatch_iters``).
        critic_minibatch_size: frames per critic Adam step (``None``:
            ``experiment.on_policy_minibatch_size``). A batch of ``B`` frames gives
            ``critic_epochs * ceil(B / critic_minibatch_size)`` critic steps per policy
            iteration (a minibatch larger than the batch is the whole batch, as in BenchMARL);
            each agent's value net regresses on its own GAE target (eq. 19).
    """

    def __init__(
        self,
        *,
        delta: float,
        beta: float,
        admm_iterations: int,
        admm_mode: str,
        admm_tol: Optional[float],
        exact_kkt: bool,
        topology: str,
        k: int,
        adjacency: Optional[List[List[int]]],
        visibility_min_fraction: float,
        link_failure: float,
        gamma: Optional[float],
        lmbda: float,
        advantage_norm: str,
        cg_iters: int,
        cg_damping: float,
        fisher_subsample: int,
        backtrack_ratio: float,
        max_backtracks: int,
        line_search_improvement: bool,
        num_cells: Optional[List[int]],
        activation: Optional[str],
        scale_mapping: str,
        loss_critic_type: str,
        critic_coef: float,
        critic_lr: Optional[float],
        critic_max_grad_norm: Optional[float],
        evaluation_dropout: Optional[List[int]] = None,
        group_topology: Optional[Dict[str, Dict[str, Any]]] = None,  # None: configs pickled before the key
        admm_metric: str = "kl",  # "kl": configs pickled before the key
        critic_epochs: Optional[int] = None,  # None: experiment.on_policy_n_minibatch_iters (and old pickles)
        critic_minibatch_size: Optional[int] = None,  # None: experiment.on_policy_minibatch_size
        cg_rtol: float = 0.0,  # 0.0: configs pickled before the key
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.evaluation_dropout = list(evaluation_dropout or [])  # run by evaluation_dropout.DropoutEvaluation
        self.delta = delta
        self.beta = beta
        self.admm_iterations = admm_iterations
        self.admm_mode = admm_mode
        self.admm_tol = admm_tol
        self.exact_kkt = exact_kkt
        self.admm_metric = admm_metric
        self.topology = topology
        self.k = k
        self.adjacency = adjacency
        self.visibility_min_fraction = visibility_min_fraction
        self.link_failure = link_failure
        self.gamma = self.experiment_config.gamma if gamma is None else gamma
        self.lmbda = lmbda
        self.advantage_norm = advantage_norm
        self.cg_iters = cg_iters
        self.cg_rtol = cg_rtol
        self.cg_damping = cg_damping
        self.fisher_subsample = fisher_subsample
        self.backtrack_ratio = backtrack_ratio
        self.max_backtracks = max_backtracks
        self.line_search_improvement = line_search_improvement
        self.num_cells = num_cells
        self.activation = activation
        self.scale_mapping = scale_mapping
        self.loss_critic_type = loss_critic_type
        self.critic_coef = critic_coef
        self.critic_lr = critic_lr
        self.critic_max_grad_norm = critic_max_grad_norm
        self.critic_epochs = critic_epochs
        self.critic_minibatch_size = critic_minibatch_size

        # ---- everything that depends on the task, checked before training
        task = self.experiment.task.name.lower()
        self.links: Dict[str, Optional[Tensor]] = {}  # None: rebuilt from every batch (visibility)
        self.visibility_layout: Optional[str] = None
        if topology == "visibility":
            self.visibility_layout = visibility_layout(self, "matrpo")
        #: every agent of each group (a distributed rank that builds its block only still links them all)
        self.joint_group_map = {g: list(range(group_size(self.experiment, g))) for g in self.group_map}
        if self.experiment.continuous_actions and any(local_block(self.experiment, g) is not None
                                                      for g in self.group_map):
            raise config_error(self.experiment, LOCAL_CONTINUOUS_REFUSAL)
        try:
            #: per group: topology, k and adjacency after group_topology and the small-group rules
            self.group_topologies = resolve_static_group_topologies(
                owner="matrpo", task=task, group_map=self.joint_group_map, topology=topology, k=k, adjacency=adjacency,
                group_topology=group_topology, keys=MATRPO_GROUP_KEYS, option_uses=MATRPO_TOPOLOGY_OPTIONS,
                default_k=algorithm_defaults("matrpo")["k"],
            )
        except ValueError as err:
            raise config_error(self.experiment, str(err)) from None
        for group, agents in self.joint_group_map.items():
            n = len(agents)
            if self.visibility_layout is not None:
                self.links[group] = None
                continue
            opts = self.group_topologies[group]
            try:
                adj = build_topology(opts["topology"], n, k=opts["k"], adjacency=opts["adjacency"])
            except ValueError as err:
                raise config_error(
                    self.experiment,
                    f"matrpo: the topology does not fit group '{group}' of task {task} ({n} agents): "
                    f"{err}. Set algorithm.topology / algorithm.k / algorithm.adjacency accordingly, or this "
                    f"group's own with algorithm.group_topology={{{group}: {{...}}}}.",
                ) from None
            undirected = adj | adj.T
            isolated = (~undirected.any(-1)).nonzero().flatten().tolist() if n > 1 else []
            if isolated:
                raise config_error(
                    self.experiment,
                    f"matrpo: in group '{group}' ({n} agents) agents {isolated} have no communication "
                    "link, so they can never reach consensus on the log-ratios. Use a connected "
                    "topology, e.g. algorithm.topology=ring, or give them links in algorithm.adjacency.",
                )
            if n > 1 and not is_connected(undirected):
                raise config_error(
                    self.experiment,
                    f"matrpo: the communication graph of group '{group}' ({n} agents) is not "
                    "connected, so its parts can never agree. Add links between the parts "
                    "(algorithm.adjacency) or use algorithm.topology=ring.",
                )
            self.links[group] = links_from_adjacency(undirected)

        if _is_recurrent(self.critic_model_config) and not _is_recurrent(self.model_config):
            raise config_error(
                self.experiment,
                "matrpo: a recurrent critic_model needs a recurrent model: BenchMARL adds the is_init flag that "
                "resets a recurrent network at episode starts only when the policy model is recurrent. Use a "
                "recurrent model (e.g. model=layers/gru) or a feed-forward critic (e.g. "
                "model@critic_model=layers/mlp).",
            )
        if not isinstance(self.model_config, MlpConfig) and (num_cells is not None or activation is not None):
            LOGGER.info(
                "matrpo: model is not a single layers/mlp and keeps its own layers; algorithm.num_cells and "
                "algorithm.activation replace those of a single model=layers/mlp (and of an MLP critic) only"
            )

        self._joint_models: Dict[str, nn.Module] = {}
        #: per group: the Mlp models the joint policy applies in turn (one for layers/mlp), the fast
        #: path; ``None`` for any other model (the general path, :class:`GatheredJointNetwork`)
        self._joint_chains: Dict[str, Optional[List[nn.Module]]] = {}
        #: per group: the joint model's per-agent parameters (stacked or gathered copies)
        self._joint_stacks: Dict[str, AgentStack] = {}
        self._critic_stacks: Dict[str, AgentStack] = {}
        self._critics: Dict[str, nn.Module] = {}
        self._gae: Dict[str, GAE] = {}
        self.last_stats: Dict[str, MatrpoStats] = {}
        #: per group, the last batch's critic fit before the critic trained on it (held out, :func:`value_fit`)
        self.critic_stats: Dict[str, Dict[str, Tensor]] = {}
        #: run chains of plain MLPs through the general path too (tests, benchmarks; same numbers)
        self.force_general_path = False
        self.link_stats: Dict[str, Dict[str, float]] = {}  # topology=visibility: links, components
        self._comm: Dict[str, tuple] = {}  # per group, this iteration: (agents, ADMM bytes sent by kind)
        #: how the ADMM link values travel: in this process, unless a distributed launcher installed a
        #: transport while the experiment was built (then this process updates the agents it holds)
        transport = current_transport()
        self.transport: Optional[Transport] = None if isinstance(transport, InProcessTransport) else transport

        changes: Dict[str, Any] = {}
        if self.experiment_config.clip_grad_val is not None:
            # BenchMARL clips the norm over all agents' critics at once (a
            # cross-agent statistic); MATRPO clips each agent's own gradient
            # (critic_max_grad_norm) or not at all.
            changes["clip_grad_val"] = None
        # BenchMARL's on-policy loop (on_policy_n_minibatch_iters x ceil(frames / on_policy_minibatch_size)
        # steps of every loss with an optimizer) trains only loss_critic here: its counts are the critic's
        if critic_epochs is not None:
            changes["on_policy_n_minibatch_iters"] = critic_epochs
        if critic_minibatch_size is not None:
            changes["on_policy_minibatch_size"] = critic_minibatch_size
        changes = {k: v for k, v in changes.items() if getattr(self.experiment_config, k) != v}
        if changes:
            # Work on a copy: the caller's ExperimentConfig may serve other runs. The replay
            # buffer (its minibatch size) is built after the algorithm, from this copy.
            self.experiment.config = copy.copy(self.experiment.config)
            for key, value in changes.items():
                setattr(self.experiment.config, key, value)
            self.experiment_config = self.experiment.config

        self.callback = _MatrpoCallback(self)
        # hydra runs pass callbacks=() (a tuple): rebind rather than append
        self.experiment.callbacks = [*self.experiment.callbacks, self.callback]
        self.callback.experiment = self.experiment

    # ------------------------------------------------------------------ networks
    def _mlp_config(self, config: ModelConfig) -> ModelConfig:
        """``config`` with this algorithm's hidden layers and activation (sec. VI), if set and an MLP."""
        if not isinstance(config, MlpConfig):
            return config
        changes: Dict[str, Any] = {}
        if self.num_cells is not None:
            changes["num_cells"] = list(self.num_cells)
        if self.activation is not None:
            changes["activation_class"] = _activation_class(self.activation)
        return dataclasses.replace(config, **changes) if changes else config

    def _head_size(self, group: str, continuous: bool) -> int:
        spec = self.action_spec[group, "action"]
        return 2 * spec.shape[-1] if continuous else spec.space.n

    def _get_policy_for_loss(self, group: str, model_config: ModelConfig, continuous: bool) -> TensorDictModule:
        n = len(self.group_map[group])  # the agents built here (a distributed rank's block with --agents local)
        K = group_size(self.experiment, group)  # heads: every agent of the group (eq. 8)
        F = self._head_size(group, continuous)
        first = (local_block(self.experiment, group) or (0, n))[0]

        joint_model = block_of_group_draw(  # one joint model per agent, never shared
            self.experiment, group, lambda m: self._per_agent_network(model_config, group, m, JOINT_KEY, K * F))
        try:  # stacked leaves as they are, n per-agent copies (gnn, deepsets) gathered
            self._joint_stacks[group] = AgentStack(
                TensorDict.from_module(joint_model).flatten_keys("."), joint_model, n, "policy"
            )
        except ValueError as err:
            raise config_error(self.experiment, unsupported_model_message("matrpo", str(err))) from None
        chain = _mlp_chain(joint_model)
        if chain is not None and not all(_stacked_leaves(m.mlp, n) for m in chain):
            chain = None
        self._joint_models[group] = joint_model
        self._joint_chains[group] = chain
        own = TensorDictModule(_OwnComponent(K, first), in_keys=[(group, JOINT_KEY)], out_keys=[(group, "logits")])
        if continuous:
            extractor = TensorDictModule(
                NormalParamExtractor(scale_mapping=self.scale_mapping),
                in_keys=[(group, "logits")],
                out_keys=[(group, "loc"), (group, "scale")],
            )
            module = TensorDictSequential(joint_model, own, extractor)
            in_keys, distribution_class = [(group, "loc"), (group, "scale")], IndependentNormal
        elif self.action_mask_spec is not None:
            # executes its own head masked with its own legal actions (decentralised)
            module = TensorDictSequential(joint_model, own)
            in_keys = {"logits": (group, "logits"), "mask": (group, "action_mask")}
            distribution_class = MaskedCategorical
        else:
            module = TensorDictSequential(joint_model, own)
            in_keys, distribution_class = [(group, "logits")], Categorical
        actor = ProbabilisticActor(
            module=module,
            spec=self.action_spec[group, "action"],
            in_keys=in_keys,
            out_keys=[(group, "action")],
            distribution_class=distribution_class,
            return_log_prob=True,
            log_prob_key=(group, "log_prob"),
        )
        return block_sampling(actor, self.experiment, group)  # a rank's block: the group's noise, its rows

    def _get_policy_for_collection(self, policy_for_loss, group, continuous) -> TensorDictModule:
        # executes each agent's own head only; evaluation uses this policy too
        return policy_for_loss

    def get_critic(self, group: str) -> TensorDictModule:
        """Agent i's value net ``V^i(o^i)`` (eq. 19): per-agent, own observation only."""
        return block_of_group_draw(
            self.experiment, group,
            lambda m: self._per_agent_network(self.critic_model_config, group, m, "state_value", 1))

    def _per_agent_network(self, config: ModelConfig, group: str, m: int, key: str, features: int) -> nn.Module:
        """``config``'s network of ``m`` agents of ``group``, each reading its own observation and writing
        ``features`` values under ``(group, key)``; no parameter shared between agents."""
        return per_agent_model(self._mlp_config(config), group,
                               grown(self.observation_spec[group], m).clone().to(self.device), key, m, features,
                               device=self.device, action_spec=self.action_spec)

    def _get_loss(self, group: str, policy_for_loss: TensorDictModule, continuous: bool) -> Tuple[LossModule, bool]:
        critic = self.get_critic(group)
        n = len(self.group_map[group])
        try:  # per-agent critics: each agent's gradient is clipped on its own (critic_max_grad_norm)
            self._critic_stacks[group] = AgentStack(
                TensorDict.from_module(critic).flatten_keys("."), critic, n, "critic"
            )
        except ValueError as err:
            raise config_error(
                self.experiment,
                f"matrpo: every agent trains its own value net V^i(o^i) (eq. 19), so every critic parameter must "
                f"belong to one agent: {err}. Use a BenchMARL model with per-agent parameters (e.g. "
                f"model@critic_model=layers/mlp).",
            ) from None
        self._critics[group] = critic
        gae = GAE(gamma=self.gamma, lmbda=self.lmbda, value_network=critic, average_gae=False)
        gae.set_keys(
            advantage=(group, "advantage"),
            value_target=(group, "value_target"),
            value=(group, "state_value"),
            reward=(group, "reward"),
            done=(group, "done"),
            terminated=(group, "terminated"),
        )
        self._gae[group] = gae
        group_index = list(self.group_map).index(group)
        loss = MatrpoLoss(
            policy_for_loss, critic, group=group, loss_critic_type=self.loss_critic_type,
            critic_coef=self.critic_coef, seed=int(self.experiment.seed) * 1000 + group_index,
            agent_share=n / group_size(self.experiment, group),
        )
        return loss, False

    def _get_parameters(self, group: str, loss: MatrpoLoss) -> Dict[str, Iterable]:
        # the policy is updated by MATRPO in process_batch, never by an optimizer
        return {"loss_critic": list(loss.critic_network.parameters())}

    def process_env_fun(self, env_fun: Callable) -> Callable:
        bounds = {}
        for group in self.group_map:
            spec = self.action_spec[group, "action"]
            low, high = getattr(spec.space, "low", None), getattr(spec.space, "high", None)
            if low is not None and high is not None and torch.is_floating_point(low):
                bounds[(group, "action")] = (low, high)
        if not bounds:
            return env_fun

        def make():
            return TransformedEnv(env_fun(), _ClipActions(bounds))

        return make

    # ------------------------------------------------------------ the iteration
    def process_batch(self, group: str, batch: TensorDictBase) -> TensorDictBase:
        """Per collected batch: per-agent GAE (eqs. 18-19), then the MATRPO policy update (Algorithm 1).

        BenchMARL calls this once per batch and group before the batch goes to
        the replay buffer, which makes it the one place where the whole batch
        and each agent's advantages are available together: the policy update
        is done here (not minibatch SGD); the critics then train on the buffer.
        """
        batch = self._complete_group_keys(group, batch)
        batch = self.compute_advantages(group, batch)
        self._log_critic(group)
        self.policy_update(group, batch)
        return batch

    def _log_critic(self, group: str) -> None:
        """``matrpo/<group>/<agent>/critic_{explained_variance, mse}``: the critic on the fresh batch, held out.

        The explained variance is left out for an agent whose targets are constant (undefined)."""
        logger = getattr(self.experiment, "logger", None)
        if logger is None:
            return
        to_log = {}
        for i, agent in self._logged_agents(group):
            for name, v in self.critic_stats[group].items():
                if torch.isfinite(v[i]):
                    to_log[f"matrpo/{group}/{agent}/critic_{name}"] = float(v[i])
        logger.log(to_log, step=self.experiment.n_iters_performed)

    def _complete_group_keys(self, group: str, batch: TensorDictBase) -> TensorDictBase:
        """Per-agent reward/done/terminated, broadcast from the shared ones where the task has no per-agent key."""
        keys = set(batch.keys(True, True))
        group_shape = batch.get(group).shape
        for name in ("done", "terminated", "reward"):
            if ("next", group, name) not in keys:
                batch.set(("next", group, name), batch.get(("next", name)).unsqueeze(-1).expand((*group_shape, 1)))
        return batch

    @torch.no_grad()
    def compute_advantages(self, group: str, batch: TensorDictBase) -> TensorDictBase:
        """001 eqs. (18)-(19): GAE of every agent with its own critic and reward.

        Writes ``(group, "advantage")`` (raw, the critic's target is
        ``(group, "value_target")``) and ``(group, "matrpo_advantage")`` (what
        the policy update uses: scaled per agent as ``advantage_norm`` says),
        and keeps the critic's held-out fit in ``critic_stats[group]`` (:func:`value_fit`).
        TorchRL's GAE bootstraps with ``V(o_{t+1})`` unless ``terminated_t``
        and cuts the trace at ``done_t`` (flags of the transition's *next* state).
        """
        self._gae[group](batch)
        adv = batch.get((group, "advantage"))  # (..., n, 1)
        n = adv.shape[-2]
        # the values come from the critic before it trains on this batch: a held-out fit
        ev, mse = value_fit(batch.get((group, "state_value")).reshape(-1, n).T.float(),
                            batch.get((group, "value_target")).reshape(-1, n).T.float())
        self.critic_stats[group] = {"explained_variance": ev, "mse": mse}
        if self.advantage_norm != "none":
            flat = adv.reshape(-1, n).T  # (n, M): each agent its own statistics
            flat = scale_advantages(flat, self.advantage_norm)
            adv = flat.T.reshape(adv.shape)
        batch.set((group, "matrpo_advantage"), adv)
        return batch

    def general_path(self, group: str) -> bool:
        """Whether ``group``'s joint policies go through :class:`GatheredJointNetwork` (any model that is
        not a chain of plain MLPs, or ``force_general_path``) rather than the stacked-MLP path."""
        return self._joint_chains[group] is None or self.force_general_path

    def update_samples(self, group: str, batch: TensorDictBase) -> Optional[Tensor]:
        """Samples (rows of ``batch.reshape(-1)``) the update uses; ``None``: all of them.

        A recurrent policy's probability of a sample depends on its hidden state, which BenchMARL
        does not keep in the batch (the collector drops the ``_hidden_*`` keys; its training path
        replays each collected sequence from a zero state, reset at ``is_init``). The replay equals
        the policy that acted from an agent's first reset in the sequence on; before it, the state
        carried over from the previous batch is lost. Those samples are left out, so that every
        log-ratio (eqs. 13, 20), Fisher product (eq. 14) and KL of the update is that of the
        collecting policy ``pi_old``, exactly. A non-recurrent model uses every sample.
        """
        if not _is_recurrent(self.model_config):
            return None
        is_init = batch.get("is_init")  # (E, T, 1): the sequence dim is the last batch dim
        seen = is_init.reshape(*batch.shape).long().cumsum(-1) > 0
        return seen.reshape(-1).nonzero().flatten()

    def policy_inputs(self, group: str, batch: TensorDictBase) -> Tuple[Dict[str, Tensor], Tensor, Tensor, Tensor]:
        """``(params {name: (n, ...)}, obs, joint actions (n, M, K, ...), advantages (n, M))``.

        ``obs`` is ``(n, M, d)`` observations on the stacked-MLP path, or on the general path the
        ``(n, M, 2)`` ``(agent, sample)`` index :class:`GatheredJointNetwork` reads (the batch itself
        is held by the network, :meth:`joint_network`). ``M`` counts :meth:`update_samples`.
        """
        td = batch.reshape(-1)
        samples = self.update_samples(group, batch)
        n = len(self.group_map[group])
        block = local_block(self.experiment, group)
        if block is not None and self.general_path(group):
            raise ValueError(f"matrpo: group '{group}': a process that builds a block of agents runs the stacked-MLP "
                             "path only; use model=layers/mlp (or launch with --agents all)")
        if self.general_path(group):
            M_all = td.shape[0]
            rows = torch.arange(M_all, device=td.device) if samples is None else samples
            obs = torch.stack(
                [torch.arange(n, device=td.device)[:, None].expand(n, rows.numel()), rows.expand(n, -1)], -1
            )
        else:
            model = self._joint_chains[group][0]  # the first MLP reads the observations
            feats = torch.cat(
                [td.get(key).flatten(start_dim=-model.num_feature_dims) for key in model.in_keys], dim=-1
            )  # (M, n, d), as BenchMARL's Mlp builds its input
            obs = feats.transpose(0, 1)
        if samples is not None:
            td = td[samples]
        M = td.shape[0]
        params = self.policy_parameters(group)
        advantages = td.get((group, "matrpo_advantage")).reshape(M, n).T
        if block is None:
            action = td.get((group, "action"))  # (M, n, ...): the joint action
        else:  # a block of agents: its rows in a stack of every agent's (the others' rows are zeros, never read)
            action = td.get(("next", JOINT_ACTION, group))  # the joint action taken at each sample
            K, (first, last) = group_size(self.experiment, group), block

            def pad(t: Tensor) -> Tensor:
                out = t.new_zeros(K, *t.shape[1:])
                out[first:last] = t
                return out

            params = {name: pad(p.detach()) for name, p in params.items()}
            obs, advantages = pad(obs), pad(advantages)
        actions = action.unsqueeze(0).expand(action.shape[1], *action.shape)  # every agent scores all heads
        return params, obs, actions, advantages

    def joint_masks(self, group: str, batch: TensorDictBase) -> Optional[Tensor]:
        """The batch's action masks as the joint heads need them, ``(M, K, F)`` bool, or ``None``.

        Head ``n`` of every agent's joint policy is masked with agent ``n``'s
        legal actions at that sample (:func:`mask_joint_output`): the masks are
        data of the batch, like the joint action every agent scores. At
        execution agent ``i`` uses its own mask only.
        """
        if self.action_mask_spec is None:
            return None
        # the collection policy masked the own head with it, so every batch has it; a block: every agent's
        key = (group, "action_mask") if local_block(self.experiment, group) is None else (JOINT_ACTION_MASK, group)
        mask = batch.get(key)
        mask = mask.reshape(-1, *mask.shape[-2:]).to(torch.bool)  # (M, n, F): row n is agent n's mask
        samples = self.update_samples(group, batch)
        return mask if samples is None else mask[samples]

    def policy_parameters(self, group: str) -> Dict[str, Tensor]:
        """The live stacked policy parameters of ``group``, ``{name: (n, ...)}``.

        Stacked-MLP path: the MLPs' leaves (``nn.Sequential`` names, ``i.`` prefixed for a sequence);
        general path: :class:`~benchmarl_decentral.consensus.stacking.AgentStack`'s leaves (copies
        gathered), whose in-place writes reach every copy.
        """
        chain = self._joint_chains[group]
        if self.general_path(group):
            stack = self._joint_stacks[group]
            return dict(zip(stack.names, stack.leaves))
        flat = [
            {".".join(k) if isinstance(k, tuple) else k: v for k, v in m.mlp.params.items(True, True)} for m in chain
        ]
        if len(chain) == 1:
            return flat[0]
        return {f"{i}.{k}": v for i, params in enumerate(flat) for k, v in params.items()}  # nn.Sequential names

    def joint_network(self, group: str, batch: Optional[TensorDictBase] = None) -> Tuple[Callable, Callable, Optional[nn.Module]]:
        """``(network, make_dist, template)`` of ``group``'s joint policies.

        ``make_dist(network(params, obs))`` is every agent's joint policy
        ``prod_n pi^i(a^n | o^i)`` (eq. 8) with batch ``(n, M, K)`` for stacked
        ``params`` and ``obs`` of :meth:`policy_inputs`: the policy function of
        :mod:`benchmarl_decentral.objectives`. The general path
        (:class:`GatheredJointNetwork`, ``template`` None) needs the ``batch``;
        the stacked-MLP path reads the observations in ``obs``.
        """
        make_dist = _JointDist(group_size(self.experiment, group), self.experiment.continuous_actions,
                               self.scale_mapping)
        if self.general_path(group):
            if batch is None:
                raise ValueError(f"matrpo: group '{group}' runs its joint model on a batch; pass batch=")
            params = self.policy_parameters(group)
            network = GatheredJointNetwork(
                self._joint_models[group], self._joint_stacks[group], params,
                batch.select(*self._joint_models[group].in_keys, strict=False), (group, JOINT_KEY),
            )
            return network, make_dist, None
        chain = self._joint_chains[group]
        # a sequence of MLPs: one agent's network is their composition (the operators' autograd path;
        # a single plain MLP also gets the explicit forward/back-propagation of objectives.matrpo)
        template = chain[0].mlp._empty_net if len(chain) == 1 else nn.Sequential(*[m.mlp._empty_net for m in chain])
        return stacked_network(template), make_dist, template

    def linearisation(self, group: str, batch: TensorDictBase) -> CachedLinearisation:
        """Every agent's local model of ``group`` around ``theta_old`` on ``batch`` (eqs. 13-14, 20)."""
        params, obs, actions, _ = self.policy_inputs(group, batch)
        network, make_dist, template = self.joint_network(group, batch)
        return CachedLinearisation(
            network, make_dist, {k: v.detach() for k, v in params.items()}, obs, actions,
            damping=self.cg_damping, fisher_subsample=self.fisher_subsample, template=template,
            mask=self.joint_masks(group, batch), shared_operators=self.general_path(group),
        )

    def batch_graph(self, group: str, batch: TensorDictBase) -> Tensor:
        """``topology=visibility``: the undirected ``(n, n)`` link graph of one update, from the batch.

        Agents ``i`` and ``j`` are linked when either saw the other in more
        than ``visibility_min_fraction`` of the samples (ally visibility of
        their observations, :func:`~benchmarl_decentral.consensus.visibility.visibility_adjacency`).
        On the CPU, where the links live (:func:`matrpo_update`).
        """
        obs = every_agent_observation(self.experiment, group, batch)  # a block: the joint observation's
        n = group_size(self.experiment, group)
        seen = visibility_adjacency(obs, layout=self.visibility_layout, n_agents=n, self_loops=False, symmetric=True)
        return seen.reshape(-1, n, n).float().mean(0).cpu() > self.visibility_min_fraction

    def policy_update(self, group: str, batch: TensorDictBase) -> Optional[MatrpoStats]:
        """001 Algorithm 1, one policy iteration on ``batch`` (which has ``matrpo_advantage``).

        ``None`` (no update) when a recurrent policy has no replayable sample (:meth:`update_samples`)."""
        loss: MatrpoLoss = self.get_loss_and_updater(group)[0]
        links = self.links[group]
        if links is None:
            graph = self.batch_graph(group, batch)
            links = links_from_adjacency(graph)
            self.link_stats[group] = {
                "links": float(links.shape[0]),
                "components": float(component_labels(graph).unique().numel()),
            }
        samples = self.update_samples(group, batch)
        if samples is not None and samples.numel() == 0:
            LOGGER.warning(
                "matrpo: group '%s': no sample of this batch follows a reset (is_init) of its recurrent "
                "policy, so no log-ratio of the collecting policy can be replayed; the policy update is "
                "skipped. Collect longer sequences per env (experiment.on_policy_collected_frames_per_batch / "
                "on_policy_n_envs_per_worker above the episode length).", group,
            )
            return None
        lin = self.linearisation(group, batch)
        _, _, _, advantages = self.policy_inputs(group, batch)
        params_new, stats, loss.round_robin_offset = matrpo_update(
            lin, advantages, links, isolated="error" if self.links[group] is not None else "local",
            delta=self.delta, beta=self.beta,
            iterations=self.admm_iterations, mode=self.admm_mode, link_failure=self.link_failure,
            generator=loss.generator, round_robin_offset=loss.round_robin_offset, tol=self.admm_tol or None,
            exact_kkt=self.exact_kkt, cg_iters=self.cg_iters, backtrack_ratio=self.backtrack_ratio,
            max_backtracks=self.max_backtracks, require_improvement=self.line_search_improvement,
            metric=self.admm_metric, cg_rtol=self.cg_rtol, transport=self.transport,
        )
        lin.release()
        with torch.no_grad():
            live = self.policy_parameters(group)
            mine, block = self.held_agents(group), local_block(self.experiment, group)
            for name, value in params_new.items():
                if mine is None:
                    live[name].copy_(value)
                elif block is not None:  # this process's stack is its block
                    live[name].copy_(value[block[0]:block[1]])
                else:  # the agents of other processes are theirs to update (here their step is 0)
                    live[name][mine] = value[mine]
        self.last_stats[group] = stats
        self._log(group, stats, loss)
        return stats

    def held_agents(self, group: str) -> Optional[Tensor]:
        """The agents of ``group`` this process updates (a distributed run), or ``None``: all of them."""
        if self.transport is None:
            return None
        return self.transport.local_agents(group_size(self.experiment, group))

    def _logged_agents(self, group: str) -> List[Tuple[int, str]]:
        """``(row, name)`` of the agents whose statistics this process logs (all, or the ones it holds), ``row``
        their index in this process's stacks (the group's index, or in a block's stack, from its first agent)."""
        names = self.group_map[group]
        mine = self.held_agents(group)
        if mine is None or local_block(self.experiment, group) is not None:
            return list(enumerate(names))
        return [(i, names[i]) for i in mine.tolist()]

    def _log(self, group: str, stats: MatrpoStats, loss: MatrpoLoss) -> None:
        mine = self.held_agents(group)
        pick = (lambda v: v) if mine is None else (lambda v: v[mine.to(v.device)])
        per_agent = {
            "kl": stats.kl,
            "primal_residual": stats.primal_residual,
            "dual_residual": stats.dual_residual,
            "admm_updates": stats.admm_updates.float(),
            "step_fraction": stats.step_fraction,
            "surrogate_improvement": stats.improvement,
            "primal_residual_rel": stats.primal_residual_rel,
            "dual_residual_rel": stats.dual_residual_rel,
            "converged_links": stats.converged_links,
            "cg_iterations": stats.cg_iterations.float(),
        }
        per_agent = {name: pick(v) for name, v in per_agent.items()}  # (held,): the agents updated here
        loss.stats = {name: float(v.mean()) for name, v in per_agent.items()}
        loss.stats["admm_iterations"] = float(stats.iterations)
        loss.stats["kl_max"] = float(per_agent["kl"].max())
        loss.stats.update(self.link_stats.get(group, {}))
        to_log = {}
        for k, (_, agent) in enumerate(self._logged_agents(group)):
            for name, v in per_agent.items():
                to_log[f"matrpo/{group}/{agent}/{name}"] = float(v[k])
        to_log[f"matrpo/{group}/admm_iterations"] = float(stats.iterations)
        if stats.primal_residual_rel_max is not None:  # the largest over the links (the admm_tol test's quantity)
            to_log[f"matrpo/{group}/primal_residual_rel_max"] = stats.primal_residual_rel_max
            loss.stats["primal_residual_rel_max"] = stats.primal_residual_rel_max
        if stats.links_up is not None:
            to_log[f"matrpo/{group}/links_up"] = stats.links_up
        for name, value in self.link_stats.get(group, {}).items():  # topology=visibility
            to_log[f"matrpo/{group}/{name}"] = value
        to_log.update(self._comm_metrics(group, stats))
        logger = getattr(self.experiment, "logger", None)
        if logger is not None:
            logger.log(to_log, step=self.experiment.n_iters_performed)


    def _comm_metrics(self, group: str, stats: MatrpoStats) -> Dict[str, float]:
        """Bytes each agent sent in this update's ADMM (eq. 22), mean over the group; over all groups at the last.

        The keys of decpg's (``comm/...``), so ``benchmarl report`` shows them:
        ``train`` is the ADMM link traffic, ``train_network`` the part of it
        that left the process (0 in one process); in a distributed run the
        mean is over the agents this process holds, from the tensors it sent.
        """
        held = self.held_agents(group)
        held = len(self.group_map[group]) if held is None else held.numel()
        sent, network = stats.bytes_sent, stats.network_bytes_sent
        last = list(getattr(self.experiment, "train_group_map", self.group_map))[-1]
        return bytes_per_agent_metrics(self._comm, group, last, held, {
            "train": 0.0 if sent is None else float(sent.sum()),
            "train_network": 0.0 if network is None else float(network.sum()),
        })


class _JointDist:
    """Picklable ``out -> joint distribution`` for one group (see :func:`joint_distribution`)."""

    def __init__(self, n_components: int, continuous: bool, scale_mapping: str) -> None:
        self.n_components = n_components
        self.continuous = continuous
        self.scale_mapping = scale_mapping

    def __call__(self, out: Tensor) -> Distribution:
        return joint_distribution(out, n_components=self.n_components, continuous=self.continuous,
                                  scale_mapping=self.scale_mapping)


def _activation_class(name: str) -> Type[nn.Module]:
    if name.lower() in ACTIVATIONS:
        return ACTIVATIONS[name.lower()]
    module, _, attr = name.rpartition(".")
    if module:
        import importlib

        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            pass
    raise ValueError(
        f"matrpo: unknown activation '{name}'; use one of {sorted(ACTIVATIONS)} or a class path "
        "such as torch.nn.SELU (or null to keep the model's)."
    )


class _MatrpoCallback(Callback):
    """Per-agent critic gradient clip and critic learning rate, set once the optimizers exist."""

    def __init__(self, algorithm: Matrpo):
        super().__init__()
        self.algorithm = algorithm

    def on_setup(self):
        algo, exp = self.algorithm, self.experiment
        for group in exp.group_map:
            optimizer = exp.optimizers[group]["loss_critic"]
            if algo.critic_lr is not None:
                for param_group in optimizer.param_groups:
                    param_group["lr"] = algo.critic_lr
            if algo.critic_max_grad_norm is not None:
                stack = algo._critic_stacks[group]
                optimizer.register_step_pre_hook(_per_agent_clip(stack, algo.critic_max_grad_norm))


def _per_agent_clip(stack: AgentStack, max_norm: float):
    def hook(optimizer, args, kwargs):
        # stacked (n, ...) gradients; a gathered leaf's rows are its copies' .grad (AgentStack.grads)
        grads = [g for g in stack.grads() if g is not None]
        if not grads:
            return
        # each agent's norm over all of its own leaves, one op per leaf
        sq = torch.stack([g.pow(2).reshape(g.shape[0], -1).sum(-1) for g in grads]).sum(0)
        scale = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale.view(-1, *([1] * (g.dim() - 1))))

    return hook


@dataclass
class MatrpoConfig(AlgorithmConfig):
    """Configuration of :class:`Matrpo` (defaults: ``conf/algorithm/matrpo.yaml``: paper 001 Table III,
    except the ADMM settings, chosen by ``benchmarks/matrpo_admm_sweep.py``; Table III's: :class:`MatrpoPaperConfig`)."""

    _yaml_name = "matrpo"  # the YAML of this config (a class attribute, not a field)

    delta: float = MISSING
    beta: float = MISSING
    admm_iterations: int = MISSING
    admm_mode: str = MISSING
    admm_tol: Optional[float] = MISSING
    exact_kkt: bool = MISSING
    topology: str = MISSING
    k: int = MISSING
    adjacency: Optional[List[List[int]]] = MISSING
    visibility_min_fraction: float = MISSING
    link_failure: float = MISSING
    gamma: Optional[float] = MISSING
    lmbda: float = MISSING
    advantage_norm: str = MISSING
    cg_iters: int = MISSING
    cg_damping: float = MISSING
    fisher_subsample: int = MISSING
    backtrack_ratio: float = MISSING
    max_backtracks: int = MISSING
    line_search_improvement: bool = MISSING
    num_cells: Optional[List[int]] = MISSING
    activation: Optional[str] = MISSING
    scale_mapping: str = MISSING
    loss_critic_type: str = MISSING
    critic_coef: float = MISSING
    critic_lr: Optional[float] = MISSING
    critic_max_grad_norm: Optional[float] = MISSING
    # evaluation (benchmarl_decentral.evaluation_dropout)
    evaluation_dropout: List[int] = field(default_factory=list)
    # per-group topology options (benchmarl_decentral.consensus.groups)
    group_topology: Any = None  # Any: omegaconf merges a command-line dict into a null node
    # trust-region metric of the ADMM primal step (a default: configs pickled before the key still load)
    admm_metric: str = "kl"
    # the critic's schedule per policy iteration (defaults: configs pickled before the keys still load)
    critic_epochs: Optional[int] = None
    critic_minibatch_size: Optional[int] = None
    # relative CG stop of the ADMM primal steps (a default: configs pickled before the key still load)
    cg_rtol: float = 0.0

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Checks that need no task; the task-dependent ones run when the algorithm is built."""
        self.evaluation_dropout = check_evaluation_dropout("matrpo", self.evaluation_dropout)
        self.group_topology = check_group_topology(  # None when empty, as the YAML's null
            self.group_topology, owner="matrpo", keys=MATRPO_GROUP_KEYS, topologies=STATIC_TOPOLOGIES,
            topology=self.topology,
        ) or None

        def num(x) -> bool:
            return isinstance(x, (int, float)) and not isinstance(x, bool)

        if num(self.delta) and not self.delta > 0:
            raise ValueError(
                f"matrpo: delta must be > 0 (the per-agent KL bound delta/N of eq. 8), got "
                f"{self.delta}; Table III uses algorithm.delta=0.003."
            )
        if num(self.beta) and not self.beta > 0:
            raise ValueError(
                f"matrpo: beta must be > 0 (the ADMM penalty of eq. 11), got {self.beta}; "
                "Table III uses algorithm.beta=1.0 (3 or 6 agents) or 5.0."
            )
        if num(self.admm_iterations) and self.admm_iterations < 1:
            raise ValueError(
                f"matrpo: admm_iterations must be >= 1, got {self.admm_iterations}; Table III uses "
                "algorithm.admm_iterations=100 (3 agents) to 500."
            )
        if isinstance(self.admm_mode, str) and self.admm_mode not in ADMM_MODES:
            raise ValueError(f"matrpo: unknown admm_mode '{self.admm_mode}'; choose one of {list(ADMM_MODES)}.")
        if num(self.admm_tol) and not self.admm_tol >= 0:
            raise ValueError(
                f"matrpo: admm_tol must be >= 0 (a relative residual; 0 or null: run all admm_iterations), "
                f"got {self.admm_tol}; e.g. algorithm.admm_tol=0.05."
            )
        if isinstance(self.admm_metric, str) and self.admm_metric not in ADMM_METRICS:
            raise ValueError(
                f"matrpo: unknown admm_metric '{self.admm_metric}'; choose one of {list(ADMM_METRICS)} "
                "(gauss_newton / kl_exact: the exact ADMM primal step with the Gauss-Newton / true-KL metric, "
                "benchmarks/README.md section 9)."
            )
        if isinstance(self.advantage_norm, str) and self.advantage_norm not in ADVANTAGE_NORMS:
            raise ValueError(
                f"matrpo: unknown advantage_norm '{self.advantage_norm}'; choose one of {list(ADVANTAGE_NORMS)}."
            )
        if isinstance(self.topology, str) and self.topology not in MATRPO_TOPOLOGIES:
            raise ValueError(
                f"matrpo: unknown topology '{self.topology}'; choose one of {list(MATRPO_TOPOLOGIES)}."
            )
        if num(self.visibility_min_fraction) and not 0 <= self.visibility_min_fraction < 1:
            raise ValueError(
                f"matrpo: visibility_min_fraction must be in [0, 1) (0: linked if seen in any sample), "
                f"got {self.visibility_min_fraction}."
            )
        if self.topology == "custom" and self.adjacency is None:
            raise ValueError("matrpo: topology=custom needs algorithm.adjacency, an n x n 0/1 matrix.")
        if num(self.k) and self.k < 0:
            raise ValueError(f"matrpo: k must be >= 0 (neighbours on the knn_ring), got {self.k}.")
        if num(self.link_failure) and not 0 <= self.link_failure < 1:
            raise ValueError(f"matrpo: link_failure must be in [0, 1), got {self.link_failure}.")
        if num(self.gamma) and not 0 < self.gamma <= 1:
            raise ValueError(f"matrpo: gamma must be in (0, 1] or null, got {self.gamma}.")
        if num(self.lmbda) and not 0 <= self.lmbda <= 1:
            raise ValueError(f"matrpo: lmbda must be in [0, 1], got {self.lmbda}.")
        if num(self.cg_iters) and self.cg_iters < 1:
            raise ValueError(f"matrpo: cg_iters must be >= 1, got {self.cg_iters}.")
        if num(self.cg_rtol) and not 0 <= self.cg_rtol < 1:
            raise ValueError(
                f"matrpo: cg_rtol must be in [0, 1) (the factor by which each primal step's CG shrinks its warm "
                f"start's residual; 0: all cg_iters), got {self.cg_rtol}; e.g. algorithm.cg_rtol=0.3."
            )
        if num(self.cg_damping) and not self.cg_damping > 0:
            raise ValueError(
                f"matrpo: cg_damping must be > 0 (the Fisher of a network is singular), got {self.cg_damping}."
            )
        if num(self.fisher_subsample) and self.fisher_subsample < 1:
            raise ValueError(f"matrpo: fisher_subsample must be >= 1 (1 = every sample), got {self.fisher_subsample}.")
        if num(self.backtrack_ratio) and not 0 < self.backtrack_ratio < 1:
            raise ValueError(f"matrpo: backtrack_ratio must be in (0, 1), got {self.backtrack_ratio}.")
        if num(self.max_backtracks) and self.max_backtracks < 0:
            raise ValueError(f"matrpo: max_backtracks must be >= 0, got {self.max_backtracks}.")
        if isinstance(self.num_cells, (list, tuple)) and (
            not self.num_cells or any(not isinstance(c, int) or c < 1 for c in self.num_cells)
        ):
            raise ValueError(
                f"matrpo: num_cells must be a non-empty list of positive ints or null, got {self.num_cells}."
            )
        if isinstance(self.activation, str):
            _activation_class(self.activation)
        if isinstance(self.loss_critic_type, str) and self.loss_critic_type not in CRITIC_LOSSES:
            raise ValueError(
                f"matrpo: unknown loss_critic_type '{self.loss_critic_type}'; choose one of {list(CRITIC_LOSSES)}."
            )
        for name in ("critic_lr", "critic_max_grad_norm"):
            value = getattr(self, name)
            if num(value) and not value > 0:
                raise ValueError(f"matrpo: {name} must be > 0 or null, got {value}.")
        for name, inherits, example in (("critic_epochs", "on_policy_n_minibatch_iters", 3),
                                        ("critic_minibatch_size", "on_policy_minibatch_size", 64)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(
                    f"matrpo: {name} must be a positive integer or null (null: experiment.{inherits}), got "
                    f"{value!r}; e.g. algorithm.{name}={example}."
                )
        if isinstance(self.topology, str):
            check_topology_options(
                owner="matrpo", prefix="algorithm", topology=self.topology, values=vars(self),
                uses=MATRPO_TOPOLOGY_OPTIONS, defaults=algorithm_defaults(self._yaml_name),
            )

    @staticmethod
    def associated_class() -> Type[Algorithm]:
        return Matrpo

    @classmethod
    def get_from_yaml(cls, path: Optional[str] = None) -> "MatrpoConfig":
        """Load our ``conf/algorithm/<name>.yaml`` (BenchMARL's loader only reads its own folder)."""
        return cls(**load_algorithm_yaml(cls._yaml_name, path))

    @staticmethod
    def supports_continuous_actions() -> bool:
        return True

    @staticmethod
    def supports_discrete_actions() -> bool:
        return True

    @staticmethod
    def on_policy() -> bool:
        return True

    @staticmethod
    def has_independent_critic() -> bool:
        return True


# ------------------------------------------------------------------ the paper preset
class MatrpoPaper(Matrpo):
    """:class:`Matrpo` with Table III's ADMM settings and the public code's critic training
    (``conf/algorithm/matrpo_paper.yaml``).

    The same algorithm; a subclass only so that BenchMARL, which names runs after
    ``associated_class().__name__.lower()``, names these ``matrpo_paper`` and a sweep
    over ``algorithm=matrpo,matrpo_paper`` keeps the two apart.
    """


MatrpoPaper.__name__ = "Matrpo_paper"  # run name "matrpo_paper", the hydra name (pickling uses __qualname__)


#: Paper 001 Table III's ADMM (Cooperative Navigation N = 3): the paper's closed-form true-KL primal step
#: (eq. 51), beta 1.0, 100 iterations of one random link each (Algorithm 1), no residual stop, 10 CG iterations.
#: ``algorithm=matrpo_paper``'s ADMM, and ``algorithm=matrpo``'s until 2026-12-07: the measurement scripts in
#: ``benchmarks/`` whose committed numbers were taken with it set these fields.
TABLE_III_ADMM = {"admm_metric": "kl", "exact_kkt": False, "beta": 1.0, "admm_mode": "random", "admm_iterations": 100,
                  "admm_tol": 0.0, "cg_iters": 10, "cg_rtol": 0.0}


@dataclass
class MatrpoPaperConfig(MatrpoConfig):
    """``algorithm=matrpo_paper``: paper 001 Table III's ADMM (beta 1.0, 100 iterations, one random
    link per iteration, Algorithm 1) and the public code's critic training (3 epochs of minibatches
    of 64, Adam lr 3e-4, no clip); every other key as ``conf/algorithm/matrpo.yaml``."""

    _yaml_name = "matrpo_paper"

    @staticmethod
    def associated_class() -> Type[Algorithm]:
        return MatrpoPaper
