"""Consensus diagnostics on stacked per-agent leaves ``(n, ...)``.

Every metric is ``1/n sum_i ||x_i - mean_j x_j||^2`` where ``x_i`` is agent i's
whole parameter vector (all leaves concatenated), so the per-leaf terms add up.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor


def _spread(xs: Iterable[Tensor]) -> Tensor:
    """``1/n sum_i ||x_i - x_bar||^2`` summed over leaves, no loop over agents."""
    total: Tensor | None = None
    n: int | None = None
    for idx, x in enumerate(xs):
        x = x.detach()
        if x.dim() == 0:
            raise ValueError(f"leaf {idx} is a scalar; leaves must be stacked as (n_agents, ...)")
        if n is None:
            n = x.shape[0]
        elif x.shape[0] != n:
            raise ValueError(
                f"leaf {idx} has {x.shape[0]} agents but earlier leaves have {n}; "
                "pass the leaves of one agent group only"
            )
        term = (x - x.mean(0)).pow(2).sum() / n
        total = term if total is None else total + term.to(total)
    return torch.zeros(()) if total is None else total


def consensus_distance(leaves: Iterable[Tensor]) -> Tensor:
    """DESIGN.md Consensus: ``1/n sum_i ||theta_i - theta_bar||^2`` over all leaves."""
    return _spread(leaves)


def gradient_disagreement(leaves: Iterable[Tensor]) -> Tensor:
    """002_4f291ba56d03e11d.txt A.5 eq. (1): ``D = 1/n sum_i ||g_i - g_bar||^2``.

    Uses ``leaf.grad``; leaves without a gradient are skipped (0 if none has one).
    """
    return _spread(p.grad for p in leaves if p.grad is not None)


def update_variance(before: Sequence[Tensor], after: Sequence[Tensor]) -> Tensor:
    """002_4f291ba56d03e11d.txt A.5 eq. (2): ``V = 1/n sum_i ||dtheta_i - dtheta_bar||^2``.

    Args:
        before: leaves at iteration m (e.g. from :func:`snapshot`).
        after: the same leaves at iteration m + 1.
    """
    if len(before) != len(after):
        raise ValueError(
            f"before has {len(before)} leaves but after has {len(after)}; pass matching lists"
        )
    for idx, (b, a) in enumerate(zip(before, after)):
        if b.shape != a.shape:
            raise ValueError(f"leaf {idx}: before {tuple(b.shape)} and after {tuple(a.shape)} differ in shape")
    return _spread(a.detach() - b.detach() for b, a in zip(before, after))


def snapshot(leaves: Iterable[Tensor]) -> list[Tensor]:
    """Detached copies of the leaves, e.g. the ``before`` of :func:`update_variance`."""
    return [p.detach().clone() for p in leaves]
