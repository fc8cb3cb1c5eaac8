"""`benchmarl report`: loading BenchMARL's JSON results, rliable statistics, report files, CLI."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("rliable")
pytest.importorskip("matplotlib")

from benchmarl.experiment.logger import JsonWriter  # noqa: E402

from benchmarl_decentral.cli import main  # noqa: E402
from benchmarl_decentral.reporting import (  # noqa: E402
    ReportInputError,
    build_report,
    collect_scores,
    load_runs,
    make_report,
    score_matrices,
)
from benchmarl_decentral.reporting.stats import _poi, _score_distribution  # noqa: E402

TASKS = {"balance": 0.0, "navigation": 10.0}  # base return per task
GAIN = {"decpg": 2.0, "mappo": 0.5}  # return gained per 100 frames
OFFSET = {0: 0.0, 1: 0.1, 2: 0.5}  # per seed
REPS = 200


def true_return(task, algorithm, seed, frames):
    return TASKS[task] + GAIN[algorithm] * frames / 100 + OFFSET[seed]


def write_run(root, task, algorithm, seed, frames_grid, interval=100, scalars=None, metric_values=None):
    """A run folder as BenchMARL makes it: <root>/<run>/<run>.json by its own JsonWriter."""
    name = f"{algorithm}_{task}_mlp__{seed:02d}_{len(frames_grid)}"
    folder = root / name
    folder.mkdir(parents=True)
    writer = JsonWriter(folder=str(folder), name=name + ".json", algorithm_name=algorithm, task_name=task,
                        environment_name="vmas", seed=seed)
    for frames in frames_grid:
        value = true_return(task, algorithm, seed, frames) if metric_values is None else metric_values(frames)
        episodes = torch.tensor([value - 1.0, value + 1.0])  # mean over episodes = value
        writer.write(total_frames=frames, metrics={"agents_return": episodes, "return": episodes},
                     evaluation_step=frames // interval)
    for key, lines in (scalars or {}).items():  # the csv logger: <run>/<run>/scalars/<key>.csv
        if callable(lines):
            lines = lines(seed)
        path = folder / name / "scalars" / f"{key}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{step},{value}\n" for step, value in lines))
    return folder


def suite(root, seeds=(0, 1, 2), grids=None, tasks=TASKS):
    grids = grids or {}
    for task in tasks:
        for algorithm in GAIN:
            for seed in seeds:
                scalars = None
                if algorithm == "decpg":
                    scalars = {
                        "decpg_agents_actor_consensus_distance": [(1, 1.0), (2, 0.1 * (seed + 1))],
                        "eval_generalization_gap": [(1, -0.5), (2, -0.2 * seed)],
                        "eval_perturbed_reward_episode_reward_mean": [(2, 3.0 + seed)],
                        "train_agents_loss_objective": [(2, 0.0)],  # not a decentralised metric
                        "comm_train_bytes_per_agent": [(2, 1024.0)],  # decpg's logged key comm/train_bytes_per_agent
                        "comm_train_network_bytes_per_agent": [(2, 0.0)],
                        "train_agents_learner_entropy": [(2, 1.5)],  # magpo's train/agents/learner_entropy
                        "train_agents_learner_action_agreement": [(2, 0.25)],
                    }
                grid = grids.get(algorithm, [100, 200, 300, 400, 500])
                write_run(root / "multirun" / "2025-01-01" / "12-00-00" / f"{task}{algorithm}{seed}",
                          task, algorithm, seed, grid, scalars=scalars)
    return root / "multirun"


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------ loading
def test_loader_reads_benchmarl_json_as_benchmarl_does(tmp_path):
    from benchmarl.eval_results import get_raw_dict_from_multirun_folder

    folder = suite(tmp_path)
    (folder / "notes.json").write_text('{"not": "results"}')  # foreign JSON next to the runs
    loaded = load_runs([folder])
    assert len(loaded.runs) == 12 and len(loaded.ignored) == 1
    assert any("ignored" in note for note in loaded.notes)
    raw = get_raw_dict_from_multirun_folder(str(folder))  # BenchMARL's own merge
    for run in loaded.runs:
        expected = raw[run.env][run.task][run.algorithm][run.seed]
        assert sorted(run.evaluations) == sorted(v["step_count"] for k, v in expected.items() if k.startswith("step_"))
        frames, values = run.curve("return")
        seed = run.seed_number
        np.testing.assert_allclose(values, [true_return(run.task, run.algorithm, seed, f) for f in frames], rtol=1e-6)
        assert (run.scalars_dir is not None) == (run.algorithm == "decpg")
    # the same folder given twice, or a folder and its parent: each run once
    assert len(load_runs([folder, folder / "2025-01-01"]).runs) == 12


# ------------------------------------------------------------- statistics
def test_scores_and_aggregates_match_hand_computation(tmp_path):
    report = build_report([suite(tmp_path)], reps=REPS, last_k=1)  # the last evaluation alone
    # no note but the one on the missing run configs (these JSONs were written without BenchMARL's run folder)
    assert [n for n in report.notes if "no run config" not in n] == []
    assert report.scores.last_k == 1 and report.references == {}
    # normalisation per task: min = mappo seed 0 at 100 frames (base + 0.5),
    # max = decpg seed 2 at 500 frames (base + 10.5) -> range 10, on both tasks
    offsets = np.array([0.0, 0.1, 0.5])
    expected = {"decpg": (9.5 + offsets) / 10, "mappo": (2.0 + offsets) / 10}
    for algorithm, scores in report.matrices.scores.items():
        assert scores.shape == (3, 2)
        np.testing.assert_allclose(scores, np.stack([expected[algorithm]] * 2, axis=1), rtol=1e-6)
    rows = {row["algorithm"]: row for row in report.aggregates}
    for algorithm, values in expected.items():
        six = np.sort(np.concatenate([values, values]))
        row = rows[algorithm]
        assert row["iqm"] == pytest.approx(six[1:-1].mean(), rel=1e-6)  # 25% trimmed: 1 of 6 cut at each end
        assert row["mean"] == pytest.approx(values.mean(), rel=1e-6)
        assert row["median"] == pytest.approx(values.mean(), rel=1e-6)  # median of the two (equal) task means
        assert row["optimality_gap"] == pytest.approx(1 - np.minimum(six, 1).mean(), rel=1e-6)
        assert row["iqm_ci_low"] <= row["iqm"] <= row["iqm_ci_high"]
    assert rows["decpg"]["iqm"] == pytest.approx(0.9675, rel=1e-6)
    poi = {(r["x"], r["y"]): r for r in report.improvement}
    assert poi[("decpg", "mappo")]["probability"] == 1.0 and poi[("decpg", "mappo")]["ci_low"] > 0.9
    assert poi[("mappo", "decpg")]["probability"] == 0.0
    # per task: raw final scores at 500 frames, mean and std over seeds
    task_rows = {(r["task"], r["algorithm"]): r for r in report.tasks}
    final = 10.0 + 2.0 * 5 + offsets
    assert task_rows[("vmas/navigation", "decpg")]["mean"] == pytest.approx(final.mean(), rel=1e-6)
    assert task_rows[("vmas/navigation", "decpg")]["std"] == pytest.approx(final.std(ddof=1), rel=1e-5)
    # profile: fraction of decpg runs above 0.9 is 1, of mappo 0
    taus = list(report.profile.taus)
    i = taus.index(0.9)
    assert report.profile.values["decpg"][i] == 1.0 and report.profile.values["mappo"][i] == 0.0


def test_vectorised_statistics_are_rliables():
    from rliable import library, metrics

    rng = np.random.default_rng(0)
    for nx, ny in ((3, 3), (2, 5), (4, 1)):
        x = rng.integers(0, 4, size=(nx, 3)).astype(float)  # ties included
        y = rng.integers(0, 4, size=(ny, 3)).astype(float)
        assert _poi(x, y) == pytest.approx(metrics.probability_of_improvement(x, y))
        assert _poi(x, x) == pytest.approx(0.5)
        taus = np.linspace(0, 3, 7)
        np.testing.assert_allclose(_score_distribution(x, taus), library.score_distributions(x, taus))


def test_noisy_better_algorithm_has_high_probability_of_improvement(tmp_path):
    rng = np.random.default_rng(1)
    for task in TASKS:
        for algorithm, level in (("decpg", 5.0), ("mappo", 3.0)):
            for seed in range(5):
                noise = rng.normal(0, 0.5)
                write_run(tmp_path / f"{task}{algorithm}{seed}", task, algorithm, seed, [100, 200],
                          metric_values=lambda f, level=level, noise=noise: level * f / 200 + noise)
    report = build_report([tmp_path], reps=REPS)
    poi = {(r["x"], r["y"]): r["probability"] for r in report.improvement}
    assert poi[("decpg", "mappo")] > 0.9


def test_decentralised_metrics_table(tmp_path):
    report = build_report([suite(tmp_path)], reps=REPS)
    rows = {(r["metric"], r["task"], r["algorithm"]): r for r in report.extras}
    assert {m for m, _, _ in rows} == {"decpg_agents_actor_consensus_distance", "eval_generalization_gap",
                                        "eval_perturbed_reward_episode_reward_mean", "comm_train_bytes_per_agent",
                                        "comm_train_network_bytes_per_agent", "train_agents_learner_entropy",
                                        "train_agents_learner_action_agreement"}
    assert rows[("comm_train_bytes_per_agent", "vmas/balance", "decpg")]["mean"] == pytest.approx(1024.0)
    distance = rows[("decpg_agents_actor_consensus_distance", "vmas/balance", "decpg")]
    last = np.array([0.1, 0.2, 0.3])  # the value at the last step of seeds 0, 1, 2
    assert distance["n_seeds"] == 3 and distance["step"] == 2
    assert distance["mean"] == pytest.approx(last.mean()) and distance["std"] == pytest.approx(last.std(ddof=1))
    gap = rows[("eval_generalization_gap", "vmas/navigation", "decpg")]
    assert gap["mean"] == pytest.approx(np.mean([0.0, -0.2, -0.4]))


# -------------------------------------------------------------- bad input
def test_one_seed_marks_confidence_intervals_unavailable(tmp_path):
    out = tmp_path / "out"
    report = make_report([suite(tmp_path / "runs", seeds=(0,))], out=out, reps=REPS)
    for row in report.aggregates:
        assert row["n_runs"] == 1 and row["iqm_ci_low"] is None and row["iqm_ci_high"] is None
    assert all(r["ci_low"] is None for r in report.improvement)
    assert all(r["ci_low"] is None and r["std"] is None for r in report.tasks)
    assert all(c.ci_low is None for t in report.scores.tasks.values() for c in t.curves.values())
    assert all(v is None for v in report.profile.ci_low.values())
    text = (out / "report.md").read_text()
    assert "CI n/a: 1 run per task" in text and "one seed only" in text
    aggregate = read_csv(out / "aggregate_scores.csv")
    assert aggregate[0]["iqm_ci_low"] == "" and aggregate[0]["iqm"] != ""


def test_different_frame_grids_use_the_last_common_frame(tmp_path):
    folder = suite(tmp_path, grids={"mappo": [200, 400, 600]})  # decpg: 100 ... 500
    report = build_report([folder], reps=REPS, last_k=1)
    for task in report.scores.tasks.values():
        assert task.score_frame == 400
        np.testing.assert_allclose(task.raw["decpg"], [true_return(task.task_id[5:], "decpg", s, 400) for s in OFFSET])
        np.testing.assert_array_equal(task.curves["mappo"].frames, [200, 400, 600])
    assert any("scores are taken at 400 frames" in note for note in report.notes)


def test_frame_grids_without_common_frame_are_reported(tmp_path):
    folder = suite(tmp_path, grids={"mappo": [150, 350]})
    out = tmp_path / "out"
    report = make_report([folder], out=out, reps=REPS)
    for task in report.scores.tasks.values():
        assert task.score_frame is None
        np.testing.assert_array_equal(task.frames["mappo"], [350, 350, 350])
        np.testing.assert_array_equal(task.frames["decpg"], [500, 500, 500])
    assert "share no evaluation frame" in (out / "report.md").read_text()
    # seeds of one algorithm on different grids: curve on their common frames
    other = tmp_path / "other"
    write_run(other / "a", "balance", "mappo", 0, [100, 200, 300])
    write_run(other / "b", "balance", "mappo", 1, [200, 300, 400])
    report = build_report([other], reps=REPS)
    np.testing.assert_array_equal(report.scores.tasks["vmas/balance"].curves["mappo"].frames, [200, 300])


def test_bad_input_raises_clear_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ReportInputError, match="no JSON results"):
        load_runs([empty])
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"lr": 0.1, "layers": [1, 2]}))
    (foreign / "broken.json").write_text("{not json")
    with pytest.raises(ReportInputError, match="none in BenchMARL's results format"):
        load_runs([foreign])
    with pytest.raises(ReportInputError, match="not found"):
        load_runs([tmp_path / "missing"])
    runs = load_runs([suite(tmp_path / "ok", seeds=(0,))]).runs
    with pytest.raises(ReportInputError, match="metrics found: agents_return, return"):
        collect_scores(runs, "win_rate")


def test_missing_metric_and_missing_task_are_noted(tmp_path):
    suite(tmp_path, tasks={"balance": 0.0})
    write_run(tmp_path / "extra", "navigation", "decpg", 0, [100, 200])  # mappo never ran navigation
    scores = collect_scores(load_runs([tmp_path]).runs)
    matrices = score_matrices(scores)
    assert matrices.tasks == ["vmas/balance"]
    assert any("left out of the aggregates: vmas/navigation" in note for note in matrices.notes)


# -------------------------------------------------------------------- files, CLI
def test_report_files_and_cli(tmp_path, capsys):
    folder = suite(tmp_path / "runs")
    out = tmp_path / "report"
    assert main(["report", str(folder), "--out", str(out), "--reps", str(REPS), "--last-k", "1"]) == 0
    printed = capsys.readouterr().out
    assert "12 run(s), 2 task(s), 2 algorithm(s)" in printed
    for name in ("report.md", "runs.csv", "task_scores.csv", "aggregate_scores.csv", "curves.csv",
                 "probability_of_improvement.csv", "performance_profiles.csv", "decentralised_metrics.csv",
                 "aggregate_scores.png", "probability_of_improvement.png", "performance_profiles.png",
                 "curves_vmas_balance.png", "curves_vmas_navigation.png", "communication.csv", "communication.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "aggregate_scores.png").read_bytes()[:4] == b"\x89PNG"
    text = (out / "report.md").read_text()
    for embedded in ("aggregate_scores.png", "probability_of_improvement.png", "performance_profiles.png",
                     "curves_vmas_balance.png"):
        assert f"]({embedded})" in text
    assert "| decpg | mappo | 1.000 [" in text and "decpg_agents_actor_consensus_distance" in text
    aggregate = {row["algorithm"]: row for row in read_csv(out / "aggregate_scores.csv")}
    assert float(aggregate["decpg"]["iqm"]) == pytest.approx(0.9675, rel=1e-6)
    assert len(read_csv(out / "runs.csv")) == 12
    assert len(read_csv(out / "curves.csv")) == 2 * 2 * 5
    # group metric
    assert main(["report", str(folder), "--out", str(tmp_path / "g"), "--metric", "agents_return",
                 "--reps", "50"]) == 0


def test_cli_bad_input_exits_2_without_traceback(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 2
    assert "no JSON results" in capsys.readouterr().err
    assert main(["report", str(suite(tmp_path / "r", seeds=(0,))), "--metric", "win_rate",
                 "--out", str(tmp_path / "o")]) == 2
    assert "metric 'win_rate' is in none" in capsys.readouterr().err
    assert main(["report"]) == 2  # argparse: folder required
    assert main(["report", "--help"]) == 0 and "--metric" in capsys.readouterr().out
    result = subprocess.run([sys.executable, "-m", "benchmarl_decentral.cli", "report", str(empty)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "no JSON results" in result.stderr
    assert "Traceback" not in result.stderr


# -------------------------------------------------------------- communication
def test_communication_table_plot_and_links(tmp_path):
    """Bytes per agent and iteration against the final score, per run; per link where logged."""
    runs = tmp_path / "runs"
    per_seed = {0: [(1, 100.0), (2, 300.0)], 1: [(1, 200.0), (2, 200.0), (3, 500.0)]}  # means 200, 300
    for seed in (0, 1):
        write_run(runs / f"k2_{seed}", "balance", "decpg", seed, [100, 200], scalars={
            "comm_train_bytes_per_agent": per_seed[seed],
            "comm_train_network_bytes_per_agent": [(step, v / 2) for step, v in per_seed[seed]],
            "comm_env_bytes_per_agent": [(1, 16.0)] * (seed + 1),  # one step repeated: one iteration
            "comm_agents_link_0_to_1_train_bytes": [(1, 60.0), (2, 90.0)],
            "comm_agents_link_1_to_0_train_bytes": [(2, 30.0)],  # logged once (a visibility link): 0 the other times
            "comm_train_agents_loss_objective": [(1, 0.0)],  # not a comm scalar
        })
    write_run(runs / "mappo", "balance", "mappo", 0, [100, 200])  # no comm/ scalars: not in the table
    out = tmp_path / "report"
    report = make_report([runs], out=out, reps=REPS, reference=False, last_k=1)
    rows = {(r["algorithm"], r["seed"]): r for r in read_csv(out / "communication.csv")}
    assert sorted(rows) == [("decpg", "seed_0"), ("decpg", "seed_1")]
    expected = {"seed_0": (200.0, 100.0, 16.0, 2), "seed_1": (300.0, 150.0, 16.0, 3)}
    for seed, (train, network, env, iterations) in expected.items():
        row = rows[("decpg", seed)]
        assert float(row["train"]) == train and float(row["train_network"]) == network
        assert float(row["env"]) == env and float(row["total"]) == train + env
        assert int(row["iterations"]) == iterations
        assert float(row["score"]) == pytest.approx(true_return("balance", "decpg", int(seed[-1]), 200))
    links = {(r["seed"], r["sender"], r["receiver"]): r for r in read_csv(out / "communication_links.csv")}
    assert float(links[("seed_0", "0", "1")]["bytes_per_iteration"]) == 75.0  # (60 + 90) / 2 iterations
    assert float(links[("seed_1", "1", "0")]["bytes_per_iteration"]) == 10.0  # 30 / 3 iterations
    assert {r["group"] for r in links.values()} == {"agents"}
    assert (out / "communication.png").read_bytes()[:4] == b"\x89PNG"
    text = (out / "report.md").read_text()
    assert "## Communication" in text and "](communication.png)" in text
    assert "| vmas/balance | decpg | 2 | 250 ± 71 | 125 ± 35 | n/a | 16 ± 0 | 266 ± 71 |" in text  # no exec
    assert "| vmas/balance | decpg | agents | 0 -> 1 | 2 | 62 ± 18 |" in text  # 75 and 150 / 3 = 50
    assert len(report.communication) == 2 and len(report.links) == 4


def test_communication_exec_bytes_count_in_the_total(tmp_path):
    """dg_mappo's D-GAT messages while acting (comm/exec_bytes_per_agent): their own column, in the total."""
    runs = tmp_path / "runs"
    write_run(runs / "dg", "balance", "dgmappo", 0, [100, 200], metric_values=lambda frames: 1.0, scalars={
        "comm_train_bytes_per_agent": [(1, 100.0), (2, 300.0)],
        "comm_exec_bytes_per_agent": [(1, 40.0), (2, 60.0)],
    })
    out = tmp_path / "report"
    make_report([runs], out=out, reps=REPS, reference=False)
    (row,) = read_csv(out / "communication.csv")
    assert float(row["exec"]) == 50.0 and float(row["total"]) == 200.0 + 50.0 and row["env"] == ""
    assert "| vmas/balance | dgmappo | 1 | 200 | n/a | 50 | n/a | 250 |" in (out / "report.md").read_text()


def test_communication_section_without_comm_scalars(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs / "mappo", "balance", "mappo", 0, [100, 200])
    out = tmp_path / "report"
    make_report([runs], out=out, reps=REPS, reference=False)
    assert "No run logged `comm/` scalars" in (out / "report.md").read_text()
    assert not (out / "communication.csv").exists() and not (out / "communication.png").exists()


# -------------------------------------------------------------------- real runs
@pytest.mark.slow
def test_report_on_real_benchmarl_runs(tmp_path):
    from conftest import make_experiment

    runs = tmp_path / "runs"
    runs.mkdir()
    for algorithm in ("mappo", "decpg"):
        exp = make_experiment(runs, algorithm=algorithm, task_overrides={"n_agents": 3}, create_json=True,
                              loggers=["csv"], evaluation=True,
                              algorithm_overrides={"log_link_bytes": True} if algorithm == "decpg" else None)
        exp.run()
        exp.close()
    out = tmp_path / "report"
    assert main(["report", str(runs), "--out", str(out), "--reps", "100"]) == 0
    report_rows = read_csv(out / "runs.csv")
    assert sorted(r["algorithm"] for r in report_rows) == ["decpg", "mappo"]
    assert all(r["score"] != "" for r in report_rows)
    text = (out / "report.md").read_text()
    assert "one seed only" in text and "CI n/a" in text
    assert "eval_generalization_gap" in text and "decpg_agents_actor_consensus_distance" in text
    assert (out / "curves_vmas_balance.png").is_file()
    # communication: decpg's bytes per agent (mappo logs none), and per link: 3 agents, k=2, all 6 links
    (comm,) = read_csv(out / "communication.csv")
    assert comm["algorithm"] == "decpg" and float(comm["train"]) > 0 and float(comm["train_network"]) == 0.0
    links = read_csv(out / "communication_links.csv")
    assert sorted((int(r["sender"]), int(r["receiver"])) for r in links) == [
        (i, j) for i in range(3) for j in range(3) if i != j]
    assert sum(float(r["bytes_per_iteration"]) for r in links) / 3 == pytest.approx(float(comm["train"]))
    assert (out / "communication.png").is_file() and "### Per link" in text


# -------------------------------------------------------------- variants of one algorithm
def _write_variant_runs(root, settings_by_variant, seeds=(0, 1, 2)):
    """Runs of mappo under different ``algorithm.*`` settings, each with the .hydra/config.yaml hydra writes."""
    import dataclasses

    import yaml
    from benchmarl.algorithms import MappoConfig

    defaults = {f.name: getattr(MappoConfig.get_from_yaml(), f.name) for f in dataclasses.fields(MappoConfig)}
    for v, (variant, changes) in enumerate(settings_by_variant.items()):
        for seed in seeds:
            folder = write_run(root / f"{variant}{seed}", "balance", "mappo", seed, [100, 200, 300],
                               metric_values=lambda frames, v=v, seed=seed: 10.0 * v + seed + frames / 100)
            (folder / ".hydra").mkdir()
            config = {"algorithm": {**defaults, **changes}, "task": {}, "experiment": {}, "seed": seed}
            (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    return root


def test_runs_of_one_algorithm_with_different_settings_are_reported_apart(tmp_path):
    root = _write_variant_runs(tmp_path / "runs", {"default": {}, "ablation": {"clip_epsilon": 0.1},
                                                   "both": {"clip_epsilon": 0.1, "entropy_coef": 0.01}})
    loaded = load_runs([root])
    names = sorted({r.algorithm for r in loaded.runs})
    assert names == ["mappo", "mappo[clip_epsilon=0.1,entropy_coef=0.01]", "mappo[clip_epsilon=0.1]"]
    assert len(loaded.runs) == 9  # no seed dropped as a duplicate of another variant's
    assert not any("found twice" in note for note in loaded.notes)
    assert any("reported apart" in note and "mappo[clip_epsilon=0.1]" in note for note in loaded.notes)
    report = build_report([root], reps=REPS, last_k=1)
    task = report.scores.tasks["vmas/balance"]
    np.testing.assert_allclose(sorted(task.raw["mappo"]), [3.0, 4.0, 5.0])  # last evaluation: v*10 + seed + 3
    np.testing.assert_allclose(sorted(task.raw["mappo[clip_epsilon=0.1]"]), [13.0, 14.0, 15.0])


def test_a_setting_shared_by_every_run_keeps_the_plain_name(tmp_path):
    root = _write_variant_runs(tmp_path / "runs", {"sweep": {"entropy_coef": 0.0, "clip_epsilon": 0.3}})
    loaded = load_runs([root])
    assert {r.algorithm for r in loaded.runs} == {"mappo"} and len(loaded.runs) == 3
    assert not any("reported apart" in note for note in loaded.notes)
