"""Run folders, checkpoints and result files (issue 16, items 1, 3, 4, 6, 7; 5: no folder when refused).

Real BenchMARL / VMAS runs with tiny budgets: in-process where the CLI adds
nothing (``runs.reload_experiment`` is what ``benchmarl resume|evaluate``
call), subprocesses where the process matters (run folders, signals, locks).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from benchmarl_decentral import benchmark, cli, runs
from benchmarl_decentral.reporting.loading import load_runs
from conftest import REPO, TINY, make_experiment


def _run_data(json_file: Path) -> dict:
    (((_, tasks),),) = [tuple(json.loads(json_file.read_text()).items())]
    ((_, algorithms),) = tasks.items()
    ((_, seeds),) = algorithms.items()
    ((_, run_data),) = seeds.items()
    return run_data


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest() for p in folder.rglob("*")
            if p.is_file()}


# ----------------------------------------------------------------- item 1
@pytest.mark.slow
def test_default_render_to_csv_logger_writes_an_mp4(tmp_path):
    """BenchMARL's default render=true with the csv logger: the evaluation video is written and decodes."""
    import av

    experiment = make_experiment(tmp_path, algorithm="mappo", max_n_iters=1, evaluation=True, render=True,
                                 loggers=["csv"])
    experiment.run()
    (video,) = (experiment.folder_name / experiment.name / "videos").glob("eval_video_*.mp4")
    with av.open(str(video)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(frames) > 1 and frames[0].ndim == 3 and frames[0].std() > 0  # a picture, not a blank file


def test_video_writer_round_trip_and_opt_out(tmp_path, monkeypatch):
    import av

    from benchmarl_decentral import video

    frames = torch.zeros(6, 32, 48, 3, dtype=torch.uint8)
    frames[:, :, :24] = 255  # left half white
    video.write_video(str(tmp_path / "v.mp4"), frames, fps=10)
    with av.open(str(tmp_path / "v.mp4")) as container:
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(decoded) == 6 and decoded[0].shape == (32, 48, 3)
    assert decoded[0][:, :20].mean() > 200 and decoded[0][:, 28:].mean() < 50
    monkeypatch.setenv("BENCHMARL_DECENTRAL_NO_VIDEO_SHIM", "1")
    assert video.install() is False


# ----------------------------------------------------------------- item 3
@pytest.mark.slow
def test_evaluate_writes_beside_the_run_and_resume_keeps_one_curve(tmp_path, capsys):
    experiment = make_experiment(tmp_path, algorithm="mappo", max_n_iters=4, evaluation=True, create_json=True,
                                 loggers=["csv"], checkpoint_interval=120)
    experiment.run()
    run = experiment.folder_name
    json_file = run / f"{experiment.name}.json"
    before = _run_data(json_file)
    assert [before[f"step_{k}"]["step_count"] for k in (1, 2, 3, 4)] == [60, 120, 180, 240]
    csv_file = run / experiment.name / "scalars" / "eval_reward_episode_reward_mean.csv"
    run_files = {p: p.read_bytes() for p in (json_file, csv_file)}
    checkpoint = run / "checkpoints" / "checkpoint_120.pt"

    # evaluate: its own JSON and CSV folder, the run's results untouched
    assert cli.main(["evaluate", str(checkpoint)]) == 0
    assert all(p.read_bytes() == content for p, content in run_files.items())
    evaluation = _run_data(run / "evaluations" / "checkpoint_120.json")
    assert [k for k in evaluation if k.startswith("step_")] == ["step_2"]
    assert evaluation["step_2"]["step_count"] == 120 and len(evaluation["step_2"]["return"]) == 2
    assert (run / "evaluations" / "checkpoint_120" / "scalars" / "eval_reward_episode_reward_mean.csv").is_file()
    assert "evaluations/checkpoint_120.json" in capsys.readouterr().out

    # resume from 120 frames: evaluations up to the checkpoint kept, those after recomputed, one file
    assert cli.main(["resume", str(checkpoint)]) == 0
    after = _run_data(json_file)
    assert [after[f"step_{k}"]["step_count"] for k in (1, 2, 3, 4)] == [60, 120, 180, 240]
    assert after["step_1"] == before["step_1"] and after["step_2"] == before["step_2"]
    best = max(v for k in (1, 2, 3, 4) for v in after[f"step_{k}"]["return"])
    assert after["absolute_metrics"]["return"] == [best]

    # report: one run, the whole curve, the evaluation file not read as a run
    loaded = load_runs([tmp_path])
    (only,) = loaded.runs
    assert only.source == json_file and sorted(only.evaluations) == [60, 120, 180, 240]
    assert not any("found twice" in note for note in loaded.notes)


# ----------------------------------------------------------------- item 6
@pytest.mark.slow
def test_bad_checkpoints_give_one_message_and_touch_nothing(tmp_path, capsys):
    from benchmarl.experiment import Experiment

    experiment = make_experiment(tmp_path, algorithm="mappo", max_n_iters=1, loggers=["csv"],
                                 checkpoint_at_end=True)
    experiment.run()
    run = experiment.folder_name
    (good,) = (run / "checkpoints").glob("checkpoint_*.pt")
    data = good.read_bytes()
    bad = {
        "truncated.pt": (data[: len(data) // 2], "truncated checkpoint"),
        "random.pt": (os.urandom(4096), "not a BenchMARL checkpoint"),
        "empty.pt": (b"", "is empty (0 bytes)"),
        "foreign.pt": (None, "without an experiment's state"),
        "missing.pt": (None, "checkpoint file not found"),
    }
    for name, (content, _) in bad.items():
        if content is not None:
            (run / "checkpoints" / name).write_bytes(content)
    torch.save({"weights": torch.zeros(3)}, run / "checkpoints" / "foreign.pt")
    before = _snapshot(run)
    capsys.readouterr()  # the run's progress bar
    for name, (_, message) in bad.items():
        for command in ("resume", "evaluate"):
            assert cli.main([command, str(run / "checkpoints" / name)]) == 2
            err = capsys.readouterr().err.strip()
            assert err.startswith(f"benchmarl {command}: ") and message in err and name in err, err
            assert len(err.splitlines()) == 1 and "weights_only" not in err
    with pytest.raises(runs.CheckpointError, match="truncated checkpoint"):  # the Python API too
        Experiment.reload_from_file(str(run / "checkpoints" / "truncated.pt"))
    assert _snapshot(run) == before  # config.pkl, hparams, scalars: nothing rewritten
    runs.check_checkpoint(good, need_run_folder=True)  # the real one passes


# ----------------------------------------------------------------- items 4 and 5
def test_claim_run_dir_same_second_gives_new_folders(tmp_path):
    import datetime

    now = datetime.datetime(2026, 1, 2, 3, 4, 5)
    first, second = runs.claim_run_dir(tmp_path, now=now), runs.claim_run_dir(tmp_path, now=now)
    assert first == tmp_path / "2026-01-02" / "03-04-05" and second == tmp_path / "2026-01-02" / "03-04-05-2"


@pytest.mark.slow
def test_concurrent_runs_get_own_folders_and_resume_reads_the_checkpoints_config(tmp_path):
    """Two runs started together get two folders; with .hydra overwritten, each resumes its own config."""
    import shutil

    env = dict(os.environ, PYTHONWARNINGS="ignore")
    exe = str(Path(sys.executable).parent / "benchmarl")
    base = ["run", "algorithm=decpg", "task=vmas/balance", "task.n_agents=3", "experiment.checkpoint_at_end=true",
            *TINY, "experiment.max_n_iters=1", "experiment.evaluation=false"]
    procs = [subprocess.Popen([exe, *base, f"algorithm.k={k}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for k in (0, 2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[-2000:] for o in outputs]

    folders = [p.parent for p in tmp_path.glob("outputs/*/*/.hydra")]
    assert len(folders) == 2  # not one shared outputs/<date>/<time>
    by_k = {yaml.safe_load((f / ".hydra" / "overrides.yaml").read_text())[-1]: f for f in folders}
    assert sorted(by_k) == ["algorithm.k=0", "algorithm.k=2"]

    # a collision (shared hydra.run.dir) leaves the other run's .hydra above the k=0 run: resume ignores it
    shutil.rmtree(by_k["algorithm.k=0"] / ".hydra")
    shutil.copytree(by_k["algorithm.k=2"] / ".hydra", by_k["algorithm.k=0"] / ".hydra")
    (checkpoint,) = by_k["algorithm.k=0"].glob("decpg_*/checkpoints/checkpoint_*.pt")
    experiment = runs.reload_experiment(checkpoint)
    assert experiment.algorithm_config.k == 0 and experiment.folder_name == checkpoint.parent.parent
    # BenchMARL's own reload (python -m benchmarl.resume) reads the overwritten .hydra: not silently
    from benchmarl.hydra_config import reload_experiment_from_file

    with pytest.warns(UserWarning, match="with another algorithm config than the run that wrote it"):
        reload_experiment_from_file(str(checkpoint))
    (own,) = by_k["algorithm.k=2"].glob("decpg_*/checkpoints/checkpoint_*.pt")
    with warnings.catch_warnings():  # the run whose .hydra it is: same config, no warning
        warnings.filterwarnings("error", message="restoring", category=UserWarning)
        assert reload_experiment_from_file(str(own)).algorithm_config.k == 2


# ----------------------------------------------------------------- item 7
def _wait_for(predicate, timeout=240.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
def test_sweeps_lock_running_runs_mark_killed_ones_and_report_leaves_them_out(tmp_path):
    """One sweep: a run locked by another process is skipped, a short run finishes, a long one gets SIGTERM."""
    out = tmp_path / "sweep"
    runs_dir = out / "vmas/balance/mappo"
    locked, short, long_ = (runs_dir / "experiment.max_n_iters=2,seed=0", runs_dir / "experiment.max_n_iters=2,seed=1",
                            runs_dir / "experiment.max_n_iters=500,seed=0")
    locked.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import time; from pathlib import Path; "
                               "from benchmarl_decentral import benchmark; "
                               f"benchmark.acquire_lock(Path({str(locked)!r}), 'other'); "
                               "print('locked', flush=True); time.sleep(600)"],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    overrides = ["algorithm=mappo", "task=vmas/balance", "task.n_agents=2", *TINY,
                 "experiment.max_n_iters=2,500", "seed=0,1"]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = None
    try:
        assert holder.stdout.readline().strip() == "locked"
        proc = subprocess.Popen([str(Path(sys.executable).parent / "benchmarl"), "benchmark", *overrides,
                                 "--out", str(out)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        assert _wait_for(lambda: list(long_.glob("mappo_*/mappo_*.json"))), "the long run never wrote results"
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        holder.kill()
        holder.wait()
        if proc is not None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stdout[-3000:] + stderr[-3000:]
    assert "3 to run, 0 already finished (skipped), 1 running in another sweep (skipped)" in stdout
    assert f"busy  vmas/balance/mappo/experiment.max_n_iters=2,seed=0  (running: pid {holder.pid}" in stdout
    assert "NOT RUN vmas/balance/mappo/experiment.max_n_iters=2,seed=0: running in another sweep" in stdout
    assert "experiment.max_n_iters=500,seed=0: interrupted (SIGTERM)" in stderr
    assert yaml.safe_load((short / "status.yaml").read_text())["state"] == "finished"
    status = yaml.safe_load((long_ / "status.yaml").read_text())
    assert status["state"] == "interrupted" and status["signal"] == "SIGTERM"
    assert not (long_ / benchmark.LOCK_FILE).exists() and not (locked / "status.yaml").exists()

    # the holder is dead: its lock is stale, the next sweep runs that run
    plan = benchmark.plan_benchmark(overrides, out=out)
    assert {job.dir.rsplit("/", 1)[1]: job.action for job in plan.jobs} == {
        "experiment.max_n_iters=2,seed=0": "run", "experiment.max_n_iters=2,seed=1": "skip",
        "experiment.max_n_iters=500,seed=0": "run", "experiment.max_n_iters=500,seed=1": "run"}

    # report: the interrupted run is left out and counted, unless asked
    loaded = load_runs([out])
    assert [run.source.parent.parent for run in loaded.runs] == [short]
    assert any(note.startswith("left out 1 incomplete run(s)") and "--include-incomplete" in note
               for note in loaded.notes)
    assert [run.seed for run in load_runs([out], include_incomplete=True).runs] == ["seed_0", "seed_1"]


def test_report_leaves_out_a_run_whose_sweep_status_is_not_finished(tmp_path):
    """A run killed without a word (SIGKILL) keeps ``state: running`` and its JSON: still left out."""
    from benchmarl.experiment.logger import JsonWriter

    for seed, state in ((0, "finished"), (1, "running")):
        job = tmp_path / f"seed={seed}"
        (job / "run").mkdir(parents=True)
        writer = JsonWriter(folder=str(job / "run"), name="run.json", algorithm_name="mappo", task_name="balance",
                            environment_name="vmas", seed=seed)
        writer.write(total_frames=60, metrics={"return": torch.tensor([1.0, 2.0])}, evaluation_step=1)
        benchmark._write_yaml(job / benchmark.STATUS_FILE, {"state": state, "pid": 1})
    loaded = load_runs([tmp_path])
    assert [run.seed for run in loaded.runs] == ["seed_0"]
    assert any("left out 1 incomplete run(s)" in note and "status.yaml says 'running'" in note
               for note in loaded.notes)
    assert [run.seed for run in load_runs([tmp_path], include_incomplete=True).runs] == ["seed_0", "seed_1"]


def test_hooks_are_installed_by_register_and_removable():
    from benchmarl.experiment import Experiment

    from benchmarl_decentral.reporting import loading

    assert runs.EVALUATIONS_DIR == loading.EVALUATIONS_DIR  # what evaluate writes, the report skips

    assert runs.installed()
    wrapped = {name: getattr(Experiment, name) for name in ("_setup", "_load_experiment", "run", "evaluate")}
    runs.uninstall()
    try:
        assert not runs.installed()
        assert all(getattr(Experiment, name) is method.__wrapped_original__ for name, method in wrapped.items()
                   if getattr(method, "_benchmarl_decentral_runs_hook", False))  # others' wrappers are theirs
        assert Experiment.evaluate is wrapped["evaluate"].__wrapped_original__
    finally:
        runs.install()
    assert runs.installed()
    runs.install()  # idempotent: not wrapped twice
    assert getattr(Experiment.evaluate, "__wrapped_original__") is wrapped["evaluate"].__wrapped_original__


def test_a_stale_lock_taken_by_another_process_meanwhile_is_not_taken_again(tmp_path, monkeypatch):
    """Two sweeps see the same stale lock: the one that comes second must find the first one's live lock,
    not remove it (the takeover re-checks under a guard)."""
    import socket

    lock = tmp_path / benchmark.LOCK_FILE
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(yaml.safe_dump({"pid": dead.pid, "host": socket.gethostname()}))
    assert benchmark.lock_holder(tmp_path) is None  # stale
    other = {"pid": os.getppid(), "host": socket.gethostname(), "sweep_id": "other"}  # a live process
    guard = benchmark._takeover_guard

    def other_sweep_took_it_first(path):  # between our stale check and our takeover
        lock.unlink()
        lock.write_text(yaml.safe_dump(other))
        return guard(path)

    monkeypatch.setattr(benchmark, "_takeover_guard", other_sweep_took_it_first)
    holder = benchmark.acquire_lock(tmp_path, sweep_id="mine")
    assert holder is not None and holder["sweep_id"] == "other"
    assert yaml.safe_load(lock.read_text())["sweep_id"] == "other"  # its lock is still there
    monkeypatch.setattr(benchmark, "_takeover_guard", guard)
    lock.write_text(yaml.safe_dump({"pid": dead.pid, "host": socket.gethostname()}))  # stale again
    assert benchmark.acquire_lock(tmp_path, sweep_id="mine") is None
    assert yaml.safe_load(lock.read_text())["sweep_id"] == "mine"
