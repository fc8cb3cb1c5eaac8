"""MATRPO on BenchMARL's models (issue 17 item 1): the stacked-MLP path, the general path and its checks.

The general path (:class:`~benchmarl_decentral.algorithms.matrpo.GatheredJointNetwork`) runs any
BenchMARL model with per-agent parameters (stacked leaves, or n copies gathered by
:class:`~benchmarl_decentral.consensus.stacking.AgentStack`) through torch.func; the stacked-MLP
path is an optimisation of it, tested equal here. Real BenchMARL models and VMAS runs, tiny, CPU.
"""

from __future__ import annotations

import pytest
import torch
from benchmarl.algorithms import algorithm_config_registry
from benchmarl.environments import task_config_registry
from benchmarl.experiment import Experiment
from benchmarl.models import GnnConfig, GruConfig, LstmConfig, SequenceModelConfig
from tensordict import TensorDict
from torch.distributions import kl_divergence
from torchrl.data import Composite, Unbounded

from benchmarl_decentral.algorithms.matrpo import GatheredJointNetwork, JOINT_KEY, joint_distribution
from benchmarl_decentral.consensus.stacking import AgentStack
from benchmarl_decentral.objectives import make_fvp, mean_kl
from benchmarl_decentral.objectives.matrpo import CachedLinearisation
from benchmarl_decentral.objectives.trust_region import flat_params, unflatten

from conftest import (
    cnn_config,
    deepsets_config,
    EvaluationCounter,
    mlp_config,
    recurrent_config,
    tiny_experiment_config,
)

GROUP = "agents"


def _experiment(tmp_path, model, critic=None, *, callbacks=None, max_steps=None, experiment=None, **algo):
    task = task_config_registry["vmas/navigation"].get_from_yaml()
    task.config.update({"n_agents": 3, **({"max_steps": max_steps} if max_steps else {})})
    config = algorithm_config_registry["matrpo"].get_from_yaml()
    for key, value in {"num_cells": None, "activation": None, "admm_iterations": 12, **algo}.items():
        setattr(config, key, value)
    return Experiment(task=task, algorithm_config=config, model_config=model,
                      critic_model_config=critic if critic is not None else mlp_config([16]), seed=0,
                      callbacks=callbacks,
                      config=tiny_experiment_config(tmp_path, prefer_continuous_actions=False, **(experiment or {})))


SEQUENCE = SequenceModelConfig(model_configs=[mlp_config([16]), mlp_config([16])], intermediate_sizes=[8])


def _batch(exp):
    batch = next(iter(exp.collector)).detach()
    return batch.exclude(*exp._get_excluded_keys(GROUP))


def test_sequence_of_mlps_joint_network_is_the_policy_module(tmp_path):
    """The stacked functional network MATRPO differentiates computes what the policy module executes."""
    exp = _experiment(tmp_path, SEQUENCE, admm_iterations=3, cg_iters=4)
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
    exp = _experiment(tmp_path, SEQUENCE, admm_iterations=3, cg_iters=4)
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


# ---------------------------------------------------------------- general path == stacked-MLP path
def test_general_path_equals_the_stacked_mlp_path(tmp_path):
    """The whole-model torch.func path gives the operators and the update of the explicit MLP path."""
    exp = _experiment(tmp_path, mlp_config([16]), admm_iterations=3, cg_iters=3)
    alg = exp.algorithm
    assert not alg.general_path(GROUP)
    batch = alg.compute_advantages(GROUP, alg._complete_group_keys(GROUP, _batch(exp)))
    fast = alg.linearisation(GROUP, batch)
    alg.force_general_path = True
    general = alg.linearisation(GROUP, batch)
    assert general.shared_operators and not fast.shared_operators
    # the same leaves in the same order (the general path names them as the model does)
    assert [k.split(".")[-2:] for k in general.params_old] == [k.split(".")[-2:] for k in fast.params_old]
    n, D = fast.n_agents, fast.n_params
    assert (general.n_agents, general.n_params, general.n_samples) == (n, D, fast.n_samples)
    torch.testing.assert_close(general.logp_old, fast.logp_old)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, D, generator=gen)
    u = torch.randn(n, fast.n_samples, fast.n_components, generator=gen)
    link = torch.tensor([0, 2])
    for agents in (None, link):
        rows = slice(None) if agents is None else agents
        torch.testing.assert_close(general.jvp(x[rows], agents), fast.jvp(x[rows], agents), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(general.vjp(u[rows], agents), fast.vjp(u[rows], agents), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(general.fvp(agents)(x[rows]), fast.fvp(agents)(x[rows]), rtol=1e-4, atol=1e-5)
    # one whole policy update from the same state and link RNG
    loss = alg.get_loss_and_updater(GROUP)[0]
    state = loss.generator.get_state()
    live = alg.policy_parameters(GROUP)  # the general path's names
    old = {k: v.detach().clone() for k, v in live.items()}
    alg.policy_update(GROUP, batch)
    new_general = {k: v.detach().clone() for k, v in live.items()}
    with torch.no_grad():
        for k, v in live.items():
            v.copy_(old[k])
    loss.generator.set_state(state)
    loss.round_robin_offset = 0
    alg.force_general_path = False
    alg.policy_update(GROUP, batch)
    for (k, a), b in zip(new_general.items(), alg.policy_parameters(GROUP).values()):
        assert not torch.equal(a, old[k]) or torch.equal(b, old[k])
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    exp.close()


# ---------------------------------------------------------------- gathered copies, model level
def _model(config, n, in_shape, out, *, share_params=False):
    input_spec = Composite({GROUP: Composite({"observation": Unbounded((n, *in_shape))}, shape=(n,))})
    output_spec = Composite({GROUP: Composite({"out": Unbounded((n, out))}, shape=(n,))})
    return config.get_model(
        input_spec=input_spec, output_spec=output_spec, agent_group=GROUP, input_has_agent_dim=True,
        n_agents=n, centralised=False, share_params=share_params, device="cpu", action_spec=None,
    )


def _general_linearisation(model, n, inputs, actions, K):
    """CachedLinearisation of ``model``'s gathered leaves on ``inputs`` (``M`` samples), K categorical heads."""
    stack = AgentStack(TensorDict.from_module(model).flatten_keys("."), model, n, "policy")
    params = {k: v.detach().clone() for k, v in zip(stack.names, stack.leaves)}
    M = inputs.numel()
    index = torch.stack([torch.arange(n)[:, None].expand(n, M), torch.arange(M).expand(n, M)], -1)
    network = GatheredJointNetwork(model, stack, params, inputs, (GROUP, "out"))

    def make_dist(out):
        return joint_distribution(out, n_components=K, continuous=False)

    lin = CachedLinearisation(network, make_dist, params, index, actions, damping=0.1, shared_operators=True)
    return stack, params, network, make_dist, lin


@pytest.mark.parametrize(
    "name, config, in_shape",
    [("gnn", GnnConfig.get_from_yaml(), (4,)), ("deepsets", deepsets_config(), (5, 4))],  # deepsets: a set per agent
)
def test_gathered_model_fisher_vector_product_equals_the_copies_one_by_one(name, config, in_shape):
    """eq. 14 on gathered copies == the exact KL Hessian of each agent's own copy, evaluated alone."""
    torch.manual_seed(0)
    n, K, F, M = 3, 3, 2, 6
    model = _model(config, n, in_shape, K * F)
    with torch.no_grad():  # agents differ
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    inputs = TensorDict({GROUP: TensorDict({"observation": torch.randn(M, n, *in_shape)}, batch_size=(M, n))},
                        batch_size=(M,))
    actions = torch.randint(F, (M, K)).expand(n, M, K)
    stack, params, network, make_dist, lin = _general_linearisation(model, n, inputs, actions, K)
    assert stack.gathered  # n copies, gathered
    copies = next(stack.gathered[k] for k in stack.names)  # e.g. gnns.0.lin_rel.weight, ...
    v = torch.randn(n, lin.n_params)
    hv = lin.fvp()(v)
    v_link = lin.fvp(torch.tensor([2, 0]))(v[[2, 0]])
    torch.testing.assert_close(v_link, hv[[2, 0]], rtol=1e-4, atol=1e-6)
    for i in range(n):  # agent i alone: its own copy's parameters, model output row i
        names = [stack.gathered[k][i] for k in stack.names]
        assert names[0] == copies[i]
        theta = {k: params[k][i] for k in stack.names}

        def f(p, i=i, names=names):
            out = torch.func.functional_call(model, dict(zip(names, p.values())), (inputs.clone(False),))
            return make_dist(out.get((GROUP, "out"))[:, i])

        old = f(theta)
        old = type(old)(logits=old.logits.detach()) if hasattr(old, "logits") else old

        def kl(p, f=f, old=old):  # the mean over samples of the KL summed over heads (eq. 14's H)
            return kl_divergence(old, f(p)).sum(-1).mean()

        v_i = unflatten(v[i : i + 1], {k: t[None] for k, t in theta.items()})
        v_i = {k: t[0] for k, t in v_i.items()}
        _, hvp = torch.func.jvp(torch.func.grad(kl), (theta,), (v_i,))
        expected = flat_params({k: t[None] for k, t in hvp.items()})[0] + 0.1 * v[i]
        torch.testing.assert_close(hv[i], expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "name, config, in_shape", [("cnn", cnn_config(), (6, 6, 3)), ("gru", recurrent_config(GruConfig), (4,))]
)
def test_general_path_fisher_is_the_kl_hessian_on_stacked_models(name, config, in_shape):
    """cnn (no installed task has images) and gru (a replayed sequence): eq. 14's Gauss-Newton
    product == the double-backward Hessian of the mean KL (make_fvp), all agents and a link."""
    torch.manual_seed(0)
    n, K, F = 3, 3, 2
    model = _model(config, n, in_shape, K * F)
    batch = (2, 4)  # (envs, time): a recurrent model replays the time dim, reset at is_init
    inputs = TensorDict({GROUP: TensorDict({"observation": torch.randn(*batch, n, *in_shape)}, batch_size=(*batch, n)),
                         "is_init": torch.tensor([[1, 0, 0, 1], [1, 0, 0, 0]], dtype=torch.bool)[..., None]},
                        batch_size=batch)
    M = 8
    actions = torch.randint(F, (M, K)).expand(n, M, K)
    stack, params, network, make_dist, lin = _general_linearisation(model, n, inputs, actions, K)
    assert not stack.gathered
    index = lin.obs
    expected = make_fvp(lambda p, o: make_dist(network(p, o)), params, index, damping=0.1)
    v = torch.randn(n, lin.n_params)
    torch.testing.assert_close(lin.fvp()(v), expected(v), rtol=1e-4, atol=1e-6)
    link = torch.tensor([1, 2])
    expected_link = make_fvp(lambda p, o: make_dist(network(p, o)), {k: t[link] for k, t in params.items()},
                             index[link], damping=0.1)
    torch.testing.assert_close(lin.fvp(link)(v[link]), expected_link(v[link]), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- end to end, each model kind
MODELS = {  # actor, critic (episodes of 10 steps: short evaluations, resets inside every batch)
    "gnn": (GnnConfig.get_from_yaml, GnnConfig.get_from_yaml),
    "mlp_gnn_sequence": (lambda: SequenceModelConfig(model_configs=[mlp_config([8]), GnnConfig.get_from_yaml()],
                                                     intermediate_sizes=[8]), lambda: mlp_config([8])),
    "gru": (lambda: recurrent_config(GruConfig), lambda: recurrent_config(GruConfig)),
    "lstm": (lambda: recurrent_config(LstmConfig), lambda: mlp_config([8])),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_matrpo_trains_and_evaluates_each_model(tmp_path, name):
    """2 iterations + 2 evaluations on vmas/navigation; every update keeps its agents in the trust region."""
    actor, critic = MODELS[name]
    evaluations = EvaluationCounter()
    exp = _experiment(tmp_path, actor(), critic(), callbacks=[evaluations], max_steps=10,
                      admm_iterations=2, cg_iters=2,
                      experiment={"evaluation": True, "create_json": True, "evaluation_episodes": 1})
    alg = exp.algorithm
    assert alg.general_path(GROUP)
    old = {k: v.detach().clone() for k, v in alg.policy_parameters(GROUP).items()}
    exp.run()
    assert exp.n_iters_performed == 2 and evaluations.episodes == [1, 1]
    new = alg.policy_parameters(GROUP)
    assert any(not torch.equal(old[k], new[k]) for k in old)
    stats = alg.last_stats[GROUP]
    assert torch.isfinite(stats.kl).all() and torch.all(stats.kl <= 0.003 * (1 + 1e-4))
    for stack in (alg._joint_stacks[GROUP], alg._critic_stacks[GROUP]):
        stack.check_aliasing()  # gathered copies still run the stacked rows the update wrote


@pytest.mark.slow
def test_gathered_gnn_checkpoint_reloads_into_the_stacked_view(tmp_path):
    """A checkpoint of gathered copies reloads into the stacked leaves, which the policy then runs."""
    exp = _experiment(tmp_path, GnnConfig.get_from_yaml(), GnnConfig.get_from_yaml(), max_steps=10,
                      admm_iterations=2, cg_iters=2, experiment={"checkpoint_at_end": True})
    exp.run()
    saved = {net: [p.detach().clone() for p in stack.leaves]
             for net, stack in (("policy", exp.algorithm._joint_stacks[GROUP]),
                                ("critic", exp.algorithm._critic_stacks[GROUP]))}
    checkpoint = next((exp.folder_name / "checkpoints").glob("*.pt"))
    (tmp_path / "reload").mkdir()
    reloaded = _experiment(tmp_path / "reload", GnnConfig.get_from_yaml(), GnnConfig.get_from_yaml(), max_steps=10,
                           experiment={"restore_file": str(checkpoint)})
    assert reloaded.n_iters_performed == 2
    alg = reloaded.algorithm
    for net, stack in (("policy", alg._joint_stacks[GROUP]), ("critic", alg._critic_stacks[GROUP])):
        stack.check_aliasing()
        for p, q in zip(stack.leaves, saved[net]):
            torch.testing.assert_close(p, q)
    gnns = alg._joint_models[GROUP].gnns
    with torch.no_grad():
        alg._joint_stacks[GROUP].leaves[0].fill_(0.25)  # what the collection policy runs
    assert any(torch.all(p == 0.25) for p in gnns[2].parameters())
    reloaded.close()


def test_recurrent_update_uses_only_samples_after_a_reset(tmp_path):
    """BenchMARL keeps no hidden state in the batch: samples before an env's first is_init are left out."""
    exp = _experiment(tmp_path, recurrent_config(GruConfig), max_steps=10, admm_iterations=2, cg_iters=2)
    alg = exp.algorithm
    batch = _batch(exp)  # (envs, time)
    is_init = batch.get("is_init").clone()
    is_init[0, :7] = False
    is_init[0, 7] = True  # env 0: the first 7 steps continue an episode of an earlier batch
    batch.set("is_init", is_init)
    samples = alg.update_samples(GROUP, batch)
    T = batch.shape[1]
    assert samples.tolist() == list(range(7, T)) + list(range(T, 2 * T))
    _, index, actions, advantages = alg.policy_inputs(GROUP, alg.compute_advantages(
        GROUP, alg._complete_group_keys(GROUP, batch)))
    assert index.shape[:2] == actions.shape[:2] == advantages.shape == (3, 2 * T - 7)
    batch.set("is_init", torch.zeros_like(is_init))
    assert alg.policy_update(GROUP, alg.compute_advantages(GROUP, batch)) is None  # nothing to replay: skipped
    exp.close()


class _SharedGnn(GnnConfig):
    """A GNN that ignores share_params=False (one GNN for all agents)."""

    def get_model(self, **kwargs):
        return super().get_model(**{**kwargs, "share_params": True})


def test_a_model_with_a_parameter_no_agent_owns_is_refused(tmp_path):
    """A model sharing its parameters across agents: no agent owns them, refused with the reason."""
    model = _SharedGnn(**{k: getattr(GnnConfig.get_from_yaml(), k) for k in GnnConfig.__dataclass_fields__})
    with pytest.raises(ValueError) as err:
        _experiment(tmp_path, model)
    message = str(err.value)
    assert message.startswith("matrpo: every agent's joint policy pi^i (eq. 8) is a function of its own parameters")
    assert "no agent owns them" in message and "nearest working choice: model=layers/mlp" in message
    assert list(tmp_path.iterdir()) == []  # refused before training, no run folder left


def test_a_recurrent_critic_without_a_recurrent_policy_is_refused(tmp_path):
    """BenchMARL tracks is_init only for a recurrent policy model, so a recurrent critic alone could not reset."""
    with pytest.raises(ValueError, match="a recurrent critic_model needs a recurrent model"):
        _experiment(tmp_path, GnnConfig.get_from_yaml(), recurrent_config(GruConfig))
    assert list(tmp_path.iterdir()) == []
