"""What the ``benchmarl`` command says when something is missing or wrong.

One line per error, naming the fix, instead of a traceback (``--debug`` or
``HYDRA_FULL_ERROR=1`` shows it):

* :func:`preflight` checks a ``benchmarl run``'s overrides before hydra starts
  (so nothing is written): the packages a task family needs (and the extra
  that provides them), StarCraft II for ``smacv2/*``, ``wandb`` for
  BenchMARL's default ``experiment.loggers=[csv, wandb]``;
* :func:`explain` turns an exception raised while running into one line: a
  misspelt ``algorithm=`` / ``task=`` / ``model=`` or key gets "did you mean"
  (difflib), a missing optional package its ``pip install``, a config error
  of ours or BenchMARL's its message;
* :func:`task_requirement` tells ``benchmarl list`` what a task needs;
* :func:`quiet` silences the import-time noise that is not the user's business.

Nothing here imports BenchMARL at module level.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

__all__ = [
    "CliError",
    "README_SMAC",
    "Requirement",
    "explain",
    "group_choices",
    "is_bad_input",
    "preflight",
    "quiet",
    "smacv2_missing",
    "smax_alternative",
    "suggest",
    "task_requirement",
    "without_hydra_job_error",
]

#: Where the README explains StarCraft II / SMACv2 (and SMAX, which needs neither).
README_SMAC = 'README section "SMAC family: SMAX and SMACv2"'

_PETTINGZOO = 'pip install "benchmarl-decentral[pettingzoo]" (PettingZoo <1.25, the last with MPE)'


class CliError(Exception):
    """Bad input found by the ``benchmarl`` command itself; its message is the whole line."""


@dataclass(frozen=True)
class Requirement:
    """What a task family needs: an importable module and how to install it."""

    tag: str  #: short name shown by ``benchmarl list``
    module: str  #: importable module whose absence means "not installed"
    install: str  #: the command (or pointer) that installs it


#: Task family (the part before "/" of ``task=``) -> what it needs.
TASK_FAMILIES = {
    "vmas": Requirement("vmas", "vmas", 'pip install "benchmarl-decentral[vmas]"'),
    "vmas_private": Requirement("vmas", "vmas", 'pip install "benchmarl-decentral[vmas]"'),
    "pettingzoo": Requirement("pettingzoo", "pettingzoo", _PETTINGZOO),
    "pettingzoo_private": Requirement("pettingzoo", "pettingzoo", _PETTINGZOO),
    "smax": Requirement("smax", "jaxmarl", 'pip install "benchmarl-decentral[smax]"'),
    "smacv2": Requirement("starcraft", "smacv2", f"StarCraft II, SC2PATH and the smacv2 package ({README_SMAC})"),
    "meltingpot": Requirement("meltingpot", "meltingpot", "pip install dm-meltingpot (BenchMARL's meltingpot tasks)"),
    "magent": Requirement("magent", "magent2", "pip install magent2 (BenchMARL's magent tasks)"),
}

#: Top-level module of an ImportError -> the install command that brings it.
_MODULE_FIXES = {
    "vmas": TASK_FAMILIES["vmas"].install,
    "pettingzoo": _PETTINGZOO,
    "jaxmarl": TASK_FAMILIES["smax"].install,
    "jax": TASK_FAMILIES["smax"].install,
    "smacv2": TASK_FAMILIES["smacv2"].install,
    "meltingpot": TASK_FAMILIES["meltingpot"].install,
    "magent2": TASK_FAMILIES["magent"].install,
    "wandb": "pip install wandb, or log to CSV only with experiment.loggers=[csv]",
    "matplotlib": 'pip install "benchmarl-decentral[report]"',
    "rliable": 'pip install "benchmarl-decentral[report]"',
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def smacv2_missing() -> List[str]:
    """What BenchMARL's ``smacv2/*`` tasks need and this machine lacks (empty: all there).

    StarCraft II is looked up as SMACv2 (pysc2) does: ``$SC2PATH``, else
    ``~/StarCraftII``.
    """
    missing = []
    sc2 = os.environ.get("SC2PATH")
    if sc2:
        if not Path(sc2).expanduser().is_dir():
            missing.append(f"StarCraft II (SC2PATH={sc2} is not a folder)")
    elif not (Path.home() / "StarCraftII").is_dir():
        missing.append("StarCraft II (SC2PATH is not set and ~/StarCraftII does not exist)")
    if not _installed("smacv2"):
        missing.append("the smacv2 package")
    return missing


def smax_alternative(task: str) -> str:
    """The SMAX task that stands in for a SMACv2 task without StarCraft II."""
    match = re.search(r"_(\d+)_vs_\d+", task)
    units = match.group(1) if match and match.group(1) in ("5", "10", "20") else "5"
    return f"smax/smacv2_{units}_units"


def task_requirement(task: str) -> Optional[Requirement]:
    """The requirement of ``task`` (``family/name``) that is not met here, or ``None``."""
    family = task.split("/", 1)[0]
    requirement = TASK_FAMILIES.get(family)
    if requirement is None:
        return None
    if family == "smacv2":
        return requirement if smacv2_missing() else None
    if requirement.tag == "pettingzoo" and _installed("pettingzoo") and _version("pettingzoo") >= (1, 25):
        return requirement  # 1.25 moved MPE to mpe2, which BenchMARL 1.5 does not load
    return None if _installed(requirement.module) else requirement


def _version(distribution: str) -> tuple:
    """``(major, minor)`` of an installed distribution, ``(0, 0)`` when unknown."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return tuple(int(p) for p in re.findall(r"\d+", version(distribution))[:2])
    except (PackageNotFoundError, ValueError):
        return (0, 0)


def _task_message(task: str) -> Optional[str]:
    requirement = task_requirement(task)
    if requirement is None:
        return None
    if requirement.tag == "starcraft":
        return (
            f"task={task} needs StarCraft II and SMACv2, missing here: {', '.join(smacv2_missing())}; "
            f"install them as in the {README_SMAC}, or run the JAX stand-in without StarCraft: "
            f'task={smax_alternative(task)} (pip install "benchmarl-decentral[smax]")'
        )
    if requirement.tag == "pettingzoo" and _installed("pettingzoo"):
        found = ".".join(map(str, _version("pettingzoo")))
        return (f"task={task} needs PettingZoo <1.25 (MPE moved to mpe2 in 1.25, which BenchMARL 1.5 does not "
                f"load), found {found}: {requirement.install}")
    return f"task={task} needs the {requirement.module} package, which is not installed: {requirement.install}"


def _override_values(overrides: Sequence[str], keys: Iterable[str]) -> List[str]:
    """The values given to ``keys`` (``key=v`` or a multirun ``key=v1,v2``), sweep functions skipped."""
    wanted = set(keys)
    values = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and key.lstrip("+~") in wanted and "(" not in value:
            values.extend(v.strip() for v in value.split(",") if v.strip())
    return values


def preflight(overrides: Sequence[str]) -> Optional[str]:
    """Problems of a ``benchmarl run`` that are known before hydra starts, as one line (``None``: none).

    Checked: each ``task=`` (every value of a multirun sweep) has its
    packages (:data:`TASK_FAMILIES`; StarCraft II for ``smacv2/*``), and
    ``wandb`` is installed when the loggers include it: BenchMARL's default
    ``experiment.loggers=[csv, wandb]`` applies unless ``experiment.loggers=``
    or another ``experiment=`` config is given.
    """
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and key.lstrip("+~") == "critic_model":
            return (
                f"the critic's model is chosen with model@critic_model={value} "
                f"(critic_model=... would replace its config by a string); its fields are critic_model.<field>=..."
            )
    for task in _override_values(overrides, ["task"]):
        message = _task_message(task)
        if message is not None:
            return message
    if _installed("wandb"):
        return None
    for group, keys in (("algorithm", ["algorithm"]), ("task", ["task"]), ("model", ["model", "model@critic_model"])):
        if any(value not in group_choices(group) for value in _override_values(overrides, keys)):
            return None  # hydra names the unknown one first (with a suggestion)
    loggers = [item for item in overrides if item.lstrip("+~").split("=", 1)[0] == "experiment.loggers"]
    if loggers:
        if any("wandb" in item.split("=", 1)[1] for item in loggers):
            return "experiment.loggers includes wandb, which is not installed: pip install wandb, or experiment.loggers=[csv]"
        return None
    if _override_values(overrides, ["experiment"]):
        return None  # another experiment config: its loggers are not known here
    return (
        "BenchMARL's default experiment.loggers=[csv, wandb] needs wandb, which is not installed: "
        "add experiment.loggers=[csv] (CSV files in the run folder), or pip install wandb"
    )


# ------------------------------------------------------------------ names
def group_choices(group: str) -> List[str]:
    """What can follow ``algorithm=``, ``task=``, ``model=`` / ``critic_model=`` (BenchMARL's and ours)."""
    import benchmarl_decentral  # noqa: F401  (registers ours)

    if group == "algorithm":
        from benchmarl.algorithms import algorithm_config_registry

        return sorted(algorithm_config_registry)
    if group == "task":
        from benchmarl.environments import task_config_registry

        return sorted(task_config_registry)
    if group in ("model", "critic_model"):
        from benchmarl.models import model_config_registry

        return sorted(f"layers/{name}" for name in model_config_registry) + ["sequence"]
    return []


def suggest(word: str, choices: Sequence[str]) -> Optional[str]:
    """The closest of ``choices`` to ``word`` (difflib), or ``None`` when none is close."""
    best = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if best:
        return best[0]
    # "balanse" for "vmas/balance": match on the part after the family too
    tails = {c.rsplit("/", 1)[-1]: c for c in choices}
    best = difflib.get_close_matches(word.rsplit("/", 1)[-1], list(tails), n=1, cutoff=0.6)
    return tails[best[0]] if best else None


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).strip().splitlines() if part.strip())


def _unknown_name(error, overrides: Sequence[str]) -> Optional[str]:
    """hydra's MissingConfigException (``algorithm=decgp``) as "did you mean"."""
    missing = getattr(error, "missing_cfg_file", None)
    if not missing or "/" not in missing:
        return None
    group, name = missing.split("/", 1)
    key = group
    # critic_model=... reads from the model folder: name the key the user typed
    for item in overrides:
        k, sep, value = item.partition("=")
        if sep and name in value.split(","):
            key = k.lstrip("+~")
            break
    choices = group_choices(key.split("@")[0]) or [o for o in (getattr(error, "options", None) or []) if not o.endswith("_config")]
    if not choices:
        return None
    what = "model" if key.split("@")[0] in ("model", "critic_model") else key
    listing = {"algorithm": "algorithms", "task": "tasks", "model": "models"}.get(what)
    see = f" (`benchmarl list {listing}` shows all)" if listing else ""
    best = suggest(name, choices)
    if best is not None:
        return f"unknown {what} '{name}'; did you mean {key}={best}?{see}"
    return f"unknown {what} '{name}'{see or '; choose one of ' + ', '.join(choices)}"


def _unknown_key(error) -> Optional[str]:
    """hydra's "Could not override 'algorithm.kk'" as "did you mean algorithm.k"."""
    cause = error.__cause__
    full_key = getattr(cause, "full_key", None)
    parent = getattr(cause, "parent_node", None)
    key = getattr(cause, "key", None)
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    if not isinstance(cause, (ConfigAttributeError, ConfigKeyError)) or not full_key or parent is None or key is None:
        return None
    try:
        keys = [str(k) for k in parent.keys()]
    except Exception:  # noqa: BLE001  (a node without keys: no suggestion)
        keys = []
    prefix = full_key.rsplit(".", 1)[0] + "." if "." in full_key else ""
    best = suggest(str(key), keys)
    hint = f"did you mean {prefix}{best}?" if best else f"keys there: {', '.join(keys)}"
    return f"unknown key {full_key}; {hint} (to add a new key, prefix it with +)"


def _missing_module(error: BaseException) -> Optional[str]:
    name = getattr(error, "name", None) or ""
    top = name.split(".", 1)[0]
    text = str(error)
    if top not in _MODULE_FIXES:
        top = next((m for m in _MODULE_FIXES if re.search(rf"\b{m}\b", text)), "")
    if not top:
        return None
    return f"the {top} package is needed here but is not installed: {_MODULE_FIXES[top]}"


def explain(error: BaseException, overrides: Sequence[str] = ()) -> str:
    """One line for ``error``: what went wrong and how to fix it.

    Args:
        error: the exception raised by the hydra app or BenchMARL.
        overrides: the command line's overrides (to name the key a user typed).
    """
    from hydra.errors import ConfigCompositionException, MissingConfigException

    if isinstance(error, CliError):
        return str(error)
    if isinstance(error, MissingConfigException):
        line = _unknown_name(error, overrides)
        if line:
            return line
    if isinstance(error, ConfigCompositionException):
        line = _unknown_key(error)
        if line:
            return line
        cause = error.__cause__
        return _one_line(f"{error} {_one_line(cause).split(' full_key:')[0] if cause else ''}")
    if isinstance(error, ImportError):
        line = _missing_module(error)
        if line:
            return line
    message = _one_line(error) or type(error).__name__
    if isinstance(error, (ValueError, TypeError, KeyError, NotImplementedError)) and _raised_by_config(error):
        return message
    return f"{type(error).__name__}: {message} (--debug shows the traceback)"


def is_bad_input(error: BaseException) -> bool:
    """Whether ``error`` is the user's input (exit status 2) rather than a failure while running (1)."""
    from hydra.errors import ConfigCompositionException

    if isinstance(error, (CliError, ConfigCompositionException)):
        return True
    if isinstance(error, ImportError):
        return _missing_module(error) is not None
    return isinstance(error, (ValueError, TypeError, KeyError)) and _raised_by_config(error)


def _raised_by_config(error: BaseException) -> bool:
    """Whether ``error`` comes from a config check: ours, BenchMARL's, OmegaConf's."""
    tb = error.__traceback__
    module = ""
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        tb = tb.tb_next
    return module.startswith(("benchmarl_decentral", "benchmarl.", "omegaconf", "hydra"))


class _StderrWithoutJobError:
    """``sys.stderr`` without hydra's "Error executing job with overrides: [...]" line.

    hydra writes that line just before re-raising a failed job's error; the
    ``benchmarl`` command prints its own one-line error instead.
    """

    _LINE = "Error executing job with overrides:"

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        if text.startswith(self._LINE):
            return len(text)
        return self._stream.write(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


@contextlib.contextmanager
def without_hydra_job_error():
    """Within the block, hydra's "Error executing job ..." line is not written to stderr."""
    saved = sys.stderr
    sys.stderr = _StderrWithoutJobError(saved)
    try:
        yield
    finally:
        sys.stderr = saved


# ------------------------------------------------------------------ noise
def quiet() -> None:
    """Silence import-time noise that is not the user's business (``benchmarl`` entry points only).

    * torch's ``torch.jit.script`` deprecation (raised while TorchRL is imported);
    * TorchRL's PettingZoo loader: families it could not load, MPE's move to
      ``mpe2``, its tested-version note; TorchRL's collector rename;
    * SDL's "XDG_RUNTIME_DIR is invalid or not set" (PettingZoo MPE starts
      pygame, whose video driver probes for a Wayland session): on a machine
      without a display (no XDG_RUNTIME_DIR, DISPLAY or WAYLAND_DISPLAY) SDL
      gets its dummy video driver, which still renders off-screen
      (``experiment.render``); a user's own SDL_VIDEODRIVER is kept.
    """
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", module=r"torchrl\.envs\.libs\.pettingzoo")
    warnings.filterwarnings("ignore", message=r"SyncDataCollector has been deprecated", category=DeprecationWarning)
    if not any(os.environ.get(v) for v in ("XDG_RUNTIME_DIR", "DISPLAY", "WAYLAND_DISPLAY")):
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
