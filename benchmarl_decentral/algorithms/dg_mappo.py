"""DG-MAPPO: distributed graph-attention MAPPO (paper 000_ef718962e1e8f612.txt, sec. 3.2, Algorithm 1).

Every agent ``i`` has its own D-GAT ``psi_i``, actor ``theta_i`` and critic
``phi_i`` (never shared; any BenchMARL model that reads flat vectors, its
per-agent parameters seen as leaves stacked on a leading agent dim,
:class:`~benchmarl_decentral.consensus.stacking.AgentStack`). At every step agent
``i`` infers ``ô_i`` with K D-GAT hops over the communication graph and acts
on ``õ_i = [o_i || ô_i]`` (eq. 13); its critic ``V_i(õ_i)`` sees no global
state and no other agent's raw observation, only what arrives through D-GAT
messages. The losses of Algorithm 1, line 17, summed over agents::

    L_i = L_PPO_i(theta_i) (eq. 15) + L_critic_i(phi_i) (eq. 14, Huber)
          + alpha_consensus / |N_i| sum_{j in N_i} MSE(ĥ_i, ĥ_j) (eq. 11)

and after every optimizer step the D-GAT parameters only (sec. 4.1) are
averaged with the neighbours, ``psi_i <- sum_j c(i, j) psi_j`` with
``c(i, j) = 1/|N_i|`` (eqs. 9-10, the ``row`` rule of
:mod:`benchmarl_decentral.consensus.mixing`). The reward is the team reward,
or the mean of the agents' rewards when the task gives one per agent (sec. 2.1:
what average consensus converges to).

How it sits in BenchMARL (1.5.2) without a fork:

* **one D-GAT per agent, shared by actor and critic** (as Algorithm 1: one
  ``psi_i``). The actor is ``D-GAT -> model_config`` (the user's network on
  ``õ``), the critic is ``critic_model_config`` reading ``õ`` from the
  tensordict. Inside the loss (:class:`DgMappoLoss`) the ``õ`` stored at
  collection is dropped, the actor recomputes D-GAT from the stored
  observations and the critic reads that fresh ``õ`` (were the critic ever run
  first it would fail on the missing key, never read stale features). So one
  D-GAT forward per minibatch feeds the PPO, critic and consensus losses, and
  all three send gradients to ``psi`` (the public code of the paper stores
  D-GAT features detached, so its D-GAT never trains);
* **one optimizer**: BenchMARL makes one Adam per loss key and calls
  ``backward()`` once per key, which a D-GAT shared by two keys cannot survive
  (the first step changes ``psi`` under the second graph). DG-MAPPO has a
  single key, ``loss_total`` (the sum above, Algorithm 1 line 17), over all of
  a group's parameters; Table 2 gives actor, critic and D-GAT the same lr;
* BenchMARL's PPO loss is a mean over agents; the sum is multiplied by ``n``
  so that agent ``i``'s networks get ``grad L_i`` (the gradient reaching
  ``psi_i`` also carries the other agents' losses back along the
  communication links, as backpropagation through the messages does);
* GAE: :meth:`DgMappo.process_batch` first averages per-agent rewards, then
  computes ``õ`` of the batch and of its next observations without gradient,
  then runs MAPPO's GAE with the per-agent critics;
* the algorithm's callback (:class:`_DgMappoCallback`, attached by the
  algorithm itself: hydra runs pass no callbacks) sets lr and Adam's eps
  (Table 2), clips each agent's gradient per network (actor, critic, D-GAT;
  BenchMARL's joint clip is a cross-agent statistic and is switched off),
  mixes the D-GAT parameters after every step and logs the average node
  degree (A.4, over all steps and at episode ends), the fraction of
  disconnected communication graphs (Assumption 1) and the consensus distance
  of the D-GAT parameters.

Communication goes through the transport installed while the algorithm is
built (:mod:`benchmarl_decentral.distributed`; one process by default): the
D-SGD mixing (:meth:`~benchmarl_decentral.distributed.Transport.mix_`), the
D-GAT messages of every hop and eq. 11's neighbour embeddings
(:meth:`~benchmarl_decentral.models.dgat.Dgat.neighbour_rows`, with their
gradients in the backward pass), so the same code trains one block of agents
per rank in a distributed run. A rank that builds its block only
(``--agents local``) builds its D-GAT inside
:func:`~benchmarl_decentral.models.dgat.agent_block` (rows placed by global
index; the radius graph from the joint observation) and draws every network
from a seed of its own (:meth:`DgMappo._network_rng`), so its agents start
from the single-process parameters. The bytes are logged each iteration with
decpg's keys, ``comm/train_bytes_per_agent`` (mixing, training messages and
their gradients) and ``comm/exec_bytes_per_agent`` (D-GAT messages while
acting), with their ``*_network_*`` parts (0 in one process).

Dynamic graphs and D-SGD: a minibatch holds samples from many steps and
environments, each with its own graph ``A_b``, but an optimizer step mixes
once. ``mixing_graph`` chooses the mixing matrix of a step (a static topology
gives eq. 10 on it either way):

* ``mean`` (default): ``W = mean_b C(A_b)``, the average over the minibatch of
  the eq. 10 matrices ``C(A_b)[i, j] = 1/|N_i(b)|``, as the minibatch gradient
  is the average of the samples' gradients. Row stochastic; a link present in
  a fraction of the samples gets that share of its weight;
* ``majority``: eq. 10 on one graph, the links present in at least half of the
  samples (:func:`~benchmarl_decentral.consensus.majority_graph`). On sparse,
  fast-changing graphs (a radius graph where most links are up less than half
  the time) this often mixes nothing.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field, MISSING
from typing import Any, Callable, ContextManager, Dict, Iterable, List, Optional, Tuple, Type, Union

import torch
from benchmarl.algorithms.common import Algorithm, AlgorithmConfig
from benchmarl.algorithms.mappo import Mappo
from benchmarl.experiment.callback import Callback
from benchmarl.models.common import ModelConfig
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.data import Composite
from torchrl.objectives import ClipPPOLoss, LossModule, ValueEstimators

from benchmarl_decentral.algorithms._common import (
    CONSENSUS_NETWORKS,
    check_consensus_params,
    check_link_latency,
    config_error,
    gnn_dropout_conflict,
    layer_configs,
    per_agent_model,
)
from benchmarl_decentral.algorithms._yaml import load_algorithm_yaml
from benchmarl_decentral.evaluation_dropout import check_evaluation_dropout
from benchmarl_decentral.consensus import (
    average_degree,
    BATCH_GRAPH_MODES,
    batch_mixing_matrix,
    consensus_distance,
)
from benchmarl_decentral.consensus.groups import STATIC_TOPOLOGIES, check_group_topology, resolve_group_topologies
from benchmarl_decentral.consensus.stacking import AgentStack
from benchmarl_decentral.distributed.local import (
    block_of_group_draw,
    block_sampling,
    group_size,
    grown,
    joint_observation_spec,
    JOINT_REWARD,
    local_block,
    network_rng,
)
from benchmarl_decentral.distributed.transport import (
    bytes_per_agent_metrics,
    CommCounter,
    current_transport,
    LinkHistory,
)
from benchmarl_decentral.consensus.visibility import task_layout, with_layout
from benchmarl_decentral.models.dgat import (
    agent_block,
    check_dgat_options,
    DGAT_OPTIONS,
    DGAT_TOPOLOGIES,
    DGAT_TOPOLOGY_OPTIONS,
    dgat_messages_value,
    Dgat,
    DgatConfig,
    not_smac_message,
    strongly_connected,
)
from benchmarl_decentral.nn.dgat_conv import consensus_loss

#: Key (inside the agent group) of õ_i = [o_i || ô_i] (eq. 13).
DGAT_KEY = "dgat_observation"
#: BenchMARL optimizer / loss key of the summed loss (Algorithm 1, line 17).
LOSS_KEY = "loss_total"
LOSS_CRITIC_TYPES = ("smooth_l1", "l2", "l1")
#: How one D-SGD step turns a minibatch of graphs into a mixing matrix (module docstring).
MIXING_GRAPHS = BATCH_GRAPH_MODES
#: When D-SGD mixes (``mix_every``): after every optimizer step (eq. 9 as written) or
#: ``mixes_per_update`` times after the update (the paper's public code: 3).
MIX_EVERY = ("step", "update")
#: What ``group_topology`` may set for one group's D-GAT graph (ally visibility is task-wide).
DGMAPPO_GROUP_KEYS = ("topology", "radius", "k", "adjacency", "position_key", "position_dims")
DGMAPPO_GROUP_TOPOLOGIES = ("radius", *STATIC_TOPOLOGIES)

#: ``topology: auto`` (the default): the communication graph is chosen from the task before
#: training (:func:`resolve_auto_topology`).
AUTO_TOPOLOGY = "auto"
#: ``actor_output_gain: auto``: A.3's gain, where the actor has one linear output layer
AUTO_OUTPUT_GAIN = 0.01
#: Topologies of ``algorithm.topology``: ``auto`` and the D-GAT's.
TOPOLOGIES: Tuple[str, ...] = (AUTO_TOPOLOGY, *DGAT_TOPOLOGIES)
#: ``topology: auto`` on tasks whose observations hold each agent's position: a radius graph on
#: ``obs[..., start:stop]``, rebuilt at every step (paper 000 sec. 2.1, dynamic graph). The radius is
#: measured with ``benchmarks/dg_mappo_radius.py`` (vmas/navigation, 4 agents: connected at 88% of
#: the steps of a random policy and at 84% of the goal layouts, average degree 2.3 of 3).
AUTO_RADIUS_GRAPHS: Dict[str, Dict[str, Any]] = {
    "vmas/navigation": {"position_dims": [0, 2], "radius": 1.5},
}
#: Task families with SMAC ally visibility in the observations: ``topology: auto`` -> ``visibility``.
AUTO_VISIBILITY_FAMILIES: Tuple[str, ...] = ("smax", "smacv2")
#: Graph options that ``topology: auto`` fills in itself (refused when set with it).
AUTO_SETS: Tuple[str, ...] = ("radius", "k", "adjacency", "position_key", "position_dims", "graph_kwargs")


def check_auto_topology(options: Dict[str, Any]) -> None:
    """``topology: auto`` takes no graph option: refuse one that is set, naming both fixes."""
    given = [name for name in AUTO_SETS if options.get(name) is not None]
    if given:
        name = given[0]
        raise ValueError(
            f"dg_mappo: algorithm.{name}={options[name]} is not read with algorithm.topology=auto, which picks "
            f"the graph and its options from the task; remove algorithm.{name}, or choose the graph yourself, "
            "e.g. algorithm.topology=radius algorithm.radius=1.5 algorithm.position_dims=[0,2]"
        )
    if options.get("add_self_loops") is False:
        raise ValueError(
            "dg_mappo: algorithm.topology=auto may pick a radius or full graph, which have no self loops, but eq. 8 "
            "aggregates over N^i including agent i itself; set algorithm.add_self_loops=true"
        )


def resolve_auto_topology(family: str, task: str) -> Tuple[Dict[str, Any], str]:
    """``topology: auto``: the graph options for a task, and why (the line logged once).

    * tasks in :data:`AUTO_RADIUS_GRAPHS` (agent positions in the observation,
      VMAS): ``radius`` on those positions, rebuilt every step;
    * the SMAC family (:data:`AUTO_VISIBILITY_FAMILIES`): ``visibility``
      (ally visibility, layout inferred from the task);
    * anything else: ``full``.

    Args:
        family: the task's environment name, e.g. ``"vmas"``, ``"smax"``.
        task: the task's name in lower case, e.g. ``"navigation"``.

    Returns:
        ``(options, reason)``: ``options`` holds ``topology`` and the options it reads.
    """
    name = f"{family}/{task}"
    if name in AUTO_RADIUS_GRAPHS:
        graph = AUTO_RADIUS_GRAPHS[name]
        dims = graph["position_dims"]
        return {"topology": "radius", **graph}, (
            f"radius graph on the agents' positions obs[..., {dims[0]}:{dims[1]}], radius {graph['radius']}, "
            "rebuilt every step"
        )
    if family in AUTO_VISIBILITY_FAMILIES:
        return {"topology": "visibility"}, "SMAC ally visibility, rebuilt every step"
    return {"topology": "full"}, (
        "full graph (no known agent positions or visibility in this task's observations; for a radius graph set "
        "algorithm.topology=radius algorithm.radius=R algorithm.position_dims=[start,stop])"
    )


def dsgd_matrix(adj: torch.Tensor, mode: str = "mean") -> torch.Tensor:
    """000_ef718962e1e8f612.txt eq. 10 for a minibatch of graphs: the ``(n, n)`` matrix of one D-SGD step.

    :func:`~benchmarl_decentral.consensus.batch_mixing_matrix` with the eq. 10
    rule ``C(A)[i, j] = 1/|N_i|`` on ``N_i = {i} + neighbours`` (``row``):
    ``"mean"`` gives ``mean_b C(A_b)``, ``"majority"`` ``C`` of the links
    present in at least half of the samples. Row stochastic.
    """
    return batch_mixing_matrix(adj, "row", mode)


def _unique(params: Iterable[torch.Tensor]) -> List[torch.Tensor]:
    seen, out = set(), []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


class ValueNorm(nn.Module):
    """Running mean / std of each agent's own value targets (MAPPO's value normalisation, decentralized).

    Appended to agent ``i``'s critic: the network predicts the normalised value
    ``v_i``, this module returns ``v_i * sigma_i + mu_i`` (the value GAE uses);
    :class:`DgMappoLoss` fits ``v_i`` to ``(target_i - mu_i) / sigma_i``.
    ``mu_i, sigma_i`` come from agent ``i``'s own value targets only (no
    cross-agent statistic), merged over all batches so far (exact running
    moments). They are plain tensors, not buffers: never in the optimizer and
    not mixed; checkpoints hold them in the plugin's exact-resume state
    (:meth:`DgMappo.resume_state`).

    Args:
        n_agents: number of agents ``n``.
        eps: floor of the variance.
    """

    def __init__(self, n_agents: int, eps: float = 1e-5):
        super().__init__()
        self.n_agents, self.eps = n_agents, eps
        self.count = 0.0
        self.mean = torch.zeros(n_agents, 1)
        self.var = torch.ones(n_agents, 1)
        self.passthrough = False  # True inside the critic loss: output the normalised value

    def std(self) -> torch.Tensor:
        return self.var.clamp(min=self.eps).sqrt()

    def normalize(self, value: torch.Tensor) -> torch.Tensor:
        return (value - self.mean.to(value)) / self.std().to(value)

    def forward(self, value: torch.Tensor) -> torch.Tensor:
        if self.passthrough:
            return value
        return value * self.std().to(value) + self.mean.to(value)

    def critic_loss_input(self, tensordict: TensorDictBase, key: Any) -> TensorDictBase:
        """The critic loss on each agent's normalised scale: the value target at ``key`` normalised.

        Returns a shallow copy of ``tensordict`` whose value target is
        ``(target_i - mu_i) / sigma_i`` and sets :attr:`passthrough`, so that the
        critic outputs its raw (normalised) prediction; the caller resets
        :attr:`passthrough` once the loss has run. The advantages stored in
        the batch (GAE on the de-normalised value) are left as they are.
        """
        tensordict = tensordict.clone(False)
        tensordict.set(key, self.normalize(tensordict.get(key)))
        self.passthrough = True
        return tensordict

    def moments(self) -> Dict[str, Any]:
        """The running moments, for a checkpoint's exact-resume state (:func:`value_norm_state`)."""
        return {"count": self.count, "mean": self.mean.clone(), "var": self.var.clone()}

    def load_moments(self, saved: Dict[str, Any]) -> None:
        """Restore :meth:`moments`."""
        self.count = float(saved["count"])
        self.mean = saved["mean"].to(self.mean).clone()
        self.var = saved["var"].to(self.var).clone()

    @torch.no_grad()
    def update(self, target: torch.Tensor) -> None:
        """Merge the value targets ``(..., n, 1)`` of a batch into each agent's moments."""
        x = target.detach().reshape(-1, self.n_agents, 1).to(self.mean)
        m = float(x.shape[0])
        if m == 0:
            return
        mean, var = x.mean(0), x.var(0, unbiased=False)
        total = self.count + m
        delta = mean - self.mean
        self.var = (self.count * self.var + m * var + delta.pow(2) * self.count * m / total) / total
        self.mean = self.mean + delta * m / total
        self.count = total


def value_norm_state(norms: Dict[str, ValueNorm]) -> Dict[str, Dict[str, Any]]:
    """Every group's :class:`ValueNorm` moments (an algorithm's ``resume_state`` entry ``"value_norms"``)."""
    return {group: norm.moments() for group, norm in norms.items()}


def load_value_norm_state(norms: Dict[str, ValueNorm], saved: Dict[str, Dict[str, Any]]) -> None:
    """Restore :func:`value_norm_state` into the groups that have a :class:`ValueNorm` (others: kept fresh)."""
    for group, moments in saved.items():
        if group in norms:
            norms[group].load_moments(moments)


#: BenchMARL model configs that cannot read ``õ_i`` (one flat vector per agent): why, and what to use instead.
UNSUPPORTED_MODELS: Dict[str, str] = {
    "DeepsetsConfig": (
        "BenchMARL's Deepsets needs set-shaped inputs (n, entities, features) when decentralised, but dg_mappo's "
        "actor and critic read õ_i = [o_i || ô_i] (eq. 13), one flat vector per agent (D-GAT reads flat "
        "observations only); a centralised Deepsets would read every agent's õ, which the decentralized critic "
        "V_i(õ_i) (eq. 14) excludes. Use layers/gnn (per-agent copies that aggregate over the agents) or layers/mlp"
    ),
    "CnnConfig": (
        "BenchMARL's Cnn needs image inputs (n, height, width, channels), but dg_mappo's actor and critic read "
        "õ_i = [o_i || ô_i] (eq. 13), one flat vector per agent (D-GAT reads flat observations only). "
        "Use layers/mlp (or layers/gru / layers/lstm)"
    ),
}


def check_models(model_config: ModelConfig, critic_model_config: ModelConfig) -> Optional[str]:
    """The reason, if any, why dg_mappo cannot run these actor / critic configs (``None``: they can).

    * a layer in :data:`UNSUPPORTED_MODELS` anywhere in either network;
    * a recurrent critic with a non-recurrent actor: BenchMARL (1.5.2) adds the
      ``is_init`` marker that recurrent models read only for a recurrent actor
      (``model=``), so the critic would fail in the first GAE pass (mappo
      fails the same way, "We need to pass is_init").
    """
    for what, key, config in (("actor", "model", model_config), ("critic", "critic_model", critic_model_config)):
        for layer in layer_configs(config):
            reason = UNSUPPORTED_MODELS.get(type(layer).__name__)
            if reason is not None:
                name = type(layer).__name__[: -len("Config")].lower()
                return f"dg_mappo cannot use {name} in its {what} ({key}=): {reason}"
    if critic_model_config.is_rnn and not model_config.is_rnn:
        return (
            "dg_mappo cannot use a recurrent critic with a non-recurrent actor: BenchMARL adds the is_init marker that "
            "recurrent models read only when the actor (model=) is recurrent, so the critic would fail on the first "
            "batch (mappo fails the same way). Make the actor recurrent too (model=layers/gru or layers/lstm) or the "
            "critic non-recurrent (model@critic_model=layers/mlp)"
        )
    return None


def _example_input(network: nn.Module) -> TensorDictBase:
    """A random input of ``network`` (batch 2, or 1 sequence of 2 steps for a recurrent one, no hidden state)."""
    recurrent = "is_init" in network.in_keys
    shape = (1, 2) if recurrent else (2,)
    td = network.input_spec.rand(shape)
    if recurrent:  # training mode: BenchMARL's recurrent models start from zero hidden states
        td.set("is_init", torch.tensor([[[True], [False]]], device=td.device))
    return td


def _orthogonal_output_layer_(network: nn.Module, stack: AgentStack, gain: float,
                               rng: Callable[[], ContextManager] = contextlib.nullcontext, first: int = 0) -> None:
    """000_ef718962e1e8f612.txt A.3: the actor's output layer initialised orthogonally with ``gain``, bias 0.

    The output layer is the last per-agent linear map of the actor network
    (the user's model, after D-GAT): the last stacked weight ``(n, out, in)``
    of its :class:`~benchmarl_decentral.consensus.stacking.AgentStack` with
    ``out`` the network's output size, and its bias ``(n, out)``. That it is the
    output layer is checked, not assumed: with that weight and bias zeroed the
    network must output exactly 0 (true for an MLP, the MLP heads of
    ``layers/gru`` / ``layers/lstm`` and any sequence ending in one; not for
    ``layers/gnn``, whose output sums two linear maps, or a final activation
    that is not 0 at 0). Every agent's slice is drawn on its own, in agent
    order, inside ``rng()`` (:meth:`DgMappo._network_rng`: the first agent's
    slice is then the same whatever number of agents a process builds); a
    process whose stack starts at agent ``first`` of the group draws (and
    drops) the slices of the agents before it first, so each of its agents
    gets its single-process slice.

    Raises:
        ValueError: no such layer, naming the reason and the nearest choice.
    """
    out = network.output_leaf_spec.shape[-1]
    n = stack.n_agents
    weights = [i for i, p in enumerate(stack.leaves) if p.dim() == 3 and p.shape[1] == out]
    refusal = (
        "actor_output_gain initialises the actor's output layer, the last linear map of its network, but the "
        f"actor model's output ({out} features per agent) is not one linear layer's output"
    )
    nearest = (
        "; end the actor with an MLP (e.g. a SequenceModelConfig [your model, layers/mlp], as layers/gru and "
        "layers/lstm do) or set algorithm.actor_output_gain=null"
    )
    if not weights:
        raise ValueError(refusal + nearest)
    index = weights[-1]
    weight = stack.leaves[index]
    bias = stack.leaves[index + 1] if index + 1 < len(stack.leaves) else None
    if bias is not None and bias.shape != (n, out):
        bias = None
    layer = [p for p in (weight, bias) if p is not None]
    saved = [p.detach().clone() for p in layer]
    try:
        with torch.no_grad():
            for p in layer:
                p.zero_()
            output = network(_example_input(network)).get(network.out_keys[0])
    finally:
        with torch.no_grad():
            for p, s in zip(layer, saved):
                p.copy_(s)
    if bool(output.abs().max() > 0):
        raise ValueError(
            refusal + " (with its last (n, out, in) weight zeroed the output is not 0: e.g. layers/gnn adds a "
            "second linear map of the neighbours)" + nearest
        )
    with torch.no_grad(), rng():
        for _ in range(first):  # the agents before this process's block, drawn as one process draws them
            nn.init.orthogonal_(torch.empty_like(weight[0]), gain=gain)
        for agent_weight in weight:
            nn.init.orthogonal_(agent_weight, gain=gain)
        if bias is not None:
            bias.zero_()


class _OnCommunication:
    """Model-config adapter: the group's D-GAT module, then the user's network reading ``õ``.

    MAPPO builds its actor (distribution heads included) from a model config;
    handing it this adapter puts D-GAT in front without copying MAPPO's code.
    The user's network is kept in :attr:`network` (for ``actor_output_gain``).
    """

    def __init__(self, inner: ModelConfig, communication: Dgat,
                 draw: Optional[Callable[[Callable[[int], nn.Module]], nn.Module]] = None):
        self.inner = inner
        self.communication = communication
        self.network: Optional[nn.Module] = None
        self.draw = draw  # how the network of the process's agents is drawn from build(m); None: build(n_agents)

    def get_model(self, *, output_spec, agent_group, n_agents, device, action_spec, model_index=0, **_):
        def build(m: int) -> nn.Module:  # the network of m agents
            return self.inner.get_model(
                input_spec=Composite({agent_group: grown(self.communication.output_spec[agent_group], m)}),
                output_spec=Composite({agent_group: grown(output_spec[agent_group], m)}),
                agent_group=agent_group,
                input_has_agent_dim=True,
                n_agents=m,
                centralised=False,  # agent i reads only õ_i
                share_params=False,  # no parameter sharing (sec. 3.2)
                device=device,
                action_spec=action_spec,
                model_index=model_index,
            )

        self.network = build(n_agents) if self.draw is None else self.draw(build)
        return TensorDictSequential(self.communication, self.network)


class DgMappoLoss(ClipPPOLoss):
    """000_ef718962e1e8f612.txt eqs. 11, 14, 15: clipped PPO + critic + D-GAT consensus, D-GAT recomputed.

    A :class:`~torchrl.objectives.ClipPPOLoss` whose actor starts with the
    group's D-GAT module and whose critic reads ``õ`` (``dgat_key``). The
    stored ``õ`` is removed from the input, so the actor recomputes it from the
    stored observations (with gradient) and the critic reads that one. Adds
    ``loss_consensus = alpha_consensus * mean_i (1/|N_i|) sum_j MSE(ĥ_i, ĥ_j)``
    (eq. 11, ĥ = ô, the D-GAT output, over each sample's graph) and keeps the
    minibatch's D-SGD matrix (:func:`dsgd_matrix`) in :attr:`mixing_matrix`.

    Args:
        communication: the group's :class:`~benchmarl_decentral.models.dgat.Dgat`
            module (no head), first module of the actor.
        alpha_consensus: weight of eq. 11 (A.3: 20).
        dgat_key: key of ``õ`` in the tensordict.
        mixing_graph: ``"mean"`` or ``"majority"`` (:func:`dsgd_matrix`).
        The others: :class:`~torchrl.objectives.ClipPPOLoss`'s.
    """

    # LossModule.convert_to_functional checks these names against the class annotations
    __annotations__ = {**ClipPPOLoss.__annotations__}
    #: eq. 11 and the D-SGD matrix read the graph the actor's D-GAT forward built (``False``: build it again;
    #: :meth:`DgMappo.set_fast_paths`)
    reuse_graph: bool = True

    def __init__(
        self, *args, communication: Dgat, alpha_consensus: float, dgat_key, mixing_graph: str = "mean", **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.__dict__["communication"] = communication  # not a submodule: its parameters are the actor's
        self.alpha_consensus = alpha_consensus
        self.dgat_key = dgat_key
        self.mixing_graph = mixing_graph
        self.mixing_matrix: Optional[torch.Tensor] = None
        self._consensus: Optional[torch.Tensor] = None
        self.__dict__["value_norm"] = None  # a ValueNorm at the end of the critic (value_norm=true)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        # the stored õ carries no gradient (and is stale after an update): drop it
        tensordict = tensordict.exclude(self.dgat_key)
        self._consensus = None
        out = super().forward(tensordict)
        if self._consensus is None:
            raise RuntimeError("DG-MAPPO: the actor did not run D-GAT inside the loss; no consensus term")
        out.set("loss_consensus", self._consensus)
        self._consensus = None
        return out

    def loss_critic(self, tensordict: TensorDictBase):
        """Eq. 14; with value normalisation, on each agent's normalised scale (critic output and target)."""
        norm = self.value_norm
        if norm is None:
            return super().loss_critic(tensordict)
        try:
            return super().loss_critic(norm.critic_loss_input(tensordict, self.tensor_keys.value_target))
        finally:
            norm.passthrough = False

    def _log_weight(self, tensordict: TensorDictBase, adv_shape: torch.Size):
        comm = self.communication
        comm.last_graph, comm.record_graph = None, self.reuse_graph
        try:
            result = super()._log_weight(tensordict, adv_shape)  # runs the actor: D-GAT writes õ
        finally:
            comm.record_graph = False
        tilde = tensordict.get(self.dgat_key)
        h = tilde[..., comm.input_features :]  # ĥ = ô (eq. 13: õ = [o || ô])
        adj = comm.graph_of(tilde)  # the graph D-GAT just built for this õ
        if adj is None:  # not recorded (reuse_graph off): build it again
            adj = comm.communication_graph(tensordict)
        # eq. 11: agent i's term reads its neighbours' ĥ_j (messages; their gradients go back to j)
        per_agent = consensus_loss(comm.neighbour_rows(h, adj), adj, reduction="none")
        self._consensus = self.alpha_consensus * comm.local_mean(per_agent)
        self.mixing_matrix = dsgd_matrix(adj, self.mixing_graph)
        return result


#: Optimizers whose fused kernel :meth:`DgMappo.set_optimizer_fast_path` runs (PyTorch has it on CPU and CUDA).
_FUSED_OPTIMIZERS = (torch.optim.Adam, torch.optim.AdamW)


def local_agents_refusal(algorithm: str, consensus_params: Iterable[str], evaluation_dropout) -> Optional[str]:
    """Why a process that builds a block of agents only (``--agents local``) cannot run these settings, or None.

    The dropout evaluation silences agents it does not hold. (Its networks
    start as in one process whatever ``consensus_params`` says: a network in
    consensus from the first agent's draw, any other from the group's draw,
    the block's rows kept, :meth:`DgMappo._draw`.) One message for the
    entry point (before the ranks join) and the Python API (when the
    experiment is built).
    """
    if evaluation_dropout:
        return (f"--agents local: {algorithm}'s algorithm.evaluation_dropout silences agents across the group, which "
                "a rank holding its block only does not run; set algorithm.evaluation_dropout=null or launch with "
                "--agents all.")
    return None


def _common_start_(dgat: nn.Module) -> None:
    """Every agent's D-GAT parameters set to one agent's draw of them (the common ``psi_0`` of eq. 9).

    Each layer's initialisation (:meth:`~benchmarl_decentral.nn.dgat_conv.DGATConv.reset_parameters`)
    is drawn for one agent, then copied to every agent: the draw does not
    depend on how many agents the module stacks (its stacked draw would:
    each leaf's rows follow all agents' rows of the previous leaf).
    """
    for conv in dgat.convs:
        leaves = {name: p for name, p in conv.named_parameters(recurse=False)}
        full = {name: p.data for name, p in leaves.items()}
        try:
            for name, p in leaves.items():
                p.data = full[name][:1].clone()
            conv.reset_parameters()
            one = {name: p.data for name, p in leaves.items()}
        finally:
            for name, p in leaves.items():
                p.data = full[name]
        with torch.no_grad():
            for name, p in leaves.items():
                p.copy_(one[name].expand_as(p))


def _takes_fused(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` can run ``fused=True``: Adam/AdamW, float parameters on CPU or CUDA, not differentiable."""
    if type(optimizer) not in _FUSED_OPTIMIZERS:
        return False
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return all(
        p.device.type in ("cpu", "cuda") and torch.is_floating_point(p) for p in params
    ) and not any(group.get("differentiable") or group.get("capturable") for group in optimizer.param_groups)


class DgMappo(Mappo):
    """DG-MAPPO (paper 000, sec. 3.2, Algorithm 1).

    Attributes:
        reuse_dgat_outputs: ``True`` (default): :meth:`process_batch` reuses the
            collected ``õ`` and runs D-GAT on the next observations only where
            they are not the following step's (exact). ``False`` recomputes
            both over the whole batch, as the first version did
            (``benchmarks/dg_mappo_iteration.py`` times both).

    Args:
        alpha_consensus: weight of the consensus loss (eq. 11; A.3: 20).
        mixing_graph: D-SGD matrix of a minibatch of dynamic graphs, ``"mean"``
            or ``"majority"`` (:func:`dsgd_matrix`).
        num_hops, hidden_channels, heads, value, dgat_activation,
        negative_slope, dropout, add_self_loops, topology, radius, k,
        adjacency, position_key, position_dims, graph_kwargs: the D-GAT and
            its communication graph, as in :class:`~benchmarl_decentral.models.dgat.Dgat`.
        lr: Adam learning rate of actor, critic and D-GAT (Table 2; replaces
            ``experiment.lr``).
        adam_eps: Adam's epsilon (Table 2; replaces ``experiment.adam_eps``).
        max_grad_norm: per-agent gradient norm clip of each network (actor,
            critic, D-GAT); ``None`` to disable. Replaces BenchMARL's joint clip.
        normalize_advantage: standardise advantages per minibatch with each
            agent's own statistics.
        consensus_params: the per-agent networks D-SGD mixes with the
            neighbours (eqs. 9-10, same ``c(i, j)``), any of ``dgat``,
            ``actor``, ``critic``; the paper's text (sec. 4.1) mixes ``dgat``
            only, its public code all three.
        mix_every: ``"step"`` (after every optimizer step, eq. 9) or
            ``"update"`` (``mixes_per_update`` times after the update's
            optimizer steps, over the collected batch's graphs; the public
            code mixes 3 times per update).
        mixes_per_update: mixings per update with ``mix_every="update"``.
        link_latency: ``d``, mixing steps a parameter vector takes over a
            link (asynchronous studies; 0: eq. 9's synchronous step): in
            ``x_i <- sum_j c(i, j) x_j`` each neighbour's term reads ``x_j`` as
            sent ``d`` mixing steps earlier (with that step's ``c``), the
            agent's own term stays current; every mixing counts, the
            ``mixes_per_update`` ones included. D-GAT's messages (eqs. 7-8,
            collection and loss) are not delayed.
        group_topology: per-group D-GAT graph options (``topology``, ``k``,
            ``radius``, ``adjacency``, ``position_key``, ``position_dims``), e.g.
            ``{"adversary": {"topology": "ring"}}``; ``None`` or ``{}``: none.
            A 1-agent group gets no graph (:mod:`benchmarl_decentral.consensus.groups`).
        value_norm: normalise each agent's value targets with its own running
            mean / std (:class:`ValueNorm`).
        actor_output_gain: orthogonal initialisation gain of the actor's output
            layer (A.3: 0.01); ``"auto"``: 0.01 where the actor ends in one
            linear layer (``layers/mlp``, the MLP heads of ``layers/gru`` /
            ``layers/lstm``, sequences ending in one), the model's default
            initialisation otherwise (``layers/gnn``; printed once); ``None``
            keeps the default initialisation. A number is applied or refused.
        The remaining arguments are MAPPO's.
    """

    reuse_dgat_outputs: bool = True
    #: ``True`` (default): the speed-ups of issue 14's profiles: D-GAT without gradient in its dense form
    #: (:attr:`~benchmarl_decentral.models.dgat.Dgat.dense_without_grad`), the per-agent clip rescales
    #: gradients only when some agent's norm exceeds ``max_grad_norm``, the loss reuses the graph of the
    #: actor's D-GAT forward (:attr:`DgMappoLoss.reuse_graph`) and Adam runs its ``foreach`` form
    #: (:meth:`set_optimizer_fast_path`). Same results (tested); :meth:`set_fast_paths` switches them all
    #: (``benchmarks/dg_mappo_iteration.py`` times both).
    fast_paths: bool = True

    def __init__(
        self,
        *,
        alpha_consensus: float,
        mixing_graph: str,
        lr: float,
        adam_eps: float,
        max_grad_norm: Optional[float],
        normalize_advantage: bool,
        consensus_params: Iterable[str] = ("dgat",),  # defaults: configs pickled before these keys existed (first version)
        mix_every: str = "step",
        mixes_per_update: int = 1,
        value_norm: bool = False,
        actor_output_gain: Union[float, str, None] = None,
        evaluation_dropout: Optional[List[int]] = None,
        group_topology: Optional[Dict[str, Dict[str, Any]]] = None,  # None: configs pickled before the key
        link_latency: int = 0,  # 0: configs pickled before the key
        **kwargs,
    ):
        dgat_options = {name: kwargs.pop(name) for name in DGAT_OPTIONS if name in kwargs}
        # configs pickled before dgat_messages existed (resume): messages on
        dgat_options["dgat_messages"] = dgat_messages_value(dgat_options.get("dgat_messages", "on"))
        super().__init__(share_param_critic=False, **kwargs)
        unsupported = check_models(self.model_config, self.critic_model_config)
        if unsupported is None:
            unsupported = gnn_dropout_conflict("dg_mappo", evaluation_dropout, self.model_config,
                                               "no-op actions, their D-GAT messages removed")
        if unsupported is not None:
            raise config_error(self.experiment, unsupported)
        #: per (group, "dgat" | "actor" | "critic"): the network's per-agent parameters as stacked leaves
        self._stacks: Dict[Tuple[str, str], AgentStack] = {}
        self._actor_networks: Dict[str, nn.Module] = {}  # per group: the user's actor network (after D-GAT)
        self.evaluation_dropout = list(evaluation_dropout or [])  # run by evaluation_dropout.DropoutEvaluation
        self.alpha_consensus = alpha_consensus
        self.mixing_graph = mixing_graph
        self.lr = lr
        self.adam_eps = adam_eps
        self.max_grad_norm = max_grad_norm
        self.normalize_advantage = normalize_advantage
        self.consensus_params = tuple(consensus_params)
        self.mix_every = mix_every
        self.mixes_per_update = mixes_per_update
        self.link_latency = link_latency
        self.value_norm = value_norm
        self.actor_output_gain = actor_output_gain
        self.value_norms: Dict[str, ValueNorm] = {}
        #: per group: the eq. 10 matrix of the last collected batch's graphs (mix_every=update)
        self.batch_mixing_matrices: Dict[str, torch.Tensor] = {}
        self.dgat_options = dgat_options
        #: the transport of the D-SGD mixing and of the D-GAT messages: the one installed while the experiment
        #: is built (:func:`~benchmarl_decentral.distributed.use_transport`), one process by default
        self.transport = current_transport()
        #: ``algorithm.topology`` as given, and the one trained with (``auto`` resolved from the task)
        self.requested_topology = dgat_options.get("topology")
        if self.requested_topology == AUTO_TOPOLOGY:
            try:
                check_auto_topology(dgat_options)
            except ValueError as err:
                raise config_error(self.experiment, str(err)) from None
            task = self.experiment.task
            family, name = task.env_name(), task.name.lower()
            resolved, reason = resolve_auto_topology(family, name)
            self.dgat_options.update(resolved)
            print(f"dg_mappo: topology=auto on {family}/{name}: {resolved['topology']} ({reason})", flush=True)
        self.topology = self.dgat_options["topology"]
        if dgat_options.get("topology") == "visibility":
            # the observation layout of ally visibility (consensus/visibility.py) comes from the task
            self.dgat_options["graph_kwargs"] = with_layout(
                dgat_options.get("graph_kwargs"), task_layout(self.experiment.task)
            )
            if "layout" not in self.dgat_options["graph_kwargs"]:
                task = f"{self.experiment.task.env_name()}/{self.experiment.task.name.lower()}"
                raise config_error(self.experiment, not_smac_message("dg_mappo", "algorithm", task))

        #: every group's agents in the joint task (a process may build a block of them only,
        #: :class:`~benchmarl_decentral.distributed.local.LocalAgentsTask`); the graphs are over all of them
        self.joint_group_map = {g: list(range(group_size(self.experiment, g))) for g in self.group_map}
        self._check_local_agents()
        try:
            #: per group: the D-GAT's graph options after group_topology and the small-group rules
            self.group_topologies = resolve_group_topologies(
                owner="dg_mappo", task=self.experiment.task.name.lower(), group_map=self.joint_group_map,
                options={key: dgat_options[key] for key in DGMAPPO_GROUP_KEYS},
                overrides=check_group_topology(
                    group_topology, owner="dg_mappo", keys=DGMAPPO_GROUP_KEYS, topologies=DGMAPPO_GROUP_TOPOLOGIES,
                    topology=dgat_options["topology"],
                ),
                uses={key: DGAT_TOPOLOGY_OPTIONS[key] for key in DGMAPPO_GROUP_KEYS if key != "topology"},
            )
        except ValueError as err:
            raise config_error(self.experiment, str(err)) from None

        # Build (and so validate against the task) every group's D-GAT before any training.
        self.communication: Dict[str, Dgat] = {}
        for group in self.group_map:
            try:
                self.communication[group] = self._build_communication(group)
            except (ValueError, KeyError) as err:
                raise config_error(
                    self.experiment,
                    f"dg_mappo: the D-GAT does not fit group '{group}' of task "
                    f"{self.experiment.task.name.lower()}: {err} (options under algorithm.*)",
                ) from None
            self._check_connected(group)

        if max_grad_norm is not None and self.experiment_config.clip_grad_val is not None:
            # BenchMARL clips the norm over all agents at once; DG-MAPPO clips each agent
            # on its own. Work on a copy: the caller's ExperimentConfig may serve other runs.
            self.experiment.config = copy.copy(self.experiment.config)
            self.experiment.config.clip_grad_val = None
            self.experiment_config = self.experiment.config

        self.callback = _DgMappoCallback(self)
        # hydra runs pass callbacks=() (a tuple): rebind rather than append
        self.experiment.callbacks = [*self.experiment.callbacks, self.callback]
        self.callback.experiment = self.experiment

    def _check_local_agents(self) -> None:
        """What a process that builds a block of agents only (``--agents local``) cannot run, refused with the fix
        (:func:`local_agents_refusal`). Its D-GAT graph (static, or a radius or visibility graph read from the
        joint observation) is checked by :class:`~benchmarl_decentral.models.dgat.Dgat` inside
        :func:`~benchmarl_decentral.models.dgat.agent_block`."""
        if all(local_block(self.experiment, g) is None for g in self.group_map):
            return
        error = local_agents_refusal("dg_mappo", self.consensus_params, self.evaluation_dropout)
        if error is not None:
            raise config_error(self.experiment, error)

    def _draw(self, group: str, net: str) -> Callable[[Callable[[int], nn.Module]], nn.Module]:
        """How ``net`` (``actor`` / ``critic``) of ``group`` is drawn from ``build(m)`` (the network of ``m`` agents).

        Every agent's own draw when the network is not kept in consensus
        (``dg_mappo_paper``'s actor and critic): in a process that builds a
        block, the group's network drawn as one process draws it and the
        block's rows kept (:func:`~benchmarl_decentral.distributed.local.block_of_group_draw`);
        a network in ``consensus_params`` starts from the first agent's draw
        on every agent (eq. 9), the same whatever agents a process builds.
        """
        if net in self.consensus_params:
            return lambda build: build(len(self.group_map[group]))
        return lambda build: block_of_group_draw(self.experiment, group, build)

    def _network_rng(self, group: str, net: str) -> ContextManager:
        """Draw a network's initial parameters from a seed of its own (:func:`~benchmarl_decentral.distributed.local.network_rng`).

        The first agent's draw, which every agent starts from (eq. 9's common
        point, :meth:`_get_loss`), is then the same whatever number of agents a
        process builds, and the global random stream is left where it was.
        """
        return network_rng(self.experiment.seed, group, net, self.device)

    def set_fast_paths(self, on: bool) -> None:
        """Switch the profile's speed-ups (:attr:`fast_paths`) on or off, in the D-GAT modules and optimizers too."""
        self.fast_paths = on
        for comm in self.communication.values():
            comm.dense_without_grad = on
        for loss, _ in self._losses_and_updaters.values():
            loss.reuse_graph = on
        for optimizers in getattr(self.experiment, "optimizers", {}).values():
            if LOSS_KEY in optimizers:
                self.set_optimizer_fast_path(optimizers[LOSS_KEY])

    def set_optimizer_fast_path(self, optimizer: torch.optim.Optimizer) -> None:
        """With :attr:`fast_paths`, the optimizer's fused or multi-tensor implementation: the same update.

        PyTorch picks the per-parameter loop on CPU by default (``foreach=None``).
        Adam and AdamW, whose parameters are all on devices with a fused kernel
        (CPU, CUDA), run it (``fused=True``: one kernel per step, the same
        update to float rounding, about 1e-7); any other optimizer taking the
        option runs its ``foreach`` form (a few multi-tensor calls for all of
        a group's parameters). ``fast_paths=False`` restores PyTorch's default
        (``foreach=None``, ``fused=None``).
        """
        fused = self.fast_paths and _takes_fused(optimizer)
        for param_group in optimizer.param_groups:
            if "fused" in param_group:
                param_group["fused"] = True if fused else None
            if "foreach" in param_group:
                param_group["foreach"] = None if fused or not self.fast_paths else True

    def _check_connected(self, group: str) -> None:
        """Assumption 1: a static custom graph must be (strongly) connected, or consensus cannot hold."""
        comm = self.communication[group]
        if self.group_topologies[group]["topology"] != "custom" or bool(strongly_connected(comm.static_adjacency)):
            return
        n = comm.joint_agents
        adj = comm.static_adjacency | torch.eye(n, dtype=torch.bool, device=comm.static_adjacency.device)
        reach = adj.float()
        for _ in range(n):
            reach = ((reach @ adj.float()) > 0).float()
        cut = [(i, j) for i in range(n) for j in range(n) if not reach[i, j]][:3]
        raise config_error(
            self.experiment,
            f"dg_mappo: the custom adjacency is not connected for group '{group}' (Assumption 1 of paper 000: "
            f"the communication graph must let every agent reach every other, else D-SGD and eq. 11 cannot "
            f"reach consensus); e.g. agent i never hears from j for (i, j) in {cut}. Add links to "
            "algorithm.adjacency (adjacency[i][j]=1 iff i receives from j), or use algorithm.topology=full or ring.",
        )

    # ------------------------------------------------------------------ networks
    def _build_communication(self, group: str) -> Dgat:
        n = len(self.group_map[group])
        obs_spec = self.observation_spec[group]
        features = sum(spec.shape[-1] for spec in obs_spec.values(True, True))
        opts = {**self.dgat_options, **self.group_topologies[group]}
        tilde = features + (features if opts["value"] == "identity" else opts["hidden_channels"])
        config = DgatConfig(**opts, num_cells=None, activation_class=None)
        block = local_block(self.experiment, group)  # this process holds agents block[0] .. block[1] - 1
        joint = contextlib.nullcontext()
        if block is not None:
            n_joint, joint_obs = len(self.joint_group_map[group]), joint_observation_spec(self.experiment, group)
            if joint_obs is not None and joint_obs[1].shape[-1] != n_joint * features:
                raise ValueError(f"the joint observation {joint_obs[0]} has {joint_obs[1].shape[-1]} features, not "
                                 f"{n_joint} agents x {features}")
            joint = agent_block(n_joint, block[0], None if joint_obs is None else joint_obs[0])
        with joint, self._network_rng(group, "dgat_stack"):  # the stacked draw, replaced below
            comm = per_agent_model(config, group, obs_spec.clone().to(self.device), DGAT_KEY, n, tilde,
                                   device=self.device, action_spec=self.action_spec)
        with self._network_rng(group, "dgat"):  # D-SGD from a common psi_0 (sec. 3.1, eq. 9)
            _common_start_(comm.dgat)
        return comm

    def _get_policy_for_loss(self, group, model_config, continuous) -> TensorDictModule:
        adapter = _OnCommunication(model_config, self.communication[group], self._draw(group, "actor"))
        with self._network_rng(group, "actor"):
            policy = super()._get_policy_for_loss(group=group, model_config=adapter, continuous=continuous)
        self._actor_networks[group] = adapter.network
        return block_sampling(policy, self.experiment, group)  # a rank's block: the group's noise, its rows

    def get_critic(self, group: str) -> TensorDictModule:
        """Agent i's critic ``V_i(õ_i)`` (eq. 14): per agent, on ``õ_i`` only, never a global state."""
        n = len(self.group_map[group])

        def build(m: int) -> nn.Module:
            return per_agent_model(self.critic_model_config, group,
                                   grown(self.communication[group].output_spec[group], m), "state_value", m, 1,
                                   device=self.device, action_spec=self.action_spec)

        with self._network_rng(group, "critic"):
            critic = self._draw(group, "critic")(build)
        if not self.value_norm:
            return critic
        norm = self.value_norms.setdefault(group, ValueNorm(n))
        key = (group, "state_value")
        return TensorDictSequential(critic, TensorDictModule(norm, in_keys=[key], out_keys=[key]))

    def _get_loss(self, group: str, policy_for_loss: TensorDictModule, continuous: bool) -> Tuple[LossModule, bool]:
        loss = DgMappoLoss(
            actor_network=policy_for_loss,
            critic_network=self.get_critic(group),
            communication=self.communication[group],
            alpha_consensus=self.alpha_consensus,
            dgat_key=(group, DGAT_KEY),
            mixing_graph=self.mixing_graph,
            clip_epsilon=self.clip_epsilon,
            entropy_coeff=self.entropy_coef,
            critic_coeff=self.critic_coef,
            loss_critic_type=self.loss_critic_type,
            normalize_advantage=self.normalize_advantage,
            normalize_advantage_exclude_dims=(-2,),  # each agent's own statistics
        )
        loss.set_keys(  # MAPPO's keys (benchmarl.algorithms.mappo)
            reward=(group, "reward"),
            action=(group, "action"),
            done=(group, "done"),
            terminated=(group, "terminated"),
            advantage=(group, "advantage"),
            value_target=(group, "value_target"),
            value=(group, "state_value"),
            sample_log_prob=(group, "log_prob"),
        )
        loss.make_value_estimator(ValueEstimators.GAE, gamma=self.experiment_config.gamma, lmbda=self.lmbda)
        loss.__dict__["value_norm"] = self.value_norms.get(group)
        loss.reuse_graph = self.fast_paths
        self._stack_networks(group, loss)
        if self.actor_output_gain is not None:  # A.3, drawn per agent before the common start
            gain = AUTO_OUTPUT_GAIN if self.actor_output_gain == "auto" else self.actor_output_gain
            try:
                block = local_block(self.experiment, group)
                # agents that do not start from one draw (eq. 9) get their own slices: a block's from its first agent
                first = block[0] if block is not None and "actor" not in self.consensus_params else 0
                _orthogonal_output_layer_(self._actor_networks[group], self._stacks[(group, "actor")], gain,
                                          rng=lambda: self._network_rng(group, "actor_output_gain"), first=first)
            except ValueError as err:
                if self.actor_output_gain != "auto":
                    raise config_error(self.experiment, f"dg_mappo: {err}") from None
                print(f"dg_mappo: actor_output_gain=auto: group {group!r} keeps the model's default initialisation "
                      f"({str(err).split(';')[0]})", flush=True)
        with torch.no_grad():  # D-SGD starts every mixed network from a common point (eq. 9), as the D-GAT
            for name in self.consensus_params:
                for p in self._stacks[(group, name)].leaves:
                    p.copy_(p[:1].expand_as(p))
        return loss, False

    def _stack_networks(self, group: str, loss: DgMappoLoss) -> None:
        """Each network's per-agent parameters as stacked ``(n, ...)`` leaves (:class:`AgentStack`).

        Stacked models (``layers/mlp``, ``gru``, ``lstm``, the D-GAT) are used as
        they are; models that keep ``n`` per-agent copies (``layers/gnn``) are
        gathered once, here, before the optimizer exists. Parameters only:
        buffers (e.g. the D-GAT's static adjacency, which the functional loss
        lists among its tensors) are neither optimized nor mixed; the D-GAT's
        parameters, which the actor's list holds too, are the ``dgat`` network's.
        """
        n = len(self.group_map[group])
        dgat = self.communication[group].dgat
        ids = {id(p) for p in dgat.parameters()}

        def own(params: TensorDictBase) -> Dict[str, torch.Tensor]:
            out: Dict[str, torch.Tensor] = {}
            for name, p in params.flatten_keys().items():
                if isinstance(p, nn.Parameter) and id(p) not in ids:
                    ids.add(id(p))  # each parameter once
                    out[name] = p
            return out

        try:
            self._stacks[(group, "dgat")] = AgentStack(dict(dgat.named_parameters()), dgat, n, "dgat")
            for net in ("actor", "critic"):
                params = own(getattr(loss, f"{net}_network_params"))
                self._stacks[(group, net)] = AgentStack(params, getattr(loss, f"{net}_network"), n, net)
        except ValueError as err:
            raise config_error(
                self.experiment,
                f"dg_mappo: {err}. DG-MAPPO keeps, clips and mixes each agent's own networks (sec. 3.2); use a "
                "model with per-agent parameters (BenchMARL's layers/mlp, gnn, gru, lstm or a sequence of them).",
            ) from None

    def agent_stack(self, group: str, net: str) -> AgentStack:
        """The per-agent parameters of ``net`` (``dgat``, ``actor`` or ``critic``) of ``group``.

        Its ``leaves`` are stacked ``(n, ...)`` (a model's stacked leaves as they
        are, ``n`` per-agent copies gathered into one tensor per parameter;
        in-place writes reach the networks); its ``parameters`` are what the
        optimizer steps.
        """
        self.get_loss_and_updater(group)  # builds the loss (and the stacks) once
        return self._stacks[(group, net)]

    def resume_state(self) -> Dict[str, Any]:
        """What an exact resume needs beyond BenchMARL's state (:mod:`benchmarl_decentral.resume`).

        The D-GAT messages counted since the last collected batch, e.g. those
        of the evaluation that ran just before the checkpoint: they are logged
        with the next iteration's ``comm/exec_*`` bytes; and with
        ``value_norm`` each agent's running moments of its value targets
        (:class:`ValueNorm`, every row of the group: in a distributed run the
        rows of the agents another rank holds are unread; with ``--agents
        local`` the block's rows only); with
        ``link_latency`` each group's parameter vectors still in flight
        (:class:`~benchmarl_decentral.distributed.LinkHistory`; in a
        distributed run what this rank received).
        """
        return {
            "exec_comm": {group: dict(vars(comm.comm)) for group, comm in self.communication.items()},
            "value_norms": value_norm_state(self.value_norms),
            "link_history": {group: history.state_dict() for group, history in self.callback.histories.items()},
        }

    def load_resume_state(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`resume_state` (a checkpoint written before the value norms were saved keeps fresh ones)."""
        for group, counter in state.get("exec_comm", {}).items():
            if group in self.communication:
                vars(self.communication[group].comm).update(counter)
        load_value_norm_state(self.value_norms, state.get("value_norms", {}))
        for group, history in state.get("link_history", {}).items():
            if group in self.callback.histories:
                self.callback.histories[group].load_state_dict(history)

    def network_leaves(self, group: str) -> Dict[str, List[torch.Tensor]]:
        """The group's per-agent parameters by network, ``dgat`` (psi), ``actor`` (theta), ``critic`` (phi).

        Every leaf is stacked ``(n, ...)`` (:meth:`agent_stack`); writes to a
        leaf reach the network, whether its parameters are stacked or gathered copies.
        """
        return {net: self.agent_stack(group, net).leaves for net in CONSENSUS_NETWORKS}

    def network_parameters(self, group: str) -> Dict[str, List[torch.Tensor]]:
        """The group's parameters by network (what the optimizer holds; the leaves for stacked models)."""
        return {net: self.agent_stack(group, net).parameters for net in CONSENSUS_NETWORKS}

    def dgat_leaves(self, group: str) -> List[torch.Tensor]:
        """The D-GAT parameters psi of a group, every leaf ``(n_agents, ...)``."""
        return list(self.communication[group].dgat.parameters())

    def _get_parameters(self, group: str, loss: ClipPPOLoss) -> Dict[str, Iterable]:
        params = self.network_parameters(group)
        return {LOSS_KEY: _unique(params["dgat"] + params["actor"] + params["critic"])}

    # ------------------------------------------------------------------ training
    def process_batch(self, group: str, batch: TensorDictBase) -> TensorDictBase:
        reward_key = ("next", group, "reward")
        if reward_key in batch.keys(True, True):  # per-agent rewards: their mean (sec. 2.1)
            reward = batch.get(reward_key)
            # a process holding a block of agents: the mean over every agent's (the joint rewards its env gives)
            every = batch.get(("next", JOINT_REWARD, group, "reward"), reward)
            batch.set(reward_key, every.mean(-2, keepdim=True).expand_as(reward).clone())
        comm = self.communication[group]
        with torch.no_grad():  # õ of the batch and of its next observations, for GAE only
            self._next_dgat_observation(group, batch)
            if self.mix_every == "update" and self.consensus_params:
                self.batch_mixing_matrices[group] = dsgd_matrix(comm.communication_graph(batch), self.mixing_graph)
        batch = super().process_batch(group, batch)
        norm = self.value_norms.get(group)
        if norm is not None:  # each agent's own targets (after GAE, which used the previous moments)
            norm.update(batch.get((group, "value_target")))
        return batch

    def _next_dgat_observation(self, group: str, batch: TensorDictBase) -> None:
        """õ of the batch and of ``batch["next"]``, computing D-GAT only where it is not known yet.

        The collection policy already wrote ``õ_t`` with the current parameters
        (no update happens between collection and this call), so it is kept when
        present. Along the time dim (the batch's last), ``next`` of step ``t``
        is step ``t + 1`` except at episode ends: wherever every D-GAT input
        (its input keys, the position key and the observation the graph is
        built from) of ``next[t]`` equals that of ``t + 1``, D-GAT's output is
        the same and ``õ_{t+1}`` is reused. D-GAT runs only on the remaining
        rows (the last step and the episode ends). Exact, not an approximation.
        """
        comm = self.communication[group]
        key = (group, DGAT_KEY)
        if not self.reuse_dgat_outputs:  # the first version: D-GAT over the whole batch and its next
            comm(batch)
            comm(batch.get("next"))
            return
        if key not in batch.keys(True, True):
            comm(batch)
        nxt = batch.get("next")
        tilde = batch.get(key)
        if batch.batch_dims == 0 or batch.shape[-1] < 2:
            comm(nxt)
            return
        t_dim, steps = batch.batch_dims - 1, batch.shape[-1]
        inputs = set(comm.in_keys)
        if (group, "observation") in batch.keys(True, True):
            inputs.add((group, "observation"))
        same = torch.ones(*batch.shape[:-1], steps - 1, dtype=torch.bool, device=tilde.device)
        for k in inputs:
            a, b = nxt.get(k).narrow(t_dim, 0, steps - 1), batch.get(k).narrow(t_dim, 1, steps - 1)
            same &= (a == b).flatten(batch.batch_dims).all(-1)
        need = torch.ones(batch.shape, dtype=torch.bool, device=tilde.device)
        need.narrow(t_dim, 0, steps - 1).copy_(~same)
        next_tilde = torch.empty_like(tilde)
        next_tilde.narrow(t_dim, 0, steps - 1).copy_(tilde.narrow(t_dim, 1, steps - 1))
        if bool(need.any()):
            fresh = nxt[need].select(*inputs)
            comm(fresh)
            next_tilde[need] = fresh.get(key)
        nxt.set(key, next_tilde)

    def process_loss_vals(self, group: str, loss_vals: TensorDictBase) -> TensorDictBase:
        """Algorithm 1, line 17: ``sum_i L_PPO_i + L_critic_i + L_consensus_i`` as one key."""
        n = len(self.group_map[group])
        total = sum(loss_vals.get(k) for k in ("loss_objective", "loss_entropy", "loss_critic", "loss_consensus"))
        return TensorDict({LOSS_KEY: n * total}, batch_size=[])


class _DgMappoCallback(Callback):
    """Optimizer settings, per-agent clipping, D-SGD mixing of D-GAT and the graph metrics."""

    def __init__(self, algorithm: DgMappo):
        super().__init__()
        self.algorithm = algorithm
        self.mixing = True  # False: the D-SGD averaging step is skipped (tests, ablations)
        self._metrics: Dict[str, Dict[str, Any]] = {}
        self._mixed: Dict[str, List[torch.Tensor]] = {}  # per group: the leaves D-SGD mixes
        self._mixing_comm: Dict[str, CommCounter] = {}  # per group: the bytes of this iteration's mixing
        self._exec_comm: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}  # per group: D-GAT bytes of the collection
        self.sent: Dict[str, Dict[str, Any]] = {}
        self._comm: Dict[str, Tuple[int, Dict[str, int]]] = {}  # per group: (agents held, bytes by kind)
        #: per group, with ``link_latency``: the parameter vectors in flight of its mixing steps
        self.histories: Dict[str, LinkHistory] = {}

    def on_setup(self):
        algo, exp = self.algorithm, self.experiment
        for group in exp.group_map:
            optimizer = exp.optimizers[group][LOSS_KEY]
            for param_group in optimizer.param_groups:  # Table 2: lr 5e-4, eps 1e-5
                param_group["lr"] = algo.lr
                param_group["eps"] = algo.adam_eps
            algo.set_optimizer_fast_path(optimizer)
            leaves = algo.network_leaves(group)
            if algo.max_grad_norm is not None:
                stacks = [algo.agent_stack(group, net) for net in CONSENSUS_NETWORKS]
                optimizer.register_step_pre_hook(self._clip(stacks, algo.max_grad_norm, algo))
            mixed = [p for name in algo.consensus_params for p in leaves[name]]
            self._mixed[group] = mixed
            if mixed and algo.link_latency:
                self.histories[group] = LinkHistory(algo.link_latency)
            if mixed and algo.mix_every == "step":
                optimizer.register_step_post_hook(self._mix(group, mixed))

    @staticmethod
    def _clip(networks: List[AgentStack | List[torch.Tensor]], max_norm: float, algorithm: Optional[DgMappo] = None):
        """Each agent's gradient of each network clipped on its own (no cross-agent statistic).

        A network is an :class:`AgentStack` (its stacked gradients; for gathered
        copies the copies' ``.grad`` are rows of them, so the rescale reaches
        the optimizer) or a list of stacked leaves (their ``.grad``). With
        ``algorithm.fast_paths`` an agent's norm is the norm of its per-leaf
        norms (no concatenated copy of the gradients) and nothing is rescaled
        when every agent is within ``max_norm`` (the scale would be 1).
        """

        def hook(optimizer, args, kwargs):
            fast = algorithm is None or algorithm.fast_paths
            for network in networks:
                stacked = network.grads() if isinstance(network, AgentStack) else [p.grad for p in network]
                grads = [g for g in stacked if g is not None]
                if not grads:
                    continue
                if fast:  # each leaf's per-agent norms, then their norm: no copy of the gradients
                    norm = torch.stack([torch.linalg.vector_norm(g.reshape(g.shape[0], -1), dim=1) for g in grads])
                    norm = torch.linalg.vector_norm(norm, dim=0)
                else:
                    norm = torch.stack([g.pow(2).reshape(g.shape[0], -1).sum(-1) for g in grads]).sum(0).sqrt()
                scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
                if fast and not bool((scale < 1.0).any()):
                    continue
                for g in grads:
                    g.mul_(scale.view(-1, *([1] * (g.dim() - 1))))

        return hook

    def _mix_with(self, group: str, W: torch.Tensor) -> None:
        """``x_i <- sum_j W_ij x_j`` through the algorithm's transport (rows of the agents held here), bytes counted.

        With ``link_latency`` the neighbours' ``x_j`` (and ``W``) are those of
        ``d`` mixing steps earlier (:meth:`Transport.mix_ <benchmarl_decentral.distributed.Transport.mix_>`).
        """
        transport = self.algorithm.transport
        n = W.shape[-1]
        record = transport.mix_(transport.local_rows(self._mixed[group], n), W, history=self.histories.get(group))
        self._mixing_comm.setdefault(group, CommCounter()).add(record)

    def _mix(self, group: str, leaves: List[torch.Tensor]):
        """Eqs. 9-10: after the local step, x_i <- sum_j c(i, j) x_j with c(i, j) = 1/|N_i| (x: consensus_params)."""
        loss = self.algorithm.get_loss_and_updater(group)[0]

        def hook(optimizer, args, kwargs):
            if not self.mixing:
                return
            W = loss.mixing_matrix
            if W is None:
                raise RuntimeError("DG-MAPPO: optimizer step without a loss forward; no graph to mix over")
            self._mix_with(group, W)
            # weight an agent keeps for itself: 1 = no mixing, 1/n = full averaging (a tensor: read once per
            # iteration, in on_train_end)
            self._metrics.setdefault(group, {}).setdefault("mixing_self_weights", []).append(W.diagonal().mean())

        return hook

    def on_batch_collected(self, batch: TensorDictBase):
        """A.4 and Assumption 1 on the collected steps: node degree, at episode ends too, connectivity."""
        algo = self.algorithm
        done = batch.get(("next", "done"), None)
        for group in self.experiment.train_group_map:
            comm = algo.communication[group]
            # what D-GAT sent since the last training: this batch's collection and any evaluation in between
            if comm.comm.steps:
                self._exec_comm[group] = (comm.comm.link_bytes.cpu(), comm.comm.network_bytes.cpu())
            comm.comm.reset()
            with torch.no_grad():
                adj = comm.communication_graph(batch)
                if adj.dim() == 2:
                    adj = adj.expand(*batch.shape, *adj.shape)
                metrics = self._metrics.setdefault(group, {})
                metrics["average_degree"] = float(average_degree(adj).mean())
                metrics["disconnected_fraction"] = float((~strongly_connected(adj)).float().mean())
                group_done = done if done is not None else batch.get(("next", group, "done")).any(-2)
                ended = group_done.reshape(batch.shape)
                metrics.pop("average_degree_episode_end", None)
                if bool(ended.any()):
                    final = comm.communication_graph(batch.get("next"))
                    if final.dim() == 2:
                        final = final.expand(*batch.shape, *final.shape)
                    metrics["average_degree_episode_end"] = float(average_degree(final[ended]).mean())

    def on_train_end(self, training_td: TensorDictBase, group: str):
        algo = self.algorithm
        W = algo.batch_mixing_matrices.pop(group, None)
        if self.mixing and algo.mix_every == "update" and self._mixed.get(group) and W is not None:
            for _ in range(algo.mixes_per_update):  # the public code's 3 mixings per update
                self._mix_with(group, W)
            self._metrics.setdefault(group, {}).setdefault("mixing_self_weights", []).append(W.diagonal().mean())
        metrics = self._metrics.setdefault(group, {})
        to_log = {
            f"dg_mappo/{group}/{name}": value
            for name, value in metrics.items()
            if name != "mixing_self_weights"
        }
        mixing = metrics.pop("mixing_self_weights", [])
        if mixing:
            to_log[f"dg_mappo/{group}/mixing_self_weight"] = float(torch.stack(mixing).mean())
        for name, leaves in algo.network_leaves(group).items():
            to_log[f"dg_mappo/{group}/{name}_consensus_distance"] = float(consensus_distance(leaves))
        to_log.update(self._comm_metrics(group))
        self.experiment.logger.log(to_log, step=self.experiment.n_iters_performed)

    def _comm_metrics(self, group: str) -> Dict[str, float]:
        """Bytes each agent sent in this iteration, mean over the agents held here (decpg's ``comm/`` keys).

        ``train``: the D-SGD mixing (eqs. 9-10) and the D-GAT messages of
        training (GAE inputs, the losses' D-GAT hops and eq. 11's ĥ_j) with
        their gradients; ``exec``: the D-GAT messages of the collection and
        of any evaluation since the previous batch. Counted by the transport:
        from the sent tensors across processes, by formula in one process
        (:func:`~benchmarl_decentral.distributed.message_bytes`,
        :func:`~benchmarl_decentral.distributed.mixing_bytes`).
        """
        comm = self.algorithm.communication[group]
        agents = self.algorithm.transport.local_agents(comm.joint_agents)
        held = agents.numel()
        zeros = torch.zeros(held, dtype=torch.int64)
        counters = [c for c in (comm.comm, self._mixing_comm.pop(group, CommCounter())) if c.steps]
        link = sum((c.link_bytes.cpu() for c in counters), zeros)  # D-GAT's counts stay on its device until now
        network = sum((c.network_bytes.cpu() for c in counters), zeros)
        comm.comm.reset()
        exec_link, exec_network = self._exec_comm.pop(group, (zeros, zeros))
        #: per group, the last iteration's bytes per agent held here (``agents``; ``train`` / ``exec``: link and network)
        self.sent[group] = {"agents": agents, "train": (link, network), "exec": (exec_link, exec_network)}
        sent = {"train": int(link.sum()), "train_network": int(network.sum()),
                "exec": int(exec_link.sum()), "exec_network": int(exec_network.sum())}
        return bytes_per_agent_metrics(self._comm, group, list(self.experiment.train_group_map)[-1], held, sent)

    def on_load_state_dict(self, state_dict: Dict[str, Any]):
        for stack in self.algorithm._stacks.values():  # loading copies values in place: gathered rows still alias
            stack.check_aliasing()


@dataclass
class DgMappoConfig(AlgorithmConfig):
    """Configuration of :class:`DgMappo` (defaults: ``conf/algorithm/dg_mappo.yaml``, paper 000 Tables 2-3)."""

    # consensus regulariser (eq. 11) and D-SGD (eqs. 9-10)
    alpha_consensus: float = MISSING
    mixing_graph: str = MISSING
    consensus_params: Any = MISSING  # list out of CONSENSUS_NETWORKS (Any: hydra merges lists into it)
    mix_every: str = MISSING
    mixes_per_update: int = MISSING
    # D-GAT and communication graph (sec. 3.1)
    num_hops: Optional[int] = MISSING
    hidden_channels: int = MISSING
    heads: int = MISSING
    value: str = MISSING
    dgat_activation: Optional[str] = MISSING
    negative_slope: float = MISSING
    dropout: float = MISSING
    add_self_loops: bool = MISSING
    dgat_messages: str = MISSING
    topology: str = MISSING
    radius: Optional[float] = MISSING
    k: Optional[int] = MISSING
    adjacency: Optional[List[List[int]]] = MISSING
    position_key: Optional[str] = MISSING
    position_dims: Optional[List[int]] = MISSING
    # Any, not Optional[Dict]: omegaconf cannot merge a dict from the command line
    # (algorithm.graph_kwargs={layout:smax}) into a typed dict node that is null
    graph_kwargs: Any = MISSING
    # optimisation (Table 2)
    lr: float = MISSING
    adam_eps: float = MISSING
    max_grad_norm: Optional[float] = MISSING
    # PPO (Tables 2-3)
    normalize_advantage: bool = MISSING
    clip_epsilon: float = MISSING
    entropy_coef: float = MISSING
    critic_coef: float = MISSING
    loss_critic_type: str = MISSING
    lmbda: float = MISSING
    scale_mapping: str = MISSING
    use_tanh_normal: bool = MISSING
    minibatch_advantage: bool = MISSING
    # value normalisation and the actor's output layer (A.3)
    value_norm: bool = MISSING
    actor_output_gain: Any = MISSING  # Any: a number, "auto" or null
    # evaluation (benchmarl_decentral.evaluation_dropout)
    evaluation_dropout: List[int] = field(default_factory=list)
    # per-group D-GAT graph options (benchmarl_decentral.consensus.groups)
    group_topology: Any = None  # Any: omegaconf merges a command-line dict into a null node
    # D-SGD: mixing steps a parameter vector takes over a link (a default: configs pickled before the key)
    link_latency: int = 0

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Checks that need no task; the task-dependent ones run when the algorithm is built."""
        self.evaluation_dropout = check_evaluation_dropout("dg_mappo", self.evaluation_dropout)
        self.dgat_messages = dgat_messages_value(self.dgat_messages)
        if self.topology not in TOPOLOGIES:
            raise ValueError(
                f"D-GAT (algorithm): unknown topology {self.topology!r}; choose one of {TOPOLOGIES} "
                "(algorithm.topology; auto picks the graph from the task)"
            )
        self.group_topology = check_group_topology(  # None when empty, as the YAML's null
            self.group_topology, owner="dg_mappo", keys=DGMAPPO_GROUP_KEYS, topologies=DGMAPPO_GROUP_TOPOLOGIES,
            topology=self.topology,
        ) or None
        options = dict(self.__dict__)
        if self.topology == AUTO_TOPOLOGY:
            check_auto_topology(options)
            options["topology"] = "full"  # the remaining checks; auto's own options are checked above
        check_dgat_options(prefix="algorithm", **options)
        if self.alpha_consensus < 0:
            raise ValueError(f"dg_mappo: alpha_consensus must be >= 0 (A.3: 20), got {self.alpha_consensus}")
        if self.mixing_graph not in MIXING_GRAPHS:
            raise ValueError(
                f"dg_mappo: unknown mixing_graph {self.mixing_graph!r}; choose one of {MIXING_GRAPHS}"
            )
        if self.lr <= 0 or self.adam_eps <= 0:
            raise ValueError(f"dg_mappo: need lr > 0 and adam_eps > 0 (got lr={self.lr}, adam_eps={self.adam_eps})")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"dg_mappo: max_grad_norm must be > 0 or null, got {self.max_grad_norm}")
        if self.loss_critic_type not in LOSS_CRITIC_TYPES:
            raise ValueError(
                f"dg_mappo: unknown loss_critic_type {self.loss_critic_type!r}; choose one of "
                f"{LOSS_CRITIC_TYPES} (smooth_l1 is the Huber loss of Table 2)"
            )
        if not 0 < self.clip_epsilon < 1:
            raise ValueError(f"dg_mappo: clip_epsilon must be in (0, 1) (Table 3: 0.05), got {self.clip_epsilon}")
        self._validate_consensus()

    def _validate_consensus(self) -> None:
        """consensus_params, link_latency, mix_every, mixes_per_update, graph_kwargs, value_norm, actor_output_gain."""
        self.consensus_params = list(check_consensus_params(self.consensus_params, "dg_mappo", CONSENSUS_NETWORKS))
        check_link_latency(self.link_latency, "dg_mappo", self.consensus_params, CONSENSUS_NETWORKS)
        if self.mix_every not in MIX_EVERY:
            raise ValueError(
                f"dg_mappo: unknown mix_every {self.mix_every!r}; choose one of {list(MIX_EVERY)} "
                "(algorithm.mix_every=step mixes after every optimizer step, =update mixes "
                "algorithm.mixes_per_update times after each update)"
            )
        n_mix = self.mixes_per_update
        if isinstance(n_mix, bool) or not isinstance(n_mix, int) or n_mix < 1:
            raise ValueError(
                f"dg_mappo: mixes_per_update must be an int >= 1, got {n_mix!r}; set algorithm.mixes_per_update=3 "
                "(the public code's value)"
            )
        if self.mix_every == "step" and n_mix != 1:
            raise ValueError(
                f"dg_mappo: mixes_per_update={n_mix} is only read with mix_every=update (mix_every=step mixes once "
                "after every optimizer step); set algorithm.mix_every=update or algorithm.mixes_per_update=1"
            )
        if self.graph_kwargs is not None and not hasattr(self.graph_kwargs, "keys"):
            raise ValueError(
                f"dg_mappo: graph_kwargs must be a mapping or null, got {self.graph_kwargs!r}; "
                "set e.g. algorithm.graph_kwargs={layout:smax}"
            )
        if not isinstance(self.value_norm, bool):
            raise ValueError(f"dg_mappo: value_norm must be true or false, got {self.value_norm!r}")
        gain = self.actor_output_gain
        if gain is not None and gain != "auto" and (
            isinstance(gain, bool) or not isinstance(gain, (int, float)) or gain <= 0
        ):
            raise ValueError(
                f"dg_mappo: actor_output_gain must be > 0, auto or null, got {gain!r}; set "
                "algorithm.actor_output_gain=0.01 (A.3), auto (0.01 where the actor ends in one linear layer) "
                "or null (default initialisation)"
            )

    @staticmethod
    def associated_class() -> Type[Algorithm]:
        return DgMappo

    @classmethod
    def get_from_yaml(cls, path: Optional[str] = None) -> "DgMappoConfig":
        """Load our ``conf/algorithm/dg_mappo.yaml`` (BenchMARL's loader only reads its own folder)."""
        return cls(**load_algorithm_yaml("dg_mappo", path))

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
        return True  # one decentralized critic per agent, on õ_i (no global state)


# ------------------------------------------------------------------ the paper preset
class DgMappoPaper(DgMappo):
    """:class:`DgMappo` run from the paper preset (``conf/algorithm/dg_mappo_paper.yaml``).

    The same algorithm; a subclass only so that BenchMARL, which names runs after
    ``associated_class().__name__.lower()``, names these ``dg_mappo_paper`` and a
    sweep over ``algorithm=dg_mappo,dg_mappo_paper`` keeps the two apart.
    """


DgMappoPaper.__name__ = "Dg_mappo_paper"  # run name "dg_mappo_paper", the hydra name (pickling uses __qualname__)


@dataclass
class DgMappoPaperConfig(DgMappoConfig):
    """Paper 000's settings (A.3, Tables 2-3): K = n hops, D-GAT-only mixing after every step,
    clip 0.05, actor output gain 0.01. Loaded from ``conf/algorithm/dg_mappo_paper.yaml``.
    """

    @staticmethod
    def associated_class() -> Type[Algorithm]:
        return DgMappoPaper

    @classmethod
    def get_from_yaml(cls, path: Optional[str] = None) -> "DgMappoPaperConfig":
        """Load our ``conf/algorithm/dg_mappo_paper.yaml`` (or ``path``)."""
        return cls(**load_algorithm_yaml("dg_mappo_paper", path))
