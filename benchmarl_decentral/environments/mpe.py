"""MPE simple spread as a batched torch environment (``task=mpe/simple_spread``).

The Multi-Agent Particle Environment's *simple spread* (Mordatch & Abbeel, 2018), the
testbed of DecPG (paper 002_4f291ba56d03e11d.txt, sec. 5: "Simple Spread [...] with
agent counts ranging from 8 to 12"), ported step for step from PettingZoo's
``simple_spread_v3`` (pettingzoo 1.24, ``pettingzoo/mpe/simple_spread`` and
``_mpe_utils/core.py``) so that all environments of a batch advance in one tensor
operation. BenchMARL's ``pettingzoo/simple_spread`` steps one PettingZoo world per
environment in Python (2.6 ms per step at ``N = 8`` through TorchRL's wrapper, 175x fewer
env-steps/s than this port with 60 envs: ``benchmarks/mpe_step.py``),
which puts a few hundred thousand frames with eight agents out of reach on a CPU; this
port runs the same task at the cost of a few tensor operations per step.
``tests/test_mpe.py`` checks it against PettingZoo itself: from the same start state and
the same actions, the float32 observations and rewards are PettingZoo's (the world, in float64 as
PettingZoo's, agrees to 1e-9) over whole episodes with contacts.

World (PettingZoo's ``World`` defaults and the scenario's settings):

* ``N`` agents (radius 0.15, mass 1, colliding) and ``N`` landmarks (fixed, not colliding);
  positions uniform in ``[-1, 1]^2`` at reset, velocities 0.
* **Actions.** Discrete (``Discrete(5)``): 0 no-op, 1 ``-x``, 2 ``+x``, 3 ``-y``, 4 ``+y``.
  Continuous (``Box(0, 1, (5,))``, PettingZoo's layout): ``u = (a_2 - a_1, a_4 - a_3)``.
  Either way the force is ``5 u`` (the scenario's sensitivity); no action noise.
* **Contacts** between agents ``i != j``: ``F_ij = 100 (p_i - p_j) / d_ij * 1e-3 *
  log(1 + exp(-(d_ij - 0.3) / 1e-3))`` (PettingZoo's soft penetration), summed over ``j``.
* **Integration** (``dt = 0.1``, damping 0.25, no speed cap): ``p += v dt``, then
  ``v = 0.75 v + F dt``.
* **Reward** of agent ``i`` after the step, with ``local_ratio = l``:
  ``(1 - l) * global + l * local_i``, ``global = - sum_landmarks min_agents distance``,
  ``local_i = -`` (number of other agents closer than 0.3 to agent ``i``).
* **Observation** of agent ``i`` (float32, ``6 N`` features): own velocity, own position,
  every landmark's position relative to ``i`` (landmark order), every other agent's
  position relative to ``i`` (agent order without ``i``), and the other agents'
  communication states, which are always 0 in simple spread (silent agents; kept so that
  the observation is PettingZoo's, feature for feature).
* **Episode**: ``max_cycles`` steps (PettingZoo's default 25, the MPE episode length);
  the last step is a truncation. ``"state"`` is the agents' observations concatenated
  (PettingZoo's ``state()``).

TensorDict layout (PettingZoo's in BenchMARL: one group ``"agent"``): ``("agent",
"observation")`` ``(num_envs, N, obs_dim)``, ``("agent", "action")``, per-agent
``("agent", "reward")`` ``(num_envs, N, 1)``, ``"state"`` and ``"done"``/``"terminated"``/
``"truncated"`` ``(num_envs, 1)``, ``"info"`` with the scenario's benchmark data of the
step (``global_reward``, ``collisions``: agent pairs in contact, ``occupied_landmarks``:
landmarks with an agent within 0.1).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, MISSING
from typing import Any, Callable, Dict, List, Optional

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from benchmarl.environments.common import Task, TaskClass
from benchmarl.utils import _read_yaml_config, DEVICE_TYPING

__all__ = ["MpeSimpleSpreadEnv", "MpeClass", "MpeTask", "MpeSimpleSpreadConfig", "NearestLandmarkPolicy"]

ENV_NAME = "mpe"
GROUP = "agent"

# PettingZoo MPE constants (World, Agent and the simple spread scenario)
DT = 0.1
DAMPING = 0.25
CONTACT_FORCE = 1e2
CONTACT_MARGIN = 1e-3
AGENT_SIZE = 0.15
SENSITIVITY = 5.0
DIM_C = 2
OCCUPIED_DISTANCE = 0.1


def validate_config(N: Any, local_ratio: Any, max_cycles: Any) -> None:
    """Raise one ValueError naming every bad field of a simple spread config and the fix."""
    problems = []
    if isinstance(N, bool) or not isinstance(N, int) or N < 1:
        problems.append(f"N (agents = landmarks) must be an integer >= 1, got {N!r}")
    if isinstance(local_ratio, bool) or not isinstance(local_ratio, (int, float)) or not 0 <= local_ratio <= 1:
        problems.append(f"local_ratio must be a number in [0, 1] (the weight of the collision term), got {local_ratio!r}")
    if isinstance(max_cycles, bool) or not isinstance(max_cycles, int) or max_cycles < 1:
        problems.append(f"max_cycles (episode length) must be an integer >= 1, got {max_cycles!r}")
    if problems:
        raise ValueError(
            "Invalid MPE simple spread configuration: " + "; ".join(problems)
            + ". Fix conf/task/mpe/simple_spread.yaml or the overrides (e.g. task.N=8 task.local_ratio=0.5 "
            "task.max_cycles=25)."
        )


class MpeSimpleSpreadEnv(EnvBase):
    """Batched MPE simple spread (see the module docstring for the rules).

    Args:
        N: agents and landmarks (>= 1). Default 3 (PettingZoo's default).
        local_ratio: weight of the agent's own collision penalty against the team's
            distance term. Default 0.5.
        max_cycles: episode length. Default 25.
        continuous_actions: PettingZoo's ``Box(0, 1, (5,))`` actions instead of ``Discrete(5)``.
        num_envs: batch size. Default 1.
        device: torch device.
        dtype: floating dtype of the physics. Default float64, PettingZoo's (numpy's): the
            port then replays PettingZoo's worlds to 1e-12; float32 drifts by about 1e-4 in an
            episode with contacts (the stiff contact force amplifies rounding), for speed on GPUs.
        seed: seed of the env's ``torch.Generator`` (None: a random seed).
    """

    batch_locked = True

    def __init__(
        self,
        N: int = 3,
        local_ratio: float = 0.5,
        max_cycles: int = 25,
        continuous_actions: bool = False,
        num_envs: int = 1,
        device: DEVICE_TYPING = "cpu",
        dtype: torch.dtype = torch.float64,
        seed: Optional[int] = None,
    ):
        validate_config(N, local_ratio, max_cycles)
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"MPE simple spread num_envs must be an integer >= 1, got {num_envs!r}")
        super().__init__(device=device, batch_size=torch.Size([num_envs]))
        self.N, self.local_ratio, self.max_cycles = N, float(local_ratio), max_cycles
        self.continuous_actions = bool(continuous_actions)
        self.num_envs = num_envs
        self.dtype = dtype
        self.group_map = {GROUP: [f"agent_{i}" for i in range(N)]}
        self.obs_dim = 4 + 2 * N + 2 * (N - 1) + DIM_C * (N - 1)
        dev = self.device
        self.agent_pos = torch.zeros(num_envs, N, 2, dtype=dtype, device=dev)
        self.agent_vel = torch.zeros_like(self.agent_pos)
        self.landmark_pos = torch.zeros_like(self.agent_pos)
        self._steps = torch.zeros(num_envs, dtype=torch.long, device=dev)
        # pairs of distinct agents, and the other agents of each agent in agent order without itself
        self._off_diagonal = ~torch.eye(N, dtype=torch.bool, device=dev)
        others = torch.arange(N, device=dev).expand(N, N)
        self._others = others[self._off_diagonal].reshape(N, N - 1)
        self._rng = torch.Generator(device=dev)
        self._make_specs()
        if seed is None:
            self._rng.seed()
        else:
            self.set_seed(seed)

    # ------------------------------------------------------------------ specs
    def _make_specs(self) -> None:
        n, N, dev = self.num_envs, self.N, self.device
        flag = lambda: Categorical(2, shape=(n, 1), dtype=torch.bool, device=dev)  # noqa: E731
        self.observation_spec = Composite(
            {GROUP: Composite(
                observation=Unbounded(shape=(n, N, self.obs_dim), dtype=torch.float32, device=dev),
                shape=(n, N), device=dev)},
            state=Unbounded(shape=(n, N * self.obs_dim), dtype=torch.float32, device=dev),
            info=Composite(
                global_reward=Unbounded(shape=(n, 1), dtype=torch.float32, device=dev),
                collisions=Unbounded(shape=(n, 1), dtype=torch.float32, device=dev),
                occupied_landmarks=Unbounded(shape=(n, 1), dtype=torch.float32, device=dev),
                shape=(n,), device=dev),
            shape=(n,), device=dev,
        )
        if self.continuous_actions:
            action = Bounded(0.0, 1.0, shape=(n, N, 5), dtype=torch.float32, device=dev)
        else:
            action = Categorical(5, shape=(n, N), dtype=torch.long, device=dev)
        self.full_action_spec = Composite(
            {GROUP: Composite(action=action, shape=(n, N), device=dev)}, shape=(n,), device=dev)
        self.full_reward_spec = Composite(
            {GROUP: Composite(reward=Unbounded(shape=(n, N, 1), dtype=torch.float32, device=dev),
                              shape=(n, N), device=dev)},
            shape=(n,), device=dev)
        self.full_done_spec = Composite(
            done=flag(), terminated=flag(), truncated=flag(), shape=(n,), device=dev)

    # --------------------------------------------------------------- dynamics
    def _set_seed(self, seed: Optional[int]) -> None:
        if seed is None:
            self._rng.seed()
        else:
            self._rng.manual_seed(int(seed))

    def _uniform(self) -> torch.Tensor:
        u = torch.rand(self.num_envs, self.N, 2, generator=self._rng, device=self.device, dtype=self.dtype)
        return 2 * u - 1

    def set_state(self, agent_pos, landmark_pos, agent_vel=None) -> None:
        """Overwrite the world of every env, ``(num_envs, N, 2)`` each (tests, replay of a PettingZoo world).

        The observation already returned is not changed.
        """
        shape = (self.num_envs, self.N, 2)
        as_t = lambda x: torch.as_tensor(x, dtype=self.dtype, device=self.device).expand(shape).clone()  # noqa: E731
        self.agent_pos, self.landmark_pos = as_t(agent_pos), as_t(landmark_pos)
        self.agent_vel = as_t(0.0 if agent_vel is None else agent_vel)

    def _force(self, action: torch.Tensor) -> torch.Tensor:
        """Each agent's action force plus its contact forces, ``(num_envs, N, 2)``."""
        if self.continuous_actions:
            # the differences in the action's own dtype, as PettingZoo computes them (float32 actions)
            u = torch.stack([action[..., 2] - action[..., 1], action[..., 4] - action[..., 3]], dim=-1).to(self.dtype)
        else:
            a = action.long()
            u = torch.zeros(*a.shape, 2, dtype=self.dtype, device=self.device)
            u[..., 0] = (a == 2).to(self.dtype) - (a == 1).to(self.dtype)
            u[..., 1] = (a == 4).to(self.dtype) - (a == 3).to(self.dtype)
        force = SENSITIVITY * u
        if self.N > 1:
            delta = self.agent_pos.unsqueeze(2) - self.agent_pos.unsqueeze(1)  # p_i - p_j
            dist = delta.norm(dim=-1, keepdim=True)
            k = CONTACT_MARGIN
            penetration = torch.nn.functional.softplus(-(dist - 2 * AGENT_SIZE) / k) * k
            pairs = self._off_diagonal.unsqueeze(-1)
            contact = CONTACT_FORCE * delta / dist.masked_fill(~pairs, 1.0) * penetration
            force = force + (contact * pairs).sum(2)
        return force

    def _observe(self, reward: Optional[torch.Tensor] = None, info: Optional[Dict] = None) -> TensorDict:
        n, N = self.num_envs, self.N
        pos = self.agent_pos
        landmarks = (self.landmark_pos.unsqueeze(1) - pos.unsqueeze(2)).reshape(n, N, 2 * N)
        others = (pos[:, self._others] - pos.unsqueeze(2)).reshape(n, N, 2 * (N - 1))
        comm = pos.new_zeros(n, N, DIM_C * (N - 1))
        obs = torch.cat([self.agent_vel, pos, landmarks, others, comm], dim=-1).to(torch.float32)
        last = (self._steps >= self.max_cycles).unsqueeze(-1)
        if info is None:
            zero = torch.zeros(n, 1, dtype=torch.float32, device=self.device)
            info = {"global_reward": zero, "collisions": zero.clone(), "occupied_landmarks": zero.clone()}
        out = {
            GROUP: TensorDict({"observation": obs}, batch_size=(n, N), device=self.device),
            "state": obs.reshape(n, N * self.obs_dim),
            "info": TensorDict(info, batch_size=(n,), device=self.device),
            "done": last.clone(), "terminated": torch.zeros_like(last), "truncated": last,
        }
        if reward is not None:
            out[GROUP]["reward"] = reward
        return TensorDict(out, batch_size=self.batch_size, device=self.device)

    def _reset(self, tensordict: Optional[TensorDictBase] = None, **kwargs) -> TensorDictBase:
        reset = None if tensordict is None else tensordict.get("_reset", None)
        if reset is None:
            reset = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        else:
            reset = reset.reshape(self.num_envs).to(device=self.device, dtype=torch.bool)
        mask = reset.view(-1, 1, 1)
        # PettingZoo draws every agent's position, then every landmark's; only reset envs change
        self.agent_pos = torch.where(mask, self._uniform(), self.agent_pos)
        self.landmark_pos = torch.where(mask, self._uniform(), self.landmark_pos)
        self.agent_vel = self.agent_vel.masked_fill(mask, 0.0)
        self._steps = self._steps.masked_fill(reset, 0)
        return self._observe()

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict.get((GROUP, "action"))
        if not self.continuous_actions and action.dim() == 3:  # one-hot actions
            action = action.argmax(-1)
        force = self._force(action)
        # PettingZoo's integrate_state: position with the old velocity, then damping and force
        self.agent_pos = self.agent_pos + self.agent_vel * DT
        self.agent_vel = self.agent_vel * (1 - DAMPING) + force * DT
        self._steps = self._steps + 1

        dist_lm = (self.agent_pos.unsqueeze(1) - self.landmark_pos.unsqueeze(2)).norm(dim=-1)  # (n, lm, agent)
        closest = dist_lm.min(-1).values
        global_reward = -closest.sum(-1, keepdim=True)  # (n, 1)
        if self.N > 1:
            d = (self.agent_pos.unsqueeze(2) - self.agent_pos.unsqueeze(1)).norm(dim=-1)
            touching = (d < 2 * AGENT_SIZE) & self._off_diagonal
        else:
            touching = torch.zeros(self.num_envs, 1, 1, dtype=torch.bool, device=self.device)
        local = -touching.sum(-1, keepdim=True).to(self.dtype)  # (n, N, 1)
        reward = global_reward.unsqueeze(1) * (1 - self.local_ratio) + local * self.local_ratio
        info = {
            "global_reward": global_reward.to(torch.float32),
            "collisions": (touching.sum((-1, -2)).unsqueeze(-1) / 2).to(torch.float32),
            "occupied_landmarks": (closest < OCCUPIED_DISTANCE).sum(-1, keepdim=True).to(torch.float32),
        }
        return self._observe(reward=reward.to(torch.float32), info=info)


class NearestLandmarkPolicy:
    """Scripted reference team: every agent heads for the landmark nearest to it, from its own observation.

    Decentralized (each agent reads its own ``("agent", "observation")``: velocity and the
    landmarks' relative positions) and uncoordinated (agents may pick the same landmark, and
    nothing avoids collisions), so it marks what greedy, independent behaviour reaches, not
    an optimum. The heading is ``d - 0.5 v`` (``d``: the nearest landmark's offset, ``v``: the
    agent's velocity; the velocity term damps the overshoot); discrete actions push along
    its larger axis, continuous ones in proportion (clipped to PettingZoo's ``[0, 1]`` box).
    """

    def __init__(self, continuous: bool = False):
        self.continuous = continuous

    def __call__(self, td: TensorDictBase) -> TensorDictBase:
        obs = td.get((GROUP, "observation"))
        n_agents = obs.shape[-1] // 6
        landmarks = obs[..., 4:4 + 2 * n_agents].unflatten(-1, (n_agents, 2))
        nearest = landmarks.norm(dim=-1).argmin(-1, keepdim=True)
        offset = landmarks.gather(-2, nearest.unsqueeze(-1).expand(*nearest.shape, 2)).squeeze(-2)
        heading = offset - 0.5 * obs[..., 0:2]
        x, y = heading[..., 0], heading[..., 1]
        if self.continuous:
            action = torch.stack([torch.zeros_like(x), (-x).clamp(0, 1), x.clamp(0, 1), (-y).clamp(0, 1),
                                  y.clamp(0, 1)], dim=-1)
        else:
            action = torch.where(x.abs() > y.abs(), torch.where(x < 0, 1, 2), torch.where(y < 0, 3, 4))
        td.set((GROUP, "action"), action)
        return td


# ---------------------------------------------------------------------- BenchMARL
@dataclass
class MpeSimpleSpreadConfig:
    """Hydra schema of ``conf/task/mpe/simple_spread.yaml`` (PettingZoo's argument names)."""

    N: int = MISSING
    local_ratio: float = MISSING
    max_cycles: int = MISSING


def _check_task_config(config: Dict[str, Any]) -> Dict[str, Any]:
    try:
        checked = MpeSimpleSpreadConfig(**config).__dict__
    except TypeError as err:
        raise ValueError(
            f"Invalid MPE simple spread task config {config}: {err}. Fields are: N, local_ratio, max_cycles."
        ) from None
    missing = [k for k, v in checked.items() if v is MISSING]
    if missing:
        raise ValueError(f"MPE simple spread task config is missing {missing}; set them in the task YAML.")
    validate_config(checked["N"], checked["local_ratio"], checked["max_cycles"])
    return checked


class MpeClass(TaskClass):
    """BenchMARL task class of the batched MPE port (discrete and continuous actions)."""

    def __init__(self, name: str, config: Dict[str, Any]):
        super().__init__(name=name, config=config)
        if self.config:
            _check_task_config(self.config)

    def get_env_fun(self, num_envs: int, continuous_actions: bool, seed: Optional[int],
                    device: DEVICE_TYPING) -> Callable[[], EnvBase]:
        config = _check_task_config(copy.deepcopy(self.config))
        return lambda: MpeSimpleSpreadEnv(num_envs=num_envs, continuous_actions=continuous_actions,
                                          seed=seed, device=device, **config)

    def supports_continuous_actions(self) -> bool:
        return True

    def supports_discrete_actions(self) -> bool:
        return True

    def has_render(self, env: EnvBase) -> bool:
        return False

    def max_steps(self, env: EnvBase) -> int:
        return self.config["max_cycles"]

    def group_map(self, env: EnvBase) -> Dict[str, List[str]]:
        return {GROUP: [f"agent_{i}" for i in range(self.config["N"])]}

    def _observation_part(self, env: EnvBase, keep: str) -> Composite:
        spec = env.full_observation_spec_unbatched.clone()
        for key in (GROUP, "state", "info"):
            if key != keep:
                del spec[key]
        return spec

    def observation_spec(self, env: EnvBase) -> Composite:
        return self._observation_part(env, GROUP)

    def action_mask_spec(self, env: EnvBase) -> Optional[Composite]:
        return None

    def state_spec(self, env: EnvBase) -> Optional[Composite]:
        return self._observation_part(env, "state")

    def info_spec(self, env: EnvBase) -> Optional[Composite]:
        return self._observation_part(env, "info")

    def action_spec(self, env: EnvBase) -> Composite:
        return env.full_action_spec_unbatched

    @staticmethod
    def log_info(batch: TensorDictBase) -> Dict[str, float]:
        info = batch.get(("next", "info"), None)
        if info is None:
            return {}
        return {f"collection/info/{key}": info.get(key).to(torch.float32).mean().item()
                for key in ("global_reward", "collisions", "occupied_landmarks") if key in info.keys()}

    @staticmethod
    def env_name() -> str:
        return ENV_NAME


class _MpeTaskBase(Task):
    """Methods of :data:`MpeTask` (an Enum with members cannot be subclassed)."""

    @staticmethod
    def associated_class():
        return MpeClass

    def get_from_yaml(self, path: Optional[str] = None) -> TaskClass:
        """Load ``conf/task/mpe/<name>.yaml`` of this plugin (or ``path``)."""
        from benchmarl_decentral._paths import CONF_DIR

        if path is None:
            path = CONF_DIR / "task" / ENV_NAME / f"{self.name.lower()}.yaml"
        return self.get_task(config=_check_task_config(_read_yaml_config(str(path))))


#: Task enum: ``MpeTask.SIMPLE_SPREAD`` (``task=mpe/simple_spread``).
MpeTask = _MpeTaskBase("MpeTask", [("SIMPLE_SPREAD", None)], module=__name__, qualname="MpeTask")
