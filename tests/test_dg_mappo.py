"""DG-MAPPO (paper 000, sec. 3.2, Algorithm 1) on real BenchMARL experiments, tiny sizes, CPU."""

from __future__ import annotations

import copy

import pytest
import torch

from benchmarl_decentral.algorithms import DgMappoConfig
from benchmarl_decentral.algorithms.dg_mappo import DGAT_KEY, LOSS_KEY
from benchmarl_decentral.consensus import radius, row
from benchmarl_decentral.nn import consensus_loss

from conftest import make_experiment, run_cli

GROUP = "agents"
RADIUS = {"topology": "radius", "radius": 1.5, "position_dims": [0, 2]}  # vmas/navigation: pos = obs[..., 0:2]


def navigation(tmp_path, n_agents=3, **algorithm_overrides):
    return make_experiment(
        tmp_path, algorithm="dg_mappo", task="vmas/navigation", task_overrides={"n_agents": n_agents},
        # the radius options go with topology=radius only (other topologies refuse them)
        algorithm_overrides={**(RADIUS if algorithm_overrides.get("topology", "radius") == "radius" else {}),
                             **algorithm_overrides},
    )


def _batch(exp, group=GROUP):
    batch = next(iter(exp.collector))
    batch = batch.exclude(*exp._get_excluded_keys(group))
    return exp.algorithm.process_batch(group, batch).reshape(-1)


def _graphs(batch, r=RADIUS["radius"], group=GROUP):
    """The radius graphs of a batch, computed independently of the model."""
    return radius(batch.get((group, "observation"))[..., 0:2], r)


def _zero_grad(exp, group=GROUP):
    exp.optimizers[group][LOSS_KEY].zero_grad(set_to_none=True)


# ------------------------------------------------------------------ structure
def test_every_agent_has_its_own_networks_and_one_dgat_for_actor_and_critic(tmp_path):
    exp = navigation(tmp_path)
    algo, loss = exp.algorithm, exp.losses[GROUP]
    nets = algo.network_leaves(GROUP)
    assert all(nets[name] and all(p.shape[0] == 3 for p in nets[name]) for name in ("dgat", "actor", "critic"))
    # D-SGD starts from a common psi_0; the actor/critic draw their own initialisation
    assert all(torch.equal(p, p[:1].expand_as(p)) for p in nets["dgat"])
    # one D-GAT module: the first module of the actor; the critic reads its output õ only
    comm = algo.communication[GROUP]
    assert any(m is comm for m in loss.actor_network.modules())
    assert loss.critic_network.in_keys == [(GROUP, DGAT_KEY)]
    assert not loss.critic_network.centralised and exp.state_spec is None
    # one optimizer over every parameter exactly once (Algorithm 1, line 17)
    (key,) = exp.optimizers[GROUP]
    params = exp.optimizers[GROUP][key].param_groups[0]["params"]
    assert key == LOSS_KEY and len({id(p) for p in params}) == len(params)
    assert {id(p) for p in params} == {id(p) for leaves in nets.values() for p in leaves}
    assert exp.optimizers[GROUP][key].param_groups[0]["lr"] == 1e-3  # the YAML's lr (set by the callback)
    assert exp.config.clip_grad_val is None  # replaced by the per-agent clip
    exp.close()


def test_critic_and_actor_of_agent_i_see_others_only_through_dgat_messages(tmp_path):
    """Agent 0 receives from agent 1 only (path 0-1-2, K=1): agent 2's observation cannot reach it."""
    exp = make_experiment(
        tmp_path, algorithm="dg_mappo", task="vmas/navigation", task_overrides={"n_agents": 3},
        algorithm_overrides={"topology": "custom", "adjacency": [[0, 1, 0], [1, 0, 1], [0, 1, 0]], "num_hops": 1},
    )
    loss = exp.losses[GROUP]
    batch = _batch(exp).exclude((GROUP, DGAT_KEY))

    def outputs(td):
        td = loss.actor_network(td.clone())
        td = loss.critic_network(td)
        return td.get((GROUP, "loc")), td.get((GROUP, "state_value"))

    loc, value = outputs(batch)
    for mover, moved in ((2, [1, 2]), (1, [0, 1, 2])):
        other = batch.clone()
        other.get((GROUP, "observation"))[:, mover] += 1.0
        loc2, value2 = outputs(other)
        for i in range(3):
            assert (not torch.allclose(value[:, i], value2[:, i])) == (i in moved), (mover, i)
            assert (not torch.allclose(loc[:, i], loc2[:, i])) == (i in moved), (mover, i)
    exp.close()


# ------------------------------------------------------------------ losses
def test_team_reward_is_the_mean_of_the_agents_rewards(tmp_path):
    exp = navigation(tmp_path)
    raw = next(iter(exp.collector)).exclude(*exp._get_excluded_keys(GROUP))
    reward = raw.get(("next", GROUP, "reward")).clone()
    assert not torch.allclose(reward, reward.mean(-2, keepdim=True).expand_as(reward))  # navigation: per agent
    processed = exp.algorithm.process_batch(GROUP, raw)
    torch.testing.assert_close(processed.get(("next", GROUP, "reward")), reward.mean(-2, keepdim=True).expand_as(reward))
    exp.close()


def test_dgat_is_recomputed_from_the_stored_observations(tmp_path):
    """The õ stored in the buffer is ignored: corrupting it changes no loss (the reference code's bug)."""
    exp = navigation(tmp_path)
    batch = _batch(exp)
    loss = exp.losses[GROUP]
    clean = loss(batch)
    corrupted = batch.clone()
    corrupted.get((GROUP, DGAT_KEY)).fill_(1e3)
    dirty = loss(corrupted)
    for key in ("loss_objective", "loss_critic", "loss_consensus"):
        torch.testing.assert_close(clean[key], dirty[key])
    exp.close()


def test_consensus_loss_is_eq_11_on_each_samples_graph(tmp_path):
    exp = navigation(tmp_path, alpha_consensus=20.0)
    batch = _batch(exp)
    comm = exp.algorithm.communication[GROUP]
    with torch.no_grad():
        h = comm(batch.exclude((GROUP, DGAT_KEY))).get((GROUP, DGAT_KEY))[..., 18:]  # ô_i (obs has 18 dims)
        expected = 20.0 * consensus_loss(h, _graphs(batch))
        value = exp.losses[GROUP](batch)["loss_consensus"]
    torch.testing.assert_close(value, expected)
    assert float(value) > 0
    exp.close()


def test_summed_loss_of_algorithm_1(tmp_path):
    exp = navigation(tmp_path)
    vals = exp.losses[GROUP](_batch(exp))
    total = exp.algorithm.process_loss_vals(GROUP, vals.clone())
    assert list(total.keys()) == [LOSS_KEY]
    expected = 3 * sum(vals[k] for k in ("loss_objective", "loss_entropy", "loss_critic", "loss_consensus"))
    torch.testing.assert_close(total[LOSS_KEY], expected)
    exp.close()


def test_dgat_gets_gradient_from_ppo_critic_and_consensus_losses_separately(tmp_path):
    exp = navigation(tmp_path)
    batch = _batch(exp)
    graphs = _graphs(batch)
    assert graphs.any(-1).any(0).all()  # every agent has a neighbour somewhere: attention is not trivial
    nets = exp.algorithm.network_leaves(GROUP)
    for key in ("loss_objective", "loss_critic", "loss_consensus"):
        _zero_grad(exp)
        exp.losses[GROUP](batch)[key].backward()
        for p in nets["dgat"]:
            assert p.grad is not None, key
            per_agent = p.grad.reshape(3, -1).abs().sum(-1)
            assert (per_agent > 0).all(), (key, tuple(p.shape), per_agent)
        # and only where it belongs: the PPO loss does not touch the critic, nor the critic loss the actor
        if key == "loss_objective":
            assert all(p.grad is None or not p.grad.any() for p in nets["critic"])
        if key == "loss_critic":
            assert all(p.grad is None or not p.grad.any() for p in nets["actor"])
    exp.close()


def test_discrete_actions_on_pettingzoo_simple_spread(tmp_path):
    """MPE simple_spread (positions in obs[..., 2:4]) with categorical actions: D-GAT trains through the PPO loss."""
    exp = make_experiment(
        tmp_path, algorithm="dg_mappo", task="pettingzoo/simple_spread", prefer_continuous_actions=False,
        algorithm_overrides={"topology": "radius", "radius": 1.0, "position_dims": [2, 4]},
    )
    (group,) = exp.group_map
    assert "Categorical" in type(exp.action_spec[group, "action"]).__name__
    batch = _batch(exp, group)
    _zero_grad(exp, group)
    exp.losses[group](batch)["loss_objective"].backward()
    assert all(p.grad is not None and p.grad.any() for p in exp.algorithm.dgat_leaves(group))
    exp.close()


# ------------------------------------------------------------------ D-SGD
def _step(exp, batch, mixing: bool):
    algo = exp.algorithm
    algo.callback.mixing = mixing
    _zero_grad(exp)
    torch.manual_seed(0)  # TanhNormal's entropy is a sampled estimate: same draws in every call
    loss = algo.process_loss_vals(GROUP, exp.losses[GROUP](batch))[LOSS_KEY]
    loss.backward()
    exp.optimizers[GROUP][LOSS_KEY].step()
    return {name: [p.detach().clone() for p in leaves] for name, leaves in algo.network_leaves(GROUP).items()}


@pytest.mark.parametrize("topology, mixing_graph", [("ring", "mean"), ("radius", "mean"), ("radius", "majority")])
def test_dsgd_mixes_only_dgat_with_eq_10_after_the_local_step(tmp_path, topology, mixing_graph):
    """psi_i <- sum_j c(i, j) psi_j^{t+1/2}, c(i, j) = 1/|N_i| (eqs. 9-10); actor and critic untouched."""
    overrides = {"topology": "ring"} if topology == "ring" else {"radius": 1.0}
    exp = navigation(tmp_path, n_agents=4, mixing_graph=mixing_graph, consensus_params=["dgat"], **overrides)
    algo, optimizer = exp.algorithm, exp.optimizers[GROUP][LOSS_KEY]
    with torch.no_grad():  # agents' D-GATs differ, so that mixing is visible
        for p in algo.dgat_leaves(GROUP):
            p.add_(0.1 * torch.randn_like(p))
    batch = _batch(exp)
    params = [p for leaves in algo.network_leaves(GROUP).values() for p in leaves]
    start = [p.detach().clone() for p in params]
    opt_state = copy.deepcopy(optimizer.state_dict())
    local = _step(exp, batch, mixing=False)  # psi^{t+1/2}: the local Adam step alone
    with torch.no_grad():
        for p, s in zip(params, start):
            p.copy_(s)
    optimizer.load_state_dict(opt_state)
    mixed = _step(exp, batch, mixing=True)

    graphs = _graphs(batch, r=1.0)
    if topology == "ring":
        W = row(torch.tensor([[0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0]], dtype=torch.bool))
    elif mixing_graph == "mean":  # the average of the samples' eq. 10 matrices
        assert not torch.equal(graphs[:1].expand_as(graphs), graphs)  # the graph did change within the batch
        W = torch.stack([row(g) for g in graphs]).mean(0)
    else:  # eq. 10 on the majority graph: an irregular one, so that 1/|N_i| differs between agents
        graph = graphs.float().mean(0) >= 0.5
        assert len(set(graph.sum(-1).tolist())) > 1
        W = row(graph)
    torch.testing.assert_close(W.sum(-1), torch.ones(4))
    assert not torch.allclose(W, torch.eye(4))
    for half, full in zip(local["dgat"], mixed["dgat"]):
        torch.testing.assert_close(full, torch.einsum("ij,j...->i...", W, half), rtol=1e-5, atol=1e-6)
    for name in ("actor", "critic"):
        for a, b in zip(local[name], mixed[name]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    exp.close()


def test_per_agent_gradient_clipping(tmp_path):
    exp = navigation(tmp_path, max_grad_norm=1e-3)
    _step(exp, _batch(exp), mixing=True)
    for leaves in exp.algorithm.network_leaves(GROUP).values():
        sq = sum(p.grad.pow(2).reshape(3, -1).sum(-1) for p in leaves if p.grad is not None)
        assert (sq.sqrt() <= 1e-3 * (1 + 1e-4)).all()
    exp.close()


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"topology": "radius", "radius": 0.5}, r"set algorithm\.position_dims=\[start,stop\]"),
        ({"topology": "radius", "position_dims": [0, 2]}, r"set algorithm\.radius"),
        ({"num_hops": 0}, "num_hops"),
        ({"heads": 0}, "heads must be an int >= 1"),
        ({"value": "mean"}, "unknown value mode 'mean'"),
        ({"add_self_loops": False}, r"N\^i including agent i itself.*algorithm\.add_self_loops=true"),
        ({"alpha_consensus": -1.0}, "alpha_consensus must be >= 0"),
        ({"mixing_graph": "last"}, "unknown mixing_graph 'last'"),
        ({"loss_critic_type": "huber"}, "unknown loss_critic_type 'huber'"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
    ],
)
def test_config_errors(overrides, match):
    kwargs = {**DgMappoConfig.get_from_yaml().__dict__, **overrides}
    with pytest.raises(ValueError, match=match):
        DgMappoConfig(**kwargs)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"position_dims": [16, 20]}, r"position_dims=\[16, 20\] is outside"),
        ({"topology": "custom", "adjacency": [[0, 1], [1, 0]]}, "2 rows but group 'agents' of task navigation has 3 agents"),
    ],
)
def test_task_dependent_errors_before_training(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        navigation(tmp_path, **overrides)
    assert list(tmp_path.iterdir()) == []  # no half-written run folder left behind


# ------------------------------------------------------------------ end to end
def _ok(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_cli_vmas_navigation_radius_graph_continuous(tmp_path, tiny):
    _ok(run_cli(["run", "algorithm=dg_mappo", "task=vmas/navigation", "task.max_steps=20",
                 "algorithm.topology=radius", "algorithm.radius=0.5", "algorithm.position_dims=[0,2]",
                 "algorithm.hidden_channels=16", *tiny], tmp_path))
    names = {p.name for p in tmp_path.rglob("scalars/*.csv")}
    for metric in ("average_degree", "average_degree_episode_end", "disconnected_fraction",
                   "dgat_consensus_distance", "mixing_self_weight"):
        assert f"dg_mappo_agents_{metric}.csv" in names, metric
    assert "train_agents_loss_consensus.csv" in names and "eval_reward_episode_reward_mean.csv" in names
    degree = next(tmp_path.rglob("scalars/dg_mappo_agents_average_degree.csv")).read_text().split()
    assert all(0.0 <= float(line.split(",")[1]) <= 2.0 for line in degree)  # 3 agents: degree in [0, n-1]


@pytest.mark.slow
def test_cli_pettingzoo_simple_spread_discrete(tmp_path, tiny):
    """simple_spread is continuous by default in BenchMARL; prefer_continuous_actions=false makes it discrete."""
    result = _ok(run_cli(["run", "algorithm=dg_mappo", "task=pettingzoo/simple_spread", "task.max_cycles=20",
                          "experiment.prefer_continuous_actions=false", "algorithm.topology=radius",
                          "algorithm.radius=1.0", "algorithm.position_dims=[2,4]", "algorithm.hidden_channels=16",
                          *tiny], tmp_path))
    assert "Algorithm: dg_mappo, Task: pettingzoo/simple_spread" in result.stdout
    assert list(tmp_path.rglob("scalars/dg_mappo_agent_dgat_consensus_distance.csv"))
