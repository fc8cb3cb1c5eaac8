"""Distributed mode (preview): agents as separate processes on torch.distributed.

What exists today (issue 18, first slice; decpg only, single machine, gloo):

* a transport interface for the DSGD mixing step
  (:class:`~benchmarl_decentral.distributed.transport.Transport`) that
  :class:`~benchmarl_decentral.consensus.ConsensusMixer`, hence ``decpg``,
  goes through in every run: :class:`InProcessTransport` (the default, all
  agents stacked in one process) and :class:`TorchDistributedTransport`
  (each rank holds a block of agents; parameter vectors travel point to point
  to the ranks of the neighbours in ``W``, nothing else);
* MATRPO's ADMM link exchange (001 eq. 22) as a second transport method,
  :meth:`Transport.exchange_link_ends`: in synchronous ADMM each end of a link
  sends ``y + beta C J x`` (one ``(M, K)`` value) to the other end and
  updates its own ``z``, ``y``
  (:func:`~benchmarl_decentral.objectives.admm.dual_update` with a
  ``transport``); a building block, matrpo's training is not split yet;
* byte accounting in both modes (:class:`MixRecord`, :func:`mixing_bytes`),
  logged by ``decpg`` as ``comm/train_bytes_per_agent`` and
  ``comm/train_network_bytes_per_agent``;
* one rank of a BenchMARL experiment
  (:mod:`benchmarl_decentral.distributed.experiment`: every rank steps a copy
  of the environment and the ranks exchange their agents' actions) and the
  entry point ``torchrun --nproc-per-node N -m benchmarl_decentral.distributed
  algorithm=decpg task=...`` (:mod:`benchmarl_decentral.distributed.__main__`);
* the launch checks (:func:`plan_launch`: algorithm support, world size vs
  agents) and a local spawner for tests (:func:`spawn_local`);
* checkpoints and torchrun's elastic restart
  (:mod:`benchmarl_decentral.distributed.checkpoint`): every rank writes its
  own experiment state into rank 0's run folder (atomically, no message to
  the other ranks); when a rank dies, ``torchrun --max-restarts K`` restarts
  the group and every rank resumes the newest checkpoint all ranks completed,
  exactly (the uninterrupted run's parameters and logs).

Ownership and messages of one DSGD step, 4 agents on a ring, 2 ranks::

    rank 0: agents 0,1 (theta_0, theta_1, their optimizer state)
    rank 1: agents 2,3 (theta_2, theta_3, their optimizer state)

    rank 0 --[theta_0, theta_1]--> rank 1     (3 reads 0, 2 reads 1)
    rank 1 --[theta_2, theta_3]--> rank 0     (1 reads 2, 0 reads 3)
    agent 0 reads theta_1 from memory (same rank), and so on.

Plan for the rest:

1. *Environment interface that scales*: today every rank steps a full copy of
   the environment and sends its actions to every rank (traffic grows with
   the ranks). A central environment rank would scatter each rank's
   observations and gather its actions, one message per rank and step.
2. *Only local parameters*: a rank still builds every agent's networks (the
   rows of other agents are stale and unread); building ``n_local`` agents
   needs BenchMARL's model to take a subset of the group.
3. *Cross-agent metrics and the averaged evaluation model* (consensus
   distance, ``theta_avg``): a reduction outside training, on rank 0.
4. dg_mappo (D-GAT messages per environment step, parameter mixing of eqs.
   9-10) as one more transport method; matrpo's training on ranks (its ADMM
   link exchange already goes through
   :meth:`Transport.exchange_link_ends`, see
   :func:`~benchmarl_decentral.objectives.admm.synchronous_iteration`);
   several agent groups; faults (dropped messages are already real here;
   a dead rank is restarted from the last checkpoint, see above).
"""

from __future__ import annotations

from benchmarl_decentral.distributed.launch import (
    DISTRIBUTED_ALGORITHMS,
    check_algorithm,
    free_port,
    partition_agents,
    plan_launch,
    spawn_local,
)
from benchmarl_decentral.distributed.torch_dist import TorchDistributedTransport
from benchmarl_decentral.distributed.transport import (
    CommCounter,
    InProcessTransport,
    MixRecord,
    Transport,
    bytes_per_agent,
    current_transport,
    link_end_bytes,
    mixing_bytes,
    per_link_bytes,
    sends,
    use_transport,
)

__all__ = [
    "DISTRIBUTED_ALGORITHMS",
    "CommCounter",
    "InProcessTransport",
    "MixRecord",
    "TorchDistributedTransport",
    "Transport",
    "bytes_per_agent",
    "check_algorithm",
    "current_transport",
    "free_port",
    "link_end_bytes",
    "mixing_bytes",
    "partition_agents",
    "per_link_bytes",
    "plan_launch",
    "sends",
    "spawn_local",
    "use_transport",
]
