"""Ally visibility as the communication topology of DecPG and MATRPO (issue 6).

Pure-torch parts (mixing over a minibatch of graphs, components, ADMM with
isolated agents) run everywhere; the algorithm parts run real BenchMARL
experiments on ``smax/3m`` and skip without the ``smax`` extra.
"""

from __future__ import annotations

import os
import tempfile

# Before jax is imported anywhere: reuse compiled SMAX steps across test processes.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "benchmarl_decentral_jax"))

import pytest
import torch

from benchmarl_decentral.algorithms import DecpgConfig, MatrpoConfig
from benchmarl_decentral.consensus import (
    batch_mixing_matrix,
    build_mixing_matrix,
    component_labels,
    ConsensusMixer,
    is_doubly_stochastic,
    is_row_stochastic,
    majority_graph,
)
from benchmarl_decentral.consensus.visibility import SmacObsLayout, visibility_adjacency
from benchmarl_decentral.environments.smax import jaxmarl_available
from benchmarl_decentral.objectives.admm import links_from_adjacency, run_admm
from benchmarl_decentral.objectives.trust_region import Linearisation

from conftest import make_experiment
from test_admm import random_problem

GROUP = "agents"
needs_jaxmarl = pytest.mark.skipif(
    not jaxmarl_available(), reason="jax/jaxmarl not installed: pip install 'benchmarl-decentral[smax]'"
)


def _graphs():
    """Three 3-agent graphs (no self loops): full, only 0 <-> 1, and 2 -> 0 (directed)."""
    a = torch.zeros(3, 3, 3, dtype=torch.bool)
    a[0] = ~torch.eye(3, dtype=torch.bool)
    a[1, 0, 1] = a[1, 1, 0] = True
    a[2, 0, 2] = True
    return a


# ------------------------------------------------------------- consensus layer
def test_batch_mixing_matrix_mean_and_majority():
    adj = _graphs()
    W = batch_mixing_matrix(adj, "row", "mean")
    expected = torch.stack([build_mixing_matrix("row", g) for g in adj]).mean(0)
    torch.testing.assert_close(W, expected)
    assert is_row_stochastic(W) and not is_doubly_stochastic(W)
    # majority: links up in >= 2 of the 3 graphs: 0 <-> 1 and 0 <- 2
    torch.testing.assert_close(batch_mixing_matrix(adj, "row", "majority"), build_mixing_matrix("row", majority_graph(adj)))
    torch.testing.assert_close(
        batch_mixing_matrix(adj, "row", "majority"),
        torch.tensor([[1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]),
    )
    # Metropolis on undirected graphs: the mean stays doubly stochastic
    sym = adj | adj.transpose(-1, -2)
    assert is_doubly_stochastic(batch_mixing_matrix(sym, "metropolis", "mean"))
    # leading batch dims of any shape; a single graph is the rule itself
    torch.testing.assert_close(batch_mixing_matrix(adj.reshape(3, 1, 3, 3), "row", "mean"), W)
    torch.testing.assert_close(batch_mixing_matrix(adj[0], "uniform", "mean"), build_mixing_matrix("uniform", adj[0]))
    with pytest.raises(ValueError, match="unknown mixing_graph 'median'"):
        batch_mixing_matrix(adj, "row", "median")


def test_component_labels():
    adj = torch.zeros(5, 5, dtype=torch.bool)
    adj[0, 3] = True  # directed links count as undirected
    adj[4, 1] = True
    assert component_labels(adj).tolist() == [0, 1, 2, 0, 1]
    assert component_labels(torch.zeros(2, 2, dtype=torch.bool)).tolist() == [0, 1]
    with pytest.raises(ValueError, match=r"one \(n, n\) adjacency"):
        component_labels(torch.zeros(2, 3, 3, dtype=torch.bool))


def test_consensus_mixer_on_a_minibatch_of_graphs():
    leaves = [torch.randn(3, 4), torch.randn(3, 2, 2)]
    before = [p.clone() for p in leaves]
    mixer = ConsensusMixer(leaves, adjacency=torch.zeros(3, 3, dtype=torch.bool), rule="uniform")
    torch.testing.assert_close(mixer.matrix(), torch.eye(3))  # no link yet: nobody mixes
    adj = _graphs()
    mixer.set_adjacency(adj | torch.eye(3, dtype=torch.bool))  # self loops are dropped
    W = batch_mixing_matrix(adj, "uniform", "mean")
    torch.testing.assert_close(mixer.matrix(), W)
    torch.testing.assert_close(mixer.step(), W)
    for b, p in zip(before, leaves):
        torch.testing.assert_close(p, torch.einsum("ij,j...->i...", W, b))
    # a failed link is down in every sample of the batch
    failing = ConsensusMixer(leaves, adjacency=torch.zeros(3, 3, dtype=torch.bool), link_failure=0.999,
                             generator=torch.Generator().manual_seed(0), graph_mode="majority")
    failing.set_adjacency(adj)
    torch.testing.assert_close(failing.step(), torch.eye(3))
    with pytest.raises(ValueError, match="bool tensor"):
        mixer.set_adjacency(adj.float())
    with pytest.raises(ValueError, match="unknown graph_mode"):
        ConsensusMixer(leaves, adjacency=adj[0], graph_mode="median")


def test_admm_isolated_agent_takes_its_own_trpo_step():
    """isolated='local': an agent without a link takes eq. (22) with no link term; the others still agree."""
    _, _, policy, params, obs, actions, adv = random_problem(3, seed=3)
    params = {k: v.double() for k, v in params.items()}
    lin = Linearisation(policy, params, obs.double(), actions, damping=1e-3)
    adv = adv.double()
    kw = dict(delta=0.01, beta=1.0, cg_iters=30, residual_tol=1e-24)
    alone = run_admm(lin, adv, [], iterations=1, isolated="local", **kw)  # no link: every agent's own TRPO step
    state = run_admm(lin, adv, [(0, 1)], iterations=60, mode="round_robin", isolated="local", **kw)
    torch.testing.assert_close(state.x[2], alone.x[2])
    assert int(state.agent_updates[2]) == 1 and int(state.link_updates[0]) == 60
    # agents 0 and 1 moved towards agreement on the log-ratios, away from their own steps
    gap = (state.Jx[0] - state.Jx[1]).norm()
    assert gap < 0.2 * (alone.Jx[0] - alone.Jx[1]).norm()
    with pytest.raises(ValueError, match=r"agents \[2\] have no communication link"):
        run_admm(lin, adv, [(0, 1)], iterations=1, **kw)
    with pytest.raises(ValueError, match="isolated must be"):
        run_admm(lin, adv, [(0, 1)], iterations=1, isolated="skip", **kw)


# ------------------------------------------------------------------ config
@pytest.mark.parametrize(
    "config_class, overrides, match",
    [
        (DecpgConfig, {"mixing_graph": "median"}, "unknown mixing_graph 'median'"),
        (DecpgConfig, {"topology": "sight"}, r"unknown topology 'sight'.*'visibility'"),
        (MatrpoConfig, {"visibility_min_fraction": 1.0}, r"visibility_min_fraction must be in \[0, 1\)"),
        (MatrpoConfig, {"topology": "sight"}, r"unknown topology 'sight'.*'visibility'"),
    ],
)
def test_config_errors(config_class, overrides, match):
    kwargs = {**config_class.get_from_yaml().__dict__, **overrides}
    with pytest.raises(ValueError, match=match):
        config_class(**kwargs)


@pytest.mark.parametrize("algorithm", ["decpg", "matrpo"])
def test_visibility_needs_a_smac_family_task(tmp_path, algorithm):
    with pytest.raises(ValueError, match=r"task balance is not a SMAC-family task .*algorithm.topology=ring"):
        make_experiment(tmp_path, algorithm=algorithm, task="vmas/balance", task_overrides={"n_agents": 3},
                        algorithm_overrides={"topology": "visibility"})
    assert list(tmp_path.iterdir()) == []  # no half-written run folder left behind


# --------------------------------------------------------------- on smax/3m
def _hide(obs: torch.Tensor, agent: int, samples) -> None:
    """Make ``agent`` invisible to its allies and blind to them in ``samples`` (SMAX layout, 3m)."""
    n = obs.shape[-2]
    lay = SmacObsLayout.smax(n, 3)
    for i in range(n):
        for slot in range(n - 1):
            j = slot + (slot >= i)
            if agent in (i, j):
                obs[samples, i, lay.ally_offset + slot * lay.ally_feat_dim + lay.visible_index] = 0.0


def _batch(exp, group=GROUP):
    batch = next(iter(exp.collector))
    return batch.exclude(*exp._get_excluded_keys(group)).reshape(-1)


@needs_jaxmarl
@pytest.mark.parametrize("mixing, mode", [("uniform", "mean"), ("metropolis", "mean"), ("uniform", "majority")])
def test_decpg_mixes_over_the_minibatch_visibility(tmp_path, mixing, mode):
    """theta_i <- sum_j P_ij theta_j - eta g_i with P = batch_mixing_matrix of the minibatch's visibility graphs."""
    exp = make_experiment(
        tmp_path, task="smax/3m",
        algorithm_overrides={"topology": "visibility", "mixing": mixing, "mixing_graph": mode,
                             "max_grad_norm": None, "link_failure": 0.0},
    )
    algo = exp.algorithm
    assert algo.visibility_layout == "smax"
    leaves = algo.actor_leaves(GROUP)
    with torch.no_grad():  # make the agents differ so that mixing is visible
        for p in leaves:
            p.add_(0.1 * torch.randn_like(p))
    batch = algo.process_batch(GROUP, _batch(exp))
    obs = batch.get((GROUP, "observation")).clone()
    _hide(obs, 2, slice(0, 2 * len(batch) // 3))  # agent 2 cut off in two thirds of the samples
    batch.set((GROUP, "observation"), obs)
    seen = visibility_adjacency(obs, layout="smax", self_loops=False, symmetric=mixing == "metropolis")
    W = batch_mixing_matrix(seen, mixing, mode)
    assert W[2, 2] > W[0, 0]  # agent 2 mixes less: the graph is not the static full one

    before = [p.detach().clone() for p in leaves]
    for p in leaves:
        p.grad = None
    algo.process_loss_vals(GROUP, exp.losses[GROUP](batch))["loss_objective"].backward()
    grads = [p.grad.clone() for p in leaves]
    optimizer = exp.optimizers[GROUP]["loss_objective"]
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    optimizer.zero_grad()
    torch.testing.assert_close(algo.callback.mixers[(GROUP, "actor")].matrix(), W)
    torch.testing.assert_close(algo.callback.mixers[(GROUP, "critic")].matrix(), W)
    for b, g, p in zip(before, grads, leaves):
        torch.testing.assert_close(p.detach(), torch.einsum("ij,j...->i...", W, b) - lr * g, rtol=1e-5, atol=1e-6)
    exp.close()


@needs_jaxmarl
def test_matrpo_links_come_from_the_batch_visibility(tmp_path):
    exp = make_experiment(tmp_path, algorithm="matrpo", task="smax/3m",
                          algorithm_overrides={"topology": "visibility"})
    algo = exp.algorithm
    assert algo.links[GROUP] is None and algo.visibility_layout == "smax"
    batch = _batch(exp)
    obs = batch.get((GROUP, "observation")).clone()
    # fraction of samples in which each pair sees each other, built by hand
    _hide(obs, 2, slice(0, len(batch) // 2))
    batch.set((GROUP, "observation"), obs)
    seen = visibility_adjacency(obs, layout="smax", self_loops=False, symmetric=True).float().mean(0)
    union = sorted({(i, j) for i in range(3) for j in range(i + 1, 3) if seen[i, j] > 0})
    assert links_from_adjacency(algo.batch_graph(GROUP, batch)).tolist() == [list(e) for e in union]
    assert seen[0, 1] > 0.6  # allies start inside each other's sight range
    algo.visibility_min_fraction = 0.6  # agent 2 is seen in at most half the samples
    assert links_from_adjacency(algo.batch_graph(GROUP, batch)).tolist() == [[0, 1]]

    # agent 2 never seen: its own TRPO step, agents 0 and 1 run ADMM over their link
    _hide(obs, 2, slice(None))
    batch.set((GROUP, "observation"), obs)
    algo.visibility_min_fraction = 0.0
    algo.process_batch(GROUP, batch)  # GAE, then the whole MATRPO update
    stats = algo.last_stats[GROUP]
    assert algo.link_stats[GROUP] == {"links": 1.0, "components": 2.0}
    assert int(stats.admm_updates[2]) == 1 and int(stats.admm_updates[:2].min()) > 1
    assert bool((stats.kl <= algo.delta + 1e-9).all()) and bool(torch.isfinite(stats.kl).all())
    exp.close()
