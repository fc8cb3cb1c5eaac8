"""``benchmarl report``: from result folders to report.md + CSV tables + PNG plots."""

from __future__ import annotations

import csv
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from benchmarl_decentral.reporting import plots
from benchmarl_decentral.reporting.loading import LoadResult, PathLike, ReportInputError, load_runs
from benchmarl_decentral.reporting.stats import (
    AGGREGATE_TITLES,
    AGGREGATES,
    CONFIDENCE,
    Profile,
    ScoreMatrices,
    ScoreSet,
    aggregate_estimates,
    collect_scores,
    curve_intervals,
    extra_metrics,
    performance_profiles,
    probability_of_improvement,
    score_matrices,
    task_table,
)

NA = "n/a"


@dataclass
class Report:
    out: Path
    loaded: LoadResult
    scores: ScoreSet
    matrices: ScoreMatrices
    aggregates: List[dict]
    improvement: List[dict]
    profile: Optional[Profile]
    tasks: List[dict]
    extras: List[dict]
    notes: List[str]
    files: Dict[str, Path] = field(default_factory=dict)

    @property
    def markdown(self) -> Path:
        return self.files["report.md"]


def build_report(paths: Sequence[PathLike], metric: str = "return", reps: int = 2000,
                 seed: Optional[int] = 0, out: PathLike = "report") -> Report:
    """Load and compute everything (no file written). Raises ReportInputError on bad input."""
    if reps < 1:
        raise ReportInputError(f"--reps must be a positive number of bootstrap replications, got {reps}.")
    loaded = load_runs(paths)
    scores = collect_scores(loaded.runs, metric)
    matrices = score_matrices(scores)
    notes = loaded.notes + scores.notes + matrices.notes
    curve_intervals(scores, reps, seed)
    aggregates = aggregate_estimates(matrices.scores, reps, seed) if matrices.tasks else []
    improvement: List[dict] = []
    profile = None
    if not matrices.tasks:
        notes.append("no task was run by every algorithm: no aggregate scores, probability of improvement "
                     "or performance profiles (see the per-task tables).")
    else:
        profile = performance_profiles(matrices.scores, reps=reps, seed=seed)
        if len(matrices.scores) >= 2:
            improvement = probability_of_improvement(matrices.scores, reps, seed)
        else:
            notes.append("one algorithm only: no probability of improvement.")
    extras = extra_metrics(loaded.runs)
    return Report(Path(out), loaded, scores, matrices, aggregates, improvement, profile,
                  task_table(scores, reps, seed), extras, notes)


def make_report(paths: Sequence[PathLike], out: PathLike = "report", metric: str = "return", reps: int = 2000,
                seed: Optional[int] = 0, command: Optional[str] = None) -> Report:
    """Build the report and write report.md, the CSV tables and the PNG plots into ``out``."""
    report = build_report(paths, metric, reps, seed, out)
    out = report.out
    out.mkdir(parents=True, exist_ok=True)
    files = report.files
    files["runs.csv"] = _write_csv(out / "runs.csv", _run_rows(report))
    files["task_scores.csv"] = _write_csv(out / "task_scores.csv", report.tasks)
    files["curves.csv"] = _write_csv(out / "curves.csv", _curve_rows(report.scores))
    for task_id, task in report.scores.tasks.items():
        name = f"curves_{_slug(task_id)}.png"
        files[name] = plots.plot_task_curves(task, report.scores.metric, report.scores.algorithms, out / name)
    if report.aggregates:
        files["aggregate_scores.csv"] = _write_csv(out / "aggregate_scores.csv", report.aggregates)
        files["aggregate_scores.png"] = plots.plot_aggregates(report.aggregates, out / "aggregate_scores.png")
    if report.improvement:
        files["probability_of_improvement.csv"] = _write_csv(out / "probability_of_improvement.csv",
                                                             report.improvement)
        files["probability_of_improvement.png"] = plots.plot_probability_of_improvement(
            report.improvement, out / "probability_of_improvement.png")
    if report.profile is not None:
        files["performance_profiles.csv"] = _write_csv(out / "performance_profiles.csv",
                                                       _profile_rows(report.profile))
        files["performance_profiles.png"] = plots.plot_performance_profiles(report.profile,
                                                                            out / "performance_profiles.png")
    if report.extras:
        files["decentralised_metrics.csv"] = _write_csv(out / "decentralised_metrics.csv", report.extras)
    path = out / "report.md"
    path.write_text(_markdown(report, paths, reps, command))
    files["report.md"] = path
    return report


# ----------------------------------------------------------------- tables
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _write_csv(path: Path, rows: List[dict]) -> Path:
    columns: List[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in columns])
    return path


def _run_rows(report: Report) -> List[dict]:
    rows = []
    for run in report.loaded.runs:
        frames, values = run.curve(report.scores.metric)
        task = report.scores.tasks.get(run.task_id)
        score = normalised = at = None
        if task is not None and run.algorithm in task.seeds and run.seed in task.seeds[run.algorithm]:
            i = task.seeds[run.algorithm].index(run.seed)
            score = float(task.raw[run.algorithm][i])
            normalised = float(task.normalised[run.algorithm][i])
            at = int(task.frames[run.algorithm][i])
        rows.append({
            "env": run.env, "task": run.task, "algorithm": run.algorithm, "seed": run.seed,
            "evaluations": int(frames.size), "last_frames": int(frames[-1]) if frames.size else None,
            "score_frames": at, "score": score, "normalised_score": normalised,
            "csv_scalars": str(run.scalars_dir) if run.scalars_dir else None, "source": str(run.source),
        })
    return rows


def _curve_rows(scores: ScoreSet) -> List[dict]:
    rows = []
    for task_id, task in scores.tasks.items():
        for alg, curve in sorted(task.curves.items()):
            for j, frame in enumerate(curve.frames.tolist()):
                rows.append({
                    "task": task_id, "algorithm": alg, "frames": frame, "n_seeds": len(curve.seeds),
                    "mean": float(curve.mean[j]),
                    "ci_low": None if curve.ci_low is None else float(curve.ci_low[j]),
                    "ci_high": None if curve.ci_high is None else float(curve.ci_high[j]),
                })
    return rows


def _profile_rows(profile: Profile) -> List[dict]:
    rows = []
    for alg, values in sorted(profile.values.items()):
        low, high = profile.ci_low[alg], profile.ci_high[alg]
        for j, tau in enumerate(profile.taus.tolist()):
            rows.append({"algorithm": alg, "tau": tau, "fraction_above": float(values[j]),
                         "ci_low": None if low is None else float(low[j]),
                         "ci_high": None if high is None else float(high[j])})
    return rows


# --------------------------------------------------------------- markdown
def _num(value, digits: int = 3) -> str:
    if value is None:
        return NA
    return f"{value:.{digits}f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3g}"


def _with_ci(value, low, high, why: str = "1 seed", digits: int = 3) -> str:
    if low is None:
        return f"{_num(value, digits)} (CI {NA}: {why})"
    return f"{_num(value, digits)} [{_num(low, digits)}, {_num(high, digits)}]"


def _table(header: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _versions() -> str:
    from importlib import metadata

    parts = []
    for name in ("benchmarl-decentral", "benchmarl", "rliable", "numpy"):
        try:
            parts.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(parts) + f", Python {platform.python_version()}"


def _markdown(report: Report, paths, reps: int, command: Optional[str]) -> str:
    scores, metric = report.scores, report.scores.metric
    ci = f"{int(CONFIDENCE * 100)}%"
    md: List[str] = ["# BenchMARL report", ""]
    md.append(f"Metric `{metric}` (BenchMARL's evaluation JSON, mean over evaluation episodes), "
              f"{len(report.loaded.runs)} run(s) from {len(report.loaded.json_files)} JSON file(s) in "
              + ", ".join(f"`{p}`" for p in paths) + ".")
    if command:
        md.append(f"Command: `{command}`.")
    md.append(f"Statistics with rliable; {reps} bootstrap replications; {_versions()}.")
    md += ["", "## Runs", ""]
    rows = []
    for task_id, task in scores.tasks.items():
        for alg in sorted(task.seeds):
            curve = task.curves[alg]
            last = sorted({int(f[-1]) for _, f, _ in curve.per_run})
            rows.append([task_id, alg, len(task.seeds[alg]), ", ".join(s.replace("seed_", "") for s in task.seeds[alg]),
                         "/".join(map(str, last)),
                         task.score_frame if task.score_frame is not None else "each run's last"])
    md.append(_table(["task", "algorithm", "runs", "seeds", "last evaluation (frames)", "scored at (frames)"], rows))
    md += ["", "## Notes", ""]
    md += [f"- {note}" for note in report.notes] or ["- none: every run evaluated at the same frames, several seeds."]

    md += ["", "## Aggregate scores", ""]
    if report.aggregates:
        md.append(
            f"Min-max normalised final scores (per task, min and max over every evaluation of every run), "
            f"aggregated over {len(report.matrices.tasks)} task(s) ({', '.join(report.matrices.tasks)}) and the runs; "
            f"{ci} stratified bootstrap confidence intervals in brackets. Higher is better, except the optimality "
            "gap (1 - mean of min(score, 1))."
        )
        md.append("")
        header = ["algorithm", "runs x tasks"] + [AGGREGATE_TITLES[a] for a in AGGREGATES]
        rows = []
        for row in report.aggregates:
            why = "1 run per task"
            rows.append([row["algorithm"], f"{row['n_runs']} x {row['n_tasks']}"]
                        + [_with_ci(row[a], row[f"{a}_ci_low"], row[f"{a}_ci_high"], why) for a in AGGREGATES])
        md += [_table(header, rows), "", "![aggregate scores](aggregate_scores.png)"]
    else:
        md.append("Not available (see the notes).")

    md += ["", "## Probability of improvement", ""]
    if report.improvement:
        md.append(f"P(X > Y): probability that a run of X beats a run of Y on a task, averaged over tasks "
                  f"(Mann-Whitney U / (n_x n_y)); {ci} bootstrap CI. Each pair once, oriented so that P >= 0.5; "
                  "the CSV has both orders.")
        md.append("")
        oriented = [r for r in report.improvement if r["probability"] > 0.5
                    or (r["probability"] == 0.5 and r["x"] < r["y"])]
        oriented.sort(key=lambda r: -r["probability"])
        md.append(_table(["X", "Y", "P(X > Y)"],
                         [[r["x"], r["y"], _with_ci(r["probability"], r["ci_low"], r["ci_high"], "1 seed")]
                          for r in oriented]))
        md += ["", "![probability of improvement](probability_of_improvement.png)"]
    else:
        md.append("Not available (see the notes).")

    md += ["", "## Performance profiles", ""]
    if report.profile is not None:
        md.append(f"Fraction of runs (all aggregated tasks) whose normalised score exceeds tau, with {ci} "
                  "bootstrap bands.")
        md += ["", "![performance profiles](performance_profiles.png)"]
    else:
        md.append("Not available (see the notes).")

    md += ["", "## Final scores per task", ""]
    md.append(f"Raw `{metric}` at the scored frame: mean ± std over seeds, {ci} bootstrap CI of the mean, and the "
              "normalised mean.")
    md.append("")
    md.append(_table(
        ["task", "algorithm", "seeds", "frames", "mean ± std", f"{ci} CI", "normalised"],
        [[r["task"], r["algorithm"], r["n_seeds"], r["frames"],
          f"{_num(r['mean'])} ± {_num(r['std'])}" if r["std"] is not None else f"{_num(r['mean'])} (1 seed)",
          f"[{_num(r['ci_low'])}, {_num(r['ci_high'])}]" if r["ci_low"] is not None else f"{NA} (1 seed)",
          _num(r["normalised_mean"])] for r in report.tasks]))

    md += ["", "## Sample-efficiency curves", ""]
    md.append(f"Mean `{metric}` over seeds vs frames, {ci} bootstrap CI over seeds (no band with one seed); the "
              "dotted line marks the scored frame.")
    for task_id in scores.tasks:
        md += ["", f"### {task_id}", "", f"![{task_id}](curves_{_slug(task_id)}.png)"]

    md += ["", "## Decentralised metrics", ""]
    if report.extras:
        md.append("Last logged value of each run (csv logger scalars), mean ± std over seeds.")
        md.append("")
        md.append(_table(
            ["metric", "task", "algorithm", "seeds", "final value", "logged at step"],
            [[f"`{r['metric']}`", r["task"], r["algorithm"], r["n_seeds"],
              f"{_num(r['mean'], 4)} ± {_num(r['std'], 4)}" if r["std"] is not None else f"{_num(r['mean'], 4)} (1 seed)",
              r["step"]] for r in report.extras]))
        md.append("")
        seen = {}
        for r in report.extras:
            seen.setdefault(r["metric"], r["description"])
        md += [f"- `{name}`: {text}" for name, text in seen.items()]
    else:
        md.append("None found: consensus distance, generalization gap and the other decentralised metrics come "
                  "from the csv logger (`experiment.loggers=[csv]`), in `<run>/<run>/scalars/`.")

    md += ["", "## Files", ""]
    md += [f"- `{name}`" for name in sorted(report.files) if name != "report.md"]
    return "\n".join(md) + "\n"
