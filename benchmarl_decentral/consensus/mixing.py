"""Mixing (consensus) matrices built from an adjacency, and their spectral gap.

Convention: ``W`` is a float tensor of shape ``(n, n)`` (or ``(..., n, n)``);
row ``i`` holds the weights agent ``i`` gives to each ``j``, diagonal included,
so one mixing step is ``theta <- W @ theta``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from benchmarl_decentral.consensus.topology import degrees, is_symmetric, knn_ring, majority_graph

MIXING_RULES: tuple[str, ...] = ("uniform", "metropolis", "row")
#: How one mixing step turns a minibatch of dynamic graphs into one matrix (:func:`batch_mixing_matrix`).
BATCH_GRAPH_MODES: tuple[str, ...] = ("mean", "majority")


def _with_self_loops(adj: Tensor) -> Tensor:
    n = adj.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=adj.device)
    return (adj.bool() | eye).to(torch.get_default_dtype())


def row(adj: Tensor) -> Tensor:
    """000_ef718962e1e8f612.txt eq. (10): ``c(i, j) = 1 / |N_i|``, ``N_i`` including i.

    Row stochastic for any graph; doubly stochastic when every in-degree equals
    the matching out-degree pattern (e.g. regular undirected graphs, kNN rings).

    Args:
        adj: bool adjacency ``(..., n, n)``; batched (dynamic) graphs allowed.

    Returns:
        ``W`` of shape ``(..., n, n)``.
    """
    a = _with_self_loops(adj)
    return a / a.sum(-1, keepdim=True)


def uniform(adj: Tensor) -> Tensor:
    """002_4f291ba56d03e11d.txt sec. 3: ``P_ij = 1 / (k + 1)`` on a kNN ring.

    ``W = (A + I) / (deg_i + 1)`` row-wise. On a kNN ring (circulant, every
    degree ``k``) this is ``1 / (k + 1)`` and doubly stochastic. For a general
    graph it is the same matrix as :func:`row` (DG-MAPPO's rule); the two names
    are kept so that configs read like their paper.
    """
    return row(adj)


def uniform_knn(n: int, k: int) -> Tensor:
    """002_4f291ba56d03e11d.txt sec. 3: DecPG's doubly stochastic kNN ``P``."""
    return uniform(knn_ring(n, k))


def metropolis(adj: Tensor) -> Tensor:
    """DESIGN.md Consensus (no paper file): Metropolis-Hastings weights, Xiao, Boyd & Lall 2005.

    Doubly stochastic on any undirected graph, unlike :func:`row` on irregular ones.

    ``W_ij = 1 / (1 + max(d_i, d_j))`` on edges, ``W_ii = 1 - sum_{j != i} W_ij``.
    The result is symmetric, hence doubly stochastic.

    Args:
        adj: symmetric bool adjacency ``(..., n, n)``.
    """
    if not is_symmetric(adj):
        raise ValueError(
            "metropolis weights need an undirected graph; symmetrise it or use 'uniform'/'row'"
        )
    d = degrees(adj).to(torch.get_default_dtype())
    dmax = torch.maximum(d[..., :, None], d[..., None, :])
    w = adj.bool().to(d.dtype) / (1.0 + dmax)
    w = w * ~torch.eye(adj.shape[-1], dtype=torch.bool, device=adj.device)
    return w + torch.diag_embed(1.0 - w.sum(-1))


def build_mixing_matrix(name: str, adj: Tensor) -> Tensor:
    """Mixing matrix by rule name, one of :data:`MIXING_RULES`."""
    rules = {"uniform": uniform, "metropolis": metropolis, "row": row}
    if name not in rules:
        raise ValueError(f"unknown mixing rule {name!r}; choose one of {MIXING_RULES}")
    return rules[name](adj)


def batch_mixing_matrix(adj: Tensor, rule: str = "row", mode: str = "mean") -> Tensor:
    """The ``(n, n)`` matrix of one mixing step over a minibatch of dynamic graphs.

    A minibatch holds samples from many steps and environments, each with its
    own graph ``A_b`` (e.g. SMAC ally visibility), but an optimizer step mixes
    once:

    * ``mean``: ``W = mean_b R(A_b)``, the average of the per-sample matrices of
      ``rule`` ``R``, as the minibatch gradient is the average of the samples'
      gradients. Row stochastic (``row``/``uniform``) or doubly stochastic
      (``metropolis``) whenever every ``R(A_b)`` is; a link up in a fraction of
      the samples gets that share of its weight. With ``rule="row"`` this is
      000_ef718962e1e8f612.txt eq. 10 averaged over the minibatch (DG-MAPPO).
    * ``majority``: ``R`` of one graph, the links up in at least half of the
      samples (:func:`~benchmarl_decentral.consensus.topology.majority_graph`).
      On sparse, fast-changing graphs this often mixes nothing.

    Args:
        adj: bool adjacency ``(..., n, n)`` (one graph per sample) or ``(n, n)``.
        rule: one of :data:`MIXING_RULES`. (default: "row")
        mode: one of :data:`BATCH_GRAPH_MODES`. (default: "mean")

    Returns:
        ``W`` of shape ``(n, n)``.
    """
    if mode not in BATCH_GRAPH_MODES:
        raise ValueError(f"unknown mixing_graph {mode!r}; choose one of {BATCH_GRAPH_MODES}")
    if adj.dim() == 2:
        return build_mixing_matrix(rule, adj)
    if mode == "majority":
        return build_mixing_matrix(rule, majority_graph(adj))
    return build_mixing_matrix(rule, adj).reshape(-1, *adj.shape[-2:]).mean(0)


def spectral_gap(W: Tensor) -> float:
    """002_4f291ba56d03e11d.txt A.2: ``1 - max_{i >= 2} |lambda_i|``.

    Eigenvalues (complex for non-symmetric ``W``) are sorted by modulus,
    largest first; computed in float64. A single agent has gap 1.
    """
    if W.dim() != 2 or W.shape[0] != W.shape[1]:
        raise ValueError(f"spectral_gap needs a square (n, n) matrix, got shape {tuple(W.shape)}")
    if W.shape[0] == 1:
        return 1.0
    moduli = torch.linalg.eigvals(W.detach().double().cpu()).abs().sort(descending=True).values
    return float(1.0 - moduli[1])


def is_row_stochastic(W: Tensor, atol: float = 1e-6) -> bool:
    """Non-negative with every row summing to one (batched: all matrices)."""
    ones = torch.ones((), dtype=W.dtype, device=W.device)
    return bool((W >= -atol).all() and torch.allclose(W.sum(-1), ones.expand(W.shape[:-1]), atol=atol))


def is_doubly_stochastic(W: Tensor, atol: float = 1e-6) -> bool:
    """Row stochastic and every column summing to one (batched: all matrices)."""
    return is_row_stochastic(W, atol) and is_row_stochastic(W.transpose(-1, -2), atol)


def drop_links(
    adj: Tensor,
    p: float,
    *,
    generator: torch.Generator | None = None,
    symmetric: bool | None = None,
) -> Tensor:
    """Link failure: drop each edge independently with probability ``p``.

    Args:
        adj: bool adjacency ``(..., n, n)``.
        p: drop probability in ``[0, 1)``.
        generator: random generator, for reproducible failures. (default: None)
        symmetric: drop undirected links as a whole (both directions together).
            ``None`` means: iff ``adj`` is symmetric. (default: None)

    Returns:
        The surviving adjacency, same shape as ``adj``.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"link failure probability must be in [0, 1), got p={p}")
    adj = adj.bool()
    if p == 0.0:
        return adj.clone()
    if symmetric is None:
        symmetric = is_symmetric(adj)
    u = torch.rand(adj.shape, generator=generator, device=adj.device)
    if symmetric:
        # one draw per unordered pair, mirrored
        u = u.triu(1)
        u = u + u.transpose(-1, -2)
    return adj & (u >= p)
