"""Distributed mode (preview): transports, byte accounting, launch checks (CPU, gloo)."""

from __future__ import annotations

import csv
import os
import re

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
    per_link_bytes,
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
    # per link: agent i sends one vector to each ring neighbour i +- 1, nothing to itself or the others
    expected_links = torch.zeros(5, 5, dtype=torch.int64)
    for i in range(5):
        expected_links[i, (i + 1) % 5] = expected_links[i, (i - 1) % 5] = 6 * 4 + 4 * 8
    assert torch.equal(record.links, expected_links)


# ------------------------------------------------------------------ oracle: distributed == in-process
#: (n_agents, topology, k, rule, link_failure, link latency), each run for several DSGD steps
SCENARIOS = [
    (4, "ring", None, "uniform", 0.0, 0),
    (8, "knn_ring", 4, "metropolis", 0.0, 0),
    (4, "knn_ring", 2, "uniform", 0.4, 0),  # failing links
    (8, "ring", None, "row", 0.3, 0),
    (4, "knn_ring", 2, "uniform", 0.4, 2),  # latency: each rank mixes with what it received 2 steps ago
    (8, "knn_ring", 4, "metropolis", 0.3, 3),
]
STEPS = 6


def _no_collectives(*args, **kwargs):
    raise AssertionError("the mixing used a collective over all ranks; it must be neighbour-only p2p")


def _oracle_worker(rank: int, world_size: int) -> None:
    for name in ("all_reduce", "all_gather", "broadcast", "reduce", "all_to_all", "barrier"):
        setattr(dist, name, _no_collectives)  # neighbour-only point-to-point traffic, nothing else
    with pytest.raises(ValueError, match=r"every rank at least one agent, got \[0, 0"):
        TorchDistributedTransport(torch.zeros(world_size, dtype=torch.int64))
    for s, (n, topology, k, rule, link_failure, latency) in enumerate(SCENARIOS):
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
                transport=None if mode == "in_process" else transport, latency=latency,
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
        if latency:  # what a rank keeps: its own agents' vectors and the ones it received, per step in flight
            kept = dist_mixer.history.state_dict()["slots"]
            assert len(kept) == latency and all(e["W"].shape == (local.numel(), n) for e in kept)
            assert all(set(local.tolist()) <= set(e["agents"].tolist()) for e in kept)
        # per link: the rows of the senders held here, summing to their link bytes
        assert torch.equal(dist_mixer.comm.links, ref_mixer.comm.links[local])
        assert torch.equal(ref_mixer.comm.links.sum(1), ref_mixer.comm.link_bytes)
        assert torch.equal(ref_mixer.comm.links, sum(per_link_bytes(W, B) for W in used))


@pytest.mark.parametrize("world_size", [2, 4])
def test_distributed_mixing_equals_in_process_mixing(world_size):
    """Oracle: gloo ranks owning 1, 2 or 4 agents each reach the in-process parameters and bytes."""
    spawn_local(_oracle_worker, world_size, start_method="fork", timeout_s=60)


# ------------------------------------------------------------------ decpg logs its bytes
def test_decpg_logs_bytes_per_agent_from_the_matrices_it_mixed_with(tmp_path):
    exp = make_experiment(
        tmp_path, task="coordsum/3x10-30", algorithm_overrides={"k": 2, "link_failure": 0.5, "log_link_bytes": True},
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

    expected, links = 0, torch.zeros(3, 3, dtype=torch.int64)
    for net in ("actor", "critic"):
        B = bytes_per_agent(exp.algorithm.actor_leaves("agents") if net == "actor" else exp.algorithm.critic_leaves("agents"))
        expected += sum(int(mixing_bytes(W, B)[0].sum()) for W in used[net]) / 3
        links += sum(per_link_bytes(W, B) for W in used[net])

    def logged(name):
        with open(exp.folder_name / exp.name / "scalars" / f"{name}.csv") as f:
            return float(next(csv.reader(f))[1])

    assert expected > 0
    assert logged("comm_train_bytes_per_agent") == pytest.approx(expected)
    assert logged("comm_agents_train_bytes_per_agent") == pytest.approx(expected)
    assert logged("comm_train_network_bytes_per_agent") == 0.0  # one process
    # algorithm.log_link_bytes: every link of the ring (3 agents, k=2: all 6), what it carried in the iteration
    assert len({int(links[i, j]) for i in range(3) for j in range(3) if i != j}) > 1  # failed links carried less
    for i in range(3):
        for j in range(3):
            path = exp.folder_name / exp.name / "scalars" / f"comm_agents_link_{i}_to_{j}_train_bytes.csv"
            assert path.is_file() == (i != j)
            if i != j:
                assert logged(f"comm_agents_link_{i}_to_{j}_train_bytes") == float(links[i, j])
    assert float(links.sum()) / 3 == pytest.approx(expected)


# ------------------------------------------------------------------ one level up: decpg training on agent blocks
ITERS, STEPS_PER_ITER = 2, 3  # 60 frames, minibatches of 20
DECPG = dict(task="coordsum/8x15-100", algorithm_overrides={"k": 2, "link_failure": 0.3, "log_link_bytes": True},
             max_n_iters=ITERS, on_policy_minibatch_size=20, loggers=["csv"])
NETS = (("actor", "loss_objective"), ("critic", "loss_critic"))


def _decpg_run(folder, build=lambda make: make(), scrub=None, latency=0):
    """decpg for ITERS iterations; returns the experiment and the W each optimizer step mixed with.

    ``scrub``: agents whose parameters are zeroed before training (the other
    ranks' agents: a rank must not depend on their parameters).
    ``latency``: ``algorithm.link_latency``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    config = {**DECPG, "algorithm_overrides": {**DECPG["algorithm_overrides"], "link_latency": latency}}
    exp = build(lambda wrap=None: make_experiment(folder, task_wrapper=wrap, **config))
    if scrub is not None:
        with torch.no_grad():
            for p in exp.algorithm.actor_leaves("agents") + exp.algorithm.critic_leaves("agents"):
                p[scrub] = 0.0
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
        return [float(row[1]) for row in csv.reader(f)]


def _record_central(records: dict) -> None:
    """Wraps the central backend's calls (in this forked rank): what it sent and got, rank 0's joint action and output."""
    from benchmarl_decentral.distributed.local import CentralEnv

    step, reset, scatter = CentralEnv.step, CentralEnv.reset, CentralEnv._scatter

    def on_step(self, env, td):
        records["calls"].append("step")
        records["local_action"].append(td.get(("agents", "action")).clone())
        out = step(self, env, td)
        if self.is_central:
            records["joint_action"].append(self.last_joint_action.get(("agents", "action")).clone())
        records["got"].append(out.clone())
        return out

    def on_reset(self, env, inner):
        records["calls"].append("reset")
        out = reset(self, env, inner)
        records["got"].append(out.clone())
        return out

    def on_scatter(self, env, out, reset):
        records["joint_output"].append(out.clone())
        return scatter(self, env, out, reset)

    CentralEnv.step, CentralEnv.reset, CentralEnv._scatter = on_step, on_reset, on_scatter


def _decpg_worker(rank: int, world_size: int, folder, reference, agents, latency) -> None:
    from benchmarl_decentral.distributed.experiment import build_rank_experiment

    ref = torch.load(reference)
    others = torch.tensor([i for i in range(8) if partition_agents(8, world_size)[i] != rank])
    records = {key: [] for key in ("calls", "local_action", "joint_action", "got", "joint_output")}
    if agents == "central":
        _record_central(records)

    def build(make):
        exp = build_rank_experiment(make, algorithm="decpg", sizes={"agents": 8},
                                    agents="all" if agents == "all" else "local",
                                    env="central" if agents == "central" else "replicated")
        return exp

    exp, used = _decpg_run(
        folder / f"rank{rank}", build,
        scrub=others if agents == "all" else None,  # local: there are no other agents' rows to scrub
        latency=latency,
    )
    mixer = exp.algorithm.callback.mixers[("agents", "actor")]
    owner, local = mixer.transport.owner, mixer.transport.local_agents(8)
    assert isinstance(mixer.transport, TorchDistributedTransport) and mixer.leaves[0].shape[0] == local.numel()
    if agents != "all":  # this rank built its block only: networks, optimizer state, replay buffer
        assert exp.group_map == {"agents": [f"agent_{i}" for i in local.tolist()]}
        stacked = exp.algorithm.actor_leaves("agents") + exp.algorithm.critic_leaves("agents")
        optimized = [p for opt in exp.optimizers["agents"].values() for g in opt.param_groups for p in g["params"]]
        assert {p.shape[0] for p in stacked + optimized} == {local.numel()}
        assert sum(p.numel() for p in optimized) == sum(p.numel() for p in stacked)  # nothing else is trained
        for opt in exp.optimizers["agents"].values():  # SGD: no state; any state would be the block's
            assert all(t.shape[0] == local.numel() for st in opt.state.values() for t in st.values() if t.dim())
        stored = exp.replay_buffers["agents"].storage._storage
        assert stored.get(("agents", "observation")).shape[:2] == (60, local.numel())
        assert stored.get(("agents", "action")).shape == (60, local.numel())
    # the same joint actions on every rank: the same episodes as the single-process run
    assert _logged(exp, "collection_reward_reward_mean") == ref["reward"]
    for net, _ in NETS:
        for W, W_ref in zip(used[net], ref["used"][net], strict=True):
            assert torch.equal(W, W_ref)
        leaves = exp.algorithm.actor_leaves("agents") if net == "actor" else exp.algorithm.critic_leaves("agents")
        for p, q in zip(leaves, ref[net], strict=True):  # this rank's agents; the other rows are not its own
            mine = p.detach()[local] if agents == "all" else p.detach()
            torch.testing.assert_close(mine, q[local], rtol=1e-5, atol=1e-6)
    # bytes per agent and iteration: counted from the sent tensors == the formula on the W each step used
    for key, which in (("comm_train_bytes_per_agent", 0), ("comm_train_network_bytes_per_agent", 1)):
        expected = [
            sum(
                int(mixing_bytes(W, ref["bytes_per_agent"][net], owner)[which][local].sum())
                for net, _ in NETS for W in ref["used"][net][t * STEPS_PER_ITER:(t + 1) * STEPS_PER_ITER]
            ) / local.numel()
            for t in range(ITERS)
        ]
        assert min(expected) > 0 and _logged(exp, key) == pytest.approx(expected)
    # per link, the links of this rank's agents only (i -> i +- 1 on the ring of 8)
    for i in local.tolist():
        for j in ((i + 1) % 8, (i - 1) % 8):
            expected = [
                sum(int(per_link_bytes(W, ref["bytes_per_agent"][net])[i, j])
                    for net, _ in NETS for W in ref["used"][net][t * STEPS_PER_ITER:(t + 1) * STEPS_PER_ITER])
                for t in range(ITERS)
            ]
            assert _logged(exp, f"comm_agents_link_{i}_to_{j}_train_bytes") == expected
    scalars = exp.folder_name / exp.name / "scalars"
    assert len(list(scalars.glob("comm_agents_link_*"))) == 2 * local.numel()
    if agents == "central":  # checked across ranks by the test
        torch.save({**records, "env_bytes": _logged(exp, "comm_env_bytes_per_agent")}, folder / f"records{rank}.pt")
        return
    # environment interface: each step, this rank's block of int64 actions (2 envs) to the other rank
    assert _logged(exp, "comm_env_bytes_per_agent") == [30 * 2 * 8 * (world_size - 1)] * ITERS


@pytest.mark.slow
@pytest.mark.parametrize(("agents", "latency"),
                         [("all", 0), ("all", 2), ("local", 0), ("local", 2), ("central", 0)])
def test_decpg_training_on_agent_blocks_equals_the_single_process_run(tmp_path, agents, latency):
    """2 ranks x 4 agents, 2 iterations of decpg (real losses, per-agent clip, mixing hooks, link failures).

    Every rank steps its own copy of the environment with the joint action
    (its agents' actions, the others' received) and trains only its block,
    mixing through the distributed transport. ``all``: the rank builds every
    agent's networks and the other agents' rows are zeroed, so nothing may
    read them; ``local``: it builds its 4 agents only (networks, optimizer,
    buffer: leading dim 4) on the environment cut to them. Its block ends with
    the single-process run's parameters, rewards and bytes. With
    ``link_latency=2`` each rank mixes with the vectors it received two
    mixing steps before (the in-process run: with every agent's of then),
    and sends the same bytes.
    """
    exp, used = _decpg_run(tmp_path / "single", latency=latency)
    if latency:
        assert all(m.history.steps == ITERS * STEPS_PER_ITER for m in exp.algorithm.callback.mixers.values())
    assert len(used["actor"]) == ITERS * STEPS_PER_ITER
    assert any(not torch.equal(W, used["actor"][0]) for W in used["actor"])  # links failed
    reference = {
        "used": used,
        "reward": _logged(exp, "collection_reward_reward_mean"),
        "actor": [p.detach().clone() for p in exp.algorithm.actor_leaves("agents")],
        "critic": [p.detach().clone() for p in exp.algorithm.critic_leaves("agents")],
        "bytes_per_agent": {
            "actor": bytes_per_agent(exp.algorithm.actor_leaves("agents")),
            "critic": bytes_per_agent(exp.algorithm.critic_leaves("agents")),
        },
    }
    single = [sum(int(mixing_bytes(W, reference["bytes_per_agent"][net])[0].sum())
                  for net, _ in NETS for W in used[net][t * STEPS_PER_ITER:(t + 1) * STEPS_PER_ITER]) / 8
              for t in range(ITERS)]
    assert _logged(exp, "comm_train_bytes_per_agent") == pytest.approx(single)  # in-process: the formula
    torch.save(reference, tmp_path / "reference.pt")
    spawn_local(_decpg_worker, 2, tmp_path, tmp_path / "reference.pt", agents, latency, start_method="fork",
                timeout_s=120)
    if agents == "central":
        _check_central(*(torch.load(tmp_path / f"records{r}.pt", weights_only=False) for r in range(2)))


#: coordsum/8x15-100's step output for 4 agents of 2 envs, bytes: the agents' observations (4 x 109 float32)
#: and action masks (4 x 15 bool); the global state (101 float32), info (2 bool, 1 int64), the shared
#: reward (float32), done / terminated / truncated (bool); a reset's has no reward
CENTRAL_STEP_BYTES = 2 * (4 * 109 * 4 + 4 * 15 + 101 * 4 + 2 + 8 + 4 + 3)
CENTRAL_RESET_BYTES = CENTRAL_STEP_BYTES - 2 * 4


def _check_central(r0: dict, r1: dict) -> None:
    """``--env central`` on 2 ranks: rank 0 steps the joint action of both blocks and sends rank 1 its part."""
    assert r0["calls"] == r1["calls"] and r0["calls"].count("step") == ITERS * 30
    assert r1["joint_action"] == [] and r1["joint_output"] == []  # rank 1 never stepped an environment
    # (i) rank 0's environment stepped exactly the joint action assembled from both ranks' blocks
    for joint, a0, a1 in zip(r0["joint_action"], r0["local_action"], r1["local_action"], strict=True):
        assert torch.equal(joint, torch.cat([a0, a1], dim=1))  # (2 envs, 8 agents)
    # (ii) each rank got exactly rank 0's output, its block of the agents' entries, the rest whole
    assert len(r0["joint_output"]) == len(r0["calls"])
    for full, got0, got1 in zip(r0["joint_output"], r0["got"], r1["got"], strict=True):
        assert set(got0.keys(True, True)) == set(got1.keys(True, True))
        for key in got1.keys(True, True):
            whole = full.get(key)
            if key[0] == "agents":
                assert whole.shape[1] == 8
                assert torch.equal(got0.get(key), whole[:, :4]) and torch.equal(got1.get(key), whole[:, 4:])
            else:
                assert torch.equal(got0.get(key), whole) and torch.equal(got1.get(key), whole)
    # (iii) bytes: rank 1 sends its 4 int64 actions (2 envs) a step; rank 0 sends rank 1's part of every
    # step and reset, per agent of its 4
    assert r1["env_bytes"] == [30 * 2 * 8] * ITERS
    calls, per_iter = r0["calls"], []
    for t in range(ITERS):
        upto = [i for i, c in enumerate(calls) if c == "step"][30 * (t + 1) - 1] + 1
        since = [i for i, c in enumerate(calls) if c == "step"][30 * t - 1] + 1 if t else 0
        resets = calls[since:upto].count("reset")
        per_iter.append((30 * CENTRAL_STEP_BYTES + resets * CENTRAL_RESET_BYTES) / 4)
    assert calls[0] == "reset" and r0["env_bytes"] == pytest.approx(per_iter)


# ------------------------------------------------------------------ --agents local, a task without a state
BALANCE = dict(task="vmas/balance", algorithm_overrides={"k": 1}, max_n_iters=2, on_policy_minibatch_size=30)


def _balance_params(exp):
    return {net: [p.detach().clone() for p in exp.algorithm.agent_stack("agents", net).leaves]
            for net in ("actor", "critic")}


def _balance_worker(rank: int, world_size: int, folder, reference, env_backend="replicated") -> None:
    from benchmarl_decentral.distributed.experiment import build_rank_experiment
    from benchmarl_decentral.distributed.local import JOINT_OBSERVATION, LocalAgentsEnv

    ref = torch.load(reference)
    (folder / f"rank{rank}").mkdir()
    exp = build_rank_experiment(
        lambda wrap: make_experiment(folder / f"rank{rank}", task_wrapper=wrap, **BALANCE),
        algorithm="decpg", sizes={"agents": 4}, agents="local", env=env_backend,
    )
    assert exp.task.backend.name == env_backend
    local = slice(2 * rank, 2 * rank + 2)
    assert exp.group_map == {"agents": [f"agent_{i}" for i in range(4)][local]}
    assert exp.observation_spec["agents", "observation"].shape == (2, 16)  # this rank's agents' observations
    assert JOINT_OBSERVATION not in exp.observation_spec.keys()  # the actors see what they see in one process
    # the critic reads every agent's observation: (4 agents x 16) features, one copy per agent held here
    critic_in = exp.algorithm.agent_stack("agents", "critic").leaves[0]
    assert critic_in.shape == ref["critic"][0][local].shape == (2, 16, 64)
    exp.run()
    env = exp.test_env
    while not isinstance(env, LocalAgentsEnv):
        env = env.base_env
    td = env.reset()
    assert td.get((JOINT_OBSERVATION, "agents")).shape == (exp.config.evaluation_episodes, 64)
    torch.testing.assert_close(td.get((JOINT_OBSERVATION, "agents")).view(-1, 4, 16)[:, local],
                               td.get(("agents", "observation")), rtol=0, atol=0)
    got = _balance_params(exp)
    for net in ("actor", "critic"):
        for p, q in zip(got[net], ref[net], strict=True):
            assert p.shape[0] == 2
            torch.testing.assert_close(p, q[local], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("env_backend", ["replicated", "central"])
def test_decpg_local_agents_read_the_joint_observation_in_their_centralized_critics(tmp_path, env_backend):
    """vmas/balance (no global state, continuous actions), 2 ranks x 2 agents, ``--agents local``.

    ``central``: rank 0 alone steps VMAS and sends rank 1 its agents' part and
    the joint observation; exact too, since VMAS (1.5) draws from a random
    state of its own (``local_seed``), not from the global torch stream.

    Each rank's critic copies read the joint observation its environment adds
    (every agent's 16 features); with an MLP this is MAPPO's centralized critic,
    so after 2 iterations each rank's block equals the single-process run's
    (same theta_0, same sampling noise: TanhNormal draws and the loss's
    Monte-Carlo entropy sample the whole group and keep the block).
    """
    (tmp_path / "single").mkdir()
    exp = make_experiment(tmp_path / "single", **BALANCE)
    exp.run()
    torch.save(_balance_params(exp), tmp_path / "reference.pt")
    spawn_local(_balance_worker, 2, tmp_path, tmp_path / "reference.pt", env_backend, start_method="fork",
                timeout_s=120)


def test_local_agents_task_narrows_the_groups_and_refuses_a_critic_that_is_not_an_mlp(tmp_path):
    """Building needs no process group (nothing steps): rank 1's view of vmas/balance, and the critic check."""
    from benchmarl.algorithms import algorithm_config_registry
    from benchmarl.environments import task_config_registry
    from benchmarl.experiment import Experiment

    from benchmarl_decentral.distributed.local import JOINT_OBSERVATION, LocalAgentsTask, ReplicatedEnvs
    from conftest import deepsets_config, mlp_config, tiny_experiment_config

    backend = ReplicatedEnvs({"agents": torch.tensor([0, 0, 1, 1])}, rank=1)
    task = LocalAgentsTask(task_config_registry["vmas/balance"].get_from_yaml(), backend)
    env = task.get_env_fun(num_envs=3, continuous_actions=True, seed=0, device="cpu")()
    assert task.group_map(env) == {"agents": ["agent_2", "agent_3"]} == env.group_map
    assert env.full_action_spec["agents", "action"].shape == (3, 2, 2)
    assert env.full_observation_spec["agents", "observation"].shape == (3, 2, 16)
    assert env.full_observation_spec[JOINT_OBSERVATION, "agents"].shape == (3, 64)
    td = env.reset()
    torch.testing.assert_close(td[JOINT_OBSERVATION, "agents"].view(3, 4, 16)[:, 2:], td["agents", "observation"],
                               rtol=0, atol=0)
    assert JOINT_OBSERVATION not in task.observation_spec(env).keys() and task.name == "BALANCE"  # as BenchMARL names it

    algo = algorithm_config_registry["decpg"].get_from_yaml()
    with pytest.raises(ValueError, match=r"decpg: with --agents local on a task without a global state, each "
                                         r"agent's critic reads .* got critic model DeepsetsConfig\. Use "
                                         r"model@critic_model=layers/mlp, or launch with --agents all"):
        Experiment(task=task, algorithm_config=algo, model_config=mlp_config(), critic_model_config=deepsets_config(),
                   seed=0, config=tiny_experiment_config(tmp_path))


@pytest.mark.parametrize("overrides, match", [
    ({"evaluation_dropout": [1]},
     r"--agents local: dg_mappo's algorithm.evaluation_dropout silences agents across the group, .* set "
     r"algorithm.evaluation_dropout=null"),
])
def test_python_api_refuses_what_a_dg_mappo_block_cannot_run(tmp_path, overrides, match):
    """The same refusals as the entry point's (dg_mappo.local_agents_refusal) when a LocalAgentsTask is built
    through the Python API, before any network (no process group: nothing steps)."""
    from benchmarl_decentral.distributed.local import ReplicatedEnvs, LocalAgentsTask
    from conftest import make_experiment

    backend = ReplicatedEnvs({"agents": torch.tensor([0, 0, 1, 1])}, rank=0)
    with pytest.raises(ValueError, match=match):
        make_experiment(tmp_path, algorithm="dg_mappo", task="vmas/navigation", task_overrides={"n_agents": 4},
                        algorithm_overrides={"topology": "ring", **overrides},
                        task_wrapper=lambda task: LocalAgentsTask(task, backend))


def test_python_api_refuses_matrpo_blocks_on_continuous_actions(tmp_path):
    """The entry point's refusal, when a LocalAgentsTask is built through the Python API (nothing steps)."""
    from benchmarl_decentral.distributed.local import ReplicatedEnvs, LocalAgentsTask
    from conftest import make_experiment

    backend = ReplicatedEnvs({"agents": torch.tensor([0, 0, 1, 1])}, rank=0)
    with pytest.raises(ValueError, match=r"matrpo with --agents local on continuous actions: .* clipped to the action "
                                         r"bounds .* launch with --agents all"):
        make_experiment(tmp_path, algorithm="matrpo", task="vmas/balance",
                        task_wrapper=lambda task: LocalAgentsTask(task, backend, joint_actions=True))
    assert list(tmp_path.iterdir()) == []  # nothing half-written


# ------------------------------------------------------------------ the entry point (as torchrun runs it)
ENTRY = ["algorithm=decpg", "task=coordsum/8x15-100", "algorithm.k=2", "algorithm.evaluation_mode=local",
         "algorithm.perturbed_evaluation=false", "experiment.evaluation_interval=60", "experiment.evaluation_episodes=2",
         "experiment.loggers=[csv]", "experiment.max_n_iters=2", "experiment.max_n_frames=null",
         "experiment.on_policy_collected_frames_per_batch=60", "experiment.on_policy_n_envs_per_worker=2",
         "experiment.on_policy_minibatch_size=20", "experiment.on_policy_n_minibatch_iters=1"]


def single_run(overrides: list, folder):
    """The single-process run of the entry point's ``overrides`` (BenchMARL's hydra path), in ``folder``."""
    from benchmarl.hydra_config import load_experiment_from_hydra

    from benchmarl_decentral.distributed.__main__ import compose

    cfg, task_name, _ = compose([*overrides, f"experiment.save_folder={folder}"])
    folder.mkdir()
    single = load_experiment_from_hydra(cfg, task_name=task_name)
    single.run()
    return single


def _entry_worker(rank: int, world_size: int, port: int, overrides: list, scratch) -> None:
    import tempfile

    from benchmarl_decentral.distributed.__main__ import main

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    tempfile.tempdir = str(scratch)  # where the other ranks' throwaway folders go
    torch.set_num_threads(1)
    main(overrides)


@pytest.mark.slow
@pytest.mark.parametrize("agents", [[], ["--agents", "local"], ["--agents", "local", "--env", "central"]],
                         ids=["all", "local", "central"])
def test_entry_point_trains_decpg_on_two_ranks_like_one_process(tmp_path, agents):
    """``torchrun --nproc-per-node 2 -m benchmarl_decentral.distributed [--agents local [--env central]] ...``.

    Its main on 2 ranks; ``--env central``: rank 0 steps the only environment (training and evaluation).
    """
    import torch.multiprocessing as mp

    from benchmarl_decentral.distributed import free_port

    single = single_run(ENTRY, tmp_path / "single")

    (tmp_path / "dist").mkdir()
    (tmp_path / "scratch").mkdir()
    overrides = [*agents, *ENTRY, f"experiment.save_folder={tmp_path / 'dist'}"]
    mp.start_processes(_entry_worker, args=(2, free_port(), overrides, tmp_path / "scratch"), nprocs=2,
                       start_method="fork")

    (run,) = (tmp_path / "dist").iterdir()  # rank 0's experiment folder, nothing else
    assert list((tmp_path / "scratch").iterdir()) == []  # rank 1 kept nothing

    def logged(folder, name):
        with open(folder / folder.name / "scalars" / f"{name}.csv") as f:
            return [float(row[1]) for row in csv.reader(f)]

    assert (run / f"{run.name}.json").is_file()
    for name in ("collection_reward_reward_mean", "eval_reward_episode_reward_mean"):
        assert logged(run, name) == logged(single.folder_name, name)
    # a ring of 8: every agent sends the same, so rank 0's mean equals the mean over all agents
    assert logged(run, "comm_train_bytes_per_agent") == logged(single.folder_name, "comm_train_bytes_per_agent")
    assert min(logged(run, "comm_train_network_bytes_per_agent")) > 0
    assert logged(single.folder_name, "comm_train_network_bytes_per_agent") == [0.0, 0.0]
    # benchmarl report reads the distributed run like any other: its communication row has network and env bytes
    from benchmarl_decentral.reporting import build_report

    report = build_report([run], reps=50, reference=False)
    (comm,) = report.communication
    assert comm["algorithm"] == "decpg" and comm["score"] is not None
    assert comm["train_network"] > 0 and comm["env"] > 0 and comm["total"] == comm["train"] + comm["env"]


@pytest.mark.parametrize(
    "overrides, world_size, match",
    [
        (["algorithm=decpg", "task=coordsum/8x15-100", "experiment.evaluation=false"], 3,
         r"world size 3 does not fit group 'agents' of 8 agents: .* N in \[1, 2, 4, 8\]"),
        (["algorithm=mappo", "task=coordsum/8x15-100"], 2, r"algorithm=mappo has no distributed support"),
        (["algorithm=decpg", "task=coordsum/8x15-100"], 2,
         r"evaluate each agent with its own parameters only; algorithm.evaluation_mode=average \(use local\), "
         r"algorithm.perturbed_evaluation=true \(use false\), or set experiment.evaluation=false"),
        (["algorithm=decpg", "task=coordsum/8x15-100", "experiment.evaluation=false",
          "experiment.restore_file=/no/run/checkpoints/checkpoint_60.pt"], 2,
         r"experiment.restore_file=/no/run/checkpoints/checkpoint_60.pt is not a checkpoint of a distributed "
         r"run: give one rank's file, <run>/checkpoints_rank0/checkpoint_<frames>.pt"),
        (["algorithm=decpg", "task=coordsum/8x15-100", "experiment.evaluation=false",
          "experiment.checkpoint_interval=70"], 2,
         r"checkpoint_interval \(70\) is not a multiple of the collected_frames_per_batch \(6000\)"),
        (["algorithm=decpg", "task=coordsum/8x15-100", "experiment.evaluation=false", "algorithm.lr=-1"], 2,
         r"decpg: need lr > 0"),
        (["algorithm=dg_mappo", "task=coordsum/8x15-100", "algorithm.evaluation_dropout=[1]"], 2,
         r"evaluate each agent with its own parameters only; algorithm.evaluation_dropout \(use \[\]\), "
         r"or set experiment.evaluation=false"),
        (["algorithm=dg_mappo", "task=coordsum/8x15-100", "algorithm.max_grad_norm=null"], 2,
         r"dg_mappo with algorithm.max_grad_norm=null clips with BenchMARL's gradient norm over all agents at "
         r"once, .* set algorithm.max_grad_norm=10 \(per agent\) or experiment.clip_grad_val=null"),
        (["algorithm=dg_mappo", "task=coordsum/8x15-100", "model=layers/gnn"], 2,
         r"dg_mappo's model=gnn reads the other agents' inputs inside the network, .* use model=layers/mlp"),
        (["algorithm=dg_mappo_paper", "task=coordsum/8x15-100", "model=sequence", "model/layers@model.layers.l1=mlp",
          "model/layers@model.layers.l2=gnn", "model.intermediate_sizes=[8]"], 2, r"dg_mappo's model=gnn"),
        (["algorithm=dg_mappo", "task=coordsum/8x15-100", "experiment.evaluation=false",
          "experiment.restore_file=/no/run/checkpoints/checkpoint_60.pt"], 2,
         r"experiment.restore_file=/no/run/checkpoints/checkpoint_60.pt is not a checkpoint of a distributed "
         r"run: give one rank's file"),
        (["algorithm=dg_mappo", "task=coordsum/8x15-100", "algorithm.alpha_consensus=-1"], 2,
         r"dg_mappo: alpha_consensus must be >= 0"),
        (["algorithm=dg_mappo", "task=coordsum/8x15-100"], 3, r"world size 3 does not fit group 'agents' of 8 agents"),
        (["algorithm=matrpo", "task=coordsum/8x15-100", "experiment.evaluation=false", "algorithm.admm_mode=random"], 2,
         r"matrpo with algorithm.admm_tol=0.05, algorithm.admm_mode=random and algorithm.link_failure=0.0 stops a "
         r"link on its far end's current log-ratios, which a rank receives every iteration only in synchronous mode "
         r"without link failures; set algorithm.admm_mode=synchronous algorithm.link_failure=0 .* or "
         r"algorithm.admm_tol=0"),
        (["algorithm=matrpo", "task=coordsum/8x15-100", "experiment.evaluation=false", "algorithm.link_failure=0.1"],
         2, r"matrpo with algorithm.admm_tol=0.05, algorithm.admm_mode=synchronous and algorithm.link_failure=0.1"),
        (["algorithm=matrpo_paper", "task=coordsum/8x15-100", "model@critic_model=layers/deepsets"], 2,
         r"matrpo's critic_model=deepsets reads the other agents' inputs .* use model@critic_model=layers/mlp"),
        (["algorithm=matrpo", "task=coordsum/8x15-100", "algorithm.beta=-1"], 2, r"matrpo: .*beta"),
        # --agents local: what it cannot run yet
        (["--agents", "both", "algorithm=decpg", "task=coordsum/8x15-100", "experiment.evaluation=false"], 2,
         r"unknown --agents both; choose one of all\|local"),
        (["--agents"], 2, r"--agents needs a value: --agents all or --agents local"),
        (["--agents", "local", "algorithm=decpg", "task=coordsum/8x15-100", "--env"], 2,
         r"--env needs a value: --env replicated or --env central"),
        (["--agents", "local", "--env=both", "algorithm=decpg", "task=coordsum/8x15-100"], 2,
         r"unknown --env both; choose one of replicated\|central"),
        (["--env", "central", "algorithm=decpg", "task=coordsum/8x15-100", "experiment.evaluation=false"], 2,
         r"--env central steps the environment for ranks that build their agents only; add --agents local"),
        (["--agents=local", "algorithm=dg_mappo", "task=vmas/navigation", "experiment.evaluation=false",
          "algorithm.topology=radius", "algorithm.radius=1", "algorithm.position_key=pos",
          "algorithm.position_dims=[0,2]"], 2,
         r"--agents local: dg_mappo's radius graph reads every agent's position from the joint observation, not "
         r"from algorithm.position_key=pos; set algorithm.position_key=null"),
        (["--agents=local", "algorithm=dg_mappo", "task=vmas/navigation", "experiment.evaluation=false",
          "algorithm.topology=radius", "algorithm.radius=1", "algorithm.position_dims=[0,2]",
          "algorithm.group_topology={agents: {position_key: pos}}", "task.n_agents=4"], 2,
         r"--agents local: dg_mappo's radius graph reads every agent's position from the joint observation, not "
         r"from algorithm.position_key=pos; set algorithm.position_key=null \(also in algorithm.group_topology"),
        (["--agents=local", "algorithm=dg_mappo_paper", "task=coordsum/8x15-100", "algorithm.topology=ring",
          "algorithm.evaluation_dropout=[1]", "experiment.evaluation=false"], 2,
         r"--agents local: dg_mappo_paper's algorithm.evaluation_dropout silences agents across the group"),
        (["--agents", "local", "algorithm=magpo", "task=coordsum/8x15-100", "experiment.evaluation=false"], 2,
         r"algorithm=magpo has no distributed support"),
        (["--agents=local", "algorithm=dg_mappo", "task=coordsum/8x15-100", "experiment.evaluation=false",
          "algorithm.topology=star"], 2,
         r"--agents local: dg_mappo's topology=star has no graph a rank holding its block can build; set "
         r"algorithm.topology=ring \(or knn_ring, full, custom, radius, visibility, auto\) or launch with --agents all"),
        (["--agents", "local", "algorithm=matrpo", "task=vmas/balance", "experiment.evaluation=false"], 2,
         r"--agents local: matrpo with --agents local on continuous actions: each agent's joint policy model scores "
         r"every agent's sampled action, .* launch with --agents all"),
        (["--agents", "local", "--env", "central", "algorithm=matrpo", "task=coordsum/8x15-100",
          "experiment.evaluation=false"], 2,
         r"--agents local --env central: matrpo's joint policy models score every agent's action and action mask, "
         r"which the central environment rank does not send yet; use --env replicated"),
        (["--agents", "local", "algorithm=matrpo_paper", "task=coordsum/8x15-100", "experiment.evaluation=false",
          "model=layers/gru"], 2,
         r"--agents local: matrpo builds a rank's block of joint policy models and critics from stacked per-agent "
         r"MLPs only; got model gru, critic_model mlp\. Use model=layers/mlp"),
        (["--agents", "local", "algorithm=decpg", "task=vmas/balance", "experiment.evaluation=false",
          "model@critic_model=layers/deepsets"], 2,
         r"--agents local: task vmas/balance has no global state, so each agent's critic reads the concatenated "
         r"observations of every agent, .* got critic_model deepsets\. Use model@critic_model=layers/mlp"),
        (["--agents", "local", "algorithm=decpg", "task=coordsum/8x15-100", "experiment.evaluation=false",
          "model@critic_model=layers/deepsets"], 3, r"world size 3 does not fit"),  # a state: any critic; sizes first
        (["--agents", "local", "algorithm=decpg", "task=coordsum/8x15-100", "experiment.evaluation=false",
          "algorithm.max_grad_norm=null"], 2,
         r"--agents local: algorithm.max_grad_norm=null clips with BenchMARL's gradient norm over all agents .* "
         r"set algorithm.max_grad_norm=10 \(per agent\) or experiment.clip_grad_val=null"),
    ],
)
def test_entry_point_refuses_before_anything_is_built(tmp_path, monkeypatch, capsys, overrides, world_size, match):
    from benchmarl_decentral.distributed.__main__ import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    with pytest.raises(SystemExit) as exit_:
        main(overrides)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert re.search(match, err) and err.count("\n") == 1, err  # one line
    assert err.startswith("benchmarl_decentral.distributed: ")
    assert list(tmp_path.iterdir()) == [] and not dist.is_initialized()


def test_entry_point_needs_torchrun(monkeypatch, capsys):
    from benchmarl_decentral.distributed.__main__ import main

    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(SystemExit):
        main(["algorithm=decpg"])
    assert "launch it with torchrun, e.g. torchrun --nproc-per-node 2 -m benchmarl_decentral.distributed" in (
        capsys.readouterr().err
    )


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
        ("mappo", r"algorithm=mappo has no distributed support: it has no consensus step"),
    ],
)
def test_algorithm_without_distributed_support(algorithm, match):
    with pytest.raises(ValueError, match=match + r".*support algorithm=decpg\|dg_mappo\|dg_mappo_paper\|matrpo\|"
                                               r"matrpo_paper; run .* in one process"):
        plan_launch(algorithm, {"agents": 4}, 2)  # refused before the world size is even looked at
    for supported in ("decpg", "dg_mappo", "dg_mappo_paper", "matrpo", "matrpo_paper"):
        check_algorithm(supported)


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


# ------------------------------------------------------------------ oracle: MATRPO's ADMM links over the transport
#: (n_agents, policy kind, kNN ring k, link failure probability), synchronous ADMM iterations each
ADMM_SCENARIOS = [(4, "categorical", 2, 0.0), (8, "gaussian", 4, 0.3)]
ADMM_ITERS = 5


def _rank_copy(params: dict, obs, adv, others, rank: int):
    """Copies of an ADMM problem's parameters, observations and advantages; with ``others``, those agents' rows
    are noise (what this rank does not own: it must not be read)."""
    p, o, a = {key: v.clone() for key, v in params.items()}, obs.clone(), adv.clone()
    if others is not None:
        gen = torch.Generator().manual_seed(1000 + rank)
        for v in p.values():
            v[others] = torch.randn(v[others].shape, generator=gen)
        o[others] = torch.randn(o[others].shape, generator=gen)
        a[others] = torch.randn(a[others].shape, generator=gen)
    return p, o, a


def _admm_worker(rank: int, world_size: int) -> None:
    from test_admm import random_problem

    from benchmarl_decentral.objectives.admm import init_state, links_from_adjacency, synchronous_iteration
    from benchmarl_decentral.objectives.trust_region import Linearisation

    for name in ("all_reduce", "all_gather", "broadcast", "reduce", "all_to_all", "barrier"):
        setattr(dist, name, _no_collectives)  # the link values travel point to point, nothing else
    torch.set_default_dtype(torch.float64)
    for s, (n, kind, k, failure) in enumerate(ADMM_SCENARIOS):
        net, make_dist, policy, params, obs, actions, adv = random_problem(n, kind=kind, m=6, seed=s)
        owner = partition_agents(n, world_size)
        transport = TorchDistributedTransport(owner)
        local = transport.local_agents(n)
        others = torch.nonzero(owner != rank).flatten()
        edges = links_from_adjacency(knn_ring(n, k))
        kw = dict(delta=0.01, beta=1.0, cg_iters=30, residual_tol=1e-24)

        states = {}
        for mode in ("in_process", "distributed"):
            p, o, a = _rank_copy(params, obs, adv, others if mode == "distributed" else None, rank)
            lin = Linearisation(policy, p, o, actions, damping=1e-2)
            state = init_state(edges, lin.n_samples, n_params=lin.n_params, n_agents=n, n_components=lin.n_components)
            failures = torch.Generator().manual_seed(50 + s)  # the same links fail on every rank
            working = []
            for _ in range(ADMM_ITERS):
                working.append(torch.rand(state.n_links, generator=failures) >= failure)
                synchronous_iteration(lin, state, a, working=working[-1],
                                      transport=None if mode == "in_process" else transport, **kw)
            states[mode] = state

        ref, got = states["in_process"], states["distributed"]
        assert failure == 0 or not all(bool(w.all()) for w in working), "no link failed in the scenario"
        for name in ("x", "Jx", "direction", "scale"):
            torch.testing.assert_close(getattr(got, name)[local], getattr(ref, name)[local], rtol=1e-7, atol=1e-10)
        held = owner[ref.links] == rank  # (L, 2): the link ends this rank updates
        touching = held.any(1)
        assert bool(touching.any()) and not bool(touching.all())  # some links are elsewhere only
        for name in ("z", "y"):
            torch.testing.assert_close(getattr(got, name)[held], getattr(ref, name)[held], rtol=1e-7, atol=1e-10)
        torch.testing.assert_close(got.dual_residual[touching], ref.dual_residual[touching], rtol=1e-6, atol=1e-12)
        assert torch.equal(got.link_updates[touching], ref.link_updates[touching])
        assert int(ref.link_updates.sum()) < ADMM_ITERS * ref.n_links or failure == 0
        # bytes: one (M, K) value per link end and update; across ranks for the links that cross
        value = lin.n_samples * lin.n_components * 8
        link_bytes, network = torch.zeros(n, dtype=torch.int64), torch.zeros(n, dtype=torch.int64)
        for w in working:
            for e in torch.nonzero(w).flatten().tolist():
                i, j = ref.links[e].tolist()
                for q, other in ((i, j), (j, i)):
                    link_bytes[q] += value
                    network[q] += value if owner[q] != owner[other] else 0
        assert torch.equal(ref.comm.link_bytes, link_bytes) and int(ref.comm.network_bytes.sum()) == 0
        assert torch.equal(got.comm.link_bytes, link_bytes[local])
        assert torch.equal(got.comm.network_bytes, network[local]) and int(network[local].sum()) > 0
        assert got.comm.steps == ref.comm.steps == ADMM_ITERS


def _admm_stop_worker(rank: int, world_size: int) -> None:
    from test_admm import random_problem

    from benchmarl_decentral.objectives.admm import links_from_adjacency, run_admm
    from benchmarl_decentral.objectives.trust_region import Linearisation

    for name in ("all_reduce", "all_gather", "broadcast", "reduce", "all_to_all", "barrier"):
        setattr(dist, name, _no_collectives)  # verdicts and link values travel point to point, nothing else
    torch.set_default_dtype(torch.float64)
    iterations, tol = 40, 0.3
    for s, (n, kind, k, metric) in enumerate([(4, "categorical", 2, "kl_exact"), (8, "gaussian", 4, "gauss_newton")]):
        net, make_dist, policy, params, obs, actions, adv = random_problem(n, kind=kind, m=6, seed=s)
        owner = partition_agents(n, world_size)
        transport = TorchDistributedTransport(owner)
        local, others = transport.local_agents(n), torch.nonzero(owner != rank).flatten()
        edges = links_from_adjacency(knn_ring(n, k))
        kw = dict(delta=0.01, beta=3.0, iterations=iterations, mode="synchronous", tol=tol, metric=metric,
                  cg_iters=30, residual_tol=1e-24)
        states = {}
        for mode in ("in_process", "distributed"):
            p, o, a = _rank_copy(params, obs, adv, others if mode == "distributed" else None, rank)
            lin = Linearisation(policy, p, o, actions, damping=1e-2)
            states[mode] = run_admm(lin, a, edges, transport=None if mode == "in_process" else transport, **kw)
        ref, got = states["in_process"], states["distributed"]
        # the stop acted, link by link: links idled after different numbers of updates, before the last iteration
        assert ref.iteration < iterations and len(set(ref.link_updates.tolist())) > 1
        assert got.iteration == iterations  # a rank sees its own links only: it runs on, and nothing moves
        held = owner[ref.links] == rank
        touching = held.any(1)
        assert torch.equal(got.link_updates[touching], ref.link_updates[touching])
        assert torch.equal(got.converged[touching], ref.converged[touching]) and bool(ref.converged.all())
        for name in ("x", "Jx", "direction", "scale"):
            torch.testing.assert_close(getattr(got, name)[local], getattr(ref, name)[local], rtol=1e-7, atol=1e-10)
        for name in ("z", "y"):
            torch.testing.assert_close(getattr(got, name)[held], getattr(ref, name)[held], rtol=1e-7, atol=1e-10)
        # bytes: every iteration, each link end sends its (M, K) value and its verdict (1 byte), idle or not
        value = lin.n_samples * lin.n_components * 8
        degree = torch.bincount(ref.links.reshape(-1), minlength=n)
        assert torch.equal(got.comm.link_bytes, (iterations * (value + 1) * degree)[local])
        crossing = torch.zeros(n, dtype=torch.int64)
        for i, j in ref.links.tolist():
            if owner[i] != owner[j]:
                crossing[i] += 1
                crossing[j] += 1
        assert torch.equal(got.comm.network_bytes, (iterations * (value + 1) * crossing)[local])
        assert int(crossing[local].sum()) > 0


@pytest.mark.parametrize("world_size", [2, 4])
def test_admm_per_link_stop_over_the_transport_equals_the_single_process_admm(world_size):
    """Oracle: synchronous ADMM with the per-link stop (``tol``) on ranks: each link's two ends test it on what
    they hold (the far end's ``J x`` from the value it sent that iteration), swap verdicts point to point and idle
    only when both agree; idle links still send their values. The rank's agents reach the single-process x, J x,
    z, y, link updates and idle flags, with the true-KL exact step (4 agents) and the Gauss-Newton one (8, Gaussian)."""
    spawn_local(_admm_stop_worker, world_size, start_method="fork", timeout_s=300)


@pytest.mark.parametrize("world_size", [2, 4])
def test_admm_links_over_the_transport_equal_the_single_process_admm(world_size):
    """Oracle: synchronous MATRPO ADMM (eq. 22) with each rank stepping only its agents and exchanging
    the link values ``y + beta C J x`` point to point reaches the in-process x, J x, z, y, residuals and bytes,
    with failing links, while the other agents' parameters, observations and advantages are noise on the rank."""
    spawn_local(_admm_worker, world_size, start_method="fork", timeout_s=120)
