"""CoordSum task family (paper 003_13ad26f9f90dcfc4.txt, Appendix B)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict

import benchmarl_decentral  # noqa: F401  (registers the tasks)
from benchmarl_decentral import _registry
from benchmarl_decentral.environments.coordsum import (
    CoordSumClass,
    CoordSumEnv,
    CoordSumTask,
    CoordSumTaskConfig,
    MODES,
    SCRIPTED_POLICIES,
    TASK_NAMES,
    parse_task_name,
    scripted_policy,
)

FULL_NAMES = [f"coordsum/{name}" for name in TASK_NAMES]


def _act(env, actions):
    """A step input with the given (num_envs, n_agents) actions."""
    actions = torch.as_tensor(actions, dtype=torch.long).reshape(env.num_envs, env.n_agents)
    td = TensorDict(
        {"agents": TensorDict({"action": actions}, batch_size=(env.num_envs, env.n_agents))},
        batch_size=(env.num_envs,),
    )
    return env.step(td)["next"]


def _env(n_agents=3, num_actions=10, max_target=30, num_envs=1, seed=0, **kw):
    env = CoordSumEnv(n_agents, num_actions, max_target, num_envs=num_envs, seed=seed, **kw)
    env.reset()
    return env


# ----------------------------------------------------------------------------- rules
def test_reward_table_hit_unguessed_hit_guessed_miss():
    env = _env()
    env.set_target(12)
    # no history for target 12: the guess is action 0; agent 0 plays 5 -> unguessed hit
    out = _act(env, [5, 4, 3])
    assert out["reward"].item() == 2.0
    assert out["info", "sum_hit"].item() and not out["info", "guess_correct"].item()
    assert out["info", "guess"].item() == 0
    # history for 12 is now {5: 1}: the guess is 5; agent 0 plays 5 again -> guessed hit
    env.set_target(12)
    out = _act(env, [5, 0, 7])
    assert out["reward"].item() == 1.0
    assert out["info", "guess_correct"].item()
    # miss: the sum is 13, not 12 (guess right or wrong does not matter)
    env.set_target(12)
    assert _act(env, [5, 4, 4])["reward"].item() == 0.0
    env.set_target(12)
    assert _act(env, [1, 4, 4])["reward"].item() == 0.0
    # no-history guess 0 against agent 0 playing 0 -> a guessed hit scores 1
    env.set_target(3)
    assert _act(env, [0, 1, 2])["reward"].item() == 1.0


def test_opponent_guess_is_majority_per_target_with_lowest_index_ties():
    env = _env()
    picks = [4, 7, 7, 4, 2]  # agent 0's picks at target 20
    for a in picks:
        env.set_target(20)
        _act(env, [a, 0, 0])
    hist = env.history[0, 20]
    assert hist[4] == 2 and hist[7] == 2 and hist[2] == 1 and hist.sum() == 5
    env.set_target(20)
    assert env.opponent_guess().item() == 4  # tie 4 vs 7 -> lowest index
    # the history is per target: target 9 has none, so its guess is 0
    env.set_target(9)
    assert env.opponent_guess().item() == 0
    # one more 7 at target 20 makes 7 the majority; hitting 20 with agent 0 = 7 is guessed
    env.set_target(20)
    _act(env, [7, 0, 0])
    env.set_target(20)
    out = _act(env, [7, 6, 7])
    assert out["info", "guess"].item() == 7 and out["reward"].item() == 1.0
    # and agent 0 = 4 is not guessed any more
    env.set_target(20)
    assert _act(env, [4, 9, 7])["reward"].item() == 2.0
    # targets >= num_actions get their own rows (no table indexed by num_actions)
    assert env.history.shape == (1, 30, 10)


def test_history_resets_with_the_episode():
    env = _env()
    env.set_target(15)
    _act(env, [6, 0, 0])
    assert env.history.sum() == 1
    env.reset()
    assert env.history.sum() == 0


def test_episode_is_exactly_100_steps():
    env = _env(num_envs=2)
    for t in range(1, 101):
        out = _act(env, torch.zeros(2, 3))
        done = out["done"].squeeze(-1)
        assert done.tolist() == [t == 100] * 2, t
        assert out["truncated"].squeeze(-1).tolist() == [t == 100] * 2
        assert not out["terminated"].any()
        # the normalised step count is part of every observation and of the state
        assert torch.allclose(out["agents", "observation"][:, :, 30], torch.full((2, 3), t / 100))
        assert torch.allclose(out["state"][:, 30], torch.full((2,), t / 100))
    rollout = CoordSumEnv(3, 10, 30, num_envs=1, seed=0).rollout(1000)  # stops at the first done
    assert rollout.shape == (1, 100)


def test_observation_and_state_encoding():
    env = CoordSumEnv(3, 10, 30, num_envs=2, seed=0)
    td = env.reset()
    obs, state = td["agents", "observation"], td["state"]
    assert obs.shape == (2, 3, 30 + 1 + 3) and state.shape == (2, 31)
    targets = env.target
    assert torch.equal(state[:, :30].argmax(-1), targets) and torch.equal(state[:, :30].sum(-1), torch.ones(2))
    assert torch.equal(obs[:, :, :31], state.unsqueeze(1).expand(2, 3, 31))
    assert torch.equal(obs[0, :, 31:], torch.eye(3))  # one-hot agent id
    assert td["agents", "action_mask"].all() and td["agents", "action_mask"].shape == (2, 3, 10)
    bare = CoordSumEnv(3, 10, 30, num_envs=2, seed=0, obs_agent_id=False).reset()
    assert bare["agents", "observation"].shape == (2, 3, 31)


def test_targets_uniform_range():
    env = CoordSumEnv(2, 5, 7, num_envs=64, seed=1)
    seen = torch.cat([env.reset()["state"][:, :7].argmax(-1) for _ in range(20)])
    assert seen.min() == 0 and seen.max() == 6 and len(seen.unique()) == 7


# ------------------------------------------------------------------------ batching
def test_vectorised_envs_are_independent():
    env = _env(num_envs=3)
    env.set_target([6, 6, 9])
    # env 0: hit, no history -> 2 ; env 1: hit, agent 0 plays 0 = no-history guess -> 1 ; env 2: miss
    out = _act(env, [[1, 2, 3], [0, 3, 3], [1, 1, 1]])
    assert out["reward"].squeeze(-1).tolist() == [2.0, 1.0, 0.0]
    hist = env.history
    assert hist[0, 6, 1] == 1 and hist[1, 6, 0] == 1 and hist[2, 9, 1] == 1 and hist.sum() == 3
    # same joint action in every env: env 0 is now guessed (history {1}), env 1 is not (history {0})
    env.set_target([6, 6, 6])
    out = _act(env, [[1, 2, 3]] * 3)
    assert out["reward"].squeeze(-1).tolist() == [1.0, 2.0, 2.0]


def test_partial_reset_leaves_other_envs_alone():
    env = _env(num_envs=3, seed=3)
    for _ in range(5):
        _act(env, torch.ones(3, 3))
    target, steps, hist = env.target, env.step_count, env.history
    assert steps.tolist() == [5, 5, 5] and hist.sum() == 15
    reset = torch.tensor([[False], [True], [False]])
    out = env.reset(TensorDict({"_reset": reset}, batch_size=(3,)))
    assert env.step_count.tolist() == [5, 0, 5]
    assert torch.equal(env.history[[0, 2]], hist[[0, 2]]) and env.history[1].sum() == 0
    assert env.target[0] == target[0] and env.target[2] == target[2]
    assert not out["done"].any()
    assert out["state"][1, 30] == 0.0 and out["state"][1, :30].argmax() == env.target[1]
    # the envs not reset continue where they were (torchrl fills their entries of the
    # returned td from the input td, so look at the next step's observation)
    out = _act(env, torch.zeros(3, 3))
    assert torch.allclose(out["state"][:, 30], torch.tensor([0.06, 0.01, 0.06]))
    # after 95 more steps envs 0 and 2 are done, env 1 is not
    for _ in range(94):
        out = _act(env, torch.zeros(3, 3))
    assert out["done"].squeeze(-1).tolist() == [True, False, True]


def test_check_env_specs_and_determinism():
    from torchrl.envs.utils import check_env_specs

    for n_agents, num_envs in [(3, 4), (1, 1), (8, 2)]:
        check_env_specs(CoordSumEnv(n_agents, 15, 20, num_envs=num_envs, seed=0))

    def run(seed):
        env = CoordSumEnv(3, 10, 30, num_envs=4)
        env.set_seed(seed)
        torch.manual_seed(0)  # the random policy of rollout() uses the global RNG
        return env.rollout(50, break_when_any_done=False)

    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a["state"], b["state"]) and torch.equal(a["next", "reward"], b["next", "reward"])
    assert not torch.equal(a["state"], c["state"])
    # a seed passed to the constructor is the same as set_seed
    env = CoordSumEnv(3, 10, 30, num_envs=4, seed=7)
    torch.manual_seed(0)
    assert torch.equal(env.rollout(50, break_when_any_done=False)["state"], a["state"])


def test_log_info_and_pickle():
    import pickle

    env = CoordSumEnv(2, 3, 5, num_envs=4, seed=0)
    torch.manual_seed(0)
    batch = env.rollout(100, break_when_any_done=False)
    info = CoordSumClass.log_info(batch)
    reward = batch["next", "reward"]
    assert info["collection/info/sum_hit_rate"] == pytest.approx((reward > 0).float().mean().item())
    assert info["collection/info/hit_guessed_rate"] == pytest.approx((reward == 1).float().mean().item())
    assert info["collection/info/hit_unguessed_rate"] == pytest.approx((reward == 2).float().mean().item())
    task = CoordSumTask.from_name("3x10-30").get_from_yaml()
    assert pickle.loads(pickle.dumps(CoordSumTask["3X10-30"])) is CoordSumTask["3X10-30"]
    assert pickle.loads(pickle.dumps(task)) == task


# ---------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "sizes, field",
    [((0, 10, 30), "n_agents"), ((3, 1, 30), "num_actions"), ((3, 10, 0), "max_target")],
)
def test_invalid_sizes_are_refused(sizes, field):
    with pytest.raises(ValueError, match=f"{field} must be >=.*task YAML"):
        CoordSumEnv(*sizes)
    config = dict(zip(("n_agents", "num_actions", "max_target"), sizes), max_steps=100, obs_agent_id=True)
    with pytest.raises(ValueError, match=field):
        CoordSumTask.from_name("3x10-30").get_task(config)


def test_unknown_task_name_is_refused():
    with pytest.raises(ValueError, match="Unknown CoordSum task '3x10-31'.*coordsum/3x10-30"):
        CoordSumTask.from_name("3x10-31")
    assert CoordSumTask.from_name("coordsum/5x20-80") is CoordSumTask["5X20-80"]


def test_discrete_only():
    task = CoordSumTask.from_name("3x10-30").get_from_yaml()
    assert task.supports_discrete_actions() and not task.supports_continuous_actions()
    with pytest.raises(ValueError, match="discrete actions only"):
        task.get_env_fun(1, True, 0, "cpu")


# -------------------------------------------------------------------- registration
@pytest.mark.parametrize("full_name", FULL_NAMES)
def test_registered_and_yaml_matches_name(full_name):
    from benchmarl.environments import task_config_registry

    member = task_config_registry[full_name]
    assert member is CoordSumTask.from_name(full_name)
    assert _registry.task_configs()[full_name] is member
    task = member.get_from_yaml()
    assert isinstance(task, CoordSumClass) and task.config["max_steps"] == 100
    n_agents, num_actions, max_target = parse_task_name(full_name.split("/")[1])
    assert (task.config["n_agents"], task.config["num_actions"], task.config["max_target"]) == (
        n_agents, num_actions, max_target,
    )
    assert _registry.task_schemas()[full_name.replace("/", "_")] is CoordSumTaskConfig


@pytest.mark.parametrize("full_name", ["coordsum/3x10-30", "coordsum/8x15-100"])
def test_hydra_composition_equals_get_from_yaml(full_name):
    from benchmarl.environments import task_config_registry
    from benchmarl.hydra_config import load_task_config_from_hydra
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="benchmarl.conf", version_base=None):
        cfg = compose(config_name="config", overrides=["algorithm=mappo", f"task={full_name}"])
    with warnings.catch_warnings():
        # BenchMARL looks for benchmarl.environments.coordsum.<task>.TaskConfig only and warns
        # that it is missing; hydra already type-checked against our ConfigStore schema.
        warnings.filterwarnings("ignore", message="TaskConfig python dataclass not found")
        from_hydra = load_task_config_from_hydra(cfg.task, full_name)
    assert from_hydra == task_config_registry[full_name].get_from_yaml()


def test_hydra_schema_type_checks_overrides():
    from hydra import compose, initialize_config_module
    from hydra.errors import ConfigCompositionException

    with initialize_config_module(config_module="benchmarl.conf", version_base=None):
        cfg = compose(
            config_name="config",
            overrides=["algorithm=mappo", "task=coordsum/3x10-30", "task.n_agents=4"],
        )
        assert cfg.task.n_agents == 4
        # the schema types the fields: a non-integer is refused at composition
        with pytest.raises(ConfigCompositionException, match="task.n_agents=many"):
            compose(
                config_name="config",
                overrides=["algorithm=mappo", "task=coordsum/3x10-30", "task.n_agents=many"],
            )


# -------------------------------------------------------------------- modes
def _oracle_rewards(targets, actions, num_actions, reference):
    """Rewards of one episode by a plain loop over Appendix B's rules (dict histories)."""
    counts, rewards = {}, []
    for target, action in zip(targets, actions):
        row = min(target, num_actions - 1) if reference else target
        seen = counts.setdefault(row, [0] * num_actions)
        guess = max(range(num_actions), key=lambda a: (seen[a], -a))  # majority, lowest index on ties
        hit = sum(action) == target
        rewards.append((1.0 if guess == action[0] else 2.0) if hit else 0.0)
        seen[action[0]] += 1
    return rewards


@pytest.mark.parametrize("mode", MODES)
def test_rewards_match_a_plain_loop_oracle(mode):
    """Random-ish picks concentrated on few values, so guesses and shared rows matter."""
    env = CoordSumEnv(3, 6, 14, num_envs=4, seed=2, mode=mode)
    torch.manual_seed(0)

    def policy(td):
        target = env.target  # the scored target of this step
        a0 = torch.randint(0, 3, (4,))
        rest = (target - a0).clamp(min=0)
        td["agents", "action"] = torch.stack([a0, (rest // 2).clamp(max=5), (rest - rest // 2).clamp(max=5)], -1)
        td["scored_target"] = target
        return td

    roll = env.rollout(100, policy=policy, break_when_any_done=False)
    for e in range(4):
        expected = _oracle_rewards(roll["scored_target"][e].tolist(), roll["agents", "action"][e].tolist(),
                                   6, mode == "reference")
        assert roll["next", "reward"][e].squeeze(-1).tolist() == expected
    assert roll["next", "reward"].eq(1.0).any() and roll["next", "reward"].eq(2.0).any()


def test_reference_mode_shares_the_last_history_row():
    env = _env(mode="reference")  # 3x10-30: targets 9..29 share row 9
    assert env.history.shape == (1, 10, 10)
    env.set_target(15)
    assert _act(env, [5, 5, 5])["reward"].item() == 2.0  # no history: the guess is 0
    env.set_target(23)
    out = _act(env, [5, 9, 9])  # another target, same row: agent 0's 5 is guessed
    assert out["info", "guess"].item() == 5 and out["reward"].item() == 1.0
    env.set_target(4)
    assert _act(env, [4, 0, 0])["reward"].item() == 2.0  # targets below 9 keep their own rows
    assert env.history[0, 9, 5] == 2 and env.history[0, 4, 4] == 1 and env.history.sum() == 3
    # the appendix mode keeps one row per target: 23 has no history there
    env = _env()
    env.set_target(15)
    _act(env, [5, 5, 5])
    env.set_target(23)
    assert _act(env, [5, 9, 9])["reward"].item() == 2.0


def test_reference_mode_observation_and_termination():
    env = CoordSumEnv(3, 10, 30, num_envs=2, seed=0, mode="reference")
    td = env.reset()
    assert td["agents", "observation"].shape == (2, 3, 1 + 3) and td["state"].shape == (2, 1)
    for t in range(1, 101):
        target = env.target
        obs, state = td["agents", "observation"], td["state"]
        assert torch.equal(obs[..., 0], target.float().unsqueeze(-1).expand(2, 3))  # raw target, no step
        assert torch.equal(obs[0, :, 1:], torch.eye(3)) and torch.equal(state[:, 0], target.float())
        td = _act(env, torch.zeros(2, 3))
        assert td["done"].squeeze(-1).tolist() == [t == 100] * 2
        assert td["terminated"].squeeze(-1).tolist() == [t == 100] * 2  # a termination, not a time limit
        assert not td["truncated"].any()
    bare = CoordSumEnv(3, 10, 30, num_envs=2, seed=0, obs_agent_id=False, mode="reference").reset()
    assert bare["agents", "observation"].shape == (2, 3, 1)


def test_reference_mode_specs():
    from torchrl.envs.utils import check_env_specs

    for n_agents, num_actions, max_target in [(3, 10, 30), (1, 4, 3), (5, 20, 80)]:
        check_env_specs(CoordSumEnv(n_agents, num_actions, max_target, num_envs=2, seed=0, mode="reference"))


def test_unknown_mode_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="Unknown CoordSum mode 'paper'.*task.mode=reference"):
        CoordSumEnv(3, 10, 30, mode="paper")
    config = {**CoordSumTask.from_name("3x10-30").get_from_yaml().config, "mode": "public"}
    with pytest.raises(ValueError, match="Unknown CoordSum mode 'public'.*task.mode=appendix"):
        CoordSumTask.from_name("3x10-30").get_task(config)
    # a config saved before the field existed loads in the appendix mode
    old = {k: v for k, v in config.items() if k != "mode"}
    env = CoordSumTask.from_name("3x10-30").get_task(old).get_env_fun(1, False, 0, "cpu")()
    assert env.mode == "appendix"


def test_hydra_mode_override_and_refusal_before_any_experiment():
    from benchmarl.hydra_config import load_task_config_from_hydra
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="benchmarl.conf", version_base=None):
        default = compose(config_name="config", overrides=["algorithm=mappo", "task=coordsum/5x20-80"])
        ref = compose(config_name="config",
                      overrides=["algorithm=mappo", "task=coordsum/5x20-80", "task.mode=reference"])
        bad = compose(config_name="config",
                      overrides=["algorithm=mappo", "task=coordsum/5x20-80", "task.mode=refrence"])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TaskConfig python dataclass not found")
        assert load_task_config_from_hydra(default.task, "coordsum/5x20-80").config["mode"] == "appendix"
        task = load_task_config_from_hydra(ref.task, "coordsum/5x20-80")
        env = task.get_env_fun(2, False, 0, "cpu")()
        assert env.mode == "reference" and env.history.shape == (2, 20, 20)
        with pytest.raises(ValueError, match="Unknown CoordSum mode 'refrence'"):
            load_task_config_from_hydra(bad.task, "coordsum/5x20-80")


# ------------------------------------------------------------------ scripted teams
def _scripted_rollout(mode, name, task="coordsum/5x20-80", episodes=400, seed=0):
    from torchrl.envs import RewardSum, TransformedEnv

    config = {**CoordSumTask.from_name(task).get_from_yaml().config, "mode": mode}
    base = CoordSumTask.from_name(task).get_task(config).get_env_fun(episodes, False, seed, "cpu")()
    env = TransformedEnv(base, RewardSum(in_keys=["reward"], out_keys=["episode_reward"]))  # as BenchMARL wraps
    return env.rollout(100, policy=scripted_policy(env, name), break_when_any_done=False)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", SCRIPTED_POLICIES)
def test_scripted_teams_hit_every_reachable_target(mode, name):
    roll = _scripted_rollout(mode, name, task="coordsum/3x10-30", episodes=20)  # 28, 29 are unreachable
    obs = roll["agents", "observation"]
    target = obs[..., 0, 0].round().long() if mode == "reference" else obs[..., 0, :30].argmax(-1)
    action = roll["agents", "action"]
    assert action.min() >= 0 and action.max() <= 9
    torch.testing.assert_close(roll["next", "info", "sum_hit"].squeeze(-1), target <= 27)
    assert (target > 27).any()


@pytest.mark.parametrize("mode", MODES)
def test_scripted_team_returns_follow_from_the_rules(mode):
    """Expected returns on 5x20-80 derived from the rules (every target is reachable).

    A target-only team hits every step (1 each) and gets 1 more on the first visit of a
    history row when agent 0's pick is not the no-history guess 0. Appendix mode, both teams:
    E = 100 + 79 (1 - (79/80)^100) (target 0 forces a0 = 0). Reference mode, agent0_deterministic
    (agent 0 plays 19 on the shared row 19): E = 100 + 18 (1 - (79/80)^100) + (1 - (19/80)^100).
    """
    visited = 1 - (79 / 80) ** 100
    expected = {"appendix": {"best_response": 100 + 79 * visited, "agent0_deterministic": 100 + 79 * visited},
                "reference": {"agent0_deterministic": 100 + 18 * visited + 1 - (19 / 80) ** 100}}[mode]
    returns, rolls = {}, {}
    for name in SCRIPTED_POLICIES:
        rolls[name] = roll = _scripted_rollout(mode, name, episodes=200, seed=1)
        ret = roll["next", "reward"].sum(1).squeeze(-1)
        torch.testing.assert_close(roll["next", "episode_reward"][:, -1].squeeze(-1), ret)
        returns[name] = ret.mean().item()
        if name in expected:  # within 4 standard errors of the expectation
            assert abs(ret.mean().item() - expected[name]) < 4 * ret.std().item() / ret.numel() ** 0.5, name
    if mode == "reference":
        # spreading agent 0's picks over the shared row beats the fixed split by far, and
        # beats the appendix mode's ceiling for target-only teams too
        assert returns["best_response"] > 100 + 79 * visited + 10 > returns["agent0_deterministic"] + 50
        roll = rolls["best_response"]
        shared = roll["agents", "observation"][..., 0, 0] >= 19
        guessed = roll["next", "info", "guess_correct"].squeeze(-1)
        assert guessed[shared].float().mean() < 0.1  # the majority guess rarely matches


def test_scripted_policy_is_decentralized_and_checks_its_input():
    env = CoordSumEnv(3, 10, 30, num_envs=2, seed=0, mode="appendix")
    policy = scripted_policy(env, "best_response")
    td = env.reset()
    base = policy(td.clone())["agents", "action"]
    other = td.clone()
    other["agents", "observation"][:, 1:] = torch.roll(other["agents", "observation"][:, 1:], 3, dims=-1)
    other["state"] = torch.zeros_like(other["state"])
    moved = policy(other)["agents", "action"]
    assert torch.equal(moved[:, 0], base[:, 0])  # agent 0 reads only its own observation
    with pytest.raises(ValueError, match="Unknown CoordSum scripted policy 'random'.*best_response"):
        scripted_policy(env, "random")
    with pytest.raises(TypeError, match="needs a CoordSum env.*got str"):
        scripted_policy("coordsum/3x10-30", "best_response")


# ----------------------------------------------------------------------- benchmarl
def test_tiny_mappo_experiment(tmp_path):
    from benchmarl.algorithms import MappoConfig
    from benchmarl.environments import task_config_registry
    from benchmarl.experiment import Experiment, ExperimentConfig
    from benchmarl.models import MlpConfig

    config = ExperimentConfig.get_from_yaml()
    config.max_n_iters = 2
    config.max_n_frames = None
    config.on_policy_collected_frames_per_batch = 200
    config.on_policy_n_envs_per_worker = 2
    config.on_policy_minibatch_size = 100
    config.on_policy_n_minibatch_iters = 1
    config.evaluation = False
    config.loggers = []
    config.create_json = False
    config.render = False
    config.checkpoint_at_end = False
    config.save_folder = str(tmp_path)
    model = MlpConfig(num_cells=[16], layer_class=torch.nn.Linear, activation_class=torch.nn.Tanh)
    experiment = Experiment(
        task=task_config_registry["coordsum/3x10-30"].get_from_yaml(),
        algorithm_config=MappoConfig.get_from_yaml(),
        model_config=model,
        critic_model_config=model,
        seed=0,
        config=config,
    )
    assert experiment.state_spec is not None and experiment.action_mask_spec is not None
    assert experiment.observation_spec["agents", "observation"].shape == (3, 34)
    experiment.run()
    assert experiment.n_iters_performed == 2
    assert experiment.total_frames == 400


@pytest.mark.slow
def test_cli_run_ippo(tmp_path):
    exe = Path(sys.executable).parent / "benchmarl"
    cmd = [
        str(exe), "run", "algorithm=ippo", "task=coordsum/3x10-30",
        "experiment.max_n_iters=1",
        "experiment.on_policy_collected_frames_per_batch=200",
        "experiment.on_policy_n_envs_per_worker=2",
        "experiment.on_policy_minibatch_size=100",
        "experiment.on_policy_n_minibatch_iters=1",
        "experiment.evaluation=false",
        "experiment.loggers=[]",
        "experiment.render=false",
    ]
    env = dict(os.environ, HYDRA_FULL_ERROR="1")
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
