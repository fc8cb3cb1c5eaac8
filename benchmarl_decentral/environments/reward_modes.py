"""Private-reward task variants, usable by any algorithm (paper 001_8ff130c17487d6e3.txt sec. VI-B).

MATRPO's paper makes cooperative navigation harder for decentralised learners
by rewarding only one agent (Table I): "only agent 1 is rewarded; the other
agents do not receive rewards but are penalized when collision". This module
provides

* :class:`PrivateReward`, a task-agnostic TorchRL transform: one agent keeps
  its reward, every other agent gets 0 plus its own penalty where the task
  exposes one per agent (an entry of the group's ``info``). It works on
  tasks with per-agent rewards (``(group, "reward")``) and on tasks with one
  shared reward (``"reward"``, replaced by per-agent rewards);
* registered task variants that apply it (or select a task's own per-agent
  rewards), so that any BenchMARL algorithm runs on them from the command line
  without a fork::

      benchmarl run algorithm=matrpo task=vmas_private/navigation_agent0
      benchmarl run algorithm=mappo  task=vmas_private/navigation_agent0
      benchmarl run algorithm=ippo   task=pettingzoo_private/simple_spread_agent0 task.N=6

Variants (``<family>/<base task>_<mode>``; every key of the base task's
config is accepted, its defaults are BenchMARL's YAML of the base task):

``agent0`` (:data:`REWARD_MODES`)
    only ``rewarded_agent`` (default 0) of the first group keeps its reward;
    ``penalty_key`` names the per-agent ``info`` entry that every other agent
    receives instead of 0 (``null``: they get exactly 0).

    * ``vmas_private/navigation_agent0``: VMAS navigation with
      ``shared_rew: true``, so agent 0's reward is the team's objective (the
      summed distance shaping of all agents to their goals, plus the bonus when
      all are on goal) plus its own collision penalty; every other agent gets
      its own collision penalty ``info.agent_collisions`` (``-1`` per
      colliding pair, VMAS's ``agent_collision_penalty``), as in Table I.
    * ``vmas_private/simple_spread_agent0`` and
      ``pettingzoo_private/simple_spread_agent0``: MPE simple spread (the
      paper's environment). Neither exposes a per-agent collision penalty
      (VMAS's reward is shared; PettingZoo mixes the global coverage term
      and the agent's collisions with ``local_ratio`` and reports no info),
      so the other agents get exactly 0.

``individual``
    the task's own per-agent rewards; the variant only fixes the switch that
    makes them per-agent: ``vmas_private/{navigation, sampling}_individual``
    (``shared_rew: false``), ``{dispersion}_individual`` (``share_reward:
    false``), ``{discovery, passage}_individual`` (``shared_reward: false``).
    An environment without per-agent rewards is refused.

``coordsum_private/<n>x<actions>-<max target>`` (``3x5-12``, ``3x10-30``)
    CoordSum (paper 003 App. B) with only agent 0 rewarded (mode ``agent0``):
    every agent sees the target, so MATRPO's Definition 1 holds; the team
    metric is the hit rate (``collection/info/sum_hit_rate``,
    ``eval/info/sum_hit_rate``). Every CoordSum task key is accepted.

Logged returns are those of the transformed rewards (collection and
evaluation alike), so algorithms compared on one variant see the same signal.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable, Dict, List, Optional, Tuple, Type

import torch
from tensordict import TensorDictBase
from torchrl.data import Composite, Unbounded
from torchrl.envs import EnvBase, Transform

from benchmarl.environments.common import _get_task_config_class, Task, TaskClass
from benchmarl.environments.pettingzoo.common import PettingZooClass, PettingZooTask
from benchmarl.environments.vmas.common import VmasClass, VmasTask
from benchmarl.utils import _read_yaml_config, DEVICE_TYPING

from benchmarl_decentral.environments.coordsum import CoordSumClass, CoordSumTask, CoordSumTaskConfig

__all__ = [
    "CoordSumPrivateClass",
    "CoordSumPrivateTask",
    "PettingZooPrivateClass",
    "PettingZooPrivateTask",
    "PrivateReward",
    "REWARD_MODES",
    "VmasPrivateClass",
    "VmasPrivateTask",
    "private_task_configs",
    "private_task_schemas",
]

REWARD_MODES = ("agent0", "individual")

#: Keys this module adds to a base task's config (the rest goes to the base task).
REWARD_KEYS = ("reward_mode", "rewarded_agent", "penalty_key")


class PrivateReward(Transform):
    """Keep one agent's reward; every other agent gets 0 plus its own penalty (paper 001 Table I).

    Per step, for every group ``g`` with agents ``0..n-1``::

        r_g[i] <- r_g[i]                      if (g, i) is the rewarded agent
        r_g[i] <- info_g[penalty_key][i]      otherwise, if penalty_key is set
        r_g[i] <- 0                           otherwise

    Per-agent rewards ``("next", g, "reward")`` of shape ``(..., n, 1)`` are
    changed in place. A task with only a shared ``("next", "reward")`` of
    shape ``(..., 1)`` gets per-agent rewards instead (the rewarded agent
    receives the shared reward) and the shared key is removed, from the
    specs as well, so that every algorithm reads the private rewards.

    Args:
        group_map: the task's ``{group: [agent names]}``.
        rewarded_group: the group of the rewarded agent. (default: the first group)
        rewarded_agent: its index within the group. (default: 0)
        penalty_key: name of a per-agent entry of ``(g, "info")`` given to
            every other agent (e.g. VMAS navigation's ``"agent_collisions"``).
            (default: None, they get 0)
    """

    def __init__(
        self,
        group_map: Dict[str, List[str]],
        *,
        rewarded_group: Optional[str] = None,
        rewarded_agent: int = 0,
        penalty_key: Optional[str] = None,
    ) -> None:
        super().__init__(in_keys=[], out_keys=[])
        if not group_map:
            raise ValueError("PrivateReward needs the task's group_map ({group: [agents]}), got an empty one")
        self.group_map = {g: list(a) for g, a in group_map.items()}
        self.rewarded_group = next(iter(self.group_map)) if rewarded_group is None else rewarded_group
        if self.rewarded_group not in self.group_map:
            raise ValueError(
                f"rewarded_group '{self.rewarded_group}' is not a group of the task; choose one of "
                f"{list(self.group_map)}"
            )
        n = len(self.group_map[self.rewarded_group])
        if not (isinstance(rewarded_agent, int) and 0 <= rewarded_agent < n):
            raise ValueError(
                f"rewarded_agent must be an agent index in [0, {n}) of group '{self.rewarded_group}', "
                f"got {rewarded_agent!r}"
            )
        self.rewarded_agent = rewarded_agent
        self.penalty_key = penalty_key

    def _keep(self, group: str, n: int, device) -> torch.Tensor:
        keep = torch.zeros(n, 1, dtype=torch.bool, device=device)
        if group == self.rewarded_group:
            keep[self.rewarded_agent] = True
        return keep

    def _step(self, tensordict: TensorDictBase, next_tensordict: TensorDictBase) -> TensorDictBase:
        shared = next_tensordict.get("reward", None)
        for group, agents in self.group_map.items():
            n = len(agents)
            reward = next_tensordict.get((group, "reward"), None)
            if reward is None:
                if shared is None:
                    raise KeyError(
                        f"PrivateReward: the step has neither ('{group}', 'reward') nor a shared 'reward'"
                    )
                reward = shared.unsqueeze(-2).expand(*shared.shape[:-1], n, shared.shape[-1])
            others = torch.zeros_like(reward)
            if self.penalty_key is not None:
                penalty = next_tensordict.get((group, "info", self.penalty_key), None)
                if penalty is None:
                    raise KeyError(
                        f"PrivateReward: penalty_key '{self.penalty_key}' is not in ('{group}', 'info') "
                        f"of this task (keys: {list(next_tensordict.get((group, 'info'), {}).keys())}); "
                        "set task.penalty_key=null or to one of those keys"
                    )
                others = penalty.reshape(reward.shape).to(reward.dtype)
            next_tensordict.set((group, "reward"), torch.where(self._keep(group, n, reward.device), reward, others))
        if shared is not None and all((g, "reward") in next_tensordict.keys(True) for g in self.group_map):
            del next_tensordict["reward"]
        return next_tensordict

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase) -> TensorDictBase:
        return tensordict_reset

    def transform_reward_spec(self, reward_spec: Composite) -> Composite:
        keys = set(reward_spec.keys(True, True))
        if all((g, "reward") in keys for g in self.group_map):
            return reward_spec
        if "reward" not in keys:
            raise ValueError("PrivateReward: the task has no per-agent and no shared 'reward'")
        shared = reward_spec["reward"]
        for group, agents in self.group_map.items():
            n = len(agents)
            if group not in reward_spec.keys():
                reward_spec[group] = Composite(shape=(*reward_spec.shape, n), device=reward_spec.device)
            reward_spec[group, "reward"] = Unbounded(
                shape=(*reward_spec.shape, n, *shared.shape[len(reward_spec.shape):]),
                dtype=shared.dtype, device=shared.device,
            )
        del reward_spec["reward"]
        return reward_spec


# --------------------------------------------------------------------- the variants

#: ``family -> {variant name: (base task, reward mode, config changes)}``.
VARIANTS: Dict[str, Dict[str, Tuple[str, str, Dict[str, Any]]]] = {
    "vmas_private": {
        "navigation_agent0": ("navigation", "agent0", {"shared_rew": True, "penalty_key": "agent_collisions"}),
        "simple_spread_agent0": ("simple_spread", "agent0", {}),
        "navigation_individual": ("navigation", "individual", {"shared_rew": False}),
        "sampling_individual": ("sampling", "individual", {"shared_rew": False}),
        "dispersion_individual": ("dispersion", "individual", {"share_reward": False}),
        "discovery_individual": ("discovery", "individual", {"shared_reward": False}),
        "passage_individual": ("passage", "individual", {"shared_reward": False}),
    },
    "pettingzoo_private": {
        "simple_spread_agent0": ("simple_spread", "agent0", {}),
    },
    # CoordSum (paper 003 App. B) with only agent 0 rewarded: every agent sees the
    # target, so MATRPO's Definition 1 holds; the team metric is the hit rate.
    "coordsum_private": {
        "3x5-12": ("3x10-30", "agent0", {"num_actions": 5, "max_target": 12}),
        "3x10-30": ("3x10-30", "agent0", {}),
    },
}


class _PrivateRewardClass(TaskClass):
    """A base BenchMARL task with private rewards: everything delegated, plus :class:`PrivateReward`."""

    BASE_CLASS: Type[TaskClass]
    BASE_TASK: Type[Task]
    ENV_NAME: str
    #: the base task's TaskConfig dataclass when BenchMARL's lookup does not know it (our tasks)
    BASE_SCHEMA: Optional[type] = None

    def _variant(self) -> Tuple[str, str, Dict[str, Any]]:
        try:
            return VARIANTS[self.ENV_NAME][self.name.lower()]
        except KeyError:
            raise ValueError(
                f"unknown private-reward task '{self.ENV_NAME}/{self.name.lower()}'; available: "
                f"{sorted(VARIANTS[self.ENV_NAME])}"
            ) from None

    def reward_options(self) -> Dict[str, Any]:
        """``reward_mode``, ``rewarded_agent``, ``penalty_key`` of this task (checked)."""
        _, default_mode, _ = self._variant()
        mode = self.config.get("reward_mode", default_mode)
        if mode not in REWARD_MODES:
            raise ValueError(
                f"task.reward_mode must be one of {REWARD_MODES}, got {mode!r} "
                f"(task {self.ENV_NAME}/{self.name.lower()})"
            )
        return {
            "reward_mode": mode,
            "rewarded_agent": self.config.get("rewarded_agent", 0),
            "penalty_key": self.config.get("penalty_key", None),
        }

    def base_task(self) -> TaskClass:
        """The underlying BenchMARL task with this config (reward keys removed)."""
        base_name, _, _ = self._variant()
        config = {k: v for k, v in copy.deepcopy(self.config).items() if k not in REWARD_KEYS}
        return self.BASE_TASK[base_name.upper()].get_task(config)

    def get_env_fun(
        self, num_envs: int, continuous_actions: bool, seed: Optional[int], device: DEVICE_TYPING
    ) -> Callable[[], EnvBase]:
        self.reward_options()  # fail before building anything
        return self.base_task().get_env_fun(num_envs, continuous_actions, seed, device)

    def get_env_transforms(self, env: EnvBase) -> List[Transform]:
        transforms = list(self.base_task().get_env_transforms(env))
        opts = self.reward_options()
        group_map = self.group_map(env)
        if opts["reward_mode"] == "agent0":
            transforms.append(
                PrivateReward(group_map, rewarded_agent=opts["rewarded_agent"], penalty_key=opts["penalty_key"])
            )
        else:
            missing = [g for g in group_map if (g, "reward") not in env.reward_keys]
            if missing:
                raise ValueError(
                    f"task {self.ENV_NAME}/{self.name.lower()} has no per-agent reward for groups "
                    f"{missing} (reward keys {env.reward_keys}); reward_mode=individual needs a task "
                    "that provides one, e.g. vmas_private/navigation_individual"
                )
        return transforms

    def supports_continuous_actions(self) -> bool:
        return self.base_task().supports_continuous_actions()

    def supports_discrete_actions(self) -> bool:
        return self.base_task().supports_discrete_actions()

    def has_render(self, env: EnvBase) -> bool:
        return self.base_task().has_render(env)

    def max_steps(self, env: EnvBase) -> int:
        return self.base_task().max_steps(env)

    def group_map(self, env: EnvBase) -> Dict[str, List[str]]:
        return self.base_task().group_map(env)

    def observation_spec(self, env: EnvBase) -> Composite:
        return self.base_task().observation_spec(env)

    def info_spec(self, env: EnvBase) -> Optional[Composite]:
        return self.base_task().info_spec(env)

    def state_spec(self, env: EnvBase) -> Optional[Composite]:
        return self.base_task().state_spec(env)

    def action_spec(self, env: EnvBase) -> Composite:
        return self.base_task().action_spec(env)

    def action_mask_spec(self, env: EnvBase) -> Optional[Composite]:
        return self.base_task().action_mask_spec(env)

    def get_reward_sum_transform(self, env: EnvBase) -> Transform:
        return self.base_task().get_reward_sum_transform(env)

    def get_replay_buffer_transforms(self, env: EnvBase, group: str) -> List[Transform]:
        return self.base_task().get_replay_buffer_transforms(env, group)


class VmasPrivateClass(_PrivateRewardClass):
    """VMAS tasks with private rewards (``task=vmas_private/<variant>``)."""

    BASE_CLASS = VmasClass
    BASE_TASK = VmasTask
    ENV_NAME = "vmas_private"

    @staticmethod
    def log_info(batch: TensorDictBase) -> Dict[str, float]:
        return VmasClass.log_info(batch)

    @staticmethod
    def render_callback(experiment, env: EnvBase, data: TensorDictBase):
        return VmasClass.render_callback(experiment, env, data)

    @staticmethod
    def env_name() -> str:
        return "vmas_private"


class PettingZooPrivateClass(_PrivateRewardClass):
    """PettingZoo tasks with private rewards (``task=pettingzoo_private/<variant>``)."""

    BASE_CLASS = PettingZooClass
    BASE_TASK = PettingZooTask
    ENV_NAME = "pettingzoo_private"

    @staticmethod
    def log_info(batch: TensorDictBase) -> Dict[str, float]:
        return PettingZooClass.log_info(batch)

    @staticmethod
    def render_callback(experiment, env: EnvBase, data: TensorDictBase):
        return PettingZooClass.render_callback(experiment, env, data)

    @staticmethod
    def env_name() -> str:
        return "pettingzoo_private"


class CoordSumPrivateClass(_PrivateRewardClass):
    """CoordSum with only agent 0 rewarded (``task=coordsum_private/<n>x<actions>-<max target>``).

    CoordSum's shared team reward (2 for a hit the opponent did not guess, 1
    for a guessed hit) goes to agent 0 only; the others get 0. Every agent
    observes the target, so each agent's observation suffices to model the
    joint policy (MATRPO's Definition 1). The team metric is the hit rate:
    ``collection/info/sum_hit_rate`` and, after every evaluation,
    ``eval/info/sum_hit_rate``
    (:class:`~benchmarl_decentral.environments.coordsum.CoordSumHitRateCallback`).
    A random team hits ``1/max_target``-ish of the targets (3x5-12: 0.083);
    agent 0 alone, with the others fixed, cannot reach every target.
    """

    BASE_CLASS = CoordSumClass
    BASE_TASK = CoordSumTask
    ENV_NAME = "coordsum_private"
    BASE_SCHEMA = CoordSumTaskConfig

    @staticmethod
    def log_info(batch: TensorDictBase) -> Dict[str, float]:
        return CoordSumClass.log_info(batch)

    @staticmethod
    def env_name() -> str:
        return "coordsum_private"


class _PrivateTaskBase(Task):
    """Loading for the private-reward enums (an Enum with members cannot be subclassed)."""

    def base_member(self) -> Task:
        base_name, _, _ = VARIANTS[self.env_name()][self.name.lower()]
        return self.associated_class().BASE_TASK[base_name.upper()]

    def default_config(self) -> Dict[str, Any]:
        """BenchMARL's YAML of the base task, with this variant's changes and reward keys."""
        _, mode, changes = VARIANTS[self.env_name()][self.name.lower()]
        config = dict(self.base_member().get_from_yaml().config)
        config.update({"reward_mode": mode, "rewarded_agent": 0, "penalty_key": None})
        config.update(changes)
        return config

    def get_from_yaml(self, path: Optional[str] = None) -> TaskClass:
        """The base task's YAML (BenchMARL's), updated with ``conf/task/<family>/<variant>.yaml`` (or ``path``)."""
        from benchmarl_decentral._paths import CONF_DIR

        if path is None:
            path = CONF_DIR / "task" / self.env_name() / f"{self.name.lower()}.yaml"
        config = self.default_config()
        config.update(_read_yaml_config(str(path)))
        return self.get_task(config=config)


class VmasPrivateTask(_PrivateTaskBase):
    """Enum of the VMAS private-reward variants (see the module docstring)."""

    NAVIGATION_AGENT0 = None
    SIMPLE_SPREAD_AGENT0 = None
    NAVIGATION_INDIVIDUAL = None
    SAMPLING_INDIVIDUAL = None
    DISPERSION_INDIVIDUAL = None
    DISCOVERY_INDIVIDUAL = None
    PASSAGE_INDIVIDUAL = None

    @staticmethod
    def associated_class():
        return VmasPrivateClass


class PettingZooPrivateTask(_PrivateTaskBase):
    """Enum of the PettingZoo private-reward variants (see the module docstring)."""

    SIMPLE_SPREAD_AGENT0 = None

    @staticmethod
    def associated_class():
        return PettingZooPrivateClass


class _CoordSumPrivateTaskBase(_PrivateTaskBase):
    """Methods of :data:`CoordSumPrivateTask` (functional Enum: the names contain dashes)."""

    @staticmethod
    def associated_class():
        return CoordSumPrivateClass


#: Enum of the CoordSum private-reward variants; ``member.name.lower()`` is the task name.
CoordSumPrivateTask = _CoordSumPrivateTaskBase(
    "CoordSumPrivateTask",
    [(name.upper(), None) for name in VARIANTS["coordsum_private"]],
    module=__name__,
    qualname="CoordSumPrivateTask",
)

PRIVATE_TASKS = (VmasPrivateTask, PettingZooPrivateTask, CoordSumPrivateTask)


def private_task_configs() -> Dict[str, Task]:
    """``"family/variant"`` -> enum member, for BenchMARL's ``task_config_registry``."""
    return {f"{m.env_name()}/{m.name.lower()}": m for enum in PRIVATE_TASKS for m in enum}


def _schema(member: Task) -> type:
    """Hydra schema: the base task's TaskConfig fields, defaulting to the variant's config, + reward keys."""
    base = member.base_member()
    base_cls = member.associated_class().BASE_SCHEMA or _get_task_config_class(base.env_name(), base.name.lower())
    defaults = member.default_config()
    fields = []
    for f in dataclasses.fields(base_cls):
        value = defaults[f.name]
        default = dataclasses.field(default_factory=lambda v=value: copy.deepcopy(v)) if isinstance(
            value, (list, dict)) else dataclasses.field(default=value)
        fields.append((f.name, f.type, default))
    fields += [
        ("reward_mode", str, dataclasses.field(default=defaults["reward_mode"])),
        ("rewarded_agent", int, dataclasses.field(default=0)),
        ("penalty_key", Optional[str], dataclasses.field(default=defaults["penalty_key"])),
    ]
    name = "".join(p.capitalize() for p in f"{member.env_name()}_{member.name.lower()}".split("_")) + "Config"
    return dataclasses.make_dataclass(name, fields, namespace={"__module__": __name__})


def private_task_schemas() -> Dict[str, type]:
    """``"family_variant"`` -> TaskConfig dataclass, for hydra type checking (ConfigStore)."""
    return {f"{m.env_name()}_{m.name.lower()}": _schema(m) for enum in PRIVATE_TASKS for m in enum}
