"""Distributed checkpoints and torchrun's elastic restart (issue 18 item 4), CPU, gloo, 2 ranks."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarl_decentral.distributed import partition_agents
from benchmarl_decentral.distributed.checkpoint import (
    KEY,
    LAUNCH_FILE,
    Launch,
    check_match,
    complete_frames,
    plan_resume,
    rank_file,
    write_launch,
)

REPO = Path(__file__).resolve().parent.parent
ITERS, FRAMES = 4, 60  # 4 iterations of 60 frames, a checkpoint after each
EXPERIMENT = [
    "experiment.evaluation_interval=120", "experiment.evaluation_episodes=2", "experiment.loggers=[csv]",
    f"experiment.max_n_iters={ITERS}", "experiment.max_n_frames=null",
    f"experiment.on_policy_collected_frames_per_batch={FRAMES}",
    "experiment.on_policy_minibatch_size=20", "experiment.on_policy_n_minibatch_iters=1",
    f"experiment.checkpoint_interval={FRAMES}", "experiment.checkpoint_at_end=true",
    "experiment.keep_checkpoints_num=2", "experiment.render=false",  # rendering: most of a VMAS run's time
]
#: the elastic runs: 2 ranks of 4 agents (decpg: random link failures, link latency 2: the vectors a rank received
#: and has not mixed yet are in its checkpoint) or of 2 agents (dg_mappo: D-GAT messages and
#: their gradients across the ranks on the radius graph of the agents' positions, value norms, link latency 1; 6 envs of 10 steps
#: per batch, episodes of 6 steps: every batch has resets, VMAS's random state carries across the restart); decpg on
#: two agent groups (simple_tag: 4 adversaries, 2 good agents; each rank owns 2 adversaries and 1 good agent)
ALGORITHMS = {
    "decpg": ["algorithm=decpg", "task=coordsum/8x15-100", "algorithm.k=2", "algorithm.link_failure=0.3",
              "algorithm.link_latency=2", "algorithm.evaluation_mode=local", "algorithm.perturbed_evaluation=false",
              "experiment.on_policy_n_envs_per_worker=2"],
    "dg_mappo": ["algorithm=dg_mappo", "task=vmas/navigation", "task.n_agents=4", "task.max_steps=6",
                 "algorithm.hidden_channels=8", "algorithm.value_norm=true", "algorithm.link_latency=1",
                 "model.num_cells=[16]",
                 "critic_model.num_cells=[16]", "experiment.on_policy_n_envs_per_worker=6"],
    # --agents local: each rank's checkpoint holds its block only (dg_mappo: its D-GAT, actor, critic, value norms
    # and the vectors in flight it received); two groups, critics on the joint observations
    "dg_mappo_local": ["--agents", "local", "algorithm=dg_mappo", "task=vmas/navigation", "task.n_agents=4",
                       "task.max_steps=6", "algorithm.topology=radius", "algorithm.radius=1.5",
                       "algorithm.position_dims=[0,2]", "algorithm.hidden_channels=8", "algorithm.value_norm=true",
                       "algorithm.link_latency=1", "model.num_cells=[16]", "critic_model.num_cells=[16]",
                       "experiment.on_policy_n_envs_per_worker=6"],
    "decpg_groups_local": ["--agents", "local", "algorithm=decpg", "task=vmas/simple_tag", "task.num_adversaries=4",
                           "task.num_good_agents=2", "task.max_steps=6", "algorithm.link_failure=0.3",
                           "algorithm.evaluation_mode=local", "algorithm.perturbed_evaluation=false",
                           "model.num_cells=[16]", "critic_model.num_cells=[16]",
                           "experiment.on_policy_n_envs_per_worker=2"],
    # matrpo: Algorithm 1's random link schedule with failures (its generator is in the checkpoint), the ADMM
    # link values across the ranks, per-agent critics (Adam moments)
    "matrpo": ["algorithm=matrpo", "task=coordsum/8x15-100", "algorithm.admm_iterations=8",
               "algorithm.admm_mode=random", "algorithm.admm_tol=0", "algorithm.link_failure=0.3", "model.num_cells=[16]", "critic_model.num_cells=[16]",
               "experiment.on_policy_n_envs_per_worker=2"],
    # --agents local: each rank's checkpoint holds its block of joint policy models and critics
    "matrpo_local": ["--agents", "local", "algorithm=matrpo", "task=coordsum/8x15-100",
                     "algorithm.admm_iterations=8", "algorithm.admm_mode=random", "algorithm.admm_tol=0",
                     "algorithm.link_failure=0.3", "model.num_cells=[16]",
                     "critic_model.num_cells=[16]", "experiment.on_policy_n_envs_per_worker=2"],
    "decpg_groups": ["algorithm=decpg", "task=vmas/simple_tag", "task.num_adversaries=4", "task.num_good_agents=2",
                     "task.max_steps=6", "algorithm.link_failure=0.3", "algorithm.evaluation_mode=local",
                     "algorithm.perturbed_evaluation=false", "model.num_cells=[16]", "critic_model.num_cells=[16]",
                     "experiment.on_policy_n_envs_per_worker=2"],
}
#: agents per group of each elastic run
GROUPS = {"decpg": {"agents": 8}, "dg_mappo": {"agents": 4}, "dg_mappo_local": {"agents": 4}, "matrpo": {"agents": 8}, "matrpo_local": {"agents": 8},
          "decpg_groups": {"adversary": 4, "agent": 2},
          "decpg_groups_local": {"adversary": 4, "agent": 2}}
LAUNCH = Launch(algorithm="decpg", task="coordsum/8x15-100", seed=0, world_size=2, groups={"agents": 8})


# ------------------------------------------------------------------ which checkpoint a launch resumes
def _fake_run(folder: Path, frames_per_rank: dict[int, list[int]], launch: Launch = LAUNCH) -> Path:
    run = folder / "run"
    run.mkdir(parents=True)
    write_launch(run, launch)
    for rank, frames in frames_per_rank.items():
        for f in frames:
            rank_file(run, rank, f).parent.mkdir(exist_ok=True)
            rank_file(run, rank, f).touch()
    return run


def test_a_restart_resumes_the_newest_checkpoint_all_ranks_completed(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-1")
    run = _fake_run(tmp_path, {0: [60, 120, 180], 1: [60, 120]})  # rank 1 died before its 180
    (run / "checkpoints_rank0" / ".checkpoint_240.pt.tmp-7").touch()  # a write cut short: not a checkpoint
    assert complete_frames(run, 2) == [60, 120]
    plan = plan_resume(None, LAUNCH, save_folder=tmp_path, restarts=1, key="job-1")
    assert (plan.run, plan.frames) == (run, 120)
    assert plan.restore_file(1) == str(run / "checkpoints_rank1" / "checkpoint_120.pt")
    # the first attempt, or another launch's restart, starts a new run
    assert plan_resume(None, LAUNCH, save_folder=tmp_path, restarts=0, key="job-1").run is None
    other = plan_resume(None, LAUNCH, save_folder=tmp_path, restarts=1, key="job-2")
    assert other.run is None and "no checkpoint of this launch" in other.note
    # by hand: any rank's file of a complete checkpoint
    plan = plan_resume(str(run / "checkpoints_rank1" / "checkpoint_60.pt"), LAUNCH, save_folder=tmp_path,
                       restarts=0, key="job-9")
    assert (plan.run, plan.frames) == (run, 60)
    # ... and when torchrun restarts that launch, the newest checkpoint of its run, not the file given
    plan = plan_resume(str(run / "checkpoints_rank1" / "checkpoint_60.pt"), LAUNCH, save_folder=tmp_path,
                       restarts=1, key="job-1")
    assert (plan.run, plan.frames) == (run, 120)


@pytest.mark.parametrize(
    "restore, launch, match",
    [
        ("checkpoints_rank0/checkpoint_180.pt", LAUNCH,
         r"checkpoint at 180 frames of .* is incomplete: ranks \[1\] did not write theirs\. Resume a complete "
         r"one: \[60, 120\] frames"),
        ("checkpoints_rank0/checkpoint_120.pt", Launch("decpg", "coordsum/8x15-100", 0, 4, {"agents": 8}),
         r"do not fit this launch: world_size 2 \(this launch: 4\)\. Resume them with torchrun "
         r"--nproc-per-node 2 -m benchmarl_decentral.distributed algorithm=decpg task=coordsum/8x15-100"),
        ("checkpoints_rank0/checkpoint_120.pt", Launch("matrpo", "coordsum/4x15-100", 0, 2, {"agents": 4}),
         r"algorithm 'decpg' \(this launch: 'matrpo'\), task .*, groups \{'agents': 8\} \(this launch: "
         r"\{'agents': 4\}\)\. Resume them with .* task=coordsum/8x15-100 \.\.\. with the run's agent groups "
         r"\{'agents': 8\}, or start a new run"),
        ("checkpoints/checkpoint_120.pt", LAUNCH, r"is not a checkpoint of a distributed run: give one rank's file"),
    ],
)
def test_a_checkpoint_that_does_not_fit_the_launch_is_refused(tmp_path, restore, launch, match):
    run = _fake_run(tmp_path, {0: [60, 120, 180], 1: [60, 120]})
    with pytest.raises(ValueError, match=match):
        plan_resume(str(run / restore), launch, save_folder=tmp_path, restarts=0, key="k")
    with pytest.raises(ValueError, match="do not fit this launch"):  # an elastic restart checks it too
        check_match(json.loads((run / LAUNCH_FILE).read_text()), Launch("decpg", "vmas/navigation", 0, 2,
                                                                        {"agents": 8}), run)


@pytest.mark.parametrize("written, launched", [("local", "all"), ("all", "local")])
def test_a_checkpoint_is_resumed_in_the_agent_mode_it_was_written_in(tmp_path, written, launched):
    """``--agents local`` checkpoints hold a rank's block only, ``all`` every agent: neither loads in the other."""
    run = _fake_run(tmp_path, {0: [60], 1: [60]}, Launch.of(algorithm="decpg", task="coordsum/8x15-100", seed=0,
                                                            sizes={"agents": 8}, world_size=2, agent_mode=written))
    launch = Launch.of(algorithm="decpg", task="coordsum/8x15-100", seed=0, sizes={"agents": 8}, world_size=2,
                       agent_mode=launched)
    fix = "distributed --agents local algorithm=decpg" if written == "local" else "distributed algorithm=decpg"
    with pytest.raises(ValueError, match=rf"do not fit this launch: agent_mode '{written}' \(this launch: "
                                         rf"'{launched}'\)\. Resume them with torchrun --nproc-per-node 2 -m "
                                         rf"benchmarl_decentral\.{fix}"):
        plan_resume(str(rank_file(run, 0, 60)), launch, save_folder=tmp_path, restarts=0, key="k")
    same = Launch.of(algorithm="decpg", task="coordsum/8x15-100", seed=0, sizes={"agents": 8}, world_size=2,
                     agent_mode=written)
    assert plan_resume(str(rank_file(run, 0, 60)), same, save_folder=tmp_path, restarts=0, key="k").frames == 60


def test_a_launch_file_written_before_several_groups_still_resumes(tmp_path):
    """An older ``distributed.json`` (one ``group`` and its ``n_agents``, no config): its group is compared."""
    run = _fake_run(tmp_path, {0: [60], 1: [60]})
    (run / LAUNCH_FILE).write_text(json.dumps({"algorithm": "decpg", "task": "coordsum/8x15-100", "seed": 0,
                                               "world_size": 2, "group": "agents", "n_agents": 8,
                                               "launch_key": "job-1"}))
    launch = Launch.of(algorithm="decpg", task="coordsum/8x15-100", seed=0, sizes={"agents": 8}, world_size=2,
                       config={"model": {"num_cells": [32]}})  # not recorded there: not compared
    for restore, restarts in ((str(rank_file(run, 1, 60)), 0), (None, 1)):  # by hand, and a torchrun restart
        plan = plan_resume(restore, launch, save_folder=tmp_path, restarts=restarts, key="job-1")
        assert (plan.run, plan.frames) == (run, 60)
    with pytest.raises(ValueError, match=r"do not fit this launch: groups \{'agents': 8\} \(this launch: "
                                         r"\{'agents': 4\}\)"):
        plan_resume(str(rank_file(run, 1, 60)), Launch("decpg", "coordsum/8x15-100", 0, 2, {"agents": 4}),
                    save_folder=tmp_path, restarts=0, key="k")


DG_LAUNCH = Launch(algorithm="dg_mappo", task="vmas/navigation", seed=0, world_size=2, groups={"agents": 4})
TAG_LAUNCH = Launch(algorithm="decpg", task="vmas/simple_tag", seed=0, world_size=2, groups={"adversary": 4, "agent": 2})
TAG_ENTRY = ["algorithm=decpg", "task=vmas/simple_tag", "task.num_adversaries=4", "task.num_good_agents=2",
             "experiment.evaluation=false"]
DG_ENTRY = ["algorithm=dg_mappo", "task=vmas/navigation", "task.n_agents=4", "experiment.evaluation=false"]


@pytest.mark.parametrize(
    "saved, overrides, world_size, match",
    [
        (LAUNCH, ["algorithm=dg_mappo", "task=coordsum/8x15-100", "experiment.evaluation=false"], 2,
         r"do not fit this launch: algorithm 'decpg' \(this launch: 'dg_mappo'\)\. Resume them with torchrun "
         r"--nproc-per-node 2 -m benchmarl_decentral.distributed algorithm=decpg task=coordsum/8x15-100"),
        (DG_LAUNCH, DG_ENTRY, 4, r"do not fit this launch: world_size 2 \(this launch: 4\)\. Resume them with "
                                 r"torchrun --nproc-per-node 2 -m benchmarl_decentral.distributed algorithm=dg_mappo"),
        (DG_LAUNCH, [*DG_ENTRY[:2], "task.n_agents=2", *DG_ENTRY[3:]], 2,
         r"groups \{'agents': 4\} \(this launch: \{'agents': 2\}\)"),
        (DG_LAUNCH, ["algorithm=decpg", *DG_ENTRY[1:]], 2, r"algorithm 'dg_mappo' \(this launch: 'decpg'\)"),
        (TAG_LAUNCH, [*TAG_ENTRY[:2], "task.num_adversaries=2", *TAG_ENTRY[3:]], 2,
         r"do not fit this launch: groups \{'adversary': 4, 'agent': 2\} \(this launch: \{'adversary': 2, "
         r"'agent': 2\}\)\. Resume them with torchrun --nproc-per-node 2 -m benchmarl_decentral.distributed "
         r"algorithm=decpg task=vmas/simple_tag \.\.\. with the run's agent groups \{'adversary': 4, 'agent': 2\}"),
    ],
    ids=["decpg_run_dg_mappo_launch", "dg_mappo_world_size", "dg_mappo_agents", "dg_mappo_run_decpg_launch",
         "groups_sizes"],
)
def test_the_entry_point_refuses_a_checkpoint_that_does_not_fit_before_anything_is_built(
    tmp_path, monkeypatch, capsys, saved, overrides, world_size, match
):
    """decpg's and dg_mappo's launches alike: one line, status 2, before the process group or any experiment."""
    import torch.distributed as dist

    from benchmarl_decentral.distributed.__main__ import main

    run = _fake_run(tmp_path / "runs", {0: [60], 1: [60]}, saved)
    files = sorted(tmp_path.rglob("*"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    with pytest.raises(SystemExit) as exit_:
        main([*overrides, f"experiment.restore_file={rank_file(run, 1, 60)}"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert re.search(match, err) and err.count("\n") == 1, err
    assert sorted(tmp_path.rglob("*")) == files and not dist.is_initialized()


@pytest.mark.parametrize(
    "entry, saved_settings, settings, match",
    [
        (["algorithm=decpg", "task=coordsum/8x15-100", "algorithm.evaluation_mode=local",
          "algorithm.perturbed_evaluation=false"], ["model.num_cells=[16]"], ["model.num_cells=[32]"],
         r"were written with other settings than this launch's: model\.num_cells=\[16\] \(this launch: \[32\]\); "
         r"their networks and optimizer state are those settings'\. Resume them with the run's settings "
         r"\(model\.num_cells=\[16\]\), or start a new run without experiment\.restore_file\."),
        (DG_ENTRY, ["algorithm.hidden_channels=8", "critic_model.num_cells=[16,16]"],
         ["algorithm.hidden_channels=16", "critic_model.num_cells=[16]"],
         r"other settings than this launch's: algorithm\.hidden_channels=8 \(this launch: 16\), "
         r"critic_model\.num_cells=\[16,16\] \(this launch: \[16\]\); .* Resume them with the run's settings "
         r"\(algorithm\.hidden_channels=8 critic_model\.num_cells=\[16,16\]\)"),
    ],
    ids=["decpg_model", "dg_mappo_algorithm_and_critic"],
)
def test_a_checkpoint_of_other_network_settings_is_refused_before_anything_is_built(
    tmp_path, monkeypatch, capsys, entry, saved_settings, settings, match
):
    """The run's algorithm / model / critic_model config (in its launch file) against the launch's: one line,
    status 2, before the process group (BenchMARL would otherwise fail on the networks' sizes after it)."""
    import torch.distributed as dist

    from benchmarl_decentral.distributed.__main__ import compose, launch_config, main

    cfg, task, algorithm = compose([*entry, *saved_settings])
    saved = Launch.of(algorithm=algorithm, task=task, seed=0, sizes={"agents": 8 if algorithm == "decpg" else 4},
                      world_size=2, config=launch_config(cfg))
    run = _fake_run(tmp_path / "runs", {0: [60], 1: [60]}, saved)
    files = sorted(tmp_path.rglob("*"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as exit_:
        main([*entry, *settings, f"experiment.restore_file={rank_file(run, 0, 60)}"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert re.search(match, err) and err.count("\n") == 1, err
    assert sorted(tmp_path.rglob("*")) == files and not dist.is_initialized()
    # the same settings resume: the launch's config equals the one its launch file gives back
    again = Launch.of(algorithm=algorithm, task=task, seed=0, sizes=saved.groups, world_size=2,
                      config=launch_config(compose([*entry, *saved_settings])[0]))
    assert plan_resume(str(rank_file(run, 0, 60)), again, save_folder=tmp_path, restarts=0, key="k").frames == 60


# ------------------------------------------------------------------ a rank killed under torchrun
def _reference_worker(rank: int, world_size: int, port: int, overrides: list, scratch) -> None:
    import tempfile

    from benchmarl_decentral.distributed.__main__ import main

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    tempfile.tempdir = str(scratch)
    torch.set_num_threads(1)
    main(overrides)


def _workers(agent: int) -> dict[int, int]:
    """``{rank: pid}`` of torchrun's workers (the children of the agent process ``agent``)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        ranks = [v[5:] for v in environ if v.startswith(b"RANK=")]
        if ppid == agent and ranks:
            found[int(ranks[0])] = int(entry.name)
    return found


def _scalars(run: Path) -> dict[str, list[tuple[str, str]]]:
    """``{scalar: [(step, value), ...]}`` as written (strings: ``nan`` equals ``nan``)."""
    out = {}
    for path in sorted((run / run.name / "scalars").glob("*.csv")):
        with open(path) as f:
            out[path.stem] = [(step, value) for step, value in csv.reader(f)]
    return out


def _find(tree, key: str) -> list:
    """Every value under ``key`` in nested dicts and lists."""
    if isinstance(tree, dict):
        return [*([tree[key]] if key in tree else []), *(v for x in tree.values() for v in _find(x, key))]
    if isinstance(tree, (list, tuple)):
        return [v for x in tree for v in _find(x, key)]
    return []


def _diff(a, b, path="") -> list[str]:
    """Paths where two checkpoints differ (tensors bitwise, numbers and strings exactly)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{path}: keys {sorted(a.keys() ^ b.keys())}"]
        # "__device": TorchRL's replay-buffer storage loaded from a checkpoint records device None where the
        # uninterrupted run's records cpu (metadata only: its tensors are compared)
        return [d for k in a if k != "__device" for d in _diff(a[k], b[k], f"{path}/{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{path}: length"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _diff(x, y, f"{path}/{i}")]
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        same = a.shape == b.shape and a.dtype == b.dtype and (
            torch.equal(a, b) or (a.is_floating_point() and torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)))
        return [] if same else [path]
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return []
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_a_killed_rank_is_restarted_by_torchrun_from_the_last_checkpoint_with_nothing_lost(tmp_path, algorithm):
    """torchrun --max-restarts 1, 2 ranks (:data:`ALGORITHMS`: one agent group or two), 4 iterations; rank 1
    SIGKILLed mid-run.

    The run continues in the same folder from the newest complete checkpoint
    and ends with the uninterrupted distributed run's state, bit for bit
    (parameters, optimizer moments, random streams, counters), and its CSV
    and JSON logs hold every iteration once, with the uninterrupted values.
    """
    import torch.multiprocessing as mp

    from benchmarl_decentral.distributed import free_port
    from benchmarl_decentral.runs import CheckpointError, check_checkpoint

    for name in ("ref", "elastic", "scratch_ref", "scratch"):
        (tmp_path / name).mkdir()
    overrides = [*ALGORITHMS[algorithm], *EXPERIMENT]
    # the uninterrupted run: the same entry point on 2 forked ranks, beside the torchrun one
    reference = mp.start_processes(_reference_worker, nprocs=2, start_method="fork", join=False,
                                   args=(2, free_port(), [*overrides, f"experiment.save_folder={tmp_path / 'ref'}"],
                                         tmp_path / "scratch_ref"))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path / "scratch"),
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--max-restarts", "1", "--monitor-interval", "0.1", "-m", "benchmarl_decentral.distributed",
           *overrides, f"experiment.save_folder={tmp_path / 'elastic'}"]
    with open(tmp_path / "torchrun.log", "w") as log:
        agent = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
        try:
            # both ranks wrote their second checkpoint (rank 1 may write its own before rank 0 does)
            while not any(2 * FRAMES in complete_frames(run, 2) for run in (tmp_path / "elastic").iterdir()):
                assert agent.poll() is None, (tmp_path / "torchrun.log").read_text()
                time.sleep(0.05)
            os.kill(_workers(agent.pid)[1], signal.SIGKILL)  # rank 1 dies in its third iteration (or later)
            assert agent.wait() == 0, (tmp_path / "torchrun.log").read_text()
            while not reference.join():
                pass
        finally:
            for pid in _workers(agent.pid).values() if agent.poll() is None else ():
                os.kill(pid, signal.SIGKILL)
            agent.kill()
            for process in reference.processes:
                process.kill()
    (ref,) = (tmp_path / "ref").iterdir()
    output = (tmp_path / "torchrun.log").read_text()

    (run,) = (tmp_path / "elastic").iterdir()  # the same run folder, continued
    record = json.loads((run / LAUNCH_FILE).read_text())
    assert record["groups"] == GROUPS[algorithm] and set(record["config"]) == {"algorithm", "model", "critic_model"}
    assert record["agent_mode"] == ("local" if algorithm.endswith("_local") else "all")
    resumed = re.search(rf"restart 1: resuming {re.escape(str(run))} from the checkpoint at (\d+) frames", output)
    assert resumed, output
    assert 2 * FRAMES <= int(resumed.group(1)) < ITERS * FRAMES  # iterations were redone after the restart

    final = ITERS * FRAMES
    for rank in (0, 1):  # keep_checkpoints_num=2: the last two
        assert sorted(p.name for p in (run / f"checkpoints_rank{rank}").iterdir()) == [
            f"checkpoint_{final - FRAMES}.pt", f"checkpoint_{final}.pt"]
        got = torch.load(rank_file(run, rank, final), weights_only=True)
        want = torch.load(rank_file(ref, rank, final), weights_only=True)
        got["state"].pop("total_time"), want["state"].pop("total_time")  # wall clock
        assert got["state"]["n_iters_performed"] == ITERS
        assert got[KEY]["agents"] == {group: torch.nonzero(partition_agents(n, 2) == rank).flatten().tolist()
                                      for group, n in GROUPS[algorithm].items()}
        assert _diff(got, want) == []
        if algorithm.endswith("_local"):  # the rank's networks in its checkpoint: its block of each group only
            for group, n in GROUPS[algorithm].items():
                stacked = {name: t.shape[0] for name, t in got[f"loss_{group}"].items()  # matrpo: its MLPs' params
                           if ("_network_params." in name or ".mlp.params." in name and "__" not in name)
                           and isinstance(t, torch.Tensor)}
                assert stacked and set(stacked.values()) == {n // 2}, (group, stacked)
        if algorithm.startswith("dg_mappo"):  # link_latency=1: the vectors in flight, this rank's rows of W
            (history,) = _find(got, "link_history")
            (slot,) = history["agents"]["slots"]
            assert slot["W"].shape == (2, 4) and set(got[KEY]["agents"]["agents"]) <= set(slot["agents"].tolist())
    with pytest.raises(CheckpointError, match=r"is rank 1's part of a distributed checkpoint .* torchrun "
                                              r"--nproc-per-node 2 -m benchmarl_decentral.distributed"):
        check_checkpoint(rank_file(run, 1, final))  # not resumable in one process

    # the logs: every iteration once, the uninterrupted run's values (timers excepted)
    got, want = _scalars(run), _scalars(ref)
    assert got.keys() == want.keys() and "collection_reward_reward_mean" in got
    for name, rows in want.items():
        steps = [step for step, _ in got[name]]
        assert steps == [step for step, _ in rows] and len(set(steps)) == len(steps), name
        if not name.startswith("timers_"):
            assert got[name] == rows, name
    assert [float(s) for s, _ in got["counters_iter"]] == list(range(ITERS))
    curve = json.loads((run / f"{run.name}.json").read_text())
    reference_curve = json.loads((ref / f"{ref.name}.json").read_text())
    assert json.dumps(curve, sort_keys=True) == json.dumps(reference_curve, sort_keys=True)


def test_a_checkpoint_keeps_the_central_backends_fractional_env_bytes(tmp_path):
    """--env central counts rank 0's bytes per agent as a fraction (its parts over its agents); a rank's
    checkpoint gives them back as they were, not truncated to an int."""
    from benchmarl_decentral.distributed.checkpoint import RankCheckpoints
    from benchmarl_decentral.distributed.local import CentralEnv, EnvBytesLog
    from conftest import make_experiment

    experiment = make_experiment(tmp_path, algorithm="mappo", task="vmas/balance", task_overrides={"n_agents": 4})
    log = EnvBytesLog(CentralEnv({"agents": partition_agents(4, 2)}, 0))
    launch = Launch.of(algorithm="decpg", task="vmas/balance", seed=0, sizes={"agents": 4}, world_size=2,
                       agent_mode="local")
    saver = RankCheckpoints(experiment, tmp_path / "run", 0, launch, {"agents": [0, 1]}, log)
    (tmp_path / "run").mkdir()
    log.sent["agents"] = 556.25  # coordsum/8x15-100's step, README
    path = saver.save()
    log.sent["agents"] = 0
    saver.restore_extra(str(path))
    assert log.sent["agents"] == 556.25 and log.backend.sent is log.sent
    log.sent["agents"] = 16  # the replicated backend's (and a rank other than 0's) whole bytes stay ints
    path = saver.save()
    saver.restore_extra(str(path))
    assert log.sent["agents"] == 16 and isinstance(log.sent["agents"], int)
