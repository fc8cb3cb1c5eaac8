"""Re-evaluation of saved checkpoints for a report (``benchmarl report --reevaluate final,best``).

A run's logged evaluations are few episodes each, taken during training. This
module reloads checkpoints of each run and plays many episodes with them, in
two action modes:

- which checkpoint: ``final``, the one with the most frames; ``best``, the one
  at the frames whose logged evaluation ``return`` (the run's own JSON, the
  metric the report scores) is highest, ties going to the earliest. ``best``
  is optimistic: it is picked on the same noisy evaluations, so its
  re-evaluated return is biased upwards by the selection (paper 003's protocol,
  best checkpoint re-evaluated, has the same bias);
- which actions: ``greedy`` (``ExplorationType.DETERMINISTIC``: the mode or
  mean of each agent's action distribution) and ``sampled``
  (``ExplorationType.RANDOM``: drawn from it). They differ for a stochastic
  policy: a mixed strategy can do better sampled than greedy, or the reverse.

Checkpoints are those BenchMARL writes, ``<run>/checkpoints/checkpoint_<frames>.pt``,
kept for every evaluation when a run used
``experiment.checkpoint_interval=<evaluation_interval> experiment.keep_checkpoints_num=null``.
Each is reloaded with :func:`benchmarl_decentral.runs.reload_experiment`
(BenchMARL's ``Experiment.reload_from_file`` from the run's own ``config.pkl``,
our hooks installed, so our algorithms and tasks resolve; MAGPO evaluates its
learner, as in training), with the experiment config patched so that nothing
is written into the run folder (a temporary save folder, no logger, no JSON)
and the test env holds ``episodes`` episodes. The episodes are played by
BenchMARL's own evaluation loop (``Experiment._evaluation_loop``, so an
algorithm's evaluation parameters, e.g. DecPG's averaged model, are in place)
with ``evaluation_static`` on: torch, numpy, random and the test env are
seeded with the run's seed before each mode, so a re-evaluation is
repeatable and both modes of both checkpoints play from the same env seed.
The return of an episode is BenchMARL's evaluation ``return``
(:func:`benchmarl_decentral.evaluation_dropout.episode_returns`).

Results are rows of a CSV (:data:`COLUMNS`, one per run x checkpoint choice x
mode), which is also the cache: rows found in it for the same run (task,
algorithm, seed), choice, mode and episodes are reused, and where the run
still has its checkpoints, only when they are for the checkpoint chosen now.
A report regenerated from an archive without checkpoints therefore
reproduces from the CSV alone.
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from benchmarl_decentral.reporting.loading import ReportInputError, Run, seed_sort_key

#: Checkpoint choices, in report order.
CHOICES = ("final", "best")
#: Action modes, in report order.
MODES = ("greedy", "sampled")
DEFAULT_EPISODES = 100
#: File name of the results (and default cache) in the report's folder.
FILE_NAME = "reevaluation.csv"
COLUMNS = ("task", "algorithm", "seed", "run", "path", "which", "frames", "mode", "episodes", "mean", "std")
#: How to make a run keep a checkpoint per evaluation.
CHECKPOINT_HINT = ("experiment.checkpoint_interval=<evaluation_interval> experiment.keep_checkpoints_num=null "
                   "(one checkpoint per evaluation; set it when training)")
_CHECKPOINT_RE = re.compile(r"^checkpoint_(\d+)\.pt$")


@dataclass(frozen=True)
class ReevaluationOptions:
    """What to re-evaluate (checked by :func:`parse_options`)."""

    which: Tuple[str, ...] = CHOICES
    modes: Tuple[str, ...] = MODES
    episodes: int = DEFAULT_EPISODES
    cache: Optional[Path] = None  # None: <out>/reevaluation.csv
    evaluate: bool = True  # False: cached rows only


def _split(value, what: str, allowed: Sequence[str], option: str) -> Tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [str(item).strip() for item in items]
    unknown = [item for item in items if item not in allowed]
    if unknown or not items or any(not item for item in items):
        shown = ", ".join(repr(u) for u in unknown) if unknown else repr(value)
        raise ReportInputError(f"{option}: unknown {what} {shown}; choose a comma list of "
                               f"{', '.join(allowed)} (e.g. {option} {','.join(allowed)}).")
    return tuple(item for item in allowed if item in items)  # report order, each once


def parse_options(reevaluate, episodes: Optional[int] = None, modes=None, cache=None,
                  cached_only: bool = False) -> Optional[ReevaluationOptions]:
    """The re-evaluation options, or None when ``reevaluate`` is None; ReportInputError for bad input.

    ``reevaluate``: ``"final,best"`` or a sequence of :data:`CHOICES`;
    ``episodes``: episodes per mode (default :data:`DEFAULT_EPISODES`, at least
    1); ``modes``: ``"greedy,sampled"`` or a sequence of :data:`MODES` (default
    both); ``cache``: the CSV to read and, when something is computed, write;
    ``cached_only``: never evaluate. The other options without ``reevaluate``
    are refused (they would do nothing).
    """
    if reevaluate is None:
        given = [name for name, value in (("--reevaluate-episodes", episodes), ("--reevaluate-modes", modes),
                                          ("--reevaluation-cache", cache),
                                          ("--cached-reevaluation-only", cached_only or None))
                 if value is not None]
        if given:
            raise ReportInputError(f"{', '.join(given)} given without --reevaluate; add --reevaluate final,best "
                                   "(or final, or best) to re-evaluate checkpoints, or drop "
                                   f"{'it' if len(given) == 1 else 'them'}.")
        return None
    which = _split(reevaluate, "checkpoint choice", CHOICES, "--reevaluate")
    chosen_modes = MODES if modes is None else _split(modes, "mode", MODES, "--reevaluate-modes")
    if episodes is None:
        episodes = DEFAULT_EPISODES
    if isinstance(episodes, bool) or not isinstance(episodes, (int, np.integer)) or episodes < 1:
        raise ReportInputError(f"--reevaluate-episodes must be a whole number of episodes >= 1, got {episodes!r}.")
    return ReevaluationOptions(which, chosen_modes, int(episodes), Path(cache) if cache else None, not cached_only)


# ------------------------------------------------------------------ checkpoints
def run_checkpoints(run: Run) -> Dict[int, Path]:
    """``{frames: file}`` of the run's ``checkpoints/checkpoint_<frames>.pt`` (beside its JSON)."""
    folder = run.source.parent / "checkpoints"
    found: Dict[int, Path] = {}
    if folder.is_dir():
        for file in folder.iterdir():
            match = _CHECKPOINT_RE.match(file.name)
            if match and file.is_file():
                found[int(match.group(1))] = file
    return found


def choose(run: Run, metric: str, frames: Sequence[int], which: Sequence[str]) -> Tuple[Dict[str, int], List[str]]:
    """The checkpoint frames of each choice in ``which``, and notes.

    ``final``: the most frames. ``best``: among the checkpointed frames where
    the run logged an evaluation, the one whose mean ``metric`` is highest
    (ties: the earliest); no ``best`` when no checkpoint is at an evaluation.
    A note says when the best logged evaluation has no checkpoint.
    """
    chosen: Dict[str, int] = {}
    notes: List[str] = []
    where = f"{run.task_id} {run.algorithm} {run.seed}"
    available = set(int(f) for f in frames)
    if not available:
        return chosen, notes
    if "final" in which:
        chosen["final"] = max(available)
    if "best" in which:
        curve_frames, values = run.curve(metric)
        best = best_all = None
        for frame, value in zip(curve_frames.tolist(), values.tolist()):
            if best_all is None or value > best_all[1]:
                best_all = (frame, value)
            if frame in available and (best is None or value > best[1]):
                best = (frame, value)
        if best is None:
            notes.append(f"re-evaluation: {where}: no checkpoint at the frames of a logged evaluation "
                         f"({sorted(available)}): no `best` row; keep one per evaluation with {CHECKPOINT_HINT}.")
        else:
            chosen["best"] = best[0]
            if best_all[0] != best[0]:
                notes.append(f"re-evaluation: {where}: the best logged evaluation ({best_all[0]} frames) has no "
                             f"checkpoint; `best` is the best checkpointed one ({best[0]} frames). Keep one per "
                             f"evaluation with {CHECKPOINT_HINT}.")
    return chosen, notes


# ------------------------------------------------------------------ evaluation
def _play(experiment, deterministic: bool) -> List[float]:
    """Returns of one evaluation (``experiment.config.evaluation_episodes`` episodes) by BenchMARL's loop."""
    import torch
    from benchmarl.utils import seed_everything

    from benchmarl_decentral.evaluation_dropout import episode_returns

    captured: List[list] = []
    experiment.config.evaluation_deterministic_actions = deterministic
    # on this instance only: keep the rollouts; the logging callbacks (hit rate, dropout...) are not run
    experiment._on_evaluation_end = lambda rollouts: captured.append(list(rollouts))
    try:
        seed_everything(experiment.seed)
        with torch.no_grad():
            experiment._evaluation_loop()
    finally:
        del experiment._on_evaluation_end
    if len(captured) != 1:
        raise RuntimeError(f"the evaluation loop gave {len(captured)} sets of rollouts, expected 1")
    return [float(v) for v in episode_returns(experiment, captured[0])]


def evaluate_checkpoints(files: Dict[int, Path], modes: Sequence[str], episodes: int) -> Dict[Tuple[int, str], List[float]]:
    """Episode returns per ``(frames, mode)`` of the checkpoints ``{frames: file}`` of ONE run.

    The run is rebuilt once (from the first checkpoint) and the others are
    loaded into it (BenchMARL's ``_load_experiment``). Nothing is written into
    the run folder: the experiment's save folder is a temporary folder and it
    has no logger and no JSON writer. Raises CheckpointError for a bad file.
    """
    from benchmarl_decentral.runs import check_checkpoint, reload_experiment

    out: Dict[Tuple[int, str], List[float]] = {}
    order = sorted(files)
    with tempfile.TemporaryDirectory(prefix="benchmarl-reevaluate-") as tmp:
        patch = {"save_folder": tmp, "loggers": [], "create_json": False, "render": False,
                 "evaluation_episodes": int(episodes), "evaluation_static": True}
        with contextlib.redirect_stdout(io.StringIO()):  # BenchMARL's "Reloaded experiment ..." lines
            experiment = reload_experiment(files[order[0]], patch)
        try:
            for i, frames in enumerate(order):
                if i:
                    experiment.config.restore_file = str(check_checkpoint(files[frames]))
                    experiment._load_experiment()
                for mode in modes:
                    out[(frames, mode)] = _play(experiment, deterministic=mode == "greedy")
        finally:
            with contextlib.suppress(Exception):
                experiment.close()
    return out


# ------------------------------------------------------------------ rows and cache
def row_key(row: dict) -> Tuple[str, str, str, str, str, int]:
    return (str(row["task"]), str(row["algorithm"]), str(row["seed"]), str(row["which"]), str(row["mode"]),
            int(row["episodes"]))


def _float(text: str) -> Optional[float]:
    return float(text) if text not in ("", None) else None


def read_rows(path: Optional[Path]) -> Dict[tuple, dict]:
    """Rows of a re-evaluation CSV by :func:`row_key` ({} for a missing or unreadable file)."""
    rows: Dict[tuple, dict] = {}
    if path is None or not Path(path).is_file():
        return rows
    try:
        with open(path, newline="") as f:
            for raw in csv.DictReader(f):
                try:
                    row = {name: raw[name] for name in COLUMNS}
                    row.update(frames=int(row["frames"]), episodes=int(row["episodes"]), mean=float(row["mean"]),
                               std=_float(row["std"]))
                except (KeyError, TypeError, ValueError):
                    continue
                rows[row_key(row)] = row
    except (OSError, UnicodeDecodeError, csv.Error):
        return {}
    return rows


def sort_rows(rows: Sequence[dict]) -> List[dict]:
    return sorted(rows, key=lambda r: (r["task"], r["algorithm"], seed_sort_key(r["seed"]),
                                       CHOICES.index(r["which"]) if r["which"] in CHOICES else 9,
                                       MODES.index(r["mode"]) if r["mode"] in MODES else 9))


def write_rows(path: Path, rows: Sequence[dict]) -> Path:
    """Write ``rows`` (:data:`COLUMNS`; floats as ``repr``, so they read back exactly)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for row in sort_rows(rows):
            writer.writerow(["" if row[c] is None else repr(row[c]) if isinstance(row[c], float) else str(row[c])
                             for c in COLUMNS])
    return path


def _std(values: Sequence[float]) -> Optional[float]:
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def summarise(rows: Iterable[dict]) -> List[dict]:
    """Per task x algorithm x choice x mode of re-evaluation ``rows`` (as :func:`read_rows` gives them):
    the number of seeds, the episodes, the checkpoint frames, and the mean and std (None for one seed)
    over seeds of the runs' mean returns."""
    groups: Dict[tuple, List[dict]] = {}
    for row in rows:
        groups.setdefault((row["task"], row["algorithm"], row["which"], row["mode"]), []).append(row)
    out = []
    for (task, alg, which, mode), group in groups.items():
        means = [r["mean"] for r in group]
        out.append({"task": task, "algorithm": alg, "which": which, "mode": mode, "n_seeds": len(group),
                    "episodes": sorted({r["episodes"] for r in group}), "mean": float(np.mean(means)),
                    "std": _std(means), "frames": sorted({r["frames"] for r in group})})
    return sorted(out, key=lambda r: (r["task"], r["algorithm"], CHOICES.index(r["which"]),
                                      MODES.index(r["mode"])))


@dataclass
class Reevaluation:
    """The rows of a report (one per run x choice x mode), its notes and what was computed."""

    options: ReevaluationOptions
    rows: List[dict] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    evaluated: int = 0  # rows computed (not read from the cache)
    cache_path: Optional[Path] = None
    cached: Dict[tuple, dict] = field(default_factory=dict)  # the cache as read

    def summary(self) -> List[dict]:
        """Per task x algorithm x choice x mode: mean and std over seeds of the runs' mean returns."""
        return summarise(self.rows)


def _describe(runs: Sequence[Run], limit: int = 8) -> str:
    names = [f"{r.task_id} {r.algorithm} {r.seed} ({r.source.parent})" for r in runs]
    return "; ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def reevaluate(runs: Sequence[Run], metric: str, options: ReevaluationOptions, out: Path) -> Reevaluation:
    """Rows for every run: from the cache, else computed from its checkpoints (unless cached-only).

    Runs without checkpoints and without cached rows get one note naming them
    (and how to keep checkpoints); a run whose checkpoints cannot be reloaded
    gets a note and no rows; neither stops the report.
    """
    cache_path = options.cache if options.cache is not None else Path(out) / FILE_NAME
    result = Reevaluation(options, cache_path=cache_path)
    result.cached = read_rows(cache_path)
    no_checkpoints: List[Run] = []
    not_cached: List[Run] = []
    for run in runs:
        files = run_checkpoints(run)
        chosen, notes = choose(run, metric, list(files), options.which) if files else ({}, [])
        wanted = [(which, mode) for which in options.which for mode in options.modes]
        rows: Dict[Tuple[str, str], dict] = {}
        for which, mode in wanted:
            row = result.cached.get((run.task_id, run.algorithm, run.seed, which, mode, options.episodes))
            if row is not None and (not files or chosen.get(which) == row["frames"]):
                rows[(which, mode)] = row
        missing = [(which, mode) for which, mode in wanted if (which, mode) not in rows]
        result.notes += notes
        if missing and not files:
            no_checkpoints.append(run)
        elif missing and not options.evaluate:
            not_cached.append(run)
        elif missing:
            todo = {chosen[which]: files[chosen[which]] for which, _ in missing if which in chosen}
            modes = [mode for mode in options.modes if any(m == mode for _, m in missing)]
            print(f"re-evaluating {run.task_id} {run.algorithm} {run.seed}: checkpoint(s) at "
                  f"{', '.join(map(str, sorted(todo)))} frames, {', '.join(modes)}, {options.episodes} episodes each")
            try:
                returns = evaluate_checkpoints(todo, modes, options.episodes) if todo else {}
            except Exception as error:  # noqa: BLE001 - one run's checkpoints must not stop the report
                first = str(error).splitlines()[0] if str(error) else ""
                result.notes.append(f"re-evaluation: {run.task_id} {run.algorithm} {run.seed}: its checkpoints could "
                                    f"not be re-evaluated ({error.__class__.__name__}: {first}); no rows.")
                continue
            for which, mode in missing:
                if which not in chosen:
                    continue
                values = returns[(chosen[which], mode)]
                rows[(which, mode)] = {
                    "task": run.task_id, "algorithm": run.algorithm, "seed": run.seed,
                    "run": run.source.parent.name, "path": str(run.source.parent), "which": which,
                    "frames": int(chosen[which]), "mode": mode, "episodes": len(values),
                    "mean": float(np.mean(values)), "std": _std(values)}
                result.evaluated += 1
        result.rows += [rows[w] for w in wanted if w in rows]
    if no_checkpoints:
        result.notes.append(f"re-evaluation: {len(no_checkpoints)} run(s) have no checkpoints "
                            f"(<run>/checkpoints/checkpoint_<frames>.pt) and no row in {cache_path}, so they are not "
                            f"re-evaluated: {_describe(no_checkpoints)}. To get checkpoints, train with "
                            f"{CHECKPOINT_HINT}.")
    if not_cached:
        result.notes.append(f"re-evaluation: {len(not_cached)} run(s) are not (fully) in the cache {cache_path} and "
                            f"--cached-reevaluation-only is set, so their rows are missing: {_describe(not_cached)}. "
                            "Drop --cached-reevaluation-only to compute them from their checkpoints.")
    result.rows = sort_rows(result.rows)
    return result


def save(result: Reevaluation, out: Path) -> Dict[str, Path]:
    """Write ``<out>/reevaluation.csv`` (this report's rows) and, when rows were computed, the cache.

    A cache given with ``--reevaluation-cache`` keeps its rows of other runs;
    only the rows of this report are replaced or added.
    """
    files: Dict[str, Path] = {}
    if result.rows:
        files[FILE_NAME] = write_rows(Path(out) / FILE_NAME, result.rows)
    cache = result.cache_path
    if result.evaluated and cache is not None and Path(cache).resolve() != (Path(out) / FILE_NAME).resolve():
        merged = dict(result.cached)
        merged.update({row_key(row): row for row in result.rows})
        write_rows(Path(cache), list(merged.values()))
    return files


def frames_text(frames: Sequence[int]) -> str:
    frames = sorted(frames)
    return str(frames[0]) if len(frames) == 1 else f"{frames[0]}-{frames[-1]}"
