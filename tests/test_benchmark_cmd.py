"""`benchmarl benchmark`: sweeps on real launchers (basic, joblib), failures, resume, bad input.

End-to-end runs use real BenchMARL / VMAS / CoordSum in subprocesses with tiny
budgets (TINY from conftest); the input checks call the planner in-process
(nothing is run by them).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
from pathlib import Path

import pytest
import yaml
from benchmarl.experiment.callback import Callback

from benchmarl_decentral import benchmark, cli
from benchmarl_decentral.benchmark import BenchmarkError, plan_benchmark
from conftest import TINY, make_experiment, run_cli

HAS_JOBLIB = importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher") is not None
needs_joblib = pytest.mark.skipif(not HAS_JOBLIB, reason='needs pip install "benchmarl-decentral[launchers]"')


def _ok(result):
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-6000:]
    return result


def _status(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / "status.yaml").read_text())


# ------------------------------------------------------------ input checks (fast)
@pytest.mark.parametrize("overrides, kwargs, message", [
    (["algorithm=decpg,dgmappo", "task=vmas/balance"], {}, "unknown algorithm 'dgmappo'; available: decpg"),
    (["algorithm=mappo", "task=vmas/balanc"], {}, "unknown task 'vmas/balanc'; did you mean vmas/balance"),
    (["task=vmas/balance"], {}, "no algorithm given: add algorithm=NAME"),
    (["algorithm=mappo"], {}, "no task given: add task=NAME"),
    (["algorithm=mappo", "task=vmas/balance"], {"launcher": "pbs"}, "unknown launcher 'pbs'; choose one of sequential"),
    (["algorithm=mappo", "task=vmas/balance"], {"jobs": 2}, "--jobs does not apply to the sequential launcher"),
    (["algorithm=mappo", "task=vmas/balance", "experiment.max_n_itrs=2"], {},
     "Could not override 'experiment.max_n_itrs'"),
    (["algorithm=mappo", "task=vmas/balance", "experiment.lr=fast"], {}, "bad config for the run"),
    (["algorithm=mappo", "task=vmas/balance", "hydra.sweep.dir=elsewhere"], {},
     "benchmark sets hydra.sweep.dir itself; use --out DIR"),
    (["algorithm=mappo", "task=vmas/balance", "hydra/launcher=joblib"], {}, "--launcher NAME"),
    (["algorithm=mappo", "task=vmas/balance", "experiment.save_folder=/tmp/x"], {}, "laid out by benchmark"),
    (["algorithm=mappo", "task=vmas/balance", "experiment.create_json=false"], {}, "needs BenchMARL's JSON results"),
    (["algorithm=mappo", "task=vmas/balance", "experiment.evaluation=false"], {}, "leave evaluation on"),
    (["algorithm=mappo", "task=vmas/balance", "seed=interval(0,3)"], {}, "only lists of values"),
    (["algorithm=mappo", "task=vmas/balance", "--cfg"], {}, "unknown option '--cfg'"),
])
def test_bad_input_is_one_clear_error_before_anything_runs(tmp_path, overrides, kwargs, message):
    out = tmp_path / "sweep"
    with pytest.raises(BenchmarkError) as error:
        plan_benchmark(overrides, out=out, **kwargs)
    assert message in str(error.value)
    assert not out.exists()


def test_launcher_plugin_missing_names_the_install():
    if importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is not None:
        pytest.skip("hydra-ray-launcher is installed here")
    with pytest.raises(BenchmarkError, match=r"ray launcher needs hydra's plugin hydra_ray_launcher.*"
                                             r"pip install hydra-ray-launcher"):
        benchmark.check_launcher("ray", None)
    # the extra that provides joblib / submitit is named in their entries
    for name in ("joblib", "submitit_local", "submitit_slurm"):
        assert benchmark.LAUNCHERS[name].install == 'pip install "benchmarl-decentral[launchers]"'


@needs_joblib
def test_plan_expands_the_product_and_names_run_folders(tmp_path):
    plan = plan_benchmark(["algorithm=decpg,mappo", "task=vmas/balance,coordsum/3x10-30", "seed=0,1",
                           "experiment.max_n_iters=2"], out=tmp_path / "s", launcher="joblib", jobs=2)
    assert len(plan.jobs) == 8 and len(plan.to_run) == 8
    assert {job.dir for job in plan.jobs} == {f"{task}/{alg}/seed={seed}" for task in ("vmas/balance",
                                              "coordsum/3x10-30") for alg in ("decpg", "mappo") for seed in (0, 1)}
    job = plan.jobs[0]
    assert job.overrides[:3] == ["algorithm=decpg", "task=vmas/balance", "seed=0"]
    # benchmark's defaults are explicit overrides of every run
    assert {"experiment.loggers=[csv]", "experiment.create_json=True", "experiment.render=False"} <= set(job.overrides)
    assert "hydra/launcher=joblib" in plan.hydra_overrides and "hydra.launcher.n_jobs=2" in plan.hydra_overrides
    # any other swept key names the folder too (the seed is always there)
    plan = plan_benchmark(["algorithm=decpg", "task=vmas/balance", "algorithm.k=1,2"], out=tmp_path / "k")
    assert [job.dir for job in plan.jobs] == ["vmas/balance/decpg/algorithm.k=1,seed=0",
                                               "vmas/balance/decpg/algorithm.k=2,seed=0"]
    # a sweep of one algorithm names its fixed algorithm.* settings too: an ablation run into the same
    # --out lands beside the default runs; a sweep-wide setting of several algorithms does not name folders
    plan = plan_benchmark(["algorithm=decpg", "task=vmas/balance", "algorithm.k=0", "experiment.max_n_iters=2"],
                          out=tmp_path / "s")
    assert [job.dir for job in plan.jobs] == ["vmas/balance/decpg/algorithm.k=0,seed=0"]
    assert len(plan.to_run) == 1
    plan = plan_benchmark(["algorithm=decpg,mappo", "task=vmas/balance", "algorithm.entropy_coef=0.0"],
                          out=tmp_path / "e")
    assert [job.dir for job in plan.jobs] == ["vmas/balance/decpg/seed=0", "vmas/balance/mappo/seed=0"]


def test_hide_results_and_finished_definition(tmp_path):
    """Only a `finished` status whose JSON exists is finished; unfinished JSONs are hidden from the report."""
    run = tmp_path / "run"
    exp = run / "mappo_balance_mlp__x"
    exp.mkdir(parents=True)
    (exp / "mappo_balance_mlp__x.json").write_text("{}")
    (exp / "other.json").write_text("{}")  # not BenchMARL's <run>/<run>.json: left alone
    status = {"state": "finished", "json": "mappo_balance_mlp__x/mappo_balance_mlp__x.json"}
    assert benchmark.is_finished(run, status)
    assert not benchmark.is_finished(run, dict(status, state="failed"))
    assert not benchmark.is_finished(run, None)
    assert benchmark._hide_results(run) == ["mappo_balance_mlp__x/mappo_balance_mlp__x.json"]
    assert sorted(p.name for p in exp.iterdir()) == ["mappo_balance_mlp__x.json.incomplete", "other.json"]
    assert not benchmark.is_finished(run, status)  # its JSON is gone


# ---------------------------------------------------------------- end to end
@pytest.mark.slow
@needs_joblib
def test_joblib_sweep_workers_find_our_plugins_then_report_and_resume(tmp_path, capsys):
    """2 algorithms (ours + BenchMARL's) x 1 task (ours) x 2 seeds on the joblib launcher, then report."""
    args = ["benchmark", "algorithm=decpg,mappo", "task=coordsum/3x10-30", "seed=0,1", *TINY,
            "--launcher", "joblib", "--jobs", "2", "--out", "sweep"]
    result = _ok(run_cli(args, tmp_path))
    out = tmp_path / "sweep"
    plan = yaml.safe_load((out / "benchmark.yaml").read_text())
    assert plan["runs"] == 4 and plan["launcher"] == "joblib"
    assert "4 finished now, 0 already finished, 0 failed, 0 not run" in result.stdout
    assert "4/4 runs done (4 finished, 0 failed)" in result.stdout  # overall progress
    assert "it/s]" in result.stderr  # BenchMARL's per-run tqdm bar
    pids = set()
    for alg in ("decpg", "mappo"):
        for seed in (0, 1):
            run_dir = out / "coordsum/3x10-30" / alg / f"seed={seed}"
            status = _status(run_dir)
            assert status["state"] == "finished" and status["iterations"] == 2 and status["frames"] == 200
            assert status["sweep_id"] == plan["sweep_id"]
            results = json.loads((run_dir / status["json"]).read_text())
            assert list(results["coordsum"]["3x10-30"]) == [alg]
            assert list(results["coordsum"]["3x10-30"][alg]) == [f"seed_{seed}"]
            pids.add(status["pid"])
    # the runs ran in loky worker processes, not in the driver: decpg and coordsum were found there
    assert plan["driver_pid"] not in pids

    # `benchmarl report` on the sweep folder (the console script's main, in this process)
    assert cli.main(["report", str(out), "--out", str(tmp_path / "report"), "--reps", "200"]) == 0
    assert "4 run(s), 1 task(s), 2 algorithm(s) (decpg, mappo)" in capsys.readouterr().out
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "| coordsum/3x10-30 | decpg | 2 | 0, 1 |" in markdown
    assert (tmp_path / "report" / "curves_coordsum_3x10-30.png").stat().st_size > 0

    # the results suite's index over a part folder holding this sweep (reports made in this process)
    suite = _suite()
    (tmp_path / "suite").mkdir()
    (tmp_path / "suite" / "magpo").symlink_to(out, target_is_directory=True)
    docs, archive = tmp_path / "docs", tmp_path / "docs" / "magpo" / "runs"
    assert suite.archive_runs(out, archive) == 4  # what a suite run does after its sweep
    suite.write_part_record(suite.PARTS["magpo"], out, archive, docs, "cpu", False)
    marker = archive / "kept.txt"
    marker.write_text("the committed archive")
    assert suite.main(["--report-only", "--out", str(tmp_path / "suite"), "--docs", str(docs),
                       "--reps", "50"]) == 0
    # --report-only reads the committed archive; it does not rebuild it from a local sweep folder
    assert marker.read_text() == "the committed archive"
    index = (tmp_path / "docs" / "report.md").read_text()
    assert "- Versions (this report): benchmarl-decentral" in index and "- Machine (this report): " in index
    assert "## magpo: coordsum/3x10-30" in index and "[report](magpo/report.md); runs: 4 finished" in index
    # the part's table (frames per run are checked in status.yaml above): 2 seeds each, reference rows
    assert "| algorithm / policy | seeds | final score mean ± std |" in index
    assert "| decpg | 2 | " in index and "| mappo | 2 | " in index and "| *random* (reference" in index
    assert "![magpo curves](magpo/curves_coordsum_3x10-30.png)" in index
    assert (tmp_path / "docs" / "magpo" / "curves_coordsum_3x10-30.png").is_file()

    # resume: planning the same sweep again (what the CLI does first) finds every run finished
    overrides = args[1:args.index("--launcher")]
    again = plan_benchmark(overrides, out=out, launcher="joblib", jobs=2)
    assert [job.action for job in again.jobs] == ["skip"] * 4 and not again.to_run
    # a finished run asked again with other settings: refused before anything runs
    changed = [o.replace("experiment.max_n_iters=2", "experiment.max_n_iters=3") for o in overrides]
    with pytest.raises(BenchmarkError, match="holds a finished run made with other settings") as error:
        plan_benchmark(changed, out=out, launcher="joblib", jobs=2)
    assert "experiment.max_n_iters=3" in str(error.value)


@pytest.mark.slow
def test_failed_run_does_not_stop_the_others_and_a_rerun_retries_it(tmp_path):
    """Sequential (hydra's basic launcher): the failing run comes first, the next one still runs."""
    args = ["benchmark", "algorithm=decpg", "task=vmas/balance", "task.n_agents=3", "algorithm.k=5,1", *TINY,
            "--out", "sweep"]
    result = run_cli(args, tmp_path)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    out = tmp_path / "sweep" / "vmas/balance/decpg"
    failed, good = out / "algorithm.k=5,seed=0", out / "algorithm.k=1,seed=0"
    assert "1 finished now, 0 already finished, 1 failed, 0 not run" in result.stdout
    assert "FAILED  vmas/balance/decpg/algorithm.k=5,seed=0: ValueError: decpg: algorithm.k=5 does not fit" \
        in result.stdout
    assert "does not fit group(s) 'agents'" in result.stderr  # reported when it happened, too
    status = _status(failed)
    assert status["state"] == "failed" and status["attempt"] == 1 and "does not fit group(s) 'agents'" in status["error"]
    assert "Traceback" in (failed / "error.txt").read_text()
    assert not list(failed.rglob("*.json"))
    assert _status(good)["state"] == "finished"

    # rerun: the finished run is skipped, the failed one is run again
    again = plan_benchmark(args[1:args.index("--out")], out=tmp_path / "sweep")
    assert {job.dir: job.action for job in again.jobs} == {
        "vmas/balance/decpg/algorithm.k=5,seed=0": "run", "vmas/balance/decpg/algorithm.k=1,seed=0": "skip"}


@pytest.mark.slow
@needs_joblib
def test_benchmarl_run_app_under_joblib_finds_our_plugin_in_workers(tmp_path):
    """`python -m benchmarl.run -m hydra/launcher=joblib`: our hydra plugin gives the workers decpg and coordsum."""
    _ok(run_cli(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "algorithm=decpg",
                 "task=coordsum/3x10-30", "hydra.sweep.dir=multirun", *TINY], tmp_path, module="benchmarl.run"))
    (json_file,) = (tmp_path / "multirun").rglob("decpg_3x10-30_*.json")
    assert "seed_0" in json.dumps(json.loads(json_file.read_text()))


# ------------------------------------------------------------------ results suite
def _suite():
    spec = importlib.util.spec_from_file_location("suite_run", Path(__file__).resolve().parents[1]
                                                  / "benchmarks" / "suite" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("suite_run", module)  # dataclasses look their module up there
    spec.loader.exec_module(sys.modules["suite_run"])
    return sys.modules["suite_run"]


def test_suite_parts_are_fair_and_compose(tmp_path):
    """Every part: one budget and one experiment config for all its algorithms, valid for BenchMARL."""
    suite = _suite()
    assert "experiment.on_policy_collected_frames_per_batch=6000" in suite.COMMON
    for part in suite.PARTS.values():
        batch = part.batch()
        assert part.frames % batch == 0 and part.evaluation_interval % batch == 0
        # a part's experiment settings replace COMMON's (one value per key) or add to them
        keys = [o.split("=", 1)[0] for o in part.common()]
        assert len(keys) == len(set(keys)) and set(keys) >= {o.split("=", 1)[0] for o in suite.COMMON}
        assert part.frames % part.evaluation_interval == 0  # the last evaluation is at the last frame
        overrides = part.overrides(smoke=False)
        # the algorithms are one swept value: nothing in the overrides depends on the algorithm
        assert sum(o.startswith("algorithm=") for o in overrides) == 1
        # algorithm settings a part adds hold for all its algorithms: one value, not a sweep
        assert all("," not in o for o in overrides if o.startswith("algorithm."))
        if suite.missing(part):
            continue
        assert f"seed={','.join(map(str, suite.SEEDS))}" in overrides
        # compose every algorithm's config (one seed: the others differ by the seed only)
        one_seed = [o if not o.startswith("seed=") else "seed=0" for o in overrides]
        plan = plan_benchmark(one_seed, out=tmp_path / part.name, launcher="joblib", jobs=2)
        assert [job.algorithm for job in plan.jobs] == list(part.algorithms)


def test_suite_skips_a_part_whose_pieces_are_missing():
    suite = _suite()
    part = suite.Part("x", "claim", ("mappo", "no_such_algorithm"), "vmas/no_such_task", (), frames=6000,
                      evaluation_interval=6000, est_minutes=1, requires_modules=("no_such_module_xyz",))
    assert suite.missing(part) == ["algorithm 'no_such_algorithm' is not registered",
                                   "task 'vmas/no_such_task' is not registered",
                                   "Python package 'no_such_module_xyz' is not installed"]



class SwallowsTheSignal(Callback):
    """Sends this process SIGTERM in the second collection, inside code that ignores every exception
    (what a finaliser does with the handler's exception)."""

    def __init__(self):
        super().__init__()
        self.swallowed = []

    def on_batch_collected(self, batch):
        if self.experiment.n_iters_performed == 1:
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(1000):  # the handler runs between bytecodes
                    pass
            except BaseException as error:  # noqa: BLE001
                self.swallowed.append(type(error))


def test_a_sigterm_whose_exception_is_swallowed_still_stops_the_run(tmp_path, monkeypatch):
    """The SIGTERM handler's exception can land in code that swallows it; the run stops at that iteration."""
    swallower = SwallowsTheSignal()
    experiment = make_experiment(tmp_path, algorithm="mappo", task="vmas/balance", task_overrides={"n_agents": 2},
                                 callbacks=[swallower], max_n_iters=5)
    monkeypatch.setattr(benchmark, "_received_signal", None)
    previous = signal.signal(signal.SIGTERM, benchmark._raise_interrupted)
    try:
        experiment.callbacks = [*experiment.callbacks, benchmark._StopOnSignal()]
        with pytest.raises(benchmark.RunInterrupted) as raised:
            experiment.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert swallower.swallowed == [benchmark.RunInterrupted]  # the handler's own exception was lost
    assert raised.value.signum == signal.SIGTERM
    assert experiment.n_iters_performed == 1  # stopped in the iteration that received it, not after 5
