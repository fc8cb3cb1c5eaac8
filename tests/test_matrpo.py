"""MATRPO in BenchMARL (paper 001_8ff130c17487d6e3.txt): algorithm glue on real VMAS / PettingZoo tasks.

The ADMM / trust-region math itself is tested in test_trust_region.py and
test_admm.py; here: the cached operators against that layer, the trust region
after a real update, decentralised execution, per-agent statistics, GAE done
handling, checkpoint state, bad input, and end-to-end CLI runs.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from benchmarl.experiment.callback import Callback
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import MultiAgentMLP

from benchmarl_decentral.algorithms import MatrpoConfig
from benchmarl_decentral.algorithms.matrpo import (
    CachedLinearisation,
    Matrpo,
    joint_distribution,
    mask_joint_output,
    MASKED_LOGIT,
    normalise_per_agent,
    own_component,
    scale_advantages,
    stacked_network,
    value_fit,
)
from benchmarl_decentral.objectives import (
    flat_params,
    Linearisation,
    make_fvp,
    mean_kl,
    trpo_step,
)
from benchmarl_decentral.environments.smax import jaxmarl_available
from conftest import make_experiment, run_cli, tiny_experiment_config, TINY

GROUP = "agents"
needs_jaxmarl = pytest.mark.skipif(not jaxmarl_available(),
                                   reason="jax/jaxmarl not installed: pip install 'benchmarl-decentral[smax]'")
SMALL = {"num_cells": None, "activation": None, "admm_iterations": 12, "admm_tol": 0.0}  # the test model ([16] Tanh), few iterations, all run


def _exp(tmp_path, *, continuous=False, n_agents=3, task="vmas/navigation", algo=None, **exp_kwargs):
    task_overrides = {"n_agents": n_agents} if task.startswith("vmas") else None
    return make_experiment(
        tmp_path, algorithm="matrpo", task=task, task_overrides=task_overrides,
        algorithm_overrides={**SMALL, **(algo or {})}, prefer_continuous_actions=continuous, **exp_kwargs,
    )


def _group_batch(exp):
    batch = next(iter(exp.collector)).detach()
    return batch.exclude(*exp._get_excluded_keys(GROUP))


def _policy_fn(alg):
    network, make_dist, _ = alg.joint_network(GROUP)
    return lambda p, o: make_dist(network(p, o))


def _snapshot(alg):
    return {k: v.detach().clone() for k, v in alg.policy_parameters(GROUP).items()}


# ------------------------------------------------------------------ config errors


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("delta", 0.0, "delta must be > 0"),
        ("delta", -0.003, "delta must be > 0"),
        ("beta", 0.0, "beta must be > 0"),
        ("beta", -1.0, "beta must be > 0"),
        ("admm_iterations", 0, "admm_iterations must be >= 1"),
        ("admm_mode", "gossip", "unknown admm_mode"),
        ("link_failure", 1.0, r"link_failure must be in \[0, 1\)"),
        ("fisher_subsample", 0, "fisher_subsample must be >= 1"),
        ("activation", "swishy", "unknown activation"),
        ("topology", "star", "unknown topology"),
        ("admm_tol", -0.1, "admm_tol must be >= 0"),
        ("admm_metric", "fisher", "unknown admm_metric"),
        ("cg_rtol", 1.0, "cg_rtol must be in"),
        ("advantage_norm", "global", "unknown advantage_norm"),
        ("critic_epochs", 0, r"critic_epochs must be a positive integer or null \(null: experiment.on_policy_n_mini"),
        ("critic_epochs", 2.5, r"critic_epochs must be .* got 2.5; e.g. algorithm.critic_epochs=3"),
        ("critic_epochs", True, "critic_epochs must be a positive integer"),
        ("critic_minibatch_size", -64, r"critic_minibatch_size must be .*experiment.on_policy_minibatch_size"),
    ],
)
def test_bad_config_is_refused(field, value, match):
    config = MatrpoConfig.get_from_yaml()
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(config, **{field: value})


def test_defaults_are_table_iii_but_the_admm():
    c = MatrpoConfig.get_from_yaml()
    assert (c.delta, c.gamma, c.lmbda) == (0.003, 0.995, 0.95)
    assert (c.topology, c.num_cells, c.activation) == ("ring", [128, 128], "selu")
    # the ADMM: the exact primal step with the paper's true-KL metric, stopped per link at a relative primal
    # residual of 0.05 (benchmarks/README.md section 9: reached after 50 synchronous iterations at beta 10 on
    # the suite's task; learning level with Table III, benchmarks/learning/matrpo_admm_learning.md)
    assert (c.admm_metric, c.exact_kkt, c.beta, c.admm_mode, c.admm_iterations, c.admm_tol, c.cg_iters, c.cg_rtol) == (
        "kl_exact", False, 10.0, "synchronous", 200, 0.05, 10, 0.0)
    # the critic: the public code's 3 epochs of 64 (benchmarks/README.md section 11)
    assert (c.critic_epochs, c.critic_minibatch_size) == (3, 64)


def test_paper_preset_is_table_iii_admm_and_otherwise_the_defaults():
    from benchmarl_decentral.algorithms import MatrpoPaperConfig
    from benchmarl_decentral.algorithms._yaml import load_algorithm_yaml

    table_iii = {"beta": 1.0, "admm_iterations": 100, "admm_mode": "random", "admm_tol": 0.0,
                 "exact_kkt": False, "admm_metric": "kl", "cg_iters": 10, "cg_rtol": 0.0,
                 # the public TF2 code's value-function training (the paper states none)
                 "critic_epochs": 3, "critic_minibatch_size": 64, "critic_lr": 3e-4, "critic_max_grad_norm": None}
    assert load_algorithm_yaml("matrpo_paper") == {**load_algorithm_yaml("matrpo"), **table_iii}
    config = MatrpoPaperConfig.get_from_yaml()
    assert {k: getattr(config, k) for k in table_iii} == table_iii
    # BenchMARL names runs after the class: a sweep over matrpo,matrpo_paper keeps them apart
    assert config.associated_class().__name__.lower() == "matrpo_paper"
    assert issubclass(config.associated_class(), Matrpo)


@pytest.mark.parametrize(
    "algo, n_agents, match",
    [
        ({"topology": "custom", "adjacency": [[0, 1, 0], [1, 0, 0], [0, 0, 0]]}, 3, r"agents \[2\] have no communication link"),
        ({"topology": "knn_ring", "k": 0}, 3, "have no communication link"),
        ({"topology": "custom", "adjacency": [[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]]}, 4, "not connected"),
        ({"topology": "custom", "adjacency": [[0, 1], [1, 0]]}, 3, "2 rows but group .agents. of task .* has 3 agents"),
    ],
)
def test_bad_topology_is_refused_before_training(tmp_path, algo, n_agents, match):
    with pytest.raises(ValueError, match=match):
        _exp(tmp_path, n_agents=n_agents, algo=algo)
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]  # no half-written run folder


def test_mask_joint_output_masks_head_n_with_agent_n():
    n, F = 3, 4
    out = torch.randn(2, n, n * F)  # (samples, agent i, K * F)
    mask = torch.ones(2, n, F, dtype=torch.bool)  # (samples, agent n, F)
    mask[0, 1, 2:] = False  # agent 1 may not take actions 2, 3 at sample 0
    masked = mask_joint_output(out, mask.unsqueeze(1)).unflatten(-1, (n, F))  # every agent i, head n
    assert (masked[0, :, 1, 2:] == MASKED_LOGIT).all()  # head 1 of every agent
    torch.testing.assert_close(masked[0, :, 1, :2], out[0].unflatten(-1, (n, F))[:, 1, :2])
    torch.testing.assert_close(masked[1], out[1].unflatten(-1, (n, F)))
    probs = joint_distribution(masked.flatten(-2), n_components=n, continuous=False).probs
    assert (probs[0, :, 1, 2:] == 0).all() and torch.isfinite(probs).all()


@pytest.mark.parametrize("mlp_path", [False, True])
def test_masked_cached_operators_match_the_objectives_layer(mlp_path):
    """With action masks: CachedLinearisation == Linearisation of the masked joint policy, all finite."""
    torch.manual_seed(1)
    n, M, d, F = 3, 30, 5, 4
    net = MultiAgentMLP(n_agent_inputs=d, n_agent_outputs=n * F, n_agents=n, centralised=False,
                        share_params=False, num_cells=[8], activation_class=torch.nn.Tanh)
    params = {k: v.detach().double() for k, v in net.params.flatten_keys(".").items()}
    network = stacked_network(net._empty_net)

    def make_dist(out):
        return joint_distribution(out, n_components=n, continuous=False)

    mask = torch.rand(M, n, F) > 0.4
    mask[..., 0] = True  # at least one legal action (SMAC's no-op / stop)
    a = torch.multinomial(mask.float().reshape(-1, F), 1).reshape(M, n)  # legal joint actions
    actions = a.unsqueeze(0).expand(n, M, n)
    obs = torch.randn(n, M, d, dtype=torch.float64)

    def masked_policy(p, o):
        return make_dist(mask_joint_output(network(p, o), mask.expand(o.shape[0], M, n, F)))

    ref = Linearisation(masked_policy, params, obs, actions, damping=0.1)
    fast = CachedLinearisation(network, make_dist, params, obs, actions, damping=0.1,
                               template=net._empty_net.double() if mlp_path else None, mask=mask)
    torch.testing.assert_close(fast.logp_old, ref.logp_old)
    assert torch.isfinite(fast.logp_old).all()
    _assert_same_operators(fast, ref, (None, torch.tensor([0, 2])))
    sub = CachedLinearisation(network, make_dist, params, obs, actions, damping=0.1, fisher_subsample=3, mask=mask)
    x = torch.randn(n, ref.n_params, dtype=torch.float64)
    mask3 = mask[::3]

    def masked_policy3(p, o):
        return make_dist(mask_joint_output(network(p, o), mask3.expand(o.shape[0], *mask3.shape)))

    torch.testing.assert_close(sub.fvp()(x), make_fvp(masked_policy3, params, obs[:, ::3], damping=0.1)(x))
    # the unmasked operators differ: the mask is not a no-op here
    plain = CachedLinearisation(network, make_dist, params, obs, actions, damping=0.1)
    assert not torch.allclose(plain.fvp()(x), fast.fvp()(x))


@needs_jaxmarl
def test_masked_update_on_smax_keeps_illegal_actions_at_zero(tmp_path):
    """smax/3m (action masks, dead agents may only stop): a real update, KL bound, masked execution."""
    exp = make_experiment(tmp_path, algorithm="matrpo", task="smax/3m", algorithm_overrides={**SMALL, "delta": 0.003})
    alg = exp.algorithm
    batch = _group_batch(exp)
    mask = batch.get((GROUP, "action_mask"))
    assert (~mask).any()  # the map has illegal actions (out-of-range attacks)
    # collection executed the own head with the own mask: no illegal action was taken
    assert mask.gather(-1, batch.get((GROUP, "action")).unsqueeze(-1)).all()
    old = _snapshot(alg)
    batch = alg.process_batch(GROUP, batch)
    new = _snapshot(alg)
    _, obs, actions, _ = alg.policy_inputs(GROUP, batch)
    joint_mask = alg.joint_masks(GROUP, batch)
    network, make_dist, _ = alg.joint_network(GROUP)
    policy = CachedLinearisation(network, make_dist, old, obs, actions, damping=0.1, mask=joint_mask).policy
    kl = mean_kl(policy, new, old, obs)
    assert torch.isfinite(kl).all() and torch.all(kl <= 0.003 * (1 + 1e-4)) and torch.all(kl > 0), kl
    torch.testing.assert_close(alg.last_stats[GROUP].kl, kl, rtol=1e-4, atol=1e-7)
    probs = policy(new, obs).probs  # (n, M, K, F): every agent's joint heads
    assert (probs[~joint_mask.expand_as(probs)] == 0).all()
    exp.close()


def test_networks_default_to_two_selu_layers_of_128(tmp_path):
    exp = make_experiment(tmp_path, algorithm="matrpo", task="vmas/navigation", algorithm_overrides={"admm_iterations": 1},
                          prefer_continuous_actions=False)
    alg = exp.algorithm
    n, n_actions = 3, exp.action_spec[GROUP, "action"].space.n
    for net, n_out in ((alg._joint_models[GROUP], n * n_actions), (alg._critics[GROUP], 1)):
        mlp = net.mlp
        assert isinstance(mlp, MultiAgentMLP) and not mlp.share_params and not mlp.centralized
        linears = [m for m in mlp._empty_net if isinstance(m, torch.nn.Linear)]
        assert [m.out_features for m in linears] == [128, 128, n_out]  # joint policy: one head per agent
        assert sum(isinstance(m, torch.nn.SELU) for m in mlp._empty_net) == 2
    assert alg.policy_parameters(GROUP)["4.weight"].shape == (n, n * n_actions, 128)
    # the policy is never given to an optimizer: only the critic loss has one
    assert list(exp.optimizers[GROUP]) == ["loss_critic"]
    critic_ids = {id(p) for p in alg._critics[GROUP].parameters()}
    assert {id(p) for g in exp.optimizers[GROUP]["loss_critic"].param_groups for p in g["params"]} == critic_ids
    exp.close()


def test_critic_learning_rate_and_per_agent_gradient_clip(tmp_path):
    exp = _exp(tmp_path, algo={"critic_lr": 1e-3, "critic_max_grad_norm": 1e-3})
    assert exp.config.clip_grad_val is None  # BenchMARL's clip over all agents at once is off ...
    optimizer = exp.optimizers[GROUP]["loss_critic"]
    assert all(g["lr"] == 1e-3 for g in optimizer.param_groups)
    leaves = list(exp.algorithm._critics[GROUP].parameters())
    scales = torch.tensor([1.0, 10.0, 100.0])  # very different gradient sizes per agent
    for p in leaves:
        p.grad = torch.randn_like(p) * scales.view(-1, *([1] * (p.dim() - 1)))
    raw = torch.stack([p.grad.reshape(3, -1).pow(2).sum(-1) for p in leaves]).sum(0).sqrt()
    optimizer.step()  # ... replaced by a clip of each agent's own norm (a step pre-hook)
    clipped = torch.stack([p.grad.reshape(3, -1).pow(2).sum(-1) for p in leaves]).sum(0).sqrt()
    assert torch.all(raw > 1e-3)
    torch.testing.assert_close(clipped, torch.full((3,), 1e-3), rtol=1e-3, atol=1e-7)
    exp.close()
    no_clip = _exp(tmp_path, algo={"critic_max_grad_norm": None})
    assert no_clip.config.clip_grad_val is None  # never BenchMARL's all-agent clip
    no_clip.close()


# ------------------------------------------------------------------ critic schedule


class _Minibatches(Callback):
    """The size of every minibatch BenchMARL's loop trains on (a module-level class: callbacks are pickled)."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def on_train_step(self, batch, group):
        self.sizes.append(batch.numel())


@pytest.mark.parametrize("schedule, epochs, minibatch", [
    # null: experiment.on_policy_n_minibatch_iters x on_policy_minibatch_size (the behaviour before the keys)
    ({"critic_epochs": None, "critic_minibatch_size": None}, 2, 30),
    ({"critic_epochs": 3, "critic_minibatch_size": 25}, 3, 25),  # 60 frames: 3 x ceil(60 / 25) = 9 steps
    ({}, 3, 64),  # the defaults (the public code's 3 x 64): larger than the 60-frame batch, so the whole batch
])
def test_critic_optimizer_steps_per_iteration_follow_the_schedule(tmp_path, schedule, epochs, minibatch):
    from benchmarl.algorithms import algorithm_config_registry
    from benchmarl.environments import task_config_registry
    from benchmarl.experiment import Experiment
    from benchmarl.models import MlpConfig

    config = tiny_experiment_config(tmp_path, on_policy_n_minibatch_iters=2)  # 60 frames, minibatch 30
    algo = dataclasses.replace(algorithm_config_registry["matrpo"].get_from_yaml(), **SMALL, **schedule)
    model = MlpConfig(num_cells=[16], layer_class=torch.nn.Linear, activation_class=torch.nn.Tanh)
    task = task_config_registry["vmas/navigation"].get_from_yaml()
    task.config.update({"n_agents": 3})
    recorder = _Minibatches()
    exp = Experiment(task=task, algorithm_config=algo, model_config=model, critic_model_config=model, seed=0,
                     config=config, callbacks=[recorder])
    assert (config.on_policy_n_minibatch_iters, config.on_policy_minibatch_size) == (2, 30)  # the caller's: untouched
    steps = []  # (iteration, group of the optimizer) per Adam step of a critic
    for group, optimizers in exp.optimizers.items():
        optimizers["loss_critic"].register_step_post_hook(
            lambda opt, args, kwargs, group=group: steps.append((exp.n_iters_performed, group)))
    policy = []
    update = exp.algorithm.policy_update
    exp.algorithm.policy_update = lambda group, batch: (policy.append(group), update(group, batch))[1]
    exp.run()
    per_iteration = epochs * -(-60 // minibatch)
    assert steps == [(it, GROUP) for it in range(2) for _ in range(per_iteration)]
    # every epoch is one pass over the batch in minibatches of critic_minibatch_size frames (the last one smaller)
    assert len(recorder.sizes) == 2 * per_iteration and max(recorder.sizes) == min(minibatch, 60)
    assert sum(recorder.sizes) == 2 * epochs * 60
    assert policy == [GROUP, GROUP]  # the policy update: once per batch whatever the critic's schedule


def test_value_fit_is_each_agents_explained_variance_and_mse():
    torch.manual_seed(0)
    targets = torch.randn(3, 500)
    targets[2] = 0.0  # an agent that is never rewarded: constant targets
    values = torch.stack([targets[0], torch.full((500,), float(targets[1].mean())), torch.full((500,), 0.5)])
    ev, mse = value_fit(values, targets)
    torch.testing.assert_close(ev[:2], torch.tensor([1.0, 0.0]), atol=1e-6, rtol=0)  # perfect; a constant
    assert torch.isnan(ev[2])  # undefined, not a number that looks like a fit
    torch.testing.assert_close(mse, torch.stack([torch.tensor(0.0), targets[1].var(correction=0), torch.tensor(0.25)]))
    noisy = values.clone()
    noisy[1] = targets[1] + 0.5 * torch.randn(500)  # agent 1's fit changes, the others' do not
    ev2, mse2 = value_fit(noisy, targets)
    assert 0 < ev2[1] < 1 and ev2[0] == ev[0] and mse2[2] == mse[2]


def test_critic_fit_is_measured_on_the_fresh_batch_before_the_critic_trains(tmp_path):
    exp = _exp(tmp_path)
    alg = exp.algorithm
    batch = _group_batch(exp)
    with torch.no_grad():  # the critic as it is before BenchMARL's loop trains it on this batch
        values = alg._critics[GROUP](batch.clone()).get((GROUP, "state_value")).reshape(-1, 3).T
    batch = alg.process_batch(GROUP, batch)
    targets = batch.get((GROUP, "value_target")).reshape(-1, 3).T
    stats = alg.critic_stats[GROUP]
    torch.testing.assert_close(stats["mse"], (targets - values).pow(2).mean(-1))
    torch.testing.assert_close(stats["explained_variance"], value_fit(values, targets)[0])
    exp.close()


# ------------------------------------------------------- operators vs objectives layer


def _assert_same_operators(fast, ref, subsets):
    """jvp / vjp / FVP of ``fast`` equal those of ``ref`` for every agent subset (random probes)."""
    n, M, K = ref.n_agents, ref.n_samples, ref.n_components
    for agents in subsets:
        k = n if agents is None else agents.numel()
        x = torch.randn(k, ref.n_params, dtype=torch.float64)
        u = torch.randn(k, M, K, dtype=torch.float64)
        torch.testing.assert_close(fast.jvp(x, agents), ref.jvp(x, agents))
        torch.testing.assert_close(fast.vjp(u, agents), ref.vjp(u, agents))
        torch.testing.assert_close(fast.fvp(agents)(x), ref.fvp(agents)(x))


@pytest.mark.parametrize("continuous", [False, True])
@pytest.mark.parametrize("mlp_path", [False, True])
def test_cached_operators_match_the_objectives_layer(continuous, mlp_path):
    """jvp / vjp / FVP of CachedLinearisation == Linearisation (double-backward true-KL Fisher)."""
    torch.manual_seed(0)
    n, M, d = 3, 40, 5
    F = 4 if continuous else 3
    net = MultiAgentMLP(n_agent_inputs=d, n_agent_outputs=n * F, n_agents=n, centralised=False,
                        share_params=False, num_cells=[8, 8], activation_class=torch.nn.SELU)
    params = {k: v.detach().double() for k, v in net.params.flatten_keys(".").items()}
    template = net._empty_net.double() if mlp_path else None
    network = stacked_network(net._empty_net)

    def make_dist(out):
        return joint_distribution(out, n_components=n, continuous=continuous)

    obs = torch.randn(n, M, d, dtype=torch.float64)
    a = torch.randn(M, n, 2, dtype=torch.float64) if continuous else torch.randint(F, (M, n))
    actions = a.unsqueeze(0).expand(n, *a.shape)
    ref = Linearisation(lambda p, o: make_dist(network(p, o)), params, obs, actions, damping=0.1)
    fast = CachedLinearisation(network, make_dist, params, obs, actions, damping=0.1, template=template)
    assert (fast._mlp is not None) == mlp_path
    _assert_same_operators(fast, ref, (None, torch.tensor([0, 2]), torch.tensor([1])))
    # Fisher subsample: the FVP of the every-3rd-sample KL, J still on all samples
    sub = CachedLinearisation(network, make_dist, params, obs, actions, damping=0.1, fisher_subsample=3,
                              template=template)
    x = torch.randn(n, ref.n_params, dtype=torch.float64)
    expected = make_fvp(lambda p, o: make_dist(network(p, o)), params, obs[:, ::3], damping=0.1)(x)
    torch.testing.assert_close(sub.fvp()(x), expected)
    torch.testing.assert_close(sub.jvp(x), ref.jvp(x))
    # the Gauss-Newton product of metric="gauss_newton" uses all samples whatever the Fisher subsample:
    # 1/M J^T J x + damping x against the dense Jacobian
    eye = torch.eye(ref.n_params, dtype=torch.float64)
    J = torch.stack([ref.jvp(e.expand(n, -1).contiguous()) for e in eye], dim=-1)  # (n, M, K, D), column by column
    dense_gn = torch.einsum("imkd,imke,ie->id", J, J, x) / M + 0.1 * x
    torch.testing.assert_close(sub.gnvp()(x), dense_gn)
    torch.testing.assert_close(sub.gnvp(torch.tensor([0, 2]))(x[[0, 2]]), dense_gn[[0, 2]])


def test_own_component_and_per_agent_normalisation_helpers():
    joint = torch.arange(2 * 3 * 3 * 2.0).reshape(2, 3, 3 * 2)  # (batch, agent i, n*F) with F = 2
    own = own_component(joint, 3)
    for i in range(3):
        torch.testing.assert_close(own[:, i], joint[:, i, 2 * i : 2 * i + 2])
    adv = torch.randn(3, 50) * torch.tensor([[1.0], [10.0], [0.1]]) + torch.tensor([[0.0], [5.0], [-2.0]])
    z = normalise_per_agent(adv)
    torch.testing.assert_close(z.mean(-1), torch.zeros(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(z.std(-1, correction=0), torch.ones(3), atol=1e-5, rtol=0)
    adv2 = adv.clone()
    adv2[1] = adv2[1] * 7 + 3  # another agent's data
    torch.testing.assert_close(normalise_per_agent(adv2)[[0, 2]], z[[0, 2]])


def test_advantage_norm_center_keeps_a_sparse_agents_small_scale():
    """agent_std blows a rarely rewarded agent's advantages up to unit variance; center keeps its scale."""
    torch.manual_seed(0)
    adv = torch.randn(2, 400) * torch.tensor([[1.0], [0.01]]) + 0.5  # agent 1: almost no signal
    std = scale_advantages(adv, "agent_std")
    center = scale_advantages(adv, "center")
    torch.testing.assert_close(std, normalise_per_agent(adv))
    torch.testing.assert_close(center.mean(-1), torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(center.std(-1), adv.std(-1))  # scale kept per agent
    assert float(std[1].std()) > 50 * float(center[1].std())
    assert torch.equal(scale_advantages(adv, "none"), adv)
    with pytest.raises(ValueError, match="advantage_norm must be one of"):
        scale_advantages(adv, "global")


# ------------------------------------------------------------- on a real experiment


@pytest.mark.parametrize("continuous", [False, True])
def test_kl_bound_holds_per_agent_after_a_real_update(tmp_path, continuous):
    exp = _exp(tmp_path, continuous=continuous, algo={"delta": 0.003, "admm_mode": "random"})
    alg = exp.algorithm
    batch = _group_batch(exp)
    old = _snapshot(alg)
    batch = alg.process_batch(GROUP, batch)
    new = _snapshot(alg)
    _, obs, _, _ = alg.policy_inputs(GROUP, batch)
    kl = mean_kl(_policy_fn(alg), new, old, obs)  # true KL(pi_old || pi_new), every agent
    assert torch.all(kl <= 0.003 * (1 + 1e-4)), kl
    assert torch.all(kl > 0)  # every agent moved
    stats = alg.last_stats[GROUP]
    torch.testing.assert_close(stats.kl, kl, rtol=1e-4, atol=1e-7)
    assert stats.iterations == 12 and int(stats.admm_updates.sum()) == 2 * 12  # one link (two agents) per iteration
    assert torch.all(stats.primal_residual >= 0) and torch.all(stats.dual_residual >= 0)
    # the loss TensorDict carries the group means that BenchMARL logs as train/agents/matrpo_*
    loss_td = exp.losses[GROUP](batch.reshape(-1))
    assert {"loss_critic", "matrpo_kl", "matrpo_primal_residual", "matrpo_dual_residual",
            "matrpo_admm_updates", "matrpo_admm_iterations", "matrpo_primal_residual_rel",
            "matrpo_dual_residual_rel", "matrpo_surrogate_improvement"} <= set(loss_td.keys())
    assert torch.all(stats.improvement[stats.step_fraction > 0] > 0)  # line_search_improvement (default)
    exp.close()


def test_single_agent_update_is_the_natural_gradient_trpo_step(tmp_path):
    """With one agent there are no links: the update is the natural step sqrt(2 delta / g'H^-1 g) H^-1 g."""
    exp = _exp(tmp_path, n_agents=1, algo={"fisher_subsample": 1, "delta": 0.001})
    alg = exp.algorithm
    batch = alg.compute_advantages(GROUP, alg._complete_group_keys(GROUP, _group_batch(exp)))
    old = _snapshot(alg)
    # oracle: the objectives layer's plain Linearisation (double-backward Fisher) and TRPO step
    _, obs, actions, adv = alg.policy_inputs(GROUP, batch)
    ref = Linearisation(_policy_fn(alg), old, obs, actions, damping=alg.cg_damping)
    _, nat, _ = trpo_step(ref, adv, delta=0.001, cg_iters=alg.cg_iters, line_search=False)
    alg.policy_update(GROUP, batch)
    stats = alg.last_stats[GROUP]
    step = flat_params(_snapshot(alg)) - flat_params(old)
    torch.testing.assert_close(step, stats.step_fraction[:, None] * nat.step, rtol=2e-3, atol=1e-6)
    assert float(stats.step_fraction) > 0
    exp.close()


def test_collection_executes_only_the_own_head(tmp_path):
    exp = _exp(tmp_path)
    alg = exp.algorithm
    n, F = 3, exp.action_spec[GROUP, "action"].space.n
    td = exp.test_env.reset()

    def run():
        with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
            out = exp.policy(td.clone())
        return out.get((GROUP, "logits")), out.get((GROUP, "matrpo_joint")), out.get((GROUP, "action"))

    logits, joint, action = run()
    assert logits.shape[-2:] == (n, F)
    torch.testing.assert_close(logits, own_component(joint, n))
    params = alg.policy_parameters(GROUP)
    last_w, last_b = params["2.weight"], params["2.bias"]  # test model: Linear, Tanh, Linear
    others = torch.ones(n, n, F, dtype=torch.bool)
    others[torch.arange(n), torch.arange(n)] = False  # row i, head k != i
    others = others.flatten(1)
    with torch.no_grad():  # change every head an agent does not execute
        last_w.add_(5 * torch.randn_like(last_w) * others[..., None])
        last_b.add_(5 * torch.randn_like(last_b) * others)
    logits2, joint2, action2 = run()
    assert not torch.allclose(joint2, joint)
    torch.testing.assert_close(logits2, logits)
    torch.testing.assert_close(action2, action)
    with torch.no_grad():  # the executed head does matter
        last_b.add_(5 * (~others).float())
        last_w.add_(torch.randn_like(last_w) * (~others)[..., None])
    logits3, _, _ = run()
    assert not torch.allclose(logits3, logits)
    exp.close()


def test_advantages_use_each_agents_own_data_only(tmp_path):
    exp = _exp(tmp_path)
    alg = exp.algorithm
    batch = alg._complete_group_keys(GROUP, _group_batch(exp))
    reward = batch.get(("next", GROUP, "reward")).clone()
    reward = reward + 0.1 * torch.randn_like(reward)  # make every agent's reward informative
    batch.set(("next", GROUP, "reward"), reward)
    a = alg.compute_advantages(GROUP, batch.clone()).get((GROUP, "matrpo_advantage"))
    flat = a.reshape(-1, 3)
    torch.testing.assert_close(flat.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.std(0, correction=0), torch.ones(3), atol=1e-4, rtol=0)
    changed = batch.clone()
    r = changed.get(("next", GROUP, "reward")).clone()
    r[..., 1, :] = 10 * r[..., 1, :] + torch.randn_like(r[..., 1, :])  # agent 1's data only
    changed.set(("next", GROUP, "reward"), r)
    obs = changed.get((GROUP, "observation")).clone()
    obs[..., 1, :] += 1.0
    changed.set((GROUP, "observation"), obs)
    b = alg.compute_advantages(GROUP, changed).get((GROUP, "matrpo_advantage"))
    torch.testing.assert_close(b[..., [0, 2], :], a[..., [0, 2], :])
    assert not torch.allclose(b[..., 1, :], a[..., 1, :])
    exp.close()


def test_gae_matches_eqs_18_19_with_dones(tmp_path):
    """A_t = delta_t + gamma lambda (1 - done_t) A_{t+1}, delta_t = r_t + gamma (1 - term_t) V(o_{t+1}) - V(o_t)."""
    exp = _exp(tmp_path, algo={"advantage_norm": "none", "gamma": 0.9, "lmbda": 0.8})
    alg = exp.algorithm
    batch = alg._complete_group_keys(GROUP, _group_batch(exp))  # (envs=2, T=30)
    done = torch.zeros_like(batch.get(("next", GROUP, "done")))
    term = torch.zeros_like(done)
    done[0, 9], term[0, 9] = True, True      # env 0: terminal transition at t = 9
    done[1, 19] = True                        # env 1: time-limit truncation at t = 19 (bootstraps)
    batch.set(("next", GROUP, "done"), done)
    batch.set(("next", GROUP, "terminated"), term)
    reward = torch.randn_like(batch.get(("next", GROUP, "reward")))
    batch.set(("next", GROUP, "reward"), reward)
    adv = alg.compute_advantages(GROUP, batch.clone()).get((GROUP, "advantage"))
    with torch.no_grad():
        critic = alg._critics[GROUP]
        v = critic(batch.select((GROUP, "observation")).clone()).get((GROUP, "state_value"))
        nxt = batch.get("next").select((GROUP, "observation")).clone()
        v_next = critic(nxt).get((GROUP, "state_value"))
    g, lam = 0.9, 0.8
    expected = torch.zeros_like(adv)
    T = adv.shape[1]
    running = torch.zeros_like(adv[:, 0])
    for t in reversed(range(T)):
        d, tm = done[:, t].float(), term[:, t].float()
        delta = reward[:, t] + g * (1 - tm) * v_next[:, t] - v[:, t]
        running = delta + g * lam * (1 - d) * running
        expected[:, t] = running
    torch.testing.assert_close(adv, expected, rtol=1e-4, atol=1e-5)
    exp.close()


@pytest.mark.parametrize("mode", ["round_robin", "synchronous"])
def test_other_admm_modes_and_link_failures(tmp_path, mode):
    exp = _exp(tmp_path, n_agents=4, algo={"admm_mode": mode, "admm_iterations": 6, "link_failure": 0.3})
    alg = exp.algorithm
    alg.process_batch(GROUP, _group_batch(exp))
    stats = alg.last_stats[GROUP]
    assert stats.iterations == 6
    assert torch.all(stats.kl <= alg.delta * (1 + 1e-4))
    if mode == "round_robin":  # 4 links (ring of 4): the next update starts where this one stopped
        assert exp.losses[GROUP].round_robin_offset == 6 % 4
    exp.close()


def test_rng_and_round_robin_survive_a_checkpoint(tmp_path):
    exp = _exp(tmp_path, algo={"admm_mode": "round_robin", "admm_iterations": 4})
    exp.algorithm.process_batch(GROUP, _group_batch(exp))
    loss = exp.losses[GROUP]
    torch.rand(3, generator=loss.generator)  # advance the link RNG
    state = exp.state_dict()
    assert "_extra_state" in state[f"loss_{GROUP}"]
    (tmp_path / "fresh").mkdir()
    fresh = _exp(tmp_path / "fresh", algo={"admm_mode": "round_robin", "admm_iterations": 4})
    fresh_loss = fresh.losses[GROUP]
    assert not torch.equal(fresh_loss.generator.get_state(), loss.generator.get_state())
    fresh.load_state_dict(state)
    assert torch.equal(fresh_loss.generator.get_state(), loss.generator.get_state())
    assert fresh_loss.round_robin_offset == loss.round_robin_offset == 4 % 3
    for k, v in _snapshot(exp.algorithm).items():  # and the policy itself (a submodule of the loss)
        torch.testing.assert_close(fresh.algorithm.policy_parameters(GROUP)[k], v)
    exp.close()
    fresh.close()


def test_benchmarl_resume_continues_the_link_rng_and_policy(tmp_path):
    first = _exp(tmp_path, algo={"admm_iterations": 3}, checkpoint_at_end=True, max_n_iters=1)
    first.run()
    (checkpoint,) = tmp_path.rglob("checkpoints/checkpoint_*.pt")
    loss = first.losses[GROUP]
    resumed = _exp(tmp_path, algo={"admm_iterations": 3}, restore_file=str(checkpoint), max_n_iters=2)
    assert resumed.n_iters_performed == 1
    assert torch.equal(resumed.losses[GROUP].generator.get_state(), loss.generator.get_state())
    for k, v in _snapshot(first.algorithm).items():
        torch.testing.assert_close(resumed.algorithm.policy_parameters(GROUP)[k], v)
    resumed.run()
    assert resumed.n_iters_performed == 2


def test_training_run_logs_per_agent_metrics(tmp_path):
    exp = _exp(tmp_path, algo={"admm_iterations": 4}, on_policy_n_minibatch_iters=3)
    seen = {}
    log = exp.logger.log
    exp.logger.log = lambda d, step=None: (seen.update(d), log(d, step=step))[1]
    before = _snapshot(exp.algorithm)
    updates = []
    update = exp.algorithm.policy_update
    exp.algorithm.policy_update = lambda group, batch: (updates.append(group), update(group, batch))[1]
    exp.run()
    assert updates == [GROUP, GROUP]  # once per collected batch (2 iterations), not per minibatch
    for agent in exp.group_map[GROUP]:
        for name in ("kl", "primal_residual", "dual_residual", "admm_updates", "step_fraction",
                     "critic_mse", "critic_explained_variance"):
            assert f"matrpo/{GROUP}/{agent}/{name}" in seen
    assert seen[f"matrpo/{GROUP}/admm_iterations"] == 4
    after = _snapshot(exp.algorithm)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_continuous_actions_are_stored_raw_and_clipped_into_the_env(tmp_path):
    """The rollout keeps the Gaussian sample (its ratio is what MATRPO uses); the env gets it clipped."""
    from pettingzoo.utils.env_logger import EnvLogger

    exp = _exp(tmp_path, task="pettingzoo/simple_spread", continuous=True)
    EnvLogger.flush()
    batch = next(iter(exp.collector))
    action = batch.get(("agent", "action"))
    space = exp.action_spec["agent", "action"].space
    assert ((action < space.low) | (action > space.high)).any()
    # PettingZoo logs (and clips) every action outside its Box: it never had to
    assert not [m for m in EnvLogger.mqueue if "outside action space" in str(m)]
    exp.close()


# ------------------------------------------------------------------ end to end (CLI)


@pytest.mark.slow
@pytest.mark.parametrize(
    "task, extra",
    [
        ("vmas/navigation", ["experiment.prefer_continuous_actions=false"]),
        ("vmas/navigation", ["experiment.prefer_continuous_actions=true"]),
        ("pettingzoo/simple_spread", []),
    ],
)
def test_benchmarl_run_matrpo(tmp_path, task, extra):
    args = ["run", "algorithm=matrpo", f"task={task}", *TINY, "algorithm.admm_iterations=5",
            "algorithm.num_cells=[16]", *extra]
    result = run_cli(args, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    scalars = {p.name for p in tmp_path.rglob("*.csv")}
    group = "agents" if task.startswith("vmas") else "agent"
    assert f"matrpo_{group}_agent_0_kl.csv" in scalars, sorted(scalars)[:50]  # per-agent metrics
    assert "eval_reward_episode_reward_mean.csv" in scalars
    assert f"train_{group}_matrpo_kl.csv" in scalars and f"train_{group}_loss_critic.csv" in scalars


@pytest.mark.parametrize("link_failure", [0.0, 0.5])
def test_logs_the_fraction_of_link_activations_that_went_through(tmp_path, link_failure):
    """Issue 16.8: ``matrpo/<group>/links_up``; each activation that went through updated both
    ends, so it equals sum(admm_updates) / (2 x iterations) in random mode."""
    import csv

    exp = _exp(tmp_path, algo={"admm_iterations": 12, "link_failure": link_failure, "admm_mode": "random"},
               max_n_iters=1, loggers=["csv"])
    exp.run()
    stats = exp.algorithm.last_stats["agents"]
    with open(exp.folder_name / exp.name / "scalars" / "matrpo_agents_links_up.csv") as f:
        logged = float(next(csv.reader(f))[1])
    assert logged == pytest.approx(stats.links_up)
    assert logged == pytest.approx(float(stats.admm_updates.sum()) / (2 * stats.iterations))
    if link_failure == 0.0:
        assert logged == 1.0
    else:
        assert 0.0 < logged < 1.0
    # communication: each activation that went through, each end sent one (M, K) value y + beta C J x (eq. 22)
    # and took one primal step, so bytes per agent are its updates times one value's size
    value = int(stats.bytes_sent.sum()) // int(stats.admm_updates.sum())
    assert value > 0 and value % 4 == 0
    assert torch.equal(stats.bytes_sent, stats.admm_updates.to(torch.int64) * value)
    for key in ("comm_agents_train_bytes_per_agent", "comm_train_bytes_per_agent"):
        with open(exp.folder_name / exp.name / "scalars" / f"{key}.csv") as f:
            assert float(next(csv.reader(f))[1]) == pytest.approx(float(stats.bytes_sent.float().mean()))


def test_admm_tol_stops_each_link_on_a_real_update(tmp_path):
    """algorithm.admm_tol: links idle once their own relative residuals are below it, so ADMM ends early."""
    exp = _exp(tmp_path, algo={"admm_tol": 0.5, "admm_iterations": 400, "admm_mode": "round_robin"})
    alg = exp.algorithm
    alg.process_batch(GROUP, _group_batch(exp))
    stats = alg.last_stats[GROUP]
    assert stats.iterations < 400 and bool((stats.converged_links == 1).all())
    assert bool((stats.primal_residual_rel < 0.5).all()) and bool((stats.dual_residual_rel < 0.5).all())
    exp.close()
