"""Exact resume: what BenchMARL's checkpoint leaves out, saved and restored by the plugin.

BenchMARL 1.5.2's ``Experiment.state_dict`` holds the losses (parameters and
buffers), the replay buffers, the collector's policy weights and counters and
whatever callbacks add. A run resumed from it is not the run that would have
gone on: it restarts

* every optimizer from zero moments (Adam's ``exp_avg``/``exp_avg_sq`` and
  step count, SGD's momentum), and
* the random streams from ``seed_everything(seed)`` (``Experiment.run`` reseeds
  torch, numpy and Python's ``random`` at its start), and
* the environments from a reset: the collector's next observation and the
  simulators' state (positions, targets, episode step counts, the envs' own
  random generators) are gone.

:func:`install` (called by :func:`benchmarl_decentral.register`, so every
entry point and every algorithm, BenchMARL's own included, gets it) wraps
three ``Experiment`` methods without changing what they do:

* ``state_dict`` adds one entry, ``"benchmarl_decentral_resume"``
  (:data:`KEY`): the optimizers' ``state_dict`` per group and loss key, the
  torch (CPU and CUDA), numpy and Python random states, the state of the
  training and the evaluation environments where it can be captured
  (:func:`env_state`) and then the collector's carrier (the observation the
  next step acts on) and trajectory counter. BenchMARL's own loader ignores
  the entry, so a checkpoint stays loadable without the plugin. Everything is
  tensors, numbers and strings, so ``torch.load(..., weights_only=True)``
  reads it.
* ``load_state_dict`` loads the optimizers first (so that an algorithm's
  ``on_load_state_dict`` hook, e.g. DecPG's learning-rate schedule, has the
  last word), then BenchMARL's state, then the environments and the carrier,
  and keeps the random states for:
* ``_collection_loop``, which sets them right before the first collection,
  after ``Experiment.run``'s reseeding.

Environments whose state can be captured (:func:`env_state`):

* **VMAS**: every tensor, number, string, list, dict, generator and object
  reference reachable from the simulator (``Environment``: scenario, world,
  entities, their states and actions, dynamics, sensors, the scenario's own
  objects and ``torch.distributions``), and VMAS's own random state. On
  load the tree is written back and captured again; if the two differ (the
  checkpoint's tree does not fit this simulator), a warning says so and the
  training environments start from a reset. State held outside those
  objects would not be seen: every scenario BenchMARL 1.5.2 lists was
  checked to continue exactly through episode ends.
* **CoordSum**: target, episode step, opponent history and generator.

Others (SMAX, whose state lives in JAX; PettingZoo, SMACv2, MeltingPot,
MAgent2, which BenchMARL runs in ``SerialEnv``/``ParallelEnv``) restart from a
reset on resume, with a warning naming the env; everything else is still
restored. Those warnings come when training resumes (not on ``benchmarl
evaluate``). With ``experiment.collect_with_grad`` BenchMARL resets the rollout
env at the start of ``_collection_loop``, so the training env restarts there
too.
"""

from __future__ import annotations

import enum
import functools
import random
import warnings
from collections import deque
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from tensordict import LazyStackedTensorDict, TensorDict, TensorDictBase

__all__ = [
    "KEY",
    "env_state",
    "install",
    "installed",
    "load_env_state",
    "rng_state",
    "set_rng_state",
    "uninstall",
]

#: Entry of the checkpoint written by the plugin.
KEY = "benchmarl_decentral_resume"
_VERSION = 1
_MARK = "_benchmarl_decentral_resume"
_PENDING_RNG = "_benchmarl_decentral_pending_rng"
_PENDING_WARNINGS = "_benchmarl_decentral_pending_warnings"


# --------------------------------------------------------------------- random state
def _numpy_state(state) -> Dict[str, Any]:
    import numpy as np

    kind, keys, pos, has_gauss, cached = state
    return {
        "kind": kind,
        "keys": torch.from_numpy(np.asarray(keys).astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def _numpy_tuple(state: Dict[str, Any]) -> tuple:
    import numpy as np

    keys = state["keys"].numpy().astype(np.uint32)
    return (state["kind"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"])


def _python_state(state) -> Dict[str, Any]:
    version, internal, gauss = state
    return {"version": version, "internal": list(internal), "gauss": gauss}


def _python_tuple(state: Dict[str, Any]) -> tuple:
    return (state["version"], tuple(state["internal"]), state["gauss"])


def rng_state() -> Dict[str, Any]:
    """The global random states: torch (CPU, and CUDA when initialised), numpy, Python."""
    import numpy as np

    return {
        "torch": torch.random.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
        "numpy": _numpy_state(np.random.get_state()),
        "python": _python_state(random.getstate()),
    }


def set_rng_state(state: Dict[str, Any]) -> None:
    """Set the global random states saved by :func:`rng_state`."""
    import numpy as np

    torch.random.set_rng_state(state["torch"].cpu())
    if state.get("cuda") is not None and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
        else:
            warnings.warn(
                f"The checkpoint holds the CUDA random states of {len(state['cuda'])} devices, "
                f"this machine has {torch.cuda.device_count()}: the CUDA random streams restart."
            )
    np.random.set_state(_numpy_tuple(state["numpy"]))
    random.setstate(_python_tuple(state["python"]))


# --------------------------------------------------------------- tensordict state
def _td_state(td: TensorDictBase) -> Optional[Dict[str, Any]]:
    """``td`` as nested dicts of tensors with their batch sizes (None if it holds anything else)."""
    entries: Dict[str, Any] = {}
    for key, value in td.items():
        if isinstance(value, LazyStackedTensorDict):
            return None  # heterogeneous groups: not captured, the env restarts from a reset
        if isinstance(value, TensorDictBase):
            sub = _td_state(value)
            if sub is None:
                return None
            entries[key] = sub
        elif isinstance(value, torch.Tensor):
            entries[key] = value.detach().clone()
        else:
            return None
    return {
        "batch_size": list(td.batch_size),
        "device": None if td.device is None else str(td.device),
        "entries": entries,
    }


def _td_from_state(state: Dict[str, Any]) -> TensorDict:
    source = {
        key: _td_from_state(value) if isinstance(value, dict) else value
        for key, value in state["entries"].items()
    }
    return TensorDict(source, batch_size=state["batch_size"], device=state["device"])


# ------------------------------------------------------------ environment state
def _base_env(env):
    """The environment under the transforms (and under a distributed rank's ``LocalAgentsEnv``, its joint copy)."""
    from torchrl.envs import TransformedEnv

    from benchmarl_decentral.distributed.local import LocalAgentsEnv

    while True:
        if isinstance(env, TransformedEnv):
            env = env.base_env
        elif isinstance(env, LocalAgentsEnv):
            env = env.joint_env
        else:
            return env


_TreePath = Tuple[Any, ...]


def _is_scalar(value: Any) -> bool:
    return value is None or (isinstance(value, (bool, int, float, str)) and not isinstance(value, enum.Enum))


def _object_tree(root: Any, should_enter: Callable[[Any], bool]) -> List[Tuple[_TreePath, Any]]:
    """``(path, value)`` of every tensor, generator, number, string, None and object reference
    reachable from ``root``, breadth first.

    A path step is ``("a", name)`` (an entry of an object's ``__dict__``),
    ``("i", index)`` (a list, tuple or dict item) or ``("k", home)`` (the item
    of a dict keyed by the object whose home is ``home``, e.g. football's
    per-agent objectives). Each list and dict is also recorded, before its
    items, as ``{"container": "list", "len": n}`` or ``{"container": "dict"}``,
    so that one the simulator makes later (VMAS's ``forces_dict``) is remade. Only objects ``should_enter``
    accepts are entered, each once, at its shortest path (its home: e.g.
    ``world._landmarks[2]``); any other path to it (e.g. an agent's randomly
    drawn ``goal``) is recorded as ``{"ref": home}``.
    """
    found: List[Tuple[_TreePath, Any]] = []
    home: Dict[int, _TreePath] = {}
    queue = deque([(root, ())])
    keyed_by_object = deque()  # dict items keyed by an object: visited once every object has its home
    while queue or keyed_by_object:
        if not queue:
            item, path, key = keyed_by_object.popleft()
            if id(key) in home:
                queue.append((item, (*path, ("k", home[id(key)]))))
            continue
        value, path = queue.popleft()
        if isinstance(value, (torch.Tensor, torch.Generator)) or _is_scalar(value):
            found.append((path, value))
        elif isinstance(value, tuple) and all(_is_scalar(item) for item in value):
            found.append((path, value))  # e.g. a colour or a size: one immutable value
        elif isinstance(value, (list, tuple, dict)) or (should_enter(value) and hasattr(value, "__dict__")):
            if id(value) in home:
                if not isinstance(value, (list, tuple, dict)):
                    found.append((path, {"ref": home[id(value)]}))
                continue
            home[id(value)] = path
            if isinstance(value, dict):
                found.append((path, {"container": "dict"}))
            elif isinstance(value, list):
                found.append((path, {"container": "list", "len": len(value)}))
            if isinstance(value, dict):
                items = [(("i", k), v) for k, v in value.items() if isinstance(k, (str, int))]
                keyed_by_object.extend(
                    (v, path, k) for k, v in value.items() if not isinstance(k, (str, int)) and should_enter(k)
                )
            elif isinstance(value, (list, tuple)):
                items = [(("i", i), v) for i, v in enumerate(value)]
            else:
                items = [(("a", k), v) for k, v in vars(value).items()]
            queue.extend((item, (*path, step)) for step, item in items)
    return found


def _capture_tree(root: Any, should_enter: Callable[[Any], bool]) -> List[Tuple[_TreePath, Any]]:
    """:func:`_object_tree` with copies of the tensors (one per tensor object, so that two
    attributes holding the same tensor still share one after ``torch.save``/``load``)."""
    out = []
    copies: Dict[int, torch.Tensor] = {}
    for path, value in _object_tree(root, should_enter):
        if isinstance(value, torch.Tensor):
            if id(value) not in copies:
                copies[id(value)] = value.detach().clone()
            value = copies[id(value)]
        elif isinstance(value, torch.Generator):
            value = {"generator_state": value.get_state()}
        out.append((path, value))
    return out


def _resolve(root: Any, path: _TreePath) -> Any:
    node = root
    for step in path:
        node = _child(root, node, step)
    return node


def _child(root: Any, node: Any, step: Tuple[str, Any]) -> Any:
    kind, name = step
    if kind == "a":
        return vars(node)[name]
    if kind == "k":  # a dict keyed by an object: the object at that home path
        return node[_resolve(root, name)]
    return node[name]


def _restore_tree(root: Any, saved: List[Tuple[_TreePath, Any]], what: str) -> None:
    """Put the values of :func:`_capture_tree` back at their paths.

    Tensors are replaced, not written into: a fresh simulator may share one
    tensor between attributes that the saved one held apart (or the reverse),
    and the saved sharing is what the continuation needs. Each saved tensor
    becomes one new tensor, on the device of the one it replaces.
    """
    placed: Dict[Tuple[int, str], torch.Tensor] = {}
    for path, value in saved:
        try:
            parent = _resolve(root, path[:-1])
            kind, name = path[-1]
            container = vars(parent) if kind == "a" else parent
            if kind == "k":
                name = _resolve(root, name)
            if isinstance(container, dict) and name not in container:
                container[name] = None  # an attribute the simulator sets on its first step
            current = container[name]
            if isinstance(value, dict) and "ref" in value:
                value = _resolve(root, value["ref"])
        except (KeyError, IndexError, TypeError):
            raise _Mismatch(f"{_path_str(path)} of the checkpoint does not exist here") from None
        if isinstance(value, dict) and "generator_state" in value:
            current.set_state(value["generator_state"])
            continue
        if isinstance(value, dict) and "container" in value:
            # a dict or list the simulator makes on its first step (e.g. VMAS's forces_dict)
            if value["container"] == "dict" and not isinstance(current, dict):
                value = {}
            elif value["container"] == "list" and not (
                isinstance(current, list) and len(current) == value["len"]
            ):
                value = [None] * value["len"]
            else:
                continue
        if isinstance(value, torch.Tensor):
            device = current.device if isinstance(current, torch.Tensor) else value.device
            key = (id(value), str(device))
            if key not in placed:
                placed[key] = value.to(device, copy=True)
            value = placed[key]
        if isinstance(container, tuple):
            if isinstance(value, torch.Tensor) and isinstance(current, torch.Tensor) and (
                current.shape == value.shape and current.dtype == value.dtype
            ):
                with torch.no_grad():
                    current.copy_(value)  # a tuple's item cannot be replaced
            elif value is not current and not (type(current) is type(value) and current == value):
                raise _Mismatch(f"{_path_str(path)} is an item of a tuple and differs")
        else:
            container[name] = value


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        a, b = a.cpu(), b.cpu()
        return a.shape == b.shape and a.dtype == b.dtype and (
            torch.equal(a, b) or (a.is_floating_point() and bool(torch.isclose(a, b, 0, 0, True).all()))
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_value(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True  # NaN
    return type(a) is type(b) and a == b


def _check_tree(root: Any, saved: List[Tuple[_TreePath, Any]], should_enter,
                keep: Callable[[_TreePath], bool] = lambda path: True) -> None:
    """Raise :class:`_Mismatch` unless a new capture of ``root`` (its paths that ``keep`` accepts) equals ``saved``."""
    now = [(path, value) for path, value in _capture_tree(root, should_enter) if keep(path)]
    if len(now) != len(saved):
        raise _Mismatch(f"{len(now)} values where the checkpoint has {len(saved)}")
    for (path, value), (saved_path, saved_value) in zip(now, saved):
        if path != saved_path:
            raise _Mismatch(f"{_path_str(path)} found where the checkpoint has {_path_str(saved_path)}")
        if not _same_value(value, saved_value):
            raise _Mismatch(f"{_path_str(saved_path)} differs from the checkpoint's after restoring")


class _Mismatch(ValueError):
    """The saved state does not fit this environment (or did not come back exactly)."""


def _path_str(path: _TreePath) -> str:
    steps = {"a": lambda n: f".{n}", "i": lambda n: f"[{n!r}]", "k": lambda n: f"[<{_path_str(n)}>]"}
    return "".join(steps[kind](name) for kind, name in path)


def _vmas_should_enter(simulator) -> Callable[[Any], bool]:
    """Objects of the simulator: VMAS classes and the scenario's own (loaded from a file, module ``""``)."""
    scenario_module = type(simulator.scenario).__module__

    def should_enter(value: Any) -> bool:
        module = type(value).__module__ or ""
        if isinstance(value, enum.Enum) or "rendering" in module:
            return False
        if isinstance(value, torch.distributions.Distribution):
            return True  # e.g. sampling's Gaussians, redrawn at every reset
        return module.split(".")[0] == "vmas" or module == scenario_module

    return should_enter


#: attributes of VMAS's ``Environment`` that hold its renderer (set on the first ``render``, e.g. by an
#: evaluation with ``experiment.render=true``): not simulation state, neither saved nor compared
_VMAS_RENDERING = frozenset({"viewer", "headless", "visible_display", "text_lines"})


def _vmas_simulation(path: _TreePath) -> bool:
    """Whether ``path`` of the simulator's tree is simulation state (not under a renderer attribute)."""
    return not (path and path[0][0] == "a" and path[0][1] in _VMAS_RENDERING)


def _vmas_capture(env) -> Any:
    # the simulator (``Environment``: scenario, world, entities, states, steps);
    # gym spaces and rendering objects are not entered, the renderer's attributes
    # are left out (a rendered test env and a fresh one hold the same simulation). VMAS draws its random
    # numbers from its own (torch, numpy, Python) states, swapped in around
    # every call: ``Environment.vmas_random_state``, one for the whole process.
    simulator = env._env
    torch_state, numpy_state, python_state = type(simulator).vmas_random_state
    return {
        "simulator": [
            (path, value) for path, value in _capture_tree(simulator, _vmas_should_enter(simulator))
            if _vmas_simulation(path)
        ],
        "random_state": {
            "torch": torch_state.clone(),
            "numpy": _numpy_state(numpy_state),
            "python": _python_state(python_state),
        },
    }


def _vmas_restore(env, state) -> None:
    simulator = env._env
    should_enter = _vmas_should_enter(simulator)
    saved = [(path, value) for path, value in state["simulator"] if _vmas_simulation(path)]  # older checkpoints
    _restore_tree(simulator, saved, "VMAS")
    _check_tree(simulator, saved, should_enter, keep=_vmas_simulation)
    random_state = state["random_state"]
    type(simulator).vmas_random_state[:] = [
        random_state["torch"].clone(),
        _numpy_tuple(random_state["numpy"]),
        _python_tuple(random_state["python"]),
    ]


def _coordsum_capture(env) -> Any:
    return {
        "target": env._target.clone(),
        "step_count": env._step_count.clone(),
        "counts": env._counts.clone(),
        "generator": env._rng.get_state(),
    }


def _coordsum_restore(env, state) -> None:
    # another number of envs (e.g. a test env rebuilt with more evaluation episodes): nothing restored
    for name, key in (("_target", "target"), ("_step_count", "step_count"), ("_counts", "counts")):
        saved, here = tuple(state[key].shape), tuple(getattr(env, name).shape)
        if saved != here:
            raise _Mismatch(f"CoordSum's {key} has shape {saved} in the checkpoint and {here} here")
    env._target = state["target"].to(env.device).clone()
    env._step_count = state["step_count"].to(env.device).clone()
    env._counts = state["counts"].to(env.device).clone()
    env._rng.set_state(state["generator"])


def _adapters() -> List[Tuple[type, str, Callable, Callable]]:
    """``(env class, name, capture, restore)`` for the envs whose state is captured."""
    adapters = []
    try:
        from torchrl.envs.libs.vmas import VmasWrapper

        adapters.append((VmasWrapper, "vmas", _vmas_capture, _vmas_restore))
    except ImportError:  # pragma: no cover - torchrl always ships the wrapper
        pass
    from benchmarl_decentral.environments.coordsum import CoordSumEnv

    adapters.append((CoordSumEnv, "coordsum", _coordsum_capture, _coordsum_restore))
    return adapters


def _adapter(env):
    base = _base_env(env)
    for cls, name, capture, restore in _adapters():
        if isinstance(base, cls):
            return base, name, capture, restore
    return base, None, None, None


def env_state(env) -> Optional[Dict[str, Any]]:
    """The state of ``env`` (TorchRL env, transforms unwrapped), or None when it cannot be captured."""
    base, name, capture, _ = _adapter(env)
    if name is None:
        return None
    return {"env": name, "state": capture(base)}


def load_env_state(env, state: Dict[str, Any]) -> None:
    """Put ``env`` back in the state :func:`env_state` captured.

    Raises:
        ValueError: the state is another environment's, or does not fit this one
            (then ``env`` may be half restored: reset it).
    """
    base, name, _, restore = _adapter(env)
    if name != state["env"]:
        raise ValueError(
            f"The checkpoint holds the state of a '{state['env']}' environment, this experiment "
            f"runs {type(base).__name__}: resume with the task the checkpoint was written with."
        )
    restore(base, state["state"])


# ------------------------------------------------------------------ experiment
def _collector_env(experiment):
    if experiment.config.collect_with_grad:
        return None
    return experiment.collector.env


def _state(experiment) -> Dict[str, Any]:
    state: Dict[str, Any] = {
        "version": _VERSION,
        "optimizers": {
            group: {name: optimizer.state_dict() for name, optimizer in optimizers.items()}
            for group, optimizers in experiment.optimizers.items()
        },
        "rng": rng_state(),
        "train_env": None,
        "carrier": None,
        "traj_id": None,
        "test_env": env_state(experiment.test_env),
        # an algorithm's own counters between iterations (dg_mappo: D-GAT messages not logged yet)
        "algorithm": experiment.algorithm.resume_state() if hasattr(experiment.algorithm, "resume_state") else None,
    }
    env = _collector_env(experiment)
    if env is not None:
        collector = experiment.collector
        carrier = getattr(collector, "_carrier", None)
        train_state = env_state(env)
        carrier_state = None if carrier is None else _td_state(carrier)
        if train_state is not None and carrier_state is not None:
            state["train_env"] = train_state
            state["carrier"] = carrier_state
            state["traj_id"] = int(collector._traj_pool._traj_id)
    return state


def _load(experiment, state: Dict[str, Any]) -> None:
    if state.get("algorithm") is not None and hasattr(experiment.algorithm, "load_resume_state"):
        experiment.algorithm.load_resume_state(state["algorithm"])
    # the test env first: a reset of it (its state does not fit) draws from random states it may share with
    # the training env (VMAS: one per process), which the training env's restore then sets
    if state.get("test_env") is not None:
        try:
            load_env_state(experiment.test_env, state["test_env"])
        except _Mismatch:
            experiment.test_env.reset()
    env = _collector_env(experiment)
    if env is not None and state.get("train_env") is not None:
        collector = experiment.collector
        try:
            load_env_state(env, state["train_env"])
        except _Mismatch as err:
            collector.reset()  # from a consistent start rather than a half-restored one
            _warn_reset(experiment, env, f" exactly ({err})")
        else:
            carrier = _td_from_state(state["carrier"])
            if collector._carrier.device is None:
                carrier.clear_device_()
            collector._carrier = carrier
            collector._traj_pool._traj_id.fill_(state["traj_id"])
    elif env is not None or experiment.config.collect_with_grad:
        _warn_reset(experiment, env if env is not None else experiment.rollout_env, "")


def _warn_reset(experiment, env, why: str) -> None:
    _defer_warning(
        experiment,
        f"benchmarl-decentral cannot restore the state of {type(_base_env(env)).__name__}{why}: "
        "the resumed run's training environments start from a reset (parameters, optimizer "
        "state and random streams are restored).",
    )


def _defer_warning(experiment, message: str) -> None:
    # said when training resumes (``_collection_loop``), not on ``benchmarl evaluate``
    pending = getattr(experiment, _PENDING_WARNINGS, None) or []
    setattr(experiment, _PENDING_WARNINGS, [*pending, message])


def _load_optimizers(experiment, saved: Dict[str, Dict[str, Any]]) -> None:
    for group, optimizers in experiment.optimizers.items():
        for name, optimizer in optimizers.items():
            if name not in saved.get(group, {}):
                raise ValueError(
                    f"The checkpoint has no optimizer state for group '{group}', loss '{name}': "
                    "it was written by another algorithm or task. Resume with the configuration "
                    "the checkpoint was written with."
                )
            optimizer.load_state_dict(saved[group][name])


def installed() -> bool:
    """Whether the ``Experiment`` methods are wrapped."""
    from benchmarl.experiment import Experiment

    return getattr(Experiment.state_dict, _MARK, False)


def install() -> None:
    """Wrap ``Experiment.state_dict``, ``load_state_dict`` and ``_collection_loop`` (idempotent)."""
    from benchmarl.experiment import Experiment

    if installed():
        return
    originals = {
        name: getattr(Experiment, name) for name in ("state_dict", "load_state_dict", "_collection_loop")
    }

    @functools.wraps(originals["state_dict"])
    def state_dict(self):
        out = originals["state_dict"](self)
        out[KEY] = _state(self)
        return out

    @functools.wraps(originals["load_state_dict"])
    def load_state_dict(self, state_dict):
        state = state_dict.get(KEY)
        if state is not None:
            _load_optimizers(self, state["optimizers"])
        originals["load_state_dict"](self, state_dict)
        if state is None:
            _defer_warning(
                self,
                "The checkpoint holds no optimizer, random or environment state (written "
                "without benchmarl-decentral's resume support): the resumed run restarts the "
                "optimizers' moments, the random streams and the environments.",
            )
            return
        _load(self, state)
        setattr(self, _PENDING_RNG, state["rng"])

    @functools.wraps(originals["_collection_loop"])
    def _collection_loop(self, *args, **kwargs):
        for message in getattr(self, _PENDING_WARNINGS, None) or []:
            warnings.warn(message)
        setattr(self, _PENDING_WARNINGS, None)
        pending = getattr(self, _PENDING_RNG, None)
        if pending is not None:
            # after Experiment.run's seed_everything, before the first collection
            set_rng_state(pending)
            setattr(self, _PENDING_RNG, None)
        return originals["_collection_loop"](self, *args, **kwargs)

    for wrapper in (state_dict, load_state_dict, _collection_loop):
        wrapper.__wrapped_original__ = originals[wrapper.__name__]
        setattr(wrapper, _MARK, True)
        setattr(Experiment, wrapper.__name__, wrapper)


def uninstall() -> None:
    """Restore BenchMARL's methods."""
    from benchmarl.experiment import Experiment

    if not installed():
        return
    for name in ("state_dict", "load_state_dict", "_collection_loop"):
        setattr(Experiment, name, getattr(Experiment, name).__wrapped_original__)
