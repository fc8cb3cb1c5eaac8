"""``benchmarl report``: from result folders to report.md + CSV tables + PNG plots."""

from __future__ import annotations

import csv
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from benchmarl_decentral.reporting import plots
import numpy as np

from benchmarl_decentral.reporting.loading import LoadResult, PathLike, ReportInputError, load_runs, seed_sort_key
from benchmarl_decentral.reporting import communication as _communication
from benchmarl_decentral.reporting import reevaluation as _reevaluation
from benchmarl_decentral.reporting.reevaluation import Reevaluation
from benchmarl_decentral.reporting.reference import Reference, ReferenceCache, TaskSetup, reference_results
from benchmarl_decentral.reporting.scores import (
    MIN_SCORE_EPISODES,
    MIN_SEEDS,
    continuous_actions,
    default_last_k,
    difference_ci,
    episodes_per_evaluation,
    reward_used,
    run_config,
    scored_on,
    training_return,
    verdict,
)
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
    normalise_to_reference,
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
    references: Dict[str, Dict[str, Reference]] = field(default_factory=dict)
    reference_cache: Optional[ReferenceCache] = None
    episodes_per_evaluation: int = 1
    rewards: Dict[str, Dict[str, dict]] = field(default_factory=dict)  # task -> algorithm -> trained/scored on
    runs_extra: Dict[tuple, dict] = field(default_factory=dict)  # run key -> {train_return, train_iterations}
    default_k: bool = True  # last_k chosen by the episode rule (not --last-k)
    reevaluation: Optional[Reevaluation] = None  # --reevaluate: checkpoints re-evaluated
    communication: List[dict] = field(default_factory=list)  # per run with comm/ scalars: bytes per agent, score
    links: List[dict] = field(default_factory=list)  # per run and link (algorithm.log_link_bytes)

    @property
    def markdown(self) -> Path:
        return self.files["report.md"]


def _run_setups(loaded: LoadResult, notes: List[str]):
    """Per run its config (None without .hydra/), and per task the setup its reference policies use."""
    configs = {run.key: run_config(run) for run in loaded.runs}
    setups: Dict[str, TaskSetup] = {}
    for run in loaded.runs:
        info = configs[run.key]
        if info is None or run.task_id in setups:
            continue
        config = info["config"]
        try:
            continuous = continuous_actions(info["task_name"], info["algorithm_name"], config)
        except Exception as error:  # noqa: BLE001 - unknown task/algorithm in this install: no reference rows
            notes.append(f"{run.task_id}: cannot rebuild the task '{info['task_name']}' in this install "
                         f"({error.__class__.__name__}: {error}); no reference policies.")
            setups[run.task_id] = None
            continue
        setups[run.task_id] = TaskSetup(info["task_name"], dict(config.get("task") or {}), continuous,
                                        str((config.get("experiment") or {}).get("sampling_device", "cpu")))
    missing = sorted({run.task_id for run in loaded.runs if configs[run.key] is None})
    if missing:
        notes.append(f"no run config (.hydra/config.yaml beside the run folder) for some runs of "
                     f"{', '.join(missing)}: the reward used is unknown for those and, where no run of the task "
                     "has one, no reference policy is evaluated.")
    return configs, {t: s for t, s in setups.items() if s is not None}


def _reward_table(loaded: LoadResult, configs, metric: str, notes: List[str]) -> Dict[str, Dict[str, dict]]:
    table: Dict[str, Dict[str, dict]] = {}
    for run in loaded.runs:
        info = configs.get(run.key)
        if info is None:
            continue
        config = info["config"]
        trained = reward_used(info["task_name"], info["algorithm_name"], config.get("task") or {},
                              config.get("algorithm") or {})
        scored = scored_on(metric, info["task_name"], config.get("task") or {})
        entry = table.setdefault(run.task_id, {}).setdefault(run.algorithm, {"trained_on": set(), "scored_on": set()})
        entry["trained_on"].add(trained)
        entry["scored_on"].add(scored)
    out: Dict[str, Dict[str, dict]] = {}
    for task_id, algs in table.items():
        out[task_id] = {alg: {k: "; ".join(sorted(v)) for k, v in entry.items()} for alg, entry in algs.items()}
        note = unequal_rewards(task_id, {alg: entry["trained_on"] for alg, entry in out[task_id].items()})
        if note:
            notes.append(note)
    return out


def unequal_rewards(task_id: str, trained_on: Dict[str, str]) -> Optional[str]:
    """The warning for a task whose algorithms trained on different rewards (None when all are equal)."""
    if len(set(trained_on.values())) <= 1:
        return None
    return (f"{task_id}: UNEQUAL REWARDS: the algorithms trained on different reward definitions ("
            + "; ".join(f"{alg}: {text}" for alg, text in sorted(trained_on.items()))
            + "). Give every algorithm the same reward (a shared-reward task option) for a fair comparison.")


def build_report(paths: Sequence[PathLike], metric: str = "return", reps: int = 2000,
                 seed: Optional[int] = 0, out: PathLike = "report", last_k: Optional[int] = None,
                 reference: bool = True, reference_cache: Optional[PathLike] = None,
                 evaluate_reference: bool = True, reevaluate=None, reevaluate_episodes: Optional[int] = None,
                 reevaluate_modes=None, reevaluation_cache: Optional[PathLike] = None,
                 evaluate_reevaluation: bool = True) -> Report:
    """Load and compute everything (no file written except the reference cache). Raises ReportInputError.

    ``last_k``: evaluations the final score averages (None: the fewest covering
    :data:`~benchmarl_decentral.reporting.scores.MIN_SCORE_EPISODES` episodes).
    ``reference``: evaluate (or read from ``reference_cache``, default
    ``<out>/reference.json``) the reference policies of every task;
    ``evaluate_reference=False`` uses the cache only.
    ``reevaluate``: checkpoints to re-evaluate (``"final,best"``, a sequence
    of ``final``/``best``, or None for none), ``reevaluate_episodes`` episodes
    per mode (default 100) in ``reevaluate_modes`` (``"greedy,sampled"``, the
    default); rows read from ``reevaluation_cache`` (default
    ``<out>/reevaluation.csv``) where present; ``evaluate_reevaluation=False``
    uses the cache only (:mod:`benchmarl_decentral.reporting.reevaluation`).
    """
    options = _reevaluation.parse_options(reevaluate, reevaluate_episodes, reevaluate_modes, reevaluation_cache,
                                          not evaluate_reevaluation)
    if options is not None and metric != "return":
        raise ReportInputError(f"--reevaluate re-evaluates BenchMARL's `return` (the mean over groups), so it "
                               f"needs --metric return, not '{metric}'; drop --metric or --reevaluate.")
    if reps < 1:
        raise ReportInputError(f"--reps must be a positive number of bootstrap replications, got {reps}.")
    if last_k is not None and last_k < 1:
        raise ReportInputError(f"--last-k must be at least 1 evaluation, got {last_k}.")
    loaded = load_runs(paths)
    per_evaluation = episodes_per_evaluation(loaded.runs, metric)
    k = last_k or default_last_k(per_evaluation)
    scores = collect_scores(loaded.runs, metric, k)
    notes = loaded.notes + scores.notes
    configs, setups = _run_setups(loaded, notes)
    rewards = _reward_table(loaded, configs, metric, notes)

    references: Dict[str, Dict[str, Reference]] = {}
    cache = None
    if reference and metric != "return":
        notes.append(f"reference policies are evaluated on BenchMARL's `return` only, not on '{metric}': none shown.")
    elif reference and setups:
        cache = ReferenceCache.load(Path(reference_cache) if reference_cache else Path(out) / "reference.json")
        seeds = {t: sorted({r.seed for r in loaded.runs if r.task_id == t}, key=seed_sort_key) for t in setups}
        episodes = {t: k * per_evaluation for t in setups}
        references, ref_notes = reference_results(setups, seeds, episodes, cache, evaluate_reference, reps, seed)
        notes += ref_notes
    for task_id, task in scores.tasks.items():
        refs = references.get(task_id, {})
        if "random" in refs:
            normalise_to_reference(task, refs["random"].mean, [r.mean for r in refs.values()], notes)

    matrices = score_matrices(scores)
    notes += matrices.notes
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
    few = sorted({f"{alg} ({len(s)} on {t})" for t, task in scores.tasks.items() for alg, s in task.seeds.items()
                  if len(s) < MIN_SEEDS})
    if few:
        notes.append(f"FEW SEEDS: fewer than {MIN_SEEDS} seeds for {', '.join(few)}. Bootstrap intervals over so few "
                     "seeds mean little (with 2 seeds a probability of improvement of 1.000 [1.000, 1.000] only says "
                     "that both runs of one beat both of the other); no learning verdict is given. Run more seeds.")

    runs_extra: Dict[tuple, dict] = {}
    for task_id, task in scores.tasks.items():
        for alg, seed_names in task.seeds.items():
            for i, s in enumerate(seed_names):
                run = next(r for r in loaded.runs if r.key[:3] == (task_id.split("/")[0], task_id.split("/", 1)[1], alg)
                           and r.seed == s)
                start = int(task.window_from[alg][i])
                earlier = [f for f in run.curve(metric)[0].tolist() if f < start]
                value, n = training_return(run, earlier[-1] if earlier else 0, int(task.frames[alg][i]))
                runs_extra[run.key] = {"train_return": value, "train_iterations": n}
    table = task_table(scores, reps, seed)
    for row in table:
        task = scores.tasks[row["task"]]
        env, name = row["task"].split("/", 1)
        train = [runs_extra[(env, name, row["algorithm"], s)]["train_return"] for s in task.seeds[row["algorithm"]]]
        train = [v for v in train if v is not None]
        row["score_rule"] = f"mean of the last {k} evaluation(s)"
        row["train_return_mean"] = float(np.mean(train)) if train else None
        random_ref = references.get(row["task"], {}).get("random")
        if random_ref is not None:
            diff, low, high = difference_ci(task.raw[row["algorithm"]], random_ref.episodes(), reps, seed)
        else:
            diff = low = high = None
        row.update({"minus_random": diff, "minus_random_ci_low": low, "minus_random_ci_high": high,
                    "above_random_95": verdict(row["n_seeds"], low)})
        reward = rewards.get(row["task"], {}).get(row["algorithm"], {})
        row["trained_on"] = reward.get("trained_on")
        row["scored_on"] = reward.get("scored_on")
    extras = extra_metrics(loaded.runs)
    reevaluated = None
    if options is not None:
        reevaluated = _reevaluation.reevaluate(loaded.runs, metric, options, Path(out))
        notes += reevaluated.notes
    communication, links = _communication_rows(loaded, scores)
    return Report(Path(out), loaded, scores, matrices, aggregates, improvement, profile, table, extras, notes,
                  references=references, reference_cache=cache, episodes_per_evaluation=per_evaluation,
                  rewards=rewards, runs_extra=runs_extra, default_k=last_k is None, reevaluation=reevaluated,
                  communication=communication, links=links)


def _run_score(scores: ScoreSet, run) -> Optional[float]:
    """A run's final score (None when it is not scored: no common metric)."""
    task = scores.tasks.get(run.task_id)
    if task is None or run.algorithm not in task.seeds or run.seed not in task.seeds[run.algorithm]:
        return None
    return float(task.raw[run.algorithm][task.seeds[run.algorithm].index(run.seed)])


def _communication_rows(loaded: LoadResult, scores: ScoreSet):
    """Per run that logged ``comm/`` scalars: bytes per agent and iteration, and its score; per link too."""
    runs, links = [], []
    for run in loaded.runs:
        row = _communication.run_communication(run)
        if row is None:
            continue
        ident = {"task": run.task_id, "algorithm": run.algorithm, "seed": run.seed}
        runs.append({**ident, **row, "score": _run_score(scores, run)})
        links += [{**ident, **link} for link in _communication.link_rows(run)]
    return runs, links


def make_report(paths: Sequence[PathLike], out: PathLike = "report", metric: str = "return", reps: int = 2000,
                seed: Optional[int] = 0, command: Optional[str] = None, last_k: Optional[int] = None,
                reference: bool = True, reference_cache: Optional[PathLike] = None,
                evaluate_reference: bool = True, reevaluate=None, reevaluate_episodes: Optional[int] = None,
                reevaluate_modes=None, reevaluation_cache: Optional[PathLike] = None,
                evaluate_reevaluation: bool = True) -> Report:
    """Build the report and write report.md, the CSV tables, the PNG plots and reference.json into ``out``.

    With ``reevaluate`` (see :func:`build_report`), also reevaluation.csv (and
    the ``reevaluation_cache`` file when rows were computed).
    """
    report = build_report(paths, metric, reps, seed, out, last_k, reference, reference_cache, evaluate_reference,
                          reevaluate, reevaluate_episodes, reevaluate_modes, reevaluation_cache,
                          evaluate_reevaluation)
    out = report.out
    out.mkdir(parents=True, exist_ok=True)
    files = report.files
    if report.reference_cache is not None and report.references:
        if reference_cache is None or report.reference_cache.evaluated:
            files["reference.json"] = report.reference_cache.save()
    files["runs.csv"] = _write_csv(out / "runs.csv", _run_rows(report))
    files["task_scores.csv"] = _write_csv(out / "task_scores.csv", report.tasks)
    if report.references:
        files["reference_scores.csv"] = _write_csv(out / "reference_scores.csv", _reference_rows(report))
    files["curves.csv"] = _write_csv(out / "curves.csv", _curve_rows(report.scores))
    for task_id, task in report.scores.tasks.items():
        name = f"curves_{_slug(task_id)}.png"
        files[name] = plots.plot_task_curves(task, report.scores.metric, report.scores.algorithms, out / name,
                                             report.references.get(task_id, {}))
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
    if report.communication:
        files["communication.csv"] = _write_csv(out / "communication.csv", report.communication)
        if any(r["score"] is not None for r in report.communication):
            files["communication.png"] = plots.plot_communication(report.communication, report.scores.metric,
                                                                  out / "communication.png")
    if report.links:
        files["communication_links.csv"] = _write_csv(out / "communication_links.csv", report.links)
    if report.reevaluation is not None:
        files.update(_reevaluation.save(report.reevaluation, out))
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
            "train_return": report.runs_extra.get(run.key, {}).get("train_return"),
            "train_iterations": report.runs_extra.get(run.key, {}).get("train_iterations"),
            "csv_scalars": str(run.scalars_dir) if run.scalars_dir else None, "source": str(run.source),
        })
    return rows


def _reference_rows(report: Report) -> List[dict]:
    rows = []
    for task_id, refs in report.references.items():
        task = report.scores.tasks.get(task_id)
        for policy, ref in refs.items():
            normalised = None
            if task is not None and task.norm_max > task.norm_min:
                normalised = float((ref.mean - task.norm_min) / (task.norm_max - task.norm_min))
            rows.append({"task": task_id, "policy": policy, "description": ref.description,
                         "seeds": len(ref.returns), "episodes": ref.n_episodes, "mean": ref.mean,
                         "std": float(ref.episodes().std(ddof=1)) if ref.n_episodes >= 2 else None,
                         "ci_low": ref.ci_low, "ci_high": ref.ci_high, "normalised_mean": normalised})
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


def _reevaluation_markdown(report: Report) -> List[str]:
    result = report.reevaluation
    options = result.options
    md = ["", "## Re-evaluation of checkpoints", ""]
    md.append(
        f"Checkpoints of each run (`<run>/checkpoints/checkpoint_<frames>.pt`) reloaded and played for "
        f"{options.episodes} episodes per mode on the run's own test env (its task config), seeded with the run's "
        "seed (the same episodes for every checkpoint and mode of a run); the score is BenchMARL's evaluation "
        "`return`. **final**: the checkpoint with the most frames. **best**: the checkpoint at the logged evaluation "
        "with the highest `return` (ties: the earliest). `best` is optimistic: it is chosen on the same noisy "
        "evaluations, so its return is biased upwards by the choice (paper 003's protocol re-evaluates the best "
        "checkpoint and shares this bias); `final` is not. **greedy**: deterministic actions (the mode or mean of "
        "each agent's action distribution); **sampled**: actions drawn from the policy's distribution. For a "
        "stochastic policy they differ (a mixed strategy can score higher sampled than greedy, or lower). "
        "Mean ± std over seeds of each run's mean return; per run, the episodes' std is in "
        f"`{_reevaluation.FILE_NAME}`.")
    md.append("")
    rows = []
    for r in result.summary():
        value = (f"{_num(r['mean'])} ± {_num(r['std'])}" if r["std"] is not None
                 else f"{_num(r['mean'])} (1 seed)")
        rows.append([r["task"], r["algorithm"], r["which"], r["mode"], r["n_seeds"],
                     "/".join(map(str, r["episodes"])), value, _reevaluation.frames_text(r["frames"])])
    if rows:
        md.append(_table(["task", "algorithm", "checkpoint", "actions", "seeds", "episodes per seed",
                          "return mean ± std over seeds", "checkpoint frames"], rows))
    else:
        md.append("No run was re-evaluated (see the notes).")
    return md


#: Link rows shown in report.md; all of them are in communication_links.csv.
MAX_LINK_ROWS = 40


def _communication_markdown(report: Report) -> List[str]:
    md = ["", "## Communication", ""]
    if not report.communication:
        md.append("No run logged `comm/` scalars (decpg, dg_mappo and matrpo log them; they need the csv logger, "
                  "`experiment.loggers=[csv]`).")
        return md
    md.append("Bytes each agent sent per iteration (the mean over a run's logged iterations, then mean ± std over "
              "seeds): **train** (`comm/train_bytes_per_agent`), the consensus traffic: decpg's mixing (one parameter "
              "vector per neighbour that reads it and step), matrpo's ADMM (one per-sample log-ratio value per link "
              "end and z/y update); **network**, the part of it that crossed a process boundary "
              "(0 in one process); dg_mappo's train also holds its D-GAT messages of training and their gradients; "
              "**exec**, dg_mappo's D-GAT messages while acting (`comm/exec_bytes_per_agent`); "
              "**env**, the environment interface of a distributed run "
              "(`comm/env_bytes_per_agent`); **total** = train + exec + env. A distributed run logs rank 0's agents. "
              "Runs that logged none (algorithms without a consensus step) are not shown.")
    md.append("")
    values = ("train", "train_network", "exec", "env", "total", "score")
    summary = _communication.summarise(report.communication, ("task", "algorithm"), values)

    def cell(row, name, digits=0):
        if row[name] is None:
            return NA
        std = row[f"{name}_std"]
        return f"{row[name]:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")

    md.append(_table(["task", "algorithm", "seeds", "train", "network", "exec", "env", "total",
                      f"final score (`{report.scores.metric}`)"],
                     [[r["task"], r["algorithm"], r["n_seeds"], cell(r, "train"), cell(r, "train_network"),
                       cell(r, "exec"), cell(r, "env"), cell(r, "total"), cell(r, "score", 3)] for r in summary]))
    if "communication.png" in report.files:
        md += ["", "Total bytes per agent and iteration against the final score, one point per run:", "",
               "![communication against return](communication.png)"]
    md += ["", "### Per link", ""]
    if report.links:
        links = _communication.summarise(report.links, ("task", "algorithm", "group", "sender", "receiver"),
                                         ("bytes_per_iteration",))
        md.append("Bytes a link `i -> j` (agent i's parameter vector read by agent j) carried per iteration, "
                  "training (mixing) traffic, mean ± std over seeds (runs with `algorithm.log_link_bytes=true`; a "
                  "distributed run logs the links of rank 0's agents).")
        md.append("")
        md.append(_table(["task", "algorithm", "group", "link", "seeds", "bytes per iteration"],
                         [[r["task"], r["algorithm"], r["group"], f"{r['sender']} -> {r['receiver']}", r["n_seeds"],
                           cell(r, "bytes_per_iteration")] for r in links[:MAX_LINK_ROWS]]))
        if len(links) > MAX_LINK_ROWS:
            md += ["", f"The first {MAX_LINK_ROWS} of {len(links)} links; all in `communication_links.csv`."]
    else:
        md.append("No run logged bytes per link (`algorithm.log_link_bytes=true` in decpg).")
    return md


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
    md.append("")
    k, per_eval = scores.last_k, report.episodes_per_evaluation
    md.append(f"**Final score** of a run: the mean `{metric}` over its last {k} evaluation(s) up to the scored frame "
              f"({k} x {per_eval} = {k * per_eval} episodes per run; "
              + (f"the default covers at least {MIN_SCORE_EPISODES} episodes" if report.default_k
                 else "set by --last-k")
              + "). The training return (mean collection return of the iterations in the same window, stochastic "
              "policy, training reward) is shown beside it.")
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
            f"Normalised final scores (per task: random policy = 0 and best observed = 1 where the random "
            "reference is available, otherwise min and max over every evaluation of every run), "
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
    md.append(f"Final score (`{metric}`, mean of the last {scores.last_k} evaluation(s)): mean ± std over seeds, "
              f"{ci} bootstrap CI of the mean; the training return of the same window; the normalised mean; "
              f"**above random**: yes when the {ci} bootstrap CI of (final score - random policy's return) is above 0 "
              f"(needs {MIN_SEEDS}+ seeds). Reference policies (in italics) are evaluated on the same environment, "
              f"with {scores.last_k * report.episodes_per_evaluation} episodes per seed of the task; their CI is over "
              "episodes.")
    md.append("")
    rows = []
    for task_id in scores.tasks:
        for r in [r for r in report.tasks if r["task"] == task_id]:
            rows.append([r["task"], r["algorithm"], r["n_seeds"], r["frames"],
                         f"{_num(r['mean'])} ± {_num(r['std'])}" if r["std"] is not None
                         else f"{_num(r['mean'])} (1 seed)",
                         f"[{_num(r['ci_low'])}, {_num(r['ci_high'])}]" if r["ci_low"] is not None
                         else f"{NA} (1 seed)",
                         _num(r["train_return_mean"]), _num(r["normalised_mean"]), r["above_random_95"],
                         r["trained_on"] or "unknown (no run config)"])
        task = scores.tasks[task_id]
        for policy, ref in report.references.get(task_id, {}).items():
            normalised = ((ref.mean - task.norm_min) / (task.norm_max - task.norm_min)
                          if task.norm_max > task.norm_min else None)
            spread = float(ref.episodes().std(ddof=1)) if ref.n_episodes > 1 else None
            rows.append([task_id, f"*{policy}* (reference)", f"{len(ref.returns)} ({ref.n_episodes} episodes)", "",
                         f"{_num(ref.mean)} ± {_num(spread)}",
                         f"[{_num(ref.ci_low)}, {_num(ref.ci_high)}]" if ref.ci_low is not None else NA, "",
                         _num(normalised), "", ref.description])
    md.append(_table(["task", "algorithm / policy", "seeds", "scored at (frames)", "final score mean ± std",
                      f"{ci} CI", "training return", "normalised", "above random (95%)", "trained on"], rows))
    scored = sorted({(t, v["scored_on"]) for t, algs in report.rewards.items() for v in algs.values()})
    if scored:
        md.append("")
        md += [f"- Scored on ({t}): {text}." for t, text in scored]
    md.append("")
    md.append("Normalisation per task: " + "; ".join(f"{t}: {task.norm_rule} ([{_num(task.norm_min)}, "
                                                     f"{_num(task.norm_max)}])" for t, task in scores.tasks.items())
              + ".")

    if report.reevaluation is not None:
        md += _reevaluation_markdown(report)

    md += ["", "## Sample-efficiency curves", ""]
    md.append(f"Mean `{metric}` over seeds vs frames, {ci} bootstrap CI over seeds (no band with one seed); the "
              "dotted line marks the scored frame; reference policies are horizontal dashed lines with their CI "
              "band.")
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

    md += _communication_markdown(report)

    md += ["", "## Files", ""]
    md += [f"- `{name}`" for name in sorted(report.files) if name != "report.md"]
    return "\n".join(md) + "\n"
