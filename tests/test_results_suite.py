"""benchmarks/suite/run.py: the results suite runs end to end (tiny --smoke budgets) and writes its reports."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

SUITE = REPO / "benchmarks" / "suite" / "run.py"


def _load_suite(name):
    """benchmarks/suite/run.py as module ``name`` (registered in sys.modules: dataclasses look their module up)."""
    import importlib.util

    sys.path.insert(0, str(SUITE.parent))
    try:
        spec = importlib.util.spec_from_file_location(name, SUITE)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SUITE.parent))
    return module


def _run(args, cwd, timeout=900):
    return subprocess.run([sys.executable, str(SUITE), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def test_list_names_every_part_and_its_budget(tmp_path):
    proc = _run(["--list"], tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for part, task in (("decpg", "pettingzoo/simple_spread"), ("magpo_5x20", "coordsum/5x20-80"),
                       ("smax_2s3z", "smax/2s3z")):
        line = next(line for line in proc.stdout.splitlines() if line.startswith(part + " "))
        assert task in line and "frames/run" in line


def test_unknown_part_is_refused(tmp_path):
    proc = _run(["--part", "nope"], tmp_path, timeout=300)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_every_part_budget_is_a_multiple_of_its_batch_and_a_bad_one_is_refused():
    sys.path.insert(0, str(SUITE.parent))
    import dataclasses

    from run import PARTS

    for part in PARTS.values():
        assert part.frames % part.batch() == 0 and part.evaluation_interval % part.batch() == 0, part.name
    with pytest.raises(ValueError, match=r"magpo_5x20: evaluation_interval=100,000 is not a multiple of the "
                                         r"part's batch .*=6,000\); use e.g. 102,000"):
        dataclasses.replace(PARTS["magpo_5x20"], evaluation_interval=100_000)


def test_an_ablation_variant_runs_as_a_second_sweep_with_its_settings_last(tmp_path):
    sys.path.insert(0, str(SUITE.parent))
    import dataclasses

    from run import PARTS, benchmark_commands

    part = dataclasses.replace(PARTS["magpo"], variants=(("magpo", "algorithm.entropy_coef=0.01"),
                                                         ("mappo", "algorithm.clip_epsilon=0.1")))
    commands = benchmark_commands(part, tmp_path, jobs=2, smoke=False)
    assert len(commands) == 3 and all(c[-2:] == ["--out", str(tmp_path)] for c in commands)
    main, magpo, mappo = (c[2:-6] for c in commands)  # overrides, without "benchmarl benchmark" and the launcher
    assert main[0] == "algorithm=magpo,mappo,ippo" and "algorithm.entropy_coef=0.0" in main
    # the part's own setting of the same key gives way to the variant's (hydra refuses a key given twice)
    assert magpo[0] == "algorithm=magpo" and magpo[-1] == "algorithm.entropy_coef=0.01"
    assert set(main[1:]) - set(magpo) == {"algorithm.entropy_coef=0.0"}
    assert set(magpo[1:]) - set(main) == {"algorithm.entropy_coef=0.01"}
    assert mappo[0] == "algorithm=mappo" and mappo[-1] == "algorithm.clip_epsilon=0.1"
    assert part.names() == ["magpo", "mappo", "ippo", "magpo[entropy_coef=0.01]", "mappo[clip_epsilon=0.1]"]
    # a baseline beside the part's algorithms does not get their algorithm.* settings (keys it may not have)
    decpg_k = PARTS["decpg_k"]
    commands = benchmark_commands(decpg_k, tmp_path, jobs=2, smoke=False)
    main, mappo, ippo = (c[2:-6] for c in commands)
    assert "algorithm.optimizer=adam" in main and "experiment.lr=0.0005" in main
    for baseline, name in ((mappo, "mappo"), (ippo, "ippo")):
        assert baseline[0] == f"algorithm={name}" and baseline[-1] == "experiment.lr=0.002"
        assert set(main[1:]) - set(baseline) == {"experiment.lr=0.0005", "algorithm.optimizer=adam",
                                                 "algorithm.lr=0.002", "algorithm.min_lr=0.002"}
        assert set(baseline[1:]) - set(main) == {"experiment.lr=0.002"}


@pytest.mark.slow
def test_smoke_part_runs_and_writes_the_index(tmp_path):
    out, docs = tmp_path / "out", tmp_path / "docs"
    proc = _run(["--smoke", "--part", "magpo", "--jobs", "1", "--out", str(out), "--docs", str(docs),
                 "--reps", "50"], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    index = (docs / "report.md").read_text()
    assert "SMOKE RUN" in index and "## magpo: coordsum/3x10-30" in index
    assert (docs / "magpo" / "report.md").is_file() and (docs / "magpo" / "task_scores.csv").is_file()
    with open(docs / "magpo" / "task_scores.csv", newline="") as f:
        assert {row["algorithm"] for row in csv.DictReader(f)} == {"magpo", "mappo", "ippo"}
    # the runs are in benchmarl benchmark's layout, all finished
    statuses = list(out.rglob("status.yaml"))
    assert len(statuses) == 3 and all("state: finished" in s.read_text() for s in statuses)
    # their files are archived beside the report, and the report reads them there, with reference rows
    assert len(list((docs / "magpo" / "runs").rglob("*.json"))) == 3
    with open(docs / "magpo" / "reference_scores.csv", newline="") as f:
        assert {row["policy"] for row in csv.DictReader(f)} >= {"random", "zero"}
    assert "| *random* (reference" in index and "above random (95%)" in index and "of the paper's budget" in index
    # the MAGPO parts keep a checkpoint per evaluation; their final and best checkpoints are re-evaluated
    # greedy and sampled into the committed cache, which the part's report shows
    assert sorted(p.name for p in out.rglob("checkpoint_*.pt"))[:2] == ["checkpoint_200.pt", "checkpoint_200.pt"]
    with open(docs / "magpo" / "reevaluation.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 2 * 2 and {(r["which"], r["mode"]) for r in rows} == {
        (w, m) for w in ("final", "best") for m in ("greedy", "sampled")}
    assert {r["frames"] for r in rows if r["which"] == "final"} == {"400"} and {r["episodes"] for r in rows} == {"4"}
    assert "Re-evaluation of checkpoints" in (docs / "magpo" / "report.md").read_text()
    # --report-only regenerates the part's report byte for byte from the archive alone (sweep folder gone)
    before = {p.relative_to(docs): p.read_bytes() for p in (docs / "magpo").rglob("*") if p.is_file()}
    shutil.rmtree(out)
    proc = _run(["--smoke", "--report-only", "--out", str(out), "--docs", str(docs), "--reps", "50"], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    after = {p.relative_to(docs): p.read_bytes() for p in (docs / "magpo").rglob("*") if p.is_file()}
    assert after.keys() == before.keys()
    assert [name for name in before if after[name] != before[name]] == []


def test_profiles_scale_the_budgets_and_every_part_states_claim_reward_and_paper_fraction():
    import importlib.util

    spec = importlib.util.spec_from_file_location("suite_run", SUITE)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("suite_run", module)  # dataclasses look their module up there
    spec.loader.exec_module(sys.modules["suite_run"])
    suite = sys.modules["suite_run"]
    assert set(suite.PROFILES) == {"cpu", "gpu"}
    for part in suite.PARTS.values():
        cpu, gpu = part.overrides(False, "cpu"), part.overrides(False, "gpu")
        assert f"experiment.max_n_frames={part.frames}" in cpu
        assert f"experiment.max_n_frames={10 * part.frames}" in gpu  # >= 10x the cpu budget
        assert f"experiment.evaluation_interval={10 * part.evaluation_interval}" in gpu
        assert "experiment.train_device=cuda" in gpu and not any("cuda" in o for o in cpu)
        assert ("experiment.sampling_device=cuda" in gpu) == part.gpu_sampling
        assert part.claim and part.reward and part.paper_budget
        if part.paper_frames:
            assert part.paper_fraction("gpu") == pytest.approx(10 * part.paper_fraction("cpu"))
    # one reward definition per part: the dg_mappo part gives the shared reward to every algorithm
    assert "task.shared_rew=true" in suite.PARTS["dg_mappo"].task_overrides


@pytest.mark.slow
def test_report_only_on_a_committed_part_without_run_files(tmp_path):
    """A committed part whose run files were not kept (docs/results/magpo with its run archive removed, as parts
    reported before the archive existed): reference rows (from its committed cache), a verdict on its
    last-evaluation scores, and its curves redrawn with reference lines; nothing is evaluated again."""
    docs = tmp_path / "docs"
    shutil.copytree(REPO / "docs" / "results" / "magpo", docs / "magpo")
    shutil.rmtree(docs / "magpo" / "runs")
    cache = (docs / "magpo" / "reference.json").read_bytes()
    proc = _run(["--report-only", "--out", str(tmp_path / "out"), "--docs", str(docs), "--reps", "100"], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (docs / "magpo" / "reference.json").read_bytes() == cache  # read, not re-evaluated
    index = (docs / "report.md").read_text()
    section = index[index.index("## magpo: coordsum/3x10-30"):]
    assert "run files of this part were not kept" in section and "| *random* (reference" in section
    with open(docs / "magpo" / "reference_scores.csv", newline="") as f:
        random = next(r for r in csv.DictReader(f) if r["policy"] == "random")
    entries = json.loads(cache)["entries"]
    episodes = [v for key, entry in sorted(entries.items()) if "|random|" in key for v in entry["returns"]]
    assert float(random["mean"]) == pytest.approx(sum(episodes) / len(episodes), rel=1e-12)
    with open(docs / "magpo" / "runs.csv", newline="") as f:  # committed last-evaluation scores
        magpo = [float(r["score"]) for r in csv.DictReader(f) if r["algorithm"] == "magpo"]
    row = next(line for line in section.splitlines() if line.startswith("| magpo |"))
    difference = sum(magpo) / len(magpo) - float(random["mean"])
    assert f"| {difference:.2f} [" in row and row.split(" | ")[5] in ("yes", "no")
    assert (docs / "magpo" / "curves_coordsum_3x10-30.png").read_bytes()[:4] == b"\x89PNG"


def test_claim_verdicts_follow_the_probability_of_improvement_ci(tmp_path):
    """Confirmed / contradicted / not confirmed from P(x > y) and its CI; "did not learn" is said."""
    suite = _load_suite("suite_run_claims")
    rows = [("a", "b", 0.9, 0.6, 1.0), ("b", "a", 0.1, 0.0, 0.4), ("a", "c", 0.3, 0.0, 0.45),
            ("c", "a", 0.7, 0.55, 1.0), ("b", "c", 0.6, 0.2, 0.9), ("c", "b", 0.4, 0.1, 0.8),
            ("b", "d", 0.33, 0.0, 1.0), ("d", "b", 0.67, 0.0, 1.0)]
    with open(tmp_path / "probability_of_improvement.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["x", "y", "probability", "ci_low", "ci_high"])
        writer.writerows(rows)
    with open(tmp_path / "task_scores.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["algorithm", "above_random_95"])
        writer.writerows([("a", "yes"), ("b", "no"), ("c", "yes"), ("d", "no")])
    part = suite.Part("p", "claim", ("a", "b", "c"), "coordsum/3x10-30", (), frames=6000, evaluation_interval=6000,
                      est_minutes=1, claim_checks=(("a", "better", "b"), ("a", "better", "c"), ("b", "better", "c"),
                                                   ("a", "level", "c"), ("b", "level", "c"), ("a", "level", "b"),
                                                   ("a", "better", "zz"), ("b", "level", "d")))
    lines = suite.claim_verdicts(part, tmp_path)
    assert lines[0].startswith("- a better than b: **confirmed**, P(a > b) = 0.90 [0.60, 1.00]; b did not beat random")
    assert lines[1].startswith("- a better than c: **contradicted**, P(a > c) = 0.30 [0.00, 0.45]")
    assert lines[2].startswith("- b better than c: **not confirmed at this budget**, P(b > c) = 0.60")
    assert lines[3].startswith("- a competitive with c: **contradicted**")
    assert lines[4].startswith("- b competitive with c: **not contradicted (not told apart)**")
    assert lines[5].startswith("- a competitive with b: **not contradicted (a better)**")
    assert lines[6] == "- a vs zz: no comparison in this report"
    # neither learned: not a verdict on the claim
    assert lines[7] == ("- b competitive with d: **not tested at this budget: neither b nor d beat the random policy "
                        "(95%)**, P(b > d) = 0.33 [0.00, 1.00]")


def test_scalar_claims_read_each_archived_run_and_compare_with_mann_whitney():
    """decpg_k's scalar checks (generalization gap, perturbed return) on its committed archive, against a plain
    re-reading of every run's CSV (its last values, the report's window) and P(x > y) counted pair by pair."""
    suite = _load_suite("suite_run_scalars")
    part = suite.PARTS["decpg_k"]
    docs = REPO / "docs" / "results" / "decpg_k"
    k = suite._last_k(part)
    lines = suite.claim_verdicts(part, docs, reps=200)
    for scalar in ("eval_generalization_gap", "eval_perturbed_reward_episode_reward_mean"):
        expected = {}
        for path in sorted((docs / "runs").rglob(f"scalars/{scalar}.csv")):
            algorithm = path.relative_to(docs / "runs").parts[2]
            values = [float(line.split(",")[1]) for line in path.read_text().split()]
            expected.setdefault(algorithm, []).append(sum(values[-k:]) / k)
        got = suite.scalar_scores(part, docs / "runs", [scalar])[scalar]
        assert sorted(got) == sorted(expected) == sorted(part.algorithms)
        for algorithm in expected:
            assert sorted(got[algorithm]) == pytest.approx(sorted(expected[algorithm]), rel=1e-12)
        for checked, x, relation, y in part.scalar_checks:
            if checked != scalar:
                continue
            wins = sum((a > b) + 0.5 * (a == b) for a in expected[x] for b in expected[y])
            p = wins / (len(expected[x]) * len(expected[y]))
            line = next(l for l in lines if l.startswith(f"- {x} ") and f" {y} on `{scalar}`" in l)
            assert f"P({x} > {y}) = {p:.2f} [" in line


def test_report_only_keeps_a_committed_report_whose_archive_lost_its_run_json(tmp_path):
    """An archive committed while .gitignore kept BenchMARL's run folders out (status.yaml and .hydra/ only):
    --report-only keeps the committed report as it is and says the part must be rerun to regenerate it."""
    docs = tmp_path / "docs"
    shutil.copytree(REPO / "docs" / "results" / "magpo", docs / "magpo")
    for json_file in (docs / "magpo" / "runs").rglob("*.json"):
        json_file.unlink()
    assert list((docs / "magpo" / "runs").rglob("status.yaml"))
    before = {p.relative_to(docs): p.read_bytes() for p in (docs / "magpo").rglob("*") if p.is_file()}
    proc = _run(["--report-only", "--out", str(tmp_path / "out"), "--docs", str(docs), "--reps", "100"], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "magpo/runs holds no run JSON" in proc.stdout and "Rerun the part (--part magpo)" in proc.stdout
    after = {p.relative_to(docs): p.read_bytes() for p in (docs / "magpo").rglob("*") if p.is_file()}
    assert after == before
    row = next(line for line in (docs / "report.md").read_text().splitlines() if line.startswith("| magpo |"))
    assert "**run JSONs not in the archive: rerun to regenerate the report**" in row


def test_git_keeps_the_archived_run_folders_and_ignores_the_others():
    """.gitignore's rule for BenchMARL run folders (``*_mlp__*/``) must not reach docs/results*/: the archive's
    JSON and scalars are what --report-only reads in a fresh clone."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    run = "mappo_balance_mlp__0123abcd_26_12_07-00_00_00"
    archived = [f"docs/results/magpo/runs/coordsum/3x10-30/mappo/seed=0/{run}/{run}.json",
                f"docs/results-gpu/magpo/runs/coordsum/3x10-30/mappo/seed=0/{run}/{run}/scalars/x.csv"]
    elsewhere = [f"{run}/{run}.json", f"examples/{run}/{run}.json"]
    proc = subprocess.run(["git", "check-ignore", "--no-index", *archived, *elsewhere], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.stdout.split() == elsewhere
