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
    TASK_NAMES,
    parse_task_name,
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
