"""Communication graphs from ally visibility for the SMAC family (SMAX, SMACv2).

000_ef718962e1e8f612.txt sec. 2.1 and 4.2: on SMAC the communication graph of
DG-MAPPO links the allies that are within sight range of each other. This
module builds that graph, as a dense boolean adjacency, from what an agent
already has at execution time (its own observation) or, for SMAX, from the
simulator state.

Convention (the package's, see :mod:`.topology`): ``A`` has shape
``(..., n, n)`` and ``A[..., i, j] = True`` iff agent ``i`` *receives* from
agent ``j``. Here ``i`` receives from ``j`` iff ``j`` is **alive and inside
``i``'s sight range** (so ``i`` sees ``j`` in its observation); a dead agent
sees nobody and is seen by nobody. With ``self_loops=True`` (the default, the
graph D-GAT attends over) the diagonal is all True, dead agents included, so no
agent ever has an empty neighbourhood; with ``self_loops=False`` the diagonal is
False, which is the convention of :mod:`.topology` (mixing matrices add the
self weight themselves). Sight ranges depend on the unit type, so the graph can
be directed (a stalker, range 10, sees a zealot at distance 9.5 that does not
see it back, range 9); ``symmetric=True`` returns ``A | A^T``.

Observation layouts relied on (``observation[..., k]`` for one agent):

* **SMAX** (``jaxmarl`` 0.2.0, ``observation_type="unit_list"``, the one our
  SMAX task uses; ``SMAX.get_obs_unit_list`` / ``_observe_features`` in
  ``jaxmarl/environments/smax/smax_env.py``): the other units first, ``n - 1``
  allies in increasing index order (self skipped) then the enemies, each
  ``7 + 6`` features ``[health, rel_x, rel_y, last_move_x, last_move_y,
  last_target, cooldown, unit_type_onehot(6)]``, then 10 own features. An entry
  is all zeros unless the other unit is visible and both units are alive; a
  visible unit is alive, so its first feature, ``health / max_health``, is
  ``> 0``. Visible <=> ``feature 0 > 0`` (the rule SMAX's own heuristic enemy
  uses to find visible units).
* **SMACv2** (``StarCraft2Env.get_obs_agent`` and ``get_obs_feature_names`` in
  ``smacv2/env/starcraft2/starcraft2.py``, https://github.com/oxwhirl/smacv2):
  ``[move_feats, enemy_feats (n_enemies x nf_en), ally_feats ((n - 1) x nf_al),
  own_feats, (timestep)]`` with the allies in increasing index order, self
  skipped. Ally feature 0 is ``ally_visible`` (1 iff the ally is alive and in
  sight range, or in the view cone with ``conic_fov``); everything is 0 when
  the observing agent is dead. The block sizes follow from the task config:
  :meth:`SmacObsLayout.smacv2` computes them as ``get_obs_*_feats_size`` do
  (checked against TorchRL's documented SMACv2 shapes in the tests).

Entry points: :func:`visibility_adjacency` (from observations, any batch dims),
:func:`visibility_from_positions` (from a simulator state; ``SmaxEnv.visibility_adjacency``
uses it) and :func:`visibility_graph_builder` (a ready ``models.dgat.GRAPH_BUILDERS``
entry for ``topology: visibility``).

Pure torch: no BenchMARL, hydra or jax import at module level.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor

__all__ = [
    "SmacObsLayout",
    "visibility_adjacency",
    "visibility_from_positions",
    "smacv2_sizes",
    "visibility_graph_builder",
    "SMAX_UNIT_FEATURES",
    "SMAX_OWN_FEATURES",
]

#: Features per other unit in a SMAX ``unit_list`` observation (7 + 6 unit-type bits).
SMAX_UNIT_FEATURES = 13
#: Own features at the end of a SMAX ``unit_list`` observation (4 + 6 unit-type bits).
SMAX_OWN_FEATURES = 10

# SMACv2 map parameters that fix the observation layout
# (smacv2/env/starcraft2/maps/smac_maps.py): race of each team and unit-type bits.
_SMACV2_MAPS = {
    "10gen_protoss": {"a_race": "P", "b_race": "P", "unit_type_bits": 3, "map_type": "protoss_gen"},
    "10gen_terran": {"a_race": "T", "b_race": "T", "unit_type_bits": 3, "map_type": "terran_gen"},
    "10gen_zerg": {"a_race": "Z", "b_race": "Z", "unit_type_bits": 3, "map_type": "zerg_gen"},
}


@dataclass(frozen=True)
class SmacObsLayout:
    """Where the ally block of a SMAC-family observation lies.

    Args:
        n_agents: agents in the group (the observation holds ``n_agents - 1`` ally entries).
        ally_offset: index of the first feature of the first ally entry.
        ally_feat_dim: features per ally entry.
        obs_dim: full observation size, checked against the input when given.
        visible_index: feature of an ally entry that is ``> 0`` iff the ally is
            visible (and alive). (default: 0)
    """

    n_agents: int
    ally_offset: int
    ally_feat_dim: int
    obs_dim: int | None = None
    visible_index: int = 0

    def __post_init__(self) -> None:
        if self.n_agents < 1:
            raise ValueError(f"SmacObsLayout needs n_agents >= 1, got {self.n_agents}")
        if self.ally_feat_dim < 1 or not 0 <= self.visible_index < self.ally_feat_dim:
            raise ValueError(
                f"SmacObsLayout: visible_index {self.visible_index} must lie in "
                f"[0, ally_feat_dim={self.ally_feat_dim})"
            )
        end = self.ally_offset + (self.n_agents - 1) * self.ally_feat_dim
        if self.ally_offset < 0 or (self.obs_dim is not None and end > self.obs_dim):
            raise ValueError(
                f"SmacObsLayout: the ally block [{self.ally_offset}, {end}) does not fit in an "
                f"observation of size {self.obs_dim}"
            )

    @classmethod
    def smax(cls, n_allies: int, n_enemies: int) -> "SmacObsLayout":
        """Layout of a SMAX ``unit_list`` observation (see the module docstring)."""
        obs_dim = SMAX_UNIT_FEATURES * (n_allies - 1 + n_enemies) + SMAX_OWN_FEATURES
        return cls(n_agents=n_allies, ally_offset=0, ally_feat_dim=SMAX_UNIT_FEATURES, obs_dim=obs_dim)

    @classmethod
    def smacv2(cls, config: Mapping[str, Any]) -> "SmacObsLayout":
        """Layout of a SMACv2 observation from a task config (BenchMARL's ``smacv2/*`` YAML)."""
        sizes = smacv2_sizes(config)
        return cls(
            n_agents=sizes["n_agents"],
            ally_offset=sizes["ally_offset"],
            ally_feat_dim=sizes["ally_feat_dim"],
            obs_dim=sizes["obs_dim"],
        )


def smacv2_sizes(config: Mapping[str, Any]) -> dict:
    """Observation, state and action sizes of a SMACv2 task, without the game.

    Follows ``StarCraft2Env.get_obs_size`` / ``get_state_size`` / ``n_actions``
    (smacv2/env/starcraft2/starcraft2.py) for the procedurally generated
    ``10gen_*`` maps that BenchMARL's ``smacv2/*`` tasks use. Defaults for
    missing keys are ``StarCraft2Env``'s.

    Args:
        config: a SMACv2 task config (``map_name``, ``capability_config``,
            ``obs_*`` flags, ...), e.g. BenchMARL's ``smacv2/protoss_5_vs_5``.

    Returns:
        dict with ``n_agents``, ``n_enemies``, ``n_actions``, ``obs_dim``,
        ``state_dim``, ``episode_limit`` and the layout fields
        ``move_feat_dim``, ``enemy_feat_dim``, ``ally_offset``, ``ally_feat_dim``,
        ``own_feat_dim``.
    """
    map_name = config.get("map_name", "8m")
    if map_name not in _SMACV2_MAPS:
        raise ValueError(
            f"SMACv2 map '{map_name}' is not one of the procedurally generated maps "
            f"{sorted(_SMACV2_MAPS)} whose layout is known here; for another map build "
            "SmacObsLayout(n_agents=..., ally_offset=..., ally_feat_dim=...) from the env's "
            "get_obs_move_feats_size() / get_obs_enemy_feats_size() / get_obs_ally_feats_size()."
        )
    params = _SMACV2_MAPS[map_name]
    cap = dict(config.get("capability_config") or {})
    # StarCraftCapabilityEnvWrapper copies the top-level n_units / n_enemies into team_gen
    team = dict(cap.get("team_gen") or {})
    n_agents, n_enemies = cap.get("n_units", team.get("n_units")), cap.get("n_enemies", team.get("n_enemies"))
    if "team_gen" not in cap or n_agents is None or n_enemies is None:
        raise ValueError(
            f"SMACv2 config for '{map_name}' needs capability_config with n_units, n_enemies and "
            "team_gen (the 10gen maps generate the teams), see BenchMARL's conf/task/smacv2/*.yaml."
        )
    n_agents, n_enemies = int(n_agents), int(n_enemies)
    utb = int(params["unit_type_bits"])
    shield_ally = 1 if params["a_race"] == "P" else 0
    shield_enemy = 1 if params["b_race"] == "P" else 0
    stochastic_attack = "attack" in cap
    stochastic_health = "health" in cap

    obs_all_health = bool(config.get("obs_all_health", True))
    obs_own_health = bool(config.get("obs_own_health", True)) or obs_all_health
    obs_last_action = bool(config.get("obs_last_action", False))
    obs_pathing_grid = bool(config.get("obs_pathing_grid", False))
    obs_terrain_height = bool(config.get("obs_terrain_height", False))
    obs_timestep_number = bool(config.get("obs_timestep_number", False))
    obs_own_pos = bool(config.get("obs_own_pos", False))
    conic_fov = bool(config.get("conic_fov", False))
    n_fov_actions = int(config.get("num_fov_actions", 12)) if conic_fov else 0

    n_actions_no_attack = 4 + n_fov_actions + 2  # move x4, fov turns, no-op, stop
    if params["map_type"] in ("MMM", "terran_gen") and n_agents > n_enemies:
        n_actions = n_actions_no_attack + n_agents  # medivacs target allies
    else:
        n_actions = n_actions_no_attack + n_enemies

    move = 4 + (8 if obs_pathing_grid else 0) + (9 if obs_terrain_height else 0)
    nf_en = 4 + utb + ((1 + shield_enemy) if obs_all_health else 0)
    cap_obs = utb + int(stochastic_attack) + int(stochastic_health)
    nf_al = 4 + ((1 + shield_ally) if obs_all_health else 0) + cap_obs
    nf_al += n_actions if obs_last_action else 0
    own = (utb + int(stochastic_attack) + int(stochastic_health)
           + ((1 + shield_ally) if obs_own_health else 0)
           + (2 if conic_fov else 0) + (2 if obs_own_pos else 0))
    obs_dim = move + n_enemies * nf_en + (n_agents - 1) * nf_al + own + int(obs_timestep_number)

    if config.get("obs_instead_of_state", False):
        state_dim = obs_dim * n_agents
    else:
        nf_al_state = 4 + shield_ally + (2 if conic_fov else 0) + cap_obs
        nf_en_state = 3 + shield_enemy + utb
        state_dim = n_agents * nf_al_state + n_enemies * nf_en_state
        state_dim += n_agents * n_actions if config.get("state_last_action", True) else 0
        state_dim += 1 if config.get("state_timestep_number", False) else 0

    return {
        "n_agents": n_agents,
        "n_enemies": n_enemies,
        "n_actions": n_actions,
        "obs_dim": obs_dim,
        "state_dim": state_dim,
        "episode_limit": 200,  # every 10gen map (smac_maps.py "limit")
        "move_feat_dim": move,
        "enemy_feat_dim": nf_en,
        "ally_offset": move + n_enemies * nf_en,
        "ally_feat_dim": nf_al,
        "own_feat_dim": own,
    }


def _resolve_layout(layout: str | SmacObsLayout, n_agents: int | None, obs_dim: int) -> SmacObsLayout:
    if isinstance(layout, SmacObsLayout):
        if n_agents is not None and n_agents != layout.n_agents:
            raise ValueError(
                f"n_agents={n_agents} disagrees with the layout's n_agents={layout.n_agents}; "
                "drop n_agents or build the layout for this group"
            )
        return layout
    if not isinstance(layout, str):
        raise ValueError(
            f"layout must be 'smax', 'smacv2/<task>' or a SmacObsLayout, got {layout!r}"
        )
    if layout == "smax":
        if n_agents is None:
            raise ValueError("layout='smax' needs n_agents (the number of allies in the group)")
        rest = obs_dim - SMAX_OWN_FEATURES
        if rest < 0 or rest % SMAX_UNIT_FEATURES:
            raise ValueError(
                f"an observation of size {obs_dim} is not a SMAX unit_list observation "
                f"({SMAX_UNIT_FEATURES} x (n_allies - 1 + n_enemies) + {SMAX_OWN_FEATURES})"
            )
        n_enemies = rest // SMAX_UNIT_FEATURES - (n_agents - 1)
        if n_enemies < 1:
            raise ValueError(
                f"an observation of size {obs_dim} cannot hold {n_agents - 1} allies and at least "
                "one enemy in SMAX's layout; check n_agents"
            )
        return SmacObsLayout.smax(n_agents, n_enemies)
    if layout.startswith("smacv2/"):
        return _resolve_layout(_smacv2_task_layout(layout), n_agents, obs_dim)
    raise ValueError(
        f"unknown layout {layout!r}: use 'smax', 'smacv2/<task>' (e.g. 'smacv2/protoss_5_vs_5', "
        "read from BenchMARL's task YAML) or SmacObsLayout.smacv2(task_config) for a changed config"
    )


@functools.lru_cache(maxsize=None)
def _smacv2_task_layout(task: str) -> SmacObsLayout:
    """Layout of a BenchMARL SMACv2 task, from its YAML (read once per task name)."""
    from benchmarl.environments import task_config_registry  # lazy: BenchMARL only here

    if task not in task_config_registry:
        names = sorted(k for k in task_config_registry if k.startswith("smacv2/"))
        raise ValueError(f"unknown SMACv2 task '{task}'; choose one of {names}")
    return SmacObsLayout.smacv2(task_config_registry[task].get_from_yaml().config)


def task_layout(task: Any) -> str | None:
    """The :func:`visibility_adjacency` layout of a BenchMARL task, ``None`` if it has none.

    ``"smax"`` for every SMAX map, ``"smacv2/<task>"`` for BenchMARL's SMACv2
    tasks (the layout then follows from the task's YAML); any other task has
    no ally-visibility features in its observations.
    """
    family = task.env_name() if hasattr(task, "env_name") else ""
    if family == "smax":
        return "smax"
    if family == "smacv2":
        return f"smacv2/{task.name.lower()}"
    return None


def with_layout(graph_kwargs: Mapping[str, Any] | None, layout: str | None) -> dict:
    """D-GAT ``graph_kwargs`` with ``layout`` filled in; an explicit ``graph_kwargs.layout`` wins.

    Used where the layout is inferred from the task (:func:`task_layout`):
    ``algorithm=dg_mappo`` and, through the experiment hook, ``model=layers/dgat``.
    ``layout=None`` (a task without one) leaves the options as they are.
    """
    kwargs = dict(graph_kwargs or {})
    if layout is not None and not kwargs.get("layout"):
        kwargs["layout"] = layout
    return kwargs


def _others_index(n: int, device: torch.device) -> Tensor:
    """``(n, n - 1)``: the agent index of each ally slot, allies in order, self skipped."""
    slot = torch.arange(n - 1, device=device)
    i = torch.arange(n, device=device).unsqueeze(-1)
    return slot + (slot >= i).long()


def _finish(adj: Tensor, self_loops: bool, symmetric: bool) -> Tensor:
    if symmetric:
        adj = adj | adj.transpose(-1, -2)
    eye = torch.eye(adj.shape[-1], dtype=torch.bool, device=adj.device)
    return adj | eye if self_loops else adj & ~eye


def visibility_adjacency(
    observation: Tensor,
    *,
    layout: str | SmacObsLayout,
    n_agents: int | None = None,
    self_loops: bool = True,
    symmetric: bool = False,
) -> Tensor:
    """000_ef718962e1e8f612.txt sec. 4.2: ally-visibility communication graph from observations.

    ``A[..., i, j] = True`` iff agent ``i`` receives from ``j``, i.e. ``j`` is a
    live ally inside ``i``'s sight range, read from the ally block of agent
    ``i``'s own observation (layouts: module docstring). Only observations
    are used, so every agent can build its own row at execution time.

    Args:
        observation: ``(..., n_agents, obs_dim)``, the group's observations
            (``("agents", "observation")``); any leading batch dims.
        layout: ``"smax"`` (any SMAX map, needs ``n_agents``),
            ``"smacv2/<task>"`` (a BenchMARL SMACv2 task name; the layout is
            computed from its YAML) or a :class:`SmacObsLayout`
            (e.g. ``SmacObsLayout.smacv2(task.config)`` after overrides).
        n_agents: agents in the group; must match ``observation.shape[-2]``.
            (default: None, taken from the layout or the observation)
        self_loops: put True on the diagonal (D-GAT attends to itself).
            False gives :mod:`.topology`'s convention. (default: True)
        symmetric: return ``A | A^T`` (undirected, e.g. for Metropolis mixing). (default: False)

    Returns:
        Bool adjacency ``(..., n_agents, n_agents)``.

    Shapes:
        observation ``(*B, n, d)`` -> adjacency ``(*B, n, n)``.
    """
    if observation.dim() < 2:
        raise ValueError(
            f"observation must have shape (..., n_agents, obs_dim), got {tuple(observation.shape)}"
        )
    n_obs = observation.shape[-2]
    if n_agents is not None and n_agents != n_obs:
        raise ValueError(
            f"n_agents={n_agents} but the observation holds {n_obs} agents (dim -2); pass the "
            "group's observation (..., n_agents, obs_dim)"
        )
    lay = _resolve_layout(layout, n_agents if n_agents is not None else n_obs, observation.shape[-1])
    if lay.n_agents != n_obs:
        raise ValueError(f"the layout is for {lay.n_agents} agents but the observation holds {n_obs}")
    if lay.obs_dim is not None and lay.obs_dim != observation.shape[-1]:
        raise ValueError(
            f"the observation has {observation.shape[-1]} features but the layout expects "
            f"{lay.obs_dim}; the task config used for the layout is not the env's"
        )
    n = n_obs
    adj = torch.zeros(*observation.shape[:-1], n, dtype=torch.bool, device=observation.device)
    if n > 1:
        block = observation[..., lay.ally_offset: lay.ally_offset + (n - 1) * lay.ally_feat_dim]
        visible = block.unflatten(-1, (n - 1, lay.ally_feat_dim))[..., lay.visible_index] > 0
        index = _others_index(n, observation.device).expand(*visible.shape)
        adj.scatter_(-1, index, visible)
    return _finish(adj, self_loops, symmetric)


def visibility_from_positions(
    pos: Tensor,
    sight_range: Tensor,
    alive: Tensor,
    *,
    self_loops: bool = True,
    symmetric: bool = False,
) -> Tensor:
    """The same graph from the simulator state (SMAX's, or any SMAC-like state).

    ``A[..., i, j] = alive_i & alive_j & ||pos_j - pos_i|| < sight_range_i``
    (strict, as in SMAX and SMACv2).

    Args:
        pos: ``(..., n, 2)`` unit positions of the group's agents.
        sight_range: ``(..., n)`` sight range of each agent (it depends on the unit type).
        alive: ``(..., n)`` bool.
        self_loops: True on the diagonal. (default: True)
        symmetric: return ``A | A^T``. (default: False)

    Returns:
        Bool adjacency ``(..., n, n)``.
    """
    if pos.dim() < 2 or pos.shape[:-1] != sight_range.shape or alive.shape != sight_range.shape:
        raise ValueError(
            f"expected pos (..., n, d), sight_range (..., n) and alive (..., n); got "
            f"{tuple(pos.shape)}, {tuple(sight_range.shape)}, {tuple(alive.shape)}"
        )
    pos = pos if pos.is_floating_point() else pos.float()
    dist = torch.linalg.vector_norm(pos.unsqueeze(-3) - pos.unsqueeze(-2), dim=-1)  # [i, j] = |p_j - p_i|
    alive = alive.bool()
    adj = (dist < sight_range.unsqueeze(-1)) & alive.unsqueeze(-1) & alive.unsqueeze(-2)
    return _finish(adj, self_loops, symmetric)


def visibility_graph_builder(model: Any, tensordict: Any, features: Tensor | None = None) -> Tensor:
    """A ``models.dgat.GRAPH_BUILDERS`` entry for ``topology: visibility``.

    Reads the group's observation ``(model.agent_group, "observation")`` from
    ``tensordict`` (a step, a collected batch or its ``"next"``) and returns
    :func:`visibility_adjacency` without self loops (D-GAT adds its own with
    ``add_self_loops``). Options come from ``model.graph_kwargs``:
    ``layout`` (``"smax"``, ``"smacv2/<task>"``; required) and ``symmetric``
    (default False), e.g. ``model.graph_kwargs={layout: smax}``.

    Args:
        model: the D-GAT model (``agent_group``, ``n_agents``, ``graph_kwargs``; a block of the group's
            agents, :func:`~benchmarl_decentral.models.dgat.agent_block`: ``joint_key``, ``joint_agents``).
        tensordict: holds ``(agent_group, "observation")`` ``(..., n, obs_dim)`` (a block: the group's joint
            observation ``joint_key``, ``(..., n * obs_dim)``).
        features: the model's input features (unused: they may not be the raw observation).

    Returns:
        Bool adjacency ``(..., n, n)``, diagonal False.
    """
    kwargs = dict(getattr(model, "graph_kwargs", None) or {})
    if "layout" not in kwargs:
        raise ValueError(
            "topology 'visibility' needs graph_kwargs.layout: 'smax' or 'smacv2/<task>' "
            "(e.g. model.graph_kwargs={layout: smax})"
        )
    unknown = set(kwargs) - {"layout", "symmetric"}
    if unknown:
        raise ValueError(f"unknown visibility graph_kwargs {sorted(unknown)}; allowed: layout, symmetric")
    joint_key = getattr(model, "joint_key", None)
    n = getattr(model, "joint_agents", model.n_agents)  # every agent of the group
    if joint_key is None:
        observation = tensordict.get((model.agent_group, "observation"))
    else:  # a block of the group's agents (a distributed rank): every agent's, from the joint observation
        observation = tensordict.get(joint_key).unflatten(-1, (n, -1))
    return visibility_adjacency(
        observation,
        layout=kwargs["layout"],
        n_agents=n,
        self_loops=False,
        symmetric=bool(kwargs.get("symmetric", False)),
    )
