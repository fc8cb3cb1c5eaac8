"""CoordSum: the didactic task family of MAGPO (paper 003_13ad26f9f90dcfc4.txt, Appendix B).

A team of ``n_agents`` agents sees a shared integer target and each agent picks
an integer in ``[0, num_actions)``. The team scores when the sum of the picks
equals the target; an opponent tries to guess agent 0's pick from agent 0's
past picks for the same target, and a guessed hit scores half of an unguessed
one, so the team must reach the target without a fixed, predictable split.

Task names (Appendix B "Naming Convention"): ``<n_agents>x<num_actions>-<max_target>``,
e.g. ``3x10-30`` is 3 agents, actions ``{0, ..., 9}``, targets drawn uniformly
from ``{0, ..., 29}``. Note that in 3x10-30 the largest reachable sum is 27, so
targets 28 and 29 (2 steps in 30 on average) can never be hit: this is how the
paper defines the task, not a bug here.

Dynamics, per environment of the batch (all envs advance together, every
operation is a batched tensor operation, no Python loop over envs):

* **Target.** At reset and after every step a new target is drawn uniformly
  from ``[0, max_target)`` with the env's own ``torch.Generator``.
* **Reward** (shared by the team, one scalar per env). With ``a`` the joint
  action and ``g`` the opponent's guess of ``a[0]``:
  ``2.0`` if ``sum(a) == target`` and ``g != a[0]``; ``1.0`` if
  ``sum(a) == target`` and ``g == a[0]``; ``0.0`` otherwise.
* **Opponent / history.** ``counts[env, target, action]`` holds how often agent 0
  played ``action`` when the target was ``target``, *within the current
  episode* (cleared at reset, as in the paper's reference implementation,
  whose history lives in the episode state). The guess is made before the
  current pick is recorded: ``g = argmax(counts[env, target])`` with ties broken
  towards the lowest action index; with no history for that target all counts
  tie at 0, so the guess is action 0. The table has one row per target value
  (``max_target`` rows), so every target has its own history.
* **Episode length.** An episode has exactly ``max_steps`` (100) steps: the
  ``max_steps``-th step returns ``truncated = done = True`` (a time limit, so
  ``terminated`` is always False); steps 1..99 return ``done = False``.

Observation of agent ``i`` (float, all in ``[0, 1]``)::

    [one_hot(target, max_target), step / max_steps, one_hot(i, n_agents)]

``step`` counts the steps taken in the episode (0 after reset, ``max_steps`` in
the final observation). The agent-id one-hot is there because all agents
otherwise see the same vector and BenchMARL's default models share parameters
(the paper's Mava runs append the same one-hot ids, ``implicit_agent_id:
False``); ``obs_agent_id: false`` in the task YAML drops it (Appendix B's bare
observation). The global ``state`` is ``[one_hot(target, max_target), step /
max_steps]``. The history is hidden from both (it is the opponent's).

TensorDict layout (BenchMARL's SMACv2 layout, batch ``(num_envs,)``):
``("agents", "observation")`` ``(num_envs, n_agents, obs_dim)``,
``("agents", "action_mask")`` bool ``(num_envs, n_agents, num_actions)`` (all
True), ``("agents", "action")`` integer ``(num_envs, n_agents)``, ``"state"``,
shared ``"reward"`` ``(num_envs, 1)``, ``"done"/"terminated"/"truncated"``
``(num_envs, 1)`` and ``"info"`` (``sum_hit``, ``guess_correct``, ``guess`` of
the last step).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, MISSING
from typing import Any, Callable, Dict, List, Optional

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Binary, Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from benchmarl.environments.common import Task, TaskClass
from benchmarl.utils import _read_yaml_config, DEVICE_TYPING

__all__ = [
    "CoordSumEnv",
    "CoordSumClass",
    "CoordSumTask",
    "CoordSumTaskConfig",
    "TASK_NAMES",
    "parse_task_name",
    "validate_sizes",
]

ENV_NAME = "coordsum"

#: The four tasks of the paper (Appendix B / Table 1), ``<n_agents>x<num_actions>-<max_target>``.
TASK_NAMES = ("3x10-30", "3x30-50", "5x20-80", "8x15-100")

_NAME_RE = re.compile(r"^(\d+)x(\d+)-(\d+)$")


def parse_task_name(name: str) -> tuple:
    """``"3x10-30"`` -> ``(n_agents, num_actions, max_target) = (3, 10, 30)``."""
    match = _NAME_RE.match(name.lower())
    if match is None:
        raise ValueError(
            f"CoordSum task name '{name}' does not follow "
            "'<n_agents>x<num_actions>-<max_target>' (e.g. '3x10-30')."
        )
    return tuple(int(g) for g in match.groups())


def validate_sizes(n_agents, num_actions, max_target, max_steps=100) -> None:
    """Raise a ValueError naming the fix when a CoordSum size is out of range."""
    problems = []
    for field, value, low, why in (
        ("n_agents", n_agents, 1, "at least one agent"),
        ("num_actions", num_actions, 2, "at least two actions, or nothing is chosen"),
        ("max_target", max_target, 1, "targets are drawn from [0, max_target)"),
        ("max_steps", max_steps, 1, "an episode needs at least one step"),
    ):
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{field} must be an integer, got {value!r}")
        elif value < low:
            problems.append(f"{field} must be >= {low} ({why}), got {value}")
    if problems:
        raise ValueError(
            "Invalid CoordSum configuration: "
            + "; ".join(problems)
            + ". Fix the values in the task YAML (conf/task/coordsum/<name>.yaml) or the "
            "hydra overrides (e.g. task.n_agents=3 task.num_actions=10 task.max_target=30)."
        )


class CoordSumEnv(EnvBase):
    """Batched CoordSum environment (see the module docstring for the rules).

    Args:
        n_agents: number of agents (>= 1).
        num_actions: actions per agent, the integers ``[0, num_actions)`` (>= 2).
        max_target: targets are uniform in ``[0, max_target)`` (>= 1).
        max_steps: episode length; the last step is a truncation. Default 100.
        obs_agent_id: append a one-hot agent id to each observation. Default True.
        num_envs: batch size (number of independent envs). Default 1.
        device: torch device of every tensor.
        seed: seed of the env's ``torch.Generator`` (None: a random seed).
    """

    batch_locked = True

    def __init__(
        self,
        n_agents: int,
        num_actions: int,
        max_target: int,
        max_steps: int = 100,
        obs_agent_id: bool = True,
        num_envs: int = 1,
        device: DEVICE_TYPING = "cpu",
        seed: Optional[int] = None,
    ):
        validate_sizes(n_agents, num_actions, max_target, max_steps)
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"CoordSum num_envs must be an integer >= 1, got {num_envs!r}")
        super().__init__(device=device, batch_size=torch.Size([num_envs]))
        self.n_agents = n_agents
        self.num_actions = num_actions
        self.max_target = max_target
        self.max_steps = max_steps
        self.obs_agent_id = bool(obs_agent_id)
        self.num_envs = num_envs
        self.group_map = {"agents": [f"agent_{i}" for i in range(n_agents)]}
        self.state_dim = max_target + 1
        self.obs_dim = self.state_dim + (n_agents if self.obs_agent_id else 0)

        dev = self.device
        self._env_idx = torch.arange(num_envs, device=dev)
        self._agent_id = torch.eye(n_agents, device=dev)
        self._target = torch.zeros(num_envs, dtype=torch.long, device=dev)
        self._step_count = torch.zeros(num_envs, dtype=torch.long, device=dev)
        self._counts = torch.zeros(
            num_envs, max_target, num_actions, dtype=torch.long, device=dev
        )
        self._rng = torch.Generator(device=dev)
        self._make_specs()
        if seed is None:
            self._rng.seed()
        else:
            self.set_seed(seed)

    # ------------------------------------------------------------------ specs
    def _make_specs(self) -> None:
        n, na, dev = self.num_envs, self.n_agents, self.device
        agent_shape = (n, na)
        bool_flag = lambda: Categorical(2, shape=(n, 1), dtype=torch.bool, device=dev)  # noqa: E731
        self.observation_spec = Composite(
            agents=Composite(
                observation=Bounded(
                    0.0, 1.0, shape=(*agent_shape, self.obs_dim), dtype=torch.float32, device=dev
                ),
                action_mask=Binary(
                    n=self.num_actions, shape=(*agent_shape, self.num_actions),
                    dtype=torch.bool, device=dev,
                ),
                shape=agent_shape,
                device=dev,
            ),
            state=Bounded(0.0, 1.0, shape=(n, self.state_dim), dtype=torch.float32, device=dev),
            info=Composite(
                sum_hit=bool_flag(),
                guess_correct=bool_flag(),
                guess=Categorical(self.num_actions, shape=(n, 1), dtype=torch.long, device=dev),
                shape=(n,),
                device=dev,
            ),
            shape=(n,),
            device=dev,
        )
        self.full_action_spec = Composite(
            agents=Composite(
                action=Categorical(self.num_actions, shape=agent_shape, dtype=torch.long, device=dev),
                shape=agent_shape,
                device=dev,
            ),
            shape=(n,),
            device=dev,
        )
        self.full_reward_spec = Composite(
            reward=Unbounded(shape=(n, 1), dtype=torch.float32, device=dev),
            shape=(n,),
            device=dev,
        )
        self.full_done_spec = Composite(
            done=bool_flag(), terminated=bool_flag(), truncated=bool_flag(), shape=(n,), device=dev
        )

    # --------------------------------------------------------------- dynamics
    def _set_seed(self, seed: Optional[int]) -> None:
        if seed is None:
            self._rng.seed()
        else:
            self._rng.manual_seed(int(seed))

    def _sample_targets(self) -> torch.Tensor:
        return torch.randint(
            0, self.max_target, (self.num_envs,), generator=self._rng, device=self.device
        )

    def _observe(self, info: Dict[str, torch.Tensor], reward=None) -> TensorDict:
        n, na = self.num_envs, self.n_agents
        target_1h = torch.nn.functional.one_hot(self._target, self.max_target).to(torch.float32)
        step = (self._step_count.to(torch.float32) / self.max_steps).unsqueeze(-1)
        state = torch.cat([target_1h, step], dim=-1)
        obs = state.unsqueeze(1).expand(n, na, self.state_dim)
        if self.obs_agent_id:
            obs = torch.cat([obs, self._agent_id.expand(n, na, na)], dim=-1)
        truncated = (self._step_count >= self.max_steps).unsqueeze(-1)
        agents = TensorDict(
            {
                "observation": obs,
                "action_mask": torch.ones(
                    n, na, self.num_actions, dtype=torch.bool, device=self.device
                ),
            },
            batch_size=(n, na),
            device=self.device,
        )
        out = {
            "agents": agents,
            "state": state,
            "info": TensorDict(info, batch_size=(n,), device=self.device),
            "done": truncated.clone(),
            "terminated": torch.zeros_like(truncated),
            "truncated": truncated,
        }
        if reward is not None:
            out["reward"] = reward
        return TensorDict(out, batch_size=self.batch_size, device=self.device)

    def _reset(self, tensordict: Optional[TensorDictBase] = None, **kwargs) -> TensorDictBase:
        reset = None
        if tensordict is not None:
            reset = tensordict.get("_reset", None)
        if reset is None:
            reset = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        else:
            reset = reset.reshape(self.num_envs).to(device=self.device, dtype=torch.bool)
        # Only the envs being reset change; the others keep their state (partial reset).
        self._target = torch.where(reset, self._sample_targets(), self._target)
        self._step_count = self._step_count.masked_fill(reset, 0)
        self._counts.masked_fill_(reset.view(-1, 1, 1), 0)
        n = self.num_envs
        info = {
            "sum_hit": torch.zeros(n, 1, dtype=torch.bool, device=self.device),
            "guess_correct": torch.zeros(n, 1, dtype=torch.bool, device=self.device),
            "guess": torch.zeros(n, 1, dtype=torch.long, device=self.device),
        }
        return self._observe(info)

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict.get(("agents", "action"))
        if action.shape[-1] == self.num_actions and action.dim() == 3:  # one-hot actions
            action = action.argmax(-1)
        action = action.reshape(self.num_envs, self.n_agents).to(torch.long)
        first = action[:, 0]
        sum_hit = action.sum(-1) == self._target
        # The opponent guesses before seeing this pick: argmax of agent 0's past picks
        # for this target (torch.argmax returns the first maximum: lowest index on ties,
        # action 0 when there is no history).
        guess = self._counts[self._env_idx, self._target].argmax(-1)
        guess_correct = guess == first
        reward = torch.where(
            sum_hit,
            torch.where(guess_correct, 1.0, 2.0),
            0.0,
        ).to(torch.float32)
        self._counts[self._env_idx, self._target, first] += 1  # one (env, target) per env
        self._step_count = self._step_count + 1
        self._target = self._sample_targets()
        info = {
            "sum_hit": sum_hit.unsqueeze(-1),
            "guess_correct": guess_correct.unsqueeze(-1),
            "guess": guess.unsqueeze(-1),
        }
        return self._observe(info, reward=reward.unsqueeze(-1))

    # ------------------------------------------------------------ inspection
    @property
    def target(self) -> torch.Tensor:
        """Current target of each env, shape ``(num_envs,)`` (a copy)."""
        return self._target.clone()

    @property
    def step_count(self) -> torch.Tensor:
        """Steps taken in the current episode of each env, shape ``(num_envs,)`` (a copy)."""
        return self._step_count.clone()

    @property
    def history(self) -> torch.Tensor:
        """Agent 0's pick counts, ``(num_envs, max_target, num_actions)`` (a copy)."""
        return self._counts.clone()

    def opponent_guess(self) -> torch.Tensor:
        """The opponent's guess of agent 0's next pick for the current targets, ``(num_envs,)``."""
        return self._counts[self._env_idx, self._target].argmax(-1)

    def set_target(self, target) -> None:
        """Overwrite the current target of every env (tests, scripted evaluation).

        The observation already returned is not changed; the next step is scored
        against these targets.
        """
        target = torch.as_tensor(target, dtype=torch.long, device=self.device).expand(self.num_envs)
        if ((target < 0) | (target >= self.max_target)).any():
            raise ValueError(f"CoordSum targets must lie in [0, {self.max_target}), got {target.tolist()}")
        self._target = target.clone()


# ---------------------------------------------------------------------- BenchMARL
@dataclass
class CoordSumTaskConfig:
    """Hydra schema of a CoordSum task YAML (same fields for every CoordSum task)."""

    n_agents: int = MISSING
    num_actions: int = MISSING
    max_target: int = MISSING
    max_steps: int = MISSING
    obs_agent_id: bool = MISSING


def _check_task_config(config: Dict[str, Any]) -> Dict[str, Any]:
    """Type-check a task config dict against :class:`CoordSumTaskConfig` and validate sizes."""
    try:
        checked = CoordSumTaskConfig(**config).__dict__
    except TypeError as err:
        fields = ", ".join(CoordSumTaskConfig.__dataclass_fields__)
        raise ValueError(f"Invalid CoordSum task config {config}: {err}. Fields are: {fields}.") from None
    missing = [k for k, v in checked.items() if v is MISSING]
    if missing:
        raise ValueError(f"CoordSum task config is missing {missing}; set them in the task YAML.")
    validate_sizes(checked["n_agents"], checked["num_actions"], checked["max_target"], checked["max_steps"])
    return checked


class CoordSumClass(TaskClass):
    """BenchMARL task class of CoordSum (discrete actions only, like SMACv2)."""

    def __init__(self, name: str, config: Dict[str, Any]):
        super().__init__(name=name, config=config)
        if self.config:  # BenchMARL always passes a full config; fail early when it is wrong
            _check_task_config(self.config)

    def get_env_fun(
        self,
        num_envs: int,
        continuous_actions: bool,
        seed: Optional[int],
        device: DEVICE_TYPING,
    ) -> Callable[[], EnvBase]:
        if continuous_actions:
            raise ValueError(
                "CoordSum has discrete actions only: use an algorithm that supports "
                "discrete actions (e.g. mappo, ippo, iql, qmix, vdn, masac, isac)."
            )
        config = _check_task_config(copy.deepcopy(self.config))
        return lambda: CoordSumEnv(num_envs=num_envs, seed=seed, device=device, **config)

    def supports_continuous_actions(self) -> bool:
        return False

    def supports_discrete_actions(self) -> bool:
        return True

    def has_render(self, env: EnvBase) -> bool:
        return False

    def max_steps(self, env: EnvBase) -> int:
        return self.config["max_steps"]

    def group_map(self, env: EnvBase) -> Dict[str, List[str]]:
        return {"agents": [f"agent_{i}" for i in range(self.config["n_agents"])]}

    def observation_spec(self, env: EnvBase) -> Composite:
        spec = env.full_observation_spec_unbatched.clone()
        del spec["state"]
        del spec["info"]
        del spec[("agents", "action_mask")]
        return spec

    def action_mask_spec(self, env: EnvBase) -> Optional[Composite]:
        spec = env.full_observation_spec_unbatched.clone()
        del spec["state"]
        del spec["info"]
        del spec[("agents", "observation")]
        return spec

    def state_spec(self, env: EnvBase) -> Optional[Composite]:
        spec = env.full_observation_spec_unbatched.clone()
        del spec["agents"]
        del spec["info"]
        return spec

    def info_spec(self, env: EnvBase) -> Optional[Composite]:
        spec = env.full_observation_spec_unbatched.clone()
        del spec["agents"]
        del spec["state"]
        return spec

    def action_spec(self, env: EnvBase) -> Composite:
        return env.full_action_spec_unbatched

    @staticmethod
    def log_info(batch: TensorDictBase) -> Dict[str, float]:
        hit = batch.get(("next", "info", "sum_hit"), None)
        guessed = batch.get(("next", "info", "guess_correct"), None)
        if hit is None or guessed is None:
            return {}
        hit = hit.to(torch.float32)
        guessed = guessed.to(torch.float32)
        return {
            "collection/info/sum_hit_rate": hit.mean().item(),
            "collection/info/hit_guessed_rate": (hit * guessed).mean().item(),
            "collection/info/hit_unguessed_rate": (hit * (1 - guessed)).mean().item(),
        }

    @staticmethod
    def env_name() -> str:
        return ENV_NAME


class _CoordSumTaskBase(Task):
    """Methods of :data:`CoordSumTask` (an Enum with members cannot be subclassed)."""

    @staticmethod
    def associated_class():
        return CoordSumClass

    @classmethod
    def from_name(cls, name: str) -> "Task":
        """The member for ``"3x10-30"`` or ``"coordsum/3x10-30"`` (case-insensitive)."""
        short = name.split("/", 1)[1] if name.lower().startswith(ENV_NAME + "/") else name
        try:
            return cls[short.upper()]
        except KeyError:
            raise ValueError(
                f"Unknown CoordSum task '{name}'. Available: "
                + ", ".join(f"{ENV_NAME}/{m.name.lower()}" for m in cls)
                + ". For other sizes, load one of them and change the config, e.g. "
                "CoordSumTask.from_name('3x10-30').get_task({'n_agents': 4, ...}) or hydra "
                "overrides task.n_agents=4 task.num_actions=... task.max_target=..."
            ) from None

    def get_from_yaml(self, path: Optional[str] = None) -> TaskClass:
        """Load ``conf/task/coordsum/<name>.yaml`` of this plugin (or ``path``)."""
        from benchmarl_decentral._registry import CONF_DIR

        if path is None:
            path = CONF_DIR / "task" / ENV_NAME / f"{self.name.lower()}.yaml"
            if not path.is_file():
                raise FileNotFoundError(
                    f"CoordSum task YAML {path} is missing; reinstall benchmarl-decentral "
                    "(the conf/ folder ships inside the package)."
                )
        config = _read_yaml_config(str(path))
        return self.get_task(config=_check_task_config(config))


#: Task enum: one member per paper task, named as in the paper (``CoordSumTask["3X10-30"]``,
#: ``CoordSumTask.from_name("3x10-30")``). The names contain dashes, so the functional
#: Enum API is used; ``member.name.lower()`` is the hydra/registry name.
CoordSumTask = _CoordSumTaskBase(
    "CoordSumTask",
    [(name.upper(), None) for name in TASK_NAMES],
    module=__name__,
    qualname="CoordSumTask",
)
