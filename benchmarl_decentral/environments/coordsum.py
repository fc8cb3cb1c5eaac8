"""CoordSum: the didactic task family of MAGPO (paper 003_13ad26f9f90dcfc4.txt, Appendix B).

A team of ``n_agents`` agents sees a shared integer target and each agent picks
an integer in ``[0, num_actions)``. The team scores when the sum of the picks
equals the target; an opponent tries to guess agent 0's pick from agent 0's
past picks, and a guessed hit scores half of an unguessed one, so the team must
reach the target without a fixed, predictable split.

Task names (Appendix B "Naming Convention"): ``<n_agents>x<num_actions>-<max_target>``,
e.g. ``3x10-30`` is 3 agents, actions ``{0, ..., 9}``, targets drawn uniformly
from ``{0, ..., 29}``. Note that in 3x10-30 the largest reachable sum is 27, so
targets 28 and 29 (2 steps in 30 on average) can never be hit: this is how the
paper defines the task, not a bug here.

Two modes (``mode``, ``task.mode=...``); they share the rules below and differ
where Appendix B's text and the paper's public code (Mava/JAX,
``mava/coordsum/env.py`` of github.com/liyheng/MAGPO, the code behind Table 1)
differ:

=================  =====================================  =====================================
                   ``appendix`` (default)                 ``reference``
=================  =====================================  =====================================
history rows       one per target (``max_target`` rows)   ``num_actions`` rows; target ``t``
                                                          uses row ``min(t, num_actions - 1)``,
                                                          so all targets ``>= num_actions - 1``
                                                          share the last row
observation        ``one_hot(target)``, ``step/max_steps`` the raw integer target (as a float),
                                                          no step counter
global ``state``   ``one_hot(target)``, ``step/max_steps`` ``[target]``
last step          truncation (``truncated = True``)      termination (``terminated = True``)
=================  =====================================  =====================================

In the reference code the history is a ``(num_actions, time_limit)`` array
indexed by the target; JAX clamps out-of-range indices, which is where the
shared last row comes from. Both modes append the one-hot agent id when
``obs_agent_id`` is True (the Mava runs add it too, ``implicit_agent_id:
False``).

Dynamics, per environment of the batch (all envs advance together, every
operation is a batched tensor operation, no Python loop over envs):

* **Target.** At reset and after every step a new target is drawn uniformly
  from ``[0, max_target)`` with the env's own ``torch.Generator``.
* **Reward** (shared by the team, one scalar per env). With ``a`` the joint
  action and ``g`` the opponent's guess of ``a[0]``:
  ``2.0`` if ``sum(a) == target`` and ``g != a[0]``; ``1.0`` if
  ``sum(a) == target`` and ``g == a[0]``; ``0.0`` otherwise.
* **Opponent / history.** ``counts[env, row, action]`` holds how often agent 0
  played ``action`` in history row ``row`` (the target's row, see the modes),
  *within the current episode* (cleared at reset, as in the paper's reference
  implementation, whose history lives in the episode state). The guess is made
  before the current pick is recorded: ``g = argmax(counts[env, row])`` with
  ties broken towards the lowest action index; with no history in that row all
  counts tie at 0, so the guess is action 0.
* **Episode length.** An episode has exactly ``max_steps`` (100) steps: the
  ``max_steps``-th step returns ``done = True`` (``truncated`` in the appendix
  mode, ``terminated`` in the reference mode); steps 1..99 return ``done = False``.

Observation of agent ``i`` (float)::

    appendix:  [one_hot(target, max_target), step / max_steps, one_hot(i, n_agents)]   (all in [0, 1])
    reference: [target, one_hot(i, n_agents)]                                          (target in [0, max_target))

``step`` counts the steps taken in the episode (0 after reset, ``max_steps`` in
the final observation). The agent-id one-hot is there because all agents
otherwise see the same vector and BenchMARL's default models share parameters;
``obs_agent_id: false`` in the task YAML drops it (Appendix B's bare
observation). The history is hidden from the agents and the state (it is the
opponent's).

:func:`scripted_policy` gives two scripted teams (reference policies for reports).

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
from benchmarl.experiment.callback import Callback
from benchmarl.utils import _read_yaml_config, DEVICE_TYPING

__all__ = [
    "CoordSumEnv",
    "CoordSumHitRateCallback",
    "CoordSumClass",
    "CoordSumTask",
    "CoordSumTaskConfig",
    "MODES",
    "SCRIPTED_POLICIES",
    "TASK_NAMES",
    "parse_task_name",
    "scripted_policy",
    "validate_mode",
    "validate_sizes",
]

ENV_NAME = "coordsum"

#: The four tasks of the paper (Appendix B / Table 1), ``<n_agents>x<num_actions>-<max_target>``.
TASK_NAMES = ("3x10-30", "3x30-50", "5x20-80", "8x15-100")

_NAME_RE = re.compile(r"^(\d+)x(\d+)-(\d+)$")

#: ``appendix``: Appendix B's text (one history row per target, one-hot target and step
#: counter, truncation at the last step); ``reference``: the paper's public code, behind
#: Table 1 (``num_actions`` history rows, raw target, no step counter, termination).
MODES = ("appendix", "reference")


def parse_task_name(name: str) -> tuple:
    """``"3x10-30"`` -> ``(n_agents, num_actions, max_target) = (3, 10, 30)``."""
    match = _NAME_RE.match(name.lower())
    if match is None:
        raise ValueError(
            f"CoordSum task name '{name}' does not follow "
            "'<n_agents>x<num_actions>-<max_target>' (e.g. '3x10-30')."
        )
    return tuple(int(g) for g in match.groups())


def validate_mode(mode: Any) -> None:
    """Raise a ValueError naming the fix when ``mode`` is not one of :data:`MODES`."""
    if mode not in MODES:
        raise ValueError(
            f"Unknown CoordSum mode {mode!r}. Use task.mode=appendix (Appendix B's text: one history "
            "row per target, one-hot target + step counter, the default) or task.mode=reference (the "
            "paper's public code, behind its Table 1: num_actions history rows, raw integer target); "
            "in Python, CoordSumEnv(..., mode='reference') or the task config's 'mode' entry."
        )


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
        max_steps: episode length; the last step is a truncation (appendix mode) or a
            termination (reference mode). Default 100.
        obs_agent_id: append a one-hot agent id to each observation. Default True.
        mode: ``"appendix"`` (Appendix B's text) or ``"reference"`` (the public code
            behind Table 1); see the module docstring. Default ``"appendix"``.
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
        mode: str = "appendix",
        num_envs: int = 1,
        device: DEVICE_TYPING = "cpu",
        seed: Optional[int] = None,
    ):
        validate_sizes(n_agents, num_actions, max_target, max_steps)
        validate_mode(mode)
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"CoordSum num_envs must be an integer >= 1, got {num_envs!r}")
        super().__init__(device=device, batch_size=torch.Size([num_envs]))
        self.n_agents = n_agents
        self.num_actions = num_actions
        self.max_target = max_target
        self.max_steps = max_steps
        self.obs_agent_id = bool(obs_agent_id)
        self.mode = mode
        self.num_envs = num_envs
        self.group_map = {"agents": [f"agent_{i}" for i in range(n_agents)]}
        self.reference = mode == "reference"
        #: rows of the opponent's history table (reference: targets >= num_actions - 1 share the last)
        self.history_rows = num_actions if self.reference else max_target
        self.state_dim = 1 if self.reference else max_target + 1
        self.obs_dim = self.state_dim + (n_agents if self.obs_agent_id else 0)

        dev = self.device
        self._env_idx = torch.arange(num_envs, device=dev)
        self._agent_id = torch.eye(n_agents, device=dev)
        self._target = torch.zeros(num_envs, dtype=torch.long, device=dev)
        self._step_count = torch.zeros(num_envs, dtype=torch.long, device=dev)
        self._counts = torch.zeros(
            num_envs, self.history_rows, num_actions, dtype=torch.long, device=dev
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
        # every feature is in [0, 1] except the raw target of the reference mode
        high = torch.ones(self.obs_dim, device=dev)
        if self.reference:
            high[0] = max(self.max_target - 1, 1)
        self.observation_spec = Composite(
            agents=Composite(
                observation=Bounded(
                    torch.zeros_like(high).expand(*agent_shape, self.obs_dim),
                    high.expand(*agent_shape, self.obs_dim),
                    shape=(*agent_shape, self.obs_dim), dtype=torch.float32, device=dev,
                ),
                action_mask=Binary(
                    n=self.num_actions, shape=(*agent_shape, self.num_actions),
                    dtype=torch.bool, device=dev,
                ),
                shape=agent_shape,
                device=dev,
            ),
            state=Bounded(
                torch.zeros_like(high[: self.state_dim]).expand(n, self.state_dim),
                high[: self.state_dim].expand(n, self.state_dim),
                shape=(n, self.state_dim), dtype=torch.float32, device=dev,
            ),
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

    def _row(self, target: torch.Tensor) -> torch.Tensor:
        """History row of each target (reference mode: clamped to the last of ``num_actions`` rows)."""
        return target.clamp(max=self.num_actions - 1) if self.reference else target

    def _observe(self, info: Dict[str, torch.Tensor], reward=None) -> TensorDict:
        n, na = self.num_envs, self.n_agents
        if self.reference:
            state = self._target.to(torch.float32).unsqueeze(-1)
        else:
            target_1h = torch.nn.functional.one_hot(self._target, self.max_target).to(torch.float32)
            step = (self._step_count.to(torch.float32) / self.max_steps).unsqueeze(-1)
            state = torch.cat([target_1h, step], dim=-1)
        obs = state.unsqueeze(1).expand(n, na, self.state_dim)
        if self.obs_agent_id:
            obs = torch.cat([obs, self._agent_id.expand(n, na, na)], dim=-1)
        last = (self._step_count >= self.max_steps).unsqueeze(-1)
        # the last step ends the episode: a time limit (appendix) or a termination (reference)
        terminated = last if self.reference else torch.zeros_like(last)
        truncated = torch.zeros_like(last) if self.reference else last
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
            "done": last.clone(),
            "terminated": terminated,
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
        # in this target's row (torch.argmax returns the first maximum: lowest index on
        # ties, action 0 when there is no history).
        row = self._row(self._target)
        guess = self._counts[self._env_idx, row].argmax(-1)
        guess_correct = guess == first
        reward = torch.where(
            sum_hit,
            torch.where(guess_correct, 1.0, 2.0),
            0.0,
        ).to(torch.float32)
        self._counts[self._env_idx, row, first] += 1  # one (env, row) per env
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
        """Agent 0's pick counts, ``(num_envs, history_rows, num_actions)`` (a copy).

        ``history_rows`` is ``max_target`` (appendix mode) or ``num_actions`` (reference mode).
        """
        return self._counts.clone()

    def opponent_guess(self) -> torch.Tensor:
        """The opponent's guess of agent 0's next pick for the current targets, ``(num_envs,)``."""
        return self._counts[self._env_idx, self._row(self._target)].argmax(-1)

    def set_target(self, target) -> None:
        """Overwrite the current target of every env (tests, scripted evaluation).

        The observation already returned is not changed; the next step is scored
        against these targets.
        """
        target = torch.as_tensor(target, dtype=torch.long, device=self.device).expand(self.num_envs)
        if ((target < 0) | (target >= self.max_target)).any():
            raise ValueError(f"CoordSum targets must lie in [0, {self.max_target}), got {target.tolist()}")
        self._target = target.clone()


# ---------------------------------------------------------------- scripted teams
#: Names accepted by :func:`scripted_policy`.
SCRIPTED_POLICIES = ("best_response", "agent0_deterministic")


def _coordsum_base(env: Any) -> CoordSumEnv:
    """The :class:`CoordSumEnv` inside ``env`` (itself, or under TorchRL ``TransformedEnv`` layers)."""
    seen = set()
    while not isinstance(env, CoordSumEnv):
        inner = getattr(env, "base_env", None)
        if inner is None or id(inner) in seen:
            raise TypeError(
                f"scripted_policy needs a CoordSum env (a CoordSumEnv, possibly inside TorchRL "
                f"TransformedEnv layers, as BenchMARL builds it), got {type(env).__name__}; build it "
                "with task.get_env_fun(...)() of a coordsum/* task."
            )
        seen.add(id(inner))
        env = inner
    return env


def _team_split(target: torch.Tensor, first: torch.Tensor, n_agents: int, num_actions: int) -> torch.Tensor:
    """Joint picks ``(*B, n_agents)``: agent 0 plays ``first``, agents ``1..n-1`` split the rest
    as evenly as possible (the first ``rest % (n-1)`` of them one more). Unreachable targets
    (``target > n_agents * (num_actions - 1)``): everyone plays ``num_actions - 1``.
    """
    top = num_actions - 1
    if n_agents == 1:
        picks = first.unsqueeze(-1)
    else:
        rest = target - first
        base, extra = rest // (n_agents - 1), rest % (n_agents - 1)
        others = torch.arange(n_agents - 1, device=target.device)
        tail = base.unsqueeze(-1) + (others < extra.unsqueeze(-1)).long()
        picks = torch.cat([first.unsqueeze(-1), tail], dim=-1)
    reachable = (target <= n_agents * top).unsqueeze(-1)
    return torch.where(reachable, picks, torch.full_like(picks, top))


def _first_pick(target: torch.Tensor, name: str, n_agents: int, num_actions: int, shared_row: bool) -> torch.Tensor:
    """Agent 0's pick for each target under the scripted team ``name`` (see :func:`scripted_policy`)."""
    top = num_actions - 1
    low = (target - (n_agents - 1) * top).clamp(min=0)  # the others can add at most (n-1) * top
    high = target.clamp(max=top)
    if name == "agent0_deterministic" or not shared_row:
        return high
    # best_response, reference mode: targets >= top share one history row; agent 0 cycles
    # through [max(low, 1), high] over them, so its picks in that row are spread evenly and
    # the majority guess rarely matches (0 is left out: it is the guess with no history).
    start = low.clamp(min=1)
    width = (high - start + 1).clamp(min=1)
    cycled = start + (target - top).clamp(min=0) % width
    return torch.where(target >= top, cycled, high).clamp(max=top)


class _ScriptedTeam:
    """Callable ``td -> td`` writing ``(group, "action")`` from each agent's own observation."""

    def __init__(self, env: CoordSumEnv, name: str, group: str):
        self.name, self.group = name, group
        self.n_agents, self.num_actions = env.n_agents, env.num_actions
        self.max_target, self.reference = env.max_target, env.reference
        self.shared_row = env.reference and env.max_target > env.num_actions - 1

    def read_target(self, observation: torch.Tensor) -> torch.Tensor:
        """Each agent's reading of the target from its own observation, ``(*B, n_agents)``."""
        if self.reference:
            return observation[..., 0].round().long()
        return observation[..., : self.max_target].argmax(-1)

    def __call__(self, td: TensorDictBase) -> TensorDictBase:
        target = self.read_target(td.get((self.group, "observation")))
        first = _first_pick(target, self.name, self.n_agents, self.num_actions, self.shared_row)
        joint = _team_split(target, first, self.n_agents, self.num_actions)  # (*B, n, n): agent i's plan
        own = joint.diagonal(dim1=-2, dim2=-1)  # agent i plays its own entry of the plan it computed
        td.set((self.group, "action"), own.to(torch.long))
        return td

    def __repr__(self) -> str:
        return f"CoordSum scripted team '{self.name}' ({self.n_agents} agents)"


def scripted_policy(env: Any, name: str) -> Callable[[TensorDictBase], TensorDictBase]:
    """A scripted CoordSum team: a callable ``td -> td`` that writes ``("agents", "action")``.

    Every agent reads only its own observation (the target), so the team is
    decentralized, memoryless and deterministic, as a deployed learner is. It works
    for any batch of CoordSum envs, in both modes, and under TorchRL transforms
    (``env.rollout(max_steps, policy=scripted_policy(env, "best_response"))``).

    With ``t`` the target, ``top = num_actions - 1``, agent 0's feasible range is
    ``[low, high] = [max(0, t - (n_agents - 1) * top), min(t, top)]`` (the others
    can add at most ``(n_agents - 1) * top``); agents ``1..n-1`` split ``t - a0`` as
    evenly as possible, so the sum is always the target when it is reachable
    (otherwise every agent plays ``top``). The teams differ in agent 0's pick ``a0``:

    * ``"agent0_deterministic"``: ``a0 = high`` (agent 0 plays as much as it can).
      In the reference mode agent 0 plays ``top`` on every target sharing the last
      history row, so the opponent guesses it from the second visit of that row on:
      the team hits every reachable target but is read by the opponent, the score
      of a fixed split.
    * ``"best_response"``: the best independent (target-only) response to the
      opponent. On a history row that holds one target (every row in the appendix
      mode; targets ``< top`` in the reference mode) ``a0 = high``, non-zero for
      ``t > 0``, so the first visit is unguessed (the no-history guess is 0); a
      target-only deterministic team cannot avoid the guess on later visits, and a
      randomizing agent 0 would break the sum, so nothing that reads only the
      target does better there. On the shared last row of the reference mode agent
      0 cycles through ``[max(low, 1), high]`` over the targets ``t >= top``
      (``a0 = max(low, 1) + (t - top) mod width``), spreading its picks evenly so
      that the majority guess rarely matches.

    Both ignore the step counter of the appendix mode; a team that varied agent 0's
    pick with it (the same for all agents, so the sum still holds) could dodge the
    guess on repeated targets too, so ``best_response`` is the best target-only team,
    not an upper bound on every policy.

    Args:
        env: a CoordSum env as the task builds it (``CoordSumEnv`` or a
            ``TransformedEnv`` around one).
        name: one of :data:`SCRIPTED_POLICIES`.

    Returns:
        A callable ``td -> td`` (the same tensordict, with the group's action set).

    Raises:
        ValueError: unknown ``name``.
        TypeError: ``env`` holds no CoordSum env.
    """
    if name not in SCRIPTED_POLICIES:
        raise ValueError(
            f"Unknown CoordSum scripted policy {name!r}; choose one of {list(SCRIPTED_POLICIES)}."
        )
    base = _coordsum_base(env)
    (group,) = base.group_map
    return _ScriptedTeam(base, name, group)


# ---------------------------------------------------------------------- BenchMARL
class CoordSumHitRateCallback(Callback):
    """Logs CoordSum's team metric after every evaluation: ``eval/info/sum_hit_rate``.

    The fraction of the evaluation steps (all episodes, up to each one's
    ``done``) whose joint pick summed to the target, read from
    ``("next", "info", "sum_hit")``. BenchMARL's evaluation logs rewards only;
    with private rewards (``coordsum_private/*``) no logged return is the team's.
    """

    def on_evaluation_end(self, rollouts: List[TensorDictBase]) -> None:
        hits = [r.get(("next", "info", "sum_hit")).reshape(-1).float() for r in rollouts
                if ("next", "info", "sum_hit") in r.keys(True)]
        if not hits:
            return
        rate = torch.cat(hits).mean().item()
        self.experiment.logger.log({"eval/info/sum_hit_rate": rate}, step=self.experiment.n_iters_performed)


@dataclass
class CoordSumTaskConfig:
    """Hydra schema of a CoordSum task YAML (same fields for every CoordSum task)."""

    n_agents: int = MISSING
    num_actions: int = MISSING
    max_target: int = MISSING
    max_steps: int = MISSING
    obs_agent_id: bool = MISSING
    # "appendix" | "reference"; a default so that configs saved before the field existed load
    mode: str = "appendix"


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
    validate_mode(checked["mode"])
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
        from benchmarl_decentral._paths import CONF_DIR

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
