"""Distributed mode (preview): agents as separate processes on torch.distributed.

What exists today (issue 18; decpg, dg_mappo and matrpo, single machine, gloo; nccl untried):

* a transport interface for the DSGD mixing step
  (:class:`~benchmarl_decentral.distributed.transport.Transport`) that
  :class:`~benchmarl_decentral.consensus.ConsensusMixer` (``decpg``) and
  ``dg_mappo``'s mixing of its ``consensus_params`` (000 eqs. 9-10) go through
  in every run: :class:`InProcessTransport` (the default, all agents stacked
  in one process) and :class:`TorchDistributedTransport` (each rank holds a
  block of agents; parameter vectors travel point to point to the ranks of
  the neighbours in ``W``, nothing else); with a per-link latency ``d``
  (``algorithm.link_latency``) the caller passes the messages in flight,
  :class:`LinkHistory`, to :meth:`Transport.mix_` (``history=``): in one
  process every agent's vectors of the last ``d`` steps, across ranks what
  each rank received (the bytes sent per step do not change);
* D-GAT's messages (000 eqs. 7-8, and eq. 11's neighbour embeddings) as a
  second transport method, :meth:`Transport.exchange_rows`, which the D-GAT
  model calls before every hop: in one process it returns its input; across
  ranks the rows ``h_j`` that agents of another rank read travel point to
  point, and in the backward pass the gradient of every received row goes
  back to its owner (agent ``i``'s loss trains agent ``j``'s D-GAT through
  ``j``'s message: the sum over agents of Algorithm 1, line 17, is not
  separable by agent, so the gradients must travel);
  :meth:`Transport.own_rows` cuts what a rank computed for agents it does not
  hold before a loss reads it, and the D-GAT model's ``local_mean`` leaves
  their eq. 11 terms to their owners;
* MATRPO's ADMM link exchange (001 eq. 22) as a third transport method,
  :meth:`Transport.exchange_link_ends`: in synchronous ADMM each end of a link
  sends ``y + beta C J x`` (one ``(M, K)`` value) to the other end and
  updates its own ``z``, ``y``
  (:func:`~benchmarl_decentral.objectives.admm.dual_update` with a
  ``transport``); matrpo trains on ranks with it (``--agents all``:
  :func:`~benchmarl_decentral.objectives.run_admm` steps the rank's agents,
  in the asynchronous modes on a link schedule every rank draws alike from
  the run's seed, and the far ends' ``J x`` come back from the values they
  sent);
* byte accounting in both modes (:class:`MixRecord`, :func:`mixing_bytes`,
  :func:`message_bytes`), logged as ``comm/train_bytes_per_agent`` and
  ``comm/train_network_bytes_per_agent`` (decpg: mixing; dg_mappo: mixing,
  the D-GAT messages of training and their gradients) and, for dg_mappo,
  ``comm/exec_bytes_per_agent`` / ``comm/exec_network_bytes_per_agent`` (the
  D-GAT messages while acting: collection and evaluation);
* one rank of a BenchMARL experiment
  (:mod:`benchmarl_decentral.distributed.experiment`: every rank steps a copy
  of the environment and the ranks exchange their agents' actions) and the
  entry point ``torchrun --nproc-per-node N -m benchmarl_decentral.distributed
  algorithm=decpg|dg_mappo task=...`` (:mod:`benchmarl_decentral.distributed.__main__`);
* only the rank's agents (``--agents local``, decpg, dg_mappo and matrpo;
  :mod:`benchmarl_decentral.distributed.local`): the experiment is built on
  :class:`~benchmarl_decentral.distributed.local.LocalAgentsTask`, whose
  groups list the rank's block and whose environment has those agents'
  specs, so the rank's networks, optimizer state and replay buffer are its
  block's; the joint environment is stepped by a backend
  (``--env replicated``,
  :class:`~benchmarl_decentral.distributed.local.ReplicatedEnvs`: a copy per
  rank, the action blocks exchanged in the step; ``--env central``,
  :class:`~benchmarl_decentral.distributed.local.CentralEnv`: rank 0 steps
  the only copy, gets the other ranks' action blocks and sends each its part
  of the output, point to point); a task without a global
  state offers the joint observation decpg's centralized critics read;
* several agent groups: every rank owns an equal block of every group
  (:func:`plan_launch`: the world size must divide every group's size); one
  :class:`TorchDistributedTransport` serves them all, finding a group's
  placement from its size (``W`` is ``n_g x n_g``), so the algorithms pass
  what they pass in one process; the action exchange sends every group's
  block of actions, and the bytes are logged per group
  (``comm/<group>/...``) and over all groups;
* the launch checks (:func:`plan_launch`: algorithm support, world size vs
  every group's agents; the entry point's ``check_config``) and a local
  spawner for tests (:func:`spawn_local`);
* the process-group backend, ``--backend gloo|nccl`` (``spawn_local(...,
  backend=)``): gloo, the default, is the tested path (on CPU; with the
  experiment on one GPU the transport moves what it sends to the host);
  nccl needs one CUDA GPU per rank (refused before the ranks join where the
  node has fewer, :func:`~benchmarl_decentral.distributed.launch.check_backend`),
  sets ``cuda:LOCAL_RANK`` as the rank's device and sends and receives there
  (:mod:`benchmarl_decentral.distributed.wire`: every send and receive buffer
  goes through ``to_wire`` / ``wire_device``, ``Tensor.cpu()`` under gloo).
  nccl has not been run: no machine with several GPUs was available (its
  test, nccl against gloo, skips with fewer than 2 GPUs);
* checkpoints and torchrun's elastic restart, decpg and dg_mappo
  (:mod:`benchmarl_decentral.distributed.checkpoint`): every rank writes its
  own experiment state into rank 0's run folder (atomically, no message to
  the other ranks); when a rank dies, ``torchrun --max-restarts K`` restarts
  the group and every rank resumes the newest checkpoint all ranks completed,
  exactly (the uninterrupted run's parameters and logs), with one agent
  group or several (the launch file records every group's size and the
  algorithm / model settings a checkpoint must be resumed with).

Ownership and messages, 4 agents on a ring, 2 ranks::

    rank 0: agents 0,1 (their actor, critic, D-GAT psi_0, psi_1, optimizer state)
    rank 1: agents 2,3 (the same for agents 2, 3)

    DSGD step (decpg; dg_mappo after every optimizer step, eqs. 9-10):
      rank 0 --[theta_0, theta_1]--> rank 1     (3 reads 0, 2 reads 1)
      rank 1 --[theta_2, theta_3]--> rank 0     (1 reads 2, 0 reads 3)
    D-GAT hop k (dg_mappo; every env step, and in the loss):
      rank 0 --[h^k_0, h^k_1 of the samples where 3 / 2 read them]--> rank 1
      rank 1 --[h^k_2, h^k_3 ...]--> rank 0
      backward: the same rows' gradients dL/dh^k_j, the other way
    eq. 11 in the loss: the neighbours' final h_j, the same way (and back)
    agent 0 reads theta_1 and h_1 from memory (same rank), and so on.

Plan for the rest:

1. *Environment interface that scales*: ``--env central`` (above) steps one
   copy on rank 0, which sends each rank its part of every step; rank 0
   then sends every other rank's observations, so its traffic grows with the
   ranks and is larger than the replicated backend's action exchange (see
   the README). Left: the other ranks still build the joint environment
   object (for its specs), and rank 0 could send the joint rewards (logs
   only) to nobody.
2. *Only local parameters*: done (``--agents local``, above) for decpg,
   dg_mappo and matrpo, static graphs and the graphs of every agent's
   observation (ally visibility, radius: read from the joint observation of
   :class:`~benchmarl_decentral.distributed.local.LocalAgentsEnv`, offered
   on tasks without a global state or on demand).
3. *Cross-agent metrics and the averaged evaluation model* (consensus
   distance, ``theta_avg``, dg_mappo's ``evaluation_dropout``): a reduction
   outside training, on rank 0.
4. matrpo with ``--agents local`` on the central environment rank (the
   joint actions and masks its models score are not sent yet); faults (dropped messages are already real for the mixing; a dead rank is
   restarted from the last checkpoint, see above; checkpoints of tasks with
   several groups: the launch record and the rank's agent list hold one
   group today).
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
    LinkHistory,
    MixRecord,
    Transport,
    bytes_per_agent,
    check_latency,
    current_transport,
    link_end_bytes,
    message_bytes,
    mixing_bytes,
    per_link_bytes,
    sends,
    use_transport,
)

__all__ = [
    "DISTRIBUTED_ALGORITHMS",
    "CommCounter",
    "InProcessTransport",
    "LinkHistory",
    "MixRecord",
    "TorchDistributedTransport",
    "Transport",
    "bytes_per_agent",
    "check_latency",
    "check_algorithm",
    "current_transport",
    "free_port",
    "link_end_bytes",
    "message_bytes",
    "mixing_bytes",
    "partition_agents",
    "per_link_bytes",
    "plan_launch",
    "sends",
    "spawn_local",
    "use_transport",
]
