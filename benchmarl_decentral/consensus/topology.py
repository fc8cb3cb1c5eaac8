"""Communication topologies as dense boolean adjacency matrices.

Convention (shared by the whole package): ``A`` is a ``torch.bool`` tensor of
shape ``(n, n)`` (or ``(..., n, n)`` for dynamic graphs) with ``A[i, j] = True``
iff agent ``i`` *receives* from agent ``j``. No function here puts self loops on
the diagonal; mixing matrices (:mod:`.mixing`) add them.

Nothing here imports BenchMARL, hydra or torchrl.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

TOPOLOGIES: tuple[str, ...] = ("knn_ring", "ring", "full", "custom")


def _check_n(n: int) -> None:
    if n < 1:
        raise ValueError(f"a topology needs at least one agent, got n={n}; pass n >= 1")


def _eye(n: int, device: torch.device | None = None) -> Tensor:
    return torch.eye(n, dtype=torch.bool, device=device)


def knn_ring(n: int, k: int) -> Tensor:
    """002_4f291ba56d03e11d.txt sec. 3, Fig. 1: k-nearest-neighbour ring.

    Agents sit on a circle and agent ``i`` receives from its ``k`` nearest:
    offsets ``±1 .. ±k/2`` for even ``k``; for odd ``k`` offsets
    ``±1 .. ±(k-1)/2`` plus the one-directional offset ``+(k+1)/2`` (the red
    edges of Fig. 1). The matrix is circulant, so every agent has in- and
    out-degree ``k``. ``k = 0`` gives no edges, ``k = n - 1`` the full graph.

    Args:
        n: number of agents.
        k: neighbours per agent, in ``[0, n - 1]``.

    Returns:
        Bool adjacency of shape ``(n, n)``.
    """
    _check_n(n)
    if not 0 <= k <= n - 1:
        raise ValueError(
            f"k must be in [0, n-1] (neighbours per agent on the ring), got k={k} for "
            f"n={n} agents; choose 0 <= k <= {n - 1} (k={n - 1} is the full graph)"
        )
    offsets = list(range(1, k // 2 + 1)) + [-d for d in range(1, k // 2 + 1)]
    if k % 2:
        offsets.append((k + 1) // 2)
    i = torch.arange(n)
    adj = torch.zeros(n, n, dtype=torch.bool)
    if offsets:
        off = torch.tensor(offsets)
        adj[i[:, None], (i[:, None] + off) % n] = True
    return adj


def ring(n: int) -> Tensor:
    """002_4f291ba56d03e11d.txt Fig. 1 (k = 2): undirected ring, ``knn_ring(n, 2)``.

    For ``n = 1`` there are no edges, for ``n = 2`` the two agents are linked.
    """
    _check_n(n)
    return knn_ring(n, min(2, n - 1))


def full(n: int) -> Tensor:
    """002_4f291ba56d03e11d.txt sec. 3 (k = n - 1, parameter sharing): complete graph."""
    _check_n(n)
    return ~_eye(n)


def radius(pos: Tensor, r: float, *, max_num_neighbors: int = 64) -> Tensor:
    """000_ef718962e1e8f612.txt sec. 2.1, 4.2 (dynamic communication graph): radius graph.

    Agent ``i`` receives from ``j != i`` iff ``||pos_i - pos_j||_2 <= r``. If more
    than ``max_num_neighbors`` agents are in range, only the nearest ones are
    kept (ties broken by index), so the result may then be non-symmetric.

    Computed densely with :func:`torch.cdist`: the output is a dense
    ``(n, n)`` matrix anyway, and ``torch_geometric.nn.radius_graph`` would need
    the optional ``torch_cluster`` package.

    Args:
        pos: positions of shape ``(..., n, d)``; leading dims are batch dims.
        r: communication radius (inclusive), ``r >= 0``.
        max_num_neighbors: cap on the in-degree of each agent. (default: 64)

    Returns:
        Bool adjacency of shape ``(..., n, n)``.
    """
    if pos.dim() < 2:
        raise ValueError(f"pos must have shape (..., n, d), got shape {tuple(pos.shape)}")
    if r < 0:
        raise ValueError(f"radius r must be >= 0, got r={r}")
    if max_num_neighbors < 0:
        raise ValueError(f"max_num_neighbors must be >= 0, got {max_num_neighbors}")
    n = pos.shape[-2]
    pos = pos if pos.is_floating_point() else pos.float()
    # exact differences (not the matmul trick) so that points at distance r are in
    dist = torch.cdist(pos, pos, compute_mode="donot_use_mm_for_euclid_dist")
    adj = (dist <= r) & ~_eye(n, pos.device)
    if max_num_neighbors < n - 1:
        ranked = dist.masked_fill(~adj, float("inf"))
        nearest = ranked.topk(max_num_neighbors, dim=-1, largest=False).indices
        keep = torch.zeros_like(adj).scatter_(-1, nearest, True)
        adj = adj & keep
    return adj


def is_symmetric(adj: Tensor) -> bool:
    """Whether every link is bidirectional, ``A == A^T`` (batched: for all graphs)."""
    return bool(torch.equal(adj, adj.transpose(-1, -2)))


def is_connected(adj: Tensor) -> bool:
    """Whether the (directed) graph is strongly connected (batched: all graphs).

    Reachability by repeated squaring of ``A + I``: ``ceil(log2 n)`` boolean
    matrix products, no graph library needed.
    """
    n = adj.shape[-1]
    reach = (adj.bool() | _eye(n, adj.device)).float()
    for _ in range(max(n - 1, 1).bit_length()):
        reach = ((reach @ reach) > 0).float()
    return bool(reach.bool().all())


def component_labels(adj: Tensor) -> Tensor:
    """Connected components of the undirected version ``A | A^T`` of one ``(n, n)`` graph.

    Reachability by repeated squaring, as :func:`is_connected`.

    Returns:
        Long tensor ``(n,)``: the label of each agent, the smallest agent id of
        its component (so ``labels.unique().numel()`` counts the components and
        an agent with ``labels[i] == i`` and no link is an isolated agent).
    """
    if adj.dim() != 2 or adj.shape[0] != adj.shape[1]:
        raise ValueError(f"component_labels needs one (n, n) adjacency, got shape {tuple(adj.shape)}")
    n = adj.shape[-1]
    a = adj.bool()
    reach = (a | a.T | _eye(n, adj.device)).float()
    for _ in range(max(n - 1, 1).bit_length()):
        reach = ((reach @ reach) > 0).float()
    return reach.bool().int().argmax(-1)  # first True of each row: the smallest reachable id


def majority_graph(adj: Tensor) -> Tensor:
    """The graph of a batch of dynamic graphs: links up in at least half of them.

    One mixing step over a minibatch whose samples each have their own graph
    (DG-MAPPO eq. 10, DecPG with ``topology=visibility``) can mix over one
    graph: the links present in the majority of the samples. A static
    ``(n, n)`` graph is returned unchanged.

    Args:
        adj: bool adjacency ``(..., n, n)``.

    Returns:
        Bool adjacency ``(n, n)``.
    """
    if adj.dim() == 2:
        return adj.bool()
    flat = adj.reshape(-1, *adj.shape[-2:]).float()
    return flat.mean(0) >= 0.5


def degrees(adj: Tensor) -> Tensor:
    """000_ef718962e1e8f612.txt A.4: in-degree ``|N_i|`` of each agent, self excluded.

    Returns:
        Long tensor of shape ``(..., n)``.
    """
    n = adj.shape[-1]
    return (adj.bool() & ~_eye(n, adj.device)).sum(-1)


def average_degree(adj: Tensor) -> Tensor:
    """000_ef718962e1e8f612.txt A.4: average node degree, shape ``(...)`` for ``(..., n, n)``."""
    return degrees(adj).float().mean(-1)


def adjacency_to_edge_index(adj: Tensor) -> Tensor:
    """Dense adjacency to PyG ``edge_index`` of shape ``(2, E)``.

    PyG's source-to-target convention: ``A[i, j]`` (i receives from j) becomes
    the column ``(j, i)``, i.e. ``edge_index[0]`` = source, ``edge_index[1]`` = target.
    """
    if adj.dim() != 2 or adj.shape[0] != adj.shape[1]:
        raise ValueError(f"adjacency must be a square (n, n) matrix, got shape {tuple(adj.shape)}")
    target, source = (adj.bool() & ~_eye(adj.shape[0], adj.device)).nonzero(as_tuple=True)
    return torch.stack([source, target])


def edge_index_to_adjacency(edge_index: Tensor, n: int) -> Tensor:
    """PyG ``edge_index`` ``(2, E)`` (source, target) to a dense bool ``(n, n)`` adjacency."""
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index must have shape (2, E), got {tuple(edge_index.shape)}")
    if edge_index.numel() and (edge_index.min() < 0 or edge_index.max() >= n):
        raise ValueError(f"edge_index has node ids outside [0, {n - 1}]; pass the right n")
    adj = torch.zeros(n, n, dtype=torch.bool, device=edge_index.device)
    adj[edge_index[1], edge_index[0]] = True
    return adj & ~_eye(n, edge_index.device)


def from_adjacency(
    adj: Any,
    *,
    n: int | None = None,
    require_symmetric: bool = False,
    require_connected: bool = False,
) -> Tensor:
    """Validate a custom adjacency (nested 0/1 lists from YAML, or a tensor).

    The diagonal is ignored (set to False).

    Args:
        adj: ``n x n`` matrix of 0/1 (or bools); ``adj[i][j] = 1`` iff i receives from j.
        n: expected number of agents, checked when given. (default: None)
        require_symmetric: reject directed graphs. (default: False)
        require_connected: reject graphs that are not strongly connected. (default: False)

    Returns:
        Bool adjacency of shape ``(n, n)``.
    """
    try:
        t = torch.as_tensor(adj)
    except (TypeError, ValueError) as e:
        raise ValueError(f"topology adjacency must be an n x n matrix of 0/1 entries ({e})") from e
    if t.dim() != 2 or t.shape[0] != t.shape[1]:
        raise ValueError(
            f"topology adjacency must be square (n x n), got shape {tuple(t.shape)}; "
            "give one row and one column per agent"
        )
    if n is not None and t.shape[0] != n:
        raise ValueError(
            f"topology has {t.shape[0]} rows but the group has {n} agents; give an adjacency with {n} rows "
            f"and {n} columns"
        )
    if t.dtype != torch.bool:
        if not ((t == 0) | (t == 1)).all():
            raise ValueError("topology adjacency entries must be 0 or 1 (1 = agent i receives from j)")
        t = t == 1
    t = t & ~_eye(t.shape[0], t.device)
    if require_symmetric and not is_symmetric(t):
        raise ValueError(
            "topology adjacency must be symmetric (undirected) here; add the missing reverse "
            "links, i.e. use adj | adj.T"
        )
    if require_connected and not is_connected(t):
        raise ValueError(
            "topology adjacency is not (strongly) connected, so consensus cannot be reached; "
            "add links so that every agent can reach every other"
        )
    return t


def build_topology(name: str, n: int, *, k: int | None = None, adjacency: Any = None) -> Tensor:
    """Static topology by name: one of :data:`TOPOLOGIES`.

    Args:
        name: ``"knn_ring"`` (needs ``k``), ``"ring"``, ``"full"`` or ``"custom"``
            (needs ``adjacency``, validated against ``n``).
        n: number of agents.
        k: neighbours per agent for ``"knn_ring"``. (default: None)
        adjacency: custom ``n x n`` 0/1 matrix for ``"custom"``. (default: None)
    """
    if name == "knn_ring":
        if k is None:
            raise ValueError("topology 'knn_ring' needs k (neighbours per agent); set k")
        return knn_ring(n, k)
    if name == "ring":
        return ring(n)
    if name == "full":
        return full(n)
    if name == "custom":
        if adjacency is None:
            raise ValueError("topology 'custom' needs an adjacency (n x n list of 0/1); set adjacency")
        return from_adjacency(adjacency, n=n)
    raise ValueError(f"unknown topology {name!r}; choose one of {TOPOLOGIES} (radius graphs are dynamic)")


def check_topology_options(
    *,
    owner: str,
    prefix: str,
    topology: str,
    values: Mapping[str, Any],
    uses: Mapping[str, tuple[str, ...]],
    defaults: Mapping[str, Any],
) -> None:
    """Refuse an option that the chosen topology does not read, instead of ignoring it.

    An option counts as set when its value differs from its default (the
    YAML's), e.g. ``adjacency`` given with ``topology=ring`` would otherwise
    train on the ring and drop the matrix without a word.

    Args:
        owner: who is checked, first word of the message (``"decpg"``, ``"D-GAT (model)"``).
        prefix: where the options live on the command line (``"algorithm"``, ``"model"``).
        topology: the chosen topology; one absent from every entry of ``uses``
            reads none of the options.
        values: option name -> value given.
        uses: option name -> the topologies that read it.
        defaults: option name -> its default value.

    Raises:
        ValueError: naming the option, the topology that reads it and both fixes.
    """
    for option, readers in uses.items():
        if topology in readers or option not in values:
            continue
        value = values[option]
        if value == defaults.get(option):
            continue
        needs = " or ".join(f"{prefix}.topology={t}" for t in readers)
        raise ValueError(
            f"{owner}: {prefix}.{option}={value} is read only with {needs}, but {prefix}.topology={topology} "
            f"would ignore it; remove {prefix}.{option} or set {needs}."
        )
