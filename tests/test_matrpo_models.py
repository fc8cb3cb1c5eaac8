"""MATRPO with a sequence of MLPs (issue 17 item 1), and the message for models it cannot use."""

from __future__ import annotations

import pytest
import torch
from benchmarl.algorithms import algorithm_config_registry
from benchmarl.environments import task_config_registry
from benchmarl.experiment import Experiment
from benchmarl.models import DeepsetsConfig, GruConfig, MlpConfig, SequenceModelConfig

from benchmarl_decentral.algorithms.matrpo import JOINT_KEY
from benchmarl_decentral.objectives import mean_kl
from benchmarl_decentral.objectives.matrpo import CachedLinearisation

from conftest import tiny_experiment_config

GROUP = "agents"


def _mlp(cells):
    return MlpConfig(num_cells=cells, layer_class=torch.nn.Linear, activation_class=torch.nn.Tanh)


def _experiment(tmp_path, model, **algo):
    task = task_config_registry["vmas/navigation"].get_from_yaml()
    task.config.update({"n_agents": 3})
    config = algorithm_config_registry["matrpo"].get_from_yaml()
    for key, value in {"num_cells": None, "activation": None, "admm_iterations": 12, **algo}.items():
        setattr(config, key, value)
    return Experiment(task=task, algorithm_config=config, model_config=model, critic_model_config=_mlp([16]),
                      seed=0, config=tiny_experiment_config(tmp_path, prefer_continuous_actions=False))


SEQUENCE = SequenceModelConfig(model_configs=[_mlp([16]), _mlp([16])], intermediate_sizes=[8])


def _batch(exp):
    batch = next(iter(exp.collector)).detach()
    return batch.exclude(*exp._get_excluded_keys(GROUP))


def test_sequence_of_mlps_joint_network_is_the_policy_module(tmp_path):
    """The stacked functional network MATRPO differentiates computes what the policy module executes."""
    exp = _experiment(tmp_path, SEQUENCE)
    alg = exp.algorithm
    assert len(alg._joint_chains[GROUP]) == 2
    params = alg.policy_parameters(GROUP)
    assert {k.split(".")[0] for k in params} == {"0", "1"} and all(v.shape[0] == 3 for v in params.values())
    td = alg.process_batch(GROUP, _batch(exp)).reshape(-1)  # an update: the live parameters moved
    _, obs, _, _ = alg.policy_inputs(GROUP, td)
    network, _, _ = alg.joint_network(GROUP)
    expected = alg._joint_models[GROUP](td.clone()).get((GROUP, JOINT_KEY))  # (M, n, n * F)
    torch.testing.assert_close(network(params, obs), expected.transpose(0, 1))
    exp.close()


def test_sequence_of_mlps_update_keeps_every_agent_in_its_trust_region(tmp_path):
    exp = _experiment(tmp_path, SEQUENCE)
    alg = exp.algorithm
    batch = _batch(exp)
    old = {k: v.detach().clone() for k, v in alg.policy_parameters(GROUP).items()}
    batch = alg.process_batch(GROUP, batch)
    new = alg.policy_parameters(GROUP)
    assert any(not torch.equal(old[k], new[k]) for k in old)  # both MLPs are updated
    _, obs, actions, _ = alg.policy_inputs(GROUP, batch)
    network, make_dist, _ = alg.joint_network(GROUP)
    policy = CachedLinearisation(network, make_dist, old, obs, actions, damping=0.1).policy
    kl = mean_kl(policy, {k: v.detach() for k, v in new.items()}, old, obs)
    assert torch.isfinite(kl).all() and torch.all(kl <= 0.003 * (1 + 1e-4)), kl  # eq. 8: delta / N per agent
    torch.testing.assert_close(alg.last_stats[GROUP].kl, kl, rtol=1e-4, atol=1e-7)
    exp.close()


@pytest.mark.slow
def test_sequence_of_mlps_runs_two_iterations(tmp_path):
    exp = _experiment(tmp_path, SEQUENCE)
    exp.run()
    assert exp.n_iters_performed == 2


@pytest.mark.parametrize(
    "model, why",
    [
        (GruConfig.get_from_yaml(), "a recurrent policy's log-probability of a sample depends on the hidden state"),
        (SequenceModelConfig(model_configs=[_mlp([16]), GruConfig.get_from_yaml()], intermediate_sizes=[8]),
         "a recurrent policy's"),
        (DeepsetsConfig.get_from_yaml(), "DeepsetsConfig keeps its per-agent parameters in a form the joint-policy "
                                         "operators do not gather yet (not a limit of the math"),
    ],
)
def test_unsupported_models_say_why_and_the_nearest_working_choice(tmp_path, model, why):
    with pytest.raises(ValueError) as err:
        _experiment(tmp_path, model)
    message = str(err.value)
    assert message.startswith("matrpo: every agent's joint policy pi^i (eq. 8) is evaluated as one function")
    assert why in message and "Nearest working choice: model=layers/mlp" in message
    assert list(tmp_path.iterdir()) == []  # refused before training, no run folder left
