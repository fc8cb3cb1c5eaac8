"""Private-reward variants (paper 001_8ff130c17487d6e3.txt sec. VI-B, Table I) on real VMAS / PettingZoo envs."""

from __future__ import annotations

import pytest
import torch
from benchmarl.environments import task_config_registry
from benchmarl.hydra_config import load_task_config_from_hydra
from hydra import compose, initialize_config_module
from torchrl.envs import Compose, TransformedEnv
from torchrl.envs.utils import check_env_specs

from benchmarl_decentral.environments.coordsum import CoordSumEnv
from benchmarl_decentral.environments.reward_modes import (
    PettingZooPrivateClass,
    PrivateReward,
    VARIANTS,
    VmasPrivateClass,
)
from conftest import make_experiment, run_cli, TINY


def _variant_env(name, config_changes=None, *, num_envs=4, seed=0, continuous=False):
    task = task_config_registry[name].get_from_yaml()
    task.config.update(config_changes or {})
    base = task.get_env_fun(num_envs=num_envs, continuous_actions=continuous, seed=seed, device="cpu")()
    return task, TransformedEnv(base, Compose(*task.get_env_transforms(base)))


def _base_env(name, config_changes=None, *, num_envs=4, seed=0, continuous=False):
    task = task_config_registry[name].get_from_yaml()
    task.config.update(config_changes or {})
    return task.get_env_fun(num_envs=num_envs, continuous_actions=continuous, seed=seed, device="cpu")()


def _lockstep(env_a, env_b, steps, group, generator):
    """Step two envs from the same initial state with the same random actions; yields both step outputs."""
    env_a.set_seed(0)
    td_a = env_a.reset()
    env_b.set_seed(0)  # (VMAS seeds the global RNGs, so seed each env right before its reset)
    td_b = env_b.reset()
    for _ in range(steps):
        action = env_a.full_action_spec[group, "action"].rand()
        if not action.is_floating_point():
            n = env_a.full_action_spec[group, "action"].space.n
            action = torch.randint(n, action.shape, generator=generator)
        td_a.set((group, "action"), action)
        td_b.set((group, "action"), action.clone())
        out_a, out_b = env_a.step(td_a), env_b.step(td_b)
        yield out_a, out_b
        td_a, td_b = env_a.step_mdp(out_a), env_b.step_mdp(out_b)


def test_registry_and_hydra_composition():
    for family, variants in VARIANTS.items():
        for name in variants:
            assert f"{family}/{name}" in task_config_registry
    with initialize_config_module(config_module="benchmarl.conf", version_base=None):
        cfg = compose(config_name="config", overrides=[
            "algorithm=mappo", "task=vmas_private/navigation_agent0", "task.n_agents=4"])
    task = load_task_config_from_hydra(cfg.task, "vmas_private/navigation_agent0")
    assert isinstance(task, VmasPrivateClass)
    expected = task_config_registry["vmas_private/navigation_agent0"].get_from_yaml().config
    expected["n_agents"] = 4
    assert task.config == expected
    assert task.config["shared_rew"] is True and task.config["penalty_key"] == "agent_collisions"
    # the base task's keys and defaults are BenchMARL's own
    base = task_config_registry["vmas/navigation"].get_from_yaml().config
    assert {k: v for k, v in expected.items() if k in base and k not in ("shared_rew", "n_agents")} == {
        k: v for k, v in base.items() if k not in ("shared_rew", "n_agents")}
    with initialize_config_module(config_module="benchmarl.conf", version_base=None):
        cfg = compose(config_name="config", overrides=["algorithm=ippo", "task=pettingzoo_private/simple_spread_agent0"])
    assert isinstance(load_task_config_from_hydra(cfg.task, "pettingzoo_private/simple_spread_agent0"),
                      PettingZooPrivateClass)


def test_agent0_on_vmas_navigation_keeps_agent0_and_collision_penalties():
    changes = {"agent_radius": 0.3}  # big agents: collisions within a few random steps
    _, private = _variant_env("vmas_private/navigation_agent0", changes)
    base = _base_env("vmas/navigation", {**changes, "shared_rew": True})
    g = torch.Generator().manual_seed(0)
    penalties = []
    for out_p, out_b in _lockstep(private, base, 25, "agents", g):
        r_p = out_p.get(("next", "agents", "reward"))
        r_b = out_b.get(("next", "agents", "reward"))
        collisions = out_b.get(("next", "agents", "info", "agent_collisions")).reshape(r_b.shape)
        torch.testing.assert_close(r_p[..., 0, :], r_b[..., 0, :])  # agent 0: its own (team) reward
        torch.testing.assert_close(r_p[..., 1:, :], collisions[..., 1:, :])  # others: own collision penalty
        penalties.append(collisions[..., 1:, :])
    penalties = torch.stack(penalties)
    assert (penalties < 0).any()  # collisions happened, so the penalty path was exercised
    assert torch.all(penalties <= 0)
    check_env_specs(private)  # (after the lockstep: it advances the env's RNG)


def test_agent0_on_pettingzoo_simple_spread_others_get_zero():
    _, private = _variant_env("pettingzoo_private/simple_spread_agent0", num_envs=1)
    base = _base_env("pettingzoo/simple_spread", num_envs=1)
    g = torch.Generator().manual_seed(0)
    for out_p, out_b in _lockstep(private, base, 10, "agent", g):
        r_p = out_p.get(("next", "agent", "reward"))
        r_b = out_b.get(("next", "agent", "reward"))
        torch.testing.assert_close(r_p[..., 0, :], r_b[..., 0, :])
        assert torch.all(r_p[..., 1:, :] == 0)
        assert torch.all(r_b[..., 1:, :] != 0)  # the base task does reward them


def test_shared_reward_task_gets_per_agent_rewards():
    """A task with only a shared 'reward' (CoordSum): agent 0 receives it, the others 0, root key removed."""
    make = lambda: CoordSumEnv(n_agents=3, num_actions=4, max_target=6, num_envs=5, seed=3)  # noqa: E731
    group_map = {"agents": ["agent_0", "agent_1", "agent_2"]}
    private = TransformedEnv(make(), PrivateReward(group_map))
    base = make()
    assert private.reward_keys == [("agents", "reward")]
    g = torch.Generator().manual_seed(1)
    hits = 0.0
    for out_p, out_b in _lockstep(private, base, 30, "agents", g):
        assert "reward" not in out_p["next"].keys()
        r_p = out_p.get(("next", "agents", "reward"))
        shared = out_b.get(("next", "reward"))
        torch.testing.assert_close(r_p[..., 0, :], shared)
        assert torch.all(r_p[..., 1:, :] == 0)
        hits += float(shared.sum())
    assert hits > 0  # the shared reward was non-zero at some step
    check_env_specs(private)


def test_individual_variant_is_the_tasks_own_per_agent_reward():
    _, private = _variant_env("vmas_private/navigation_individual")
    base = _base_env("vmas/navigation", {"shared_rew": False})
    g = torch.Generator().manual_seed(0)
    differs = False
    for out_p, out_b in _lockstep(private, base, 10, "agents", g):
        r_p = out_p.get(("next", "agents", "reward"))
        torch.testing.assert_close(r_p, out_b.get(("next", "agents", "reward")))
        differs |= not torch.allclose(r_p[..., 0, :], r_p[..., 1, :])
    assert differs  # per-agent: agents' rewards differ


def test_bad_reward_options_are_refused():
    task = task_config_registry["vmas_private/navigation_agent0"].get_from_yaml()
    task.config["reward_mode"] = "agent7"
    with pytest.raises(ValueError, match="reward_mode must be one of"):
        task.get_env_fun(num_envs=1, continuous_actions=False, seed=0, device="cpu")
    with pytest.raises(ValueError, match="rewarded_agent must be an agent index"):
        PrivateReward({"agents": ["a", "b"]}, rewarded_agent=2)
    with pytest.raises(ValueError, match="rewarded_group 'adversary' is not a group"):
        PrivateReward({"agents": ["a", "b"]}, rewarded_group="adversary")
    _, env = _variant_env("vmas_private/navigation_agent0", {"penalty_key": "bumps"}, num_envs=1)
    with pytest.raises(KeyError, match="penalty_key 'bumps' is not in"):
        env.rollout(2)


def test_any_algorithm_trains_on_a_variant(tmp_path):
    """The variants are plain BenchMARL tasks: ippo (independent learners) runs on one."""
    exp = make_experiment(tmp_path, algorithm="ippo", task="pettingzoo_private/simple_spread_agent0",
                          prefer_continuous_actions=False)
    exp.run()
    assert exp.n_iters_performed == 2


@pytest.mark.slow
def test_benchmarl_run_mappo_on_navigation_agent0(tmp_path):
    result = run_cli(["run", "algorithm=mappo", "task=vmas_private/navigation_agent0", *TINY], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(tmp_path.rglob("collection_agents_reward_episode_reward_mean.csv"))


def test_coordsum_private_rewards_only_agent0_and_every_agent_sees_the_target():
    """coordsum_private/3x5-12: agent 0 gets CoordSum's team reward, the others exactly 0 (Definition 1 holds)."""
    task, env = _variant_env("coordsum_private/3x5-12", num_envs=64)
    assert (task.config["n_agents"], task.config["num_actions"], task.config["max_target"]) == (3, 5, 12)
    check_env_specs(env, seed=0)
    _, base = _variant_env("coordsum/3x10-30", {"num_actions": 5, "max_target": 12}, num_envs=64)
    hits = 0
    for out, ref in _lockstep(env, base, 20, "agents", torch.Generator().manual_seed(0)):
        reward = out.get(("next", "agents", "reward")).squeeze(-1)  # (envs, 3)
        team = ref.get(("next", "reward")).squeeze(-1)  # the base task's shared reward
        assert torch.equal(reward[:, 0], team) and bool((reward[:, 1:] == 0).all())
        hit = out.get(("next", "info", "sum_hit")).squeeze(-1)
        assert torch.equal(hit, team > 0)
        hits += int(hit.sum())
        obs = out.get(("agents", "observation"))
        target_part = obs[..., : 12]  # one-hot target (appendix mode), identical for every agent
        assert torch.equal(target_part[:, 1], target_part[:, 0]) and torch.equal(target_part[:, 2], target_part[:, 0])
    assert hits > 0  # random picks do hit (about 1/12 of the 1280 steps)


def test_coordsum_private_composes_in_hydra_with_type_checks():
    from benchmarl_decentral.environments.reward_modes import CoordSumPrivateClass

    with initialize_config_module(config_module="benchmarl.conf", version_base=None):
        cfg = compose(config_name="config", overrides=["algorithm=matrpo", "task=coordsum_private/3x5-12",
                                                       "task.n_agents=4"])
        with pytest.raises(Exception, match="num_actions"):
            compose(config_name="config", overrides=["algorithm=matrpo", "task=coordsum_private/3x5-12",
                                                     "task.num_actions=five"])
    task = load_task_config_from_hydra(cfg.task, "coordsum_private/3x5-12")
    assert isinstance(task, CoordSumPrivateClass)
    assert (task.config["n_agents"], task.config["num_actions"], task.config["max_target"]) == (4, 5, 12)
    assert task.config["reward_mode"] == "agent0" and task.config["rewarded_agent"] == 0


@pytest.mark.slow
def test_coordsum_private_logs_the_hit_rate(tmp_path):
    exp = make_experiment(tmp_path, algorithm="ippo", task="coordsum_private/3x5-12", evaluation=True,
                          loggers=["csv"], prefer_continuous_actions=False)
    exp.run()
    scalars = {p.stem for p in tmp_path.rglob("scalars/*.csv")}
    assert {"eval_info_sum_hit_rate", "collection_info_sum_hit_rate"} <= scalars, sorted(scalars)
    rows = next(tmp_path.rglob("scalars/eval_info_sum_hit_rate.csv")).read_text().strip().splitlines()
    assert rows and all(0.0 <= float(r.split(",")[1]) <= 1.0 for r in rows)
