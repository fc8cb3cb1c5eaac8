"""000_ef718962e1e8f612.txt sec. 3.1-3.2 (eqs. 7-8, 13): the D-GAT model for BenchMARL (``model=layers/dgat``).

Every agent ``i`` runs ``K`` D-GAT hops (:class:`~benchmarl_decentral.nn.DGAT`,
eqs. 7-8, per-agent parameters stacked on a leading agent dim) over the
communication graph to infer ``ô_i``, concatenates it to its own input
``õ_i = [x_i || ô_i]`` (eq. 13) and maps ``õ_i`` to the requested output with a
per-agent (stacked) MLP head; ``num_cells: null`` removes the head, so the
model outputs ``õ_i`` itself (DG-MAPPO uses it that way).

The communication graph ``A`` (bool ``(..., n, n)``, ``A[i, j]`` iff ``i``
receives from ``j``, as in :mod:`benchmarl_decentral.consensus.topology`) comes
from a topology of the consensus core, looked up by name in
:data:`GRAPH_BUILDERS`:

* ``radius``: agents within ``radius`` of each other, from positions read out
  of the observation (``position_dims``, optionally under ``position_key``),
  recomputed at every step (dynamic graph, paper sec. 2.1);
* ``knn_ring``, ``ring``, ``full``, ``custom``: a fixed graph;
* ``visibility``: SMAC-family ally visibility, the extension point: one
  entry in :data:`GRAPH_BUILDERS` (see there for a builder's signature).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, MISSING
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type

import torch
import torch.nn.functional as F
from benchmarl.models.common import Model, ModelConfig, parse_model_config
from benchmarl.utils import _read_yaml_config
from tensordict import TensorDictBase
from torch import nn, Tensor
from torchrl.modules import MultiAgentMLP

from benchmarl_decentral._paths import CONF_DIR
from benchmarl_decentral.consensus.topology import build_topology, check_topology_options, majority_graph, radius
from benchmarl_decentral.consensus.visibility import visibility_graph_builder
from benchmarl_decentral.distributed.transport import _is_batched, CommCounter, current_transport
from benchmarl_decentral.nn.dgat_conv import _ACTIVATIONS, DGAT, DGATConv, VALUE_MODES

__all__ = [
    "DGAT_MESSAGES",
    "DGAT_TOPOLOGIES",
    "GRAPH_BUILDERS",
    "Dgat",
    "DgatConfig",
    "check_dgat_options",
    "dgat_messages_value",
    "dense_dgat_conv",
    "majority_graph",
    "silenced_senders",
    "strongly_connected",
]

#: Topologies of the communication graph (``topology`` option).
DGAT_TOPOLOGIES: tuple[str, ...] = ("radius", "knn_ring", "ring", "full", "custom", "visibility")
_STATIC = ("knn_ring", "ring", "full", "custom")
#: Graphs built by these topologies never contain self loops (consensus/topology.py convention).
_NO_SELF_LOOPS = (*_STATIC, "radius")

#: Options read by some topologies only (refused with any other: set, i.e. not null).
DGAT_TOPOLOGY_OPTIONS: dict[str, tuple[str, ...]] = {
    "radius": ("radius",),
    "position_key": ("radius",),
    "position_dims": ("radius",),
    "k": ("knn_ring",),
    "adjacency": ("custom",),
    "graph_kwargs": ("visibility",),
}

#: Options of the D-GAT part shared by ``model=layers/dgat`` and ``algorithm=dg_mappo``.
DGAT_OPTIONS: tuple[str, ...] = (
    "num_hops",
    "hidden_channels",
    "heads",
    "value",
    "dgat_activation",
    "negative_slope",
    "dropout",
    "add_self_loops",
    "topology",
    "radius",
    "k",
    "adjacency",
    "position_key",
    "position_dims",
    "graph_kwargs",
    "dgat_messages",
)

#: ``dgat_messages``: ``on`` (eqs. 7-8 over the communication graph) or ``zero`` (ablation: the messages
#: of the other agents are zeroed, every agent attends to itself only; same parameters and shapes).
DGAT_MESSAGES: tuple[str, ...] = ("on", "zero")


def dgat_messages_value(value: Any) -> Any:
    """``dgat_messages`` as given, with YAML 1.1's reading of an unquoted ``on`` (``True``) taken as ``"on"``."""
    return "on" if value is True or value == "True" else value


# ----------------------------------------------------------------- validation
def check_dgat_options(
    *,
    prefix: str,
    num_hops: Optional[int],
    hidden_channels: int,
    heads: int,
    value: str,
    dgat_activation: Optional[str],
    dropout: float,
    add_self_loops: bool,
    topology: str,
    radius: Optional[float],
    k: Optional[int],
    adjacency: Optional[List[List[int]]],
    position_dims: Optional[List[int]],
    position_key: Optional[str] = None,
    graph_kwargs: Optional[Dict[str, Any]] = None,
    dgat_messages: str = "on",
    **_: Any,
) -> None:
    """Checks of the D-GAT options that need no task, raised as one clear ValueError.

    Args:
        prefix: where the options live on the command line (``"model"`` or
            ``"algorithm"``), so that each message names the key to set.
        The others: the options of :class:`DgatConfig`.
    """

    def fail(message: str) -> None:
        raise ValueError(f"D-GAT ({prefix}): {message}")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if num_hops is not None and (not is_int(num_hops) or num_hops < 1):
        fail(
            f"num_hops (K, eq. 8) must be an int >= 1 or null (= number of agents), got {num_hops!r}; "
            f"set {prefix}.num_hops"
        )
    if not is_int(heads) or heads < 1:
        fail(f"heads must be an int >= 1 (the paper uses 1, Table 2), got {heads!r}; set {prefix}.heads=1")
    if not is_int(hidden_channels) or hidden_channels < 1:
        fail(f"hidden_channels (attention size d', eq. 7) must be an int >= 1, got {hidden_channels!r}")
    if value not in VALUE_MODES:
        fail(f"unknown value mode {value!r}; choose one of {VALUE_MODES} ({prefix}.value)")
    if dgat_activation is not None and dgat_activation not in _ACTIVATIONS:
        fail(f"unknown dgat_activation {dgat_activation!r}; choose one of {tuple(_ACTIVATIONS)} or null")
    if not 0.0 <= dropout < 1.0:
        fail(f"dropout must be in [0, 1), got {dropout}")
    if dgat_messages not in DGAT_MESSAGES:
        fail(
            f"unknown dgat_messages {dgat_messages!r}; set {prefix}.dgat_messages=on (D-GAT messages over the "
            f"graph) or {prefix}.dgat_messages=zero (ablation: each agent sees only its own embedding)"
        )
    if topology not in DGAT_TOPOLOGIES:
        fail(f"unknown topology {topology!r}; choose one of {DGAT_TOPOLOGIES} ({prefix}.topology)")
    if topology == "radius":
        if position_dims is None:
            fail(
                "topology 'radius' needs each agent's position: set "
                f"{prefix}.position_dims=[start,stop] (the observation dims holding the position, "
                "e.g. [0,2] for vmas/navigation, [2,4] for pettingzoo/simple_spread)"
            )
        if radius is None or radius < 0:
            fail(f"topology 'radius' needs a communication radius >= 0: set {prefix}.radius (got {radius!r})")
    if position_dims is not None:
        dims = list(position_dims)
        if len(dims) != 2 or not all(is_int(d) for d in dims) or not 0 <= dims[0] < dims[1]:
            fail(
                f"position_dims must be [start, stop] with 0 <= start < stop (a slice of the "
                f"observation), got {position_dims!r}; set {prefix}.position_dims"
            )
    if topology == "knn_ring" and (not is_int(k) or k < 0):
        fail(f"topology 'knn_ring' needs k >= 0 neighbours per agent: set {prefix}.k (got {k!r})")
    if topology == "custom" and adjacency is None:
        fail(f"topology 'custom' needs an n x n 0/1 matrix: set {prefix}.adjacency")
    if not add_self_loops and topology in _NO_SELF_LOOPS:
        fail(
            "eq. 8 aggregates over N^i including agent i itself, but topology "
            f"{topology!r} gives no self loops and add_self_loops is false; set {prefix}.add_self_loops=true"
        )
    check_topology_options(
        owner=f"D-GAT ({prefix})", prefix=prefix, topology=topology,
        values={"radius": radius, "k": k, "adjacency": adjacency, "position_key": position_key,
                "position_dims": position_dims, "graph_kwargs": graph_kwargs},
        uses=DGAT_TOPOLOGY_OPTIONS, defaults={},
    )


def not_smac_message(owner: str, prefix: str, task: str) -> str:
    """The refusal of ``topology=visibility`` on a task without SMAC ally visibility."""
    return (
        f"{owner}: {prefix}.topology=visibility builds the communication graph from SMAC ally visibility, "
        f"but task {task} is not a SMAC-family task (smax/*, smacv2/*); use {prefix}.topology=full, ring, "
        f"knn_ring (with {prefix}.k), radius (with {prefix}.radius and {prefix}.position_dims) or custom "
        f"(with {prefix}.adjacency)."
    )


# ------------------------------------------------------------- graph helpers
def strongly_connected(adj: Tensor) -> Tensor:
    """000_ef718962e1e8f612.txt Assumption 1: whether each graph of a batch is (strongly) connected.

    Reachability by repeated squaring of ``A + I`` (``ceil(log2 n)`` batched
    boolean matrix products).

    Args:
        adj: bool adjacency ``(..., n, n)``.

    Returns:
        Bool tensor ``(...)``.
    """
    n = adj.shape[-1]
    reach = (adj.bool() | torch.eye(n, dtype=torch.bool, device=adj.device)).float()
    for _ in range(max(n - 1, 1).bit_length()):
        reach = (reach @ reach > 0).float()
    return reach.bool().flatten(-2).all(-1)


def _static_graph(model: "Dgat", tensordict: TensorDictBase, features: Optional[Tensor]) -> Tensor:
    """Fixed topology (``knn_ring``, ``ring``, ``full``, ``custom``): one ``(n, n)`` graph for all samples."""
    return model.static_adjacency


def _radius_graph(model: "Dgat", tensordict: TensorDictBase, features: Optional[Tensor]) -> Tensor:
    """000_ef718962e1e8f612.txt sec. 2.1: dynamic graph, agents within ``radius``, recomputed every step."""
    return radius(model.positions(tensordict, features), model.radius)


GraphBuilder = Callable[["Dgat", TensorDictBase, Optional[Tensor]], Tensor]

#: topology name -> ``fn(model, tensordict, features) -> bool adjacency (..., n, n) or (n, n)``.
#:
#: A builder receives the :class:`Dgat` model (``model.agent_group``,
#: ``model.n_agents``, ``model.position_key``, ``model.graph_kwargs`` with the
#: builder's own options), the tensordict the model is called on (or a
#: collected batch, or its ``"next"``) and the model's input features
#: ``(..., n, F)`` (``None`` when called on a batch), and returns
#: ``A[..., i, j]`` = agent ``i`` receives from ``j``. SMAC-family ally
#: visibility is the entry ``"visibility"``
#: (:func:`benchmarl_decentral.consensus.visibility.visibility_graph_builder`,
#: options in ``graph_kwargs``, e.g. ``{layout: smax}``); a topology with no
#: entry is refused when the model is built.
GRAPH_BUILDERS: Dict[str, GraphBuilder] = {
    "radius": _radius_graph,
    "knn_ring": _static_graph,
    "ring": _static_graph,
    "full": _static_graph,
    "custom": _static_graph,
    "visibility": visibility_graph_builder,
}


# ------------------------------------------------------------ a block of the agents
_BLOCK: list = []


@contextlib.contextmanager
def agent_block(n_agents: int, first: int, joint_key: Any = None):
    """:class:`Dgat` modules built within hold agents ``first .. first + m - 1`` of a group of ``n_agents``.

    ``m`` is the module's ``n_agents`` (``--agents local``: a process builds
    its block only). The module's inputs, parameters and outputs are the
    block's rows; its graph spans the whole group, and each hop's messages
    reach the block by global index (:meth:`Dgat.neighbour_rows`). A static
    topology needs nothing more; ``topology="radius"`` (positions read from
    the model's input features, ``position_key`` unset) reads every agent's
    positions from ``joint_key``, the group's joint observation ``(*B, n * F)``
    (agent-major, each agent's ``F`` features in the model's input order;
    :data:`~benchmarl_decentral.distributed.local.JOINT_OBSERVATION`), and
    ``topology="visibility"`` every agent's observation from it
    (:func:`~benchmarl_decentral.consensus.visibility.visibility_graph_builder`).
    Without ``joint_key`` both are refused.
    """
    _BLOCK.append((int(n_agents), int(first), joint_key))
    try:
        yield
    finally:
        _BLOCK.pop()


# ------------------------------------------------------------ dense fallback
#: Largest group for which :class:`Dgat` runs the dense form (:func:`dense_dgat_conv`) without gradient.
DENSE_MAX_AGENTS = 16


def dense_dgat_conv(conv: DGATConv, x: Tensor, adj: Tensor, block: Optional[Tuple[int, int]] = None) -> Tensor:
    r"""000_ef718962e1e8f612.txt eqs. 7-8 on dense masks: :class:`DGATConv`'s output without its edge list.

    Same parameters and same result as ``conv(x, adj)``, computed for all
    ``n x n`` pairs and masked, so that it runs inside ``torch.vmap`` where the
    edge list of a batched graph cannot be built (``nonzero`` has no batching
    rule). TorchRL's GAE calls critics under ``vmap``. :class:`Dgat` also
    uses it without gradient (collection, evaluation, GAE inputs) for groups
    of up to :data:`DENSE_MAX_AGENTS` agents, where it is faster than the
    edge list (issue 14 profile); with gradient the sparse layer is used. A
    layer with one parameter set (shared parameters) is applied to every agent.

    With ``block = (first, m)`` only the receivers ``first .. first + m - 1``
    are computed, with the layer's ``m`` per-agent parameter sets (a process
    that holds that block of agents only, ``--agents local``): ``x`` and
    ``adj`` still span all ``n`` senders.

    Args:
        conv: the layer whose parameters are used.
        x: node features ``(*B, n, F)``.
        adj: bool adjacency ``(*B, n, n)`` or ``(n, n)``.
        block: ``(first, m)``, the receivers to compute. (default: all ``n``)

    Returns:
        ``(*B, n, conv.out_dim)`` (``(*B, m, conv.out_dim)`` with ``block``),
        with ``conv.activation`` applied as in ``forward``.
    """
    n, heads, c = x.shape[-2], conv.heads, conv.out_channels
    first, m = (0, n) if block is None else block
    hc = heads * c

    def agents(p: Tensor | None) -> Tensor | None:  # shared parameters: one set for every agent
        return None if p is None else p.expand(m, *p.shape[1:])

    w_l, b_l = agents(conv.lin_l_weight), agents(conv.lin_l_bias)
    w_r, b_r = (w_l, b_l) if conv.share_weights else (agents(conv.lin_r_weight), agents(conv.lin_r_bias))
    receivers = x if block is None else x.narrow(-2, first, m)
    query = torch.einsum("...if,iof->...io", receivers, w_r)  # Theta_r^i h_i
    # Theta_l^i h_j, receiver-specific, for every (i, j): one matmul over all receivers' weights
    key = x @ w_l.reshape(m * hc, -1).T  # (..., j, i * hc)
    if b_r is not None:
        query = query + b_r
    if b_l is not None:
        key = key + b_l.reshape(m * hc)
    key = key.unflatten(-1, (m, hc)).transpose(-3, -2)  # (..., i, j, hc)
    z = F.leaky_relu(query.unsqueeze(-2) + key, conv.negative_slope).unflatten(-1, (heads, c))
    e = (z * agents(conv.att)[:, None]).sum(-1)  # eq. 7: (..., i, j, H)
    mask = adj.bool() if block is None else adj.bool().narrow(-2, first, m)
    if conv.add_self_loops:
        mask = mask | torch.eye(n, dtype=torch.bool, device=adj.device).narrow(0, first, m)
    mask = mask.unsqueeze(-1)
    alpha = torch.softmax(e.masked_fill(~mask, float("-inf")), dim=-2)  # eq. 8, over N(i)
    alpha = torch.where(mask, alpha, alpha.new_zeros(()))  # no neighbour at all: sum over the empty set
    alpha = F.dropout(alpha, p=conv.dropout, training=conv.training)
    if conv.value == "linear":
        out = torch.einsum("...ijh,...ijhc->...ihc", alpha, key.unflatten(-1, (heads, c)))
    else:
        out = alpha.transpose(-1, -2) @ x.unsqueeze(-3)  # (..., i, H, j) @ (..., 1, j, F): sum_j alpha_ij h_j
    out = out.flatten(-2) if conv.concat else out.mean(-2)
    if conv.bias is not None:
        out = out + agents(conv.bias)
    if conv.activation is not None:
        out = conv.activation(out)
    return out


# ------------------------------------------------------- evaluation dropout
_SILENCED: tuple = ()


@contextlib.contextmanager
def silenced_senders(agents):
    """Within this context, every D-GAT drops the edges whose sender is one of ``agents``.

    Used by the dropout evaluation (:mod:`benchmarl_decentral.evaluation_dropout`):
    ``A[i, j]`` is cleared for ``j`` in ``agents`` and ``i != j``, so nothing a
    silenced agent observes reaches another agent, at any hop; its self loop is
    kept (its own output is unused, its action being replaced by a no-op).

    Args:
        agents: indices within the model's group.
    """
    global _SILENCED
    previous, _SILENCED = _SILENCED, tuple(agents)
    try:
        yield
    finally:
        _SILENCED = previous


def _sender_mask(n: int, agents, device) -> Tensor:
    mask = torch.zeros(n, n, dtype=torch.bool, device=device)
    mask[:, list(agents)] = True
    return mask & ~torch.eye(n, dtype=torch.bool, device=device)


# --------------------------------------------------------------------- model
class Dgat(Model):
    r"""000_ef718962e1e8f612.txt sec. 3.1-3.2: K D-GAT hops, ``õ_i = [x_i || ô_i]`` (eq. 13), per-agent head.

    With ``share_params=False`` every agent has its own D-GAT (and head)
    parameters, stacked on a leading agent dim and run in one call (never
    ``n`` separate networks); with ``share_params=True`` one parameter set
    serves all agents.

    Args:
        num_hops: ``K``; ``None`` means the number of agents (eq. 8).
        hidden_channels: attention size ``d'`` of eq. 7.
        heads: attention heads (Table 2: 1); averaged.
        value: ``"identity"`` (eq. 8: ô_i in the input space) or ``"linear"``.
        dgat_activation: ``sigma`` of eq. 8 (``"elu"``, ``"relu"``, ``"tanh"``
            or ``None``).
        negative_slope: LeakyReLU slope of eq. 7.
        dropout: dropout on the attention coefficients (training only).
        add_self_loops: ``i`` in ``N^i`` (eq. 8); must be true for every
            topology whose graph has no self loops.
        topology: one of :data:`DGAT_TOPOLOGIES`.
        radius: communication radius of ``topology="radius"``.
        k: neighbours per agent of ``topology="knn_ring"``.
        adjacency: ``n x n`` 0/1 matrix of ``topology="custom"``
            (``adjacency[i][j] = 1`` iff i receives from j).
        position_key: key (inside the agent group) to read positions from;
            ``None`` reads them from this model's own input features.
        position_dims: ``[start, stop]``: the position is
            ``source[..., start:stop]``.
        graph_kwargs: extra options for topology builders (``visibility``).
        dgat_messages: ``"on"``: eqs. 7-8 over the communication graph;
            ``"zero"`` (ablation): the other agents' messages are zeroed, so
            agent ``i`` aggregates over ``N^i = {i}`` only and ``ô_i`` depends on
            its own input alone (same parameters and output shape; the graph is
            still built, e.g. for DG-MAPPO's eq. 11 and D-SGD mixing).
        num_cells: hidden sizes of the per-agent head on ``õ_i`` (``[]``: one
            linear layer); ``None``: no head, the output is ``õ_i``.
        activation_class: activation of the head.
        The remaining arguments are BenchMARL's (:class:`~benchmarl.models.Model`).

    Shapes:
        - **input:** the input keys ``(*B, n, F_k)``, concatenated into
          ``x`` ``(*B, n, F)``
        - **output:** ``(*B, n, out)`` (``(*B, out)`` for a centralised model
          with shared parameters)
    """

    def __init__(
        self,
        *,
        num_hops: Optional[int],
        hidden_channels: int,
        heads: int,
        value: str,
        dgat_activation: Optional[str],
        negative_slope: float,
        dropout: float,
        add_self_loops: bool,
        topology: str,
        radius: Optional[float],
        k: Optional[int],
        adjacency: Optional[List[List[int]]],
        position_key: Optional[str],
        position_dims: Optional[List[int]],
        graph_kwargs: Optional[Dict[str, Any]],
        num_cells: Optional[Sequence[int]],
        activation_class: Optional[Type[nn.Module]],
        dgat_messages: str = "on",
        **kwargs,
    ):
        self.topology = topology
        self.dgat_messages = dgat_messages
        self.radius = radius
        self.position_key = position_key
        self.position_dims = None if position_dims is None else tuple(position_dims)
        self.graph_kwargs = dict(graph_kwargs or {})
        self.add_self_loops = add_self_loops
        super().__init__(**kwargs)

        n = self.n_agents
        #: how the D-GAT messages reach the other agents (:meth:`neighbour_rows`): the transport installed
        #: while the model is built (:func:`~benchmarl_decentral.distributed.use_transport`; one process by default)
        self.transport = current_transport()
        #: the bytes of the messages since the owner last reset it (:class:`~benchmarl_decentral.distributed.CommCounter`)
        self.comm = CommCounter()
        self.feature_keys = list(self.in_keys)
        self.input_features = sum(spec.shape[-1] for spec in self.input_spec.values(True, True))
        if position_key is not None:
            key = (self.agent_group, position_key)
            if key not in self.in_keys:
                self.in_keys = [*self.in_keys, key]
            self._check_position_dims(self.input_spec.get(key, None))
        else:
            self._check_position_dims(self.input_features)

        if topology not in GRAPH_BUILDERS:
            raise ValueError(
                f"D-GAT: topology {topology!r} has no graph builder in this installation "
                f"(ally visibility comes with benchmarl_decentral.consensus.visibility); choose one of "
                f"{tuple(GRAPH_BUILDERS)}"
            )
        #: agents of the group (every agent, also where this process builds a block of them only: :func:`agent_block`)
        self.joint_agents = n
        #: ``(first, m)``: the block of the group's agents this module holds (:func:`agent_block`); ``None``: all
        self.block: Optional[Tuple[int, int]] = None
        #: the group's joint observation, where a block reads every agent's positions from (:func:`agent_block`)
        self.joint_key = None
        if _BLOCK:
            joint, first, joint_key = _BLOCK[-1]
            if topology in ("radius", "visibility") and joint_key is not None and position_key is None:
                self.joint_key = joint_key  # every agent's observation (positions, ally visibility)
                self.in_keys = [*self.in_keys, joint_key]
            elif topology not in _STATIC:
                raise ValueError(
                    f"topology {topology!r} is rebuilt from every agent's observation, which a process holding a "
                    "block of agents reads from the group's joint observation only (LocalAgentsTask(..., "
                    "joint_observation=True); a radius graph with positions from the model's input: position_key "
                    "unset); use a static topology (ring, knn_ring, full, custom)"
                )
            if not 0 <= first <= joint - n:
                raise ValueError(f"a block of {n} agents from agent {first} does not fit a group of {joint}")
            self.joint_agents, self.block = joint, (first, n)
        if topology in _STATIC:
            try:
                adj = build_topology(topology, self.joint_agents, k=k, adjacency=adjacency)
            except ValueError as err:
                raise ValueError(f"D-GAT: topology {topology!r} does not fit {self.joint_agents} agents: {err}") from None
            self.register_buffer("static_adjacency", adj.to(self.device))
        else:
            self.static_adjacency = None

        # one parameter set per agent (stacked), or one for all with share_params
        self.dgat = DGAT(
            self.input_features,
            hidden_channels,
            1 if self.share_params else n,
            num_hops=n if num_hops is None else num_hops,
            heads=heads,
            value=value,
            activation=dgat_activation,
            negative_slope=negative_slope,
            dropout=dropout,
            add_self_loops=add_self_loops,
        ).to(self.device)
        self.tilde_features = self.input_features + self.dgat.out_dim  # |õ_i| (eq. 13)

        self.output_features = self.output_leaf_spec.shape[-1]
        if num_cells is None:
            if self.output_features != self.tilde_features or not self.output_has_agent_dim:
                raise ValueError(
                    f"D-GAT with num_cells=null outputs õ_i = [x_i || ô_i] of size {self.tilde_features} per "
                    f"agent, but this model must output {tuple(self.output_leaf_spec.shape)}; set "
                    "num_cells to a list of hidden sizes ([] for one linear layer)"
                )
            self.head = None
        else:
            self.head = MultiAgentMLP(
                n_agent_inputs=self.tilde_features,
                n_agent_outputs=self.output_features,
                n_agents=n,
                centralized=self.centralised,
                share_params=self.share_params,
                device=self.device,
                depth=len(num_cells),
                num_cells=list(num_cells),
                activation_class=activation_class,
            )

    def _place(self, h: Tensor) -> Tensor:
        """The block's rows ``(*B, m, F)`` at their global indices of ``(*B, n, F)``, zeros elsewhere (gradient flows)."""
        first, m = self.block
        shape = list(h.shape)
        before, after = list(shape), list(shape)
        before[-2], after[-2] = first, self.joint_agents - first - m
        return torch.cat([h.new_zeros(before), h, h.new_zeros(after)], dim=-2)

    # ------------------------------------------------------------- checks
    def _perform_checks(self):
        super()._perform_checks()
        if not self.input_has_agent_dim:
            raise ValueError(
                "D-GAT needs inputs with the agent dimension (one observation per agent); it cannot "
                "read a global state. Use it on observations (first in a sequence for a critic)."
            )
        for key, spec in self.input_spec.items(True, True):
            if len(spec.shape) != 2 or spec.shape[0] != self.n_agents:
                raise ValueError(
                    f"D-GAT input {key} must have shape (n_agents={self.n_agents}, features), got {tuple(spec.shape)}"
                )
        if self.output_has_agent_dim and self.output_leaf_spec.shape[-2] != self.n_agents:
            raise ValueError("D-GAT output with the agent dimension must have n_agents as second to last dim")

    def _check_position_dims(self, source: Any) -> None:
        if self.position_dims is None:
            return
        width = source if isinstance(source, int) else (None if source is None else source.shape[-1])
        if width is not None and self.position_dims[1] > width:
            where = "the model input" if self.position_key is None else f"'{self.position_key}'"
            raise ValueError(
                f"D-GAT: position_dims={list(self.position_dims)} is outside {where}, which has {width} "
                "features per agent; set position_dims to the dims holding the agent position"
            )

    # ------------------------------------------------------------- graph
    def features(self, tensordict: TensorDictBase) -> Tensor:
        """``x`` ``(*B, n, F)``: the input keys concatenated."""
        return torch.cat([tensordict.get(key) for key in self.feature_keys], dim=-1)

    def positions(self, tensordict: TensorDictBase, features: Optional[Tensor] = None) -> Tensor:
        """Agent positions ``(*B, n, d)`` = ``source[..., start:stop]`` (``position_dims``)."""
        if self.position_dims is None:
            raise ValueError(
                f"D-GAT: topology {self.topology!r} reads agent positions, but position_dims is not set; "
                "set position_dims=[start,stop]"
            )
        if self.joint_key is not None:  # a block: every agent's input features, from the joint observation
            source = tensordict.get(self.joint_key).unflatten(-1, (self.joint_agents, -1))
        elif self.position_key is None:
            source = self.features(tensordict) if features is None else features
        else:
            source = tensordict.get((self.agent_group, self.position_key))
        start, stop = self.position_dims
        if stop > source.shape[-1]:
            self._check_position_dims(source.shape[-1])
        return source[..., start:stop]

    def communication_graph(self, tensordict: TensorDictBase, features: Optional[Tensor] = None) -> Tensor:
        """The graph D-GAT communicates over: bool ``(*B, n, n)`` or ``(n, n)`` (static), no self loops needed.

        Args:
            tensordict: holds the input keys (and ``position_key``) of a batch,
                e.g. a collected batch or its ``"next"`` sub-tensordict.
            features: ``x`` if already gathered. (default: None)
        """
        adj = GRAPH_BUILDERS[self.topology](self, tensordict, features)
        if _SILENCED:  # evaluation dropout: no agent receives from a silenced one
            adj = adj & ~_sender_mask(self.joint_agents, _SILENCED, adj.device)
        if not self.add_self_loops and not bool(adj.diagonal(dim1=-2, dim2=-1).all()):
            raise ValueError(
                f"D-GAT: eq. 8 aggregates over N^i including agent i, but the {self.topology!r} graph "
                "lacks self loops and add_self_loops is false; set add_self_loops=true"
            )
        return adj

    # ------------------------------------------------------------- forward
    #: Without gradient and with at most :data:`DENSE_MAX_AGENTS` agents, run the dense form of eqs. 7-8
    #: (:func:`dense_dgat_conv`, same result) instead of building an edge list: cheaper per environment step.
    dense_without_grad: bool = True

    def embed(self, x: Tensor, adj: Tensor) -> Tensor:
        """``ô`` ``(*B, n, out_dim)``: K D-GAT hops over ``adj`` (eqs. 7-8)."""
        dgat, n = self.dgat, self.n_agents
        if self.block is not None:
            return self._embed_block(x, adj)
        # inside torch.vmap there is no edge list for a batched graph; without gradient the dense form is cheaper
        dense = _is_batched(adj) or (
            self.dense_without_grad and n <= DENSE_MAX_AGENTS and not torch.is_grad_enabled()
        )
        batch = x.shape[:-2]
        if not dense and self.share_params:
            b = math.prod(batch)
            graphs = adj.expand(b, n, n) if adj.dim() == 2 else adj.reshape(b, n, n)
            g, tgt, src = graphs.nonzero(as_tuple=True)
            edge_index = torch.stack([g * n + src, g * n + tgt])
            agent = torch.zeros(b * n, dtype=torch.long, device=x.device)
            h = x.reshape(b * n, x.shape[-1])
        else:
            h = x
        for hop, conv in enumerate(dgat.convs):
            # eq. 8: agent i reads h_j of its neighbours j (hop 0: their inputs), as the transport delivers them
            h = self.neighbour_rows(h.reshape(*batch, n, h.shape[-1]), adj).reshape(h.shape)
            if dense:
                h = dense_dgat_conv(conv, h, adj)
            elif self.share_params:
                h = conv.forward_sparse(h, edge_index, agent)
            else:
                h = conv(h, adj)
            if dgat.act_last or hop < dgat.num_hops - 1:
                h = dgat.act(h)
        # what this process computed for agents held elsewhere is not theirs: no loss may train through it
        return self.transport.own_rows(h.reshape(*x.shape[:-1], dgat.out_dim))

    def _embed_block(self, x: Tensor, adj: Tensor) -> Tensor:
        """:meth:`embed` of a process that holds a block (:func:`agent_block`): ``x`` and the output are its rows.

        Every hop places the block's rows at their global indices, exchanges
        them (:meth:`neighbour_rows`: the neighbours' rows arrive, and their
        gradients go back) and runs eqs. 7-8 for the block's receivers only
        (:func:`dense_dgat_conv` with ``block``, with or without gradient).
        """
        dgat, h = self.dgat, x
        for hop, conv in enumerate(dgat.convs):
            h = dense_dgat_conv(conv, self.neighbour_rows(h, adj), adj, block=self.block)
            if dgat.act_last or hop < dgat.num_hops - 1:
                h = dgat.act(h)
        return h

    def neighbour_rows(self, h: Tensor, adj: Tensor) -> Tensor:
        """``h`` ``(*B, n, F)`` with every agent's neighbours' rows as they computed them (000 eqs. 7-8, 11).

        :meth:`~benchmarl_decentral.distributed.Transport.exchange_rows` over
        ``adj`` (``adj[..., i, j]``: ``i`` reads ``j``'s row): in one process
        ``h`` itself; across processes the rows travel point to point, and
        their gradients back. The bytes go to :attr:`comm`. A process that
        holds a block (:func:`agent_block`) passes its rows ``(*B, m, F)`` and
        gets ``(*B, n, F)``.
        """
        if self.block is not None and h.shape[-2] != self.joint_agents:
            h = self._place(h)
        return self.transport.exchange_rows(h, adj, self.comm.add)

    def local_mean(self, per_agent: Tensor) -> Tensor:
        """Mean of per-agent values ``(*B, n)`` over every sample and agent, the agents held elsewhere counted as 0.

        In one process, ``per_agent.mean()``. Across processes the other agents'
        terms are computed by their own process; here they would push
        gradients into this process's agents through their messages.
        """
        n = per_agent.shape[-1]
        if self.block is not None:  # the block's terms (per_agent spans the group: neighbour_rows' output)
            return per_agent.narrow(-1, self.block[0], self.block[1]).mean()
        held = self.transport.holds(torch.arange(n, device=per_agent.device), n)
        if bool(held.all()):
            return per_agent.mean()
        return torch.where(held, per_agent, per_agent.new_zeros(())).sum() / per_agent.numel()

    def message_graph(self, adj: Tensor) -> Tensor:
        """The graph the D-GAT hops run over: ``adj``, or with ``dgat_messages="zero"`` self loops only."""
        if self.dgat_messages == "on":
            return adj
        return torch.eye(self.joint_agents, dtype=torch.bool, device=adj.device)

    #: Set by a caller (DG-MAPPO's loss, around its actor) that will need the graph of the next forward:
    #: the forward then keeps ``(õ, graph)`` in :attr:`last_graph` (without a head only) for :meth:`graph_of`.
    record_graph: bool = False
    last_graph: Optional[Tuple[Tensor, Tensor]] = None

    def graph_of(self, tilde: Tensor) -> Optional[Tensor]:
        """The communication graph the recorded forward used to compute ``tilde`` (that very tensor).

        ``None`` when nothing was recorded or ``tilde`` is not that forward's
        output (then build it again with :meth:`communication_graph`). Clears
        the record.
        """
        record, self.last_graph = self.last_graph, None
        if record is None or record[0] is not tilde:
            return None
        return record[1]

    def _forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        x = self.features(tensordict)
        adj = self.communication_graph(tensordict, x)
        out = torch.cat([x, self.embed(x, self.message_graph(adj))], dim=-1)  # õ_i = [x_i || ô_i], eq. 13
        if self.record_graph and self.head is None:
            self.last_graph = (out, adj)
        if self.head is not None:
            out = self.head(out)
            if not self.output_has_agent_dim:  # centralised with shared parameters: all rows equal
                out = out[..., 0, :]
        tensordict.set(self.out_key, out)
        return tensordict


@dataclass
class DgatConfig(ModelConfig):
    """Configuration of :class:`Dgat` (defaults: ``conf/model/layers/dgat.yaml``)."""

    num_hops: Optional[int] = MISSING
    hidden_channels: int = MISSING
    heads: int = MISSING
    value: str = MISSING
    dgat_activation: Optional[str] = MISSING
    negative_slope: float = MISSING
    dropout: float = MISSING
    add_self_loops: bool = MISSING
    topology: str = MISSING
    radius: Optional[float] = MISSING
    k: Optional[int] = MISSING
    adjacency: Optional[List[List[int]]] = MISSING
    position_key: Optional[str] = MISSING
    position_dims: Optional[List[int]] = MISSING
    graph_kwargs: Optional[Dict[str, Any]] = MISSING
    num_cells: Optional[List[int]] = MISSING
    activation_class: Optional[Type[nn.Module]] = MISSING
    dgat_messages: str = "on"

    def __post_init__(self):
        self.dgat_messages = dgat_messages_value(self.dgat_messages)
        check_dgat_options(prefix="model", **self.__dict__)

    @staticmethod
    def associated_class():
        return Dgat

    @classmethod
    def get_from_yaml(cls, path: Optional[str] = None) -> "DgatConfig":
        """Load ``conf/model/layers/dgat.yaml`` (or ``path``); BenchMARL's loader reads only its own folder."""
        if path is None:
            path = str(CONF_DIR / "model" / "layers" / "dgat.yaml")
        return cls(**parse_model_config(_read_yaml_config(path)))
