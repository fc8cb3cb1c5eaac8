"""Distributed mode: the process-group backend (``--backend gloo|nccl``) and the device of what goes on the wire.

gloo is the tested path; nccl (one GPU per rank) is refused before the ranks
join where there are fewer GPUs than ranks on the node, and its training test
runs only on a machine with two GPUs or more.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from benchmarl_decentral.distributed import partition_agents, spawn_local
from benchmarl_decentral.distributed.launch import BACKENDS, check_backend
from benchmarl_decentral.distributed.wire import to_wire, wire_device

from conftest import REPO

PROG = "benchmarl_decentral.distributed"
DECPG = ["algorithm=decpg", "task=coordsum/8x15-100", "experiment.evaluation=false"]


# ------------------------------------------------------------------ --backend, beside --agents and --env
@pytest.mark.parametrize(
    "argv, expected",
    [
        (["algorithm=decpg"], ("all", "replicated", "gloo", ["algorithm=decpg"])),
        (["--backend", "nccl", "algorithm=decpg"], ("all", "replicated", "nccl", ["algorithm=decpg"])),
        (["algorithm=decpg", "--backend=nccl"], ("all", "replicated", "nccl", ["algorithm=decpg"])),
        (["--backend=gloo", "--agents", "local", "--env=central", "task=coordsum/8x15-100"],
         ("local", "central", "gloo", ["task=coordsum/8x15-100"])),
    ],
    ids=["default", "space", "equals", "with-agents-env"],
)
def test_split_options_reads_the_backend(argv, expected):
    from benchmarl_decentral.distributed.__main__ import split_options

    assert split_options(argv) == expected


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--backend", "mpi", "algorithm=decpg"], r"^unknown --backend mpi; choose one of gloo\|nccl\.$"),
        (["--backend=", "algorithm=decpg"], r"^unknown --backend ; choose one of gloo\|nccl\.$"),
        (["algorithm=decpg", "--backend"], r"^--backend needs a value: --backend gloo or --backend nccl\.$"),
    ],
)
def test_split_options_refuses_an_unknown_backend(argv, match):
    from benchmarl_decentral.distributed.__main__ import split_options

    with pytest.raises(ValueError, match=match):
        split_options(argv)


# ------------------------------------------------------------------ nccl: one GPU per rank, checked first
NO_CUDA = r"--backend nccl needs one CUDA GPU per rank, and CUDA is not available here; launch with --backend " \
          r"gloo, which runs on CPU and with one GPU\."
TOO_FEW = r"--backend nccl needs one CUDA GPU per rank: 2 ranks on this node, 1 CUDA device\(s\); launch one rank " \
          r"per GPU \(torchrun --nproc-per-node 1\) or launch with --backend gloo, which runs on CPU and with one GPU\."


def _gpus(monkeypatch, count: int) -> None:
    """This process sees ``count`` CUDA devices (0: CUDA not available), whatever the machine has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


@pytest.mark.parametrize("gpus, match", [(0, NO_CUDA), (1, TOO_FEW)], ids=["no-cuda", "one-gpu-two-ranks"])
def test_entry_point_refuses_nccl_without_a_gpu_per_rank(tmp_path, monkeypatch, capsys, gpus, match):
    """As the other refusals (tests/test_distributed.py): one line, status 2, nothing built, no group joined."""
    import benchmarl_decentral.distributed.__main__ as entry

    def no_compose(*_):
        raise AssertionError("composed the config: the backend must be checked first")

    monkeypatch.setattr(entry, "compose", no_compose)
    _gpus(monkeypatch, gpus)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as exit_:
        entry.main(["--backend", "nccl", *DECPG])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert re.fullmatch(f"{PROG}: {match}\n", err), err  # one line
    assert list(tmp_path.iterdir()) == [] and not dist.is_initialized()


def test_nccl_check_passes_with_a_gpu_per_rank(monkeypatch):
    _gpus(monkeypatch, 2)
    check_backend("nccl", 2)
    check_backend("nccl", 1)
    with pytest.raises(ValueError, match=r"3 ranks on this node, 2 CUDA device\(s\); launch one rank per GPU "
                                         r"\(torchrun --nproc-per-node 2\) or launch with --backend gloo"):
        check_backend("nccl", 3)
    _gpus(monkeypatch, 0)
    check_backend("gloo", 4)  # gloo needs no GPU


def test_real_entry_point_refuses_nccl_on_a_machine_without_cuda(tmp_path):
    """``python -m benchmarl_decentral.distributed --backend nccl ...`` as torchrun starts a rank; no GPU visible."""
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    result = subprocess.run([sys.executable, "-m", PROG, "--backend", "nccl", *DECPG,
                             f"experiment.save_folder={tmp_path}"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert re.fullmatch(f"{PROG}: {NO_CUDA}\n", result.stderr), result.stderr
    assert list(tmp_path.iterdir()) == []  # no run folder, nothing written


def test_spawn_local_refuses_nccl_before_any_process_starts(monkeypatch):
    _gpus(monkeypatch, 0)
    with pytest.raises(ValueError, match=NO_CUDA):
        spawn_local(_wire_worker, 2, backend="nccl")
    with pytest.raises(ValueError, match=r"unknown --backend mpi; choose one of gloo\|nccl"):
        spawn_local(_wire_worker, 2, backend="mpi")


# ------------------------------------------------------------------ the wire under gloo: the host, as before
def _wire_worker(rank: int, world_size: int) -> None:
    from benchmarl_decentral.distributed.local import ReplicatedEnvs

    assert dist.get_backend() == "gloo" and wire_device() == torch.device("cpu")
    mine = torch.arange(6.0).reshape(2, 3) + 10 * rank
    assert to_wire(mine) is mine  # Tensor.cpu() of a host tensor: itself, nothing copied
    sent = to_wire(mine.T.contiguous())
    buf = torch.empty(3, 2, device=wire_device())
    other = 1 - rank
    for request in dist.batch_isend_irecv([dist.P2POp(dist.isend, sent, other), dist.P2POp(dist.irecv, buf, other)]):
        request.wait()
    assert buf.device.type == "cpu" and torch.equal(buf, (torch.arange(6.0).reshape(2, 3) + 10 * other).T)
    # the replicated backend's action exchange: its wire tensors are the host ones
    envs = ReplicatedEnvs({"agents": partition_agents(4, world_size)}, rank)
    local = torch.tensor([[rank * 2, rank * 2 + 1]] * 3)  # (B=3, 2 agents of the rank)
    joint = envs.joint_action("agents", local, agent_dim=1)
    assert joint.device.type == "cpu" and torch.equal(joint, torch.tensor([[0, 1, 2, 3]] * 3))


def test_wire_is_the_host_under_gloo():
    """Outside a group and in a 2-rank gloo group: wire_device is the CPU, to_wire is Tensor.cpu()."""
    assert not dist.is_initialized() and wire_device() == torch.device("cpu")
    t = torch.ones(2)
    assert to_wire(t) is t
    spawn_local(_wire_worker, 2, start_method="fork", timeout_s=60)


# ------------------------------------------------------------------ nccl trains as gloo does (two GPUs or more)
def _params_worker(rank: int, world_size: int, folder, env_backend: str) -> None:
    from test_distributed import _decpg_run, _logged

    from benchmarl_decentral.distributed.experiment import build_rank_experiment

    backend = dist.get_backend()
    assert wire_device() == (torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu"))
    exp, used = _decpg_run(
        folder / backend / f"rank{rank}",
        lambda make: build_rank_experiment(make, algorithm="decpg", sizes={"agents": 8}, agents="local",
                                           env=env_backend),
    )
    torch.save({
        "actor": [p.detach().cpu().clone() for p in exp.algorithm.actor_leaves("agents")],
        "critic": [p.detach().cpu().clone() for p in exp.algorithm.critic_leaves("agents")],
        "used": used,
        "logged": {name: _logged(exp, name) for name in ("collection_reward_reward_mean", "comm_env_bytes_per_agent",
                                                          "comm_train_network_bytes_per_agent")},
    }, folder / f"{backend}{rank}.pt")


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="nccl needs one GPU per rank")
@pytest.mark.parametrize("env_backend", ["replicated", "central"])
def test_nccl_trains_decpg_like_gloo(tmp_path, env_backend):
    """2 ranks x 4 agents of decpg (``--agents local``, tests/test_distributed.py's run): nccl ends where gloo does.

    The computation stays on the host; only what is sent travels on the GPUs,
    byte for byte, so the parameters, rewards and bytes are the same bits.
    """
    for backend in BACKENDS:  # spawn: a forked process cannot use CUDA once this one has looked for it
        spawn_local(_params_worker, 2, tmp_path, env_backend, start_method="spawn", timeout_s=300, backend=backend)
    for rank in range(2):
        gloo, nccl = (torch.load(tmp_path / f"{backend}{rank}.pt") for backend in BACKENDS)
        assert nccl["logged"] == gloo["logged"]
        for net in ("actor", "critic"):
            assert all(torch.equal(p, q) for p, q in zip(nccl[net], gloo[net], strict=True))
            assert all(torch.equal(W, V) for W, V in zip(nccl["used"][net], gloo["used"][net], strict=True))
