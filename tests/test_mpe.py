"""The batched MPE simple spread port (``task=mpe/simple_spread``) against PettingZoo itself."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import check_env_specs

import benchmarl_decentral  # noqa: F401  (registers the tasks)
from benchmarl_decentral import _registry
from benchmarl_decentral.environments.mpe import MpeClass, MpeSimpleSpreadConfig, MpeSimpleSpreadEnv, MpeTask

from conftest import make_experiment


def _pettingzoo(N, continuous, max_cycles=25, local_ratio=0.5):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*moved to `mpe2`", category=DeprecationWarning)
        from pettingzoo.mpe import simple_spread_v3
    return simple_spread_v3.parallel_env(N=N, max_cycles=max_cycles, local_ratio=local_ratio,
                                         continuous_actions=continuous)


def _step_td(actions, N):
    actions = torch.as_tensor(np.asarray(actions))
    return TensorDict({"agent": TensorDict({"action": actions.unsqueeze(0)}, [1, N])}, [1])


def _actions(rng, pz_world, N, continuous, t):
    """Random actions, every third step all agents pushing towards the centre (so that they collide)."""
    if t % 3 == 2:
        pos = np.stack([a.state.p_pos for a in pz_world.agents])
        if continuous:
            act = np.zeros((N, 5), np.float32)
            act[:, 1], act[:, 2] = pos[:, 0] > 0, pos[:, 0] <= 0
            act[:, 3], act[:, 4] = pos[:, 1] > 0, pos[:, 1] <= 0
            return act
        return np.where(np.abs(pos[:, 0]) > np.abs(pos[:, 1]), np.where(pos[:, 0] > 0, 1, 2),
                        np.where(pos[:, 1] > 0, 3, 4))
    if continuous:
        return rng.uniform(0, 1, (N, 5)).astype(np.float32)
    return rng.integers(0, 5, N)


def _replay(N, continuous, dtype, seed, episodes=2, local_ratio=0.5):
    """Largest differences (observation, reward, position) between PettingZoo and the port over whole episodes."""
    pz = _pettingzoo(N, continuous, local_ratio=local_ratio)
    world = pz.unwrapped.world
    env = MpeSimpleSpreadEnv(N=N, continuous_actions=continuous, local_ratio=local_ratio, dtype=dtype, seed=0)
    rng = np.random.default_rng(seed)
    err = {"obs": 0.0, "reward": 0.0, "pos": 0.0, "global": 0.0}
    collisions = 0
    for episode in range(episodes):
        obs, _ = pz.reset(seed=seed * 100 + episode)
        env.reset()
        env.set_state(np.stack([a.state.p_pos for a in world.agents])[None],
                      np.stack([lm.state.p_pos for lm in world.landmarks])[None])
        first = env._observe()["agent", "observation"][0].numpy()
        err["obs"] = max(err["obs"], max(np.abs(first[i] - obs[f"agent_{i}"]).max() for i in range(N)))
        for t in range(25):
            act = _actions(rng, world, N, continuous, t)
            obs, rew, term, trunc, _ = pz.step({f"agent_{i}": act[i] for i in range(N)})
            out = env.step(_step_td(act, N))["next"]
            o, r = out["agent", "observation"][0].numpy(), out["agent", "reward"][0, :, 0].numpy()
            err["obs"] = max(err["obs"], max(np.abs(o[i] - obs[f"agent_{i}"]).max() for i in range(N)))
            err["reward"] = max(err["reward"], max(abs(r[i] - rew[f"agent_{i}"]) for i in range(N)))
            pos = np.stack([a.state.p_pos for a in world.agents])
            err["pos"] = max(err["pos"], np.abs(env.agent_pos[0].double().numpy() - pos).max())
            scenario = pz.unwrapped.scenario
            err["global"] = max(err["global"], abs(out["info", "global_reward"].item() - scenario.global_reward(world)))
            collisions += out["info", "collisions"].item()
            assert bool(out["truncated"]) == trunc["agent_0"] == (t == 24)
            assert not bool(out["terminated"]) and not term["agent_0"]
    return err, collisions


@pytest.mark.parametrize("continuous", [False, True])
@pytest.mark.parametrize("N", [1, 3, 8])
def test_float64_port_replays_pettingzoo(N, continuous):
    """Same start state, same actions: PettingZoo's observations and rewards (float32), to 1e-9 in positions."""
    err, collisions = _replay(N, continuous, torch.float64, seed=N)
    assert err["obs"] <= 1e-6 and err["reward"] <= 1e-6, err  # float32 outputs of float64 worlds
    assert err["pos"] <= 1e-9, err
    assert err["global"] <= 1e-6, err  # info is float32
    if N > 1:
        assert collisions > 0  # the contact forces and the collision penalty were exercised


@pytest.mark.parametrize("continuous", [False, True])
def test_float32_port_stays_close_to_pettingzoo(continuous):
    """dtype=float32 (an option; float64 is the default): rounding, amplified by the stiff contacts, stays small."""
    err, _ = _replay(8, continuous, torch.float32, seed=5)
    assert err["pos"] < 1e-3 and err["obs"] < 1e-3 and err["reward"] < 1e-3, err


def test_local_ratio_weights_the_terms():
    err, _ = _replay(4, False, torch.float64, seed=2, episodes=1, local_ratio=0.2)
    assert err["reward"] <= 1e-6, err


def test_observation_layout_and_state():
    env = MpeSimpleSpreadEnv(N=3, num_envs=2, seed=0)
    td = env.reset()
    obs = td["agent", "observation"]
    assert obs.shape == (2, 3, 18) and td["state"].shape == (2, 54)
    pos, lm = env.agent_pos.float(), env.landmark_pos.float()  # the world is float64, observations float32
    assert torch.equal(obs[..., :2], torch.zeros(2, 3, 2))
    assert torch.allclose(obs[..., 2:4], pos)
    assert torch.allclose(obs[:, 1, 4:10], (lm - pos[:, 1:2]).reshape(2, 6))
    assert torch.allclose(obs[:, 1, 10:14], torch.cat([pos[:, 0] - pos[:, 1], pos[:, 2] - pos[:, 1]], -1))
    assert torch.equal(obs[..., 14:], torch.zeros(2, 3, 4))  # silent agents' communication
    assert torch.equal(td["state"], obs.reshape(2, 54))
    assert ((pos >= -1) & (pos <= 1)).all() and ((lm >= -1) & (lm <= 1)).all()


def test_batched_envs_are_independent_and_partial_reset():
    batch = MpeSimpleSpreadEnv(N=4, num_envs=3, seed=1)
    batch.reset()
    starts = (batch.agent_pos.clone(), batch.landmark_pos.clone())
    actions = torch.randint(0, 5, (6, 3, 4), generator=torch.Generator().manual_seed(0))
    outs = [batch.step(TensorDict({"agent": TensorDict({"action": a}, [3, 4])}, [3]))["next"] for a in actions]
    for e in range(3):
        single = MpeSimpleSpreadEnv(N=4, num_envs=1, seed=2)
        single.reset()
        single.set_state(starts[0][e:e + 1], starts[1][e:e + 1])
        for t, a in enumerate(actions):
            out = single.step(_step_td(a[e], 4))["next"]
            assert torch.equal(out["agent", "reward"][0], outs[t]["agent", "reward"][e])
            assert torch.equal(out["agent", "observation"][0], outs[t]["agent", "observation"][e])
    kept = batch.agent_pos.clone()
    batch.reset(TensorDict({"_reset": torch.tensor([[False], [True], [False]])}, [3]))
    assert torch.equal(batch.agent_pos[[0, 2]], kept[[0, 2]]) and not torch.equal(batch.agent_pos[1], kept[1])
    assert torch.equal(batch.agent_vel[1], torch.zeros(4, 2)) and batch._steps.tolist() == [6, 0, 6]


@pytest.mark.parametrize("continuous", [False, True])
def test_check_env_specs_and_seeding(continuous):
    env = MpeSimpleSpreadEnv(N=3, num_envs=4, continuous_actions=continuous, seed=0)
    check_env_specs(env)
    torch.manual_seed(0)  # the rollout's random actions come from torch's global generator
    a = MpeSimpleSpreadEnv(N=3, num_envs=4, seed=7).rollout(30, break_when_any_done=False)
    torch.manual_seed(0)
    b = MpeSimpleSpreadEnv(N=3, num_envs=4, seed=7).rollout(30, break_when_any_done=False)
    assert torch.equal(a["next", "agent", "observation"], b["next", "agent", "observation"])
    assert a["next", "done"][:, 24].all() and not a["next", "done"][:, :24].any()  # 25-step episodes


@pytest.mark.parametrize("field,value", [("N", 0), ("local_ratio", 1.5), ("max_cycles", 0), ("N", 2.5)])
def test_bad_config_is_refused_with_the_fix(field, value):
    config = {"N": 3, "local_ratio": 0.5, "max_cycles": 25, field: value}
    with pytest.raises(ValueError, match=f"{field}.*task.N=8 task.local_ratio=0.5"):
        MpeTask.SIMPLE_SPREAD.get_task(config)
    with pytest.raises(ValueError, match="Fields are: N, local_ratio, max_cycles"):
        MpeTask.SIMPLE_SPREAD.get_task({"N": 3, "local_ratio": 0.5, "max_cycles": 25, "n_agents": 3})


def test_registered_with_its_hydra_schema():
    from benchmarl.environments import task_config_registry
    from benchmarl.hydra_config import load_task_config_from_hydra
    from hydra import compose, initialize_config_module

    assert task_config_registry["mpe/simple_spread"] is MpeTask.SIMPLE_SPREAD
    assert _registry.task_schemas()["mpe_simple_spread"] is MpeSimpleSpreadConfig
    task = MpeTask.SIMPLE_SPREAD.get_from_yaml()
    assert isinstance(task, MpeClass) and task.config == {"N": 3, "local_ratio": 0.5, "max_cycles": 25}
    with initialize_config_module(config_module="benchmarl.conf", version_base=None):
        cfg = compose(config_name="config", overrides=["algorithm=decpg", "task=mpe/simple_spread", "task.N=8"])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TaskConfig python dataclass not found")
        loaded = load_task_config_from_hydra(cfg.task, "mpe/simple_spread")
    assert loaded.config["N"] == 8 and loaded.max_steps(None) == 25


@pytest.mark.parametrize("algorithm", ["decpg", "mappo"])
def test_tiny_experiment(tmp_path, algorithm):
    experiment = make_experiment(tmp_path, algorithm=algorithm, task="mpe/simple_spread", task_overrides={"N": 4},
                                 prefer_continuous_actions=False)
    assert experiment.observation_spec["agent", "observation"].shape == (4, 24)
    experiment.run()
    assert experiment.n_iters_performed == 2 and experiment.total_frames == 120


@pytest.mark.slow
def test_readme_command_runs_with_the_perturbed_evaluation(tmp_path):
    """The README section's command, with a tiny budget: decpg's clean and perturbed evaluations on 8 agents."""
    import re
    import shlex

    from conftest import REPO, TINY, run_cli

    section = (REPO / "README.md").read_text().split("### MPE simple spread (`task=mpe/simple_spread`)", 1)[1]
    command = re.search(r"```bash\n(.*?)```", section, re.S).group(1).strip()
    words = shlex.split(command)
    assert words[:2] == ["benchmarl", "run"] and "task.N=8" in words
    proc = run_cli([*words[1:], *TINY], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    gaps = list(tmp_path.rglob("eval_generalization_gap.csv"))
    assert len(gaps) == 1 and gaps[0].read_text().strip()


@pytest.mark.parametrize("continuous", [False, True])
def test_nearest_landmark_reference_beats_standing_still_and_random(continuous):
    """The scripted reference row is informative: greedy heading > zero action > uniform random (400 episodes)."""
    from benchmarl_decentral.environments.mpe import NearestLandmarkPolicy

    returns = {}
    for name in ("nearest", "zero", "random"):
        env = MpeSimpleSpreadEnv(N=8, num_envs=400, continuous_actions=continuous, seed=3)
        torch.manual_seed(0)
        policy = NearestLandmarkPolicy(continuous) if name == "nearest" else None
        td, total = env.reset(), torch.zeros(())
        for _ in range(25):
            if policy is not None:
                td = policy(td)
            elif name == "zero":
                td[("agent", "action")] = env.full_action_spec["agent", "action"].zero()
            else:
                td[("agent", "action")] = env.full_action_spec["agent", "action"].rand()
            td = env.step(td)
            total = total + td["next", "agent", "reward"].mean()
            td = td["next"].exclude("agent").update({"agent": td["next", "agent"].exclude("reward")})
        returns[name] = total.item()
    assert returns["nearest"] > returns["zero"] + 5 and returns["zero"] > returns["random"], returns


@pytest.mark.slow
def test_mpe_step_benchmark_quick_mode(tmp_path):
    """benchmarks/mpe_step.py runs (its --quick mode) and reports both rates and their ratio."""
    import json

    from conftest import run_quick_benchmark

    out = tmp_path / "mpe_step_quick.json"
    result = run_quick_benchmark("mpe_step.py", tmp_path, "--out", out)
    assert "| 8 |" in result.stdout
    row = json.loads(out.read_text())["rows"][0]
    assert row["pettingzoo_steps_per_s"] > 0 and row["port_steps_per_s"] > 0
    assert row["ratio_port_pettingzoo"] == pytest.approx(row["port_steps_per_s"] / row["pettingzoo_steps_per_s"])
