"""MAGPO's decentralized learners on BenchMARL's models (issue 17 items 1-2); the guider stays MAT.

Real BenchMARL models and VMAS runs, tiny, CPU.
"""

from __future__ import annotations

import pytest
import torch
from benchmarl.models import GnnConfig, GruConfig, LstmConfig, SequenceModelConfig

from conftest import EvaluationCounter, mlp_config, recurrent_config, tiny_experiment_config

GROUP = "agents"


def _magpo(tmp_path, model, *, share, callbacks=None, **experiment):
    """magpo on vmas/balance (3 agents, episodes of 10 steps: resets inside every batch of 30 steps)."""
    from benchmarl.algorithms import algorithm_config_registry
    from benchmarl.environments import task_config_registry
    from benchmarl.experiment import Experiment

    task = task_config_registry["vmas/balance"].get_from_yaml()
    task.config.update({"n_agents": 3, "max_steps": 10})
    algorithm = algorithm_config_registry["magpo"].get_from_yaml()
    algorithm.learner_share_params = share
    return Experiment(task=task, algorithm_config=algorithm, model_config=model, critic_model_config=mlp_config([8]),
                      seed=0, config=tiny_experiment_config(tmp_path, **experiment), callbacks=callbacks)


def test_recurrent_learner_loss_replays_each_sequence_as_the_deployed_learner_acts(tmp_path):
    """The learner loss (eqs. 11-12) on a (envs, time) batch == the learner run step by step from a zero
    state with its hidden state carried and reset at is_init, as it acts when deployed (mappo's path)."""
    exp = _magpo(tmp_path, recurrent_config(GruConfig), share=False)
    alg, loss = exp.algorithm, exp.losses[GROUP]
    batch = next(iter(exp.collector)).detach().exclude(*exp._get_excluded_keys(GROUP))
    assert (GROUP, "_hidden_gru_0") not in batch.keys(True)  # BenchMARL keeps no hidden state in the batch
    is_init = batch.get("is_init")[..., 0]
    assert is_init[:, 0].all() and is_init[:, 1:].any()  # a reset inside the sequences too
    batch = alg.process_batch(GROUP, batch)
    loc = loss.learner_dist(batch, None).params[0]  # (E, T, n, d): what the loss trains
    net = alg._learner_nets[GROUP]
    E, T = batch.shape
    h = torch.zeros(E, 3, 1, 8)
    steps = []
    with torch.no_grad():
        for t in range(T):
            td = batch[:, t].select((GROUP, "observation"), "is_init").clone()
            td.set((GROUP, "_hidden_gru_0"), h)
            out = net(td)
            steps.append(out.get((GROUP, "loc")))
            h = out.get(("next", GROUP, "_hidden_gru_0"))
    torch.testing.assert_close(loc.detach(), torch.stack(steps, 1), rtol=1e-5, atol=1e-6)
    exp.close()


MODELS = {  # learner model, learner_share_params
    "gnn": (GnnConfig.get_from_yaml, False),
    "gru": (lambda: recurrent_config(GruConfig), False),
    "lstm_shared": (lambda: recurrent_config(LstmConfig), True),
    "mlp_gru_sequence": (lambda: SequenceModelConfig(model_configs=[mlp_config([8]), recurrent_config(GruConfig)],
                                                     intermediate_sizes=[8]), False),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_magpo_learner_trains_and_evaluates_each_model(tmp_path, name):
    """2 iterations (guider collects, both losses step) + 2 evaluations with the learners."""
    model, share = MODELS[name]
    evaluations = EvaluationCounter()
    exp = _magpo(tmp_path, model(), share=share, callbacks=[evaluations], evaluation=True, create_json=True,
                 evaluation_episodes=1)
    learner = exp.losses[GROUP].learner
    before = [p.detach().clone() for p in learner.parameters()]
    exp.run()
    assert exp.n_iters_performed == 2 and evaluations.episodes == [1, 1]
    assert any(not torch.equal(a, b) for a, b in zip(before, learner.parameters()))  # loss_learner stepped
    # evaluation and deployment run the learners (the guider only collects)
    assert any(m is exp.algorithm._learner_nets[GROUP] for m in exp.policy.modules())
