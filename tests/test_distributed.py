"""Distributed mode (preview): transports, byte accounting, launch checks (CPU, gloo)."""

from __future__ import annotations

import csv

import pytest
import torch
import torch.distributed as dist

from benchmarl_decentral.consensus import ConsensusMixer, build_topology, knn_ring, mix_, uniform
from benchmarl_decentral.distributed import (
    InProcessTransport,
    TorchDistributedTransport,
    bytes_per_agent,
    check_algorithm,
    mixing_bytes,
    partition_agents,
    plan_launch,
    spawn_local,
    use_transport,
)

from conftest import make_experiment


# ------------------------------------------------------------------ byte formula
def test_mixing_bytes_counts_one_vector_per_link_and_per_destination_rank():
    W = uniform(knn_ring(4, 2))  # ring 0-1-2-3-0: every agent has 2 neighbours
    link, network = mixing_bytes(W, 100)
    assert link.tolist() == [200] * 4 and network.tolist() == [0] * 4  # one process: nothing crosses
    # one agent per rank: every link crosses
    assert mixing_bytes(W, 100, torch.arange(4))[1].tolist() == [200] * 4
    # blocks {0,1} {2,3}: agent 0 is read by 1 (same rank) and 3 (the other rank): one vector sent
    assert mixing_bytes(W, 100, torch.tensor([0, 0, 1, 1]))[1].tolist() == [100] * 4
    # a failed link 0-1 (weight 0 both ways) carries no message
    adj = knn_ring(4, 2)
    adj[0, 1] = adj[1, 0] = False
    link, network = mixing_bytes(uniform(adj), 100, torch.tensor([0, 0, 1, 1]))
    assert link.tolist() == [100, 100, 200, 200] and network.tolist() == [100, 100, 100, 100]


def test_in_process_transport_is_the_stacked_mixer_and_counts_degree_numel_element_size():
    gen = torch.Generator().manual_seed(0)
    leaves = [torch.randn(5, 3, 2, generator=gen), torch.randn(5, 4, generator=gen, dtype=torch.float64)]
    expected = [p.clone() for p in leaves]
    W = uniform(knn_ring(5, 2))
    mix_(expected, W)
    record = InProcessTransport().mix_(leaves, W)
    for p, q in zip(leaves, expected):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert bytes_per_agent(leaves) == 6 * 4 + 4 * 8
    assert record.link_bytes.tolist() == [2 * (6 * 4 + 4 * 8)] * 5
    assert record.agents.tolist() == list(range(5))


# ------------------------------------------------------------------ oracle: distributed == in-process
#: (n_agents, topology, k, rule, link_failure), each run for several DSGD steps
SCENARIOS = [
    (4, "ring", None, "uniform", 0.0),
    (8, "knn_ring", 4, "metropolis", 0.0),
    (4, "knn_ring", 2, "uniform", 0.4),  # failing links
    (8, "ring", None, "row", 0.3),
]
STEPS = 4


def _no_collectives(*args, **kwargs):
    raise AssertionError("the mixing used a collective over all ranks; it must be neighbour-only p2p")


def _oracle_worker(rank: int, world_size: int) -> None:
    for name in ("all_reduce", "all_gather", "broadcast", "reduce", "all_to_all", "barrier"):
        setattr(dist, name, _no_collectives)  # neighbour-only point-to-point traffic, nothing else
    for s, (n, topology, k, rule, link_failure) in enumerate(SCENARIOS):
        owner = partition_agents(n, world_size)
        transport = TorchDistributedTransport(owner)
        local = transport.local_agents(n)
        adj = build_topology(topology, n, k=k)
        gen = torch.Generator().manual_seed(s)
        full = [torch.randn(n, 3, 2, generator=gen), torch.randn(n, 5, generator=gen)]
        scale = torch.rand(n, generator=gen) + 0.5  # agent i's private objective

        runs = {}
        for mode in ("in_process", "distributed"):
            params = [torch.nn.Parameter(p.clone() if mode == "in_process" else p[local].clone()) for p in full]
            agents = torch.arange(n) if mode == "in_process" else local
            mixer = ConsensusMixer(
                params, adjacency=adj, rule=rule, link_failure=link_failure,
                generator=torch.Generator().manual_seed(100 + s),
                transport=None if mode == "in_process" else transport,
            )
            opt = torch.optim.SGD(params, lr=0.1)
            mixer.attach(opt, when="pre")  # decpg's order: theta_i <- sum_j W_ij theta_j - lr g_i
            used = []
            for _ in range(STEPS):
                opt.zero_grad()
                loss = sum((torch.sin(p) * scale[agents].view(-1, *[1] * (p.dim() - 1))).sum() for p in params)
                loss.backward()
                opt.step()
                used.append(mixer.matrix().clone())
            runs[mode] = (params, mixer, used)

        (ref, ref_mixer, used), (dist_params, dist_mixer, dist_used) = runs["in_process"], runs["distributed"]
        for W, W_d in zip(used, dist_used):
            assert torch.equal(W, W_d)  # same link failures drawn on every rank
        if link_failure:
            assert any(not torch.equal(W, ref_mixer._base_W) for W in used), "no link failed in the scenario"
        for p, q in zip(dist_params, ref):
            torch.testing.assert_close(p.detach(), q.detach()[local], rtol=1e-5, atol=1e-6)
        # accounting: counted from the sent tensors == the formula, per agent held here
        assert torch.equal(dist_mixer.comm.link_bytes, ref_mixer.comm.link_bytes[local])
        B = bytes_per_agent(ref)
        expected_network = sum(mixing_bytes(W, B, owner)[1] for W in used)
        assert torch.equal(dist_mixer.comm.network_bytes, expected_network[local])
        assert dist_mixer.comm.steps == ref_mixer.comm.steps == STEPS


@pytest.mark.parametrize("world_size", [2, 4])
def test_distributed_mixing_equals_in_process_mixing(world_size):
    """Oracle: gloo ranks owning 1, 2 or 4 agents each reach the in-process parameters and bytes."""
    spawn_local(_oracle_worker, world_size, start_method="fork", timeout_s=60)


# ------------------------------------------------------------------ decpg logs its bytes
def test_decpg_logs_bytes_per_agent_from_the_matrices_it_mixed_with(tmp_path):
    exp = make_experiment(
        tmp_path, task="coordsum/3x10-30", algorithm_overrides={"k": 2, "link_failure": 0.5},
        max_n_iters=1, on_policy_minibatch_size=20, loggers=["csv"],
    )
    used = {}
    for net, loss in (("actor", "loss_objective"), ("critic", "loss_critic")):
        mixer = exp.algorithm.callback.mixers[("agents", net)]
        used[net] = []
        exp.optimizers["agents"][loss].register_step_post_hook(
            lambda *_, m=mixer, u=used[net]: u.append(m.matrix().detach().clone())
        )
    exp.run()
    assert len(used["actor"]) == len(used["critic"]) == 3  # 60 frames, minibatches of 20

    expected = 0
    for net in ("actor", "critic"):
        B = bytes_per_agent(exp.algorithm.actor_leaves("agents") if net == "actor" else exp.algorithm.critic_leaves("agents"))
        expected += sum(int(mixing_bytes(W, B)[0].sum()) for W in used[net]) / 3

    def logged(name):
        with open(exp.folder_name / exp.name / "scalars" / f"{name}.csv") as f:
            return float(next(csv.reader(f))[1])

    assert expected > 0
    assert logged("comm_train_bytes_per_agent") == pytest.approx(expected)
    assert logged("comm_agents_train_bytes_per_agent") == pytest.approx(expected)
    assert logged("comm_train_network_bytes_per_agent") == 0.0  # one process


# ------------------------------------------------------------------ one level up: decpg's training update
DECPG = dict(task="coordsum/8x15-100", algorithm_overrides={"k": 2, "link_failure": 0.3},
             max_n_iters=1, on_policy_minibatch_size=20, loggers=["csv"])
NETS = (("actor", "loss_objective"), ("critic", "loss_critic"))


def _decpg_run(folder):
    """One decpg iteration (3 minibatches); returns the experiment and the W each step mixed with."""
    folder.mkdir(parents=True, exist_ok=True)
    exp = make_experiment(folder, **DECPG)
    used = {}
    for net, loss in NETS:
        mixer = exp.algorithm.callback.mixers[("agents", net)]
        used[net] = []
        exp.optimizers["agents"][loss].register_step_post_hook(
            lambda *_, m=mixer, u=used[net]: u.append(m.matrix().detach().clone())
        )
    exp.run()
    return exp, used


def _logged(exp, name):
    with open(exp.folder_name / exp.name / "scalars" / f"{name}.csv") as f:
        return float(next(csv.reader(f))[1])


def _decpg_worker(rank: int, world_size: int, folder, reference) -> None:
    ref = torch.load(reference)
    owner = plan_launch("decpg", {"agents": 8}, world_size)["agents"]
    with use_transport(TorchDistributedTransport(owner)) as transport:
        exp, used = _decpg_run(folder / f"rank{rank}")
    local = transport.local_agents(8)
    for net, _ in NETS:
        for W, W_ref in zip(used[net], ref["used"][net], strict=True):
            assert torch.equal(W, W_ref)
        mixer = exp.algorithm.callback.mixers[("agents", net)]
        assert mixer.transport is transport and mixer.leaves[0].shape[0] == local.numel()
        leaves = exp.algorithm.actor_leaves("agents") if net == "actor" else exp.algorithm.critic_leaves("agents")
        for p, q in zip(leaves, ref[net], strict=True):  # this rank's agents; the other rows are not its own
            torch.testing.assert_close(p.detach()[local], q[local], rtol=1e-5, atol=1e-6)
        assert torch.equal(mixer.comm.link_bytes, ref["link_bytes"][net][local])
    network = sum(
        int(mixing_bytes(W, ref["bytes_per_agent"][net], owner)[1][local].sum())
        for net, _ in NETS for W in ref["used"][net]
    )
    assert network > 0
    assert _logged(exp, "comm_train_network_bytes_per_agent") == pytest.approx(network / local.numel())
    link = sum(int(ref["link_bytes"][net][local].sum()) for net, _ in NETS)
    assert _logged(exp, "comm_train_bytes_per_agent") == pytest.approx(link / local.numel())


@pytest.mark.slow
def test_decpg_update_on_agent_blocks_equals_the_single_process_update(tmp_path):
    """2 ranks x 4 agents: decpg's iteration (real losses, SGD, per-agent clip, mixing hooks, link failures).

    Every rank builds the same experiment (the collection is replicated: the
    environment interface across ranks does not exist yet) and mixes only its
    own block through the distributed transport; its block ends the
    iteration with the single-process run's parameters and bytes.
    """
    exp, used = _decpg_run(tmp_path / "single")
    assert len(used["actor"]) == 3 and any(not torch.equal(W, used["actor"][0]) for W in used["actor"])
    reference = {
        "used": used,
        "actor": [p.detach().clone() for p in exp.algorithm.actor_leaves("agents")],
        "critic": [p.detach().clone() for p in exp.algorithm.critic_leaves("agents")],
        "link_bytes": {net: exp.algorithm.callback.mixers[("agents", net)].comm.link_bytes.clone() for net, _ in NETS},
        "bytes_per_agent": {
            "actor": bytes_per_agent(exp.algorithm.actor_leaves("agents")),
            "critic": bytes_per_agent(exp.algorithm.critic_leaves("agents")),
        },
    }
    torch.save(reference, tmp_path / "reference.pt")
    spawn_local(_decpg_worker, 2, tmp_path, tmp_path / "reference.pt", start_method="fork", timeout_s=120)


# ------------------------------------------------------------------ bad input, before anything trains
@pytest.mark.parametrize(
    "n_agents, world_size, match",
    [
        (4, 3, r"world size 3 does not fit group 'agents' of 4 agents: 4 agents do not split into 3 equal "
               r"blocks\. Launch .* N in \[1, 2, 4\]"),
        (2, 4, r"world size 4 .* 2 of the 4 ranks would own no agent\. .* N in \[1, 2\]"),
    ],
)
def test_world_size_that_does_not_divide_the_agents(n_agents, world_size, match):
    with pytest.raises(ValueError, match=match):
        plan_launch("decpg", {"agents": n_agents}, world_size)


@pytest.mark.parametrize(
    "algorithm, match",
    [
        ("magpo", r"algorithm=magpo has no distributed support: its guider is centralized by design"),
        ("dg_mappo", r"algorithm=dg_mappo has no distributed support: its D-GAT messages"),
        ("matrpo", r"algorithm=matrpo has no distributed support: its ADMM exchange"),
        ("mappo", r"algorithm=mappo has no distributed support: it has no consensus step"),
    ],
)
def test_algorithm_without_distributed_support(algorithm, match):
    with pytest.raises(ValueError, match=match + r".*support algorithm=decpg; run .* in one process"):
        plan_launch(algorithm, {"agents": 4}, 2)  # refused before the world size is even looked at
    check_algorithm("decpg")


def test_blocks_and_the_transport_needs_a_process_group():
    assert partition_agents(8, 4).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert partition_agents(3, 3).tolist() == [0, 1, 2]
    with pytest.raises(RuntimeError, match="needs an initialised process group: launch with torchrun"):
        TorchDistributedTransport(torch.arange(2))


def test_use_transport_is_what_new_mixers_get():
    from benchmarl_decentral.distributed import current_transport

    assert isinstance(current_transport(), InProcessTransport)
    inner = InProcessTransport()
    with use_transport(inner):
        assert current_transport() is inner
    assert current_transport() is not inner
