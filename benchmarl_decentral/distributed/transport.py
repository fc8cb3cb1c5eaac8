"""The transport interface of the DSGD mixing step, its in-process transport and its byte accounting.

A transport carries out one mixing step ``theta_i <- sum_j W_ij theta_j``
(002_4f291ba56d03e11d.txt sec. 3; 000_ef718962e1e8f612.txt eq. (9)) on the
parameters this process holds, and says how many bytes every agent sent for it.
:class:`~benchmarl_decentral.consensus.ConsensusMixer` only talks to a
transport, so the algorithms (``decpg``) never branch on the mode:

* :class:`InProcessTransport`: every agent's leaves are stacked ``(n, ...)`` in
  one process; the step is one matrix product per leaf
  (:func:`~benchmarl_decentral.consensus.mix_`). Bytes come from the formula
  :func:`mixing_bytes` (nothing crosses a process boundary).
* :class:`~benchmarl_decentral.distributed.torch_dist.TorchDistributedTransport`:
  each rank holds a block of agents ``(n_local, ...)`` and exchanges flat
  parameter vectors point to point with the ranks of its neighbours in ``W``;
  bytes are counted from the tensors it sends.

Per-link latency (``latency = d``, :class:`LinkHistory`): a message takes
``d`` mixing steps to arrive; the caller passes the history of the messages
in flight to :meth:`Transport.mix_` (``history=``), the same call in both
modes. In one process the history is the last ``d`` stacked parameter vectors
of every agent; across processes each rank keeps what it received (and its
own agents' vectors), so one vector per link and step is still all that is
sent. D-GAT messages (:meth:`Transport.exchange_rows`) are never delayed.

A transport serves every agent group of a task: a call names the agents of
one group by their index in it (``0..n-1``), and the group's size (``W`` is
``n x n``, ``h`` has ``n`` agent rows) is all a distributed transport needs to
find their ranks (:meth:`Transport.local_agents`), so a multi-group algorithm
passes the same arguments in both modes.

Pure torch: no BenchMARL import.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class MixRecord:
    """What one mixing step sent, per agent held here.

    Attributes:
        agents: global indices of the agents held here, ``(n_local,)``.
        link_bytes: bytes each of them sent over its links ``i -> j`` (``j != i``,
            ``W_ji != 0``): one parameter vector per neighbour that reads it,
            the algorithm's communication cost. ``(n_local,)`` int64.
        network_bytes: the part of it that crossed a process boundary (one
            vector per destination rank; 0 in one process). ``(n_local,)`` int64.
        links: bytes per link, ``links[a, j]``: what the ``a``-th agent held
            here sent to agent ``j`` (one parameter vector when ``j`` reads it,
            else 0); its row sums are ``link_bytes``. ``(n_local, n)`` int64.
    """

    agents: Tensor
    link_bytes: Tensor
    network_bytes: Tensor
    links: Tensor | None = None


def check_latency(latency: object, owner: str = "latency") -> int:
    """``latency`` as an int ``d >= 0`` (mixing steps a message takes over a link), else one ValueError."""
    if isinstance(latency, bool) or not isinstance(latency, int) or latency < 0:
        raise ValueError(
            f"{owner} must be an integer number of mixing steps >= 0 (0: synchronous), got {latency!r}"
        )
    return latency


class LinkHistory:
    """The messages in flight of a DSGD mixing step with per-link latency ``d``: a ring of ``d`` entries.

    One entry per mixing step: what the step sent (the transport decides its
    form: in one process every agent's vectors, across processes what this
    rank holds and received) and the weights ``W`` it was sent with.
    :meth:`exchange` stores step ``t``'s entry and gives back step
    ``max(t - d, 0)``'s: the message that arrives at step ``t``. Before ``d``
    steps exist it gives back the first step's entry (the oldest there is:
    the ring starts filled with it). Memory: ``d`` entries.

    Part of the experiment state: :meth:`state_dict` / :meth:`load_state_dict`
    (tensors, ints and lists: ``torch.load(..., weights_only=True)`` reads it).

    Args:
        latency: ``d >= 1``.

    Attributes:
        latency: ``d``.
        steps: mixing steps taken so far (``t`` of the next one).
    """

    def __init__(self, latency: int) -> None:
        if check_latency(latency, "LinkHistory latency") < 1:
            raise ValueError("LinkHistory needs latency >= 1 (latency 0 keeps no history: pass history=None)")
        self.latency = latency
        self.steps = 0
        self._slots: list[dict] = []

    def exchange(self, entry: dict) -> dict:
        """Keep the entry of step ``t = steps`` and return the one of step ``max(t - d, 0)``; ``steps += 1``."""
        if self.steps == 0:
            self._slots = [entry] * self.latency
        slot = self.steps % self.latency  # written at step t - d, or at step 0 while t < d
        arrived, self._slots[slot] = self._slots[slot], entry
        self.steps += 1
        return arrived

    def state_dict(self) -> dict:
        """``{"latency", "steps", "slots"}``: the ring as it is (entries of dicts of tensors)."""
        return {"latency": self.latency, "steps": self.steps, "slots": list(self._slots)}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (of the same latency)."""
        if int(state["latency"]) != self.latency:
            raise ValueError(
                f"the saved link history has latency {int(state['latency'])}, this run {self.latency}: "
                "resume with the run's link_latency"
            )
        self.steps = int(state["steps"])
        self._slots = list(state["slots"])


def sends(W: Tensor) -> Tensor:
    """``S[j, i] = W_ji != 0 and j != i``: agent ``i`` sends ``theta_i`` to ``j`` in one mixing step.

    A link with weight 0 (a failed link after renormalisation, or an absent
    one) carries no message.
    """
    n = W.shape[-1]
    return (W != 0) & ~torch.eye(n, dtype=torch.bool, device=W.device)


def mixing_bytes(W: Tensor, bytes_per_agent: int, owner: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Bytes each agent sends in one mixing step, by formula.

    ``link_bytes_i = out_degree_i(W) * bytes_per_agent``, with ``out_degree_i``
    the number of agents ``j != i`` with ``W_ji != 0`` (every neighbour reads
    agent ``i``'s whole parameter vector). With ``owner`` (agent -> rank), the
    vector goes once to every *other* rank that holds a reader:
    ``network_bytes_i = |{owner_j : W_ji != 0, owner_j != owner_i}| * bytes_per_agent``.

    Args:
        W: mixing matrix ``(n, n)`` of the step.
        bytes_per_agent: size of one agent's parameter vector in bytes
            (``numel * element_size`` summed over the mixed leaves).
        owner: rank of every agent ``(n,)``; ``None`` means one process. (default: None)

    Returns:
        ``(link_bytes, network_bytes)``, each ``(n,)`` int64.
    """
    S = sends(W).cpu()
    link = S.sum(0).to(torch.int64) * bytes_per_agent
    if owner is None:
        return link, torch.zeros_like(link)
    owner = owner.cpu().long()
    ranks = torch.nn.functional.one_hot(owner, int(owner.max()) + 1).bool()  # (n, R)
    # reaches[i, r]: some agent on rank r reads agent i
    reaches = (S.T.to(torch.int64) @ ranks.to(torch.int64)) > 0
    reaches &= ~ranks  # its own rank reads it from memory
    return link, reaches.sum(1).to(torch.int64) * bytes_per_agent


def per_link_bytes(W: Tensor, bytes_per_agent: int) -> Tensor:
    """Bytes per link of one mixing step, by formula: ``L[i, j] = bytes_per_agent`` where ``j`` reads ``i``.

    ``L = sends(W).T * bytes_per_agent`` (rows: senders, columns: readers);
    ``L.sum(1)`` is :func:`mixing_bytes`' ``link_bytes``. ``(n, n)`` int64.
    """
    return sends(W).T.cpu().to(torch.int64) * bytes_per_agent


def bytes_per_agent(leaves: Iterable[Tensor]) -> int:
    """Size in bytes of one agent's slice of stacked leaves ``(n, ...)``."""
    return sum(p[0].numel() * p.element_size() for p in leaves)


def _senders(reads: Tensor, device: torch.device | str | None = "cpu") -> Tensor:
    """``reads`` without self loops, as a batch of graphs ``(B, n, n)`` (``(n, n)`` gives ``B = 1``).

    On ``device`` (``None``: where ``reads`` is, so that counting on a GPU waits for nothing).
    """
    n = reads.shape[-1]
    reads = reads.bool() if device is None else reads.bool().to(device)
    S = reads & ~torch.eye(n, dtype=torch.bool, device=reads.device)
    return S.reshape(-1, n, n)


def message_bytes(reads: Tensor, row_bytes: int, owner: Tensor | None = None, *,
                  backward: bool = False) -> tuple[Tensor, Tensor]:
    """Bytes of one D-GAT message exchange (000 eqs. 7-8), per agent, by formula.

    Forward (``backward=False``): at every sample ``b`` agent ``j`` sends its
    row ``h_j`` (``row_bytes``) to every ``i != j`` with ``reads[b, i, j]``:
    ``link_j = sum_b |{i != j : reads[b, i, j]}| * row_bytes``. Across processes
    (``owner``) the row goes once to every *other* rank that holds a reader at
    ``b``: ``network_j = sum_b |{owner_i : reads[b, i, j], owner_i != owner_j}| * row_bytes``.

    Backward (``backward=True``, the gradients of the messages): every reader
    ``i`` sends ``dL/dh_j`` back over each link it read, ``link_i = sum_b
    |{j != i : reads[b, i, j]}| * row_bytes``; across processes a rank sends one
    gradient row per ``(b, j)`` it read (the sum over its readers), counted for
    its first reader of ``j`` at ``b`` (lowest index).

    Args:
        reads: bool ``(*B, n, n)`` or ``(n, n)`` (one graph for every sample,
            then counted once: pass it expanded to count a batch).
        row_bytes: bytes of one message row (``F * element_size``).
        owner: rank of every agent ``(n,)``; ``None``: one process. (default: None)
        backward: count the gradient messages instead. (default: False)

    Returns:
        ``(link_bytes, network_bytes)``, each ``(n,)`` int64.
    """
    S = _senders(reads, None if owner is None else "cpu")  # (B, i, j)
    n = S.shape[-1]
    link = (S.sum((0, 1)) if not backward else S.sum((0, 2))).to(torch.int64) * row_bytes
    network = torch.zeros(n, dtype=torch.int64, device=S.device)
    if owner is None:  # on the device of reads: the caller moves the sums when it reads them
        return link, network
    owner = owner.cpu().long()
    for r in range(int(owner.max()) + 1):
        on_r = S & (owner == r).view(1, n, 1)  # readers on rank r
        crosses = on_r.any(1) & (owner != r).view(1, n)  # (B, j): j's row goes to rank r
        if not backward:
            network += crosses.sum(0).to(torch.int64) * row_bytes
        else:
            first = on_r.to(torch.int8).argmax(1)  # (B, j): first reader on r
            network.index_add_(0, first[crosses], torch.full((int(crosses.sum()),), row_bytes, dtype=torch.int64))
    return link, network


class Transport(ABC):
    """How one DSGD mixing step reaches the parameters of the neighbours.

    A transport holds no parameters: :meth:`mix_` gets the leaves of the agents
    held in this process, stacked ``(n_local, ...)`` in the order of
    :meth:`local_agents`, and the full ``(n, n)`` matrix ``W`` of the step
    (every process builds the same ``W``: same topology, same link-failure seed).
    """

    #: Name logged with the run (``in_process`` / ``torch_distributed``).
    name: str = "transport"

    @abstractmethod
    def local_agents(self, n_agents: int) -> Tensor:
        """Global indices (sorted, int64) of the agents whose leaves this process holds."""

    @abstractmethod
    def mix_(self, leaves: list[Tensor], W: Tensor, history: LinkHistory | None = None) -> MixRecord:
        """``theta_i <- sum_j W_ij theta_j`` in place for every agent held here; what was sent.

        With ``history`` (link latency ``d``): every agent sends its current
        vector over the links of ``W`` as without it, the transport stores what
        arrived here in ``history``, and the step applies the entry of ``d``
        steps ago, ``theta_i <- W_s,ii theta_i + sum_{j != i} W_s,ij theta_j(s)``
        (:func:`~benchmarl_decentral.consensus.mix_delayed_`). The record
        counts this step's messages.
        """

    @abstractmethod
    def exchange_link_ends(self, links: Tensor, values: Tensor, n_agents: int) -> tuple[Tensor, MixRecord]:
        """ADMM's link exchange (MATRPO, 001 eq. 22): each end of a link sends its value to the other end.

        Args:
            links: ``(l, 2)`` undirected links ``(i, j)`` (the same list, in the
                same order, in every process).
            values: ``(l, 2, ...)``: ``values[e, 0]`` is agent ``i``'s value on
                link ``e``, ``values[e, 1]`` agent ``j``'s; only the entries of
                the endpoints held here need to be valid.
            n_agents: ``n``.

        Returns:
            ``values`` with, on every link that has an end held here, the
            other end's entry as that end computed it (received when it lives
            in another process; entries of links with no end here are left
            as they were), and what the agents held here sent: one value per
            link at the agent (``links[a, j]``: to agent ``j``).
        """

    @abstractmethod
    def holds(self, agents: Tensor, n_agents: int) -> Tensor:
        """Bool mask, the shape of ``agents`` (ids in their group of ``n_agents``): which are held in this process."""

    @abstractmethod
    def exchange_rows(self, h: Tensor, reads: Tensor, sink: Callable[[MixRecord], None] | None = None) -> Tensor:
        """D-GAT messages (000 eqs. 7-8): each agent held here gets the rows of ``h`` of the agents it reads.

        ``h`` is stacked over all ``n`` agents, ``(*B, n, F)``; only the rows of
        the agents held here need to be valid. Returns a tensor of the same
        shape whose

        * rows of the agents held here are ``h``'s (gradient flows through);
        * rows ``(b, j)`` of agents held elsewhere that some agent held here
          reads (``reads[b, i, j]``, ``i`` here) are ``h_j`` as its process
          computed it: received, and in the backward pass the gradient of
          that row goes back to ``j``'s process and is added to its ``h_j``
          (agent ``i``'s loss trains ``j``'s parameters through the message,
          as backpropagation through one process does);
        * other rows are 0 (read by no agent held here; no gradient).

        In one process the output is ``h`` itself (nothing moves). Every process
        must call it with the same ``reads`` and shapes, in the same order.

        Args:
            h: ``(*B, n, F)``.
            reads: bool ``(*B, n, n)`` or ``(n, n)``: ``reads[..., i, j]``, ``i``
                receives ``j``'s row (the diagonal is ignored).
            sink: called with the :class:`MixRecord` of the messages (once in
                the forward pass, once more when the gradients travel back),
                ``links`` left ``None``. (default: None)
        """

    def own_rows(self, h: Tensor) -> Tensor:
        """``h`` ``(*B, n, F)`` with the rows of the agents held elsewhere set to 0 (in one process: ``h``).

        What a process computes for agents it does not hold is not theirs and
        must not train anything: cut it (no gradient) before a loss reads it.
        """
        n = h.shape[-2]
        held = self.holds(torch.arange(n, device=h.device), n)
        if bool(held.all()):
            return h
        return torch.where(held.view(n, 1), h, h.new_zeros(()))

    def local_rows(self, leaves: Iterable[Tensor], n_agents: int) -> list[Tensor]:
        """The rows of the agents held here, as views that share storage with ``leaves``.

        Leaves already stacked over the agents held here are returned as they
        are. Leaves stacked over all ``n_agents`` (a process that built every
        agent's networks, e.g. a replicated BenchMARL experiment) give the
        rows :meth:`local_agents` selects, which must be one contiguous block,
        so that mixing writes into the process's own parameters.
        """
        leaves = list(leaves)
        local = self.local_agents(n_agents)
        if all(p.dim() > 0 and p.shape[0] == local.numel() for p in leaves):
            return leaves
        first, last = int(local[0]), int(local[-1]) + 1
        if not torch.equal(local, torch.arange(first, last)):
            raise ValueError(f"the agents held here, {local.tolist()}, are not one contiguous block")
        bad = [tuple(p.shape) for p in leaves if p.dim() == 0 or p.shape[0] != n_agents]
        if bad:
            raise ValueError(
                f"leaves must be stacked over the {local.numel()} agents held here or all {n_agents}, "
                f"got shapes {bad[:3]}"
            )
        return [p.detach()[first:last] for p in leaves]


class InProcessTransport(Transport):
    """All agents in one process: one matrix product per stacked leaf, bytes from :func:`mixing_bytes`."""

    name = "in_process"

    def local_agents(self, n_agents: int) -> Tensor:
        return torch.arange(n_agents)

    def mix_(self, leaves: list[Tensor], W: Tensor, history: LinkHistory | None = None) -> MixRecord:
        from benchmarl_decentral.consensus.hook import mix_, mix_delayed_  # the consensus core imports this module

        if history is None:
            mix_(leaves, W)
        else:  # the history: every agent's stacked vectors of the last d steps, with their W
            sent = {"W": W.detach().clone(), "leaves": [p.detach().clone() for p in leaves]}
            arrived = history.exchange(sent)
            mix_delayed_(leaves, arrived["leaves"], arrived["W"])
        size = bytes_per_agent(leaves)
        link, network = mixing_bytes(W, size)
        return MixRecord(agents=torch.arange(W.shape[0]), link_bytes=link, network_bytes=network,
                         links=per_link_bytes(W, size))

    def holds(self, agents: Tensor, n_agents: int) -> Tensor:
        return torch.ones_like(agents, dtype=torch.bool)

    def exchange_rows(self, h: Tensor, reads: Tensor, sink: Callable[[MixRecord], None] | None = None) -> Tensor:
        if sink is None or _is_batched(h) or _is_batched(reads):  # inside torch.vmap: nothing to count
            return h
        reads = reads.expand(*h.shape[:-1], h.shape[-2]) if reads.dim() == 2 else reads
        row = h.shape[-1] * h.element_size()
        agents = torch.arange(h.shape[-2])
        link, network = message_bytes(reads, row)  # on h's device: read (and moved) once per iteration
        sink(MixRecord(agents=agents, link_bytes=link, network_bytes=network))
        if h.requires_grad:  # the gradient of every message travels back over its link
            back, back_network = message_bytes(reads, row, backward=True)
            h = h.view_as(h)
            h.register_hook(lambda grad: sink(MixRecord(agents=agents, link_bytes=back, network_bytes=back_network)))
        return h

    def exchange_link_ends(self, links: Tensor, values: Tensor, n_agents: int) -> tuple[Tensor, MixRecord]:
        value_bytes = values[0, 0].numel() * values.element_size() if values.shape[0] else 0
        per_link = link_end_bytes(links, value_bytes, n_agents)
        return values, MixRecord(agents=torch.arange(n_agents), link_bytes=per_link.sum(1),
                                 network_bytes=torch.zeros(n_agents, dtype=torch.int64), links=per_link)


def link_end_bytes(links: Tensor, value_bytes: int, n_agents: int) -> Tensor:
    """Bytes per link of one ADMM exchange, by formula: both ends of every link send one value, ``(n, n)`` int64."""
    out = torch.zeros(n_agents, n_agents, dtype=torch.int64)
    links = links.cpu().long()
    out[links[:, 0], links[:, 1]] = value_bytes
    out[links[:, 1], links[:, 0]] = value_bytes
    return out


class CommCounter:
    """Sums the :class:`MixRecord` s of the steps of one iteration, per agent held here."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start a new iteration (nothing sent yet)."""
        self.link_bytes: Tensor | None = None
        self.network_bytes: Tensor | None = None
        self.links: Tensor | None = None  # (n_local, n): bytes per link, when the transport reports them
        self.agents: Tensor | None = None
        self.steps = 0

    def add(self, record: MixRecord) -> None:
        """Count one mixing step."""
        if self.link_bytes is None:
            self.link_bytes = record.link_bytes.clone()
            self.network_bytes = record.network_bytes.clone()
            self.links = None if record.links is None else record.links.clone()
            self.agents = record.agents
        else:
            self.link_bytes += record.link_bytes
            self.network_bytes += record.network_bytes
            if self.links is not None and record.links is not None:
                self.links += record.links
        self.steps += 1


def bytes_per_agent_metrics(
    totals: dict[str, tuple[int, dict[str, float]]], group: str, last_group: str, held: int, sent: dict[str, float]
) -> dict[str, float]:
    """The ``comm/`` scalars of one group's iteration, and of all groups once ``last_group`` is in.

    ``sent`` maps a kind (``train``, ``train_network``, ``exec``, ...) to the
    bytes the group's ``held`` agents sent; it is kept in ``totals[group]``.
    Returns ``comm/<group>/<kind>_bytes_per_agent`` and, for ``last_group``,
    ``comm/<kind>_bytes_per_agent`` over every group in ``totals``: the keys
    decpg, dg_mappo and matrpo log and ``benchmarl report`` reads.
    """
    totals[group] = (held, sent)
    metrics = {f"comm/{group}/{kind}_bytes_per_agent": value / held for kind, value in sent.items()}
    if group == last_group:
        agents = sum(h for h, _ in totals.values())
        for kind in sent:
            metrics[f"comm/{kind}_bytes_per_agent"] = sum(kinds[kind] for _, kinds in totals.values()) / agents
    return metrics


def _is_batched(t: Tensor) -> bool:
    """Whether ``t`` is a functorch BatchedTensor (inside ``torch.vmap``)."""
    return bool(torch._C._functorch.is_batchedtensor(t))


_CURRENT: list[Transport] = []


def current_transport() -> Transport:
    """The transport installed by :func:`use_transport` (innermost), else a new :class:`InProcessTransport`."""
    return _CURRENT[-1] if _CURRENT else InProcessTransport()


@contextlib.contextmanager
def use_transport(transport: Transport) -> Iterator[Transport]:
    """Mixers built inside this block (e.g. by ``decpg``'s setup) use ``transport``.

    The launcher of a distributed run installs its
    :class:`~benchmarl_decentral.distributed.torch_dist.TorchDistributedTransport`
    this way, so the algorithm code is the same in both modes.
    """
    _CURRENT.append(transport)
    try:
        yield transport
    finally:
        _CURRENT.remove(transport)
