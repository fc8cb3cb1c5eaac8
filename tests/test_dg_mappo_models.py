"""DG-MAPPO with BenchMARL's other models: per-agent parameters stacked or gathered, recurrent policies.

Real BenchMARL models and VMAS balance runs, tiny sizes, CPU. The consensus core
(``AgentStack``) is tested in ``test_decpg_models.py``; here: dg_mappo's use of it
(common start, per-agent clip, D-SGD mixing of eqs. 9-10, checkpoints), the
recurrent path (D-GAT over sequence minibatches) and the models it refuses.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
from benchmarl.models import CnnConfig, GruConfig, LstmConfig, SequenceModelConfig

from benchmarl_decentral.algorithms.dg_mappo import check_models, DGAT_KEY, LOSS_KEY

from conftest import (
    deepsets_config,
    EvaluationCounter,
    gnn_config,
    mlp_config,
    recurrent_config,
    tiny_experiment_config,
)

GROUP = "agents"
NETWORKS = ("dgat", "actor", "critic")
# the ring of 4 agents with self loops: eq. 10 gives c(i, j) = 1/3 on i and its two neighbours
RING = torch.tensor([[1, 1, 0, 1], [1, 1, 1, 0], [0, 1, 1, 1], [1, 0, 1, 1]], dtype=torch.float) / 3


def _mlp_gnn():
    return SequenceModelConfig(model_configs=[mlp_config(), gnn_config()], intermediate_sizes=[8])


def _experiment(tmp_path, actor, critic, callbacks=None, algorithm=None, max_steps=20, **overrides):
    from benchmarl.algorithms import algorithm_config_registry
    from benchmarl.environments import task_config_registry
    from benchmarl.experiment import Experiment

    task = task_config_registry["vmas/balance"].get_from_yaml()
    task.config.update({"n_agents": 4, "max_steps": max_steps})
    tmp_path.mkdir(parents=True, exist_ok=True)
    algo = algorithm_config_registry["dg_mappo"].get_from_yaml()
    algo.topology, algo.hidden_channels = "ring", 8
    for key, value in (algorithm or {}).items():
        setattr(algo, key, value)
    config = tiny_experiment_config(tmp_path, **overrides)
    return Experiment(task=task, algorithm_config=algo, model_config=actor, critic_model_config=critic,
                      seed=0, config=config, callbacks=callbacks)


def _collected(exp):
    batch = next(iter(exp.collector)).exclude(*exp._get_excluded_keys(GROUP))
    return exp.algorithm.process_batch(GROUP, batch)


# ---------------------------------------------------------------- models dg_mappo cannot use
@pytest.mark.parametrize(
    "actor, critic, match",
    [
        (mlp_config, deepsets_config,
         r"deepsets in its critic \(critic_model=\).*set-shaped inputs.*eq\. 14.*layers/gnn"),
        (deepsets_config, mlp_config, r"deepsets in its actor \(model=\)"),
        (lambda: SequenceModelConfig(model_configs=[mlp_config(), CnnConfig.get_from_yaml()], intermediate_sizes=[8]),
         mlp_config, r"cnn in its actor.*image inputs.*layers/mlp"),
        (mlp_config, lambda: recurrent_config(GruConfig),
         r"recurrent critic with a non-recurrent actor.*is_init.*layers/gru"),
    ],
)
def test_models_that_cannot_read_the_dgat_output_are_named_with_the_reason(actor, critic, match):
    reason = check_models(actor(), critic())
    assert reason is not None and re.search(match, reason), reason
    # recurrent critic, recurrent actor
    assert check_models(recurrent_config(GruConfig), recurrent_config(LstmConfig)) is None


def test_an_unsupported_model_is_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"dg_mappo cannot use deepsets in its critic"):
        _experiment(tmp_path, gnn_config(), deepsets_config())
    assert list(tmp_path.iterdir()) == []  # no half-written run folder left behind
    # silencing agents removes D-GAT messages only: a gnn actor would still carry them
    with pytest.raises(ValueError, match=r"evaluation_dropout=\[1\].*gnn's graph.*evaluation_dropout=\[\]"):
        _experiment(tmp_path, _mlp_gnn(), mlp_config(), algorithm={"evaluation_dropout": [1]})
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- actor_output_gain (A.3)
def test_actor_output_gain_on_the_recurrent_actors_head_and_refused_on_a_gnn(tmp_path):
    exp = _experiment(tmp_path / "gru", recurrent_config(GruConfig), mlp_config(),
                      algorithm={"actor_output_gain": 0.01})
    network = exp.algorithm._actor_networks[GROUP]
    head = network.mlp.params  # the GRU's MLP head (mlp_num_cells=[8]): layers "0" (8 -> 8) and "2" (8 -> out)
    weight = head["2", "weight"]
    assert weight.shape == (4, network.output_leaf_spec.shape[-1], 8)
    eye = torch.eye(weight.shape[1])
    torch.testing.assert_close(weight @ weight.transpose(1, 2), (0.01**2 * eye).expand(4, -1, -1))
    assert not head["2", "bias"].any() and head["0", "bias"].any()  # the hidden layer keeps its initialisation
    exp.close()
    with pytest.raises(ValueError, match=r"not one linear layer's output.*layers/gnn.*actor_output_gain=null"):
        _experiment(tmp_path / "gnn", gnn_config(), mlp_config(), algorithm={"actor_output_gain": 0.01})


def test_actor_output_gain_auto_applies_where_it_can_and_keeps_the_gnns_initialisation(tmp_path, capsys):
    exp = _experiment(tmp_path / "gru", recurrent_config(GruConfig), mlp_config(),
                      algorithm={"actor_output_gain": "auto"})
    weight = exp.algorithm._actor_networks[GROUP].mlp.params["2", "weight"]
    eye = torch.eye(weight.shape[1])
    torch.testing.assert_close(weight @ weight.transpose(1, 2), (0.01**2 * eye).expand(4, -1, -1))
    exp.close()
    torch.manual_seed(0)
    auto = _experiment(tmp_path / "gnn_auto", gnn_config(), mlp_config(), algorithm={"actor_output_gain": "auto"})
    assert "actor_output_gain=auto: group 'agents' keeps the model's default initialisation" in capsys.readouterr().out
    torch.manual_seed(0)
    null = _experiment(tmp_path / "gnn_null", gnn_config(), mlp_config(), algorithm={"actor_output_gain": None})
    for a, b in zip(auto.algorithm.network_leaves(GROUP)["actor"], null.algorithm.network_leaves(GROUP)["actor"]):
        torch.testing.assert_close(a, b)
    auto.close()
    null.close()


# ---------------------------------------------------------------- train, evaluate, clip and mix
MODELS = {  # actor, critic
    "gnn_gnn": (gnn_config, gnn_config),
    "gru_lstm": (lambda: recurrent_config(GruConfig), lambda: recurrent_config(LstmConfig)),
    "mlp_gnn_sequence": (_mlp_gnn, mlp_config),
}


def _step(exp, batch, mixing: bool):
    """One optimizer step of the summed loss (Algorithm 1, line 17); the stacked leaves after it."""
    algo = exp.algorithm
    algo.callback.mixing = mixing
    exp.optimizers[GROUP][LOSS_KEY].zero_grad(set_to_none=True)
    torch.manual_seed(0)  # TanhNormal's entropy is a sampled estimate: same draws in every call
    algo.process_loss_vals(GROUP, exp.losses[GROUP](batch))[LOSS_KEY].backward()
    exp.optimizers[GROUP][LOSS_KEY].step()
    return {net: [p.detach().clone() for p in algo.agent_stack(GROUP, net).leaves] for net in NETWORKS}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_dg_mappo_trains_evaluates_clips_and_mixes_each_model(tmp_path, name):
    """2 iterations + evaluations; then one step: per-agent clip, and mixed = W @ (after the local step)."""
    actor, critic = MODELS[name]
    evaluations = EvaluationCounter()
    exp = _experiment(tmp_path, actor(), critic(), callbacks=[evaluations], algorithm={"max_grad_norm": 1e-3},
                      evaluation=True, create_json=True, evaluation_episodes=1)
    algo = exp.algorithm
    stacks = {net: algo.agent_stack(GROUP, net) for net in NETWORKS}
    for net, stack in stacks.items():  # D-SGD's common start (eq. 9) on the stacked view
        assert stack.leaves and all(p.shape[0] == 4 for p in stack.leaves), net
        assert all(torch.equal(p, p[:1].expand_as(p)) for p in stack.leaves), net
    exp.run()
    assert exp.n_iters_performed == 2 and evaluations.episodes == [1, 1]

    optimizer = exp.optimizers[GROUP][LOSS_KEY]
    with torch.no_grad():  # make the agents differ: written through the stacked view
        for stack in stacks.values():
            for p in stack.leaves:
                p.add_(0.1 * torch.randn_like(p))
    batch = exp.replay_buffers[GROUP].sample()  # a minibatch of the last update (run() closed the collector)
    start = {net: [p.detach().clone() for p in stack.leaves] for net, stack in stacks.items()}
    state = copy.deepcopy(optimizer.state_dict())
    local = _step(exp, batch, mixing=False)  # x^{t+1/2}: the local Adam step alone
    with torch.no_grad():
        for net, stack in stacks.items():
            for p, s in zip(stack.leaves, start[net]):
                p.copy_(s)
    optimizer.load_state_dict(state)
    mixed = _step(exp, batch, mixing=True)
    for net, stack in stacks.items():
        for half, full in zip(local[net], mixed[net]):  # eqs. 9-10 on every network (default consensus_params)
            torch.testing.assert_close(full, torch.einsum("ij,j...->i...", RING, half), rtol=1e-5, atol=1e-6)
        grads = [g for g in stack.grads() if g is not None]  # what Adam applied: each agent's clipped gradient
        norms = torch.cat([g.reshape(4, -1) for g in grads], 1).norm(dim=-1)
        assert bool((norms <= 1e-3 * (1 + 1e-4)).all()), (net, norms)
        stack.check_aliasing()  # gathered copies: the parameters the networks run are the stacked rows


# ---------------------------------------------------------------- recurrent policies
@pytest.mark.slow
def test_recurrent_training_replays_the_collected_steps_over_whole_sequences(tmp_path):
    """GRU actor, LSTM critic: the loss reruns D-GAT and the actor over (env, time) sequences from is_init.

    The first batch starts at reset, so the sequence forward of the loss (zero
    hidden state, reset at is_init) must give exactly the distribution the
    step-by-step collection (hidden state carried in the tensordict) gave, and
    D-GAT per step the same õ; the next õ of GAE equals D-GAT on the next observations.
    """
    exp = _experiment(tmp_path, recurrent_config(GruConfig), recurrent_config(LstmConfig), max_steps=7)
    algo, loss = exp.algorithm, exp.losses[GROUP]
    batch = _collected(exp)
    is_init = batch.get("is_init")
    assert batch.batch_size == (2, 30) and bool(is_init[:, 0].all())
    assert bool(is_init[:, 1:].any())  # episodes restart inside the sequences: the hidden state must reset there
    assert not any(str(k).startswith("_hidden") for k in batch.get(GROUP).keys())  # training reads no hidden state
    comm = algo.communication[GROUP]
    with torch.no_grad():
        reference = comm(batch.get("next").select(*comm.in_keys).clone())
    torch.testing.assert_close(batch.get(("next", GROUP, DGAT_KEY)), reference.get((GROUP, DGAT_KEY)))
    replay = batch.exclude((GROUP, DGAT_KEY), (GROUP, "loc"), (GROUP, "scale"))
    with torch.no_grad():
        replay = loss.actor_network(replay)
    for key in (DGAT_KEY, "loc", "scale"):
        torch.testing.assert_close(replay.get((GROUP, key)), batch.get((GROUP, key)), rtol=1e-5, atol=1e-6)
    buffer = exp.replay_buffers[GROUP]
    buffer.extend(batch)
    minibatch = buffer.sample()
    assert algo.has_rnn and minibatch.batch_size == (1, 30)  # minibatches of whole sequences, as mappo's
    out = loss(minibatch)
    assert all(torch.isfinite(out.get(k)) for k in ("loss_objective", "loss_critic", "loss_consensus"))
    exp.close()


# ---------------------------------------------------------------- checkpoints
@pytest.mark.slow
def test_gathered_models_checkpoint_and_reload_into_the_stacked_view(tmp_path):
    exp = _experiment(tmp_path, gnn_config(), gnn_config(), checkpoint_at_end=True)
    exp.run()
    saved = {net: [p.detach().clone() for p in exp.algorithm.agent_stack(GROUP, net).leaves] for net in NETWORKS}
    checkpoint = next((exp.folder_name / "checkpoints").glob("*.pt"))  # run() has closed the experiment
    reloaded = _experiment(tmp_path / "reload", gnn_config(), gnn_config(), restore_file=str(checkpoint))
    assert reloaded.n_iters_performed == 2  # restored, not a fresh experiment
    for net in NETWORKS:
        stack = reloaded.algorithm.agent_stack(GROUP, net)
        stack.check_aliasing()
        for p, q in zip(stack.leaves, saved[net]):
            torch.testing.assert_close(p, q)
    assert reloaded.algorithm.agent_stack(GROUP, "critic").gathered  # the gnn critic's copies too
    gnns = next(m for m in reloaded.policy.modules() if hasattr(m, "gnns")).gnns
    leaf = reloaded.algorithm.agent_stack(GROUP, "actor").leaves[0]  # a write to the stacked view ...
    with torch.no_grad():
        leaf.fill_(0.25)
    assert any(torch.all(p == 0.25) for p in gnns[2].parameters())  # ... is what the collection policy runs
    reloaded.close()
