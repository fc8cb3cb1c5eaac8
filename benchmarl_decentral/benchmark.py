"""``benchmarl benchmark``: algorithms x tasks x seeds as one resumable hydra multirun.

The sweep is a hydra multirun of BenchMARL's run app: BenchMARL's own config
(``pkg://benchmarl.conf``, ``config.yaml``; our algorithms, models and tasks
join it through the ``hydra_plugins/benchmarl_decentral`` SearchPathPlugin),
hydra's basic sweeper (the cartesian product of the comma-separated values),
and the launcher chosen on the command line (:data:`LAUNCHERS`). The one
difference from ``python -m benchmarl.run -m`` is the task function,
:func:`run_job`: it does what BenchMARL's ``hydra_experiment`` does
(``load_experiment_from_hydra(cfg, task_name).run()``) inside a wrapper that

- records the outcome of the run in ``status.yaml`` in the run folder, and the
  traceback in ``error.txt`` when it failed;
- never lets a failed run stop the sweep: the error is printed and recorded
  and the function returns normally. (With a raising task function, hydra
  1.3's basic sweeper finishes the batch, then raises the first failure only:
  the other errors are not reported, the exit status hides which runs
  finished, and with ``hydra.sweeper.max_batch_size`` later batches never start.);
- skips runs that already finished, so that running the same command again
  resumes the sweep;
- prints the overall progress (runs done / runs to do) after each run, next to
  BenchMARL's per-run tqdm bar.

The task function lives in this module, so every worker a launcher starts
(loky processes for joblib, Slurm jobs for submitit, Ray actors) imports
``benchmarl_decentral`` when it unpickles the function, which registers our
algorithms, models and tasks in that process before the job's config is composed.

Folder layout (``--out DIR``)::

    DIR/benchmark.yaml             the plan of the latest invocation (command, jobs, what was run)
    DIR/multirun.yaml              hydra's sweep config
    DIR/<env>/<task>/<algorithm>/<swept overrides, seed=N>/    one run = one hydra job folder
        .hydra/                    hydra's config.yaml, hydra.yaml, overrides.yaml
        benchmark.log              hydra's job log
        status.yaml                state: running | finished | failed | interrupted, overrides, timings
        run.lock                   while the run runs: the pid, host and sweep running it
        error.txt                  traceback of a failed run
        <alg>_<task>_<model>__<id>_<date>/        BenchMARL's experiment folder
            <same name>.json       BenchMARL's evaluation results (read by ``benchmarl report``)
            <same name>/scalars/   csv logger

The run folder is named after the task, the algorithm and every override that
varies within the sweep (hydra's ``override_dirname``), the seed always
included, and in a sweep of one algorithm its ``algorithm.*`` settings too:
``vmas/balance/decpg/seed=0``, ``vmas/balance/decpg/algorithm.k=1,seed=0``.
So an ablation run later into the same ``--out`` (``algorithm=decpg
algorithm.k=0``) lands beside the default runs, not on them.

A run is *finished* when its ``status.yaml`` says ``finished`` (written only
after BenchMARL's ``Experiment.run()`` returned: every iteration done, the last
evaluation and checkpoint written) and the BenchMARL JSON it names exists. A
rerun skips finished runs whose overrides are the same and runs every other
one again (failed, interrupted, never started). Before a run starts again, the
JSON files of its earlier attempts are renamed ``*.json.incomplete``; a run
that fails has its JSON renamed the same way, so ``benchmarl report DIR`` reads
finished runs only.

Concurrent and killed sweeps: a run holds ``run.lock`` (created atomically:
pid, host, sweep id) while it runs. A second sweep on the same ``--out``
skips a run whose lock is held by a live process and says so (planned as
``busy``, or found locked when its turn comes); a lock left by a dead process
on this host (a run killed with SIGKILL) is taken over. SIGTERM and SIGINT
(Ctrl-C) during a run mark it ``interrupted`` in ``status.yaml`` (with the
signal), hide its JSON and release the lock before the sweep stops; ``benchmarl
report`` leaves out runs whose status is not ``finished`` unless asked
(``--include-incomplete``).
"""

from __future__ import annotations

import contextlib
import datetime
import difflib
import fcntl
import importlib.util
import itertools
import os
import platform
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import yaml

#: Name of the per-run status file and of the plan file.
STATUS_FILE = "status.yaml"
ERROR_FILE = "error.txt"
PLAN_FILE = "benchmark.yaml"
LOCK_FILE = "run.lock"
#: Suffix given to the BenchMARL JSON of a run that did not finish.
INCOMPLETE_SUFFIX = ".incomplete"

#: Run folder below ``--out``: task, algorithm, then the overrides that vary within the sweep.
SUBDIR = "${hydra.runtime.choices.task}/${hydra.runtime.choices.algorithm}/${hydra.job.override_dirname}"


@dataclass(frozen=True)
class Launcher:
    """A hydra launcher selectable with ``--launcher``."""

    hydra_name: Optional[str]  # hydra/launcher=<this>; None keeps hydra's basic launcher
    plugin_module: Optional[str]  # module that must be importable (the hydra plugin)
    install: Optional[str]  # how to get the plugin
    jobs_key: Optional[str]  # hydra override set by --jobs (None: --jobs not supported)
    about: str


_LAUNCHERS_EXTRA = 'pip install "benchmarl-decentral[launchers]"'

LAUNCHERS: Dict[str, Launcher] = {
    "sequential": Launcher(None, None, None, None, "hydra's basic launcher: one run after the other, in this process"),
    "joblib": Launcher("joblib", "hydra_plugins.hydra_joblib_launcher", _LAUNCHERS_EXTRA, "hydra.launcher.n_jobs",
                       "local parallel runs in loky worker processes (hydra-joblib-launcher); --jobs N at a time"),
    "submitit_local": Launcher("submitit_local", "hydra_plugins.hydra_submitit_launcher", _LAUNCHERS_EXTRA, None,
                               "every run as a local submitit job, all at once (hydra-submitit-launcher)"),
    "submitit_slurm": Launcher("submitit_slurm", "hydra_plugins.hydra_submitit_launcher", _LAUNCHERS_EXTRA,
                               "hydra.launcher.array_parallelism",
                               "a Slurm job array (hydra-submitit-launcher); --jobs N running at a time; "
                               "partition, time etc. as hydra.launcher.* overrides"),
    "ray": Launcher("ray", "hydra_plugins.hydra_ray_launcher",
                    "pip install hydra-ray-launcher (not in our extras: it pins cloudpickle<3 and pulls in ray "
                    "and boto3)", None, "a Ray cluster (hydra-ray-launcher); resources as hydra.launcher.* overrides"),
}

# Overrides benchmark sets itself: the user may not change them.
_RESERVED_HYDRA = ("hydra.sweep.dir", "hydra.sweep.subdir", "hydra.job.config.override_dirname", "hydra/launcher",
                   "hydra/sweeper", "hydra.sweeper")
_RESERVED_EXPERIMENT = {
    "experiment.save_folder": "the run folders are laid out by benchmark under --out",
    "experiment.restore_file": "benchmark starts runs fresh; to go on with a sweep, run the same command again",
}
# Defaults that differ from `benchmarl run` (the user may override them).
DEFAULT_OVERRIDES = {
    "seed": "0",  # so that every run folder names its seed
    "experiment.loggers": "[csv]",  # BenchMARL's default [csv,wandb] needs a wandb account; csv feeds the report
    "experiment.render": "false",  # no videos in a sweep (VMAS rendering needs a display)
    "experiment.create_json": "true",  # the results `benchmarl report` reads
}


class BenchmarkError(ValueError):
    """Input that cannot give a sweep; the message is for the user as is (the CLI exits with 2)."""


@dataclass
class Job:
    """One run of the sweep."""

    overrides: List[str]  # the job's overrides (hydra.overrides.task), in the sweep's order
    dir: str  # run folder relative to the sweep folder
    algorithm: str
    task: str
    seed: str
    status: Optional[dict] = None  # status.yaml before this invocation
    action: str = "run"  # "run", "skip" (already finished) or "busy" (running in another sweep)
    holder: Optional[dict] = None  # the lock's holder, for a busy run

    @property
    def label(self) -> str:
        return self.dir


@dataclass
class Plan:
    """What an invocation of ``benchmarl benchmark`` will do (nothing has run yet)."""

    out: Path
    launcher: str
    jobs_limit: Optional[int]
    user_overrides: List[str]  # sweep overrides of the run config (defaults added)
    hydra_overrides: List[str]  # hydra.* overrides (launcher, sweep dir ...)
    jobs: List[Job]
    command: str
    sweep_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    @property
    def to_run(self) -> List[Job]:
        return [job for job in self.jobs if job.action == "run"]

    @property
    def skipped(self) -> List[Job]:
        return [job for job in self.jobs if job.action == "skip"]

    @property
    def busy(self) -> List[Job]:
        return [job for job in self.jobs if job.action == "busy"]


@dataclass
class Outcome:
    """What happened to the jobs of a plan, read back from their status files."""

    finished: List[Job]
    already_finished: List[Job]
    failed: List[Tuple[Job, str]]  # (job, error line)
    not_run: List[Tuple[Job, str]]  # (job, why: no status / interrupted / still marked running)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.not_run


# ----------------------------------------------------------------- planning
def _parse(overrides: Sequence[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException as error:
        raise BenchmarkError(f"cannot parse the overrides: {error}") from None


def _values(override) -> List[str]:
    """The values of one parsed override as ``key=value`` strings (several for a sweep)."""
    key = override.get_key_element()
    if override.is_delete() and override.value() is None:
        return [key]
    if override.is_sweep_override():
        if not override.is_discrete_sweep():
            raise BenchmarkError(
                f"'{override.input_line}': only lists of values (a,b,c), choice(...) and range(...) can be swept.")
        return [f"{key}={value}" for value in override.sweep_string_iterator()]
    return [f"{key}={override.get_value_element_as_str()}"]


def expand(overrides: Sequence[str]) -> Tuple[List[List[str]], Dict[str, List[str]]]:
    """The jobs of a sweep, as hydra's basic sweeper builds them.

    Returns (jobs, values): ``jobs`` are the cartesian product of the values of
    every key, keys in the order given (the last of a repeated key wins), each
    job a list of ``key=value`` overrides; ``values`` maps each key
    (``key_or_group``, e.g. ``algorithm``) to its values.
    """
    per_key: Dict[str, List[str]] = {}
    names: Dict[str, List[str]] = {}
    for override in _parse(overrides):
        per_key[override.get_key_element()] = _values(override)
        names[override.key_or_group] = [line.split("=", 1)[-1] for line in per_key[override.get_key_element()]]
    jobs = [list(combo) for combo in itertools.product(*per_key.values())]
    return jobs, names


def _split(overrides: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(run-config overrides, hydra.* overrides); reserved keys raise BenchmarkError."""
    run, hydra_ = [], []
    for line in overrides:
        key = line.lstrip("+~").split("=", 1)[0]
        if key in ("-m", "--multirun"):
            continue
        if key.startswith("-"):
            raise BenchmarkError(f"unknown option '{line}' (hydra's own flags such as --cfg are not supported here; "
                                 "see `benchmarl benchmark --help`).")
        if "=" not in line and not line.startswith("~"):
            raise BenchmarkError(f"'{line}' is not an override: expected key=value (e.g. algorithm=mappo).")
        if key == "hydra" or key.startswith(("hydra.", "hydra/")):
            for reserved in _RESERVED_HYDRA:
                if key == reserved or key.startswith(reserved + "."):
                    raise BenchmarkError(
                        f"'{line}': benchmark sets {reserved} itself; use --out DIR for the folder and "
                        "--launcher NAME for the launcher.")
            hydra_.append(line)
        else:
            if key in _RESERVED_EXPERIMENT:
                raise BenchmarkError(f"'{line}': {_RESERVED_EXPERIMENT[key]}.")
            run.append(line)
    return run, hydra_


def _check_names(values: Dict[str, List[str]]) -> None:
    import benchmarl_decentral  # noqa: F401  (registers our algorithms, models and tasks)
    from benchmarl.algorithms import algorithm_config_registry
    from benchmarl.environments import task_config_registry

    for key, registry, what in (("algorithm", algorithm_config_registry, "algorithm"),
                                ("task", task_config_registry, "task")):
        if key not in values:
            example = "algorithm=mappo,decpg" if key == "algorithm" else "task=vmas/balance"
            raise BenchmarkError(f"no {key} given: add {key}=NAME (several: {example}); `benchmarl list` shows them.")
        unknown = [name for name in values[key] if name not in registry]
        if unknown:
            if key == "algorithm":
                hint = f"available: {', '.join(sorted(registry))}"
            else:  # 100+ tasks: suggest the closest names only
                close = sorted({c for n in unknown for c in difflib.get_close_matches(n, list(registry), n=3)})
                hint = f"did you mean {', '.join(close)}?" if close else "no similar name is registered"
            raise BenchmarkError(
                f"unknown {what}{'s' if len(unknown) > 1 else ''} {', '.join(repr(n) for n in unknown)}; "
                f"{hint} (`benchmarl list {what}s` lists them all).")


def check_launcher(name: str, jobs: Optional[int]) -> Launcher:
    """The launcher called ``name``; BenchmarkError when unknown, not installed, or --jobs does not apply."""
    if name not in LAUNCHERS:
        raise BenchmarkError(f"unknown launcher '{name}'; choose one of {', '.join(LAUNCHERS)}.")
    launcher = LAUNCHERS[name]
    if launcher.plugin_module is not None and importlib.util.find_spec(launcher.plugin_module) is None:
        raise BenchmarkError(f"the {name} launcher needs hydra's plugin {launcher.plugin_module.split('.')[-1]}, "
                             f"which is not installed: {launcher.install}")
    if jobs is not None:
        if jobs < 1:
            raise BenchmarkError(f"--jobs must be at least 1, got {jobs}.")
        if launcher.jobs_key is None and not (name == "sequential" and jobs == 1):
            raise BenchmarkError(
                f"--jobs does not apply to the {name} launcher"
                + (" (it runs one job at a time): use --launcher joblib --jobs N for parallel local runs."
                   if name == "sequential" else "; set its resources with hydra.launcher.* overrides."))
    return launcher


def _force_under_swept_groups(overrides: List[str], values: Dict[str, List[str]]) -> List[str]:
    """``task.x=v`` -> ``++task.x=v`` when ``task`` itself is swept (same for algorithm, model, critic_model).

    Hydra composes a multirun's master config without the config groups that
    are swept and have no default (``algorithm``, ``task`` in BenchMARL's
    config), so a plain override of a field inside them fails there ("Key
    'task' is not in struct"), before any job starts. ``++`` (add or override)
    passes the master config and sets the field in every job. It would also
    add a misspelt key silently, so every job has been composed with the
    plain overrides first (:func:`_compose`), which rejects unknown keys.
    """
    swept = [group for group in ("algorithm", "task", "model", "critic_model") if len(values.get(group, [])) > 1]
    forced = []
    for line in overrides:
        if not line.startswith(("+", "~")) and any(line.startswith(group + ".") for group in swept):
            line = "++" + line
        forced.append(line)
    return forced


def _hydra_overrides(out: Path, launcher: Launcher, jobs: Optional[int], fixed_keys: Sequence[str],
                     user_hydra: Sequence[str]) -> List[str]:
    exclude = ",".join(repr(k) for k in fixed_keys)
    overrides = [f"hydra.sweep.dir={_quote(str(out))}", f"hydra.sweep.subdir='{SUBDIR}'",
                 f"hydra.job.config.override_dirname.exclude_keys=[{exclude}]"]
    if launcher.hydra_name is not None:
        overrides.append(f"hydra/launcher={launcher.hydra_name}")
    if jobs is not None and launcher.jobs_key is not None:
        overrides.append(f"{launcher.jobs_key}={jobs}")
    return overrides + list(user_hydra)


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _compose(jobs: List[List[str]], hydra_overrides: List[str]) -> List[str]:
    """Compose every job's config (as the sweeper will) and return its run folder.

    Catches unknown keys, wrong types and missing YAML before anything runs.
    """
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    dirs = []
    with initialize_config_module(config_module="benchmarl.conf", version_base=None):
        for overrides in jobs:
            try:
                cfg = compose("config", overrides=overrides + hydra_overrides, return_hydra_config=True)
                subdir = str(OmegaConf.select(cfg, "hydra.sweep.subdir"))
            except (HydraException, OmegaConfBaseException, ValueError) as error:
                message = str(error).strip().splitlines()
                raise BenchmarkError(f"bad config for the run {' '.join(overrides)}: "
                                     + " ".join(m.strip() for m in message if m.strip())) from None
            evaluation = OmegaConf.select(cfg, "experiment.evaluation")
            if evaluation is False:
                raise BenchmarkError("experiment.evaluation=false: the runs would write no results for "
                                     "`benchmarl report`; leave evaluation on (set experiment.evaluation_interval).")
            if OmegaConf.select(cfg, "experiment.create_json") is False:
                raise BenchmarkError("experiment.create_json=false: benchmark needs BenchMARL's JSON results "
                                     "(`benchmarl report` reads them).")
            dirs.append(os.path.normpath(subdir))
    return dirs


def plan_benchmark(overrides: Sequence[str], *, out: os.PathLike | str = "benchmark", launcher: str = "sequential",
                   jobs: Optional[int] = None, command: Optional[str] = None) -> Plan:
    """Check the input, expand the sweep and decide, run by run, what to do. Nothing runs.

    Raises BenchmarkError (one message naming the problem and the fix) on bad input:
    unknown algorithm / task / launcher, launcher plugin not installed, reserved
    overrides, configs that do not compose, finished runs with other settings.
    """
    chosen = check_launcher(launcher, jobs)
    run_overrides, user_hydra = _split(overrides)
    given = {o.key_or_group for o in _parse(run_overrides)} if run_overrides else set()
    run_overrides = run_overrides + [f"{k}={v}" for k, v in DEFAULT_OVERRIDES.items() if k not in given]
    checked_jobs, values = expand(run_overrides)
    _check_names(values)
    # Folder names show what varies and the seed; a sweep of one algorithm also shows its algorithm.*
    # settings, so an ablation (algorithm=x algorithm.key=v) gets its own folders beside x's runs in the
    # same --out. Other fixed overrides are recorded in status.yaml.
    one_algorithm = len(values.get("algorithm", [])) <= 1
    fixed = [key for key, vals in values.items()
             if len(vals) == 1 and key != "seed" and not (one_algorithm and key.startswith("algorithm."))]
    out = Path(out).resolve()
    hydra_overrides = _hydra_overrides(out, chosen, jobs, sorted(set(fixed) | {"algorithm", "task"}), user_hydra)
    dirs = _compose(checked_jobs, hydra_overrides)
    forced = _force_under_swept_groups(run_overrides, values)
    if forced != run_overrides:  # the run folders are named from the overrides hydra will see
        run_overrides = forced
        dirs = _compose(expand(run_overrides)[0], hydra_overrides)
    job_overrides, _ = expand(run_overrides)
    if len(set(dirs)) != len(dirs):  # two jobs would share a folder (cannot happen with distinct overrides)
        raise BenchmarkError("two runs of the sweep map to the same folder; remove repeated values.")
    plan_jobs = []
    for job_lines, subdir in zip(job_overrides, dirs):
        value = {line.split("=", 1)[0].lstrip("+~"): line.split("=", 1)[-1] for line in job_lines}
        job = Job(job_lines, subdir, value["algorithm"], value["task"], value.get("seed", "0"))
        job.status = read_status(out / subdir)
        if is_finished(out / subdir, job.status):
            if sorted(job.status.get("overrides", [])) != sorted(job_lines):
                raise BenchmarkError(
                    f"{out / subdir} holds a finished run made with other settings:\n"
                    f"  then: {' '.join(job.status.get('overrides', []))}\n  now:  {' '.join(job_lines)}\n"
                    "Use another --out folder, or delete that run folder to run it again with the new settings.")
            job.action = "skip"
        else:
            job.holder = lock_holder(out / subdir)
            if job.holder is not None:
                job.action = "busy"
        plan_jobs.append(job)
    return Plan(out=out, launcher=launcher, jobs_limit=jobs, user_overrides=run_overrides,
                hydra_overrides=hydra_overrides, jobs=plan_jobs,
                command=command or " ".join(["benchmarl", "benchmark", *overrides]))


# ------------------------------------------------------------ status files
def read_status(run_dir: Path) -> Optional[dict]:
    try:
        with open(run_dir / STATUS_FILE) as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def is_finished(run_dir: Path, status: Optional[dict]) -> bool:
    """``status.yaml`` says finished and the BenchMARL JSON it names is there."""
    return bool(status) and status.get("state") == "finished" and bool(status.get("json")) \
        and (run_dir / status["json"]).is_file()


# ------------------------------------------------------------------ run locks
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def lock_holder(run_dir: Path) -> Optional[dict]:
    """Who holds ``run_dir``'s lock (pid, host, sweep_id, started), or None when it is free or stale.

    Stale: written by a process of this host that no longer runs. A lock from
    another host cannot be checked and counts as held.
    """
    try:
        with open(Path(run_dir) / LOCK_FILE) as f:
            holder = yaml.safe_load(f)
    except FileNotFoundError:
        return None
    except (OSError, yaml.YAMLError):
        holder = None
    if not isinstance(holder, dict):
        return {"pid": None, "host": None, "note": "unreadable lock file"}
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int) \
            and not _alive(holder["pid"]):
        return None
    return holder


def describe_holder(holder: dict) -> str:
    text = (f"pid {holder.get('pid')} on {holder.get('host')}"
            + (f", sweep {holder['sweep_id']}" if holder.get("sweep_id") else "")
            + (f", since {holder['started']}" if holder.get("started") else ""))
    if holder.get("host") != socket.gethostname():  # e.g. a Slurm node: its process cannot be checked from here
        text += f"; if it no longer runs there, delete its {LOCK_FILE}"
    return text


@contextlib.contextmanager
def _takeover_guard(path: Path):
    """Hold an exclusive ``flock`` on ``<lock>.guard`` (one process of this host at a time)."""
    fd = os.open(path.with_name(path.name + ".guard"), os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def acquire_lock(run_dir: Path, sweep_id: Optional[str] = None) -> Optional[dict]:
    """Take ``run_dir``'s lock for this process; None when taken, else the live holder.

    The lock file is created with ``O_EXCL`` (atomic). A stale one (only a
    lock of this host can be stale) is removed under :func:`_takeover_guard`
    after checking again that it is still stale, so two processes that both
    saw it stale cannot both remove it, the second one another's new live lock.
    """
    path = Path(run_dir) / LOCK_FILE
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "sweep_id": sweep_id, "started": _now()}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = lock_holder(run_dir)
            if holder is not None:
                return holder
            with _takeover_guard(path):
                if lock_holder(run_dir) is None:  # still stale (or gone): nobody took it meanwhile
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
            continue
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(mine, f, sort_keys=False)
        return None
    return lock_holder(run_dir) or {"pid": None, "host": None, "note": "could not take the lock"}


def release_lock(run_dir: Path) -> None:
    """Remove ``run_dir``'s lock if this process holds it."""
    path = Path(run_dir) / LOCK_FILE
    try:
        with open(path) as f:
            holder = yaml.safe_load(f)
        if isinstance(holder, dict) and holder.get("pid") == os.getpid() \
                and holder.get("host") == socket.gethostname():
            path.unlink()
    except (OSError, yaml.YAMLError):
        pass


class RunInterrupted(KeyboardInterrupt):
    """Raised in a run by SIGTERM (SIGINT raises KeyboardInterrupt itself)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


#: the SIGTERM received by the run of this process, if any (see :func:`_raise_interrupted`)
_received_signal: Optional[int] = None


def _raise_interrupted(signum, frame):  # noqa: ARG001  (signal handler signature)
    """SIGTERM: remember it, then raise :class:`RunInterrupted` where the main thread is.

    The exception can land in code that swallows it: a finaliser (``__del__``,
    a weakref callback) prints "Exception ignored" and goes on. The flag makes
    the run stop anyway, at its next iteration (:class:`_StopOnSignal`) or when
    ``experiment.run()`` returns.
    """
    global _received_signal
    _received_signal = signum
    raise RunInterrupted(signum)


def _raise_if_signalled() -> None:
    if _received_signal is not None:
        raise RunInterrupted(_received_signal)


class _StopOnSignal:
    """Raises :class:`RunInterrupted` after every batch, training step and evaluation once a SIGTERM was
    received (its first exception may have been swallowed where it landed).

    A BenchMARL callback (``Experiment.callbacks`` calls these methods and sets ``experiment``); it
    implements the interface of ``benchmarl.experiment.callback.Callback`` without importing BenchMARL
    here, and lives at module level so that it pickles.
    """

    experiment = None

    def on_setup(self):
        pass

    def on_load_state_dict(self, state_dict):
        pass

    def on_batch_collected(self, batch):
        _raise_if_signalled()

    def on_train_step(self, batch, group):
        return None

    def on_train_end(self, training_td, group):
        _raise_if_signalled()

    def on_evaluation_end(self, rollouts):
        _raise_if_signalled()

    def on_state_dict(self, state_dict):
        pass


def _write_yaml(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False, default_flow_style=False, width=1000)
    os.replace(tmp, path)


def _hide_results(run_dir: Path) -> List[str]:
    """Rename the BenchMARL JSON files under ``run_dir`` to ``*.json.incomplete`` (not read by the report)."""
    hidden = []
    for json_file in run_dir.glob("*/*.json"):
        if json_file.parent.name == json_file.stem:  # <run>/<run>.json, BenchMARL's JsonWriter
            json_file.rename(json_file.with_name(json_file.name + INCOMPLETE_SUFFIX))
            hidden.append(str(json_file.relative_to(run_dir)))
    return hidden


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def write_plan(plan: Plan) -> Path:
    plan.out.mkdir(parents=True, exist_ok=True)
    data = {
        "command": plan.command,
        "sweep_id": plan.sweep_id,
        "started": _now(),
        "driver_pid": os.getpid(),
        "host": socket.gethostname(),
        "launcher": plan.launcher,
        "jobs_limit": plan.jobs_limit,
        "overrides": plan.user_overrides,
        "hydra_overrides": plan.hydra_overrides,
        "runs": len(plan.jobs),
        "to_run": [job.dir for job in plan.to_run],
        "already_finished": [job.dir for job in plan.skipped],
        "busy": [job.dir for job in plan.busy],
        "jobs": [{"dir": job.dir, "overrides": job.overrides} for job in plan.jobs],
    }
    path = plan.out / PLAN_FILE
    _write_yaml(path, data)
    return path


# ------------------------------------------------------------ the task function
def _progress(sweep_dir: Path, plan: Optional[dict]) -> str:
    if not plan:
        return ""
    done = failed = 0
    for run in plan.get("to_run", []):
        status = read_status(sweep_dir / run)
        if status and status.get("sweep_id") == plan.get("sweep_id"):
            if status.get("state") == "finished":
                done += 1
            elif status.get("state") in ("failed", "interrupted"):
                failed += 1
    total = len(plan.get("to_run", []))
    return f"{done + failed}/{total} runs done ({done} finished, {failed} failed)"


def run_job(cfg) -> dict:
    """Hydra task function of the sweep: one BenchMARL run, recorded in ``status.yaml``.

    Equivalent to BenchMARL's ``benchmarl.run.hydra_experiment`` (it loads the
    experiment with ``load_experiment_from_hydra`` and runs it), except that an
    exception is recorded and reported instead of raised, and a run the plan
    marks as finished is skipped. Returns ``{"state": ...}``.
    """
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    import benchmarl_decentral  # noqa: F401  (registers our algorithms, models and tasks in this process)

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    sweep_dir = Path(str(hydra_cfg.sweep.dir))
    label = os.path.relpath(run_dir, sweep_dir)
    overrides = list(OmegaConf.to_container(hydra_cfg.overrides.task))
    try:
        with open(sweep_dir / PLAN_FILE) as f:
            plan = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        plan = None
    if plan and label not in plan.get("to_run", []):
        why = "running in another sweep" if label in plan.get("busy", []) else "already finished"
        print(f"[benchmark] {label}: {why}, skipped", flush=True)
        return {"state": "skipped", "run": label}
    holder = acquire_lock(run_dir, plan.get("sweep_id") if plan else None)
    if holder is not None:
        print(f"[benchmark] {label}: running in another sweep ({describe_holder(holder)}), skipped; "
              "run the same command again once it has ended", flush=True)
        return {"state": "busy", "run": label}
    main_thread = threading.current_thread() is threading.main_thread()
    global _received_signal
    _received_signal = None
    previous_term = signal.signal(signal.SIGTERM, _raise_interrupted) if main_thread else None
    try:
        return _run_locked(cfg, hydra_cfg, run_dir, sweep_dir, label, overrides, plan)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous_term)
        release_lock(run_dir)


def _run_locked(cfg, hydra_cfg, run_dir: Path, sweep_dir: Path, label: str, overrides: List[str],
                plan: Optional[dict]) -> dict:
    """:func:`run_job` once the run's lock is held."""
    task_name = hydra_cfg.runtime.choices.task
    algorithm_name = hydra_cfg.runtime.choices.algorithm
    hidden = _hide_results(run_dir)
    previous = read_status(run_dir)
    status = {
        "state": "running",
        "run": label,
        "algorithm": algorithm_name,
        "task": task_name,
        "seed": cfg.seed,
        "overrides": overrides,
        "sweep_id": plan.get("sweep_id") if plan else None,
        "attempt": int(previous.get("attempt", 0)) + 1 if previous else 1,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": _now(),
    }
    if hidden:
        status["earlier_attempts_hidden"] = hidden
    if previous and previous.get("state") == "running":  # its process died without a word (SIGKILL, crash)
        status["previous_attempt"] = f"ended without a status (pid {previous.get('pid')} on {previous.get('host')})"
    error_file = run_dir / ERROR_FILE
    if error_file.exists():
        error_file.unlink()
    _write_yaml(run_dir / STATUS_FILE, status)
    total = len(plan.get("to_run", [])) if plan else None
    print(f"\n[benchmark] {label}: starting (Algorithm: {algorithm_name}, Task: {task_name}"
          + (f"; sweep of {total} runs" if total else "") + ")", flush=True)

    tic = time.perf_counter()
    try:
        import torch
        from benchmarl.hydra_config import load_experiment_from_hydra

        status["torch_threads"] = torch.get_num_threads()
        experiment = load_experiment_from_hydra(cfg, task_name=task_name)
        experiment.callbacks = [*experiment.callbacks, _StopOnSignal()]
        status["experiment_folder"] = os.path.relpath(experiment.folder_name, run_dir)
        _raise_if_signalled()
        experiment.run()
        _raise_if_signalled()  # a SIGTERM whose exception was swallowed in the last iteration
    except Exception as error:  # a failed run must not stop the sweep
        status.update(state="failed", error=f"{type(error).__name__}: {error}".strip(), ended=_now(),
                      seconds=round(time.perf_counter() - tic, 1))
        error_file.write_text(traceback.format_exc())
        _hide_results(run_dir)
        _write_yaml(run_dir / STATUS_FILE, status)
        first = status["error"].splitlines()[0] if status["error"] else type(error).__name__
        print(f"\n[benchmark] {label}: FAILED: {first} (traceback: {error_file})", file=sys.stderr, flush=True)
        print(f"[benchmark] {_progress(sweep_dir, plan)}", flush=True)
        return {"state": "failed", "run": label, "error": status["error"]}
    except BaseException as error:  # SIGTERM, Ctrl-C, SystemExit: record, then let it stop the sweep
        status.update(state="interrupted", ended=_now(), seconds=round(time.perf_counter() - tic, 1))
        if isinstance(error, RunInterrupted):
            status["signal"] = signal.Signals(error.signum).name
        elif isinstance(error, KeyboardInterrupt):
            status["signal"] = "SIGINT"
        _hide_results(run_dir)
        _write_yaml(run_dir / STATUS_FILE, status)
        print(f"\n[benchmark] {label}: interrupted ({status.get('signal', type(error).__name__)}); "
              "run the same command again to run it", file=sys.stderr, flush=True)
        raise

    json_file = experiment.folder_name / f"{experiment.name}.json"
    status.update(
        state="finished" if json_file.is_file() else "failed",
        ended=_now(),
        seconds=round(time.perf_counter() - tic, 1),
        frames=int(experiment.total_frames),
        iterations=int(experiment.n_iters_performed),
    )
    if json_file.is_file():
        status["json"] = os.path.relpath(json_file, run_dir)
    else:
        status["error"] = (f"the run ended but wrote no JSON results ({json_file}); "
                           "keep experiment.evaluation=true and experiment.create_json=true")
    _write_yaml(run_dir / STATUS_FILE, status)
    print(f"\n[benchmark] {label}: {status['state']} in {status['seconds']:.0f} s "
          f"({status['frames']} frames); {_progress(sweep_dir, plan)}", flush=True)
    return {"state": status["state"], "run": label}


# ------------------------------------------------------------------ running
def launch(plan: Plan) -> int:
    """Run the plan's sweep with hydra (in this process; the launcher starts the workers).

    Returns hydra's exit status (0 when the sweep ran; failed runs do not make it fail).
    """
    import hydra

    app = hydra.main(config_path="pkg://benchmarl.conf", config_name="config", version_base=None)(run_job)
    saved = sys.argv
    sys.argv = ["benchmarl-benchmark", "--multirun", *plan.user_overrides, *plan.hydra_overrides]
    try:
        app()
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except KeyboardInterrupt as interrupt:  # SIGINT or SIGTERM (RunInterrupted) in a run of this process
        return 128 + getattr(interrupt, "signum", signal.SIGINT)
    finally:
        sys.argv = saved
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()  # hydra.main leaves it set; a later compose in this process needs it clear
    return 0


def outcome(plan: Plan) -> Outcome:
    """Read back what happened to every job of ``plan`` from the status files."""
    result = Outcome([], [], [], [])
    for job in plan.jobs:
        run_dir = plan.out / job.dir
        status = read_status(run_dir)
        if job.action == "skip":
            result.already_finished.append(job)
        elif job.action == "busy":
            result.not_run.append((job, f"running in another sweep ({describe_holder(job.holder or {})})"))
        elif status is None or status.get("sweep_id") != plan.sweep_id:
            holder = lock_holder(run_dir)
            result.not_run.append((job, f"running in another sweep ({describe_holder(holder)})" if holder
                                   else "it did not start (no status from this sweep)"))
        elif is_finished(run_dir, status):
            result.finished.append(job)
        elif status.get("state") == "failed":
            result.failed.append((job, str(status.get("error", "unknown error")).splitlines()[0]))
        else:
            result.not_run.append((job, f"its status is '{status.get('state')}'"))
    return result


def describe(plan: Plan) -> str:
    lines = [f"benchmark: {len(plan.jobs)} run(s) in {plan.out} with the {plan.launcher} launcher"
             + (f" (--jobs {plan.jobs_limit})" if plan.jobs_limit else "")
             + f": {len(plan.to_run)} to run, {len(plan.skipped)} already finished (skipped)"
             + (f", {len(plan.busy)} running in another sweep (skipped)" if plan.busy else "") + "."]
    for job in plan.jobs:
        where = f"  (running: {describe_holder(job.holder or {})})" if job.action == "busy" else ""
        lines.append(f"  {job.action:<4}  {job.dir}{where}")
    return "\n".join(lines)


def summarise(plan: Plan, result: Outcome) -> str:
    lines = [f"benchmark: {len(plan.jobs)} run(s) in {plan.out}: {len(result.finished)} finished now, "
             f"{len(result.already_finished)} already finished, {len(result.failed)} failed, "
             f"{len(result.not_run)} not run."]
    for job, error in result.failed:
        lines.append(f"  FAILED  {job.dir}: {error}\n          traceback: {plan.out / job.dir / ERROR_FILE}")
    for job, why in result.not_run:
        lines.append(f"  NOT RUN {job.dir}: {why}")
    if result.failed or result.not_run:
        lines.append("Run the same command again to run the failed / missing runs (finished ones are skipped).")
    if result.finished or result.already_finished:
        lines.append(f"Compare: benchmarl report {plan.out}")
    return "\n".join(lines)


def versions() -> Dict[str, str]:
    """Versions of the packages a result depends on (for headers and records)."""
    from importlib import metadata

    found = {}
    for name in ("benchmarl-decentral", "benchmarl", "torchrl", "tensordict", "torch", "vmas", "pettingzoo",
                 "hydra-core", "hydra-joblib-launcher", "rliable"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    found["python"] = platform.python_version()
    return found
