"""DecPG: Decentralized Policy Gradients (paper 002_4f291ba56d03e11d.txt).

MAPPO backbone where every agent keeps its own actor and critic (never
shared; any BenchMARL model, its per-agent parameters seen as leaves stacked on
a leading agent dim, :class:`~benchmarl_decentral.consensus.stacking.AgentStack`)
and, at every optimizer step, the DSGD update of sec. 3 is applied per network::

    theta_i <- sum_j P_ij theta_j - eta * grad L_i(theta_i)

with P the doubly stochastic kNN-ring matrix of Fig. 1 (``P_ij = 1/(k+1)``).
``k = 0`` is no sharing at all, ``k = n - 1`` is parameter sharing.

On SMAC-family tasks (``smax/*``, ``smacv2/*``) ``topology=visibility``
replaces the static ring by the allies' visibility graph (agent ``i`` mixes
with the live allies inside its sight range, read from its observation,
:mod:`benchmarl_decentral.consensus.visibility`). The graph changes with
every sample, so each optimizer step mixes with the ``P`` of the minibatch it
stepped on (:func:`~benchmarl_decentral.consensus.batch_mixing_matrix`):
``mixing_graph=mean`` averages the per-sample matrices of the ``mixing``
rule, ``majority`` uses the links up in at least half of the samples. This is
DSGD on a time-varying graph; a step whose graph has no link leaves every
agent's parameters unmixed.

How it sits in BenchMARL (1.5.2) without a fork:

* the networks are MAPPO's, built with ``share_params=False`` whatever
  ``experiment.share_policy_params`` says, and all agents start from agent 0's
  initial parameters (the paper's common ``theta_0``);
* ``L_i`` is the mean over agent ``i``'s own samples: BenchMARL's PPO loss
  averages over agents too, so :meth:`Decpg.process_loss_vals` multiplies it by
  ``n`` to give each agent exactly ``grad L_i`` (this matters with SGD);
* BenchMARL builds one Adam per loss; the algorithm's callback
  (:class:`_DecpgCallback`, attached by the algorithm itself since hydra runs
  pass no callbacks) swaps in SGD when asked, sets the linearly decaying
  learning rate each iteration, clips each agent's gradient norm on its own
  (BenchMARL's clip is over all agents jointly, a cross-agent statistic), and
  registers the consensus mixing as an optimizer step hook; the mixing goes
  through the installed transport
  (:func:`~benchmarl_decentral.distributed.current_transport`, in-process
  unless a distributed launcher set one), and the bytes every agent sent are
  logged as ``comm/...`` each iteration;
* evaluation is routed through the averaged model ``theta_avg = mean_i theta_i``
  (sec. 3, "In evaluation, the average model [...] is used"), or the local or
  individual models (Table 3), and optionally repeated in the perturbed test
  environment of sec. 4 to log the generalization gap.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field, MISSING
from typing import Any, Dict, Iterable, Iterator, List, Optional, Type

import torch
from benchmarl.algorithms.common import Algorithm, AlgorithmConfig
from benchmarl.algorithms.mappo import Mappo
from benchmarl.experiment.callback import Callback
from benchmarl.models import MlpConfig
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictSequential
from torchrl.data import Composite, Unbounded

from benchmarl_decentral.algorithms._common import (
    check_consensus_params,
    check_link_latency,
    config_error,
    gnn_dropout_conflict,
    visibility_layout,
)
from benchmarl_decentral.algorithms._yaml import algorithm_defaults, load_algorithm_yaml
from benchmarl_decentral.algorithms.dg_mappo import ValueNorm, load_value_norm_state, value_norm_state
from benchmarl_decentral.evaluation_dropout import check_evaluation_dropout, evaluation_rollouts, mean_return
from benchmarl_decentral.consensus import (
    average_degree,
    BATCH_GRAPH_MODES,
    build_mixing_matrix,
    build_topology,
    ConsensusMixer,
    consensus_distance,
    from_adjacency,
    MIXING_RULES,
    snapshot,
    spectral_gap,
    TOPOLOGIES,
    update_variance,
)
from benchmarl_decentral.consensus.groups import (
    STATIC_TOPOLOGIES,
    check_group_topology,
    resolve_static_group_topologies,
)
from benchmarl_decentral.consensus.stacking import AgentStack
from benchmarl_decentral.consensus.topology import check_topology_options
from benchmarl_decentral.consensus.visibility import visibility_adjacency
from benchmarl_decentral.distributed.local import (
    block_sampling,
    every_agent_observation,
    group_size,
    joint_observation_spec,
    local_block,
    network_rng,
)
from benchmarl_decentral.distributed.transport import bytes_per_agent_metrics, current_transport
from benchmarl_decentral.environments.perturbation import PerturbedPolicy

OPTIMIZERS = ("sgd", "adam")
EVALUATION_MODES = ("average", "local", "individual")
MIX_ORDERS = ("mix_then_step", "step_then_mix")
#: Static topologies plus the SMAC-family ally-visibility graph (dynamic).
DECPG_TOPOLOGIES = (*TOPOLOGIES, "visibility")
#: Options read by some topologies only (refused with any other, see ``check_topology_options``).
DECPG_TOPOLOGY_OPTIONS = {"k": ("knn_ring",), "adjacency": ("custom",), "mixing_graph": ("visibility",)}
#: The networks DSGD can mix (``consensus_params``).
DECPG_NETWORKS = ("actor", "critic")
#: What ``group_topology`` may set for one group (ally visibility is task-wide).
DECPG_GROUP_KEYS = ("topology", "k", "adjacency")


class Decpg(Mappo):
    """Decentralized Policy Gradients (paper 002, sec. 3).

    Args:
        k: neighbours of each agent on the kNN ring (Fig. 1); ``0 <= k <= n-1``.
            The default ``k`` is lowered to ``n - 1`` on a group of ``n <= k``
            agents; a ``k`` the user set that does not fit a group is refused
            (:mod:`benchmarl_decentral.consensus.groups`).
        topology: ``knn_ring`` (uses ``k``), ``ring``, ``full``, ``custom`` or
            ``visibility`` (SMAC-family ally visibility, per minibatch).
        adjacency: the n x n 0/1 matrix for ``topology=custom``.
        mixing_graph: ``topology=visibility`` only: ``mean`` of the
            minibatch's per-sample mixing matrices or the ``majority`` graph.
        mixing: mixing rule: ``uniform`` (1/(deg+1), the paper's 1/(k+1)),
            ``metropolis`` or ``row``.
        mix_order: ``mix_then_step`` is the paper's update
            ``theta_i <- sum_j P_ij theta_j - eta g_i(theta_i)``;
            ``step_then_mix`` mixes after the local step (adapt then combine).
        link_failure: probability that each link is down at a given step.
        link_latency: ``d``, mixing steps a parameter vector takes over a
            link (asynchronous studies; 0: the synchronous step): each
            neighbour term of the DSGD step reads ``theta_j`` as sent ``d``
            mixing steps earlier, the agent's own term stays current
            (:class:`~benchmarl_decentral.consensus.ConsensusMixer`).
        optimizer: ``sgd`` (the paper) or ``adam``.
        lr: initial learning rate (replaces ``experiment.lr``).
        min_lr: learning rate reached at the end of training (linear decay).
        max_grad_norm: per-agent gradient norm clip, ``None`` to disable; when
            set, BenchMARL's joint clip (``experiment.clip_grad_val``) is off.
        evaluation_mode: ``average``, ``local`` or ``individual`` (Table 3).
        perturbed_evaluation: also evaluate in the perturbed test env (sec. 4).
        perturbation_c: observation noise scale c (Table 1).
        perturbation_eps: random action probability eps (Table 1).
        normalize_advantage: standardise advantages per minibatch with each
            agent's own mean and std (MAPPO's normalisation, kept local).
        value_norm: each agent's critic predicts its value targets normalised
            by that agent's own running mean and std
            (:class:`~benchmarl_decentral.algorithms.dg_mappo.ValueNorm`,
            MAPPO's value normalisation, Yu et al. 2022, kept local); GAE reads
            the de-normalised value. Without it a critic cannot follow returns
            of VMAS simple spread's scale (about -2500 per episode with 8 agents;
            benchmarks/learning/decpg_k_findings.md).
        consensus_params: the networks DSGD mixes, any of ``actor``,
            ``critic`` (the paper: both; the same key as ``dg_mappo``'s).
        group_topology: per-group ``topology`` / ``k`` / ``adjacency``, e.g.
            ``{"adversary": {"topology": "full"}}``; ``None`` or ``{}``: none.
        log_link_bytes: also log the bytes each link carried in the
            iteration's mixing steps, ``comm/<group>/link_<i>_to_<j>/train_bytes``
            (agent ``i`` sent to agent ``j``; links of the agents held in this
            process).
        The remaining arguments are MAPPO's.
    """

    def __init__(
        self,
        *,
        k: int,
        topology: str,
        adjacency: Optional[List[List[int]]],
        mixing_graph: str,
        mixing: str,
        mix_order: str,
        link_failure: float,
        optimizer: str,
        lr: float,
        min_lr: float,
        max_grad_norm: Optional[float],
        evaluation_mode: str,
        perturbed_evaluation: bool,
        perturbation_c: float,
        perturbation_eps: float,
        normalize_advantage: bool,
        value_norm: bool = False,  # False: configs pickled before the key
        consensus_params: Iterable[str] = ("actor", "critic"),
        evaluation_dropout: Optional[List[int]] = None,
        group_topology: Optional[Dict[str, Dict[str, Any]]] = None,  # None: configs pickled before the key
        log_link_bytes: bool = False,
        link_latency: int = 0,  # 0: configs pickled before the key
        **kwargs,
    ):
        super().__init__(share_param_critic=False, **kwargs)
        conflict = gnn_dropout_conflict("decpg", evaluation_dropout, self.model_config, "no-op actions")
        if conflict is not None:
            raise config_error(self.experiment, conflict)
        self.consensus_params = tuple(consensus_params)
        self.evaluation_dropout = list(evaluation_dropout or [])  # run by evaluation_dropout.DropoutEvaluation
        self.k = k
        self.topology = topology
        self.adjacency = adjacency
        self.mixing_graph = mixing_graph
        self.mixing = mixing
        self.mix_order = mix_order
        self.link_failure = link_failure
        self.link_latency = link_latency
        self.optimizer = optimizer
        self.lr = lr
        self.min_lr = min_lr
        self.max_grad_norm = max_grad_norm
        self.evaluation_mode = evaluation_mode
        self.perturbed_evaluation = perturbed_evaluation
        self.perturbation_c = perturbation_c
        self.perturbation_eps = perturbation_eps
        self.normalize_advantage = normalize_advantage
        self.value_norm = value_norm
        #: per group: each agent's running moments of its value targets (value_norm=true)
        self.value_norms: Dict[str, ValueNorm] = {}
        self.log_link_bytes = log_link_bytes

        #: per (group, "actor" | "critic"): the network's per-agent parameters as stacked leaves
        self._stacks: Dict[tuple, AgentStack] = {}
        # Validate everything that depends on the task before any training.
        self.mixing_matrices: Dict[str, torch.Tensor] = {}
        self.adjacencies: Dict[str, torch.Tensor] = {}
        self.visibility_layout: Optional[str] = None
        if topology == "visibility":
            self.visibility_layout = visibility_layout(self, "decpg")
        task = self.experiment.task.name.lower()
        #: every group's agents in the joint task (a process may build a block of them only,
        #: :class:`~benchmarl_decentral.distributed.local.LocalAgentsTask`); the graphs are over all of them
        self.joint_group_map = {g: list(range(group_size(self.experiment, g))) for g in self.group_map}
        try:
            #: per group: topology, k and adjacency after group_topology and the small-group rules
            self.group_topologies = resolve_static_group_topologies(
                owner="decpg", task=task, group_map=self.joint_group_map, topology=topology, k=k, adjacency=adjacency,
                group_topology=group_topology, keys=DECPG_GROUP_KEYS, option_uses=DECPG_TOPOLOGY_OPTIONS,
                default_k=algorithm_defaults("decpg")["k"],
            )
        except ValueError as err:
            raise config_error(self.experiment, str(err)) from None
        for group, agents in self.joint_group_map.items():
            n = len(agents)
            if self.visibility_layout is not None:
                # no link until the first minibatch brings its graphs (W = I)
                self.adjacencies[group] = torch.zeros(n, n, dtype=torch.bool)
                self.mixing_matrices[group] = build_mixing_matrix(mixing, self.adjacencies[group])
                continue
            opts = self.group_topologies[group]
            try:
                adj = build_topology(opts["topology"], n, k=opts["k"], adjacency=opts["adjacency"])
                if opts["topology"] == "custom":  # DSGD reaches consensus only on a connected graph
                    adj = from_adjacency(adj, n=n, require_connected=True)
                self.mixing_matrices[group] = build_mixing_matrix(mixing, adj)
            except ValueError as err:
                raise config_error(
                    self.experiment,
                    f"decpg: the topology does not fit group '{group}' of task {task} ({n} agents): {err}. "
                    f"Set algorithm.k / algorithm.adjacency / algorithm.mixing accordingly, or this group's "
                    f"own with algorithm.group_topology={{{group}: {{...}}}}.",
                ) from None
            self.adjacencies[group] = adj

        if max_grad_norm is not None and self.experiment_config.clip_grad_val is not None:
            # BenchMARL clips the norm over all agents' parameters at once; DecPG
            # clips each agent's gradient on its own (no cross-agent statistic).
            # Work on a copy: the caller's ExperimentConfig may serve other runs.
            self.experiment.config = copy.copy(self.experiment.config)
            self.experiment.config.clip_grad_val = None
            self.experiment_config = self.experiment.config

        self.callback = _DecpgCallback(self)
        # hydra runs pass callbacks=() (a tuple): rebind rather than append
        self.experiment.callbacks = [*self.experiment.callbacks, self.callback]
        self.callback.experiment = self.experiment

    # ------------------------------------------------------------------ networks
    def _network_rng(self, group: str, net: str) -> contextlib.AbstractContextManager:
        """Build a network from a seed of its own (:func:`~benchmarl_decentral.distributed.local.network_rng`):
        its first agent's parameters, ``theta_0`` (sec. 3), are the same whatever number of agents a process builds."""
        return network_rng(self.experiment.seed, group, net, self.device)

    def _get_policy_for_loss(self, group, model_config, continuous) -> TensorDictModule:
        shared = self.experiment_config.share_policy_params
        self.experiment_config.share_policy_params = False  # one actor per agent
        try:
            with self._network_rng(group, "actor"):
                policy = super()._get_policy_for_loss(
                    group=group, model_config=model_config, continuous=continuous
                )
        finally:
            self.experiment_config.share_policy_params = shared
        return block_sampling(policy, self.experiment, group)  # a rank's block: the group's noise, its rows

    def _get_loss(self, group, policy_for_loss, continuous):
        loss, use_target = super()._get_loss(group, policy_for_loss, continuous)
        if self.normalize_advantage:
            # MAPPO's advantage normalisation, but with each agent's own
            # statistics (its local dataset D_i): the agent dim is excluded.
            loss.normalize_advantage = True
            loss.normalize_advantage_exclude_dims = (-2,)
        n = len(self.group_map[group])
        try:  # stacked leaves as they are, n per-agent copies gathered (consensus.stacking)
            for net in ("actor", "critic"):
                self._stacks[(group, net)] = AgentStack(
                    getattr(loss, f"{net}_network_params").flatten_keys(), getattr(loss, f"{net}_network"), n, net
                )
        except ValueError as err:
            raise config_error(
                self.experiment,
                f"decpg: {err}. DSGD mixes each agent's own parameters; use a model with per-agent parameters "
                "(BenchMARL's layers/mlp, cnn, deepsets, gnn, gru, lstm or a sequence of them, share_params=false).",
            ) from None
        with torch.no_grad():  # every agent starts from the same theta_0 (sec. 3)
            for net in ("actor", "critic"):
                for p in self._stacks[(group, net)].leaves:
                    p.copy_(p[:1].expand_as(p))
        if self.visibility_layout is not None:
            loss.register_forward_pre_hook(self._use_minibatch_graph(group))
        norm = self.value_norms.get(group)
        if norm is not None:  # the critic loss on each agent's normalised scale
            loss.register_forward_pre_hook(self._normalised_critic_loss(group, norm))
            loss.register_forward_hook(lambda module, args, out: setattr(norm, "passthrough", False))
        return loss, use_target

    def _normalised_critic_loss(self, group: str, norm: ValueNorm):
        """Forward pre-hook of the loss (``value_norm``): fit the normalised value to the normalised target.

        The loss reads the stored advantages (computed by GAE with the
        de-normalised value), so only the critic term sees the normalised
        scale (:meth:`ValueNorm.critic_loss_input`; the forward hook after
        the loss resets :attr:`ValueNorm.passthrough`).
        """
        key = (group, "value_target")

        def hook(loss, args):
            return (norm.critic_loss_input(args[0], key), *args[1:])

        return hook

    def minibatch_graph(self, group: str, tensordict: TensorDictBase) -> torch.Tensor:
        """``topology=visibility``: the ally-visibility graph of every sample, ``(..., n, n)`` bool.

        No self loops (the mixing rules add the self weight); undirected
        (``A | A^T``) for ``metropolis``, which needs a symmetric graph.
        """
        return visibility_adjacency(
            every_agent_observation(self.experiment, group, tensordict),  # a block: the joint observation's
            layout=self.visibility_layout,
            n_agents=group_size(self.experiment, group),
            self_loops=False,
            symmetric=self.mixing == "metropolis",
        )

    def _use_minibatch_graph(self, group: str):
        """Forward pre-hook of the loss: the next optimizer steps mix over this minibatch's graphs."""

        def hook(loss, args):
            adj = self.minibatch_graph(group, args[0]).cpu()  # the mixers' link-failure generators are CPU ones
            for net in ("actor", "critic"):
                mixer = self.callback.mixers.get((group, net))
                if mixer is not None:
                    mixer.set_adjacency(adj)

        return hook

    def get_critic(self, group: str) -> TensorDictModule:
        """The agents' critics (:meth:`_get_critic`), with ``value_norm`` each agent's :class:`ValueNorm` after it."""
        with self._network_rng(group, "critic"):
            critic = self._get_critic(group)
        if not self.value_norm:
            return critic
        norm = self.value_norms.setdefault(group, ValueNorm(len(self.group_map[group])))
        key = (group, "state_value")
        return TensorDictSequential(critic, TensorDictModule(norm, in_keys=[key], out_keys=[key]))

    def resume_state(self) -> Dict[str, Any]:
        """What an exact resume needs beyond BenchMARL's state (:mod:`benchmarl_decentral.resume`): with
        ``value_norm`` each agent's running moments of its value targets; with ``link_latency`` the
        parameter vectors still in flight (each mixer's :class:`~benchmarl_decentral.distributed.LinkHistory`,
        in a distributed run what this rank received)."""
        return {
            "value_norms": value_norm_state(self.value_norms),
            "link_history": {f"{g}/{net}": mixer.history.state_dict()
                             for (g, net), mixer in self.callback.mixers.items() if mixer.history is not None},
        }

    def load_resume_state(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`resume_state`."""
        load_value_norm_state(self.value_norms, state.get("value_norms", {}))
        for name, history in state.get("link_history", {}).items():
            mixer = self.callback.mixers.get(tuple(name.split("/")))
            if mixer is not None and mixer.history is not None:
                mixer.history.load_state_dict(history)

    def _get_critic(self, group: str) -> TensorDictModule:
        """One centralized critic per agent, stacked on the agent dim.

        On all agents' observations MAPPO's per-agent critic is already stacked.
        On a global state BenchMARL would build n separate MLPs (a ModuleList),
        which cannot be mixed as one tensor per leaf: instead the state is
        broadcast to every agent and read by a per-agent (stacked) model.

        A distributed rank that builds its block of agents only
        (:class:`~benchmarl_decentral.distributed.local.LocalAgentsTask`) of a
        task without a state reads every agent's observation from the joint
        observation its environment offers (flat, agent-major), broadcast to
        its agents and read by a per-agent model the same way: with an MLP
        critic this is MAPPO's centralized MLP (each agent's copy reads the
        concatenated observations of all agents), row for row.
        """
        joint = joint_observation_spec(self.experiment, group) if self.state_spec is None else None
        if self.state_spec is None and joint is None:
            return super().get_critic(group)
        if joint is not None and not isinstance(self.critic_model_config, MlpConfig):
            raise config_error(
                self.experiment,
                f"decpg: with --agents local on a task without a global state, each agent's critic reads the "
                f"concatenated observations of every agent, which is MAPPO's centralized critic for an MLP only; "
                f"got critic model {type(self.critic_model_config).__name__}. Use model@critic_model=layers/mlp, "
                f"or launch with --agents all.",
            )
        n = len(self.group_map[group])
        (state_key, state_leaf), = self.state_spec.items(True, True) if joint is None else (joint,)
        feature_dims = len(state_leaf.shape)
        expand = TensorDictModule(
            lambda state: state.unsqueeze(-feature_dims - 1).expand(
                *state.shape[:-feature_dims], n, *state.shape[-feature_dims:]
            ),
            in_keys=[state_key],
            out_keys=[(group, "decpg_state")],
        )
        input_spec = Composite(
            {group: Composite({"decpg_state": state_leaf.expand(n, *state_leaf.shape)}, shape=(n,))}
        )
        output_spec = Composite(
            {group: Composite({"state_value": Unbounded(shape=(n, 1))}, shape=(n,))}
        )
        value = self.critic_model_config.get_model(
            input_spec=input_spec.to(self.device),
            output_spec=output_spec,
            n_agents=n,
            centralised=False,  # each agent's copy reads the (already global) state
            input_has_agent_dim=True,
            agent_group=group,
            share_params=False,
            device=self.device,
            action_spec=self.action_spec,
        )
        return TensorDictSequential(expand, value)

    def process_batch(self, group: str, batch: TensorDictBase) -> TensorDictBase:
        batch = super().process_batch(group, batch)  # GAE with the moments of the batches before this one
        norm = self.value_norms.get(group)
        if norm is not None:  # each agent's own targets only
            norm.update(batch.get((group, "value_target")))
        return batch

    def process_loss_vals(self, group: str, loss_vals: TensorDictBase) -> TensorDictBase:
        loss_vals = super().process_loss_vals(group, loss_vals)
        # PPO's loss is a mean over agents too; L_i (sec. 3) is the mean over
        # agent i's samples only, so scale by n: d/d theta_i gives grad L_i.
        n = len(self.group_map[group])
        for key in ("loss_objective", "loss_critic"):
            loss_vals.set(key, loss_vals.get(key) * n)
        return loss_vals

    # ---------------------------------------------------------------- parameters
    def agent_stack(self, group: str, net: str) -> AgentStack:
        """The per-agent parameters of ``net`` (``actor`` or ``critic``) of ``group``.

        Its ``leaves`` are stacked ``(n, ...)`` (a model's stacked leaves as they
        are, ``n`` per-agent copies gathered into one tensor per parameter);
        its ``parameters`` are what the optimizer steps.
        """
        self.get_loss_and_updater(group)  # builds the loss (and the stack) once
        return self._stacks[(group, net)]

    def actor_leaves(self, group: str) -> List[torch.Tensor]:
        """The actor's per-agent parameters of ``group``, stacked ``(n, ...)``; writes reach the actor."""
        return self.agent_stack(group, "actor").leaves

    def critic_leaves(self, group: str) -> List[torch.Tensor]:
        """The critic's per-agent parameters of ``group``, stacked ``(n, ...)``; writes reach the critic."""
        return self.agent_stack(group, "critic").leaves

    def lr_at(self, iteration: int) -> float:
        """Linear decay from ``lr`` to ``min_lr`` over training (Table 1)."""
        total = self.experiment_config.get_max_n_iters(self.on_policy)
        progress = min(1.0, iteration / max(1, total - 1))
        return self.lr + (self.min_lr - self.lr) * progress

    @contextlib.contextmanager
    def evaluation_parameters(self, mode: str | None = None, agent: int | None = None) -> Iterator[None]:
        """Temporarily replace every actor's parameters for evaluation.

        ``average``: every agent runs ``theta_avg = mean_i theta_i`` (sec. 3);
        ``local``: each agent its own ``theta_i``; ``agent=i``: every agent runs
        ``theta_i`` (one "individual local model", Table 3). In ``individual``
        mode the logged evaluation uses the averaged model and the individual
        models are evaluated in addition (``eval/individual/...``).
        """
        mode = self.evaluation_mode if mode is None else mode
        if mode == "local" and agent is None:
            yield
            return
        saved = {g: snapshot(self.actor_leaves(g)) for g in self.group_map}
        try:
            with torch.no_grad():
                for group in self.group_map:
                    for p in self.actor_leaves(group):
                        src = p.mean(0, keepdim=True) if agent is None else p[agent : agent + 1]
                        p.copy_(src.expand_as(p))
            yield
        finally:
            with torch.no_grad():
                for group in self.group_map:
                    for p, old in zip(self.actor_leaves(group), saved[group]):
                        p.copy_(old)


class _DecpgCallback(Callback):
    """Optimizer, learning-rate schedule, mixing hooks, metrics and evaluation routing."""

    def __init__(self, algorithm: Decpg):
        super().__init__()
        self.algorithm = algorithm
        self.mixers: Dict[tuple, ConsensusMixer] = {}
        self._measure: Dict[tuple, bool] = {}
        self._before: Dict[tuple, List[torch.Tensor]] = {}
        self._metrics: Dict[str, float] = {}
        self._used: Dict[tuple, List[tuple]] = {}  # per step: (fraction of links up, gap of the W used)
        self._last_used: Dict[tuple, tuple] = {}  # per mixer: (the last W measured, its entry)
        self._comm: Dict[str, tuple] = {}  # per group, this iteration: (agents held, bytes by kind)
        self._clean_return: float | None = None

    # ------------------------------------------------------------------- setup
    def on_setup(self):
        algo, exp = self.algorithm, self.experiment
        transport = current_transport()  # in-process unless a distributed launcher installed one
        seed_gen = torch.Generator().manual_seed(int(exp.seed))
        for group in exp.group_map:
            for loss_name, net in (("loss_objective", "actor"), ("loss_critic", "critic")):
                stack = algo.agent_stack(group, net)
                leaves = stack.leaves
                optimizer = exp.optimizers[group][loss_name]
                if algo.optimizer == "sgd":
                    optimizer = torch.optim.SGD(
                        stack.parameters, lr=algo.lr_at(getattr(exp, "n_iters_performed", 0))
                    )
                    exp.optimizers[group][loss_name] = optimizer
                key = (group, net)
                mixer = ConsensusMixer(
                    transport.local_rows(leaves, group_size(exp, group)),
                    adjacency=algo.adjacencies[group],
                    rule=algo.mixing,
                    link_failure=algo.link_failure,
                    graph_mode=algo.mixing_graph,
                    generator=torch.Generator().manual_seed(
                        int(torch.randint(2**31 - 1, (1,), generator=seed_gen))
                    ),
                    transport=transport,
                    latency=algo.link_latency,
                )
                mixer.enabled = net in algo.consensus_params  # an unmixed network still logs its distance
                self.mixers[key] = mixer
                self._measure[key] = False
                self._used[key] = []
                optimizer.register_step_pre_hook(self._pre_step(key, stack))
                mixer.attach(optimizer, when="pre" if algo.mix_order == "mix_then_step" else "post")
                optimizer.register_step_post_hook(self._post_step(key, leaves))
        self._set_lr(getattr(exp, "n_iters_performed", 0))  # set after setup
        self._route_evaluation()

    def _set_lr(self, iteration: int) -> None:
        lr = self.algorithm.lr_at(iteration)
        for group_optimizers in self.experiment.optimizers.values():
            for optimizer in group_optimizers.values():
                for param_group in optimizer.param_groups:
                    param_group["lr"] = lr
        self._metrics["decpg/lr"] = lr

    # ------------------------------------------------------------ step hooks
    def _pre_step(self, key, stack: AgentStack):
        max_norm = self.algorithm.max_grad_norm
        leaves = stack.leaves

        def hook(optimizer, args, kwargs):
            # stacked (n, ...) gradients; for gathered copies, the copies' .grad are rows of these
            grads = [g for g in stack.grads() if g is not None]
            if max_norm is not None and grads:
                # per-agent norm over all of that agent's leaves, one op per leaf
                sq = torch.stack([g.pow(2).reshape(g.shape[0], -1).sum(-1) for g in grads]).sum(0)
                scale = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
                for g in grads:
                    g.mul_(scale.view(-1, *([1] * (g.dim() - 1))))
            if self._measure[key]:
                # A.5 eq. (1), 1/n sum_i ||g_i - g_bar||^2: the spread of the stacked gradients
                self._metrics[f"decpg/{key[0]}/{key[1]}/gradient_disagreement"] = float(consensus_distance(grads))
                self._before[key] = snapshot(leaves)

        return hook

    def _post_step(self, key, leaves):
        mixer = self.mixers[key]

        def hook(optimizer, args, kwargs):
            if mixer.enabled:  # the W this step mixed with (after any link failure) vs its graph
                W = mixer.matrix()
                last = self._last_used.get(key)
                if last is not None and last[0] is W:  # the mixer rebuilds W only when it changes
                    self._used[key].append(last[1])
                else:
                    n = mixer.n_agents
                    links = mixer.adjacency.reshape(-1, n, n).any(0).to(W.device)
                    if bool(links.any()):
                        up = (W.detach() != 0) & links
                        self._used[key].append((float(up.sum() / links.sum()), spectral_gap(W)))
                        self._last_used[key] = (W, self._used[key][-1])
            if self._measure[key]:
                self._metrics[f"decpg/{key[0]}/{key[1]}/update_variance"] = float(
                    update_variance(self._before.pop(key), leaves)
                )
                self._measure[key] = False

        return hook

    # --------------------------------------------------------- training events
    def on_batch_collected(self, batch: TensorDictBase):
        self._set_lr(self.experiment.n_iters_performed)
        for key in self._measure:  # measure A.5 metrics on the first step of the iteration
            self._measure[key] = True
        for used in self._used.values():
            used.clear()
        for mixer in self.mixers.values():
            mixer.comm.reset()
        self._comm.clear()

    def on_train_end(self, training_td: TensorDictBase, group: str):
        for net in ("actor", "critic"):
            mixer = self.mixers[(group, net)]
            self._metrics[f"decpg/{group}/{net}/consensus_distance"] = float(
                consensus_distance(mixer.leaves)
            )
        self._metrics[f"decpg/{group}/spectral_gap"] = float(
            self.mixers[(group, "actor")].spectral_gap
        )
        for net in ("actor", "critic"):  # what the steps of this iteration actually mixed with
            used = self._used[(group, net)]
            if used:
                links_up, gaps = zip(*used)
                self._metrics[f"decpg/{group}/{net}/links_up"] = sum(links_up) / len(links_up)
                self._metrics[f"decpg/{group}/{net}/spectral_gap_used"] = sum(gaps) / len(gaps)
        if self.algorithm.visibility_layout is not None:  # the last minibatch's graphs
            self._metrics[f"decpg/{group}/average_degree"] = float(
                average_degree(self.mixers[(group, "actor")].adjacency).mean()
            )
        last = group == list(self.experiment.train_group_map)[-1]  # decpg/lr: one row per iteration, not per group
        metrics = {k: v for k, v in self._metrics.items()
                   if k.startswith(f"decpg/{group}/") or (k == "decpg/lr" and last)}
        metrics.update(self._comm_metrics(group))
        self.experiment.logger.log(metrics, step=self.experiment.n_iters_performed)

    def _comm_metrics(self, group: str) -> Dict[str, float]:
        """Bytes each agent sent for this iteration's mixing steps (all networks), mean over its agents.

        Per group, and over all groups once the last group has trained. Counted
        by the transport: from the sent tensors across processes, by
        :func:`~benchmarl_decentral.distributed.mixing_bytes` in one process.
        """
        mixers = [self.mixers[(group, net)] for net in ("actor", "critic")]
        held = mixers[0].transport.local_agents(mixers[0].n_agents).numel()
        link = sum(int(m.comm.link_bytes.sum()) for m in mixers if m.comm.steps)
        network = sum(int(m.comm.network_bytes.sum()) for m in mixers if m.comm.steps)
        metrics = bytes_per_agent_metrics(self._comm, group, list(self.experiment.train_group_map)[-1], held,
                                          {"train": link, "train_network": network})
        if self.algorithm.log_link_bytes:
            metrics.update(self._link_metrics(group, mixers))
        return metrics

    @staticmethod
    def _link_metrics(group: str, mixers) -> Dict[str, float]:
        """``algorithm.log_link_bytes``: bytes per link ``i -> j`` of this iteration (all networks).

        Every link of the graph (``j`` reads ``i`` in the failure-free ``W`` or
        in some step) of an agent held here, 0 when it carried nothing (all its
        steps failed); with a graph that changes (visibility), the links up in
        the iteration's steps.
        """
        total = graph = agents = None
        for mixer in mixers:
            if not mixer.comm.steps or mixer.comm.links is None:
                continue
            agents = mixer.comm.agents
            n = mixer.n_agents
            reads = (mixer._base_W.reshape(-1, n, n) != 0).any(0).T.cpu()[agents]  # reads[a, j]: j reads agent a
            total = mixer.comm.links.clone() if total is None else total + mixer.comm.links
            graph = reads if graph is None else graph | reads
        if total is None:
            return {}
        graph = (graph | (total > 0)) & ~torch.nn.functional.one_hot(agents, total.shape[1]).bool()
        return {
            f"comm/{group}/link_{i}_to_{j}/train_bytes": float(total[a, j])
            for a, i in enumerate(agents.tolist()) for j in torch.nonzero(graph[a]).flatten().tolist()
        }

    # -------------------------------------------------------------- evaluation
    def _route_evaluation(self) -> None:
        """Evaluate with the averaged model (sec. 3) and the perturbed env (sec. 4).

        BenchMARL evaluates with the collection policy and has no pre-evaluation
        hook, so the experiment's evaluation loop is wrapped on this instance.
        """
        exp, algo = self.experiment, self.algorithm
        clean_loop = exp._evaluation_loop

        def evaluation_loop():
            with algo.evaluation_parameters():
                clean_loop()
            if algo.evaluation_mode == "individual":
                self._individual_evaluation()
            if algo.perturbed_evaluation:
                with algo.evaluation_parameters():
                    self._perturbed_evaluation()

        exp._evaluation_loop = evaluation_loop

    def on_evaluation_end(self, rollouts: List[TensorDictBase]):
        self._clean_return = float(self._mean_return(rollouts))

    def _mean_return(self, rollouts: List[TensorDictBase]) -> torch.Tensor:
        """Mean episode return as BenchMARL's logger computes it (mean over groups)."""
        return mean_return(self.experiment, rollouts)

    def _rollouts(self, policy) -> List[TensorDictBase]:
        """Evaluation episodes with ``policy`` (not re-seeded: the clean evaluation's are not replayed)."""
        return evaluation_rollouts(self.experiment, policy, reseed=False)

    def _perturbed_policy(self) -> PerturbedPolicy:
        exp, algo = self.experiment, self.algorithm
        return PerturbedPolicy.from_experiment(
            exp,
            c=algo.perturbation_c,
            eps=algo.perturbation_eps,
            generator=torch.Generator().manual_seed(int(exp.seed) + 1),
        )

    def _perturbed_evaluation(self) -> None:
        exp = self.experiment
        test_return = float(self._mean_return(self._rollouts(self._perturbed_policy())))
        to_log = {"eval/perturbed/reward/episode_reward_mean": test_return}
        if self._clean_return is not None:
            # generalization gap = test (perturbed) return - train (clean) return
            to_log["eval/generalization_gap"] = test_return - self._clean_return
        exp.logger.log(to_log, step=exp.n_iters_performed)

    def _individual_evaluation(self) -> None:
        exp = self.experiment
        n = min(len(agents) for agents in exp.group_map.values())
        returns = []
        for i in range(n):  # n separate evaluations, as Table 3 does
            with self.algorithm.evaluation_parameters(agent=i):
                returns.append(self._mean_return(self._rollouts(exp.policy)))
        returns = torch.stack(returns)
        exp.logger.log(
            {
                "eval/individual/reward/episode_reward_mean": float(returns.mean()),
                "eval/individual/reward/episode_reward_std": float(returns.std(correction=0)),
            },
            step=exp.n_iters_performed,
        )

    # ----------------------------------------------------------- checkpointing
    def on_state_dict(self, state_dict: Dict[str, Any]):
        state_dict["decpg"] = {
            f"{g}/{net}": mixer.generator.get_state() if mixer.generator is not None else None
            for (g, net), mixer in self.mixers.items()
        }

    def on_load_state_dict(self, state_dict: Dict[str, Any]):
        for stack in self.algorithm._stacks.values():  # loading copies values in place: gathered rows still alias
            stack.check_aliasing()
        for name, state in state_dict.get("decpg", {}).items():
            group, net = name.split("/")
            mixer = self.mixers.get((group, net))
            if mixer is not None and state is not None and mixer.generator is not None:
                mixer.generator.set_state(state)
        self._set_lr(self.experiment.n_iters_performed)


@dataclass
class DecpgConfig(AlgorithmConfig):
    """Configuration of :class:`Decpg` (defaults: ``conf/algorithm/decpg.yaml``, paper 002 Table 1)."""

    _yaml_name = "decpg"  # the YAML of this config (a class attribute, not a field)

    # DecPG
    k: int = MISSING
    topology: str = MISSING
    adjacency: Optional[List[List[int]]] = MISSING
    mixing_graph: str = MISSING
    mixing: str = MISSING
    mix_order: str = MISSING
    link_failure: float = MISSING
    optimizer: str = MISSING
    lr: float = MISSING
    min_lr: float = MISSING
    max_grad_norm: Optional[float] = MISSING
    evaluation_mode: str = MISSING
    perturbed_evaluation: bool = MISSING
    perturbation_c: float = MISSING
    perturbation_eps: float = MISSING
    consensus_params: Any = MISSING  # list out of actor, critic (Any: hydra merges lists into it)
    # MAPPO backbone
    normalize_advantage: bool = MISSING
    clip_epsilon: float = MISSING
    entropy_coef: float = MISSING
    critic_coef: float = MISSING
    loss_critic_type: str = MISSING
    lmbda: float = MISSING
    scale_mapping: str = MISSING
    use_tanh_normal: bool = MISSING
    minibatch_advantage: bool = MISSING
    # evaluation (benchmarl_decentral.evaluation_dropout)
    evaluation_dropout: List[int] = field(default_factory=list)
    # per-group topology options (benchmarl_decentral.consensus.groups)
    group_topology: Any = None  # Any: omegaconf merges a command-line dict into a null node
    # communication accounting: bytes per link, logged per iteration
    log_link_bytes: bool = False
    # MAPPO backbone: per-agent value normalisation (a default: configs pickled before the key)
    value_norm: bool = False
    # DSGD: mixing steps a parameter vector takes over a link (a default: configs pickled before the key)
    link_latency: int = 0

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Checks that need no task; the task-dependent ones run when the algorithm is built."""
        self.consensus_params = list(check_consensus_params(self.consensus_params, "decpg", DECPG_NETWORKS))
        self.group_topology = check_group_topology(  # None when empty, as the YAML's null
            self.group_topology, owner="decpg", keys=DECPG_GROUP_KEYS, topologies=STATIC_TOPOLOGIES,
            topology=self.topology,
        ) or None
        self.evaluation_dropout = check_evaluation_dropout("decpg", self.evaluation_dropout)
        if isinstance(self.k, int) and self.k < 0:
            raise ValueError(f"decpg: k must be >= 0 (got k={self.k}); set algorithm.k=2 for a ring.")
        if isinstance(self.topology, str) and self.topology not in DECPG_TOPOLOGIES:
            raise ValueError(
                f"decpg: unknown topology '{self.topology}'; choose one of {list(DECPG_TOPOLOGIES)}."
            )
        if isinstance(self.mixing_graph, str) and self.mixing_graph not in BATCH_GRAPH_MODES:
            raise ValueError(
                f"decpg: unknown mixing_graph '{self.mixing_graph}'; choose one of {list(BATCH_GRAPH_MODES)}."
            )
        if self.topology == "custom" and self.adjacency is None:
            raise ValueError("decpg: topology=custom needs algorithm.adjacency, an n x n 0/1 matrix.")
        if isinstance(self.mixing, str) and self.mixing not in MIXING_RULES:
            raise ValueError(f"decpg: unknown mixing rule '{self.mixing}'; choose one of {list(MIXING_RULES)}.")
        if isinstance(self.mix_order, str) and self.mix_order not in MIX_ORDERS:
            raise ValueError(f"decpg: unknown mix_order '{self.mix_order}'; choose one of {list(MIX_ORDERS)}.")
        if isinstance(self.optimizer, str) and self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"decpg: unknown optimizer '{self.optimizer}'; choose one of {list(OPTIMIZERS)}."
            )
        if isinstance(self.evaluation_mode, str) and self.evaluation_mode not in EVALUATION_MODES:
            raise ValueError(
                f"decpg: unknown evaluation_mode '{self.evaluation_mode}'; choose one of {list(EVALUATION_MODES)}."
            )
        if isinstance(self.lr, (int, float)) and isinstance(self.min_lr, (int, float)):
            if self.lr <= 0 or self.min_lr < 0:
                raise ValueError(f"decpg: need lr > 0 and min_lr >= 0 (got lr={self.lr}, min_lr={self.min_lr}).")
            if self.min_lr > self.lr:
                raise ValueError(
                    f"decpg: min_lr ({self.min_lr}) > lr ({self.lr}); the learning rate decays "
                    "linearly from lr to min_lr, so set min_lr <= lr."
                )
        if isinstance(self.link_failure, (int, float)) and not 0 <= self.link_failure < 1:
            raise ValueError(f"decpg: link_failure must be in [0, 1), got {self.link_failure}.")
        check_link_latency(self.link_latency, "decpg", self.consensus_params)
        if not isinstance(self.value_norm, bool):
            raise ValueError(f"decpg: value_norm must be true or false, got {self.value_norm!r}.")
        if not isinstance(self.log_link_bytes, bool):
            raise ValueError(f"decpg: log_link_bytes must be true or false, got {self.log_link_bytes!r}.")
        if isinstance(self.max_grad_norm, (int, float)) and self.max_grad_norm <= 0:
            raise ValueError(f"decpg: max_grad_norm must be > 0 or null, got {self.max_grad_norm}.")
        if isinstance(self.topology, str):
            check_topology_options(
                owner="decpg", prefix="algorithm", topology=self.topology, values=vars(self),
                uses=DECPG_TOPOLOGY_OPTIONS, defaults=algorithm_defaults(self._yaml_name),
            )

    @staticmethod
    def associated_class() -> Type[Algorithm]:
        return Decpg

    @classmethod
    def get_from_yaml(cls, path: Optional[str] = None) -> "DecpgConfig":
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
    def has_centralized_critic() -> bool:
        return True


# ------------------------------------------------------------------ graph presets (paper 002's k sweep)
class DecpgShared(Decpg):
    """:class:`Decpg` on the full graph (``conf/algorithm/decpg_shared.yaml``): ``k = n - 1``.

    Every step mixes with ``P_ij = 1/n``, so every agent starts every step from
    the mean parameters: the parameter-sharing end of paper 002's k sweep (sec. 3:
    "k = n - 1 is parameter sharing"; exact with SGD, where the mean of the
    agents' steps is the shared network's step on the summed loss; with Adam
    each agent keeps its own moment estimates). A subclass only so that BenchMARL,
    which names runs after ``associated_class().__name__.lower()``, names these
    ``decpg_shared`` and a sweep over ``algorithm=decpg_shared,decpg,decpg_k0``
    keeps them apart.
    """


DecpgShared.__name__ = "Decpg_shared"  # run name "decpg_shared", the hydra name (pickling uses __qualname__)


class DecpgK0(Decpg):
    """:class:`Decpg` with ``k = 0`` (``conf/algorithm/decpg_k0.yaml``): no link, no mixing.

    Every agent trains its own actor and critic on its own samples (paper 002's
    "no sharing" end of the k sweep). Named ``decpg_k0`` in runs (see :class:`DecpgShared`).
    """


DecpgK0.__name__ = "Decpg_k0"


@dataclass
class DecpgSharedConfig(DecpgConfig):
    """``algorithm=decpg_shared``: :class:`DecpgConfig` with ``topology: full`` (k = n - 1), otherwise decpg.yaml."""

    _yaml_name = "decpg_shared"

    @staticmethod
    def associated_class() -> Type[Algorithm]:
        return DecpgShared


@dataclass
class DecpgK0Config(DecpgConfig):
    """``algorithm=decpg_k0``: :class:`DecpgConfig` with ``k: 0`` (no sharing), otherwise decpg.yaml."""

    _yaml_name = "decpg_k0"

    @staticmethod
    def associated_class() -> Type[Algorithm]:
        return DecpgK0
