"""``benchmarl report --reevaluate``: checkpoints re-evaluated on real BenchMARL runs (CoordSum, tiny, CPU)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rliable")
pytest.importorskip("matplotlib")

from benchmarl_decentral.cli import main  # noqa: E402
from benchmarl_decentral.reporting import reevaluation  # noqa: E402
from benchmarl_decentral.reporting.loading import load_runs  # noqa: E402

from conftest import make_experiment  # noqa: E402

TASK = "coordsum/3x10-30"
FRAMES = 60  # frames per batch of conftest's tiny config = evaluation interval = checkpoint interval


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def logged_best_frames(json_file: Path) -> int:
    """Frames of the highest mean logged evaluation `return` (ties: the earliest), read from BenchMARL's JSON."""
    (env,) = json.loads(json_file.read_text()).values()
    (task,) = env.values()
    (algorithm,) = task.values()
    (run,) = algorithm.values()
    steps = sorted((v for k, v in run.items() if k.startswith("step_")), key=lambda v: v["step_count"])
    means = [np.mean(s["return"]) for s in steps]
    return int(steps[int(np.argmax(means))]["step_count"])


@pytest.mark.parametrize("args, message", [
    (["--reevaluate", "final,last"], "--reevaluate: unknown checkpoint choice 'last'"),
    (["--reevaluate", "best", "--reevaluate-episodes", "0"], "--reevaluate-episodes must be a whole number"),
    (["--reevaluate", "final", "--reevaluate-modes", "greedy,argmax"], "--reevaluate-modes: unknown mode 'argmax'"),
    (["--reevaluate-episodes", "5"], "--reevaluate-episodes given without --reevaluate"),
    (["--cached-reevaluation-only"], "--cached-reevaluation-only given without --reevaluate"),
    (["--reevaluate", "final", "--metric", "agents_return"], "needs --metric return"),
])
def test_bad_reevaluation_options_are_refused_before_any_work(tmp_path, capsys, args, message):
    empty = tmp_path / "no_runs"  # an empty folder: loading it would fail with another message
    empty.mkdir()
    out = tmp_path / "report"
    assert main(["report", str(empty), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "no JSON results" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.slow
def test_reevaluate_final_and_best_checkpoints_with_cache(tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    for algorithm in ("magpo", "mappo"):  # 3 iterations: evaluations and checkpoints at 60, 120, 180 frames
        exp = make_experiment(runs, algorithm=algorithm, task=TASK, evaluation=True, create_json=True,
                              checkpoint_interval=FRAMES, keep_checkpoints_num=None, max_n_iters=3)
        exp.run()
        exp.close()
    exp = make_experiment(runs, algorithm="mappo", task=TASK, seed=1, evaluation=True, create_json=True,
                          checkpoint_interval=0, max_n_iters=1)  # no checkpoint
    exp.run()
    exp.close()
    before = snapshot(runs)
    loaded = {(r.algorithm, r.seed): r for r in load_runs([runs]).runs}

    out = tmp_path / "report"
    command = ["report", str(runs), "--out", str(out), "--reps", "50", "--no-reference",
               "--reevaluate", "final,best", "--reevaluate-episodes", "4"]
    assert main(command) == 0
    assert snapshot(runs) == before  # nothing written into the run folders

    rows = read_csv(out / "reevaluation.csv")
    assert list(rows[0]) == list(reevaluation.COLUMNS)
    for algorithm in ("magpo", "mappo"):
        run = loaded[(algorithm, "seed_0")]
        mine = [r for r in rows if r["algorithm"] == algorithm and r["seed"] == "seed_0"]
        assert {(r["which"], r["mode"]) for r in mine} == {(w, m) for w in ("final", "best")
                                                           for m in ("greedy", "sampled")}
        assert len(mine) == 4
        frames = {r["which"]: int(r["frames"]) for r in mine}
        assert frames["final"] == 3 * FRAMES
        assert frames["best"] == logged_best_frames(run.source)
        for r in mine:
            assert r["task"] == TASK and int(r["episodes"]) == 4 and r["path"] == str(run.source.parent)
            assert np.isfinite(float(r["mean"])) and float(r["std"]) >= 0
        # repeatable: the same checkpoint played again gives the same returns (the run's seed, fixed)
        files = reevaluation.run_checkpoints(run)
        assert sorted(files) == [FRAMES, 2 * FRAMES, 3 * FRAMES]
        again = reevaluation.evaluate_checkpoints({frames["final"]: files[frames["final"]]}, ["greedy", "sampled"], 4)
        for mode in ("greedy", "sampled"):
            (row,) = [r for r in mine if r["which"] == "final" and r["mode"] == mode]
            assert float(row["mean"]) == float(np.mean(again[(frames["final"], mode)]))
    assert not [r for r in rows if r["seed"] == "seed_1"]

    text = (out / "report.md").read_text()
    section = text[text.index("## Re-evaluation of checkpoints"):text.index("## Sample-efficiency curves")]
    assert "optimistic" in section and "greedy" in section and "sampled" in section
    for algorithm in ("magpo", "mappo"):
        for which in ("final", "best"):
            for mode in ("greedy", "sampled"):
                assert f"| {TASK} | {algorithm} | {which} | {mode} | 1 | 4 |" in section
    notes = text[text.index("## Notes"):text.index("## Aggregate scores")]
    (missing,) = [line for line in notes.splitlines() if "have no checkpoints" in line]
    assert "mappo seed_1" in missing and "magpo" not in missing
    assert "experiment.checkpoint_interval=<evaluation_interval> experiment.keep_checkpoints_num=null" in missing
    assert "`reevaluation.csv`" in text

    # cached only, rows for 5 episodes absent: a note, nothing evaluated, no row
    capsys.readouterr()
    other = tmp_path / "other"
    assert main(["report", str(runs), "--out", str(other), "--reps", "50", "--no-reference", "--reevaluate",
                 "final,best", "--reevaluate-episodes", "5", "--reevaluation-cache", str(out / "reevaluation.csv"),
                 "--cached-reevaluation-only"]) == 0
    assert "re-evaluating" not in capsys.readouterr().out
    text = (other / "report.md").read_text()
    assert "No run was re-evaluated" in text and "--cached-reevaluation-only is set" in text
    assert not (other / "reevaluation.csv").exists()

    # the archive without checkpoints: the same command reproduces the report from the cached CSV, byte for byte
    first_md, first_csv = (out / "report.md").read_bytes(), (out / "reevaluation.csv").read_bytes()
    for folder in runs.rglob("checkpoints"):
        shutil.rmtree(folder)
    capsys.readouterr()
    assert main(command) == 0
    assert "re-evaluating" not in capsys.readouterr().out
    assert (out / "report.md").read_bytes() == first_md
    assert (out / "reevaluation.csv").read_bytes() == first_csv


def test_coordsum_state_of_another_number_of_envs_is_refused_not_half_restored():
    """A test env rebuilt with more episodes than the checkpoint's: its state is not restored (then reset)."""
    from benchmarl_decentral.environments.coordsum import CoordSumEnv
    from benchmarl_decentral.resume import env_state, load_env_state

    saved = CoordSumEnv(num_envs=2, seed=0, n_agents=3, num_actions=10, max_target=30)
    saved.reset()
    here = CoordSumEnv(num_envs=4, seed=1, n_agents=3, num_actions=10, max_target=30)
    here.reset()
    before = here.target.clone()
    with pytest.raises(ValueError, match=r"target has shape \(2,\) in the checkpoint and \(4,\) here"):
        load_env_state(here, env_state(saved))
    assert here.target.shape == (4,) and here.target.equal(before)
    here.reset()  # still a working 4-env CoordSum
    assert here.target.shape == (4,)
