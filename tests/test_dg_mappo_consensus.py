"""DG-MAPPO options of issue 14: consensus over any subset of networks, graph checks, value norm, presets."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_module

from benchmarl_decentral.algorithms import DgMappoConfig, DgMappoPaperConfig
from benchmarl_decentral.algorithms.dg_mappo import DGAT_KEY, LOSS_KEY, ValueNorm

from conftest import make_experiment

GROUP = "agents"


def navigation(tmp_path, n_agents=3, **algorithm_overrides):
    return make_experiment(
        tmp_path, algorithm="dg_mappo", task="vmas/navigation", task_overrides={"n_agents": n_agents},
        algorithm_overrides=algorithm_overrides,
    )


def _batch(exp):
    batch = next(iter(exp.collector)).exclude(*exp._get_excluded_keys(GROUP))
    return exp.algorithm.process_batch(GROUP, batch)


def _train_step(exp, flat):
    algo, optimizer = exp.algorithm, exp.optimizers[GROUP][LOSS_KEY]
    optimizer.zero_grad(set_to_none=True)
    algo.process_loss_vals(GROUP, exp.losses[GROUP](flat))[LOSS_KEY].backward()
    optimizer.step()


def _agents_equal(leaves):
    return all(torch.allclose(p, p[:1].expand_as(p), atol=1e-6) for p in leaves)


@pytest.mark.parametrize(
    "consensus_params, mix_every, mixes_per_update",
    [(["dgat", "actor", "critic"], "step", 1), (["dgat", "actor", "critic"], "update", 3), (["dgat"], "step", 1)],
)
def test_consensus_over_the_chosen_networks(tmp_path, consensus_params, mix_every, mixes_per_update):
    """Full graph: eq. 10 gives c(i, j) = 1/n, one mixing makes the mixed networks equal across agents."""
    exp = navigation(tmp_path, topology="full", consensus_params=consensus_params, mix_every=mix_every,
                     mixes_per_update=mixes_per_update)
    algo = exp.algorithm
    nets = algo.network_leaves(GROUP)
    for name in ("dgat", "actor", "critic"):  # D-SGD starts the mixed networks from a common point (eq. 9)
        assert _agents_equal(nets[name]) == (name in consensus_params), name
    with torch.no_grad():  # then the agents' networks differ, so that mixing is visible
        for p in [p for leaves in nets.values() for p in leaves]:
            p.add_(0.1 * torch.randn_like(p))
    batch = _batch(exp)
    _train_step(exp, batch.reshape(-1))
    if mix_every == "update":  # nothing mixed yet: the update's mixings come after its optimizer steps
        assert not _agents_equal(nets["actor"])
        algo.callback.on_train_end(None, GROUP)
    for name in ("dgat", "actor", "critic"):
        assert _agents_equal(nets[name]) == (name in consensus_params), name
    exp.close()


@pytest.mark.parametrize("mix_every, mixes_per_update", [("step", 1), ("update", 3)])
def test_link_latency_mixes_with_the_neighbours_vectors_of_d_mixings_ago(tmp_path, mix_every, mixes_per_update):
    """link_latency=2 on the radius graph (W changes every minibatch): every mixing t applies
    x_i <- W_s,ii x_i(t) + sum_{j != i} W_s,ij x_j(s), s = max(t - 2, 0), with W_s and x(s) as mixing s got them."""
    latency = 2
    exp = make_experiment(
        tmp_path, algorithm="dg_mappo", task="vmas/navigation", task_overrides={"n_agents": 3}, max_n_iters=3,
        algorithm_overrides={"link_latency": latency, "mix_every": mix_every, "mixes_per_update": mixes_per_update},
    )
    callback = exp.algorithm.callback
    mixed = callback._mixed[GROUP]
    flat = lambda: torch.cat([p.detach().reshape(3, -1) for p in mixed], 1).double()  # noqa: E731
    seen = []  # per mixing: (W, x before, x after)
    mix_with = callback._mix_with

    def recording(group, W):
        before = flat()
        mix_with(group, W)
        seen.append((W.detach().double().clone(), before, flat()))

    callback._mix_with = recording
    exp.run()
    per_iteration = 2 if mix_every == "step" else mixes_per_update  # 2 minibatches, or the update's mixings
    assert len(seen) == 3 * per_iteration and callback.histories[GROUP].steps == len(seen)
    assert any(not torch.equal(seen[0][0], W) for W, _, _ in seen)  # the graph changed between mixings
    for t, (_, x, after) in enumerate(seen):
        W_s, x_s, _ = seen[max(t - latency, 0)]
        own = W_s.diagonal().unsqueeze(1)
        expected = own * x + (W_s - torch.diag_embed(W_s.diagonal())) @ x_s
        torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-6)
    # the delay is not a no-op: the synchronous step would have given another result
    W, x, after = seen[-1]
    assert not torch.allclose(after, W @ x, atol=1e-5)
    exp.close()


def test_next_observation_dgat_is_reused_exactly(tmp_path):
    """process_batch computes D-GAT only at the last step and episode ends; the result equals a full recompute."""
    exp = make_experiment(
        tmp_path, algorithm="dg_mappo", task="vmas/navigation", task_overrides={"n_agents": 3, "max_steps": 7},
        algorithm_overrides={"topology": "radius", "radius": 1.0, "position_dims": [0, 2], "num_hops": 2},
    )
    batch = _batch(exp)
    assert batch.get(("next", "done"))[:, :-1].any()  # episode ends inside the batch: next != the following step
    comm = exp.algorithm.communication[GROUP]
    reference = batch.get("next").select(*comm.in_keys).clone()
    with torch.no_grad():
        comm(reference)
    torch.testing.assert_close(batch.get(("next", GROUP, DGAT_KEY)), reference.get((GROUP, DGAT_KEY)))
    exp.close()


def test_value_norm_normalises_each_agents_targets(tmp_path):
    norm = ValueNorm(2)
    chunks = [torch.randn(5, 7, 2, 1) * torch.tensor([[1.0], [10.0]]) + torch.tensor([[0.0], [3.0]]) for _ in range(3)]
    for c in chunks:
        norm.update(c)
    x = torch.cat([c.reshape(-1, 2, 1) for c in chunks])
    torch.testing.assert_close(norm.mean, x.mean(0))
    torch.testing.assert_close(norm.var, x.var(0, unbiased=False))

    exp = navigation(tmp_path, value_norm=True)
    batch = _batch(exp)  # GAE with the critic's denormalised values, then the moments are updated
    stats = exp.algorithm.value_norms[GROUP]
    targets = batch.get((GROUP, "value_target")).reshape(-1, 3, 1)
    torch.testing.assert_close(stats.mean, targets.mean(0))
    critic = exp.losses[GROUP].critic_network  # the critic of the loss and of GAE ends with these moments
    sample = batch.reshape(-1)[:8].select((GROUP, DGAT_KEY))
    with torch.no_grad():
        stats.passthrough = True
        normalised = critic(sample.clone()).get((GROUP, "state_value"))
        stats.passthrough = False
        value = critic(sample.clone()).get((GROUP, "state_value"))
    torch.testing.assert_close(value, normalised * stats.var.sqrt() + stats.mean)
    out = exp.losses[GROUP](batch.reshape(-1))
    assert torch.isfinite(out["loss_critic"]) and not any(isinstance(p, ValueNorm) for p in out.values())
    exp.close()


def test_actor_output_gain_and_no_buffer_in_the_optimizer(tmp_path):
    exp = navigation(tmp_path, topology="ring", actor_output_gain=0.01)
    algo = exp.algorithm
    actor = algo.network_leaves(GROUP)["actor"]
    weight = [p for p in actor if p.dim() == 3][-1]  # (n, out, in): the output layer
    eye = torch.eye(weight.shape[1])
    torch.testing.assert_close(weight @ weight.transpose(1, 2), (0.01**2 * eye).expand(3, -1, -1))
    params = exp.optimizers[GROUP][LOSS_KEY].param_groups[0]["params"]
    assert all(isinstance(p, torch.nn.Parameter) and p.is_floating_point() for p in params)
    assert all(p is not algo.communication[GROUP].static_adjacency for p in params)
    exp.close()


def test_disconnected_custom_graph_is_refused_before_training(tmp_path):
    adjacency = [[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]]
    with pytest.raises(ValueError, match=r"not connected.*Assumption 1.*algorithm\.topology=full or ring"):
        navigation(tmp_path, n_agents=4, topology="custom", adjacency=adjacency)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"consensus_params": ["dgat", "policy"]}, r"unknown \['policy'\].*consensus_params=\[dgat,actor,critic\]"),
        ({"consensus_params": ["actor", "actor"]}, "a repeated name"),
        ({"consensus_params": "actor"}, r"must be a list.*\[\] mixes nothing"),
        ({"mix_every": "epoch"}, r"unknown mix_every 'epoch'.*algorithm\.mix_every=step"),
        ({"mixes_per_update": 0}, r"mixes_per_update must be an int >= 1.*algorithm\.mixes_per_update=3"),
        ({"mixes_per_update": 3}, r"only read with mix_every=update.*algorithm\.mix_every=update"),
        ({"graph_kwargs": "smax", "topology": "visibility"}, r"graph_kwargs must be a mapping.*algorithm\.graph_kwargs=\{layout:smax\}"),
        ({"actor_output_gain": 0.0}, r"actor_output_gain must be > 0, auto or null.*actor_output_gain=0\.01"),
        ({"actor_output_gain": "small"}, r"actor_output_gain must be > 0, auto or null.*got 'small'"),
        ({"link_latency": -2}, r"dg_mappo: link_latency must be an integer number of mixing steps >= 0, got -2"),
        ({"link_latency": 1.5}, r"dg_mappo: link_latency must be an integer .*got 1\.5; set e\.g\."),
        ({"link_latency": 2, "consensus_params": []},
         r"dg_mappo: link_latency=2 delays the DSGD mixing messages, but consensus_params is \[\].*"
         r"algorithm\.link_latency=0 or .*consensus_params=\[dgat,actor,critic\]"),
    ],
)
def test_new_keys_are_validated_with_the_fix(overrides, match):
    kwargs = {**DgMappoConfig.get_from_yaml().__dict__, **overrides}
    with pytest.raises(ValueError, match=match):
        DgMappoConfig(**kwargs)


def test_graph_kwargs_and_consensus_params_from_the_command_line():
    from benchmarl.hydra_config import load_algorithm_config_from_hydra

    with initialize_config_module(config_module="benchmarl.conf", version_base=None):
        cfg = compose(config_name="config", overrides=[
            "algorithm=dg_mappo", "task=vmas/navigation", "algorithm.topology=visibility",
            "algorithm.graph_kwargs={layout:smax}",
            "algorithm.consensus_params=[dgat,actor,critic]", "algorithm.mix_every=update",
            "algorithm.mixes_per_update=3",
        ])
        paper = compose(config_name="config", overrides=["algorithm=dg_mappo_paper", "task=vmas/navigation"])
    algo = load_algorithm_config_from_hydra(cfg.algorithm)
    assert dict(algo.graph_kwargs) == {"layout": "smax"}
    assert list(algo.consensus_params) == ["dgat", "actor", "critic"] and algo.mixes_per_update == 3
    preset = load_algorithm_config_from_hydra(paper.algorithm)
    assert isinstance(preset, DgMappoPaperConfig) and preset == DgMappoPaperConfig.get_from_yaml()
    assert (preset.num_hops, preset.clip_epsilon, preset.actor_output_gain) == (None, 0.05, 0.01)
    assert preset.associated_class().__name__.lower() == "dg_mappo_paper"
