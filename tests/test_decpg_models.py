"""DecPG with BenchMARL's other models: per-agent parameters stacked or gathered, then mixed by DSGD.

Real BenchMARL models (and, for the slow tests, real VMAS balance runs), tiny sizes, CPU.
"""

from __future__ import annotations

import pytest
import torch
from benchmarl.models import GruConfig, LstmConfig, SequenceModelConfig
from tensordict import TensorDict
from torch.func import stack_module_state
from torchrl.data import Composite, Unbounded

from benchmarl_decentral.consensus import mix_, uniform_knn
from benchmarl_decentral.consensus.stacking import AgentStack, agent_copy_lists

from conftest import (
    cnn_config,
    deepsets_config,
    EvaluationCounter,
    gnn_config,
    mlp_config,
    recurrent_config,
    tiny_experiment_config,
)

GROUP = "agents"


def _model(config, n, in_shape, *, centralised=False, share_params=False):
    """A real BenchMARL model of ``n`` agents on inputs ``(n, *in_shape)``, 2 outputs per agent."""
    input_spec = Composite({GROUP: Composite({"observation": Unbounded((n, *in_shape))}, shape=(n,))})
    output_spec = Composite({GROUP: Composite({"out": Unbounded((n, 2))}, shape=(n,))})
    return config.get_model(
        input_spec=input_spec, output_spec=output_spec, agent_group=GROUP, input_has_agent_dim=True,
        n_agents=n, centralised=centralised, share_params=share_params, device="cpu", action_spec=None,
    )


def _mixing_oracle(W, per_agent_params):
    """W @ theta on the agents' parameters stacked by torch.func (independent of AgentStack)."""
    stacked, _ = stack_module_state(per_agent_params)
    return {k: torch.einsum("ij,j...->i...", W, v) for k, v in stacked.items()}


# ---------------------------------------------------------------- which model keeps what (no env)
@pytest.mark.parametrize(
    "name, config, in_shape, centralised, gathered",
    [
        ("mlp", mlp_config(), (4,), False, []),
        ("cnn", cnn_config(), (6, 6, 3), False, []),
        ("gru", recurrent_config(GruConfig), (4,), False, []),
        ("lstm", recurrent_config(LstmConfig), (4,), False, []),
        ("gnn", gnn_config(), (4,), False, ["gnns"]),
        ("deepsets", deepsets_config(), (4,), True, ["global_deepsets"]),  # as a critic: the agents are the set
    ],
)
def test_per_agent_parameters_are_stacked_or_gathered_copies(name, config, in_shape, centralised, gathered):
    n = 3
    model = _model(config, n, in_shape, centralised=centralised)
    assert agent_copy_lists(model, n) == gathered
    params = dict(model.named_parameters())
    stack = AgentStack(params, model, n, name)
    assert stack.leaves and all(p.shape[0] == n for p in stack.leaves)
    assert sum(p.numel() for p in stack.leaves) == sum(p.numel() for p in params.values())
    assert {id(p) for p in stack.parameters} == {id(p) for p in params.values()}
    if not gathered:  # stacked models are mixed leaf by leaf as they are
        assert [id(p) for p in stack.leaves] == [id(p) for p in params.values()]


def test_a_sequence_of_models_is_not_taken_for_per_agent_copies():
    """A SequenceModel of n identical layers on n agents: its list holds models, not agent copies."""
    n = 2
    config = SequenceModelConfig(model_configs=[mlp_config(), mlp_config()], intermediate_sizes=[2])
    model = _model(config, n, (2,))
    assert agent_copy_lists(model, n) == []
    stack = AgentStack(dict(model.named_parameters()), model, n, "actor")
    assert all(p.shape[0] == n for p in stack.leaves) and len(stack.leaves) == 8


def test_gathered_gnn_copies_mix_as_stacked_parameters_and_the_model_uses_them():
    """Mixing the gathered view of n GraphConv copies == W @ (the copies stacked by torch.func)."""
    n = 4
    model = _model(gnn_config(), n, (5,))
    with torch.no_grad():  # different agents
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    W = uniform_knn(n, 2)
    expected = _mixing_oracle(W, list(model.gnns))
    x = TensorDict({GROUP: TensorDict({"observation": torch.randn(7, n, 5)}, batch_size=(7, n))}, batch_size=(7,))
    stack = AgentStack(dict(model.named_parameters()), model, n, "actor")
    assert sorted(stack.gathered) == sorted(f"gnns.*.{k}" for k in expected)
    mix_(stack.leaves, W)
    for i, copy in enumerate(model.gnns):  # every copy holds its row of W @ theta
        for k, p in copy.named_parameters():
            torch.testing.assert_close(p, expected[k][i])
    oracle = _model(gnn_config(), n, (5,))  # the same model, its copies loaded with the expected rows
    for i, copy in enumerate(oracle.gnns):
        copy.load_state_dict({k: v[i] for k, v in expected.items()})
    torch.testing.assert_close(model(x.clone()).get((GROUP, "out")), oracle(x.clone()).get((GROUP, "out")))


def test_gathered_gradients_are_the_copies_and_clipping_reaches_them():
    n = 3
    model = _model(deepsets_config(), n, (4,), centralised=True)
    stack = AgentStack(dict(model.named_parameters()), model, n, "critic")
    x = TensorDict({GROUP: TensorDict({"observation": torch.randn(5, n, 4)}, batch_size=(5, n))}, batch_size=(5,))
    model(x).get((GROUP, "out")).pow(2).sum().backward()
    grads = stack.grads()
    for key, names in stack.gathered.items():
        G = grads[list(stack.gathered).index(key)]
        params = dict(model.named_parameters())
        torch.testing.assert_close(G, torch.stack([params[name].grad for name in names]))
        G.mul_(0.5)  # a per-agent rescale (decpg's clip) is what the optimizer will read
        for i, name in enumerate(names):
            assert params[name].grad.data_ptr() == G[i].data_ptr()


def test_a_shared_parameter_is_refused_with_the_reason():
    model = _model(mlp_config(), 3, (4,), share_params=True)
    with pytest.raises(ValueError, match="neither stacked on a leading agent dim of size 3 nor one of 3 per-agent"):
        AgentStack(dict(model.named_parameters()), model, 3, "actor")


# ------------------------------------------------------------------ decpg on VMAS balance
def _experiment(tmp_path, actor, critic, n_agents=4, callbacks=None, algorithm=None, **overrides):
    from benchmarl.algorithms import algorithm_config_registry
    from benchmarl.environments import task_config_registry
    from benchmarl.experiment import Experiment

    task = task_config_registry["vmas/balance"].get_from_yaml()
    task.config.update({"n_agents": n_agents})
    algo = algorithm_config_registry["decpg"].get_from_yaml()
    algo.max_grad_norm = None
    for key, value in (algorithm or {}).items():
        setattr(algo, key, value)
    config = tiny_experiment_config(
        tmp_path, **{"evaluation": True, "create_json": True, "evaluation_episodes": 1, **overrides}
    )
    return Experiment(task=task, algorithm_config=algo, model_config=actor, critic_model_config=critic,
                      seed=0, config=config, callbacks=callbacks)


def test_evaluation_dropout_with_a_gnn_actor_is_refused_before_training(tmp_path):
    """Silenced agents act the no-op, but a gnn actor's own messages would still carry their observations."""
    with pytest.raises(ValueError, match=r"decpg: evaluation_dropout=\[1\].*gnn's graph.*evaluation_dropout=\[\]"):
        _experiment(tmp_path, gnn_config(), mlp_config(), algorithm={"evaluation_dropout": [1]})
    assert list(tmp_path.iterdir()) == []  # no half-written run folder left behind


MODELS = {  # actor, critic
    "gnn_deepsets": (gnn_config, deepsets_config),
    "gru_lstm": (lambda: recurrent_config(GruConfig), lambda: recurrent_config(LstmConfig)),
    "lstm_gru": (lambda: recurrent_config(LstmConfig), lambda: recurrent_config(GruConfig)),
    "mlp_gnn_sequence": (
        lambda: SequenceModelConfig(model_configs=[mlp_config(), gnn_config()], intermediate_sizes=[8]), mlp_config
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_decpg_trains_evaluates_and_mixes_each_model(tmp_path, name):
    """2 iterations + evaluations, then one BenchMARL optimizer step checked against W @ theta - lr g."""
    actor, critic = MODELS[name]
    evaluations = EvaluationCounter()
    exp = _experiment(tmp_path, actor(), critic(), callbacks=[evaluations])
    algo = exp.algorithm
    for net in ("actor", "critic"):  # the common theta_0 (sec. 3) on the stacked view
        assert all(torch.equal(p, p[:1].expand_as(p)) for p in algo.agent_stack(GROUP, net).leaves)
    exp.run()
    assert exp.n_iters_performed == 2 and evaluations.episodes == [1, 1]  # one episode per evaluation
    assert torch.isfinite(torch.tensor(algo.callback._clean_return))  # the averaged model's return

    W = uniform_knn(4, 2)
    stacks = {net: algo.agent_stack(GROUP, net) for net in ("actor", "critic")}
    optimizers = {"actor": exp.optimizers[GROUP]["loss_objective"], "critic": exp.optimizers[GROUP]["loss_critic"]}
    before, seen, handles = {}, {}, []
    for net, stack in stacks.items():
        assert isinstance(optimizers[net], torch.optim.SGD)
        with torch.no_grad():  # make the agents differ: written through the stacked view
            for p in stack.leaves:
                p.add_(0.1 * torch.randn_like(p))
        before[net] = [p.detach().clone() for p in stack.leaves]

        def record(opt, args, kwargs, net=net, stack=stack):  # after decpg's hooks (clip, mixing), before SGD
            seen[net] = ([p.detach().clone() for p in stack.leaves], [g.clone() for g in stack.grads()])

        handles.append(optimizers[net].register_step_pre_hook(record))
    exp._optimizer_loop(GROUP)  # BenchMARL's own step: sample, loss, backward, optimizer steps
    for handle in handles:
        handle.remove()
    for net, stack in stacks.items():
        lr = optimizers[net].param_groups[0]["lr"]
        mixed, grads = seen[net]
        assert len(grads) == len(stack.leaves)
        for b, m, g, a in zip(before[net], mixed, grads, stack.leaves):
            torch.testing.assert_close(m, torch.einsum("ij,j...->i...", W, b), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(a, m - lr * g, rtol=1e-5, atol=1e-6)
        stack.check_aliasing()  # gathered copies: the parameters the networks run are the stacked rows


@pytest.mark.slow
def test_gathered_model_checkpoint_reloads_into_the_stacked_view(tmp_path):
    exp = _experiment(tmp_path, gnn_config(), deepsets_config(), checkpoint_at_end=True, evaluation=False)
    exp.run()
    saved = {net: [p.detach().clone() for p in exp.algorithm.agent_stack(GROUP, net).leaves]
             for net in ("actor", "critic")}
    checkpoint = next((exp.folder_name / "checkpoints").glob("*.pt"))  # run() has closed the experiment
    (tmp_path / "reload").mkdir()
    reloaded = _experiment(tmp_path / "reload", gnn_config(), deepsets_config(), evaluation=False,
                           restore_file=str(checkpoint))
    assert reloaded.n_iters_performed == 2  # restored, not a fresh experiment
    for net in ("actor", "critic"):
        stack = reloaded.algorithm.agent_stack(GROUP, net)
        stack.check_aliasing()
        for p, q in zip(stack.leaves, saved[net]):
            torch.testing.assert_close(p, q)
    # a write to the stacked view is what the collection policy runs
    gnns = next(m for m in reloaded.policy.modules() if hasattr(m, "gnns")).gnns
    leaf = reloaded.algorithm.agent_stack(GROUP, "actor").leaves[0]
    with torch.no_grad():
        leaf.fill_(0.25)
    assert any(torch.all(p == 0.25) for p in gnns[2].parameters())
    reloaded.close()
