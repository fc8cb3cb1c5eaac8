"""DSGD mixing across processes with torch.distributed point-to-point messages.

Each rank holds the leaves of its block of agents, stacked ``(n_local, ...)``.
One mixing step (002_4f291ba56d03e11d.txt sec. 3,
``theta_i <- sum_j W_ij theta_j``) is:

1. flatten the local agents' leaves into one vector per agent ``(n_local, D)``;
2. for every other rank ``r``: send (``isend``) the vectors of the local agents
   that some agent on ``r`` reads (``W_ji != 0``, ``j`` on ``r``), and receive
   (``irecv``) the vectors of the agents on ``r`` that some local agent reads;
   all of it in one ``batch_isend_irecv``. Ranks with no link between their
   blocks exchange nothing, and a link whose weight is 0 in this step's ``W``
   (a failed link) carries no message: there is no collective over all ranks;
3. ``theta_local <- W[local, :] @ theta`` with the received rows, written back
   into the leaves.

Every rank must build the same ``W`` (same topology, same rule, same
link-failure generator seed); the send and receive sets are both derived from
it, so a rank that disagreed would wait on a message that never comes (the
process group's timeout then ends the run).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.distributed as dist
from torch import Tensor

from benchmarl_decentral.distributed.transport import LinkHistory, MixRecord, Transport, _senders, link_end_bytes, sends
from benchmarl_decentral.distributed.wire import to_wire, wire_device


def _p2p(ops: list) -> None:
    """Run the point-to-point ``ops`` in one ``batch_isend_irecv`` and wait for all of them."""
    if ops:
        for request in dist.batch_isend_irecv(ops):
            request.wait()


def _swap_rows(rows: Tensor, pairs: list) -> list:
    """Point to point with each ``(rank, outgoing, incoming)``: send ``rows[outgoing]``, receive ``len(incoming)`` rows.

    Returns ``[(incoming, received rows)]`` for the pairs that receive anything, the rows on the wire device
    (:func:`~benchmarl_decentral.distributed.wire.wire_device`: the caller moves them where it computes).
    """
    ops, received = [], []
    for r, outgoing, incoming in pairs:
        if outgoing.numel():
            ops.append(dist.P2POp(dist.isend, to_wire(rows[outgoing].contiguous()), r))
        if incoming.numel():
            buf = torch.empty(incoming.numel(), rows.shape[-1], dtype=rows.dtype, device=wire_device())
            ops.append(dist.P2POp(dist.irecv, buf, r))
            received.append((incoming, buf))
    _p2p(ops)
    return received


class _RowExchange(torch.autograd.Function):
    """Forward: send the rows other ranks read, receive the rows read here. Backward: the same, reversed.

    ``plan``: per other rank ``r``, ``(send, recv)`` flat row indices of
    ``h.reshape(-1, F)``: the local rows ``r`` reads, the rows of ``r`` read here.
    ``local``: flat indices of the rows of the agents held here.
    """

    @staticmethod
    def forward(ctx, h: Tensor, plan: list, local: Tensor, on_backward) -> Tensor:
        F = h.shape[-1]
        flat = h.detach().reshape(-1, F)
        out = torch.zeros_like(flat)  # rows read by no agent held here: 0, nothing computed elsewhere leaks in
        out[local] = flat[local]
        for recv, buf in _swap_rows(flat, plan):
            out[recv] = buf.to(out.device)
        ctx.plan, ctx.local, ctx.on_backward, ctx.shape = plan, local, on_backward, h.shape
        return out.reshape(h.shape)

    @staticmethod
    def backward(ctx, grad: Tensor):
        F = grad.shape[-1]
        g = grad.reshape(-1, F).cpu()
        out = torch.zeros_like(g)
        out[ctx.local] = g[ctx.local]  # rows held elsewhere: their gradient is their owner's (sent below)
        # dL/dh_j of the rows read here go back to j's rank; the gradients of the rows sent come back
        for send, buf in _swap_rows(g, [(r, recv, send) for r, send, recv in ctx.plan]):
            out.index_add_(0, send, buf.to(out.device))
        if ctx.on_backward is not None:
            ctx.on_backward()
        return out.reshape(ctx.shape).to(grad.device), None, None, None


class TorchDistributedTransport(Transport):
    """Neighbour-only parameter exchange between the ranks of the default process group.

    One transport serves every agent group of the task: each call
    (:meth:`mix_`, :meth:`exchange_rows`, ...) names the agents of one group by
    their index in it, and the group's size (``W``'s, ``h``'s agent dim) picks
    its placement, so the algorithms pass nothing more than in one process.
    Groups of the same size share one placement (:func:`plan_launch` gives them
    the same equal blocks).

    Args:
        owners: rank of every agent, ``(n,)`` int, for a task with one group;
            or a mapping from group name to its ``(n_g,)`` owner (see
            :func:`~benchmarl_decentral.distributed.launch.plan_launch`). Every
            rank of the world must own at least one agent of every group.

    Attributes:
        rank: this process's rank.
        world_size: number of ranks.
        owners: group name to the rank of each of its agents (``"agents"`` for a bare tensor).
    """

    name = "torch_distributed"

    def __init__(self, owners: Tensor | Mapping[str, Tensor]) -> None:
        if not dist.is_initialized():
            raise RuntimeError(
                "TorchDistributedTransport needs an initialised process group: launch with torchrun "
                "(or benchmarl_decentral.distributed.launch.spawn_local) and call "
                "torch.distributed.init_process_group first."
            )
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        if not isinstance(owners, Mapping):
            owners = {"agents": owners}
        if not owners:
            raise ValueError("owners must place at least one group of agents, got none")
        self.owners: dict[str, Tensor] = {}
        self._by_size: dict[int, Tensor] = {}
        self._local: dict[int, Tensor] = {}
        for group, owner in owners.items():
            owner = torch.as_tensor(owner, dtype=torch.int64).cpu()
            valid = owner.dim() == 1 and owner.numel() > 0 and owner.min() >= 0 and owner.max() < self.world_size
            if not valid or (torch.bincount(owner, minlength=self.world_size) == 0).any():
                raise ValueError(
                    f"owner of group '{group}' must give every one of its {owner.numel()} agents a rank in "
                    f"[0, {self.world_size}) and every rank at least one agent, got {owner.tolist()}"
                )
            n = owner.numel()
            if n in self._by_size and not torch.equal(self._by_size[n], owner):
                same = next(g for g, o in self.owners.items() if o.numel() == n)
                raise ValueError(
                    f"groups '{same}' and '{group}' have {n} agents each but different owners "
                    f"({self._by_size[n].tolist()} and {owner.tolist()}): groups of one size must share a placement"
                )
            self.owners[group] = owner
            self._by_size[n] = owner
            self._local[n] = torch.nonzero(owner == self.rank).flatten()

    def owner_of(self, n_agents: int) -> Tensor:
        """The rank of every agent of the group of ``n_agents`` agents, ``(n_agents,)`` int64.

        Raises:
            ValueError: no group of this transport has ``n_agents`` agents.
        """
        owner = self._by_size.get(int(n_agents))
        if owner is None:
            sizes = ", ".join(f"'{g}' of {o.numel()}" for g, o in self.owners.items())
            raise ValueError(
                f"this transport places the agents of group(s) {sizes} on {self.world_size} ranks, "
                f"but got a group of {n_agents} agents (a mixing matrix or message tensor of another size)"
            )
        return owner

    @property
    def owner(self) -> Tensor:
        """The owner of the only group size this transport places (:meth:`owner_of` for several)."""
        if len(self._by_size) != 1:
            raise ValueError(
                f"this transport places groups of sizes {sorted(self._by_size)}: use owner_of(n_agents)"
            )
        return next(iter(self._by_size.values()))

    def local_agents(self, n_agents: int) -> Tensor:
        self.owner_of(n_agents)  # checks n_agents
        return self._local[int(n_agents)]

    def holds(self, agents: Tensor, n_agents: int) -> Tensor:
        return self.owner_of(n_agents).to(agents.device)[agents] == self.rank

    def exchange_link_ends(self, links: Tensor, values: Tensor, n_agents: int) -> tuple[Tensor, MixRecord]:
        """Every link that crosses to rank ``r``: one message each way per rank pair, the links' values stacked.

        Both ranks of a pair list the links between them in the order of
        ``links`` (the same list everywhere), so the stacked values line up.
        """
        local, owner = self.local_agents(n_agents), self.owner_of(n_agents)
        links = links.cpu().long()
        ends = owner[links]  # (l, 2): rank of each endpoint
        value_bytes = values[0, 0].numel() * values.element_size() if values.shape[0] else 0
        out = values.clone()
        ops: list[dist.P2POp] = []
        received: list[tuple[Tensor, Tensor, Tensor]] = []
        network = torch.zeros(n_agents, dtype=torch.int64)
        for r in range(self.world_size):
            if r == self.rank:
                continue
            mine = torch.nonzero((ends[:, 0] == self.rank) & (ends[:, 1] == r)).flatten()  # i here, j on r
            theirs = torch.nonzero((ends[:, 0] == r) & (ends[:, 1] == self.rank)).flatten()  # i on r, j here
            ids = torch.cat([mine, theirs]).sort().values  # the links between the two ranks, in list order
            if not ids.numel():
                continue
            side = (ends[ids, 1] == self.rank).long()  # the endpoint held here: 0 (i) or 1 (j)
            buf = to_wire(values[ids, side].contiguous())
            ops.append(dist.P2POp(dist.isend, buf, r))
            incoming = torch.empty_like(buf)
            ops.append(dist.P2POp(dist.irecv, incoming, r))
            received.append((ids, 1 - side, incoming))
            network.index_add_(0, links[ids, side], torch.full((ids.numel(),), value_bytes, dtype=torch.int64))
        _p2p(ops)
        for ids, other, incoming in received:
            out[ids, other] = incoming.to(out.device)
        touching = (ends == self.rank).any(1)
        per_link = link_end_bytes(links[touching], value_bytes, n_agents)
        return out, MixRecord(agents=local, link_bytes=per_link[local].sum(1), network_bytes=network[local],
                              links=per_link[local])

    def exchange_rows(self, h: Tensor, reads: Tensor, sink: Callable[[MixRecord], None] | None = None) -> Tensor:
        """Point to point with the ranks of the neighbours: per rank pair, one message each way (the rows stacked).

        The rows ``(b, j)`` a rank ``r`` reads from here (``reads[b, i, j]``,
        ``i`` on ``r``, ``j`` here, ``i != j``) travel once, stacked, in the
        order of the flat index ``b * n + j``; both ranks derive the same list
        from ``reads``. Ranks with no link between their blocks at any sample
        exchange nothing. The backward pass sends each received row's
        gradient back the same way and adds the ones it gets to its rows.
        """
        n, F = h.shape[-2], h.shape[-1]
        owner, held = self.owner_of(n), self.local_agents(n)
        S = _senders(reads.expand(*h.shape[:-1], n) if reads.dim() == 2 else reads)  # (B, i, j)
        batch = S.shape[0]
        if batch != h.reshape(-1, n, F).shape[0]:
            raise ValueError(f"reads {tuple(reads.shape)} does not match h {tuple(h.shape)}")
        ranks = torch.nn.functional.one_hot(owner, self.world_size).to(torch.int64)  # (n, R)
        readers = torch.einsum("bij,ir->bjr", S.to(torch.int64), ranks)  # readers[b, j, r]: of j, on rank r
        mine = (owner == self.rank).view(1, n)
        plan = []
        for r in range(self.world_size):
            if r == self.rank:
                continue
            send = torch.nonzero((mine & (readers[..., r] > 0)).flatten()).flatten()
            recv = torch.nonzero(((owner == r).view(1, n) & (readers[..., self.rank] > 0)).flatten()).flatten()
            plan.append((r, send, recv))
        local = torch.nonzero(mine.expand(batch, n).flatten()).flatten()
        row = F * h.element_size()
        on_backward = None
        if sink is not None:
            # forward: readers on this rank read j's row from memory; each other rank that reads it gets it once
            link = readers[..., self.rank].sum(0) * row
            network = torch.zeros(n, dtype=torch.int64)
            back_network = torch.zeros(n, dtype=torch.int64)
            reader_of = S.transpose(1, 2) & mine.view(1, 1, n)  # [b, j, i]: i (held here) reads j
            for r, send, recv in plan:
                network.index_add_(0, send % n, torch.full((send.numel(),), row, dtype=torch.int64))
                link.index_add_(0, send % n, readers[..., r].flatten()[send] * row)
                if recv.numel():  # the gradient of each received row goes back, counted for its first reader here
                    first = reader_of[recv // n, recv % n].to(torch.int8).argmax(1)
                    back_network.index_add_(0, first, torch.full((recv.numel(),), row, dtype=torch.int64))
            sink(MixRecord(agents=held, link_bytes=link[held], network_bytes=network[held]))
            back_link = S[:, held].sum((0, 2)).to(torch.int64) * row

            def on_backward():
                sink(MixRecord(agents=held, link_bytes=back_link, network_bytes=back_network[held]))
        if h.requires_grad and torch.is_grad_enabled():
            return _RowExchange.apply(h, plan, local, on_backward)
        with torch.no_grad():
            return _RowExchange.apply(h, plan, local, None)

    def mix_(self, leaves: list[Tensor], W: Tensor, history: LinkHistory | None = None) -> MixRecord:
        """Neighbour-only exchange of this step's vectors; with ``history`` (latency), the rank keeps what it received.

        The history entry of a step holds the vectors this rank read in it
        (its own agents' and the received ones, ``rows`` of ``agents``) and
        the rows of ``W`` of its agents: the step then mixes its agents'
        current vectors with the neighbour vectors of ``d`` steps ago, as
        :class:`~benchmarl_decentral.distributed.InProcessTransport` does
        with all of them. What is sent does not change.
        """
        n = W.shape[0]
        local, owner = self.local_agents(n), self.owner_of(n)
        m = local.numel()
        dtypes = {p.dtype for p in leaves}
        if len(dtypes) > 1:
            raise ValueError(f"the mixed leaves must share one dtype to travel as one vector, got {dtypes}")
        bad = [tuple(p.shape) for p in leaves if p.dim() == 0 or p.shape[0] != m]
        if bad:
            raise ValueError(f"rank {self.rank} holds {m} agents but got leaves of shapes {bad[:3]}")
        if not leaves:
            zeros = torch.zeros(m, dtype=torch.int64)
            return MixRecord(local, zeros, zeros.clone(), torch.zeros(m, n, dtype=torch.int64))

        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(m, -1) for p in leaves], dim=1).cpu()  # (m, D)
        S = sends(W).cpu()  # S[j, i]: i sends to j
        ranks = torch.nn.functional.one_hot(owner, self.world_size).to(torch.int64)  # (n, R)
        readers = S.T.to(torch.int64) @ ranks  # readers[i, r]: agents on rank r reading agent i
        row_bytes = flat.shape[1] * flat.element_size()

        ops: list[dist.P2POp] = []
        received: list[tuple[Tensor, Tensor]] = []
        link_bytes = readers[local, self.rank] * row_bytes  # co-located neighbours read it from memory
        network_bytes = torch.zeros(m, dtype=torch.int64)
        for r in range(self.world_size):
            if r == self.rank:
                continue
            out_rows = torch.nonzero(readers[local, r] > 0).flatten()  # rows of flat that rank r reads
            if out_rows.numel():
                buf = to_wire(flat[out_rows].contiguous())
                ops.append(dist.P2POp(dist.isend, buf, r))
                sent = buf[0].numel() * buf.element_size()  # bytes of each row actually sent
                network_bytes[out_rows] += sent
                link_bytes[out_rows] += readers[local[out_rows], r] * sent
            srcs = torch.nonzero((owner == r) & (readers[:, self.rank] > 0)).flatten()
            if srcs.numel():
                buf = torch.empty(srcs.numel(), flat.shape[1], dtype=flat.dtype, device=wire_device())
                ops.append(dist.P2POp(dist.irecv, buf, r))
                received.append((srcs, buf))
        _p2p(ops)
        received = [(srcs, buf.to(flat.device)) for srcs, buf in received]  # off the wire, beside flat

        theta = torch.zeros(n, flat.shape[1], dtype=flat.dtype)
        if history is None:
            theta[local] = flat
            for srcs, buf in received:
                theta[srcs] = buf
            mixed = W[local].to(theta) @ theta  # (m, D); W is 0 on every row of theta left empty
        else:  # the vectors read in step max(t - d, 0), and that step's weights (m, n)
            arrived = history.exchange({
                "W": W[local].detach().cpu().clone(),
                "agents": torch.cat([local, *(srcs for srcs, _ in received)]),
                "rows": torch.cat([flat, *(buf for _, buf in received)]),
            })
            theta[arrived["agents"]] = arrived["rows"].to(theta)
            W_s = arrived["W"].to(theta)
            own = W_s[torch.arange(m), local]
            others = W_s.clone()
            others[torch.arange(m), local] = 0
            mixed = own.unsqueeze(1) * flat + others @ theta  # mix_delayed_ on the rows held here
        with torch.no_grad():
            offset = 0
            for p in leaves:
                size = p[0].numel()
                p.copy_(mixed[:, offset : offset + size].reshape_as(p).to(p.device))
                offset += size
        # per link: the vector each reader got, from memory or in the message sent to its rank
        links = S.T[local].to(torch.int64) * row_bytes
        return MixRecord(agents=local, link_bytes=link_bytes, network_bytes=network_bytes, links=links)
