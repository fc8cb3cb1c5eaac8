"""Reference policies for a report: uniform random, zero action, and cheap scripted ones.

A learning curve means little without the return of a policy that learned
nothing. For every task of a report this module evaluates

- ``random``: uniform over the action space (continuous: uniform in the
  action bounds; discrete: uniform over the actions the ``action_mask``
  allows, when the task has one);
- ``zero``: the zero action (continuous: 0 clipped to the bounds; discrete:
  the task's no-op, action 0 for VMAS and MPE, ``stop`` for SMAX, or the
  first action the mask allows when the no-op is masked);
- the scripted policies of :data:`SCRIPTED_POLICIES` registered for the task
  (VMAS navigation's go-to-goal controller; CoordSum's scripted teams,
  :func:`benchmarl_decentral.environments.coordsum.scripted_policy`),

on the environment BenchMARL evaluates on: ``task.get_env_fun(num_envs,
continuous_actions, seed, device)()`` wrapped in ``task.get_env_transforms``,
built from the run's own ``.hydra/config.yaml`` (so task options such as
``task.n_agents=4`` or a private-reward mode are those of the runs). The
metric is BenchMARL's evaluation ``return`` (``Logger.log_evaluation``):
each episode cut at the first global done, per group the sum over time of
the reward averaged over the group's agents, then the mean over groups.

The episodes: for each seed of the task's runs, one batch of
``episodes_per_seed`` episodes (the number the robust score averages over per
run: ``k`` evaluations x ``evaluation_episodes``), the env seeded with that
seed as BenchMARL seeds its test env, and torch seeded with it for the
random actions. Results are cached in a JSON file keyed by everything that
defines them (task, task config, action type, seeds, episodes, policy), so a
report regenerates from the cache without evaluating anything.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

#: Policies every task gets.
BASE_POLICIES = ("random", "zero")
#: Description of each policy for the report (scripted ones add theirs).
POLICY_DESCRIPTIONS = {
    "random": "uniform random actions (within the action mask where the task has one)",
    "zero": "zero action (continuous 0; discrete no-op: action 0, SMAX stop)",
}
#: Discrete no-op index per environment family (default 0: VMAS and MPE's no-op).
NOOP_ACTION = {"smax": 4}
#: Bumped when the evaluation procedure changes, so stale cache entries are not reused.
CACHE_VERSION = 1
#: Version of a policy whose behaviour changed (part of its cache key; absent: 1).
POLICY_VERSIONS = {"go_to_goal": 2}

Policy = Callable  # TensorDict -> TensorDict, writes (group, "action")
PolicyFactory = Callable[..., Policy]  # (env, task_name) -> policy


# ------------------------------------------------------------------ policies
def _bounds(spec):
    space = getattr(spec, "space", None)
    low, high = getattr(space, "low", None), getattr(space, "high", None)
    return low, high


def _is_discrete(spec) -> bool:
    import torch

    return not torch.is_floating_point(spec.zero())


def _n_actions(spec) -> int:
    space = getattr(spec, "space", None)
    n = getattr(space, "n", None)
    if n is None:
        raise ValueError(f"cannot tell the number of discrete actions of {spec}")
    return int(n)


def _one_hot_spec(spec) -> bool:
    return type(spec).__name__ in ("OneHot", "OneHotDiscreteTensorSpec")


def _discrete_action(spec, index, shape):
    """``index`` (shape: batch x agents) in the spec's form (integer or one-hot)."""
    import torch

    if _one_hot_spec(spec):
        return torch.nn.functional.one_hot(index, _n_actions(spec)).to(spec.dtype).reshape(shape)
    return index.to(spec.dtype).reshape(shape)


def _mask(td, group, spec):
    mask = td.get((group, "action_mask"), None)
    if mask is None:
        return None
    return mask.reshape(*spec.shape[: len(spec.shape) - (1 if _one_hot_spec(spec) else 0)], _n_actions(spec)).bool()


class _SpecPolicy:
    """Base of the random and zero policies: one action per group from the env's action spec."""

    def __init__(self, env, group_map: Dict[str, List[str]], family: str):
        self.specs = {group: env.full_action_spec[group, "action"] for group in group_map}
        self.family = family

    def __call__(self, td):
        for group, spec in self.specs.items():
            td.set((group, "action"), self.action(td, group, spec))
        return td

    def action(self, td, group, spec):  # pragma: no cover - abstract
        raise NotImplementedError


class RandomPolicy(_SpecPolicy):
    """Uniform over the action space (draws from torch's global RNG: seed it)."""

    def action(self, td, group, spec):
        import torch

        if not _is_discrete(spec):
            low, high = _bounds(spec)
            u = torch.rand(spec.shape, device=spec.device)
            if low is None:
                return (2 * u - 1).to(spec.dtype)  # unbounded: uniform in [-1, 1]
            return (low + u * (high - low)).to(spec.dtype)
        n = _n_actions(spec)
        mask = _mask(td, group, spec)
        batch = spec.shape[:-1] if _one_hot_spec(spec) else spec.shape
        if mask is None:
            index = torch.randint(n, batch, device=spec.device)
        else:
            weights = mask.reshape(-1, n).float()
            weights[weights.sum(-1) == 0] = 1.0  # an all-masked row: any action
            index = torch.multinomial(weights, 1).reshape(batch)
        return _discrete_action(spec, index, spec.shape)


class ZeroPolicy(_SpecPolicy):
    """The zero action: continuous 0 (clipped to the bounds), discrete no-op."""

    def action(self, td, group, spec):
        import torch

        if not _is_discrete(spec):
            action = torch.zeros(spec.shape, dtype=spec.dtype, device=spec.device)
            low, high = _bounds(spec)
            return action if low is None else torch.maximum(torch.minimum(action, high), low)
        n = _n_actions(spec)
        batch = spec.shape[:-1] if _one_hot_spec(spec) else spec.shape
        index = torch.full(batch, NOOP_ACTION.get(self.family, 0), dtype=torch.long, device=spec.device)
        mask = _mask(td, group, spec)
        if mask is not None:
            allowed = mask.gather(-1, index.unsqueeze(-1)).squeeze(-1)
            first = mask.float().argmax(-1)
            index = torch.where(allowed, index, first)
        del n
        return _discrete_action(spec, index, spec.shape)


class GoToGoalPolicy:
    """VMAS navigation: each agent pushes towards its goal, away from what its lidar sees, with damping.

    The observation of an agent is ``[pos (2), vel (2), pos - goal (2), lidar]``
    (VMAS ``scenarios/navigation.py``, ``observation``; the lidar part, present
    when ``collisions`` is on, holds ``max_range - distance`` for 12 rays at
    angles ``2 pi k / 12``). The action is

        u = -gain (pos - goal) - damping vel - repulsion sum_k (lidar_k / 0.35) (cos a_k, sin a_k)

    clipped to the action bounds (continuous), or the discrete move closest to
    that direction (VMAS's discrete navigation actions: 0 no-op, 1 -x, 2 +x,
    3 -y, 4 +y). 0.35 is BenchMARL's default ``lidar_range``. Without the
    repulsion term (``repulsion=0``) the agents collide and stay stuck
    against each other (vmas/navigation, 4 agents: about -2.2 against about
    1.0 with the default 3).
    """

    def __init__(self, env, group_map: Dict[str, List[str]], gain: float = 2.0, damping: float = 0.5,
                 repulsion: float = 3.0):
        self.specs = {group: env.full_action_spec[group, "action"] for group in group_map}
        self.gain, self.damping, self.repulsion = gain, damping, repulsion

    def __call__(self, td):
        import torch

        for group, spec in self.specs.items():
            obs = td.get((group, "observation"))
            push = -self.gain * obs[..., 4:6] - self.damping * obs[..., 2:4]
            lidar = obs[..., 6:]
            if lidar.shape[-1] and self.repulsion:
                angles = torch.linspace(0, 2 * math.pi, lidar.shape[-1] + 1, device=obs.device)[:-1]
                close = lidar / 0.35
                push = push - self.repulsion * torch.stack(
                    [(close * torch.cos(angles)).sum(-1), (close * torch.sin(angles)).sum(-1)], dim=-1)
            if _is_discrete(spec):
                # 0 no-op, 1 -x, 2 +x, 3 -y, 4 +y: the axis with the larger push, its sign
                x, y = push[..., 0], push[..., 1]
                index = torch.where(x.abs() >= y.abs(), torch.where(x < 0, 1, 2), torch.where(y < 0, 3, 4))
                td.set((group, "action"), _discrete_action(spec, index, spec.shape))
            else:
                low, high = _bounds(spec)
                action = push if low is None else torch.maximum(torch.minimum(push, high), low)
                td.set((group, "action"), action.to(spec.dtype).reshape(spec.shape))
        return td


def _go_to_goal(env, task_name, group_map):
    return GoToGoalPolicy(env, group_map)


_COORDSUM_DESCRIPTIONS = {
    "best_response": "CoordSum's best independent response (scripted)",
    "agent0_deterministic": "CoordSum's deterministic agent-0 split (scripted)",
}


def _coordsum_policies() -> Dict[str, Tuple[PolicyFactory, str]]:
    """CoordSum's scripted teams (:func:`benchmarl_decentral.environments.coordsum.scripted_policy`)."""
    from benchmarl_decentral.environments.coordsum import SCRIPTED_POLICIES as teams, scripted_policy

    return {name: (lambda env, task_name, group_map, name=name: scripted_policy(env, name),
                   _COORDSUM_DESCRIPTIONS[name])
            for name in teams}


def _nearest_landmark(env, task_name, group_map):
    from benchmarl_decentral.environments.mpe import GROUP, NearestLandmarkPolicy

    return NearestLandmarkPolicy(continuous=not _is_discrete(env.full_action_spec[GROUP, "action"]))


#: Scripted policies per task: key ``"<env>/<task>"`` or ``"<env>"`` (a whole family); value: a
#: function returning ``{name: (factory(env, task_name, group_map) -> policy, description)}``.
SCRIPTED_POLICIES: Dict[str, Callable[[], Dict[str, Tuple[PolicyFactory, str]]]] = {
    "vmas/navigation": lambda: {"go_to_goal": (_go_to_goal, "scripted go-to-goal with lidar repulsion")},
    "vmas_private/navigation_agent0": lambda: {
        "go_to_goal": (_go_to_goal, "scripted go-to-goal with lidar repulsion")},
    "vmas_private/navigation_individual": lambda: {
        "go_to_goal": (_go_to_goal, "scripted go-to-goal with lidar repulsion")},
    "coordsum": _coordsum_policies,
    "mpe/simple_spread": lambda: {"nearest_landmark": (
        _nearest_landmark, "scripted: every agent heads for its nearest landmark (greedy, uncoordinated)")},
}


def scripted_policies(task_name: str) -> Dict[str, Tuple[PolicyFactory, str]]:
    """The scripted policies registered for ``task_name`` (``"<env>/<task>"``), by name."""
    found: Dict[str, Tuple[PolicyFactory, str]] = {}
    family = task_name.split("/")[0]
    for key in (family, task_name):
        if key in SCRIPTED_POLICIES:
            found.update(SCRIPTED_POLICIES[key]())
    return found


def policy_names(task_name: str) -> List[str]:
    return list(BASE_POLICIES) + sorted(scripted_policies(task_name))


def describe(policy: str, task_name: str) -> str:
    if policy in POLICY_DESCRIPTIONS:
        return POLICY_DESCRIPTIONS[policy]
    scripted = scripted_policies(task_name)
    return scripted[policy][1] if policy in scripted else policy


# ---------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class TaskSetup:
    """What defines the environment the runs of a task were evaluated on."""

    task_name: str  # "<env>/<task>" as typed on the command line (BenchMARL's registry key)
    task_config: dict  # the run's task config (.hydra/config.yaml "task")
    continuous_actions: bool
    device: str = "cpu"

    def key(self) -> str:
        text = json.dumps([self.task_name, self.task_config, self.continuous_actions], sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:16]


def make_env(setup: TaskSetup, num_envs: int, seed: int):
    """(env, task, group_map, max_steps) as BenchMARL builds its test env (``Experiment._setup_task``)."""
    import benchmarl_decentral  # noqa: F401  (registers our tasks)
    from benchmarl.hydra_config import load_task_config_from_hydra
    from omegaconf import OmegaConf
    from torchrl.envs import Compose, TransformedEnv

    with warnings.catch_warnings():  # BenchMARL warns for tasks without a config dataclass (ours have YAML checks)
        warnings.filterwarnings("ignore", message="TaskConfig python dataclass not found")
        task = load_task_config_from_hydra(OmegaConf.create(setup.task_config), setup.task_name)
    env = task.get_env_fun(num_envs=num_envs, continuous_actions=setup.continuous_actions, seed=seed,
                           device=setup.device)()
    env = TransformedEnv(env, Compose(*task.get_env_transforms(env))).to(setup.device)
    return env, task, task.group_map(env), task.max_steps(env)


def episode_returns(rollouts, group_map: Dict[str, List[str]]) -> List[float]:
    """BenchMARL's evaluation ``return`` per episode (``Logger.log_evaluation``), from time-major rollouts."""
    import torch

    out = []
    for td in rollouts:
        done = td.get(("next", "done")).reshape(td.batch_size[0], -1).any(-1)
        index = done.nonzero(as_tuple=True)[0]
        if index.numel():
            td = td[: int(index[0]) + 1]
        per_group = []
        for group in group_map:
            reward = td.get(("next", group, "reward"), None)
            if reward is None:
                reward = td.get(("next", "reward")).expand(td.get(group).shape).unsqueeze(-1)
            per_group.append(reward.sum(0).mean())
        out.append(float(torch.stack(per_group).mean()))
    return out


def evaluate_policy(setup: TaskSetup, policy: str, seed: int, episodes: int) -> List[float]:
    """Returns of ``episodes`` episodes of ``policy`` on the task, env and torch seeded with ``seed``."""
    import torch

    family = setup.task_name.split("/")[0]
    torch.manual_seed(seed)
    env, task, group_map, max_steps = make_env(setup, episodes, seed)
    try:
        if policy == "random":
            actor = RandomPolicy(env, group_map, family)
        elif policy == "zero":
            actor = ZeroPolicy(env, group_map, family)
        else:
            scripted = scripted_policies(setup.task_name)
            if policy not in scripted:
                raise ValueError(f"no reference policy '{policy}' for {setup.task_name}; "
                                 f"available: {', '.join(policy_names(setup.task_name))}")
            actor = scripted[policy][0](env, setup.task_name, group_map)
        torch.manual_seed(seed)
        with torch.no_grad():
            if env.batch_size == ():
                rollouts = [env.rollout(max_steps=max_steps, policy=actor, auto_cast_to_device=True,
                                        break_when_any_done=True) for _ in range(episodes)]
            else:
                rollouts = list(env.rollout(max_steps=max_steps, policy=actor, auto_cast_to_device=True,
                                            break_when_any_done=False).unbind(0))
        return episode_returns(rollouts, group_map)
    finally:
        try:
            env.close()
        except Exception:  # noqa: BLE001 - closing a finished evaluation env must not fail a report
            pass


# --------------------------------------------------------------------- cache
@dataclass
class Reference:
    """One reference policy on one task: returns per seed (episodes), their mean and CI."""

    task_id: str
    policy: str
    description: str
    returns: Dict[str, List[float]]  # "seed_N" -> episode returns
    mean: float = math.nan
    ci_low: Optional[float] = None
    ci_high: Optional[float] = None

    def episodes(self) -> np.ndarray:
        return np.asarray([v for seed in sorted(self.returns) for v in self.returns[seed]], dtype=float)

    @property
    def n_episodes(self) -> int:
        return int(self.episodes().size)


@dataclass
class ReferenceCache:
    """JSON file of evaluated reference policies (``{"version", "entries": {key: entry}}``)."""

    path: Optional[Path]
    entries: Dict[str, dict] = field(default_factory=dict)
    evaluated: int = 0
    used: set = field(default_factory=set)  # keys read or written by this report (the ones saved)

    @classmethod
    def load(cls, path: Optional[Path]) -> "ReferenceCache":
        cache = cls(path)
        if path is not None and Path(path).is_file():
            try:
                data = json.loads(Path(path).read_text())
            except (OSError, json.JSONDecodeError):
                data = {}
            if isinstance(data, dict) and data.get("version") == CACHE_VERSION:
                cache.entries = dict(data.get("entries") or {})
        return cache

    @staticmethod
    def entry_key(setup: TaskSetup, policy: str, seed: str, episodes: int) -> str:
        version = POLICY_VERSIONS.get(policy, 1)
        tag = policy if version == 1 else f"{policy}@v{version}"
        return f"{setup.task_name}|{setup.key()}|{'continuous' if setup.continuous_actions else 'discrete'}|" \
               f"{tag}|{seed}|{episodes}"

    def get(self, setup: TaskSetup, policy: str, seed: str, episodes: int, evaluate: bool) -> Optional[List[float]]:
        key = self.entry_key(setup, policy, seed, episodes)
        self.used.add(key)
        if key in self.entries:
            return [float(v) for v in self.entries[key]["returns"]]
        if not evaluate:
            return None
        number = int(seed.split("_")[-1]) if seed.startswith("seed_") else 0
        returns = evaluate_policy(setup, policy, number, episodes)
        self.entries[key] = {"task": setup.task_name, "task_config": setup.task_config,
                             "continuous_actions": setup.continuous_actions, "policy": policy, "seed": seed,
                             "episodes": episodes, "returns": returns}
        self.evaluated += 1
        return returns

    def save(self) -> Optional[Path]:
        if self.path is None:
            return None
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        kept = {k: v for k, v in sorted(self.entries.items()) if k in self.used}  # stale entries dropped
        Path(self.path).write_text(json.dumps({"version": CACHE_VERSION, "entries": kept},
                                              indent=1, sort_keys=True) + "\n")
        return Path(self.path)


def bootstrap_mean_ci(values: np.ndarray, reps: int, seed: Optional[int], confidence: float = 0.95):
    """Percentile bootstrap CI of the mean of ``values`` (None for fewer than 2 values)."""
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return None, None
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(reps, values.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def reference_results(setups: Dict[str, TaskSetup], seeds: Dict[str, Sequence[str]], episodes: Dict[str, int],
                      cache: ReferenceCache, evaluate: bool = True, reps: int = 2000,
                      seed: Optional[int] = 0) -> Tuple[Dict[str, Dict[str, Reference]], List[str]]:
    """Reference policies of every task: ``{task_id: {policy: Reference}}`` and notes.

    ``setups``, ``seeds`` and ``episodes`` are keyed by task id (``env/task`` of
    the results). A task whose environment cannot be built (missing package)
    gets no rows and a note; with ``evaluate=False`` only cached results are used.
    """
    out: Dict[str, Dict[str, Reference]] = {}
    notes: List[str] = []
    for task_id, setup in setups.items():
        rows: Dict[str, Reference] = {}
        for policy in policy_names(setup.task_name):
            returns: Dict[str, Optional[List[float]]] = {}
            try:
                for s in seeds[task_id]:
                    returns[s] = cache.get(setup, policy, s, episodes[task_id], evaluate)
                    if returns[s] is None:  # not cached, and evaluation is off
                        break
            except Exception as error:  # noqa: BLE001 - one task's env must not stop the report
                notes.append(f"{task_id}: reference policy '{policy}' could not be evaluated "
                             f"({error.__class__.__name__}: {str(error).splitlines()[0] if str(error) else ''}).")
                break
            if any(got is None for got in returns.values()):
                notes.append(f"{task_id}: reference policy '{policy}' not in the cache "
                             f"({cache.path}) and evaluation is off: no row.")
                continue
            ref = Reference(task_id, policy, describe(policy, setup.task_name), returns)
            episodes_all = ref.episodes()
            ref.mean = float(episodes_all.mean())
            ref.ci_low, ref.ci_high = bootstrap_mean_ci(episodes_all, reps, seed)
            rows[policy] = ref
        if rows:
            out[task_id] = rows
    return out, notes
