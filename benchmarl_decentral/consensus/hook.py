"""The DSGD mixing step on stacked per-agent parameters, and an optimizer hook for it.

Every leaf is stacked along a leading agent dim ``(n, ...)`` (as torchrl's
``MultiAgentMLP`` / ``TensorDict.from_modules`` store them), so one step is one
matrix product per leaf, never a loop over agents.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from benchmarl_decentral.consensus.mixing import (
    BATCH_GRAPH_MODES,
    MIXING_RULES,
    batch_mixing_matrix,
    drop_links,
    spectral_gap,
)
from benchmarl_decentral.consensus.topology import from_adjacency
from benchmarl_decentral.distributed.transport import (
    CommCounter,
    InProcessTransport,
    LinkHistory,
    Transport,
    check_latency,
)


def _check_leaves(leaves: list[Tensor], n: int) -> None:
    for idx, p in enumerate(leaves):
        if p.dim() == 0 or p.shape[0] != n:
            raise ValueError(
                f"leaf {idx} has shape {tuple(p.shape)} but the mixing matrix is {n} x {n}; "
                f"every leaf must be stacked along a leading agent dim of size {n}"
            )


def mix_(leaves: Iterable[Tensor], W: Tensor) -> None:
    """002_4f291ba56d03e11d.txt sec. 3 (DSGD mixing): ``theta_i <- sum_j W_ij theta_j`` in place.

    Each leaf is read once (one snapshot) and then overwritten, so no agent sees
    a neighbour's already-mixed value. Runs under ``torch.no_grad``; works for
    ``nn.Parameter`` and tensordict leaves alike. All leaves are checked before
    any is written.

    Args:
        leaves: tensors of shape ``(n, ...)``.
        W: mixing matrix ``(n, n)``; cast to each leaf's dtype and device.
    """
    if W.dim() != 2 or W.shape[0] != W.shape[1]:
        raise ValueError(f"mixing matrix must be square (n, n), got shape {tuple(W.shape)}")
    leaves = list(leaves)
    n = W.shape[0]
    _check_leaves(leaves, n)
    with torch.no_grad():
        for p in leaves:
            p.copy_((W.to(p) @ p.reshape(n, -1)).reshape_as(p))


def mix_delayed_(leaves: Iterable[Tensor], delayed: Iterable[Tensor], W: Tensor) -> None:
    """002 sec. 3 / 000 eq. (9) with per-link latency: ``theta_i <- W_ii theta_i + sum_{j != i} W_ij theta_j^delayed``.

    The DSGD mixing step of :func:`mix_` where every neighbour term reads an
    older vector (``delayed``, e.g. what the neighbours sent ``d`` mixing
    steps ago; no paper file: the link-latency model of
    :class:`~benchmarl_decentral.distributed.LinkHistory`) while each agent's
    own term stays its current value. ``W`` is row stochastic, so the step is
    still a convex combination. In place, under ``torch.no_grad``.

    Args:
        leaves: tensors of shape ``(n, ...)``, the current ``theta`` (overwritten).
        delayed: the neighbours' vectors, one tensor per leaf, same shapes.
        W: mixing matrix ``(n, n)`` whose weights the step applies.
    """
    if W.dim() != 2 or W.shape[0] != W.shape[1]:
        raise ValueError(f"mixing matrix must be square (n, n), got shape {tuple(W.shape)}")
    leaves, delayed = list(leaves), list(delayed)
    n = W.shape[0]
    _check_leaves(leaves, n)
    if len(delayed) != len(leaves) or any(h.shape != p.shape for p, h in zip(leaves, delayed)):
        raise ValueError(
            f"the delayed vectors {[tuple(h.shape) for h in delayed]} do not match the leaves "
            f"{[tuple(p.shape) for p in leaves]}"
        )
    own = W.diagonal()
    others = W - torch.diag_embed(own)
    with torch.no_grad():
        for p, h in zip(leaves, delayed):
            flat = p.reshape(n, -1)
            mixed = own.to(p).unsqueeze(1) * flat + others.to(p) @ h.to(p).reshape(n, -1)
            p.copy_(mixed.reshape_as(p))


class ConsensusMixer:
    """002_4f291ba56d03e11d.txt sec. 3 / 000_ef718962e1e8f612.txt eq. (9): DSGD mixing of stacked leaves.

    Holds the leaves, the topology and its mixing matrix ``W``; :meth:`step`
    applies ``theta <- W theta``. With ``link_failure > 0`` every step drops
    each link with that probability and rebuilds ``W`` with the same rule
    (``"uniform"``/``"row"`` renormalise rows so ``W`` stays row stochastic,
    ``"metropolis"`` stays doubly stochastic).

    Dynamic graphs: :meth:`set_adjacency` also takes a batch ``(..., n, n)``
    of graphs, one per sample of the minibatch about to be stepped on (SMAC
    ally visibility); ``W`` is then
    :func:`~benchmarl_decentral.consensus.batch_mixing_matrix` of the batch
    (``graph_mode``: ``"mean"`` of the per-sample matrices or the
    ``"majority"`` graph), and a failed link is down in every sample.

    Link latency (``latency = d > 0``, for asynchronous studies): in step
    ``t`` (the ``t``-th call of :meth:`step`, counting mixing steps, not
    iterations) every agent still sends its current vector over the links of
    ``W_t`` (the bytes per step do not change), but a message takes ``d``
    steps to arrive, so the step applies the weights and neighbour vectors of
    step ``s = max(t - d, 0)``::

        theta_i(t+1) = W_s,ii theta_i(t) + sum_{j != i} W_s,ij theta_j(s)

    (:func:`mix_delayed_`; before ``d`` steps exist, the oldest step there is,
    the first one). The weights travel with their vectors: a link that failed
    at step ``s`` carried no message, and its weight went to the others of
    step ``s`` by the usual renormalisation, so the message-less link is
    never read. With a static graph and no link failure ``W_s = W`` and this
    is ``theta_i <- W_ii theta_i(t) + sum_{j != i} W_ij theta_j(t - d)``.
    The mixer keeps the history (:class:`~benchmarl_decentral.distributed.LinkHistory`,
    :attr:`history`) and passes it to the transport, which decides what an
    entry holds: ``d`` entries of the sent vectors, ``d x`` the parameters
    per agent held here.

    Args:
        leaves: per-agent stacked tensors ``(n, ...)`` to keep in consensus.
        adjacency: bool ``(n, n)`` adjacency (or nested 0/1 lists).
        rule: one of :data:`MIXING_RULES`. (default: "uniform")
        link_failure: per-step probability of losing each link, in ``[0, 1)``. (default: 0.0)
        generator: random generator for link failures. (default: None)
        graph_mode: how a batch of graphs gives one ``W``, one of
            :data:`~benchmarl_decentral.consensus.BATCH_GRAPH_MODES`. (default: "mean")
        transport: carries out each step
            (:class:`~benchmarl_decentral.distributed.Transport`): in one process
            (``None``, the default) the leaves hold all ``n`` agents; with a
            distributed transport they hold only its
            :meth:`~benchmarl_decentral.distributed.Transport.local_agents`,
            stacked ``(n_local, ...)``, while ``adjacency`` and ``W`` stay
            ``n x n``. (default: None)
        latency: ``d``, mixing steps a message takes over a link; 0 is the
            synchronous step. (default: 0)

    Attributes:
        n_agents: number of agents ``n``.
        enabled: when False, :meth:`step` and the attached hooks do nothing.
        comm: bytes sent by the agents held here since the last
            ``comm.reset()`` (:class:`~benchmarl_decentral.distributed.CommCounter`).
        history: the messages in flight with ``latency > 0`` (save and restore
            it with the experiment: ``history.state_dict()``); ``None`` for ``latency = 0``.
    """

    def __init__(
        self,
        leaves: Iterable[Tensor],
        *,
        adjacency: Tensor,
        rule: str = "uniform",
        link_failure: float = 0.0,
        generator: torch.Generator | None = None,
        graph_mode: str = "mean",
        transport: Transport | None = None,
        latency: int = 0,
    ) -> None:
        if rule not in MIXING_RULES:
            raise ValueError(f"unknown mixing rule {rule!r}; choose one of {MIXING_RULES}")
        if not 0.0 <= link_failure < 1.0:
            raise ValueError(f"link_failure must be in [0, 1), got {link_failure}")
        if graph_mode not in BATCH_GRAPH_MODES:
            raise ValueError(f"unknown graph_mode {graph_mode!r}; choose one of {BATCH_GRAPH_MODES}")
        self.graph_mode = graph_mode
        self.leaves = list(leaves)
        self.rule = rule
        self.link_failure = link_failure
        self.generator = generator
        self.enabled = True
        self.transport = InProcessTransport() if transport is None else transport
        self.comm = CommCounter()
        latency = check_latency(latency)
        self.history = LinkHistory(latency) if latency else None
        self.set_adjacency(adjacency)

    def set_adjacency(self, adjacency: Tensor) -> None:
        """Replace the topology (dynamic graphs) and recompute the base ``W``.

        Args:
            adjacency: one ``(n, n)`` graph (bool tensor or nested 0/1 lists),
                or a bool batch ``(..., n, n)`` of graphs combined by ``graph_mode``.
        """
        n = getattr(self, "n_agents", None)
        if isinstance(adjacency, Tensor) and adjacency.dim() > 2:
            if adjacency.dtype != torch.bool or (n is not None and adjacency.shape[-1] != n):
                raise ValueError(
                    f"a batch of graphs must be a bool tensor (..., {n}, {n}), got "
                    f"{adjacency.dtype} of shape {tuple(adjacency.shape)}"
                )
            k = adjacency.shape[-1]
            adj = adjacency & ~torch.eye(k, dtype=torch.bool, device=adjacency.device)
        else:
            adj = from_adjacency(adjacency, n=n)
        self.n_agents = adj.shape[-1]
        _check_leaves(self.leaves, self.transport.local_agents(self.n_agents).numel())
        self.adjacency = adj
        self._base_W = self._build(adj)
        self._W = self._base_W

    def _build(self, adj: Tensor) -> Tensor:
        # built on the adjacency's device (CPU generators), then moved to the leaves once
        W = batch_mixing_matrix(adj, self.rule, self.graph_mode)
        return W.to(self.leaves[0].device) if self.leaves else W

    def matrix(self) -> Tensor:
        """``W`` of the last step, whose links carried its messages (before any step: the link-failure-free ``W``)."""
        return self._W

    @property
    def spectral_gap(self) -> float:
        """002_4f291ba56d03e11d.txt A.2: spectral gap of the link-failure-free ``W``."""
        return spectral_gap(self._base_W)

    def step(self) -> Tensor | None:
        """Mix the leaves in place through the transport; returns this step's ``W`` (None when disabled).

        Every process of a distributed run draws the same link failures (same
        ``generator`` seed), so all build the same ``W``. With ``latency`` the
        returned ``W`` is the one this step's messages were sent over; the
        weights applied are those of ``d`` steps earlier (see the class).
        """
        if not self.enabled:
            return None
        if self.link_failure > 0:
            union = self.adjacency.reshape(-1, self.n_agents, self.n_agents).any(0)
            up = drop_links(union, self.link_failure, generator=self.generator)
            self._W = self._build(self.adjacency & up)
        self.comm.add(self.transport.mix_(self.leaves, self._W, history=self.history))
        return self._W

    def attach(self, optimizer: torch.optim.Optimizer, *, when: str = "pre") -> RemovableHandle:
        """Run :meth:`step` on every ``optimizer.step()``.

        ``when="pre"`` (combine, then the local step; DecPG sec. 3, D-PSGD):
        mixing happens after the gradients are computed and before the
        optimizer applies them, giving for plain SGD
        ``theta_i <- sum_j P_ij theta_j - eta g_i(theta_i)``.

        ``when="post"`` (adapt-then-combine; DG-MAPPO eq. (9)): mixing after
        the optimizer step, ``theta_i <- sum_j P_ij (theta_j - eta g_j(theta_j))``.

        Returns:
            Handle whose ``remove()`` detaches the hook.
        """

        def hook(opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
            self.step()

        if when == "pre":
            return optimizer.register_step_pre_hook(hook)
        if when == "post":
            return optimizer.register_step_post_hook(hook)
        raise ValueError(
            f"when must be 'pre' (DecPG: mix, then step) or 'post' (mix after the step), got {when!r}"
        )
