"""SMAX task family: JaxMARL's SMAX (heuristic enemy) as a batched TorchRL environment.

SMAX (Rutherford et al., 2024; ``jaxmarl.environments.smax``) re-implements the
StarCraft Multi-Agent Challenge in pure JAX; the MAGPO paper
(003_13ad26f9f90dcfc4.txt, Table 1) evaluates on 10 of its maps. Task names are
SMAX's map names: ``task=smax/3m``, ``smax/2s3z``, ``smax/smacv2_5_units`` ...
(:data:`MAPS`). It needs the optional extra ``pip install 'benchmarl-decentral[smax]'``
(jax + jaxmarl); nothing here imports jax until an env is built.

**Batched, no Python loop.** :class:`SmaxEnv` holds ``num_envs`` games as one
JAX pytree with a leading env dim. One ``jax.jit``-compiled, ``vmap``-ped
function advances all of them and the enemy team's heuristic policy
(``HeuristicEnemySMAX``) in one call. Its outputs come packed in two flat
buffers that cross to torch by DLPack without a copy (observation, mask, state
and reward tensors are views into them, on the CPU, or on the GPU when jax has
one); the actions go back as a private copy (a few bytes; see ``_to_jax``).

**Interface** (the layout of BenchMARL's SMACv2 task, batch ``(num_envs,)``):
``("agents", "observation")`` float ``(num_envs, n, obs_dim)`` (SMAX
``unit_list`` observation, layout in :mod:`benchmarl_decentral.consensus.visibility`),
``("agents", "action_mask")`` bool ``(num_envs, n, n_actions)``,
``("agents", "action")`` integer ``(num_envs, n)`` with actions
``0..3`` move, ``4`` stop, ``5 + k`` attack enemy ``k``; top-level ``"state"``
(SMAX's world state, ``12 * (n + n_enemies)`` floats: per unit health
fraction, position, weapon cooldown and unit-type one-hot, then teams and type
ids), a shared team ``"reward"`` ``(num_envs, 1)`` (SMAX's: enemy health
removed / n_enemies per step, +1 on a win), ``"done"`` / ``"terminated"`` /
``"truncated"`` ``(num_envs, 1)`` and ``"info"``: ``battle_won``,
``episode_limit`` (bool), ``dead_allies``, ``dead_enemies`` (int), as SMACv2's.

**Episode ends.**

* ``terminated`` = one team is wiped out; ``battle_won`` = every enemy dead and
  at least one ally alive (SMAX's win rule; a mutual wipe-out is a draw).
* ``truncated`` = the ``max_steps``-th step of the episode ended without a
  result (``episode_limit``): an episode has at most ``max_steps`` steps,
  the ``max_steps``-th included (SMAX's ``state.step >= max_steps`` after the
  increment, so no off-by-one).
* The step that ends an episode returns the *final* observation, mask and
  state under ``"next"``; the new episode starts only when TorchRL calls
  ``reset`` for that env (``step_and_maybe_reset`` / collectors do), so the
  final observation is never replaced by the reset one. To make that reset
  cheap, start states come from a pool: one compiled call draws ``num_envs``
  independent start states, each handed to exactly one reset (the reset
  returns its observation at once; the next step swaps the state in), and the
  next pool is drawn ahead, asynchronously, while the current one is used.
  JaxMARL's own auto-reset instead draws a start state for every env inside
  every step, though only a few envs finish per step.
* A dead agent's mask allows only ``stop`` (action 4), SMAX's rule; actions
  outside the mask raise a ValueError, as SMACv2 does.

**Win rate.** :meth:`SmaxClass.log_info` logs ``collection/info/win_rate`` and
``collection/info/episode_limit_rate`` over the episodes that ended in the
batch (the keys of BenchMARL's SMACv2 task), and :class:`SmacWinRateCallback`
logs ``eval/info/win_rate`` and ``eval/info/episode_limit_rate`` after every
evaluation (it works on SMACv2 rollouts too). BenchMARL gives tasks no hook
into evaluation; :mod:`benchmarl_decentral.experiment_hooks` attaches the
callback to every ``Experiment`` whose task has ``battle_won`` in its info
(SMAX and SMACv2), whatever the entry point and algorithm.

**GPU memory.** Importing this module sets ``XLA_PYTHON_CLIENT_PREALLOCATE=false``
(unless already set), so a CUDA jax does not reserve 75% of the GPU that torch
needs. It only takes effect if jax has not been imported yet.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import io
import os
import sys
from dataclasses import dataclass, MISSING
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Optional

# Before any jax import (jax reads it when its GPU backend starts).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from benchmarl.environments.common import Task, TaskClass
from benchmarl.experiment.callback import Callback
from benchmarl.utils import _read_yaml_config, DEVICE_TYPING

__all__ = [
    "MAPS",
    "ATTACK_MODES",
    "SmaxEnv",
    "SmaxClass",
    "SmaxTask",
    "SmaxTaskConfig",
    "SmacWinRateCallback",
    "validate_smax_config",
    "jaxmarl_available",
]

ENV_NAME = "smax"

#: SMAX maps with a task here (those of the MAGPO paper, Table 1, plus 3m, 8m, smacv2_20_units).
MAPS = (
    "3m",
    "8m",
    "2s3z",
    "3s5z",
    "5m_vs_6m",
    "10m_vs_11m",
    "27m_vs_30m",
    "3s5z_vs_3s6z",
    "3s_vs_5z",
    "6h_vs_8z",
    "smacv2_5_units",
    "smacv2_10_units",
    "smacv2_20_units",
)

#: How the heuristic enemy picks a target among the allies in range.
ATTACK_MODES = ("closest", "random")

#: Index of SMAX's ``stop`` action (``0..3`` move, ``4`` stop, ``5 + k`` attack enemy ``k``).
STOP_ACTION = 4

_JAXMARL_MISSING = (
    "The SMAX tasks need jax and jaxmarl, which are not installed: "
    "pip install 'benchmarl-decentral[smax]'"
)


def jaxmarl_available() -> bool:
    """Whether jax and jaxmarl can be imported (checked without importing them)."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in ("jax", "jaxmarl"))
    except (ImportError, ValueError):  # a module set to None in sys.modules
        return False


@contextlib.contextmanager
def _quiet_import():
    """Silence jaxmarl's import-time prints.

    ``jaxmarl.environments`` prints which optional envs it found, and its mabrax
    module resets ``sys.stdout``/``sys.stderr`` to ``sys.__stdout__``/``__stderr__``
    on import, so ``contextlib.redirect_stdout`` alone does not hold: swap the
    dunder streams too and restore all four afterwards.
    """
    saved = sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__
    sink = io.StringIO()
    sys.stdout = sys.__stdout__ = sink
    sys.__stderr__ = saved[1]
    try:
        yield
    finally:
        sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__ = saved


def _import_smax():
    """``(jax, jnp, HeuristicEnemySMAX, map_name_to_scenario)``, or a clear ImportError."""
    try:
        import jax
        import jax.numpy as jnp

        with _quiet_import():
            from jaxmarl.environments.smax import HeuristicEnemySMAX, map_name_to_scenario
    except ImportError as err:
        raise ImportError(f"{_JAXMARL_MISSING} ({err})") from err
    return jax, jnp, HeuristicEnemySMAX, map_name_to_scenario


def validate_smax_config(
    map_name: Any,
    max_steps: Any = 100,
    see_enemy_actions: Any = True,
    walls_cause_death: Any = True,
    attack_mode: Any = "closest",
) -> None:
    """Raise one ValueError naming every bad SMAX option and how to fix it."""
    problems = []
    if map_name not in MAPS:
        problems.append(f"unknown SMAX map {map_name!r}; valid maps: {', '.join(MAPS)}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        problems.append(f"max_steps must be an integer >= 1 (the episode limit), got {max_steps!r}")
    for name, value in (("see_enemy_actions", see_enemy_actions), ("walls_cause_death", walls_cause_death)):
        if not isinstance(value, bool):
            problems.append(f"{name} must be true or false, got {value!r}")
    if attack_mode not in ATTACK_MODES:
        problems.append(f"attack_mode must be one of {ATTACK_MODES}, got {attack_mode!r}")
    if problems:
        raise ValueError(
            "Invalid SMAX configuration: " + "; ".join(problems) + ". Fix the task YAML "
            "(conf/task/smax/<map>.yaml) or the hydra overrides (e.g. task=smax/3m "
            "task.max_steps=100 task.attack_mode=closest)."
        )


def _jax_device(jax, device: torch.device):
    """The jax device matching torch's: its GPU when both have one, else the CPU."""
    if device.type == "cuda":
        try:
            gpus = jax.devices("gpu")
        except RuntimeError:  # CPU-only jaxlib
            gpus = []
        if gpus:
            return gpus[device.index or 0]
    return jax.devices("cpu")[0]


@functools.lru_cache(maxsize=32)
def _compiled(
    map_name: str,
    max_steps: int,
    see_enemy_actions: bool,
    walls_cause_death: bool,
    attack_mode: str,
    num_envs: int,
) -> SimpleNamespace:
    """The game and its jitted batched functions for one configuration.

    Cached so that envs of the same configuration (BenchMARL's evaluation env
    and its training env when their batch sizes agree, reloads, tests) share
    the compiled code instead of compiling again. Set ``JAX_COMPILATION_CACHE_DIR``
    to also keep it across processes.
    """
    jax, jnp, HeuristicEnemySMAX, map_name_to_scenario = _import_smax()
    game = HeuristicEnemySMAX(
        scenario=map_name_to_scenario(map_name),
        max_steps=max_steps,
        see_enemy_actions=see_enemy_actions,
        walls_cause_death=walls_cause_death,
        attack_mode=attack_mode,
    )
    n, n_envs = game.num_allies, num_envs
    agents = list(game.agents)

    def strong(tree):
        # jaxmarl's reset returns some weakly typed leaves and its step strongly
        # typed ones: make them all strong so each jitted function compiles once.
        return jax.tree.map(lambda x: jax.lax.convert_element_type(x, x.dtype), tree)

    def where(mask, a, b):
        return jax.tree.map(
            lambda x, y: jnp.where(mask.reshape(mask.shape + (1,) * (x.ndim - 1)), x, y), a, b
        )

    def views(state):  # one game -> (obs (n, d), mask (n, A), world state (S,))
        obs = game.get_obs(state)
        avail = game.get_avail_actions(state)
        return (
            jnp.stack([obs[a] for a in agents]),
            jnp.stack([avail[a] for a in agents]).astype(jnp.bool_),
            game.get_world_state(state),
        )

    def reset_one(key):
        _, state = game.reset(key)
        return strong(state)

    def step_one(key, state, action):  # action (n,) int32
        obs, state, reward, _, _ = game.step_env(key, state, {a: action[i] for i, a in enumerate(agents)})
        state = strong(state)
        inner = state.state
        allies_dead = ~inner.unit_alive[:n].any()
        enemies_dead = ~inner.unit_alive[n:].any()
        terminated = allies_dead | enemies_dead
        truncated = (inner.step >= max_steps) & ~terminated
        won = enemies_dead & ~allies_dead
        flags = jnp.stack(
            [
                terminated.astype(jnp.int32),
                truncated.astype(jnp.int32),
                won.astype(jnp.int32),
                (~inner.unit_alive[:n]).sum().astype(jnp.int32),
                (~inner.unit_alive[n:]).sum().astype(jnp.int32),
            ]
        )
        avail = game.get_avail_actions(state)
        step_views = (
            jnp.stack([obs[a] for a in agents]),
            jnp.stack([avail[a] for a in agents]).astype(jnp.bool_),
            obs["world_state"],
        )
        return state, step_views, reward[agents[0]], flags

    def pack(v, reward=None, flags=None):
        # Two flat buffers (float32, int8) instead of 5-8 arrays: each DLPack hand-over
        # costs tens of microseconds; torch views cut them back into contiguous pieces.
        obs, mask, world = v
        floats = [obs.ravel(), world.ravel()] + ([] if reward is None else [reward.ravel()])
        ints = [mask.ravel().astype(jnp.int8)] + ([] if flags is None else [flags.ravel().astype(jnp.int8)])
        return jnp.concatenate(floats), jnp.concatenate(ints)

    def fresh(key):  # a pool of n_envs start states and their views
        states = jax.vmap(reset_one)(jax.random.split(key, n_envs))
        return states, pack(jax.vmap(views)(states))

    def draw_pool(key):
        key, sub = jax.random.split(key)
        return (key, *fresh(sub))

    def swap_in(state, pool, take):
        # take (n_envs,) int32: the pool state each env starts from, -1 to keep its state
        chosen = jax.tree.map(lambda x: x[jnp.maximum(take, 0)], pool)
        return where(take >= 0, chosen, state)

    def reset_all(key):
        key, sub = jax.random.split(key)
        states, packed = fresh(sub)
        return key, states, packed

    def step(key, state, pool, take, action):
        # Envs reset since the last step start from the pool states they were given.
        state = swap_in(state, pool, take)
        key, k_step = jax.random.split(key)
        state, v, reward, flags = jax.vmap(step_one)(jax.random.split(k_step, n_envs), state, action)
        return key, state, pack(v, reward, flags)

    return SimpleNamespace(
        game=game,
        reset_all=jax.jit(reset_all),
        draw_pool=jax.jit(draw_pool),
        swap_in=jax.jit(swap_in),
        step=jax.jit(step),
        views=jax.jit(lambda state: pack(jax.vmap(views)(state))),
    )


class SmaxEnv(EnvBase):
    """Batched SMAX with the heuristic enemy (see the module docstring).

    Args:
        map_name: one of :data:`MAPS`. Default ``"3m"``.
        num_envs: number of games stepped together (batch size). Default 1.
        max_steps: episode limit. Default 100 (SMAX's).
        see_enemy_actions: observations show the enemies' last actions. Default True.
        walls_cause_death: units touching the map edge die. Default True.
        attack_mode: heuristic enemy target choice, ``"closest"`` or ``"random"``. Default ``"closest"``.
        device: torch device of the tensors.
        seed: seed of the env's JAX PRNG key (None: drawn from torch's generator).
    """

    batch_locked = True

    def __init__(
        self,
        map_name: str = "3m",
        *,
        num_envs: int = 1,
        max_steps: int = 100,
        see_enemy_actions: bool = True,
        walls_cause_death: bool = True,
        attack_mode: str = "closest",
        device: DEVICE_TYPING = "cpu",
        seed: Optional[int] = None,
    ):
        validate_smax_config(map_name, max_steps, see_enemy_actions, walls_cause_death, attack_mode)
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"SMAX num_envs must be an integer >= 1, got {num_envs!r}")
        jax, jnp, _, _ = _import_smax()
        super().__init__(device=device, batch_size=torch.Size([num_envs]))
        self._jax, self._jnp = jax, jnp
        self.map_name = map_name
        self.num_envs = num_envs
        self.max_steps = max_steps
        self.episode_limit = max_steps  # SMACv2's name, read by BenchMARL-style code
        fns = _compiled(map_name, max_steps, see_enemy_actions, walls_cause_death, attack_mode, num_envs)
        self._game = game = fns.game
        self._fns = fns
        self.n_agents = game.num_allies
        self.n_enemies = game.num_enemies
        self.n_actions = game.num_movement_actions + game.num_enemies
        self.obs_dim = game.obs_size
        self.state_dim = game.state_size
        self.group_map = {"agents": [f"agent_{i}" for i in range(self.n_agents)]}
        self._agents_batch = torch.Size([num_envs, self.n_agents])
        self._jax_dev = _jax_device(jax, self.device)
        self._make_specs()

        self._state = None  # batched game state (jax pytree), None until the first reset
        self._views = None  # torch (obs, mask, state) of the current step
        # Start states for partial resets (module docstring): a pool of num_envs
        # fresh states, each handed to one reset, and the next pool, drawn ahead.
        self._pool = None  # (jax states, packed views) being handed out
        self._pool_views = None  # its torch views, converted on first use
        self._pool_used = 0  # pool states handed out so far
        self._pool_next = None  # the next pool, dispatched when this one was taken
        # per env: the pool state it starts from at the next step, -1 for none
        self._take = torch.full((num_envs,), -1, dtype=torch.int32)
        self._set_seed(seed)

    def _to_torch(self, x) -> torch.Tensor:
        return torch.from_dlpack(x).to(self.device)

    def _to_jax(self, t: torch.Tensor):
        """A torch input (actions, env masks) for the jitted functions, as a private copy.

        jax runs asynchronously, so it must not read memory that torch may change
        in place later (our pending-reset flags, a collector's reused action
        buffer): it gets a copy. On CPU a NumPy copy is passed (jit takes it in
        ~20 us; importing by DLPack costs ~0.3 ms per call for a few bytes); on
        a GPU the copy goes by DLPack, zero-copy on the device.
        """
        if self._jax_dev.platform == "cpu":
            return t.detach().cpu().numpy().copy()
        return self._jax.device_put(self._jnp.from_dlpack(t.detach().clone().contiguous()), self._jax_dev)

    def _unpack(self, packed, with_step: bool = False) -> tuple:
        """``(obs, mask, state[, reward, flags])`` torch views of the two packed buffers (zero-copy)."""
        floats, ints = (self._to_torch(x) for x in packed)
        n_envs, n, d, a = self.num_envs, self.n_agents, self.obs_dim, self.n_actions
        o, m = n_envs * n * d, n_envs * n * a
        obs = floats[:o].view(n_envs, n, d)
        state = floats[o: o + n_envs * self.state_dim].view(n_envs, self.state_dim)
        mask = ints[:m].view(n_envs, n, a).view(torch.bool)
        if not with_step:
            return obs, mask, state
        reward = floats[o + n_envs * self.state_dim:].view(n_envs, 1)
        flags = ints[m:].view(n_envs, 5)
        return obs, mask, state, reward, flags

    # ----------------------------------------------------------------- specs
    def _make_specs(self) -> None:
        n_envs, n, dev = self.num_envs, self.n_agents, self.device
        flag = lambda: Categorical(2, shape=(n_envs,), dtype=torch.bool, device=dev)  # noqa: E731
        self.observation_spec = Composite(
            agents=Composite(
                observation=Bounded(-1.0, 1.0, shape=(n_envs, n, self.obs_dim), dtype=torch.float32, device=dev),
                action_mask=Categorical(2, shape=(n_envs, n, self.n_actions), dtype=torch.bool, device=dev),
                shape=(n_envs, n),
                device=dev,
            ),
            state=Unbounded(shape=(n_envs, self.state_dim), dtype=torch.float32, device=dev),
            info=Composite(
                battle_won=flag(),
                episode_limit=flag(),
                dead_allies=Bounded(0, n, shape=(n_envs,), dtype=torch.int64, device=dev),
                dead_enemies=Bounded(0, self.n_enemies, shape=(n_envs,), dtype=torch.int64, device=dev),
                shape=(n_envs,),
                device=dev,
            ),
            shape=(n_envs,),
            device=dev,
        )
        self.full_action_spec = Composite(
            agents=Composite(
                action=Categorical(self.n_actions, shape=(n_envs, n), dtype=torch.int64, device=dev),
                shape=(n_envs, n),
                device=dev,
            ),
            shape=(n_envs,),
            device=dev,
        )
        self.full_reward_spec = Composite(
            reward=Unbounded(shape=(n_envs, 1), dtype=torch.float32, device=dev), shape=(n_envs,), device=dev
        )
        done = lambda: Categorical(2, shape=(n_envs, 1), dtype=torch.bool, device=dev)  # noqa: E731
        self.full_done_spec = Composite(
            done=done(), terminated=done(), truncated=done(), shape=(n_envs,), device=dev
        )

    # -------------------------------------------------------------- dynamics
    def _set_seed(self, seed: Optional[int]) -> None:
        if seed is None:
            seed = int(torch.empty((), dtype=torch.int64).random_().item())
        key = self._jax.random.PRNGKey(int(seed) % (2**32))
        self._key = self._jax.device_put(key, self._jax_dev)
        # Pools drawn with the old key are not used after reseeding; envs already
        # reset onto one of their states keep it.
        if self._state is not None:
            self._apply_pending()
        self._pool = self._pool_views = self._pool_next = None

    def _next_pool(self) -> None:
        """Hand out the prefetched pool (drawn now if there is none) and dispatch the next draw.

        JAX computes a dispatched draw asynchronously, while TorchRL, the policy
        and the steps run; a pool lasts about ``num_envs`` resets.
        """
        def draw() -> tuple:
            self._key, *pool = self._fns.draw_pool(self._key)
            return tuple(pool)

        self._pool, self._pool_views, self._pool_used = self._pool_next or draw(), None, 0
        self._pool_next = draw()

    def _output(self, obs, mask, state, info: Dict[str, torch.Tensor], flags=None, reward=None) -> TensorDict:
        n_envs = self.num_envs
        self.full_action_spec[("agents", "action")].update_mask(mask)  # rand_action respects it
        if flags is None:
            terminated = torch.zeros(n_envs, 1, dtype=torch.bool, device=self.device)
            truncated = terminated
        else:
            terminated, truncated = flags[:, 0:1].bool(), flags[:, 1:2].bool()
        # _new_unsafe: every shape and device is ours and right; skipping TensorDict's
        # checks saves ~0.2 ms per step, which matters next to a ~1.5 ms 64-env step.
        out = {
            "agents": TensorDict._new_unsafe(
                {"observation": obs, "action_mask": mask}, batch_size=self._agents_batch, device=self.device
            ),
            "state": state,
            "info": TensorDict._new_unsafe(info, batch_size=self.batch_size, device=self.device),
            "done": terminated | truncated,
            "terminated": terminated,
            "truncated": truncated.clone() if flags is None else truncated,
        }
        if reward is not None:
            out["reward"] = reward
        return TensorDict._new_unsafe(out, batch_size=self.batch_size, device=self.device)

    def _zero_info(self) -> Dict[str, torch.Tensor]:
        n_envs, dev = self.num_envs, self.device
        zeros_bool = torch.zeros(n_envs, dtype=torch.bool, device=dev)
        zeros_long = torch.zeros(n_envs, dtype=torch.int64, device=dev)
        return {
            "battle_won": zeros_bool,
            "episode_limit": zeros_bool.clone(),
            "dead_allies": zeros_long,
            "dead_enemies": zeros_long.clone(),
        }

    def _reset(self, tensordict: Optional[TensorDictBase] = None, **kwargs) -> TensorDictBase:
        mask = None if tensordict is None else tensordict.get("_reset", None)
        if mask is not None:
            mask = mask.reshape(self.num_envs).to(device="cpu", dtype=torch.bool)
        if mask is None or self._state is None:
            # Full reset: every env starts a new episode from the current key.
            self._key, self._state, packed = self._fns.reset_all(self._key)
            self._views = self._unpack(packed)
            self._take.fill_(-1)
            self._pool = self._pool_views = self._pool_next = None
            self._next_pool()  # asynchronous: ready by the first partial reset
        else:
            envs = mask.nonzero().flatten()
            k = envs.numel()
            if self._pool is None or self._pool_used + k > self.num_envs:
                self._apply_pending()  # envs still waiting on the old pool take its states now
                self._next_pool()
            # Each env that finished takes the next unused pool state: no two
            # resets share one, and an env reset twice before a step keeps the last.
            take = torch.arange(self._pool_used, self._pool_used + k, dtype=torch.int32)
            self._pool_used += k
            self._take[envs] = take
            if self._pool_views is None:
                self._pool_views = self._unpack(self._pool[1])
            rows, at = envs.to(self.device), take.to(device=self.device, dtype=torch.int64)
            self._views = tuple(
                cur.index_copy(0, rows, new.index_select(0, at)) for new, cur in zip(self._pool_views, self._views)
            )
        obs, action_mask, state = self._views
        return self._output(obs, action_mask, state, self._zero_info())

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict.get(("agents", "action"))
        if action.dim() == 3:  # one-hot actions
            action = action.argmax(-1)
        action = action.reshape(self.num_envs, self.n_agents).to(torch.int64)
        legal = self._views[1].gather(-1, action.unsqueeze(-1)).squeeze(-1)
        if not bool(legal.all()):
            env, agent = (~legal).nonzero()[0].tolist()
            raise ValueError(
                f"SMAX {self.map_name}: agent {agent} of env {env} took action "
                f"{int(action[env, agent])}, which its action_mask forbids (allowed: "
                f"{self._views[1][env, agent].nonzero().flatten().tolist()}); sample actions "
                "with the ('agents', 'action_mask') applied (dead agents may only stop, action 4)."
            )
        pool = self._pool[0] if self._pool is not None else self._state  # same shapes: one compile
        self._key, self._state, packed = self._fns.step(
            self._key, self._state, pool, self._to_jax(self._take), self._to_jax(action.to(torch.int32))
        )
        self._take.fill_(-1)
        obs, action_mask, state, reward, flags = self._unpack(packed, with_step=True)
        self._views = (obs, action_mask, state)
        info = {
            "battle_won": flags[:, 2].bool(),
            "episode_limit": flags[:, 1].bool(),
            "dead_allies": flags[:, 3].to(torch.int64),
            "dead_enemies": flags[:, 4].to(torch.int64),
        }
        return self._output(obs, action_mask, state, info, flags=flags, reward=reward)

    # ------------------------------------------------------------ inspection
    def _apply_pending(self) -> None:
        """Swap in the start states of envs reset since the last step (no-op otherwise)."""
        if self._state is None:
            raise RuntimeError("SMAX env: call reset() first")
        if self._pool is not None and bool((self._take >= 0).any()):
            self._state = self._fns.swap_in(self._state, self._pool[0], self._to_jax(self._take))
        self._take.fill_(-1)

    def unit_state(self) -> Dict[str, torch.Tensor]:
        """Simulator state of every unit after the last step or reset (torch copies).

        Units are ordered allies first (the agents), then enemies. Returns
        ``positions`` ``(num_envs, n + n_enemies, 2)`` (map coordinates),
        ``health`` and ``sight_range`` ``(num_envs, n + n_enemies)`` (float),
        ``alive`` (bool) and ``step`` ``(num_envs,)`` (steps into the episode).
        """
        self._apply_pending()
        inner = self._state.state
        out = {
            "positions": inner.unit_positions,
            "alive": inner.unit_alive,
            "health": inner.unit_health,
            "sight_range": self._game.unit_type_sight_ranges[inner.unit_types],
            "step": inner.step,
        }
        return {k: torch.from_dlpack(v).to(self.device).clone() for k, v in out.items()}

    def set_unit_state(
        self, *, positions: Optional[torch.Tensor] = None, health: Optional[torch.Tensor] = None
    ) -> TensorDictBase:
        """Overwrite unit positions and/or health in every env (tests, scripted scenarios).

        Args:
            positions: ``(num_envs, n + n_enemies, 2)`` map coordinates, allies first.
            health: ``(num_envs, n + n_enemies)`` hit points; ``0`` makes a unit dead.

        Returns:
            The observation of the edited state (the layout ``reset`` returns);
            the next step starts from it.
        """
        self._apply_pending()
        n_units = self.n_agents + self.n_enemies
        inner = self._state.state
        if positions is not None:
            positions = torch.as_tensor(positions, dtype=torch.float32)
            if positions.shape != (self.num_envs, n_units, 2):
                raise ValueError(f"positions must have shape {(self.num_envs, n_units, 2)}, got {tuple(positions.shape)}")
            inner = inner.replace(unit_positions=self._to_jax(positions))
        if health is not None:
            health = torch.as_tensor(health, dtype=torch.float32)
            if health.shape != (self.num_envs, n_units):
                raise ValueError(f"health must have shape {(self.num_envs, n_units)}, got {tuple(health.shape)}")
            inner = inner.replace(unit_health=self._to_jax(health), unit_alive=self._to_jax(health > 0))
        self._state = self._state.replace(state=inner)
        self._views = self._unpack(self._fns.views(self._state))
        obs, action_mask, state = self._views
        return self._output(obs, action_mask, state, self._zero_info())

    def visibility_adjacency(self, *, self_loops: bool = True, symmetric: bool = False) -> torch.Tensor:
        """Ally-visibility graph ``(num_envs, n, n)`` from the simulator state.

        See :func:`benchmarl_decentral.consensus.visibility.visibility_from_positions`;
        equals ``visibility_adjacency(observation, layout="smax")`` on the current observation.
        """
        from benchmarl_decentral.consensus.visibility import visibility_from_positions

        units = self.unit_state()
        n = self.n_agents
        return visibility_from_positions(
            units["positions"][:, :n],
            units["sight_range"][:, :n],
            units["alive"][:, :n],
            self_loops=self_loops,
            symmetric=symmetric,
        )


# ---------------------------------------------------------------------- BenchMARL
class SmacWinRateCallback(Callback):
    """Logs the evaluation win rate of SMAC-family tasks (SMAX, SMACv2).

    After each evaluation, for every evaluation episode that ended, reads
    ``("next", "info", "battle_won")`` and ``("next", "info", "episode_limit")``
    at its first ``done`` step and logs their means as ``eval/info/win_rate``
    and ``eval/info/episode_limit_rate`` (BenchMARL's evaluation logs rewards
    only). Nothing is logged when no evaluation episode ended.
    """

    def on_evaluation_end(self, rollouts: List[TensorDictBase]) -> None:
        won, limit = [], []
        for rollout in rollouts:
            if ("next", "info", "battle_won") not in rollout.keys(True):
                continue
            done = rollout.get(("next", "done")).reshape(rollout.batch_size[0], -1).any(-1)
            ended = done.nonzero()
            if not len(ended):
                continue
            t = int(ended[0, 0])
            won.append(bool(rollout.get(("next", "info", "battle_won"))[t]))
            limit.append(bool(rollout.get(("next", "info", "episode_limit"))[t]))
        if not won:
            return
        self.experiment.logger.log(
            {
                "eval/info/win_rate": sum(won) / len(won),
                "eval/info/episode_limit_rate": sum(limit) / len(limit),
            },
            step=self.experiment.n_iters_performed,
        )


@dataclass
class SmaxTaskConfig:
    """Hydra schema of a SMAX task YAML (same fields for every map)."""

    map_name: str = MISSING
    max_steps: int = MISSING
    see_enemy_actions: bool = MISSING
    walls_cause_death: bool = MISSING
    attack_mode: str = MISSING


def _check_task_config(config: Dict[str, Any]) -> Dict[str, Any]:
    """Type-check a SMAX task config against :class:`SmaxTaskConfig` and validate it."""
    try:
        checked = SmaxTaskConfig(**config).__dict__
    except TypeError as err:
        fields = ", ".join(SmaxTaskConfig.__dataclass_fields__)
        raise ValueError(f"Invalid SMAX task config {config}: {err}. Fields are: {fields}.") from None
    missing = [k for k, v in checked.items() if v is MISSING]
    if missing:
        raise ValueError(f"SMAX task config is missing {missing}; set them in the task YAML.")
    validate_smax_config(**checked)
    return checked


class SmaxClass(TaskClass):
    """BenchMARL task class of SMAX (discrete actions, action masks, global state)."""

    def __init__(self, name: str, config: Dict[str, Any]):
        super().__init__(name=name, config=config)
        if self.config:  # BenchMARL passes the full config: fail before any run folder exists
            _check_task_config(self.config)
            if not jaxmarl_available():
                raise ImportError(_JAXMARL_MISSING)

    def get_env_fun(
        self,
        num_envs: int,
        continuous_actions: bool,
        seed: Optional[int],
        device: DEVICE_TYPING,
    ) -> Callable[[], EnvBase]:
        if continuous_actions:
            raise ValueError(
                "SMAX has discrete actions only: use an algorithm that supports discrete "
                "actions (e.g. mappo, ippo, qmix, decpg, dg_mappo)."
            )
        config = _check_task_config(copy.deepcopy(self.config))
        return lambda: SmaxEnv(num_envs=num_envs, seed=seed, device=device, **config)

    def supports_continuous_actions(self) -> bool:
        return False

    def supports_discrete_actions(self) -> bool:
        return True

    def has_render(self, env: EnvBase) -> bool:
        return False

    def max_steps(self, env: EnvBase) -> int:
        return self.config["max_steps"]

    def group_map(self, env: EnvBase) -> Dict[str, List[str]]:
        return env.group_map

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
        """Win and episode-limit rates over the episodes that ended in ``batch`` (SMACv2's keys)."""
        done = batch.get(("next", "done"), None)
        won = batch.get(("next", "info", "battle_won"), None)
        if done is None or won is None:
            return {}
        done = done.squeeze(-1)
        if not bool(done.any()):
            return {}
        limit = batch.get(("next", "info", "episode_limit"))
        return {
            "collection/info/win_rate": won[done].to(torch.float32).mean().item(),
            "collection/info/episode_limit_rate": limit[done].to(torch.float32).mean().item(),
        }

    @staticmethod
    def env_name() -> str:
        return ENV_NAME


class _SmaxTaskBase(Task):
    """Methods of :data:`SmaxTask` (an Enum with members cannot be subclassed)."""

    @staticmethod
    def associated_class():
        return SmaxClass

    @classmethod
    def from_name(cls, name: str) -> "Task":
        """The member for ``"3m"`` or ``"smax/3m"``; unknown names list the valid maps."""
        short = name.split("/", 1)[1] if name.startswith(ENV_NAME + "/") else name
        try:
            return cls[short.upper()]
        except KeyError:
            raise ValueError(
                f"Unknown SMAX map '{name}'. Valid tasks: "
                + ", ".join(f"{ENV_NAME}/{m}" for m in MAPS)
            ) from None

    def get_from_yaml(self, path: Optional[str] = None) -> TaskClass:
        """Load ``conf/task/smax/<map>.yaml`` of this plugin (or ``path``)."""
        from benchmarl_decentral._paths import CONF_DIR

        if path is None:
            path = CONF_DIR / "task" / ENV_NAME / f"{self.name.lower()}.yaml"
            if not path.is_file():
                raise FileNotFoundError(
                    f"SMAX task YAML {path} is missing; reinstall benchmarl-decentral "
                    "(the conf/ folder ships inside the package)."
                )
        config = _read_yaml_config(str(path))
        return self.get_task(config=_check_task_config(config))


#: Task enum, one member per map (``SmaxTask["3M"]``, ``SmaxTask.from_name("smax/3m")``);
#: ``member.name.lower()`` is the map and hydra name. Map names start with digits,
#: so the functional Enum API is used.
SmaxTask = _SmaxTaskBase(
    "SmaxTask",
    [(name.upper(), None) for name in MAPS],
    module=__name__,
    qualname="SmaxTask",
)
