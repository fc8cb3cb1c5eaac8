"""000_ef718962e1e8f612.txt sec. 3.1, eqs. 7-8 and 11: the D-GAT layer, its K-hop stack and the consensus loss.

Pure ``torch`` + ``torch_geometric``: nothing here imports BenchMARL, torchrl or hydra.
Adjacency convention as in :mod:`benchmarl_decentral.consensus.topology`: a bool
``adj[..., i, j]`` is True iff agent ``i`` receives from agent ``j``; PyG
``edge_index`` rows are ``(source j, target i)``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import Parameter
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.nn.conv import GATv2Conv
from torch_geometric.nn.inits import glorot, uniform, zeros
from torch_geometric.utils import add_self_loops as _add_self_loops
from torch_geometric.utils import remove_self_loops, softmax

__all__ = ["DGATConv", "DGAT", "consensus_loss", "VALUE_MODES"]

#: what is aggregated (eq. 8): ``identity`` = the neighbour's raw features
#: :math:`h_j`; ``linear`` = the receiver's transform :math:`\Theta^i_l h_j` (GATv2)
VALUE_MODES: tuple[str, ...] = ("identity", "linear")


def _check_positive(name: str, value: int, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}; {fix}")


class _AgentMajor:
    """Rows regrouped by agent into a padded ``(n, width)`` layout, without a loop over agents.

    Row ``r`` of group ``group[r]`` gets slot ``group * width + its rank in the
    group``; ``width`` is the largest group. Per-agent work then runs as one
    ``bmm`` / broadcast over the agent dim, and ``unpack`` returns to row order.
    Padding slots point at row 0 and are never read back. ``grouped=True``
    promises that ``group`` is already sorted (skips an argsort); sorted with
    equal counts (a fixed regular graph) needs no padding and no copies.
    """

    def __init__(self, group: Tensor, n: int, *, grouped: bool = False) -> None:
        rows = group.numel()
        counts = torch.bincount(group, minlength=n)
        self.n, self.rows = n, rows
        self.width = int(counts.max()) if rows else 0
        self.slot: Tensor | None = None  # None: identity (no padding, already sorted)
        if grouped and self.width * n == rows:
            return
        rank = torch.arange(rows, device=group.device)
        if not grouped:
            rank = torch.empty_like(rank).scatter_(0, torch.argsort(group, stable=True), rank)
        self.slot = group * self.width + rank - (counts.cumsum(0) - counts)[group]

    def pack_index(self, index: Tensor) -> Tensor:
        """``(rows,)`` -> ``(n * width,)`` index tensor in slot order (0 on padding)."""
        if self.slot is None:
            return index
        return index.new_zeros(self.n * self.width).index_copy_(0, self.slot, index)

    def unpack(self, t: Tensor) -> Tensor:
        """``(n, width, ...)`` -> ``(rows, ...)`` in row order."""
        t = t.reshape(self.n * self.width, *t.shape[2:])
        return t if self.slot is None else t.index_select(0, self.slot)


def _bmm_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``(n, m, F) x (n, O, F) [+ (n, O)] -> (n, m, O)``: agent a's Linear on its rows."""
    w_t = weight.transpose(1, 2)
    return torch.bmm(x, w_t) if bias is None else torch.baddbmm(bias.unsqueeze(1), x, w_t)


class DGATConv(MessagePassing):
    r"""000_ef718962e1e8f612.txt sec. 3.1, eqs. 7-8: distributed GATv2 layer, one parameter set per agent.

    Every agent :math:`i` scores its in-neighbours with its *own* attention
    parameters :math:`\psi^i = \{\mathbf{W}^i, \mathbf{q}^i\}` (dynamic GATv2
    attention, eq. 7) and aggregates them (eq. 8):

    .. math::
        e^i(\mathbf{h}_i, \mathbf{h}_j) = {\mathbf{q}^i}^{\top}
        \mathrm{LeakyReLU}\left(\mathbf{W}^i [\mathbf{h}_i \,\|\, \mathbf{h}_j]\right)
        = {\mathbf{q}^i}^{\top}\mathrm{LeakyReLU}\left(
        \mathbf{\Theta}^i_{r}\mathbf{h}_i + \mathbf{\Theta}^i_{l}\mathbf{h}_j\right),

    .. math::
        \alpha_{ij} = \frac{\exp e^i(\mathbf{h}_i, \mathbf{h}_j)}
        {\sum_{k \in \mathcal{N}(i)} \exp e^i(\mathbf{h}_i, \mathbf{h}_k)},
        \qquad
        \mathbf{h}'_i = \sigma\left(\sum_{j \in \mathcal{N}(i)} \alpha_{ij}
        \mathbf{v}^i_j + \mathbf{b}^i\right),

    where :math:`\mathbf{W}^i = [\mathbf{\Theta}^i_r \,\|\, \mathbf{\Theta}^i_l]`
    (with GATv2's biases inside each half), :math:`\mathcal{N}(i)` includes
    :math:`i` when ``add_self_loops``, and the value is
    :math:`\mathbf{v}^i_j = \mathbf{h}_j` (``value="identity"``, eq. 8 as
    written) or :math:`\mathbf{v}^i_j = \mathbf{\Theta}^i_l \mathbf{h}_j`
    (``value="linear"``, exactly :class:`~torch_geometric.nn.conv.GATv2Conv`).
    With one agent's parameters copied to all agents the layer *is*
    :class:`~torch_geometric.nn.conv.GATv2Conv` (see :meth:`from_gatv2`).
    Eq. 8 leaves :math:`\sigma` unnamed; ``activation=None`` (identity) keeps
    the layer comparable to GATv2, and :class:`DGAT` applies a nonlinearity
    between hops.

    Every learnable tensor is stacked on a leading agent dim (shape
    ``(n_agents, ...)``), ready for D-SGD neighbour averaging (eq. 9). An edge
    :math:`j \to i` always uses its *receiver's* parameters, found by indexing
    with the agent index of the target node, so one call handles any batch of
    graphs with no loop over agents: the edges are regrouped by receiver agent
    (padded ``(n, width)`` layout) so that :math:`\mathbf{\Theta}^i_l` and
    :math:`\mathbf{q}^i` apply by one ``bmm`` and one broadcast. Cost: the key
    :math:`\mathbf{\Theta}^i_l\mathbf{h}_j` depends on the receiver, so it is
    computed per *edge* (``E`` rows) instead of per node as in GATv2.
    Eq. 8 normalises with a softmax (Fig. 1's caption says "Softplus
    normalization"; the equation is followed here).

    Args:
        in_channels (int): Size :math:`F` of each node's features.
        out_channels (int): Size :math:`C` of the attention space (rows of
            :math:`\mathbf{\Theta}^i`, :math:`d'` in eq. 7); also the value
            size for ``value="linear"``.
        n_agents (int): Number of agents :math:`n`, i.e. parameter sets.
        heads (int, optional): Number of attention heads (the paper uses 1).
            (default: :obj:`1`)
        concat (bool, optional): Concatenate the heads' outputs (:obj:`True`)
            or average them (:obj:`False`), as GATv2. (default: :obj:`True`)
        negative_slope (float, optional): LeakyReLU negative slope.
            (default: :obj:`0.2`)
        value (str, optional): ``"identity"`` (aggregate :math:`\mathbf{h}_j`,
            eq. 8) or ``"linear"`` (aggregate :math:`\mathbf{\Theta}^i_l
            \mathbf{h}_j`, GATv2). (default: :obj:`"identity"`)
        dropout (float, optional): Dropout probability on the normalised
            attention coefficients (training only). (default: :obj:`0.0`)
        add_self_loops (bool, optional): Let every agent attend to itself
            (GATv2 semantics: existing self loops are replaced by exactly one).
            If :obj:`False` the graph is used as given, diagonal included.
            (default: :obj:`True`)
        bias (bool, optional): Learn the biases of :math:`\mathbf{\Theta}^i_l`,
            :math:`\mathbf{\Theta}^i_r` and the output bias :math:`\mathbf{b}^i`
            (all together, as GATv2). (default: :obj:`True`)
        share_weights (bool, optional): Use
            :math:`\mathbf{\Theta}^i_r = \mathbf{\Theta}^i_l` (per agent).
            (default: :obj:`False`)
        activation (callable, optional): :math:`\sigma` of eq. 8, applied to
            the output; :obj:`None` means identity. (default: :obj:`None`)

    Shapes:
        - **input** (:meth:`forward`): node features :math:`(*B, n, F)`,
          bool adjacency :math:`(*B, n, n)` or :math:`(n, n)` (shared by all
          graphs), ``adj[..., i, j]`` = agent :math:`i` receives from :math:`j`
        - **output** (:meth:`forward`): :math:`(*B, n, F_{out})` with
          :math:`F_{out} = H \cdot C'` if ``concat`` else :math:`C'`, where
          :math:`C' = C` for ``"linear"`` and :math:`C' = F` for ``"identity"``
          (see :attr:`out_dim`)
        - **input** (:meth:`forward_sparse`): node features :math:`(N, F)`,
          edge indices :math:`(2, E)` (row 0 source, row 1 target), agent
          index :math:`(N,)` in :math:`[0, n)`
        - **output** (:meth:`forward_sparse`): :math:`(N, F_{out})`
        - **parameters**: ``lin_l_weight`` / ``lin_r_weight``
          :math:`(n, H C, F)`, ``lin_l_bias`` / ``lin_r_bias``
          :math:`(n, H C)`, ``att`` :math:`(n, H, C)`, ``bias``
          :math:`(n, F_{out})`
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        n_agents: int,
        *,
        heads: int = 1,
        concat: bool = True,
        negative_slope: float = 0.2,
        value: str = "identity",
        dropout: float = 0.0,
        add_self_loops: bool = True,
        bias: bool = True,
        share_weights: bool = False,
        activation: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__(aggr="add", node_dim=0)
        _check_positive("in_channels", in_channels, "pass the node feature size F (lazy -1 is not supported)")
        _check_positive("out_channels", out_channels, "pass the attention size C >= 1")
        _check_positive("n_agents", n_agents, "pass the number of agents (parameter sets) n >= 1")
        _check_positive("heads", heads, "use heads=1 as in the paper, or more")
        if value not in VALUE_MODES:
            raise ValueError(f"unknown value mode {value!r}; choose one of {VALUE_MODES}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.n_agents = n_agents
        self.heads = heads
        self.concat = concat
        self.negative_slope = negative_slope
        self.value = value
        self.dropout = dropout
        self.add_self_loops = add_self_loops
        self.share_weights = share_weights
        self.activation = activation

        hc = heads * out_channels
        self.lin_l_weight = Parameter(torch.empty(n_agents, hc, in_channels))
        self.lin_l_bias = Parameter(torch.empty(n_agents, hc)) if bias else None
        if share_weights:
            self.register_parameter("lin_r_weight", None)
            self.register_parameter("lin_r_bias", None)
        else:
            self.lin_r_weight = Parameter(torch.empty(n_agents, hc, in_channels))
            self.lin_r_bias = Parameter(torch.empty(n_agents, hc)) if bias else None
        self.att = Parameter(torch.empty(n_agents, heads, out_channels))
        self.bias = Parameter(torch.empty(n_agents, self.out_dim)) if bias else None
        self.reset_parameters()

    # ------------------------------------------------------------------ setup
    @property
    def out_dim(self) -> int:
        """Output feature size :math:`F_{out}`."""
        c = self.out_channels if self.value == "linear" else self.in_channels
        return c * (self.heads if self.concat else 1)

    def reset_parameters(self) -> None:
        """GATv2's initialisation, drawn independently for every agent.

        Glorot on each ``(H C, F)`` weight and each ``(H, C)`` attention vector
        (:func:`~torch_geometric.nn.inits.glorot` uses the last two dims, so the
        stacked tensor gets the per-agent bound), ``U(±1/sqrt(F))`` for the
        projection biases (PyG ``Linear``), zeros for the output bias.
        """
        super().reset_parameters()
        for w, b in ((self.lin_l_weight, self.lin_l_bias), (self.lin_r_weight, self.lin_r_bias)):
            if w is not None:
                glorot(w)
            if b is not None:
                uniform(self.in_channels, b)
        glorot(self.att)
        zeros(self.bias)

    @classmethod
    def from_gatv2(cls, conv: GATv2Conv, n_agents: int) -> DGATConv:
        """A D-GAT whose every agent holds a copy of ``conv``'s parameters (``value="linear"``).

        The oracle of this layer: on any graph its output equals ``conv``'s.
        Copies (not views): the agents' parameters diverge once trained.

        Args:
            conv (GATv2Conv): a homogeneous GATv2 layer without edge features or
                residual connection.
            n_agents (int): number of agents.
        """
        if not isinstance(conv, GATv2Conv):
            raise ValueError(f"from_gatv2 needs a torch_geometric GATv2Conv, got {type(conv).__name__}")
        if not isinstance(conv.in_channels, int) or conv.in_channels < 1:
            raise ValueError(
                f"from_gatv2 needs in_channels as a positive int, got {conv.in_channels!r}; "
                "bipartite and lazy (-1) GATv2Conv have no D-GAT equivalent"
            )
        if conv.edge_dim is not None or conv.res is not None:
            raise ValueError("from_gatv2 supports GATv2Conv without edge_dim and residual; build it with both off")
        dgat = cls(
            conv.in_channels,
            conv.out_channels,
            n_agents,
            heads=conv.heads,
            concat=conv.concat,
            negative_slope=conv.negative_slope,
            value="linear",
            dropout=conv.dropout,
            add_self_loops=conv.add_self_loops,
            bias=conv.bias is not None,
            share_weights=conv.share_weights,
        ).to(device=conv.att.device, dtype=conv.att.dtype)

        def tile(dst: Tensor | None, src: Tensor | None) -> None:
            if dst is not None:
                dst.copy_(src.detach().reshape(dst.shape[1:]).expand_as(dst))

        with torch.no_grad():
            tile(dgat.lin_l_weight, conv.lin_l.weight)
            tile(dgat.lin_l_bias, conv.lin_l.bias)
            tile(dgat.lin_r_weight, None if conv.share_weights else conv.lin_r.weight)
            tile(dgat.lin_r_bias, None if conv.share_weights else conv.lin_r.bias)
            tile(dgat.att, conv.att)
            tile(dgat.bias, conv.bias)
        return dgat

    # --------------------------------------------------------------- forward
    def forward(self, x: Tensor, adj: Tensor, *, return_attention_weights: bool = False):
        r"""Dense-batched API: ``n`` agents per graph, any batch shape.

        The batch is flattened into one PyG graph (node ``b * n + i`` is agent
        ``i`` of graph ``b``) and run through :meth:`propagate`.

        Args:
            x (Tensor): node features ``(*B, n, F)``.
            adj (Tensor): bool adjacency ``(*B, n, n)`` or ``(n, n)``,
                ``adj[..., i, j]`` iff ``i`` receives from ``j``.
            return_attention_weights (bool, optional): also return the dense
                attention ``(*B, n, n, H)`` (``[..., i, j, h]`` = :math:`\alpha_{ij}`,
                0 off the graph). (default: :obj:`False`)

        Returns:
            ``(*B, n, F_out)`` (and the attention if asked).
        """
        n = self.n_agents
        if x.dim() < 2 or x.shape[-2] != n or x.shape[-1] != self.in_channels:
            raise ValueError(
                f"x must have shape (*B, n_agents={n}, in_channels={self.in_channels}), got "
                f"{tuple(x.shape)}; the layer holds parameters for {n} agents, build it with "
                "n_agents matching x.shape[-2] (or use forward_sparse with an agent index)"
            )
        batch = x.shape[:-2]
        if not torch.is_tensor(adj) or adj.dtype != torch.bool:
            raise ValueError("adj must be a torch.bool adjacency (i receives from j); pass adj.bool() or adj > 0")
        if adj.dim() < 2 or adj.shape[-2:] != (n, n):
            raise ValueError(
                f"adj must have shape (*B, {n}, {n}) or ({n}, {n}) for x of shape {tuple(x.shape)}, "
                f"got {tuple(adj.shape)}"
            )
        if adj.dim() > 2 and adj.shape[:-2] != batch:
            raise ValueError(
                f"adj batch shape {tuple(adj.shape[:-2])} does not match x batch shape {tuple(batch)}; "
                f"pass one ({n}, {n}) graph for all, or one per sample"
            )
        b = math.prod(batch)
        if self.add_self_loops:
            adj = adj | torch.eye(n, dtype=torch.bool, device=adj.device)
        # edges in receiver-agent-major order (agent i, graph g, sender j), so that every
        # receiver's edges are contiguous for the grouped key projection
        if adj.dim() == 2:  # one graph for all: tile its edges instead of expanding adj
            tgt, src = adj.nonzero(as_tuple=True)
            g = torch.arange(b, device=adj.device).repeat(tgt.numel())
            tgt, src = tgt.repeat_interleave(b), src.repeat_interleave(b)
        else:
            tgt, g, src = adj.reshape(b, n, n).transpose(0, 1).nonzero(as_tuple=True)
        # big graph: node g * n + i is agent i of graph g
        edge_index = torch.stack([g * n + src, g * n + tgt])

        xb = x.reshape(b, n, self.in_channels)
        # receiver's own Theta_r h_i: node g * n + i is agent i, one batched matmul over agents
        w_r, b_r = self._lin_r()
        query = torch.einsum("bnf,nof->bno", xb, w_r)
        if b_r is not None:
            query = query + b_r
        query = query.reshape(b * n, self.heads, self.out_channels)
        out, alpha = self._attend(xb.reshape(b * n, self.in_channels), query, edge_index, tgt, grouped=True)
        out = out.view(*batch, n, self.out_dim)
        if self.bias is not None:
            out = out + self.bias
        if self.activation is not None:
            out = self.activation(out)
        if not return_attention_weights:
            return out
        dense = alpha.new_zeros(b, n, n, self.heads)
        dense[g, tgt, src] = alpha
        return out, dense.view(*batch, n, n, self.heads)

    def forward_sparse(
        self,
        x: Tensor,
        edge_index: Tensor,
        agent_index: Tensor,
        *,
        return_attention_weights: bool = False,
    ):
        """Sparse API: any PyG graph whose node ``v`` is played by agent ``agent_index[v]``.

        Args:
            x (Tensor): node features ``(N, F)``.
            edge_index (Tensor): ``(2, E)``, row 0 source ``j``, row 1 target ``i``.
            agent_index (Tensor): long ``(N,)`` in ``[0, n_agents)``: whose
                parameters node ``v`` uses when it receives.
            return_attention_weights (bool, optional): also return
                ``(edge_index, alpha)`` with self loops as used and ``alpha``
                of shape ``(E', H)``. (default: :obj:`False`)

        Returns:
            ``(N, F_out)`` (and the attention if asked).
        """
        n = self.n_agents
        if x.dim() != 2 or x.shape[-1] != self.in_channels:
            raise ValueError(f"x must have shape (N, in_channels={self.in_channels}), got {tuple(x.shape)}")
        num_nodes = x.shape[0]
        if agent_index.shape != (num_nodes,) or agent_index.dtype != torch.long:
            raise ValueError(f"agent_index must be a long tensor of shape ({num_nodes},), one agent per node")
        if num_nodes and (agent_index.min() < 0 or agent_index.max() >= n):
            raise ValueError(f"agent_index must lie in [0, {n - 1}]: the layer holds parameters for n_agents={n}")
        if edge_index.dim() != 2 or edge_index.shape[0] != 2:
            raise ValueError(f"edge_index must have shape (2, E), got {tuple(edge_index.shape)}")
        if edge_index.numel() and (edge_index.min() < 0 or edge_index.max() >= num_nodes):
            raise ValueError(f"edge_index refers to nodes outside [0, {num_nodes - 1}]")
        if self.add_self_loops:
            edge_index, _ = remove_self_loops(edge_index)
            edge_index, _ = _add_self_loops(edge_index, num_nodes=num_nodes)
        w_r, b_r = self._lin_r()
        # receiver's own Theta_r h_i: nodes regrouped by agent, one batched matmul
        nodes = _AgentMajor(agent_index, n)
        x_own = x.index_select(0, nodes.pack_index(torch.arange(num_nodes, device=x.device)))
        query = nodes.unpack(_bmm_linear(x_own.view(n, nodes.width, self.in_channels), w_r, b_r))
        query = query.view(num_nodes, self.heads, self.out_channels)
        out, alpha = self._attend(x, query, edge_index, agent_index[edge_index[1]])
        if self.bias is not None:
            out = out + self.bias[agent_index]
        if self.activation is not None:
            out = self.activation(out)
        if return_attention_weights:
            return out, (edge_index, alpha)
        return out

    # --------------------------------------------------------------- helpers
    def _lin_r(self) -> tuple[Tensor, Tensor | None]:
        if self.share_weights:
            return self.lin_l_weight, self.lin_l_bias
        return self.lin_r_weight, self.lin_r_bias

    def _attend(
        self, x: Tensor, query: Tensor, edge_index: Tensor, agent_tgt: Tensor, *, grouped: bool = False
    ) -> tuple[Tensor, Tensor]:
        r"""Eqs. 7-8 on a PyG graph: receiver-specific scores, softmax, ``propagate``.

        ``agent_tgt`` is the agent index of every edge's target (the receiver
        whose parameters the edge uses; ``grouped`` if the edges are already
        sorted by it). The scores are computed with the edges regrouped by
        receiver agent, so that :math:`\Theta^i_l` and :math:`q^i` apply by one
        ``bmm`` and a broadcast (no per-edge copy of any parameter).
        Returns ``(N, F_out)`` before the output bias, and ``alpha`` ``(E, H)``.
        """
        num_nodes, n, heads, c = x.shape[0], self.n_agents, self.heads, self.out_channels
        src, tgt = edge_index
        pack = _AgentMajor(agent_tgt, n, grouped=grouped)
        x_j = x.index_select(0, pack.pack_index(src)).view(n, pack.width, x.shape[1])  # h_j, by receiver agent
        key = _bmm_linear(x_j, self.lin_l_weight, self.lin_l_bias).view(n, pack.width, heads, c)
        query_i = query.index_select(0, pack.pack_index(tgt)).view(n, pack.width, heads, c)
        z = F.leaky_relu(query_i + key, self.negative_slope)
        e = pack.unpack((z * self.att.unsqueeze(1)).sum(dim=-1))  # eq. 7: (E, H)
        alpha = self.edge_updater(edge_index, e=e, size=(num_nodes, num_nodes))
        value = pack.unpack(key if self.value == "linear" else x_j.unsqueeze(2))
        out = self.propagate(edge_index, value=value, alpha=alpha, size=(num_nodes, num_nodes))
        out = out.reshape(num_nodes, self.out_dim) if self.concat else out.mean(dim=1)
        return out, alpha

    def edge_update(self, e: Tensor, index: Tensor, ptr: Tensor | None, dim_size: int | None) -> Tensor:
        alpha = softmax(e, index, ptr, dim_size)  # eq. 8, over N(i)
        return F.dropout(alpha, p=self.dropout, training=self.training)

    def message(self, value: Tensor, alpha: Tensor) -> Tensor:
        return value * alpha.unsqueeze(-1)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, n_agents={self.n_agents}, "
            f"heads={self.heads}, value={self.value!r})"
        )


_ACTIVATIONS: dict[str, type[nn.Module]] = {"elu": nn.ELU, "relu": nn.ReLU, "tanh": nn.Tanh}


class DGAT(nn.Module):
    r"""000_ef718962e1e8f612.txt sec. 3.1 (eq. 8, Fig. 1): K stacked D-GAT hops giving each agent's ô_i.

    Hop ``k`` maps :math:`h_k \to h_{k+1} = \sigma(\mathrm{DGATConv}_k(h_k, A))`;
    the paper stacks ``K = n`` layers so that information crosses any connected
    graph. Every hop has its own per-agent parameters (stacked on dim 0, so
    all leaves of this module have shape ``(n_agents, ...)``).

    Args:
        in_channels (int): observation size :math:`F`.
        hidden_channels (int): attention size :math:`d'` of every hop (and the
            feature size for ``value="linear"``).
        n_agents (int): number of agents :math:`n`.
        num_hops (int, optional): :math:`K`; :obj:`None` means ``n_agents``
            (eq. 8). (default: :obj:`None`)
        heads (int, optional): attention heads per hop. (default: :obj:`1`)
        concat (bool, optional): concatenate heads (else average; averaging
            keeps the size constant with ``"identity"``). (default: :obj:`False`)
        value (str, optional): ``"identity"`` (eq. 8: ô_i stays in observation
            space, size ``F``) or ``"linear"``. (default: :obj:`"identity"`)
        activation (str or callable, optional): :math:`\sigma`; eq. 8 does
            not name it, ELU is GAT's choice. ``"elu"``, ``"relu"``, ``"tanh"``,
            a callable, or :obj:`None` for identity. (default: ``"elu"``)
        act_last (bool, optional): apply :math:`\sigma` after the last hop
            too (eq. 8 applies it in every layer); :obj:`False` puts it only
            between hops. (default: :obj:`True`)
        **conv_kwargs: ``negative_slope``, ``dropout``, ``add_self_loops``,
            ``bias``, ``share_weights`` of :class:`DGATConv`.

    Shapes:
        - **input:** ``x`` :math:`(*B, n, F)`, ``adj`` bool :math:`(*B, n, n)` or :math:`(n, n)`
        - **output:** :math:`(*B, n,` :attr:`out_dim` :math:`)`
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        n_agents: int,
        *,
        num_hops: int | None = None,
        heads: int = 1,
        concat: bool = False,
        value: str = "identity",
        activation: str | Callable[[Tensor], Tensor] | None = "elu",
        act_last: bool = True,
        **conv_kwargs,
    ) -> None:
        super().__init__()
        num_hops = n_agents if num_hops is None else num_hops
        _check_positive("num_hops", num_hops, "use K >= 1 hops (None means K = n_agents, as in the paper)")
        self.num_hops = num_hops
        if isinstance(activation, str):
            if activation not in _ACTIVATIONS:
                raise ValueError(
                    f"unknown activation {activation!r}; choose one of {tuple(_ACTIVATIONS)} or pass a callable"
                )
            activation = _ACTIVATIONS[activation]()
        self.act = nn.Identity() if activation is None else activation
        self.act_last = act_last
        convs, dim = [], in_channels
        for _ in range(num_hops):
            conv = DGATConv(dim, hidden_channels, n_agents, heads=heads, concat=concat, value=value, **conv_kwargs)
            convs.append(conv)
            dim = conv.out_dim
        self.convs = nn.ModuleList(convs)
        self.out_dim = dim

    def reset_parameters(self) -> None:
        for conv in self.convs:
            conv.reset_parameters()

    def forward(self, x: Tensor, adj: Tensor) -> Tensor:
        """``(*B, n, F), (*B|-, n, n) -> (*B, n, out_dim)``: ô_i after K hops."""
        for k, conv in enumerate(self.convs):
            x = conv(x, adj)
            if self.act_last or k < self.num_hops - 1:
                x = self.act(x)
        return x


def consensus_loss(
    h: Tensor,
    adj: Tensor,
    *,
    reduction: str = "mean",
    detach_neighbours: bool = False,
) -> Tensor:
    r"""000_ef718962e1e8f612.txt eq. 11 (without alpha_consensus): neighbour disagreement of D-GAT embeddings.

    .. math::
        \mathcal{L}^i = \frac{1}{|\mathcal{N}^i|} \sum_{j \in \mathcal{N}^i}
        \mathrm{MSE}(\hat{h}^i, \hat{h}^j),
        \qquad \mathrm{MSE}(a, b) = \frac{1}{F}\sum_f (a_f - b_f)^2,

    with :math:`\mathcal{N}^i = \{j \ne i : A_{ij}\}` (the diagonal is ignored;
    an agent without neighbours contributes 0). Multiply by
    :math:`\alpha_{consensus}` (20 in A.3) outside.

    Args:
        h: embeddings ``(*B, n, F)``.
        adj: bool adjacency ``(*B, n, n)`` or ``(n, n)``, ``adj[..., i, j]`` iff i receives from j.
        reduction: ``"mean"`` (scalar, averaged over agents and batch) or
            ``"none"`` (per-agent ``(*B, n)``, one loss per agent as in eq. 11).
            (default: ``"mean"``)
        detach_neighbours: treat the neighbours' :math:`\hat{h}^j` as received
            constants, so agent i's loss pulls only on :math:`\hat{h}^i`.
            (default: False)
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"unknown reduction {reduction!r}; choose 'mean' or 'none'")
    if h.dim() < 2:
        raise ValueError(f"h must have shape (*B, n, F), got {tuple(h.shape)}")
    n = h.shape[-2]
    if not torch.is_tensor(adj) or adj.dtype != torch.bool:
        raise ValueError("adj must be a torch.bool adjacency (i receives from j); pass adj.bool() or adj > 0")
    if adj.dim() < 2 or adj.shape[-2:] != (n, n) or (adj.dim() > 2 and adj.shape[:-2] != h.shape[:-2]):
        raise ValueError(
            f"adj must have shape ({n}, {n}) or (*B, {n}, {n}) matching h {tuple(h.shape)}, got {tuple(adj.shape)}"
        )
    other = h.detach() if detach_neighbours else h
    mse = (h.unsqueeze(-2) - other.unsqueeze(-3)).pow(2).mean(-1)  # [..., i, j] = MSE(h_i, h_j)
    mask = adj & ~torch.eye(n, dtype=torch.bool, device=adj.device)
    per_agent = torch.where(mask, mse, mse.new_zeros(())).sum(-1) / mask.sum(-1).clamp(min=1)
    return per_agent.mean() if reduction == "mean" else per_agent
