"""SMAX task family (JaxMARL's SMAX, heuristic enemy) and ally-visibility graphs.

Tests that build a SMAX env need the optional extra ``benchmarl-decentral[smax]``
(jax + jaxmarl) and are skipped with that reason without it; the visibility
tests and the bad-input tests run everywhere.

Compiling a batched SMAX step takes seconds, so the envs are module fixtures
(3m, batch 8; 3m, batch 1 with a 4-step limit) shared by the tests, and a
persistent JAX compilation cache is used across test processes.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

# Before jax is imported anywhere: reuse compiled SMAX steps across test processes.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "benchmarl_decentral_jax"))

import pytest
import torch
from tensordict import TensorDict

import benchmarl_decentral  # noqa: F401  (registers the tasks)
from benchmarl_decentral import _registry
from benchmarl_decentral.consensus.visibility import (
    SmacObsLayout,
    visibility_adjacency,
    visibility_from_positions,
)
from benchmarl_decentral.environments.smax import (
    MAPS,
    STOP_ACTION,
    SmacWinRateCallback,
    SmaxClass,
    SmaxEnv,
    SmaxTask,
    SmaxTaskConfig,
    jaxmarl_available,
)
from conftest import TINY, run_cli

_NO_JAXMARL = "jax/jaxmarl not installed: pip install 'benchmarl-decentral[smax]'"
# find_spec, not importorskip: importing jaxmarl outside SmaxEnv's quiet import prints to stdout
needs_jaxmarl = pytest.mark.skipif(not jaxmarl_available(), reason=_NO_JAXMARL)


def _skip_without_jaxmarl():
    if not jaxmarl_available():
        pytest.skip(_NO_JAXMARL)

MARINE_SIGHT = 9.0
MARINE_HEALTH = 45.0


def _act(env, actions):
    """Step with the given ``(num_envs, n_agents)`` actions; returns the step output (root = "next")."""
    actions = torch.as_tensor(actions, dtype=torch.long).reshape(env.num_envs, env.n_agents)
    td = TensorDict(
        {"agents": TensorDict({"action": actions}, batch_size=(env.num_envs, env.n_agents))},
        batch_size=(env.num_envs,),
    )
    return env.step(td)["next"]


def _masked_random(mask, generator):
    """Uniform legal actions, ``mask`` ``(..., n_actions)`` bool."""
    probs = mask.float()
    return torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator).reshape(mask.shape[:-1])


@pytest.fixture(scope="module")
def env8():
    _skip_without_jaxmarl()
    env = SmaxEnv("3m", num_envs=8, seed=0)
    env.reset()
    return env


@pytest.fixture(scope="module")
def env1():
    """Batch 1 with a 4-step episode limit."""
    _skip_without_jaxmarl()
    env = SmaxEnv("3m", num_envs=1, max_steps=4, seed=0)
    env.reset()
    return env


# ---------------------------------------------------------------- visibility (pure torch)
def test_visibility_from_positions_hand_placed():
    # agent 0 (range 10) at the origin; 1 at distance 9.5; 2 at distance 3 from 0 but dead;
    # 3 at distance 12 from 0 and 2.5 from 1. Ranges: 10, 9, 9, 9.
    pos = torch.tensor([[0.0, 0.0], [9.5, 0.0], [0.0, 3.0], [12.0, 0.0]])
    sight = torch.tensor([10.0, 9.0, 9.0, 9.0])
    alive = torch.tensor([True, True, False, True])
    adj = visibility_from_positions(pos, sight, alive, self_loops=False)
    expected = torch.tensor(
        [
            [0, 1, 0, 0],  # 0 sees 1 (9.5 < 10), not the dead 2, not 3 (12)
            [0, 0, 0, 1],  # 1 (range 9) does not see 0 at 9.5: directed; sees 3 at 2.5
            [0, 0, 0, 0],  # dead: sees nobody
            [0, 1, 0, 0],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(adj, expected)
    with_loops = visibility_from_positions(pos, sight, alive)
    assert torch.equal(with_loops, expected | torch.eye(4, dtype=torch.bool))
    sym = visibility_from_positions(pos, sight, alive, self_loops=False, symmetric=True)
    assert torch.equal(sym, expected | expected.T)
    # the range is strict: exactly at the sight range is not visible (SMAX and SMACv2 use <)
    edge = visibility_from_positions(torch.tensor([[0.0, 0.0], [9.0, 0.0]]), torch.tensor([9.0, 9.0]),
                                     torch.tensor([True, True]), self_loops=False)
    assert not edge.any()


def _smax_obs(n_allies, n_enemies, visible):
    """Hand-built SMAX observations: ``visible[i][j]`` -> ally j's entry in agent i's obs is non-zero."""
    layout = SmacObsLayout.smax(n_allies, n_enemies)
    obs = torch.zeros(n_allies, layout.obs_dim)
    for i in range(n_allies):
        others = [j for j in range(n_allies) if j != i]
        for slot, j in enumerate(others):
            if visible[i][j]:
                base = slot * 13
                obs[i, base] = 0.7  # health fraction
                obs[i, base + 1: base + 3] = torch.tensor([0.2, -0.1])
    obs[:, -10] = 1.0  # own health; own block must not leak into the graph
    return obs


def test_visibility_adjacency_smax_layout_batched():
    visible = [[0, 1, 0, 1], [1, 0, 0, 0], [0, 0, 0, 1], [1, 0, 1, 0]]
    expected = torch.tensor(visible, dtype=torch.bool)
    obs = _smax_obs(4, 5, visible)
    assert obs.shape[-1] == 13 * (3 + 5) + 10
    adj = visibility_adjacency(obs, layout="smax", n_agents=4)
    assert adj.dtype == torch.bool and adj.shape == (4, 4)
    assert torch.equal(adj, expected | torch.eye(4, dtype=torch.bool))
    assert torch.equal(visibility_adjacency(obs, layout="smax", self_loops=False), expected)
    # leading batch dims: (3, 2) copies, one with agent 2's row cleared
    batch = obs.expand(3, 2, 4, obs.shape[-1]).clone()
    batch[1, 0, 2] = 0.0
    out = visibility_adjacency(batch, layout=SmacObsLayout.smax(4, 5), self_loops=False)
    assert out.shape == (3, 2, 4, 4)
    assert torch.equal(out[0, 1], expected) and not out[1, 0, 2].any()


def test_visibility_adjacency_bad_input():
    obs = _smax_obs(3, 3, [[0, 1, 1], [1, 0, 1], [1, 1, 0]])
    with pytest.raises(ValueError, match="n_agents=4 but the observation holds 3"):
        visibility_adjacency(obs, layout="smax", n_agents=4)
    with pytest.raises(ValueError, match="unknown layout"):
        visibility_adjacency(obs, layout="smac")
    with pytest.raises(ValueError, match="not a SMAX unit_list observation"):
        visibility_adjacency(obs[..., :-1], layout="smax")
    with pytest.raises(ValueError, match="layout expects"):
        visibility_adjacency(obs, layout=SmacObsLayout.smax(3, 4))


def test_dgat_graph_builder_reads_the_group_observation():
    from types import SimpleNamespace

    from benchmarl_decentral.consensus.visibility import visibility_graph_builder

    visible = [[0, 1, 0, 1], [0, 0, 0, 0], [0, 0, 0, 1], [1, 0, 1, 0]]  # 0 sees 1, 1 does not see 0
    obs = _smax_obs(4, 5, visible).expand(2, 4, -1)
    td = TensorDict({"agents": TensorDict({"observation": obs}, batch_size=(2, 4))}, batch_size=(2,))
    model = SimpleNamespace(agent_group="agents", n_agents=4, graph_kwargs={"layout": "smax"})
    adj = visibility_graph_builder(model, td, None)
    assert torch.equal(adj, torch.tensor(visible, dtype=torch.bool).expand(2, 4, 4))  # no self loops
    model.graph_kwargs = {"layout": "smax", "symmetric": True}
    sym = torch.tensor(visible, dtype=torch.bool)
    assert not torch.equal(sym, sym.T)
    assert torch.equal(visibility_graph_builder(model, td, None)[0], sym | sym.T)
    model.graph_kwargs = None
    with pytest.raises(ValueError, match="needs graph_kwargs.layout"):
        visibility_graph_builder(model, td, None)
    model.graph_kwargs = {"layout": "smax", "radius": 3}
    with pytest.raises(ValueError, match="unknown visibility graph_kwargs"):
        visibility_graph_builder(model, td, None)


# ---------------------------------------------------------------- registration, bad input
@pytest.mark.parametrize("map_name", MAPS)
def test_registered_with_yaml_and_schema(map_name):
    from benchmarl.environments import task_config_registry

    full = f"smax/{map_name}"
    member = task_config_registry[full]
    assert member is SmaxTask.from_name(full) is _registry.task_configs()[full]
    assert _registry.task_schemas()[f"smax_{map_name}"] is SmaxTaskConfig
    if jaxmarl_available():
        task = member.get_from_yaml()
        assert isinstance(task, SmaxClass)
        assert task.config == {
            "map_name": map_name,
            "max_steps": 100,
            "see_enemy_actions": True,
            "walls_cause_death": True,
            "attack_mode": "closest",
        }


def test_unknown_map_lists_the_valid_ones():
    with pytest.raises(ValueError, match="Valid tasks: smax/3m, smax/8m"):
        SmaxTask.from_name("smax/4m")
    with pytest.raises(ValueError, match=r"unknown SMAX map '4m'; valid maps: 3m, 8m, 2s3z"):
        SmaxEnv("4m")
    config = {"map_name": "4m", "max_steps": 100, "see_enemy_actions": True,
              "walls_cause_death": True, "attack_mode": "closest"}
    with pytest.raises(ValueError, match="smacv2_20_units"):
        SmaxTask["3M"].get_task(config)


def test_bad_options_are_refused_together():
    config = {"map_name": "3m", "max_steps": 0, "see_enemy_actions": "yes",
              "walls_cause_death": True, "attack_mode": "nearest"}
    with pytest.raises(ValueError) as err:
        SmaxTask["3M"].get_task(config)
    msg = str(err.value)
    assert "max_steps must be an integer >= 1" in msg
    assert "see_enemy_actions must be true or false" in msg
    assert "attack_mode must be one of ('closest', 'random')" in msg
    with pytest.raises(ValueError, match="missing"):
        SmaxTask["3M"].get_task({"map_name": "3m"})


def test_missing_jaxmarl_names_the_extra(monkeypatch):
    for name in [m for m in sys.modules if m == "jaxmarl" or m.startswith("jaxmarl.")] or ["jaxmarl"]:
        monkeypatch.setitem(sys.modules, name, None)
    assert not jaxmarl_available()
    with pytest.raises(ImportError, match=r"pip install 'benchmarl-decentral\[smax\]'"):
        SmaxTask["3M"].get_from_yaml()
    with pytest.raises(ImportError, match=r"benchmarl-decentral\[smax\]"):
        SmaxEnv("3m")


def test_discrete_only():
    task = SmaxClass(name="3M", config={})
    assert task.supports_discrete_actions() and not task.supports_continuous_actions()
    with pytest.raises(ValueError, match="discrete actions only"):
        task.get_env_fun(num_envs=1, continuous_actions=True, seed=0, device="cpu")


# ---------------------------------------------------------------- the environment
@needs_jaxmarl
def test_specs_match_smacv2_layout(env8):
    from benchmarl.environments.smacv2.common import Smacv2Class
    from torchrl.envs.utils import check_env_specs

    check_env_specs(env8, seed=1)
    ours = SmaxClass(name="3M", config={})
    theirs = Smacv2Class(name="PROTOSS_5_VS_5", config={})
    # BenchMARL's own SMACv2 spec splitting finds the same entries in our env
    for method in ("observation_spec", "action_mask_spec", "state_spec", "info_spec"):
        ours_keys = set(getattr(ours, method)(env8).keys(True, True))
        theirs_keys = set(getattr(theirs, method)(env8).keys(True, True))
        assert ours_keys == theirs_keys, method
    assert set(ours.info_spec(env8)["info"].keys()) == {"battle_won", "episode_limit", "dead_allies", "dead_enemies"}
    spec = env8.full_observation_spec_unbatched
    assert spec["agents", "observation"].shape == (3, 75)  # 13 * (2 + 3) + 10
    assert spec["agents", "action_mask"].dtype == torch.bool and spec["agents", "action_mask"].shape == (3, 8)
    assert spec["state"].shape == (72,)  # 12 * 6 units
    action = env8.full_action_spec_unbatched["agents", "action"]
    assert action.shape == (3,) and action.space.n == 8 and action.dtype == torch.int64
    assert env8.full_reward_spec_unbatched["reward"].shape == (1,)  # shared team reward
    assert env8.group_map == {"agents": ["agent_0", "agent_1", "agent_2"]}
    assert env8.episode_limit == 100 and SmaxTask["3M"].get_from_yaml().max_steps(env8) == 100


@needs_jaxmarl
@pytest.mark.parametrize("which", ["env1", "env8"])
def test_reset_and_step_shapes(which, request):
    env = request.getfixturevalue(which)
    n_envs = env.num_envs
    td = env.reset()
    assert td.batch_size == (n_envs,)
    assert td["agents", "observation"].shape == (n_envs, 3, 75)
    assert td["agents", "action_mask"].shape == (n_envs, 3, 8)
    assert td["state"].shape == (n_envs, 72)
    assert not td["done"].any() and td["done"].shape == (n_envs, 1)
    assert td["agents", "action_mask"].any(-1).all()  # every agent has a legal action
    assert env.observation_spec.is_in(td.select(*env.observation_spec.keys(True, True)))
    out = env.rand_step(td.clone())["next"]
    for key, shape in (
        ("reward", (n_envs, 1)), ("done", (n_envs, 1)), ("terminated", (n_envs, 1)),
        ("truncated", (n_envs, 1)), (("info", "battle_won"), (n_envs,)), ("state", (n_envs, 72)),
        (("agents", "observation"), (n_envs, 3, 75)),
    ):
        assert out[key].shape == shape, key
    assert out["reward"].dtype == torch.float32 and out["done"].dtype == torch.bool


@needs_jaxmarl
def test_masks_respected_and_dead_agents_may_only_stop(env8):
    gen = torch.Generator().manual_seed(0)
    td = env8.reset()
    saw_dead = False
    for _ in range(60):
        mask = td["agents", "action_mask"]
        # the env's random action (the spec carries the current mask) is always legal
        rand = env8.rand_action(td.clone())["agents", "action"]
        assert mask.gather(-1, rand.unsqueeze(-1)).all()
        td["agents", "action"] = _masked_random(mask, gen)
        out, td = env8.step_and_maybe_reset(td)
        # the root (new episodes for finished envs) agrees with the simulator's alive flags
        alive = env8.unit_state()["alive"][:, :3]
        assert (td["agents", "action_mask"][~alive] == _only_stop()).all()
        # in the step output (final observations included) dead agents may only stop
        dead_next = out["next", "agents", "observation"][..., -10] == 0  # own health 0 <=> dead
        saw_dead |= bool(dead_next.any())
        assert (out["next", "agents", "action_mask"][dead_next] == _only_stop()).all()
        assert out["next", "agents", "action_mask"][~dead_next, :4].all()  # the living may move
    assert saw_dead
    # an illegal action is refused with the fix
    td = env8.reset()
    illegal = (~td["agents", "action_mask"]).float().argmax(-1)
    assert not td["agents", "action_mask"].gather(-1, illegal.unsqueeze(-1)).all()
    with pytest.raises(ValueError, match="action_mask forbids"):
        _act(env8, illegal)


def _only_stop():
    row = torch.zeros(8, dtype=torch.bool)
    row[STOP_ACTION] = True
    return row


@needs_jaxmarl
def test_deterministic_with_a_seed(env8):
    def run(seed):
        env = SmaxEnv("3m", num_envs=8, seed=seed)  # same config as env8: compiled code is shared
        gen = torch.Generator().manual_seed(1)
        td = env.reset()
        frames = []
        for _ in range(25):
            td["agents", "action"] = _masked_random(td["agents", "action_mask"], gen)
            out, td = env.step_and_maybe_reset(td)
            frames.append(out.select("next").clone())
        return torch.stack(frames)

    a, b, c = run(3), run(3), run(4)
    assert (a["next", "done"]).any()  # resets happened inside the compared window
    assert (a == b).all()
    assert not torch.equal(a["next", "agents", "observation"], c["next", "agents", "observation"])


@needs_jaxmarl
def test_every_reset_gets_a_start_state_of_its_own(env8):
    """Start states come from pools drawn ahead: no env ever restarts from a state used before,
    and a reset env continues from exactly the observation its reset returned."""
    gen = torch.Generator().manual_seed(2)
    td = env8.reset()
    starts = [td["agents", "observation"].clone()]  # (8, n, d) each
    for _ in range(150):
        td["agents", "action"] = _masked_random(td["agents", "action_mask"], gen)
        out, td = env8.step_and_maybe_reset(td)
        done = out["next", "done"].squeeze(-1)
        if done.any():
            starts.append(td["agents", "observation"][done].clone())
            steps = env8.unit_state()["step"]
            assert (steps[done] == 0).all()  # the reset envs are at their start state
            torch.testing.assert_close(env8._views[0][done], td["agents", "observation"][done])
    start_obs = torch.cat(starts).flatten(1)
    assert len(start_obs) > 16  # many resets in the window
    assert len(torch.unique(start_obs, dim=0)) == len(start_obs)  # all different


@needs_jaxmarl
def test_start_state_pools_equal_explicit_swaps():
    """Start states come from pools of num_envs states, swapped in by the next step. Partial resets
    that cross pool boundaries or reset an env twice before a step give the same episodes as an
    env whose reset states are swapped in at once (``unit_state`` does that)."""
    a, b = SmaxEnv("3m", num_envs=8, seed=3), SmaxEnv("3m", num_envs=8, seed=3)
    ta, tb = a.reset(), b.reset()
    mask = torch.zeros(8, dtype=torch.bool)
    mask[:5] = True
    reset = TensorDict({"_reset": mask}, batch_size=(8,))
    seen = [ta["agents", "observation"][mask]]
    for _ in range(3):  # 15 reset states from pools of 8, envs 0-4 reset three times before a step
        ra, rb = a._reset(reset), b._reset(reset)
        b.unit_state()
        torch.testing.assert_close(ra["agents", "observation"], rb["agents", "observation"])
        torch.testing.assert_close(ra["agents", "observation"][~mask], ta["agents", "observation"][~mask])
        seen.append(ra["agents", "observation"][mask])
    assert len(torch.unique(torch.cat(seen).flatten(1), dim=0)) == 4 * 5  # every reset: a new start state
    assert int(a.unit_state()["step"][mask].max()) == 0
    a.reset(), b.reset()  # same key chain on both sides from here on
    ta, tb = a.reset(), b.reset()
    gen = torch.Generator().manual_seed(4)
    resets = 0
    for _ in range(120):
        action = _masked_random(ta["agents", "action_mask"], gen)
        ta["agents", "action"], tb["agents", "action"] = action, action.clone()
        oa, ta = a.step_and_maybe_reset(ta)
        ob, tb = b.step_and_maybe_reset(tb)
        b.unit_state()  # b swaps every reset state in before its next step
        torch.testing.assert_close(oa["next", "agents", "observation"], ob["next", "agents", "observation"])
        torch.testing.assert_close(ta["agents", "observation"], tb["agents", "observation"])
        resets += int(oa["next", "done"].sum())
    assert resets > 8  # crossed at least one pool boundary inside step_and_maybe_reset


@needs_jaxmarl
def test_reseeding_right_after_a_partial_reset_keeps_the_new_episodes(env8):
    gen = torch.Generator().manual_seed(5)
    td = env8.reset()
    for _ in range(100):
        td["agents", "action"] = _masked_random(td["agents", "action_mask"], gen)
        out, td = env8.step_and_maybe_reset(td)
        done = out["next", "done"].squeeze(-1)
        if done.any() and not done.all():
            break
    assert done.any() and not done.all()
    steps_before = env8.unit_state()["step"]
    assert (steps_before[done] == 0).all() and (steps_before[~done] > 0).all()
    env8.set_seed(11)
    td["agents", "action"] = _masked_random(td["agents", "action_mask"], gen)
    env8.step(td)
    steps = env8.unit_state()["step"]
    assert (steps[done] == 1).all() and torch.equal(steps[~done], steps_before[~done] + 1)


@needs_jaxmarl
def test_time_limit_ends_on_the_last_step_and_keeps_the_final_observation(env1):
    td = env1.reset()
    stop = torch.full((1, 3), STOP_ACTION)
    seen = []
    for t in range(1, 9):
        td["agents", "action"] = stop.clone()
        out, td = env1.step_and_maybe_reset(td)
        nxt = out["next"]
        seen.append(bool(nxt["done"]))
        if t % 4:
            assert not nxt["done"].any() and not nxt["info", "episode_limit"].any()
            assert env1.unit_state()["step"].item() == t % 4
        else:
            # the 4th step (max_steps=4) ends the episode by the time limit: truncated, not terminated
            assert nxt["done"].all() and nxt["truncated"].all() and not nxt["terminated"].any()
            assert nxt["info", "episode_limit"].all() and not nxt["info", "battle_won"].any()
            # the final observation is the one of the last state, not the reset one
            final_obs = nxt["agents", "observation"]
            assert not torch.equal(final_obs, td["agents", "observation"])
            assert not td["done"].any()
            assert env1.unit_state()["step"].item() == 0  # a new episode started
    assert seen == [False, False, False, True] * 2


@needs_jaxmarl
def test_final_observation_matches_the_terminal_state(env8):
    """When an episode ends, ``next`` holds the terminal state's observation (not the reset one)."""
    td = env8.reset()
    units = env8.unit_state()
    pos = units["positions"].clone()
    # allies at x=10, enemies at x=12 (in range), enemies nearly dead: focus fire wins at once
    pos[:, :3] = torch.tensor([[10.0, 15.0], [10.0, 16.0], [10.0, 17.0]])
    pos[:, 3:] = torch.tensor([[12.0, 15.0], [12.0, 16.0], [12.0, 17.0]])
    health = torch.full((8, 6), MARINE_HEALTH)
    health[:, 3:] = 1.0
    td = env8.set_unit_state(positions=pos, health=health)
    attack = torch.tensor([5, 6, 7]).expand(8, 3)  # ally i shoots enemy i
    assert td["agents", "action_mask"].gather(-1, attack.unsqueeze(-1)).all()
    td["agents", "action"] = attack.clone()
    out, td = env8.step_and_maybe_reset(td)
    nxt = out["next"]
    # terminal observation: every enemy entry is zero (dead), allies still see each other
    enemy_block = nxt["agents", "observation"][..., 2 * 13: 5 * 13]
    assert (enemy_block == 0).all()
    assert (nxt["agents", "observation"][..., :2 * 13:13] > 0).all()
    # and the root holds the new episode, where all 6 units are alive again
    assert (env8.unit_state()["alive"]).all()
    assert not torch.equal(td["agents", "observation"], nxt["agents", "observation"])


@needs_jaxmarl
def test_scripted_win_and_loss_are_detected(env8):
    env8.reset()
    pos = env8.unit_state()["positions"].clone()
    pos[:, :3] = torch.tensor([[10.0, 15.0], [10.0, 16.0], [10.0, 17.0]])
    pos[:, 3:] = torch.tensor([[12.0, 15.0], [12.0, 16.0], [12.0, 17.0]])
    # envs 0-3: the enemies are nearly dead and the allies shoot them -> win
    # envs 4-7: the allies are nearly dead and stand still -> loss
    health = torch.full((8, 6), MARINE_HEALTH)
    health[:4, 3:] = 1.0
    health[4:, :3] = 1.0
    td = env8.set_unit_state(positions=pos, health=health)
    actions = torch.tensor([5, 6, 7]).repeat(8, 1)
    actions[4:] = STOP_ACTION
    td["agents", "action"] = actions
    out, _ = env8.step_and_maybe_reset(td)
    nxt = out["next"]
    won = nxt["info", "battle_won"]
    assert won[:4].all() and not won[4:].any()
    assert nxt["terminated"].all() and not nxt["truncated"].any() and nxt["done"].all()
    assert (nxt["info", "dead_enemies"][:4] == 3).all() and (nxt["info", "dead_allies"][:4] == 0).all()
    assert (nxt["info", "dead_allies"][4:] == 3).all()
    # SMAX's reward: enemy health removed / n_enemies (3 x 1/45 / 3) + 1 for the win
    assert torch.allclose(nxt["reward"][:4], torch.full((4, 1), 1.0 + 1.0 / MARINE_HEALTH), atol=1e-5)
    assert (nxt["reward"][4:] == 0).all()
    # BenchMARL-side logging: the collection win rate over finished episodes
    batch = out.unsqueeze(-1)  # (envs, time=1)
    logged = SmaxClass.log_info(batch)
    assert logged == {"collection/info/win_rate": 0.5, "collection/info/episode_limit_rate": 0.0}


def test_eval_callback_reads_the_first_done_of_each_rollout():
    class _Logger:
        def __init__(self):
            self.logged = []

        def log(self, values, step):
            self.logged.append((values, step))

    class _Experiment:
        logger = _Logger()
        n_iters_performed = 7

    def rollout(done_at, won, limit, length=6):
        done = torch.zeros(length, 1, dtype=torch.bool)
        battle_won = torch.zeros(length, dtype=torch.bool)
        episode_limit = torch.zeros(length, dtype=torch.bool)
        if done_at is not None:
            done[done_at:] = True
            battle_won[done_at] = won
            episode_limit[done_at] = limit
            battle_won[done_at + 1:] = not won  # after the first done: ignored
        return TensorDict(
            {"next": {"done": done, "info": {"battle_won": battle_won, "episode_limit": episode_limit}}},
            batch_size=(length,),
        )

    cb = SmacWinRateCallback()
    cb.experiment = _Experiment()
    cb.on_evaluation_end([rollout(2, True, False), rollout(4, False, True), rollout(1, True, False),
                          rollout(None, False, False)])
    assert cb.experiment.logger.logged == [
        ({"eval/info/win_rate": 2 / 3, "eval/info/episode_limit_rate": 1 / 3}, 7)
    ]
    cb.experiment.logger.logged.clear()
    cb.on_evaluation_end([rollout(None, False, False)])  # no episode ended: nothing logged
    assert cb.experiment.logger.logged == []


@needs_jaxmarl
def test_visibility_graph_of_hand_placed_units(env8):
    """Obs-layout and state routes agree with the hand computation (marines: sight range 9)."""
    env8.reset()
    pos = env8.unit_state()["positions"].clone()
    # env 0: 0-1 at 8.9 (visible), 1-2 at 9.1 (not), 0-2 at 18 (not)
    # env 1: a line at 4.0 spacing: 0-1, 1-2 visible, 0-2 at 8.0 visible
    # envs 2..7: as env 1, and in env 2 ally 1 is dead
    pos[:, 3:] = torch.tensor([[30.0, 2.0], [30.0, 4.0], [30.0, 6.0]])  # enemies far away
    pos[0, :3] = torch.tensor([[5.0, 16.0], [13.9, 16.0], [23.0, 16.0]])
    pos[1:, :3] = torch.tensor([[5.0, 16.0], [9.0, 16.0], [13.0, 16.0]])
    health = torch.full((8, 6), MARINE_HEALTH)
    health[2, 1] = 0.0
    td = env8.set_unit_state(positions=pos, health=health)
    expected = torch.zeros(8, 3, 3, dtype=torch.bool)
    expected[0, 0, 1] = expected[0, 1, 0] = True
    expected[1:] = True
    expected[2, 1, :] = False
    expected[2, :, 1] = False
    expected[:, range(3), range(3)] = False
    from_obs = visibility_adjacency(td["agents", "observation"], layout="smax", self_loops=False)
    from_state = env8.visibility_adjacency(self_loops=False)
    assert torch.equal(from_obs, expected)
    assert torch.equal(from_state, expected)
    loops = env8.visibility_adjacency()
    assert loops[:, range(3), range(3)].all()  # self-loops by default, dead agents included


@needs_jaxmarl
def test_visibility_from_obs_equals_state_along_a_rollout(env8):
    gen = torch.Generator().manual_seed(2)
    td = env8.reset()
    for _ in range(15):
        assert torch.equal(
            visibility_adjacency(td["agents", "observation"], layout="smax", n_agents=3),
            env8.visibility_adjacency(),
        )
        td["agents", "action"] = _masked_random(td["agents", "action_mask"], gen)
        _, td = env8.step_and_maybe_reset(td)


# ---------------------------------------------------------------- end to end
def _scalars(run_root: Path, name: str) -> Path:
    found = list(run_root.rglob(f"scalars/{name}.csv"))
    assert found, f"{name}.csv not written under {run_root}"
    return found[0]


@needs_jaxmarl
@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["mappo", "decpg", "dg_mappo", "matrpo", "magpo"])
def test_benchmarl_run_on_smax_3m(algorithm, tmp_path):
    from benchmarl.algorithms import algorithm_config_registry

    if algorithm not in algorithm_config_registry:
        pytest.skip(f"algorithm '{algorithm}' is not registered yet")
    proc = run_cli(["run", f"algorithm={algorithm}", "task=smax/3m", *TINY], cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # win rates logged at collection and at evaluation (random policies rarely win: values in [0, 1])
    for name in ("collection_info_win_rate", "eval_info_win_rate", "eval_info_episode_limit_rate"):
        rows = _scalars(tmp_path, name).read_text().strip().splitlines()
        values = [float(row.split(",")[-1]) for row in rows if row and row[0].isdigit()]
        assert values and all(0.0 <= v <= 1.0 for v in values), (name, rows)


@needs_jaxmarl
@pytest.mark.slow
@pytest.mark.parametrize(
    "algorithm, metric, low, high",
    [
        # decpg and matrpo: the same path, through the Python API, in test_visibility_topologies.py
        # and test_smacv2_ready.py (logged metrics included); one CLI run keeps CI short
        ("dg_mappo", "dg_mappo_agents_average_degree", 1e-6, 2.0),
    ],
)
def test_visibility_topology_through_benchmarl_run(algorithm, metric, low, high, tmp_path):
    """The D-GAT of dg_mappo follows ally visibility on SMAX by default (topology: auto), the layout inferred."""
    proc = run_cli(["run", f"algorithm={algorithm}", "task=smax/3m", *TINY], cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "dg_mappo: topology=auto on smax/3m: visibility (SMAC ally visibility" in proc.stdout
    rows = _scalars(tmp_path, metric).read_text().strip().splitlines()
    values = [float(row.split(",")[-1]) for row in rows if row and row[0].isdigit()]
    # 3 allies start within sight of each other: the graph has links, at most n - 1 per agent / 3 pairs
    assert values and all(low <= v <= high for v in values), rows