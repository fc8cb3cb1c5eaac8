"""Placing agents on ranks, the checks a launch runs before anything trains, and a local process spawner.

Pure torch: no BenchMARL import.
"""

from __future__ import annotations

import datetime
import math
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor

#: Algorithms whose training traffic the distributed transport can carry, and what is still missing
#: for the others (the message of :func:`check_algorithm`).
DISTRIBUTED_ALGORITHMS: tuple[str, ...] = ("decpg", "dg_mappo", "dg_mappo_paper", "matrpo", "matrpo_paper")
_NOT_SUPPORTED: dict[str, str] = {
    "magpo": "its guider is centralized by design (one network reads every agent), so it cannot be split by agent",
}


#: Process-group backends of a distributed launch (``--backend``): gloo (the default, tested on CPU; on a
#: GPU what is sent is moved to the host) and nccl (one CUDA GPU per rank; not run yet).
BACKENDS: tuple[str, ...] = ("gloo", "nccl")


def check_backend_name(backend: str) -> None:
    """Refuse a ``--backend`` that is not one of :data:`BACKENDS`."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown --backend {backend}; choose one of {'|'.join(BACKENDS)}.")


def check_backend(backend: str, local_world_size: int) -> None:
    """Refuse a backend this machine cannot run, before any process group is joined.

    Args:
        backend: ``gloo`` or ``nccl``.
        local_world_size: ranks on this node (torchrun's ``LOCAL_WORLD_SIZE``).

    Raises:
        ValueError: an unknown backend; nccl without CUDA, or with fewer CUDA
            devices than ranks on the node (NCCL needs one GPU per rank).
    """
    check_backend_name(backend)
    if backend != "nccl":
        return
    fix = "launch with --backend gloo, which runs on CPU and with one GPU."
    if not torch.cuda.is_available():
        raise ValueError(f"--backend nccl needs one CUDA GPU per rank, and CUDA is not available here; {fix}")
    devices = torch.cuda.device_count()
    if devices < local_world_size:
        raise ValueError(f"--backend nccl needs one CUDA GPU per rank: {local_world_size} ranks on this node, "
                         f"{devices} CUDA device(s); launch one rank per GPU (torchrun --nproc-per-node {devices}) "
                         f"or {fix}")


def check_algorithm(name: str) -> None:
    """Refuse an algorithm the distributed mode cannot run, naming why and what to use instead.

    Raises:
        ValueError: ``name`` is not in :data:`DISTRIBUTED_ALGORITHMS`.
    """
    if name in DISTRIBUTED_ALGORITHMS:
        return
    why = _NOT_SUPPORTED.get(name, "it has no consensus step between agents (nothing to distribute by agent)")
    raise ValueError(
        f"algorithm={name} has no distributed support: {why}. "
        f"Distributed runs support algorithm={'|'.join(DISTRIBUTED_ALGORITHMS)}; "
        f"run {name} in one process (benchmarl run algorithm={name} ...)."
    )


def _misfit(n_agents: int, world_size: int) -> str | None:
    """Why ``world_size`` ranks cannot own equal blocks of ``n_agents`` agents (None: they can)."""
    if world_size >= 1 and n_agents >= 1 and n_agents % world_size == 0:
        return None
    if world_size > n_agents:
        return f"{world_size - n_agents} of the {world_size} ranks would own no agent"
    return f"{n_agents} agents do not split into {world_size} equal blocks"


def partition_agents(n_agents: int, world_size: int, *, group: str = "agents") -> Tensor:
    """Contiguous equal blocks: agent ``i`` goes to rank ``i // (n_agents // world_size)``.

    One agent per rank when ``world_size == n_agents``; blocks of
    ``n_agents / world_size`` agents otherwise. Equal blocks keep every rank's
    work and its share of the messages the same.

    Args:
        n_agents: agents in the group.
        world_size: number of ranks.
        group: group name, for the error message. (default: "agents")

    Returns:
        ``owner``, the rank of every agent, ``(n_agents,)`` int64.

    Raises:
        ValueError: ``world_size`` is not a divisor of ``n_agents`` (a rank would
            own no agent, or the blocks would differ in size).
    """
    problem = _misfit(n_agents, world_size)
    if problem is not None:
        divisors = [d for d in range(1, n_agents + 1) if n_agents % d == 0]
        raise ValueError(
            f"world size {world_size} does not fit group '{group}' of {n_agents} agents: {problem}. "
            f"Launch a number of processes that divides {n_agents} (torchrun --nproc-per-node N with "
            f"N in {divisors})."
        )
    return torch.arange(n_agents) // (n_agents // world_size)


def plan_launch(algorithm: str, group_sizes: Mapping[str, int], world_size: int) -> dict[str, Tensor]:
    """All the checks of a distributed launch, run by every process before it builds anything.

    Every rank owns an equal block of every group (:func:`partition_agents`
    per group), so the world size must divide every group's size.

    Args:
        algorithm: algorithm name (``algorithm=...``).
        group_sizes: agents per group of the task.
        world_size: number of ranks.

    Returns:
        ``owner`` of every group (:func:`partition_agents`), in the task's group order.

    Raises:
        ValueError: the algorithm has no distributed support, or the world
            size does not divide the agents of some group (one message naming
            every group that does not fit and the world sizes that fit all).
    """
    check_algorithm(algorithm)
    misfits = {g: problem for g, n in group_sizes.items() if (problem := _misfit(n, world_size)) is not None}
    if len(group_sizes) > 1 and misfits:
        common = math.gcd(*group_sizes.values())
        fits = [d for d in range(1, common + 1) if common % d == 0]
        what = "; ".join(f"group '{g}' of {group_sizes[g]} agents: {problem}" for g, problem in misfits.items())
        sizes = ", ".join(f"'{g}' {n}" for g, n in group_sizes.items())
        raise ValueError(
            f"world size {world_size} does not fit {what}. Every rank owns an equal block of every group: launch "
            f"a number of processes that divides every group's size ({sizes}) (torchrun --nproc-per-node N with "
            f"N in {fits})."
        )
    return {g: partition_agents(n, world_size, group=g) for g, n in group_sizes.items()}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for ``MASTER_PORT``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bootstrap(rank: int, fn: Callable, world_size: int, port: int, timeout_s: float, args: tuple,
               backend: str = "gloo") -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    if backend == "nccl":  # one GPU per rank, the rank's wire device (distributed.wire)
        os.environ.update(LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size))
        torch.cuda.set_device(rank)
    dist.init_process_group(
        backend, rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=timeout_s)
    )
    if backend == "nccl":  # a collective of every rank first: NCCL's batch_isend_irecv wants one before any p2p
        dist.barrier()
    try:
        fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def spawn_local(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    port: int | None = None,
    start_method: str = "spawn",
    timeout_s: float = 60.0,
    backend: str = "gloo",
) -> None:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` local processes joined by a gloo group.

    The single-machine counterpart of ``torchrun --nproc-per-node world_size``
    for tests and examples: ``MASTER_ADDR=127.0.0.1``, a free port, CPU gloo
    (``backend="nccl"``: rank ``r`` on GPU ``r``, not run yet; start them with
    ``spawn``: a forked process cannot use CUDA once its parent has).
    An exception in any process is raised here.

    Args:
        fn: picklable (module-level) function.
        world_size: number of processes.
        *args: passed to ``fn`` after ``rank, world_size``.
        port: ``MASTER_PORT``; ``None`` picks a free one. (default: None)
        start_method: ``spawn`` or ``fork`` (fork skips re-importing modules
            in the children). (default: "spawn")
        timeout_s: process-group timeout, after which a rank waiting on a
            message that never comes fails instead of hanging. (default: 60.0)
        backend: ``gloo`` or ``nccl`` (refused here, before any process starts,
            without a GPU per process: :func:`check_backend`). (default: "gloo")
    """
    check_backend(backend, world_size)
    port = free_port() if port is None else port
    mp.start_processes(
        _bootstrap,
        args=(fn, world_size, port, timeout_s, args, backend),
        nprocs=world_size,
        join=True,
        start_method=start_method,
    )
