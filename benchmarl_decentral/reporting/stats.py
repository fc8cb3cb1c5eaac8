"""Statistics of a report: alignment, normalisation and rliable's estimates.

Pure functions over :class:`~benchmarl_decentral.reporting.loading.Run` lists
(no plotting, no files), following Agarwal et al. 2021 ("Deep RL at the edge
of the statistical precipice") through rliable:

- the score of a run on a task is the mean over evaluation episodes of the
  metric at the *score frame*: the last evaluation that every run of the task
  has (so runs are compared at the same budget); when the runs of a task share
  no evaluation frame, each run's last evaluation is used and a note says so;
- scores are min-max normalised per task, with the min and max over every
  evaluation (episode mean) of every run on that task;
- aggregate IQM / mean / median / optimality gap (gamma = 1) of the normalised
  scores with stratified bootstrap CIs (``rliable.library.get_interval_estimates``),
  probability of improvement for every pair of algorithms, performance profiles
  (score distributions) and per-task curves with bootstrap CIs over seeds.

Confidence intervals need at least two runs: with one seed they are reported
as unavailable (None), never as a zero-width interval.
"""

from __future__ import annotations

import contextlib
import fnmatch
import itertools
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from benchmarl_decentral.reporting.scores import window_mean
from benchmarl_decentral.reporting.loading import (
    ReportInputError,
    Run,
    available_metrics,
    read_scalar,
    seed_sort_key,
)

AGGREGATES = ("iqm", "mean", "median", "optimality_gap")
AGGREGATE_TITLES = {"iqm": "IQM", "mean": "Mean", "median": "Median", "optimality_gap": "Optimality gap"}
CONFIDENCE = 0.95

# CSV scalars worth a table when present (fnmatch patterns on the file stem,
# i.e. the logged key with "/" -> "_"), in report order, with a description.
EXTRA_METRICS: Tuple[Tuple[str, str], ...] = (
    ("*consensus_distance", "consensus distance mean_i ||theta_i - theta_bar||^2 (after mixing)"),
    ("*gradient_disagreement", "inter-agent gradient disagreement (DecPG A.5)"),
    ("*update_variance", "inter-agent update variance (DecPG A.5)"),
    ("*node_degree*", "average node degree of the communication graph"),
    ("eval_generalization_gap", "perturbed-env return minus clean return (DecPG sec. 4)"),
    ("eval_perturbed_reward_episode_reward_mean", "evaluation return in the perturbed env"),
    ("eval_individual_reward_episode_reward_mean", "evaluation return of the individual (non-averaged) agent models"),
    ("*win_rate", "win rate (SMAC family)"),
    ("*admm*", "ADMM residuals (MATRPO)"),
    ("matrpo_*kl*", "KL (MATRPO)"),
    ("*comm*volume*", "communication volume"),
    ("comm_*bytes_per_agent", "bytes sent per agent per iteration (train: consensus mixing, decpg, or ADMM link "
                              "values, matrpo; network: of those, across processes; env: environment interface, "
                              "distributed runs)"),
    ("*learner_entropy", "entropy of the decentralized learners' policies (MAGPO)"),
    ("*action_agreement", "how often two agents pick the same action (MAGPO symmetry diagnostic)"),
)


@contextlib.contextmanager
def seeded(seed: Optional[int]) -> Iterator[None]:
    """rliable's bootstraps draw from numpy's global RNG: seed it, then restore it."""
    if seed is None:
        yield
        return
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _rliable():
    from rliable import library, metrics

    return library, metrics


# ------------------------------------------------------------------ alignment
@dataclass
class Curve:
    """One algorithm on one task: its seeds' evaluations on their common frames."""

    seeds: List[str]
    frames: np.ndarray  # frames every seed of this algorithm evaluated at (may be empty)
    values: np.ndarray  # (n_seeds, n_frames), raw metric (episode mean)
    per_run: List[Tuple[str, np.ndarray, np.ndarray]]  # (seed, frames, values) of each run
    mean: Optional[np.ndarray] = None
    ci_low: Optional[np.ndarray] = None  # None: unavailable (one seed)
    ci_high: Optional[np.ndarray] = None


@dataclass
class TaskScores:
    task_id: str
    score_frame: Optional[int]  # common frame the scores are taken at; None: each run's last
    seeds: Dict[str, List[str]]  # algorithm -> seeds
    raw: Dict[str, np.ndarray]  # algorithm -> final raw score per seed
    frames: Dict[str, np.ndarray]  # algorithm -> frame each final score was taken at
    norm_min: float
    norm_max: float
    normalised: Dict[str, np.ndarray]
    curves: Dict[str, Curve]
    # first frame of each run's score window (the last k evaluations up to score_frame) and its size
    window_from: Dict[str, np.ndarray] = field(default_factory=dict)
    window_size: Dict[str, np.ndarray] = field(default_factory=dict)
    norm_rule: str = "min-max over every evaluation of every run"


@dataclass
class ScoreSet:
    metric: str
    tasks: Dict[str, TaskScores]
    algorithms: List[str]
    notes: List[str] = field(default_factory=list)
    last_k: int = 1  # evaluations each final score averages (up to the score frame)


def normalise(values, low: float, high: float) -> np.ndarray:
    """Min-max normalisation; a task where every value is equal maps to 0."""
    values = np.asarray(values, dtype=float)
    if not high > low:
        return np.zeros_like(values)
    return (values - low) / (high - low)


def collect_scores(runs: Sequence[Run], metric: str = "return", last_k: int = 1) -> ScoreSet:
    """Align the runs per task, take their final scores and normalise them.

    The final score of a run is the mean of its last ``last_k`` evaluations
    (episode means) up to the task's score frame (``last_k=1``: the evaluation
    at the score frame alone). Raises :class:`ReportInputError` when no run has
    ``metric`` or ``last_k`` < 1.
    """
    if last_k < 1:
        raise ReportInputError(f"--last-k must be at least 1 evaluation, got {last_k}.")
    notes: List[str] = []
    with_metric = []
    without = []
    for run in runs:
        frames, values = run.curve(metric)
        (with_metric if frames.size else without).append((run, frames, values))
    if not with_metric:
        raise ReportInputError(
            f"metric '{metric}' is in none of the {len(runs)} run(s); "
            f"metrics found: {', '.join(available_metrics(runs)) or 'none'} (choose one with --metric)."
        )
    if without:
        names = ", ".join("/".join(r.key) for r, _, _ in without[:5]) + (" ..." if len(without) > 5 else "")
        notes.append(f"{len(without)} run(s) have no '{metric}' values and are left out: {names}")

    by_task: Dict[str, Dict[str, List[Tuple[Run, np.ndarray, np.ndarray]]]] = {}
    for item in with_metric:
        by_task.setdefault(item[0].task_id, {}).setdefault(item[0].algorithm, []).append(item)

    tasks: Dict[str, TaskScores] = {}
    for task_id in sorted(by_task):
        per_alg = {alg: sorted(items, key=lambda i: seed_sort_key(i[0].seed)) for alg, items in by_task[task_id].items()}
        everything = [item for alg in sorted(per_alg) for item in per_alg[alg]]
        common = set.intersection(*(set(frames.tolist()) for _, frames, _ in everything))
        last_frames = sorted({int(frames[-1]) for _, frames, _ in everything})
        grids = {tuple(frames.tolist()) for _, frames, _ in everything}
        score_frame = max(common) if common else None
        if score_frame is None:
            notes.append(
                f"{task_id}: the runs share no evaluation frame; each run is scored at its own last "
                f"evaluation ({last_frames[0]} to {last_frames[-1]} frames), so the comparison is not "
                "at an equal budget."
            )
        elif len(grids) > 1 or last_frames != [score_frame]:
            notes.append(
                f"{task_id}: the runs have different evaluation frames (last evaluations at "
                f"{', '.join(map(str, last_frames))}); scores are taken at {score_frame} frames, the last "
                "evaluation common to all runs of the task."
            )
        all_values = np.concatenate([values for _, _, values in everything])
        low, high = float(np.min(all_values)), float(np.max(all_values))
        if not high > low:
            notes.append(f"{task_id}: every evaluation of every run has the same {metric} ({low:g}); "
                         "normalised scores are all 0 on this task.")
        raw, frames_at, seeds, normalised, curves = {}, {}, {}, {}, {}
        window_from, window_size = {}, {}
        for alg, items in sorted(per_alg.items()):
            seeds[alg] = [run.seed for run, _, _ in items]
            finals, at, first, sizes = [], [], [], []
            for _, frames, values in items:
                index = int(np.nonzero(frames == score_frame)[0][0]) if score_frame is not None else len(frames) - 1
                mean, size, start = window_mean(frames[: index + 1], values[: index + 1], None, last_k)
                finals.append(mean)
                at.append(int(frames[index]))
                first.append(start)
                sizes.append(size)
            raw[alg] = np.asarray(finals)
            frames_at[alg] = np.asarray(at, dtype=np.int64)
            window_from[alg] = np.asarray(first, dtype=np.int64)
            window_size[alg] = np.asarray(sizes, dtype=np.int64)
            if min(sizes) < last_k:
                notes.append(f"{task_id} / {alg}: only {min(sizes)} evaluation(s) up to the scored frame, fewer "
                             f"than the {last_k} the final score should average: it averages those.")
            normalised[alg] = normalise(raw[alg], low, high)
            curves[alg] = _curve(task_id, alg, items, notes)
        tasks[task_id] = TaskScores(task_id, score_frame, seeds, raw, frames_at, low, high, normalised, curves,
                                    window_from, window_size)

    algorithms = sorted({alg for task in tasks.values() for alg in task.raw})
    single = sorted({alg for task in tasks.values() for alg, s in task.seeds.items() if len(s) < 2})
    if single:
        notes.append(f"one seed only for {', '.join(single)} on some task(s): confidence intervals that need "
                     "several seeds are marked unavailable (n/a), not estimated.")
    return ScoreSet(metric, tasks, algorithms, notes, last_k)


def normalise_to_reference(task: TaskScores, random_mean: float, reference_means: Sequence[float],
                           notes: List[str]) -> None:
    """Normalise a task's scores with random = 0 and the best observed = 1 (in place).

    The best is the largest of every evaluation of every run and the reference
    policies' means (no task here has a known optimum). When nothing beats the
    random policy, the task keeps its min-max normalisation and a note says so.
    """
    values = [c.values for c in task.curves.values() if c.values.size]
    values += [per_run for alg in task.curves for _, _, per_run in task.curves[alg].per_run]
    best = max([float(np.max(v)) for v in values if np.size(v)] + [float(m) for m in reference_means])
    if not best > random_mean:
        notes.append(f"{task.task_id}: nothing beats the random policy ({random_mean:.4g}); normalised scores "
                     "stay min-max over the runs' evaluations.")
        return
    task.norm_min, task.norm_max = float(random_mean), best
    task.normalised = {alg: normalise(raw, random_mean, best) for alg, raw in task.raw.items()}
    task.norm_rule = "random policy = 0, best observed (runs' evaluations, reference policies) = 1"


def _curve(task_id, alg, items, notes) -> Curve:
    per_run = [(run.seed, frames, values) for run, frames, values in items]
    common = sorted(set.intersection(*(set(frames.tolist()) for _, frames, _ in per_run)))
    if len({tuple(frames.tolist()) for _, frames, _ in per_run}) > 1:
        if common:
            notes.append(f"{task_id} / {alg}: seeds evaluated at different frames; its curve uses the "
                         f"{len(common)} frame(s) common to all its seeds.")
        else:
            notes.append(f"{task_id} / {alg}: seeds share no evaluation frame; its curve shows each run on its own.")
    frames = np.asarray(common, dtype=np.int64)
    values = np.stack([values[np.isin(f, frames)] for _, f, values in per_run]) if common else np.zeros((len(per_run), 0))
    return Curve([s for s, _, _ in per_run], frames, values, per_run)


# ------------------------------------------------------------- matrices
@dataclass
class ScoreMatrices:
    tasks: List[str]
    scores: Dict[str, np.ndarray]  # algorithm -> (n_runs, n_tasks) normalised final scores
    notes: List[str] = field(default_factory=list)


def score_matrices(score_set: ScoreSet) -> ScoreMatrices:
    """rliable's input: per algorithm a (runs x tasks) matrix of normalised scores.

    Only tasks that every algorithm ran are aggregated; an algorithm with more
    seeds on some tasks than on others uses its first n seeds everywhere, n the
    smallest count (rliable needs one run count per algorithm).
    """
    notes: List[str] = []
    algorithms = score_set.algorithms
    tasks = [t for t, s in score_set.tasks.items() if all(a in s.normalised for a in algorithms)]
    left_out = [t for t in score_set.tasks if t not in tasks]
    if left_out:
        notes.append(f"task(s) not run by every algorithm are left out of the aggregates: {', '.join(left_out)}")
    scores: Dict[str, np.ndarray] = {}
    if tasks:
        for alg in algorithms:
            counts = [len(score_set.tasks[t].normalised[alg]) for t in tasks]
            n = min(counts)
            if n != max(counts):
                notes.append(f"{alg}: {min(counts)} to {max(counts)} seeds per task; the aggregates use the first "
                             f"{n} seed(s) of each task.")
            scores[alg] = np.stack([score_set.tasks[t].normalised[alg][:n] for t in tasks], axis=1)
    return ScoreMatrices(tasks, scores, notes)


# --------------------------------------------------------- rliable estimates
def _aggregate_func(scores: np.ndarray) -> np.ndarray:
    _, metrics = _rliable()
    return np.array([
        metrics.aggregate_iqm(scores),
        metrics.aggregate_mean(scores),
        metrics.aggregate_median(scores),
        metrics.aggregate_optimality_gap(scores, 1.0),
    ])


def aggregate_estimates(scores: Dict[str, np.ndarray], reps: int = 2000, seed: Optional[int] = 0) -> List[dict]:
    """IQM, mean, median, optimality gap per algorithm with stratified bootstrap CIs.

    One row per algorithm: ``{algorithm, n_runs, n_tasks, iqm, iqm_ci_low,
    iqm_ci_high, ...}``; CI bounds are None when the algorithm has one run per task.
    """
    library, _ = _rliable()
    rows = []
    for alg, matrix in scores.items():
        row = {"algorithm": alg, "n_runs": matrix.shape[0], "n_tasks": matrix.shape[1]}
        if matrix.shape[0] >= 2:
            with seeded(seed):
                point, interval = library.get_interval_estimates({alg: matrix}, _aggregate_func, reps=reps,
                                                                 confidence_interval_size=CONFIDENCE)
            point, interval = point[alg], interval[alg]
        else:
            point, interval = _aggregate_func(matrix), None
        for i, name in enumerate(AGGREGATES):
            row[name] = float(point[i])
            row[f"{name}_ci_low"] = None if interval is None else float(interval[0][i])
            row[f"{name}_ci_high"] = None if interval is None else float(interval[1][i])
        rows.append(row)
    return rows


def _poi(scores_x: np.ndarray, scores_y: np.ndarray) -> float:
    """rliable's ``metrics.probability_of_improvement``, vectorised.

    Mean over tasks of P(X > Y) + P(X = Y) / 2 over all pairs of runs: the
    Mann-Whitney U statistic divided by n_x * n_y, which is what rliable
    computes with scipy one task at a time (about 100x slower in a bootstrap).
    """
    greater = (scores_x[:, None, :] > scores_y[None, :, :]).mean(axis=(0, 1))
    equal = (scores_x[:, None, :] == scores_y[None, :, :]).mean(axis=(0, 1))
    return float(np.mean(greater + 0.5 * equal))


def probability_of_improvement(scores: Dict[str, np.ndarray], reps: int = 2000,
                               seed: Optional[int] = 0) -> List[dict]:
    """P(X > Y) for every ordered pair of algorithms, with bootstrap CIs.

    The point estimate is rliable's ``metrics.probability_of_improvement``; the
    CI is rliable's independent stratified bootstrap (``get_interval_estimates``
    with a list of score matrices) of the same statistic. Each unordered pair is
    bootstrapped once; its reverse is 1 - P (exact for this statistic).
    CIs are None when either algorithm has a single run.
    """
    library, metrics = _rliable()
    rows = []
    for x, y in itertools.combinations(sorted(scores), 2):
        sx, sy = scores[x], scores[y]
        point = float(metrics.probability_of_improvement(sx, sy))
        low = high = None
        if sx.shape[0] >= 2 and sy.shape[0] >= 2:
            with seeded(seed):
                _, interval = library.get_interval_estimates({"pair": [sx, sy]}, _poi, reps=reps,
                                                             confidence_interval_size=CONFIDENCE)
            low, high = float(np.ravel(interval["pair"][0])[0]), float(np.ravel(interval["pair"][1])[0])
        rows.append({"x": x, "y": y, "probability": point, "ci_low": low, "ci_high": high})
        rows.append({"x": y, "y": x, "probability": 1.0 - point,
                     "ci_low": None if high is None else 1.0 - high,
                     "ci_high": None if low is None else 1.0 - low})
    return rows


@dataclass
class Profile:
    taus: np.ndarray
    values: Dict[str, np.ndarray]
    ci_low: Dict[str, Optional[np.ndarray]]
    ci_high: Dict[str, Optional[np.ndarray]]


def _score_distribution(scores: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """rliable's ``score_distributions`` (fraction of all runs x tasks with score > tau), vectorised."""
    return (np.ravel(scores)[:, None] > np.asarray(taus)[None, :]).mean(axis=0)


def performance_profiles(scores: Dict[str, np.ndarray], taus: Optional[np.ndarray] = None, reps: int = 2000,
                         seed: Optional[int] = 0) -> Profile:
    """Score distributions: fraction of runs (all tasks) with normalised score > tau.

    rliable's ``create_performance_profile`` (stratified bootstrap bands), with
    its default profile computed in one vectorised call instead of one per tau.
    """
    library, _ = _rliable()
    taus = np.linspace(0.0, 1.0, 51) if taus is None else np.asarray(taus, dtype=float)
    values, lows, highs = {}, {}, {}
    for alg, matrix in scores.items():
        if matrix.shape[0] >= 2:
            with seeded(seed):
                point, interval = library.create_performance_profile(
                    {alg: matrix}, taus, custom_profile_func=_score_distribution, reps=reps,
                    confidence_interval_size=CONFIDENCE)
            values[alg], lows[alg], highs[alg] = np.asarray(point[alg]), interval[alg][0], interval[alg][1]
        else:
            values[alg] = _score_distribution(matrix, taus)
            lows[alg] = highs[alg] = None
    return Profile(taus, values, lows, highs)


def mean_intervals(matrices: Sequence[np.ndarray], reps: int = 2000, seed: Optional[int] = 0):
    """Mean over runs (axis 0) of (runs x columns) matrices, with bootstrap CIs per column.

    rliable's stratified bootstrap resamples the runs of each column on its own,
    so matrices with the same number of runs are put side by side and
    bootstrapped in one call (far fewer Python-level bootstrap loops). Returns
    one (mean, ci_low, ci_high) per matrix; CIs are None for a single run.
    """
    library, _ = _rliable()
    results: List = [None] * len(matrices)
    by_rows: Dict[int, List[int]] = {}
    for i, matrix in enumerate(matrices):
        by_rows.setdefault(matrix.shape[0], []).append(i)
    for n_rows, indices in sorted(by_rows.items()):
        if n_rows < 2:
            for i in indices:
                results[i] = (matrices[i].mean(axis=0), None, None)
            continue
        stacked = np.concatenate([matrices[i] for i in indices], axis=1)
        with seeded(seed):
            point, interval = library.get_interval_estimates({"m": stacked}, lambda m: np.mean(m, axis=0), reps=reps,
                                                             confidence_interval_size=CONFIDENCE)
        start = 0
        for i in indices:
            stop = start + matrices[i].shape[1]
            results[i] = (np.asarray(point["m"][start:stop]), np.asarray(interval["m"][0][start:stop]),
                          np.asarray(interval["m"][1][start:stop]))
            start = stop
    return results


def curve_intervals(score_set: ScoreSet, reps: int = 2000, seed: Optional[int] = 0) -> None:
    """Fill each curve's mean and 95% bootstrap CI over seeds (in place; CI None for one seed)."""
    curves = [c for task in score_set.tasks.values() for c in task.curves.values() if c.frames.size]
    for curve, (mean, low, high) in zip(curves, mean_intervals([c.values for c in curves], reps, seed)):
        curve.mean, curve.ci_low, curve.ci_high = mean, low, high


def task_table(score_set: ScoreSet, reps: int = 2000, seed: Optional[int] = 0) -> List[dict]:
    """Per task and algorithm: final raw score mean, std, 95% bootstrap CI over seeds, normalised mean."""
    keys = [(task_id, alg) for task_id, task in score_set.tasks.items() for alg in sorted(task.raw)]
    intervals = mean_intervals([score_set.tasks[t].raw[a][:, None] for t, a in keys], reps, seed)
    rows = []
    for (task_id, alg), (_, low, high) in zip(keys, intervals):
        task = score_set.tasks[task_id]
        raw = task.raw[alg]
        n = raw.size
        frames = sorted(set(task.frames[alg].tolist()))
        rows.append({
            "task": task_id, "algorithm": alg, "n_seeds": n,
            "frames": frames[0] if len(frames) == 1 else f"{frames[0]}-{frames[-1]}",
            "mean": float(raw.mean()), "std": float(raw.std(ddof=1)) if n >= 2 else None,
            "ci_low": None if low is None else float(low[0]), "ci_high": None if high is None else float(high[0]),
            "normalised_mean": float(task.normalised[alg].mean()),
            "norm_min": task.norm_min, "norm_max": task.norm_max,
        })
    return rows


# ------------------------------------------------------- decentralised metrics
def extra_metrics(runs: Sequence[Run], patterns: Sequence[Tuple[str, str]] = EXTRA_METRICS) -> List[dict]:
    """Final value of the CSV scalars matching ``patterns``, per metric/task/algorithm over seeds.

    One row per (metric, task, algorithm): ``{metric, description, task,
    algorithm, n_seeds, mean, std, step}`` (std None with one seed; step: the
    largest last step). Runs without a csv logger folder contribute nothing.
    """
    values: Dict[Tuple[str, str, str], List[Tuple[int, float]]] = {}
    descriptions: Dict[str, Tuple[int, str]] = {}
    for run in runs:
        if run.scalars_dir is None:
            continue
        for path in sorted(run.scalars_dir.glob("*.csv")):
            for order, (pattern, description) in enumerate(patterns):
                if fnmatch.fnmatchcase(path.stem, pattern):
                    last = read_scalar(path)
                    if last is not None:
                        values.setdefault((path.stem, run.task_id, run.algorithm), []).append(last)
                        descriptions.setdefault(path.stem, (order, description))
                    break
    rows = []
    for (name, task_id, alg), items in sorted(values.items(), key=lambda kv: (descriptions[kv[0][0]][0], kv[0])):
        finals = np.asarray([v for _, v in items])
        rows.append({
            "metric": name, "description": descriptions[name][1], "task": task_id, "algorithm": alg,
            "n_seeds": finals.size, "mean": float(finals.mean()),
            "std": float(finals.std(ddof=1)) if finals.size >= 2 else None,
            "step": max(s for s, _ in items),
        })
    return rows
