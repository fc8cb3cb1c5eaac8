"""DG-MAPPO's default communication graph (topology: auto) and the D-GAT message ablation (issue 14)."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_module

from benchmarl_decentral.algorithms import DgMappoConfig
from benchmarl_decentral.algorithms.dg_mappo import DGAT_KEY, LOSS_KEY, resolve_auto_topology

from conftest import make_experiment

GROUP = "agents"


@pytest.mark.parametrize(
    "family, task, topology",
    [
        ("vmas", "navigation", "radius"),
        ("smax", "3m", "visibility"),
        ("smacv2", "protoss_5_vs_5", "visibility"),
        ("vmas", "balance", "full"),
        ("pettingzoo", "simple_spread", "full"),
        ("coordsum", "3x5-12", "full"),
    ],
)
def test_auto_topology_follows_the_task(family, task, topology):
    options, reason = resolve_auto_topology(family, task)
    assert options["topology"] == topology and reason
    if topology == "radius":  # measured in benchmarks/dg_mappo_radius.py
        assert options == {"topology": "radius", "position_dims": [0, 2], "radius": 1.5}
    else:
        assert set(options) == {"topology"}  # visibility's layout comes from the task, as with topology=visibility


def test_auto_is_the_default_and_builds_the_radius_graph_on_navigation(tmp_path, capsys):
    assert DgMappoConfig.get_from_yaml().topology == "auto"
    exp = make_experiment(tmp_path, algorithm="dg_mappo", task="vmas/navigation", task_overrides={"n_agents": 4})
    lines = [line for line in capsys.readouterr().out.splitlines() if "topology=auto" in line]
    assert lines == [
        "dg_mappo: topology=auto on vmas/navigation: radius (radius graph on the agents' positions "
        "obs[..., 0:2], radius 1.5, rebuilt every step)"
    ]  # logged once
    algo = exp.algorithm
    comm = algo.communication[GROUP]
    assert (algo.requested_topology, algo.topology) == ("auto", "radius")
    assert (comm.topology, comm.radius, comm.position_dims, comm.static_adjacency) == ("radius", 1.5, (0, 2), None)
    td = exp.test_env.reset()
    pos = td.get((GROUP, "observation"))[..., 0:2]
    expected = torch.cdist(pos, pos) <= 1.5
    expected &= ~torch.eye(4, dtype=torch.bool)
    assert torch.equal(comm.communication_graph(td), expected)  # from this step's positions
    exp.close()


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"radius": 1.0}, r"algorithm\.radius=1\.0 is not read with algorithm\.topology=auto.*remove algorithm\.radius"),
        ({"position_dims": [0, 2]}, r"remove algorithm\.position_dims, or choose the graph yourself"),
        ({"graph_kwargs": {"layout": "smax"}}, r"remove algorithm\.graph_kwargs"),
        ({"add_self_loops": False}, r"set algorithm\.add_self_loops=true"),
        ({"topology": "nearest"}, r"unknown topology 'nearest'; choose one of \('auto', 'radius'"),
        ({"dgat_messages": "off"}, r"unknown dgat_messages 'off'; set algorithm\.dgat_messages=on .* or algorithm\.dgat_messages=zero"),
    ],
)
def test_auto_and_dgat_messages_are_validated_with_the_fix(overrides, match):
    kwargs = {**DgMappoConfig.get_from_yaml().__dict__, **overrides}
    with pytest.raises(ValueError, match=match):
        DgMappoConfig(**kwargs)


def test_auto_options_set_after_the_config_are_refused_before_training(tmp_path):
    """Options written onto a built config (no __post_init__) are refused when the algorithm is built."""
    with pytest.raises(ValueError, match=r"algorithm\.radius=0\.5 is not read with algorithm\.topology=auto"):
        make_experiment(tmp_path, algorithm="dg_mappo", task="vmas/navigation", algorithm_overrides={"radius": 0.5})


def test_dgat_messages_from_the_command_line():
    from benchmarl.hydra_config import load_algorithm_config_from_hydra

    with initialize_config_module(config_module="benchmarl.conf", version_base=None):
        cfg = compose(config_name="config", overrides=[
            "algorithm=dg_mappo", "task=vmas/navigation", "algorithm.dgat_messages=zero",
        ])
        default = compose(config_name="config", overrides=["algorithm=dg_mappo", "task=vmas/navigation"])
    assert load_algorithm_config_from_hydra(cfg.algorithm).dgat_messages == "zero"
    assert load_algorithm_config_from_hydra(default.algorithm).dgat_messages == "on"


@pytest.mark.parametrize("messages", ["on", "zero"])
def test_zeroed_messages_cut_the_actor_off_the_other_agents(tmp_path, messages):
    """dgat_messages=zero: agent 0's õ and action distribution ignore agent 1's observation; on: they do not."""
    exp = make_experiment(
        tmp_path, algorithm="dg_mappo", task="vmas/navigation", task_overrides={"n_agents": 3},
        algorithm_overrides={"topology": "full", "dgat_messages": messages},
    )
    actor = exp.losses[GROUP].actor_network
    td = exp.test_env.reset()
    other = td.clone()
    obs = other.get((GROUP, "observation"))
    obs[..., 1, :] += torch.randn_like(obs[..., 1, :])
    with torch.no_grad():
        a, b = actor(td.clone()), actor(other)
    keys = [(GROUP, DGAT_KEY), (GROUP, "loc")]
    same = [torch.allclose(a.get(k)[..., 0, :], b.get(k)[..., 0, :]) for k in keys]
    assert same == ([True, True] if messages == "zero" else [False, False])
    assert a.get((GROUP, DGAT_KEY)).shape[-1] == 2 * obs.shape[-1]  # õ = [o || ô]: same shape either way
    # the graph still serves eq. 11 and D-SGD: a training step runs and mixes over the full graph
    batch = next(iter(exp.collector)).exclude(*exp._get_excluded_keys(GROUP))
    flat = exp.algorithm.process_batch(GROUP, batch).reshape(-1)
    optimizer = exp.optimizers[GROUP][LOSS_KEY]
    optimizer.zero_grad(set_to_none=True)
    exp.algorithm.process_loss_vals(GROUP, exp.losses[GROUP](flat))[LOSS_KEY].backward()
    optimizer.step()
    torch.testing.assert_close(exp.losses[GROUP].mixing_matrix, torch.full((3, 3), 1 / 3))
    exp.close()


def test_fast_paths_give_the_same_results(tmp_path):
    """Issue 14's speed-ups: D-GAT without gradient in the dense form, and the clip that skips scale-1 rescaling."""
    from types import SimpleNamespace

    from benchmarl_decentral.algorithms.dg_mappo import _DgMappoCallback

    exp = make_experiment(tmp_path, algorithm="dg_mappo", task="vmas/navigation", task_overrides={"n_agents": 4})
    comm = exp.algorithm.communication[GROUP]
    batch = next(iter(exp.collector)).select(*comm.in_keys)  # radius graphs of many steps
    with torch.no_grad():
        dense = comm(batch.clone()).get((GROUP, DGAT_KEY))
    sparse = comm(batch.clone()).get((GROUP, DGAT_KEY))  # with gradient: the edge-list layer
    torch.testing.assert_close(dense, sparse.detach(), rtol=1e-5, atol=1e-6)
    exp.algorithm.set_fast_paths(False)
    with torch.no_grad():
        torch.testing.assert_close(comm(batch.clone()).get((GROUP, DGAT_KEY)), sparse.detach(), rtol=0, atol=0)
    leaves = [torch.randn(4, 3, 5), torch.randn(4, 5)]
    for max_norm in (1.0, 1e3):  # some agents clipped / none
        grads = {}
        for fast in (True, False):
            params = [torch.nn.Parameter(torch.zeros_like(g)) for g in leaves]
            for p, g in zip(params, leaves):
                p.grad = g.clone()
            _DgMappoCallback._clip([params], max_norm, SimpleNamespace(fast_paths=fast))(None, (), {})
            grads[fast] = [p.grad for p in params]
        for a, b in zip(grads[True], grads[False]):
            torch.testing.assert_close(a, b)
        norms = torch.cat([g.reshape(4, -1) for g in grads[True]], 1).norm(dim=-1)
        assert bool((norms <= max_norm + 1e-4).all())
    exp.close()


def test_fast_paths_give_the_same_optimizer_step(tmp_path):
    """One optimizer step (loss, backward, per-agent clip, D-SGD of D-GAT, actor and critic) with the fast paths
    on and off: the same parameters and losses. On, the loss reuses the graph of the D-GAT forward (built once
    per minibatch, not twice) and Adam runs its fused kernel."""
    import copy

    exp = make_experiment(tmp_path, algorithm="dg_mappo", task="vmas/navigation", task_overrides={"n_agents": 4})
    algo, optimizer, comm = exp.algorithm, exp.optimizers[GROUP][LOSS_KEY], exp.algorithm.communication[GROUP]
    assert algo.topology == "radius" and set(algo.consensus_params) == {"dgat", "actor", "critic"}
    batch = next(iter(exp.collector)).exclude(*exp._get_excluded_keys(GROUP))
    batch = algo.process_batch(GROUP, batch).reshape(-1)
    leaves = [p for net in algo.network_leaves(GROUP).values() for p in net]
    with torch.no_grad():  # agents' networks differ, so that mixing changes them
        for p in leaves:
            p.add_(0.05 * torch.randn_like(p))
    start, opt_state = [p.detach().clone() for p in leaves], copy.deepcopy(optimizer.state_dict())
    graphs = []
    build = comm.communication_graph
    comm.communication_graph = lambda *a, **k: graphs.append(1) or build(*a, **k)
    results = {}
    for fast in (False, True):
        with torch.no_grad():
            for p, s in zip(leaves, start):
                p.copy_(s)
        optimizer.load_state_dict(copy.deepcopy(opt_state))
        algo.set_fast_paths(fast)
        # fast: Adam's fused kernel (the same update to float rounding); PyTorch's default otherwise
        assert all((group["fused"], group["foreach"]) == ((True, None) if fast else (None, None))
                   for group in optimizer.param_groups)
        graphs.clear()
        optimizer.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # TanhNormal's entropy is a sampled estimate: same draws in both
        loss_vals = exp.losses[GROUP](batch)
        algo.process_loss_vals(GROUP, loss_vals)[LOSS_KEY].backward()
        optimizer.step()
        results[fast] = ([p.detach().clone() for p in leaves], loss_vals.detach(), len(graphs))
    assert (results[False][2], results[True][2]) == (2, 1)  # the graph: D-GAT's forward and the loss / once
    assert not torch.allclose(results[True][0][0], start[0])  # the step did move the parameters
    for a, b in zip(results[True][0], results[False][0]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for key in ("loss_objective", "loss_critic", "loss_consensus", "loss_entropy"):
        torch.testing.assert_close(results[True][1].get(key), results[False][1].get(key))
    exp.close()
