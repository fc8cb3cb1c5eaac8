"""Reading BenchMARL's results: the per-run JSON files and the CSV scalars.

Pure Python + numpy (no torch; BenchMARL only to name ablation runs apart), so it is cheap to test.

BenchMARL's ``JsonWriter`` (``benchmarl/experiment/logger.py``) writes one file
per run, ``<save_folder>/<run>/<run>.json``, in marl-eval's format::

    {env: {task: {algorithm: {"seed_N": {
        "absolute_metrics": {metric: [max over all episodes so far]},
        "step_K": {"step_count": frames, metric: [value per evaluation episode], ...},
        ...}}}}}

with ``K = frames // evaluation_interval`` and metrics ``return`` (mean over
groups) and ``<group>_return``. ``benchmarl.eval_results`` merges the files of a
multirun by walking it for ``*.json`` (names with ``wandb`` skipped); this module
does the same walk, but keeps every run apart (with its source file), checks
the format and says what it skipped instead of failing.

Two kinds of JSON files are not training curves and are not read as such:

* ``<run>/evaluations/*.json``, written by ``benchmarl evaluate`` (one
  evaluation of a checkpoint, beside the run; :mod:`benchmarl_decentral.runs`)
  are skipped;
* incomplete runs are left out unless asked (``include_incomplete``,
  ``benchmarl report --include-incomplete``) and counted in a note: JSON files
  renamed ``*.json.incomplete`` by ``benchmarl benchmark`` (failed or
  interrupted attempts), and JSON files of a ``benchmarl benchmark`` run
  whose ``status.yaml`` (in the hydra job folder above the run) does not say
  ``finished`` (a run still going, or one killed without a chance to say so).

A resumed run (``benchmarl resume``) keeps one JSON file holding the whole
curve (the evaluations up to its checkpoint and those after), read as one run.

BenchMARL names a run's algorithm after its class only, so runs of one
algorithm under different ``algorithm.*`` settings (an ablation) share a name
in the JSON: :func:`load_runs` names them apart from their hydra configs
(:mod:`benchmarl_decentral.reporting.variants`, which reads the algorithm's
defaults from BenchMARL's registry only when such runs are found).

The csv logger (``experiment.loggers=[csv]``) writes
``<save_folder>/<run>/<run>/scalars/<key>.csv`` with ``step,value`` lines (``/``
in the key replaced by ``_``): :func:`read_scalar` reads one of them.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

# the folder of a run where ``benchmarl evaluate`` writes (skipped: not training curves)
from benchmarl_decentral.runs import EVALUATIONS_DIR
from benchmarl_decentral.reporting.variants import label_variants

PathLike = Union[str, os.PathLike]

#: Suffix ``benchmarl benchmark`` gives to the JSON of a failed or interrupted attempt.
INCOMPLETE_SUFFIX = ".incomplete"
_STATE_RE = re.compile(r"^state:\s*['\"]?([A-Za-z_]+)")
_INCLUDE_INCOMPLETE: contextvars.ContextVar[bool] = contextvars.ContextVar("include_incomplete", default=False)

_STEP_RE = re.compile(r"^step_(\d+)$")
_SEED_RE = re.compile(r"^seed_(-?\d+)$")


class ReportInputError(ValueError):
    """Input that cannot give a report (empty or foreign folder, missing metric...).

    The message is meant for the user as is; the CLI prints it and exits with 2.
    """


@dataclass
class Run:
    """One training run (one env/task/algorithm/seed) as read from a JSON file."""

    env: str
    task: str
    algorithm: str
    seed: str  # "seed_N" as in the JSON
    # frames (step_count) -> {metric: [value per evaluation episode]}
    evaluations: Dict[int, Dict[str, List[float]]]
    source: Path
    scalars_dir: Optional[Path] = None

    @property
    def task_id(self) -> str:
        return f"{self.env}/{self.task}"

    @property
    def key(self) -> Tuple[str, str, str, str]:
        return (self.env, self.task, self.algorithm, self.seed)

    @property
    def seed_number(self) -> Optional[int]:
        match = _SEED_RE.match(self.seed)
        return int(match.group(1)) if match else None

    def metrics(self) -> List[str]:
        names = set()
        for values in self.evaluations.values():
            names.update(values)
        return sorted(names)

    def curve(self, metric: str) -> Tuple[np.ndarray, np.ndarray]:
        """(frames, mean over evaluation episodes) for the evaluations that have ``metric``.

        Evaluations where the metric is absent, empty or all NaN are skipped.
        """
        frames, values = [], []
        for frame in sorted(self.evaluations):
            episodes = self.evaluations[frame].get(metric)
            if not episodes:
                continue
            array = np.asarray(episodes, dtype=float)
            finite = array[np.isfinite(array)]
            if finite.size == 0:
                continue
            frames.append(frame)
            values.append(float(finite.mean()))
        return np.asarray(frames, dtype=np.int64), np.asarray(values, dtype=float)


@dataclass
class LoadResult:
    runs: List[Run]
    json_files: List[Path]
    notes: List[str] = field(default_factory=list)
    ignored: List[Tuple[Path, str]] = field(default_factory=list)


def seed_sort_key(seed: str):
    match = _SEED_RE.match(seed)
    return (0, int(match.group(1)), "") if match else (1, 0, seed)


@contextlib.contextmanager
def including_incomplete(include: bool = True):
    """Within the block, :func:`load_runs` reads incomplete runs too (unless told otherwise)."""
    token = _INCLUDE_INCOMPLETE.set(include)
    try:
        yield
    finally:
        _INCLUDE_INCOMPLETE.reset(token)


def incomplete_reason(file: Path) -> Optional[str]:
    """Why the run of JSON ``file`` is incomplete, or None when nothing says so.

    Incomplete: the file was renamed ``*.json.incomplete``, or it belongs to a
    ``benchmarl benchmark`` run (``<job>/<run>/<run>.json`` with
    ``<job>/status.yaml``) whose state is not ``finished``.
    """
    if file.name.endswith(INCOMPLETE_SUFFIX):
        return "an attempt that did not finish (*.json.incomplete)"
    status = file.parent.parent / "status.yaml"
    if not status.is_file():
        return None
    try:
        with open(status, "r") as f:
            states = [m.group(1) for m in map(_STATE_RE.match, f) if m]
    except (OSError, UnicodeDecodeError):
        return None
    if states and states[0] != "finished":
        return f"status.yaml says '{states[0]}'"
    return None


def find_json_files(paths: Sequence[PathLike]) -> List[Path]:
    """The ``*.json`` (and ``*.json.incomplete``) files under ``paths`` (recursively; files may be given directly).

    Mirrors ``benchmarl.eval_results._get_json_files_from_multirun``: names
    containing ``wandb`` are skipped; so are the files in ``evaluations/``
    folders (``benchmarl evaluate``'s results). Each file appears once, even
    when folders overlap. Raises :class:`ReportInputError` for a path that
    does not exist.
    """
    if not paths:
        raise ReportInputError("no folder given.")
    found: Dict[Path, Path] = {}
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ReportInputError(f"not found: {raw}")
        if path.is_file():
            candidates: Iterable[Path] = [path]
        else:
            candidates = (
                Path(dirpath) / name
                for dirpath, _, filenames in os.walk(path)
                for name in filenames
                if name.endswith((".json", ".json" + INCOMPLETE_SUFFIX)) and "wandb" not in name
                and Path(dirpath).name != EVALUATIONS_DIR
            )
        for candidate in candidates:
            found.setdefault(candidate.resolve(), candidate)
    return sorted(found.values())


def _number_list(value) -> Optional[List[float]]:
    if not isinstance(value, list):
        return None
    out = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            if item is None:  # json has no NaN; tolerate nulls
                out.append(math.nan)
                continue
            return None
        out.append(float(item))
    return out


def parse_results(data, source: Path) -> Tuple[List[Run], List[str]]:
    """The runs held by one marl-eval-format dict (one file: usually one run).

    Returns (runs, problems); ``problems`` says why nothing (or not everything)
    could be read. Entries that do not fit the format are skipped, never guessed.
    """
    runs: List[Run] = []
    problems: List[str] = []
    if not isinstance(data, dict) or not data:
        return runs, ["not a JSON object of env -> task -> algorithm -> seed_N"]
    for env, tasks in data.items():
        if not isinstance(tasks, dict):
            problems.append(f"'{env}' is not an object of tasks")
            continue
        for task, algorithms in tasks.items():
            if not isinstance(algorithms, dict):
                problems.append(f"'{env}/{task}' is not an object of algorithms")
                continue
            for algorithm, seeds in algorithms.items():
                if not isinstance(seeds, dict):
                    problems.append(f"'{env}/{task}/{algorithm}' is not an object of seeds")
                    continue
                for seed, run_data in seeds.items():
                    where = f"{env}/{task}/{algorithm}/{seed}"
                    if not _SEED_RE.match(str(seed)) or not isinstance(run_data, dict):
                        problems.append(f"'{where}': expected seed_N -> {{step_K: ...}}")
                        continue
                    evaluations: Dict[int, Dict[str, List[float]]] = {}
                    for step, step_data in run_data.items():
                        if step == "absolute_metrics":
                            continue
                        if not _STEP_RE.match(step) or not isinstance(step_data, dict):
                            continue
                        frames = step_data.get("step_count")
                        if isinstance(frames, bool) or not isinstance(frames, (int, float)):
                            continue
                        metrics = {}
                        for name, values in step_data.items():
                            if name == "step_count":
                                continue
                            numbers = _number_list(values)
                            if numbers is not None:
                                metrics[name] = numbers
                        evaluations.setdefault(int(frames), {}).update(metrics)
                    if not evaluations:
                        problems.append(f"'{where}' has no evaluation (step_K with step_count)")
                        continue
                    runs.append(Run(str(env), str(task), str(algorithm), str(seed), evaluations, source))
    return runs, problems


def load_runs(paths: Sequence[PathLike], include_incomplete: Optional[bool] = None) -> LoadResult:
    """Every run in BenchMARL's JSON files under ``paths``, merged.

    Raises :class:`ReportInputError` when there is nothing to report on: no JSON
    file at all, or none in BenchMARL's format (the message gives the reasons).
    The same env/task/algorithm/seed found in two files (a rerun, a copy) is
    kept once: the most recently modified file wins, and a note says so.
    Incomplete runs (:func:`incomplete_reason`) are left out, with a note
    saying how many, unless ``include_incomplete`` (default: False, or True
    inside :func:`including_incomplete`).
    """
    if include_incomplete is None:
        include_incomplete = _INCLUDE_INCOMPLETE.get()
    files = find_json_files(paths)
    where = ", ".join(str(p) for p in paths)
    left_out: List[Tuple[Path, str]] = []
    if not include_incomplete:
        reasons = {file: incomplete_reason(file) for file in files}
        left_out = [(file, why) for file, why in reasons.items() if why is not None]
        files = [file for file, why in reasons.items() if why is None]
        if not files and left_out:
            raise ReportInputError(
                f"only incomplete runs under {where} ({len(left_out)}: {left_out[0][0]}: {left_out[0][1]}"
                + (" ..." if len(left_out) > 1 else "") + "); pass --include-incomplete to report on them anyway.")
    if not files:
        raise ReportInputError(
            f"no JSON results under {where}. BenchMARL writes <run>/<run>.json when "
            "experiment.create_json=true (its default); point this at a run or multirun folder."
        )
    result = LoadResult(runs=[], json_files=files)
    if left_out:
        shown = "; ".join(f"{file}: {why}" for file, why in left_out[:3])
        result.notes.append(
            f"left out {len(left_out)} incomplete run(s) ({shown}" + (" ..." if len(left_out) > 3 else "")
            + "); pass --include-incomplete to include them.")
    parsed: List[Run] = []
    for file in files:
        try:
            with open(file, "r") as f:
                data = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            result.ignored.append((file, f"unreadable JSON ({error.__class__.__name__}: {error})"))
            continue
        runs, problems = parse_results(data, file)
        if not runs:
            result.ignored.append((file, "; ".join(problems[:3]) or "no run in it"))
            continue
        if problems:
            result.notes.append(f"{file}: parts skipped: {'; '.join(problems[:3])}")
        single = len(runs) == 1
        for run in runs:
            if single:
                scalars = file.parent / file.name[: file.name.rindex(".json")] / "scalars"
                run.scalars_dir = scalars if scalars.is_dir() else None
        parsed.extend(runs)
    # an ablation (algorithm=x algorithm.key=value) is a run of x under the same name: name it apart first,
    # so its seeds are neither averaged with x's nor dropped below as duplicates of them
    result.notes.extend(label_variants(parsed))
    by_key: Dict[Tuple[str, str, str, str], Run] = {}
    duplicates: List[str] = []
    for run in parsed:
        previous = by_key.get(run.key)
        if previous is not None:
            newer = run if _mtime(run.source) >= _mtime(previous.source) else previous
            older = previous if newer is run else run
            duplicates.append(f"{'/'.join(run.key)} in {older.source} and {newer.source} (kept the newer)")
            run = newer
        by_key[run.key] = run
    if duplicates:
        result.notes.append(
            f"{len(duplicates)} run(s) found twice, kept once: " + "; ".join(duplicates[:5])
            + (" ..." if len(duplicates) > 5 else "")
        )
    if not by_key:
        reasons = "; ".join(f"{path}: {why}" for path, why in result.ignored[:3])
        raise ReportInputError(
            f"{len(files)} JSON file(s) under {where}, none in BenchMARL's results format "
            f"(env -> task -> algorithm -> seed_N -> step_K -> {{step_count, metric: [...]}}): {reasons}"
        )
    if result.ignored:
        shown = "; ".join(f"{path.name}: {why}" for path, why in result.ignored[:5])
        result.notes.append(
            f"{len(result.ignored)} JSON file(s) ignored (not BenchMARL results): {shown}"
            + (" ..." if len(result.ignored) > 5 else "")
        )
    result.runs = sorted(by_key.values(), key=lambda r: (r.task_id, r.algorithm, seed_sort_key(r.seed)))
    return result


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def read_scalar_steps(path: PathLike, *, finite_only: bool = False) -> Dict[int, float]:
    """``{step: value}`` of a torchrl CSV scalar file (``step,value`` lines).

    A repeated step keeps its latest line (a resumed run appends). Lines that
    do not parse are skipped, and non-finite values with ``finite_only``; an
    unreadable file gives ``{}``.
    """
    out: Dict[int, float] = {}
    try:
        with open(path, "r") as f:
            for line in f:
                parts = line.strip().split(",")
                if len(parts) != 2:
                    continue
                try:
                    step, value = int(float(parts[0])), float(parts[1])
                except ValueError:
                    continue
                if finite_only and not math.isfinite(value):
                    continue
                out[step] = value
    except (OSError, UnicodeDecodeError):
        return {}
    return out


def read_scalar(path: PathLike) -> Optional[Tuple[int, float]]:
    """The last ``(step, value)`` of a torchrl CSV scalar file (``step,value`` lines).

    "Last" is the largest step (a resumed run appends; a repeated step keeps its
    latest line). Lines that do not parse and non-finite values are skipped;
    returns None when nothing is left.
    """
    steps = read_scalar_steps(path, finite_only=True)
    if not steps:
        return None
    last = max(steps)
    return last, steps[last]


def available_metrics(runs: Sequence[Run]) -> List[str]:
    names = set()
    for run in runs:
        names.update(run.metrics())
    return sorted(names)
