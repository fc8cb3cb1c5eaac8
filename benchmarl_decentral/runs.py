"""Run folders, checkpoints and result files that a user can trust.

BenchMARL writes one experiment folder per run, ``<save>/<run>/`` with
``config.pkl`` (the run's configs, pickled from memory), ``checkpoints/``,
``<run>.json`` (the evaluation curve, marl-eval format) and the loggers' files.
This module keeps that layout and fixes how it is read and rewritten, through
hooks on ``Experiment`` that :func:`install` sets (called by
:func:`benchmarl_decentral.register`, so every entry point gets them) and
helpers for the ``benchmarl`` CLI:

* **checkpoints are checked before anything is touched** (:func:`check_checkpoint`):
  an empty, truncated, random or foreign file, or one outside a run folder,
  gives one :class:`CheckpointError` naming the file and the problem, before
  BenchMARL rewrites the run's ``config.pkl`` and logger files;
* **resume continues the curve**: BenchMARL's ``JsonWriter`` starts empty
  and rewrites ``<run>.json`` with the resumed evaluations only. After a
  checkpoint is loaded, the evaluations the run's JSON holds up to the
  checkpoint's frames are put back into the writer (later ones, from the
  interrupted original, are dropped: the resumed run recomputes them), so the
  file stays one curve; and the CSV logger's files, which BenchMARL appends
  to, lose their rows of the iterations from the checkpoint's on when the
  resumed run starts training (:func:`truncate_scalars`), so that every
  iteration is logged once (``benchmarl evaluate`` leaves them as they are);
* **evaluate writes beside the run**: ``Experiment.evaluate()`` writes its
  JSON to ``<run>/evaluations/checkpoint_<frames>.json`` and its CSV logger
  output to ``<run>/evaluations/checkpoint_<frames>/`` instead of the run's
  JSON and CSV files (other loggers, e.g. wandb, are left as they are);
* **resume and evaluate read the checkpoint's own config**
  (:func:`reload_experiment`): ``config.pkl`` of the checkpoint's run
  folder, which BenchMARL pickles from the run's own objects, not hydra's
  ``.hydra`` folder, which two runs sharing an output folder overwrite; and
  any restore whose algorithm, model, task or seed differ from that
  ``config.pkl`` (e.g. ``python -m benchmarl.resume`` after such a collision)
  gets a warning naming the difference (:func:`warn_if_other_config`);
* **unique run folders** (:func:`claim_run_dir`) for ``benchmarl run``:
  created atomically, ``outputs/<date>/<time>`` or, when that exists,
  ``<time>-2``, ``<time>-3`` ...;
* a video writer for renders when torchvision lacks one (:mod:`benchmarl_decentral.video`).

No BenchMARL code is copied: the hooks wrap ``Experiment._setup``,
``_load_experiment``, ``evaluate`` and ``run``, call BenchMARL's method and
act before or after it; :func:`uninstall` restores them.
"""

from __future__ import annotations

import datetime
import functools
import json
import math
import os
import pickle
import zipfile
from pathlib import Path
from typing import Dict, Optional, Tuple

__all__ = [
    "CheckpointError",
    "EVALUATIONS_DIR",
    "check_checkpoint",
    "warn_if_other_config",
    "claim_run_dir",
    "evaluation_file",
    "install",
    "installed",
    "reload_experiment",
    "restore_curve",
    "truncate_scalars",
    "write_atomic",
    "training_started",
    "uninstall",
]

#: Folder of a run where ``evaluate`` writes (one JSON and one CSV folder per evaluated checkpoint);
#: ``reporting.loading`` imports it to skip these files.
EVALUATIONS_DIR = "evaluations"
_MARK = "_benchmarl_decentral_runs_hook"
_ZIP_MAGIC = b"PK\x03\x04"

# (path, size, mtime) of the last checkpoint that passed check_checkpoint: not read again.
_checked: Optional[Tuple[str, int, int, bool]] = None
# Set when an Experiment of this process entered run(): the CLI keeps a failed run's folder then.
_training_started = False


class CheckpointError(ValueError):
    """A file that cannot be resumed or evaluated; the message names the file and the problem."""


# ------------------------------------------------------------------ checkpoints
def _checkpoint_problem(path: Path) -> Optional[str]:
    """Why ``path`` is not a readable BenchMARL checkpoint, or None when it is one."""
    if not path.exists():
        return f"checkpoint file not found: {path}"
    if not path.is_file():
        return f"not a checkpoint file: {path} is a folder; give a <run>/checkpoints/checkpoint_<frames>.pt file"
    size = path.stat().st_size
    if size == 0:
        return f"not a BenchMARL checkpoint: {path} is empty (0 bytes); use another checkpoint of the run"
    with open(path, "rb") as f:
        head = f.read(4)
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive whose index is at the end
        if head == _ZIP_MAGIC:
            return (f"truncated checkpoint: {path} ({size} bytes) ends before the end of its archive "
                    "(the save or a copy was cut short); use another checkpoint of the run")
        return f"not a BenchMARL checkpoint: {path} is not a file written by torch.save"
    import torch

    try:  # mmap: tensors are mapped, not read, so even a large replay buffer costs little here
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # noqa: BLE001  (any failure means: not loadable)
        return (f"not a BenchMARL checkpoint / damaged: {path} cannot be loaded as tensors and plain data "
                f"({type(error).__name__}); use another checkpoint of the run")
    if not isinstance(state, dict) or not isinstance(state.get("state"), dict) \
            or "total_frames" not in state["state"] or not any(str(k).startswith("loss_") for k in state):
        keys = ", ".join(sorted(map(str, state))[:6]) if isinstance(state, dict) else type(state).__name__
        return (f"not a BenchMARL checkpoint: {path} is a torch file without an experiment's state "
                f"(it holds: {keys}); give a checkpoint written by a BenchMARL run")
    part = state.get("benchmarl_decentral_distributed")  # distributed.checkpoint.KEY
    if isinstance(part, dict) and not _in_distributed_rank():
        return (f"{path} is rank {part.get('rank')}'s part of a distributed checkpoint (its rows of the other "
                "ranks' agents are stale); resume it with torchrun --nproc-per-node "
                f"{part.get('world_size')} -m benchmarl_decentral.distributed algorithm={part.get('algorithm')} "
                f"task={part.get('task')} ... experiment.restore_file={path}")
    return None


def _in_distributed_rank() -> bool:
    """Whether the experiment being built is a rank of a distributed run (its transport installed)."""
    from benchmarl_decentral.distributed.transport import current_transport

    return current_transport().name == "torch_distributed"


def check_checkpoint(path: os.PathLike | str, *, need_run_folder: bool = False) -> Path:
    """Check that ``path`` is a BenchMARL checkpoint; return it resolved.

    Reads the file (tensors memory-mapped) without changing anything. With
    ``need_run_folder``, also checks that the run's ``config.pkl`` is at
    ``<path>/../../config.pkl`` (where BenchMARL writes it).

    Raises:
        CheckpointError: missing, empty, truncated, random or foreign file; no run folder.
    """
    global _checked
    path = Path(path).expanduser().resolve()
    key = None
    if path.is_file():
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns, _in_distributed_rank())
    if key is None or key != _checked:
        problem = _checkpoint_problem(path)
        if problem is not None:
            raise CheckpointError(problem)
        _checked = key
    if need_run_folder:
        config = path.parent.parent / "config.pkl"
        if not config.is_file():
            raise CheckpointError(
                f"{path} is not inside a BenchMARL run folder: {config} is missing (BenchMARL writes it in "
                "<run>/, the checkpoint being <run>/checkpoints/checkpoint_<frames>.pt)")
    return path


def _run_configs(config_file: Path) -> dict:
    """What BenchMARL pickled in a run's ``config.pkl`` (``Experiment._setup_name``), by name."""
    names = ("task", "task_config", "algorithm_config", "model_config", "seed", "experiment_config",
             "critic_model_config", "callbacks")
    with open(config_file, "rb") as f:
        return {name: pickle.load(f) for name in names}


def _differs(a, b) -> bool:
    try:
        return bool(a != b)
    except Exception:  # noqa: BLE001  (e.g. arrays inside a config: not comparable as a whole)
        return False


def warn_if_other_config(experiment) -> Optional[str]:
    """Warn when a checkpoint is restored with configs other than those of the run that wrote it.

    Compares the algorithm, model, critic model, task (name and config) and
    seed given to ``experiment`` with the run's ``config.pkl`` (the experiment
    config is not compared: it holds the restore file and a budget a user may
    extend). A difference is either wanted (a user restoring into a changed
    setup from Python) or the mark of a collision: a ``.hydra`` folder that
    another run in the same output folder overwrote, read by
    ``python -m benchmarl.resume|evaluate``. It is never silent: a
    ``UserWarning`` names the first field that differs. Returns the message,
    or None (also when the run has no readable ``config.pkl``).
    """
    import warnings

    config_file = Path(experiment.config.restore_file).resolve().parent.parent / "config.pkl"
    try:
        saved = _run_configs(config_file)
        saved["task"] = saved["task"].name
    except Exception:  # noqa: BLE001  (no run folder, older format: nothing to compare with)
        return None
    given = {"task": experiment.task.name, "task_config": experiment.task.config or {},
             "algorithm_config": experiment.algorithm_config, "model_config": experiment.model_config,
             "critic_model_config": experiment.critic_model_config, "seed": experiment.seed}
    for name, value in given.items():
        if _differs(value, saved[name]):
            message = (
                f"restoring {experiment.config.restore_file} with another {name.replace('_', ' ')} than the run "
                f"that wrote it (run: {saved[name]!r}; now: {value!r}). If you did not mean to change it, the "
                f"config came from a .hydra folder that another run in the same output folder overwrote: "
                f"`benchmarl resume|evaluate FILE` rebuild the run from its own {config_file}.")
            warnings.warn(message, UserWarning, stacklevel=3)
            return message
    return None


def reload_experiment(checkpoint: os.PathLike | str, experiment_patch: Optional[dict] = None):
    """The experiment of ``checkpoint``, built from its own run's ``config.pkl``.

    Unlike BenchMARL's ``benchmarl.resume`` / ``benchmarl.evaluate`` scripts,
    which recompose the config from the ``.hydra`` folder above the run (shared,
    and overwritten, when two runs use the same hydra output folder), this uses
    ``Experiment.reload_from_file``: the configs BenchMARL pickled from the
    run's own objects next to its checkpoints. The checkpoint is checked first
    (:func:`check_checkpoint`), so nothing is written for a bad one.

    ``experiment_patch``: experiment config fields to change (BenchMARL's
    ``reload_from_file`` argument), e.g. ``{"save_folder": tmp, "loggers": [],
    "create_json": False}`` so that nothing is written into the run folder
    (:mod:`benchmarl_decentral.reporting.reevaluation`).

    Raises:
        CheckpointError: bad checkpoint, no run folder, unreadable ``config.pkl``.
    """
    from benchmarl.experiment import Experiment

    path = check_checkpoint(checkpoint, need_run_folder=True)
    config = path.parent.parent / "config.pkl"
    try:
        _run_configs(config)
    except Exception as error:  # noqa: BLE001
        raise CheckpointError(f"cannot read the run's config {config} ({type(error).__name__}: {error}); "
                              "it must be the config.pkl BenchMARL wrote for this run") from None
    return Experiment.reload_from_file(str(path), experiment_patch)


# ------------------------------------------------------------------ run folders
def claim_run_dir(root: os.PathLike | str = "outputs", *, now: Optional[datetime.datetime] = None) -> Path:
    """Create and return a new folder ``root/<date>/<time>`` (``<time>-2``, ``-3`` ... when taken).

    The folder is made with ``mkdir`` (atomic: it fails if the folder exists),
    so two processes started in the same second never get the same one, and
    a folder of an earlier run is never reused. Same names as hydra's default
    ``outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}`` otherwise.
    """
    now = now or datetime.datetime.now()
    parent = Path(root) / now.strftime("%Y-%m-%d")
    stem = now.strftime("%H-%M-%S")
    attempt = 1
    while attempt < 10_000:
        candidate = parent / (stem if attempt == 1 else f"{stem}-{attempt}")
        try:
            candidate.mkdir()
        except FileExistsError:
            attempt += 1
            continue
        except FileNotFoundError:  # no <date> folder yet (or a refused run just removed its empty one)
            parent.mkdir(parents=True, exist_ok=True)
            continue
        return candidate
    raise RuntimeError(f"no free run folder for {parent / stem}")


def training_started() -> bool:
    """Whether an ``Experiment`` of this process has entered ``run()``."""
    return _training_started


# ------------------------------------------------------------------ result files
def evaluation_file(experiment) -> Path:
    """``<run>/evaluations/checkpoint_<frames>.json``: where ``evaluate()`` writes its results."""
    return Path(experiment.folder_name) / EVALUATIONS_DIR / f"checkpoint_{int(experiment.total_frames)}.json"


def _run_data_of(data: dict, writer) -> Optional[dict]:
    """The ``seed_N`` entry of a marl-eval dict at the same env/task/algorithm/seed as ``writer``."""
    ((env, tasks),) = writer.data.items()
    ((task, algorithms),) = tasks.items()
    ((algorithm, seeds),) = algorithms.items()
    ((seed, _),) = seeds.items()
    try:
        found = data[env][task][algorithm][seed]
    except (KeyError, TypeError):
        return None
    return found if isinstance(found, dict) else None


def restore_curve(experiment) -> int:
    """Put the evaluations of the run's JSON up to the loaded checkpoint back into its JSON writer.

    Returns the number of evaluations kept. Nothing is written here; BenchMARL's
    writer writes the whole curve at the next evaluation.
    """
    logger = getattr(experiment, "logger", None)
    writer = getattr(logger, "json_writer", None)
    if writer is None or not Path(writer.path).is_file():
        return 0
    try:
        with open(writer.path) as f:
            old = _run_data_of(json.load(f), writer)
    except (OSError, ValueError):
        return 0
    if not old:
        return 0
    frames = int(experiment.total_frames)
    kept: Dict[str, dict] = {}
    for step, values in old.items():
        if step.startswith("step_") and isinstance(values, dict) \
                and isinstance(values.get("step_count"), (int, float)) and values["step_count"] <= frames:
            kept[step] = values
    best: Dict[str, list] = {}
    for values in kept.values():
        for name, episodes in values.items():
            finite = [v for v in episodes if isinstance(v, (int, float)) and math.isfinite(v)] \
                if isinstance(episodes, list) else []
            if name != "step_count" and finite:
                best[name] = [max(finite + best.get(name, []))]
    writer.run_data.clear()
    writer.run_data["absolute_metrics"] = best
    writer.run_data.update(sorted(kept.items(), key=lambda item: item[1]["step_count"]))
    return len(kept)


def write_atomic(path: Path, write) -> None:
    """Write ``path`` through ``write(f)`` on a temporary file, then rename it: a file that exists is whole."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def truncate_scalars(experiment) -> int:
    """Drop the CSV rows of iterations at or after the loaded checkpoint's ``n_iters_performed``.

    BenchMARL's CSV logger appends to the run's ``scalars/*.csv``; an
    interrupted run may have logged iterations after its last checkpoint
    (part of the next one, if it died), which the resumed run logs again.
    Run before the resumed run logs anything (files rewritten atomically);
    the ``run`` hook of :func:`install` does, for single-process and
    distributed resumes alike. Returns the number of rows dropped.
    """
    from torchrl.record.loggers.csv import CSVLogger

    n_iters = int(experiment.n_iters_performed)
    dropped = 0
    for logger in experiment.logger.loggers:
        if not isinstance(logger, CSVLogger):
            continue
        for path in sorted((Path(logger.experiment.log_dir) / "scalars").glob("*.csv")):
            lines = path.read_text().splitlines(keepends=True)
            kept = [line for line in lines if line.strip() and float(line.split(",", 1)[0]) < n_iters]
            if len(kept) != len(lines):
                dropped += len(lines) - len(kept)
                write_atomic(path, lambda f, text="".join(kept): f.write(text.encode()))
    return dropped


def _evaluate_beside(experiment, original) -> Path:
    """Run BenchMARL's ``evaluate`` with the JSON writer and CSV loggers pointed at ``evaluations/``."""
    from benchmarl.experiment.logger import JsonWriter
    from torchrl.record.loggers.csv import CSVLogger

    logger = experiment.logger
    target = evaluation_file(experiment)
    saved_writer, saved_loggers = logger.json_writer, list(logger.loggers)
    if saved_writer is None and not any(isinstance(item, CSVLogger) for item in saved_loggers):
        original(experiment)  # nothing of the run's own would be written
        return target
    target.parent.mkdir(exist_ok=True)
    if saved_writer is not None:
        logger.json_writer = JsonWriter(
            folder=str(target.parent), name=target.name, algorithm_name=experiment.algorithm_name,
            task_name=experiment.task_name, environment_name=experiment.environment_name, seed=experiment.seed)
    logger.loggers = [
        CSVLogger(log_dir=str(target.parent), exp_name=target.stem, video_format="mp4")
        if isinstance(item, CSVLogger) else item
        for item in saved_loggers
    ]
    try:
        original(experiment)
    finally:
        logger.json_writer, logger.loggers = saved_writer, saved_loggers
    where = [str(target)] if saved_writer is not None else []
    if any(isinstance(item, CSVLogger) for item in saved_loggers):
        where.append(str(target.with_suffix("")) + os.sep)
    if where:
        print(f"Evaluation of {int(experiment.total_frames)} frames written to {' and '.join(where)} "
              "(the run's own results are unchanged).")
    return target


# ------------------------------------------------------------------ hooks
def installed() -> bool:
    """Whether the ``Experiment`` hooks of this module are set."""
    from benchmarl.experiment import Experiment

    return getattr(Experiment.evaluate, _MARK, False)


def install() -> None:
    """Wrap ``Experiment._setup``, ``_load_experiment``, ``evaluate`` and ``run`` (idempotent)."""
    from benchmarl.experiment import Experiment

    if installed():
        return
    setup, load, evaluate, run = (Experiment._setup, Experiment._load_experiment, Experiment.evaluate,
                                  Experiment.run)

    @functools.wraps(setup)
    def _setup(self, *args, **kwargs):
        if self.config.restore_file is not None:  # before config.pkl and the loggers' files are rewritten
            check_checkpoint(self.config.restore_file)
            warn_if_other_config(self)
        if self.config.render and "csv" in (self.config.loggers or []):
            from benchmarl_decentral import video

            video.install()
        return setup(self, *args, **kwargs)

    @functools.wraps(load)
    def _load_experiment(self, *args, **kwargs):
        result = load(self, *args, **kwargs)
        restore_curve(self)
        return result

    @functools.wraps(evaluate)
    def _evaluate(self, *args, **kwargs):
        return _evaluate_beside(self, lambda experiment: evaluate(experiment, *args, **kwargs))

    @functools.wraps(run)
    def _run(self, *args, **kwargs):
        global _training_started
        _training_started = True
        if self.config.restore_file is not None:  # the interrupted original's rows after the checkpoint
            truncate_scalars(self)
        return run(self, *args, **kwargs)

    for name, wrapper, original in (("_setup", _setup, setup), ("_load_experiment", _load_experiment, load),
                                    ("run", _run, run), ("evaluate", _evaluate, evaluate)):
        setattr(wrapper, _MARK, True)
        wrapper.__wrapped_original__ = original
        setattr(Experiment, name, wrapper)


def uninstall() -> None:
    """Restore BenchMARL's methods."""
    from benchmarl.experiment import Experiment

    if not installed():
        return
    for name in ("_setup", "_load_experiment", "run", "evaluate"):
        method = getattr(Experiment, name)
        if getattr(method, _MARK, False):
            setattr(Experiment, name, method.__wrapped_original__)
