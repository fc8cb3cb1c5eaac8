"""DecPG (paper 002) on real BenchMARL experiments, tiny sizes, CPU."""

from __future__ import annotations

import pytest
import torch
from benchmarl.experiment.callback import Callback

from benchmarl_decentral.algorithms import DecpgConfig
from benchmarl_decentral.algorithms.dg_mappo import ValueNorm
from benchmarl_decentral.consensus import consensus_distance, uniform_knn

from conftest import make_experiment, tiny_experiment_config

GROUP = "agents"


def _batch(exp, group=GROUP):
    batch = next(iter(exp.collector))
    batch = batch.exclude(*exp._get_excluded_keys(group))
    return exp.algorithm.process_batch(group, batch).reshape(-1)


def _grads(exp, batch, key="loss_objective", group=GROUP):
    leaves = exp.algorithm.actor_leaves(group) if key == "loss_objective" else exp.algorithm.critic_leaves(group)
    for p in leaves:
        p.grad = None
    vals = exp.algorithm.process_loss_vals(group, exp.losses[group](batch))
    vals[key].backward()
    return leaves, [p.grad.clone() for p in leaves]


def test_per_agent_stacked_networks_from_a_common_init(tmp_path):
    exp = make_experiment(tmp_path, task_overrides={"n_agents": 3})
    for leaves in (exp.algorithm.actor_leaves(GROUP), exp.algorithm.critic_leaves(GROUP)):
        assert leaves and all(p.shape[0] == 3 for p in leaves)
        assert all(torch.equal(p, p[:1].expand_as(p)) for p in leaves)  # common theta_0 (sec. 3)
        assert float(consensus_distance(leaves)) < 1e-10
    # share_policy_params=True in the experiment (its default) is overridden, not mutated
    assert exp.config.share_policy_params is True
    exp.close()


def test_gradient_of_agent_i_is_grad_of_its_own_loss(tmp_path):
    """d/d theta_i of the processed loss == grad of L_i = mean over agent i's samples."""
    exp = make_experiment(
        tmp_path,
        task_overrides={"n_agents": 3},
        algorithm_overrides={"entropy_coef": 0.0, "max_grad_norm": None},
    )
    batch = _batch(exp)
    leaves, grads = _grads(exp, batch)
    loss = exp.losses[GROUP]
    loss.reduction = "none"
    try:
        per_sample = loss(batch)["loss_objective"]  # (frames, n_agents)
        for i in range(3):
            for p in leaves:
                p.grad = None
            per_sample[:, i].mean().backward(retain_graph=True)
            for p, g in zip(leaves, grads):
                torch.testing.assert_close(g[i], p.grad[i], rtol=1e-5, atol=1e-7)
                assert torch.count_nonzero(p.grad[torch.arange(3) != i]) == 0
    finally:
        loss.reduction = "mean"
    exp.close()


def test_advantage_normalisation_is_per_agent(tmp_path):
    """No cross-agent statistic: changing agent 1's advantages leaves the others' gradients unchanged."""
    # entropy_coef 0: TanhNormal's entropy is a sampled estimate, which would add noise
    exp = make_experiment(
        tmp_path, task_overrides={"n_agents": 3}, algorithm_overrides={"max_grad_norm": None, "entropy_coef": 0.0}
    )
    assert exp.losses[GROUP].normalize_advantage
    batch = _batch(exp)
    _, grads = _grads(exp, batch)
    shifted = batch.clone()
    advantage = shifted.get((GROUP, "advantage"))
    advantage[:, 1] = 100.0 * advantage[:, 1].flip(0) + 3.0  # new mean, std and order
    _, grads_shifted = _grads(exp, shifted)
    for g, h in zip(grads, grads_shifted):
        torch.testing.assert_close(g[0], h[0])
        torch.testing.assert_close(g[2], h[2])
    assert any(not torch.allclose(g[1], h[1]) for g, h in zip(grads, grads_shifted))


def _one_sgd_step(exp, batch):
    """One BenchMARL optimizer step on the actor; returns (theta_before, per-agent grads, theta_after)."""
    leaves = exp.algorithm.actor_leaves(GROUP)
    before = [p.detach().clone() for p in leaves]
    _, grads = _grads(exp, batch)
    optimizer = exp.optimizers[GROUP]["loss_objective"]
    assert isinstance(optimizer, torch.optim.SGD)
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    optimizer.zero_grad()
    return before, grads, [p.detach().clone() for p in leaves], lr


@pytest.mark.parametrize("k", [0, 1, 2])
def test_dsgd_update_matches_paper_equation(tmp_path, k):
    """theta_i <- sum_j P_ij theta_j - eta grad L_i(theta_i)  (paper 002, sec. 3)."""
    exp = make_experiment(
        tmp_path,
        task_overrides={"n_agents": 4},
        algorithm_overrides={"k": k, "max_grad_norm": None},
    )
    leaves = exp.algorithm.actor_leaves(GROUP)
    with torch.no_grad():  # make the agents differ so that mixing is visible
        for p in leaves:
            p.add_(0.1 * torch.randn_like(p))
    before, grads, after, lr = _one_sgd_step(exp, _batch(exp))
    P = uniform_knn(4, k)
    for b, g, a in zip(before, grads, after):
        expected = torch.einsum("ij,j...->i...", P, b) - lr * g
        torch.testing.assert_close(a, expected, rtol=1e-5, atol=1e-6)
    if k == 0:  # no communication: independent learners
        for b, g, a in zip(before, grads, after):
            torch.testing.assert_close(a, b - lr * g)
    exp.close()


def test_full_topology_is_parameter_sharing(tmp_path):
    """k = n-1: the averaged model follows the PS update theta - eta mean_i grad L_i."""
    for order in ("mix_then_step", "step_then_mix"):
        exp = make_experiment(
            tmp_path,
            task_overrides={"n_agents": 3},
            algorithm_overrides={"k": 2, "mix_order": order, "max_grad_norm": None},
        )
        before, grads, after, lr = _one_sgd_step(exp, _batch(exp))
        for b, g, a in zip(before, grads, after):
            ps_step = b[0] - lr * g.mean(0)  # PS: one network, gradient averaged over agents
            torch.testing.assert_close(a.mean(0), ps_step, rtol=1e-5, atol=1e-6)
            if order == "step_then_mix":  # adapt-then-combine: exactly PS, agents identical
                torch.testing.assert_close(a, ps_step.expand_as(a), rtol=1e-5, atol=1e-6)
        exp.close()


def test_per_agent_gradient_clipping(tmp_path):
    exp = make_experiment(tmp_path, task_overrides={"n_agents": 3}, algorithm_overrides={"k": 0, "max_grad_norm": 1e-3})
    assert exp.config.clip_grad_val is None  # BenchMARL's joint clip is replaced ...
    assert exp.algorithm.experiment_config is exp.config
    # ... on this experiment only: a config shared with other runs keeps its clip
    from benchmarl.algorithms import MappoConfig
    from benchmarl.experiment import Experiment
    shared = tiny_experiment_config(tmp_path / "shared")
    (tmp_path / "shared").mkdir()
    task = exp.task
    decpg_run = Experiment(task=task, algorithm_config=DecpgConfig.get_from_yaml(), model_config=exp.model_config,
                           seed=0, config=shared)
    assert decpg_run.config.clip_grad_val is None and shared.clip_grad_val == 5
    mappo_run = Experiment(task=task, algorithm_config=MappoConfig.get_from_yaml(), model_config=exp.model_config,
                           seed=0, config=shared)
    assert mappo_run.config.clip_grad_val == 5
    decpg_run.close()
    mappo_run.close()
    before, grads, after, lr = _one_sgd_step(exp, _batch(exp))
    step_norm = torch.stack(
        [((b - a) / lr).reshape(3, -1).pow(2).sum(-1) for b, a in zip(before, after)]
    ).sum(0).sqrt()
    raw_norm = torch.stack([g.reshape(3, -1).pow(2).sum(-1) for g in grads]).sum(0).sqrt()
    assert torch.all(raw_norm > 1e-3)
    torch.testing.assert_close(step_norm, torch.full((3,), 1e-3), rtol=1e-3, atol=1e-7)
    exp.close()


def test_optimizer_choice_and_linear_lr_decay(tmp_path):
    exp = make_experiment(tmp_path, algorithm_overrides={"lr": 0.1, "min_lr": 0.01}, max_n_iters=4)
    algo = exp.algorithm
    assert [round(algo.lr_at(i), 6) for i in range(4)] == [0.1, 0.07, 0.04, 0.01]
    assert all(isinstance(o, torch.optim.SGD) for o in exp.optimizers[GROUP].values())
    exp.run()
    assert all(o.param_groups[0]["lr"] == pytest.approx(0.01) for o in exp.optimizers[GROUP].values())

    exp = make_experiment(tmp_path, algorithm_overrides={"optimizer": "adam", "lr": 0.003, "min_lr": 0.003})
    assert all(isinstance(o, torch.optim.Adam) for o in exp.optimizers[GROUP].values())
    assert all(o.param_groups[0]["lr"] == pytest.approx(0.003) for o in exp.optimizers[GROUP].values())
    exp.close()


class _RecordEvalParams(Callback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_evaluation_end(self, rollouts):
        self.seen.append([p.detach().clone() for p in self.experiment.algorithm.actor_leaves(GROUP)])


@pytest.mark.parametrize("mode", ["average", "local"])
def test_evaluation_uses_the_averaged_model(tmp_path, mode):
    recorder = _RecordEvalParams()
    exp = make_experiment(
        tmp_path, task_overrides={"n_agents": 3}, callbacks=[recorder],
        algorithm_overrides={"evaluation_mode": mode, "perturbed_evaluation": False},
        evaluation=True, create_json=True,
    )
    leaves = exp.algorithm.actor_leaves(GROUP)
    with torch.no_grad():
        for p in leaves:
            p.add_(torch.randn_like(p))
    local = [p.detach().clone() for p in leaves]
    exp._evaluation_loop()
    (seen,) = recorder.seen
    for s, p in zip(seen, local):
        expected = p.mean(0, keepdim=True).expand_as(p) if mode == "average" else p
        torch.testing.assert_close(s, expected)
    for p, q in zip(leaves, local):  # local models restored after evaluation
        torch.testing.assert_close(p.detach(), q)
    exp.close()


def test_perturbed_evaluation_logs_generalization_gap(tmp_path):
    exp = make_experiment(
        tmp_path, task_overrides={"n_agents": 3}, evaluation=True, loggers=["csv"],
        algorithm_overrides={"evaluation_mode": "individual"},
    )
    exp.run()
    scalars = {p.stem for p in tmp_path.rglob("scalars/*.csv")}
    for name in (
        "eval_perturbed_reward_episode_reward_mean",
        "eval_generalization_gap",
        "eval_individual_reward_episode_reward_mean",
        "decpg_agents_actor_consensus_distance",
        "decpg_agents_actor_gradient_disagreement",
        "decpg_agents_actor_update_variance",
        "decpg_agents_critic_consensus_distance",
        "decpg_agents_spectral_gap",
        "decpg_lr",
    ):
        assert name in scalars, name
    gap = tmp_path.rglob("scalars/eval_generalization_gap.csv").__next__().read_text().strip().splitlines()
    assert len(gap) == 2 and all(len(line.split(",")) == 2 for line in gap)


def test_discrete_actions_with_pettingzoo(tmp_path):
    exp = make_experiment(tmp_path, task="pettingzoo/simple_spread", prefer_continuous_actions=False, evaluation=True)
    (group,) = exp.group_map
    assert "Categorical" in type(exp.action_spec[group, "action"]).__name__
    assert exp.state_spec is not None  # centralized critic on the global state, one per agent
    assert all(p.shape[0] == 3 for p in exp.algorithm.critic_leaves(group))
    exp.run()
    assert exp.n_iters_performed == 2


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"k": -1}, "k must be >= 0"),
        ({"min_lr": 0.1, "lr": 0.01}, r"min_lr \(0.1\) > lr \(0.01\)"),
        ({"topology": "star"}, "unknown topology 'star'"),
        ({"optimizer": "rmsprop"}, "unknown optimizer 'rmsprop'"),
        ({"mixing": "max_degree"}, "unknown mixing rule"),
        ({"evaluation_mode": "best"}, "unknown evaluation_mode"),
        ({"link_failure": 1.0}, "link_failure"),
        ({"log_link_bytes": "yes"}, r"decpg: log_link_bytes must be true or false, got 'yes'"),
        ({"value_norm": "yes"}, r"decpg: value_norm must be true or false, got .yes."),
        ({"topology": "custom"}, "needs algorithm.adjacency"),
        ({"consensus_params": ["dgat"]}, r"decpg: consensus_params \['dgat'\] has unknown.*=\[actor,critic\]"),
        ({"link_latency": -1}, r"decpg: link_latency must be an integer number of mixing steps >= 0, got -1"),
        ({"link_latency": 2.0}, r"decpg: link_latency must be an integer .*got 2\.0"),
        ({"link_latency": True}, r"decpg: link_latency must be an integer .*got True"),
        ({"link_latency": 3, "consensus_params": []},
         r"decpg: link_latency=3 delays .* consensus_params is \[\].*algorithm\.consensus_params=\[actor,critic\]"),
    ],
)
def test_config_errors(overrides, match):
    kwargs = {**DecpgConfig.get_from_yaml().__dict__, **overrides}
    with pytest.raises(ValueError, match=match):
        DecpgConfig(**kwargs)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"k": 3}, r"algorithm.k=3 does not fit group\(s\) 'agents' \(3 agents, so at most k=2\).*set algorithm.k=2 or less"),
        ({"topology": "custom", "adjacency": [[0, 1], [1, 0]]}, "2 rows but group 'agents' of task balance has 3 agents"),
        ({"topology": "custom", "adjacency": [[0, 1, 0], [0, 0, 1], [1, 0, 0]], "mixing": "metropolis"},
         "undirected"),
        ({"topology": "custom", "adjacency": [[0, 1, 0], [1, 0, 0], [0, 0, 0]]}, "connected"),
    ],
)
def test_task_dependent_errors_before_training(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        make_experiment(tmp_path, task_overrides={"n_agents": 3}, algorithm_overrides=overrides)
    assert list(tmp_path.iterdir()) == []  # no half-written run folder left behind


def test_custom_topology_and_link_failure(tmp_path):
    ring = [[0, 1, 1], [1, 0, 1], [1, 1, 0]]
    exp = make_experiment(
        tmp_path, task_overrides={"n_agents": 3},
        algorithm_overrides={"topology": "custom", "adjacency": ring, "mixing": "metropolis", "link_failure": 0.5},
    )
    exp.run()
    assert exp.n_iters_performed == 2


@pytest.mark.parametrize("link_failure", [0.0, 0.5])
def test_logs_links_up_and_spectral_gap_of_the_matrix_each_step_used(tmp_path, link_failure):
    """Issue 16.8: with link failures the logged graph is the one the steps mixed with."""
    import csv

    import numpy as np

    exp = make_experiment(
        tmp_path, task="coordsum/3x10-30", algorithm_overrides={"k": 2, "link_failure": link_failure},
        max_n_iters=1, on_policy_minibatch_size=10, loggers=["csv"],
    )
    mixer = exp.algorithm.callback.mixers[(GROUP, "actor")]
    used = []
    exp.optimizers[GROUP]["loss_objective"].register_step_post_hook(
        lambda *_: used.append(mixer.matrix().detach().clone())
    )
    exp.run()
    assert len(used) == 6  # 60 frames, minibatches of 10

    def logged(name):
        with open(exp.folder_name / exp.name / "scalars" / f"decpg_{GROUP}_actor_{name}.csv") as f:
            return float(next(csv.reader(f))[1])

    # oracle: 3 agents, k = 2 is the full graph (3 links, nominal W = 1/3, spectral gap 1)
    off = ~np.eye(3, dtype=bool)
    links_up = [((W.numpy() != 0) & off).sum() / off.sum() for W in used]
    gaps = [1 - sorted(np.abs(np.linalg.eigvals(W.double().numpy())))[-2] for W in used]
    assert logged("links_up") == pytest.approx(np.mean(links_up))
    assert logged("spectral_gap_used") == pytest.approx(np.mean(gaps), abs=1e-6)
    if link_failure == 0.0:
        assert logged("links_up") == 1.0 and logged("spectral_gap_used") == pytest.approx(1.0, abs=1e-6)
    else:
        assert 0.0 < logged("links_up") < 1.0 and logged("spectral_gap_used") < 1.0 - 1e-3


def test_consensus_params_chooses_the_mixed_networks(tmp_path):
    """consensus_params=[actor]: the actor is mixed (full graph: agents equal after a step), the critic is not."""
    exp = make_experiment(tmp_path, task_overrides={"n_agents": 3},
                          algorithm_overrides={"topology": "full", "consensus_params": ["actor"],
                                               "mix_order": "step_then_mix"})
    algo = exp.algorithm
    with torch.no_grad():  # agents' networks differ, so that mixing is visible
        for p in algo.actor_leaves(GROUP) + algo.critic_leaves(GROUP):
            p.add_(0.1 * torch.randn_like(p))
    batch = _batch(exp)
    for key in ("loss_objective", "loss_critic"):
        _grads(exp, batch, key)
        exp.optimizers[GROUP][key].step()
    actor, critic = algo.actor_leaves(GROUP), algo.critic_leaves(GROUP)
    assert float(consensus_distance(actor)) < 1e-10
    assert float(consensus_distance(critic)) > 1e-3  # not averaged
    exp.close()


# ------------------------------------------------------------------ graph presets (paper 002's k sweep)
#: what each preset changes in decpg.yaml; every other key must stay decpg's
PRESET_CHANGES = {"decpg_shared": {"topology": "full"}, "decpg_k0": {"k": 0}}


@pytest.mark.parametrize("name", sorted(PRESET_CHANGES))
def test_graph_presets_are_decpg_with_another_graph(name):
    from benchmarl_decentral.algorithms._yaml import load_algorithm_yaml

    base, preset = load_algorithm_yaml("decpg"), load_algorithm_yaml(name)
    assert preset == {**base, **PRESET_CHANGES[name]}


@pytest.mark.parametrize("name, expected", [("decpg_shared", lambda n: torch.full((n, n), 1.0 / n)),
                                            ("decpg_k0", lambda n: torch.eye(n))])
def test_graph_presets_name_their_runs_and_mix_as_their_graph(tmp_path, name, expected):
    from benchmarl_decentral.algorithms import Decpg

    exp = make_experiment(tmp_path, algorithm=name, task_overrides={"n_agents": 4})
    assert exp.algorithm_name == name and isinstance(exp.algorithm, Decpg)
    for net in ("actor", "critic"):
        torch.testing.assert_close(exp.algorithm.callback.mixers[(GROUP, net)].matrix(), expected(4))
    exp.close()


def test_graph_presets_refuse_a_k_their_graph_ignores():
    from benchmarl_decentral.algorithms import DecpgSharedConfig

    config = DecpgSharedConfig.get_from_yaml()
    config.k = 5
    with pytest.raises(ValueError, match="k"):
        config.validate()


def test_value_norm_fits_each_agents_normalised_targets(tmp_path):
    """value_norm: GAE reads the de-normalised value; the critic loss fits the raw output to each agent's
    own normalised targets, with moments from that agent's targets only (no cross-agent statistic)."""
    exp = make_experiment(tmp_path, task_overrides={"n_agents": 3}, algorithm_overrides={"value_norm": True})
    norm = exp.algorithm.value_norms[GROUP]
    batch = _batch(exp)  # process_batch: GAE with mean 0 / std 1, then the moments of this batch's targets
    target = batch.get((GROUP, "value_target"))
    torch.testing.assert_close(norm.mean, target.mean(0))
    torch.testing.assert_close(norm.var, target.var(0, unbiased=False))
    # agent 1's targets alone change agent 1's moments only
    others = ValueNorm(3)
    shifted = target.clone()
    shifted[:, 1] = 100.0 * shifted[:, 1] - 7.0
    others.update(shifted)
    torch.testing.assert_close(others.mean[[0, 2]], norm.mean[[0, 2]])
    assert not torch.allclose(others.mean[1], norm.mean[1])
    # the critic as GAE calls it returns sigma_i * v_i + mu_i; inside the loss it fits v_i to (target - mu_i) / sigma_i
    loss = exp.losses[GROUP]
    with torch.no_grad():
        value = loss.critic_network(batch.clone(False))[GROUP, "state_value"]
        norm.passthrough = True
        raw = loss.critic_network(batch.clone(False))[GROUP, "state_value"]
        norm.passthrough = False
    torch.testing.assert_close(value, raw * norm.std() + norm.mean)
    out = loss(batch)
    assert not norm.passthrough  # reset after the loss
    expected = torch.nn.functional.smooth_l1_loss(raw, norm.normalize(target), reduction="none").mean()
    torch.testing.assert_close(out["loss_critic"].detach(), expected * loss.critic_coeff)
    exp.close()
