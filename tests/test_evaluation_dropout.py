"""Agent dropout at evaluation (``algorithm.evaluation_dropout``): issue 16 item 8."""

from __future__ import annotations

import csv

import pytest
import torch
from benchmarl.algorithms import algorithm_config_registry
from tensordict import TensorDict
from torchrl.data import Composite, Unbounded

from benchmarl_decentral.evaluation_dropout import DropoutEvaluation, SilencedPolicy
from benchmarl_decentral.models.dgat import DgatConfig, silenced_senders

from conftest import make_experiment

GROUP = "agents"
ALGORITHMS = ("decpg", "dg_mappo", "matrpo", "magpo", "magpo_paper")


def _scalar(tmp_path, name):
    (path,) = tmp_path.rglob(f"scalars/{name}.csv")
    return [float(row[1]) for row in csv.reader(path.read_text().strip().splitlines())]


@pytest.mark.parametrize("name", ALGORITHMS)
def test_off_by_default_in_every_algorithm(name):
    assert algorithm_config_registry[name].get_from_yaml().evaluation_dropout == []


@pytest.mark.parametrize("bad", [[-1], [1, 1], [0.5], "1", [True]])
@pytest.mark.parametrize("name", ALGORITHMS)
def test_bad_values_are_refused_by_the_config(name, bad):
    cls = algorithm_config_registry[name]
    kwargs = {**cls.get_from_yaml().__dict__, "evaluation_dropout": bad}
    with pytest.raises(ValueError, match=r"evaluation_dropout .*set algorithm\.evaluation_dropout to a list"):
        cls(**kwargs)


@pytest.mark.parametrize(
    "agents, match",
    [([3], r"names agent\(s\) \[3\], but group 'agents' has 3 agents .*set algorithm\.evaluation_dropout to "
           r"indices below 3"),
     ([0, 1, 2], r"silences all 3 agents of group 'agents'; leave at least one agent active")],
)
def test_indices_that_do_not_fit_the_task_are_refused_before_training(tmp_path, agents, match):
    with pytest.raises(ValueError, match=r"^decpg: evaluation_dropout=\[[0-9, ]+\] " + match):
        make_experiment(tmp_path, task_overrides={"n_agents": 3}, algorithm_overrides={"evaluation_dropout": agents})
    assert list(tmp_path.iterdir()) == []  # no run folder left behind


@pytest.mark.slow
def test_decpg_dropout_evaluation_logged_beside_the_clean_one(tmp_path):
    """``eval/dropout/*`` and ``eval/dropout_gap`` at every evaluation, next to the clean ``eval/*``."""
    exp = make_experiment(
        tmp_path, task_overrides={"n_agents": 3},
        algorithm_overrides={"perturbed_evaluation": False, "evaluation_dropout": [1]},
        evaluation=True, evaluation_static=True, loggers=["csv"],
    )
    exp.run()
    exp.close()
    clean = _scalar(tmp_path, "eval_reward_episode_reward_mean")
    dropped = _scalar(tmp_path, "eval_dropout_reward_episode_reward_mean")
    gap = _scalar(tmp_path, "eval_dropout_gap")
    assert len(clean) == len(dropped) == len(gap) == 2  # one per evaluation (iterations 0 and 1)
    assert dropped == _scalar(tmp_path, f"eval_dropout_{GROUP}_reward_episode_reward_mean")
    low = _scalar(tmp_path, f"eval_dropout_{GROUP}_reward_episode_reward_min")
    high = _scalar(tmp_path, f"eval_dropout_{GROUP}_reward_episode_reward_max")
    assert all(lo <= d <= hi for lo, d, hi in zip(low, dropped, high))
    for c, d, g in zip(clean, dropped, gap):
        assert g == pytest.approx(d - c, abs=1e-5)
    assert all(abs(g) > 1e-6 for g in gap)  # silencing an agent changes the return


def test_off_attaches_nothing(tmp_path):
    exp = make_experiment(tmp_path, task_overrides={"n_agents": 3})
    assert not [cb for cb in exp.callbacks if isinstance(cb, DropoutEvaluation)]
    exp.close()


@pytest.mark.parametrize("continuous", [True, False])
def test_silenced_agents_take_the_no_op_in_a_rollout(tmp_path, continuous):
    """vmas/balance: continuous 0, discrete action 0 (VMAS's no-op); the others act as the policy says."""
    exp = make_experiment(tmp_path, task_overrides={"n_agents": 3}, prefer_continuous_actions=continuous)
    policy = SilencedPolicy.from_experiment(exp.policy, exp, [1])
    with torch.no_grad():
        td = exp.test_env.rollout(max_steps=5, policy=policy, auto_cast_to_device=True)
    action = td[GROUP, "action"]  # (envs, steps, agents, ...)
    if not continuous and action.dim() == 4:  # one-hot (envs, steps, agents, n_actions)
        action = action.argmax(-1)
    assert action.dim() == (4 if continuous else 3)
    assert (action[:, :, 1] == 0).all()
    others = action[:, :, [0, 2]]
    assert (others != 0).any()  # not everyone was silenced
    exp.close()


@pytest.mark.slow  # compiling the SMAX step takes seconds
def test_smax_no_op_is_stop_and_respects_the_action_mask():
    pytest.importorskip("jaxmarl")
    from benchmarl_decentral.environments.smax import SmaxEnv
    from benchmarl_decentral.reporting.reference import RandomPolicy

    env = SmaxEnv("3m", num_envs=2, seed=0)
    group_map = {GROUP: ["agent_0", "agent_1", "agent_2"]}
    policy = SilencedPolicy(RandomPolicy(env, group_map, "smax"), env, group_map, "smax", [1])
    td = env.reset()
    action = policy(td.clone())[GROUP, "action"]
    assert (action[:, 1] == 4).all()  # SMAX's stop
    td[GROUP, "action_mask"][:, 1, 4] = False  # stop forbidden: the first allowed action instead
    action = policy(td.clone())[GROUP, "action"]
    first = td[GROUP, "action_mask"][:, 1].float().argmax(-1)
    assert (action[:, 1] == first).all() and (first != 4).all()
    env.close()


def _dgat(n=3, f=4):
    kwargs = {**DgatConfig.get_from_yaml().__dict__, "hidden_channels": 8, "num_cells": [8],
              "topology": "full", "num_hops": 2}
    spec = Composite({GROUP: Composite({"observation": Unbounded(shape=(n, f))}, shape=(n,))})
    out = Composite({GROUP: Composite({"out": Unbounded(shape=(n, 2))}, shape=(n,))})
    return DgatConfig(**kwargs).get_model(
        input_spec=spec, output_spec=out, agent_group=GROUP, input_has_agent_dim=True, n_agents=n,
        centralised=False, share_params=False, device="cpu", action_spec=None,
    )


def _out(model, obs):
    td = TensorDict({GROUP: TensorDict({"observation": obs}, [*obs.shape[:-1]])}, list(obs.shape[:-2]))
    return model(td)[GROUP, "out"]


def test_dgat_drops_the_messages_of_silenced_agents():
    """Perturbing silenced agent 1's observation moves the others' D-GAT output only without dropout."""
    torch.manual_seed(0)
    model = _dgat()
    obs = torch.randn(5, 3, 4)
    moved = obs.clone()
    moved[:, 1] += 1.0
    with torch.no_grad():
        with silenced_senders([1]):
            a, b = _out(model, obs), _out(model, moved)
        c, d = _out(model, obs), _out(model, moved)
    torch.testing.assert_close(a[:, [0, 2]], b[:, [0, 2]], rtol=0, atol=0)
    assert not torch.allclose(c[:, [0, 2]], d[:, [0, 2]])
    assert not torch.allclose(a[:, 1], b[:, 1])  # agent 1 still reads its own observation


@pytest.mark.slow
def test_dg_mappo_dropout_evaluation_is_logged(tmp_path):
    exp = make_experiment(
        tmp_path, algorithm="dg_mappo", task="vmas/navigation", task_overrides={"n_agents": 3},
        algorithm_overrides={"topology": "full", "num_hops": 1, "hidden_channels": 8, "evaluation_dropout": [0]},
        evaluation=True, loggers=["csv"], max_n_iters=1,
    )
    (callback,) = [cb for cb in exp.callbacks if isinstance(cb, DropoutEvaluation)]
    exp.run()
    assert set(callback.last) == {
        f"eval/dropout/{GROUP}/reward/episode_reward_{s}" for s in ("min", "mean", "max")
    } | {"eval/dropout/reward/episode_reward_mean", "eval/dropout_gap"}
    assert _scalar(tmp_path, "eval_dropout_gap") == [pytest.approx(callback.last["eval/dropout_gap"])]
    # the algorithm's own D-GAT: agent 0 sends to nobody under dropout, to everyone otherwise
    comm = exp.algorithm.communication[GROUP]
    td = exp.test_env.reset()
    full = comm.communication_graph(td).expand(2, 3, 3)
    with silenced_senders([0]):
        dropped = comm.communication_graph(td).expand(2, 3, 3)
    assert full[:, 1:, 0].all() and not dropped[:, 1:, 0].any()
    assert torch.equal(dropped[:, :, 1:], full[:, :, 1:])
    exp.close()
