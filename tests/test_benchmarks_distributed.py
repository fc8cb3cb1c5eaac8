"""The distributed scaling benchmark runs (its --quick mode, decpg and dg_mappo); figures in benchmarks/README.md."""

from __future__ import annotations

import json

import pytest

from conftest import REPO, run_quick_benchmark

#: per algorithm: its JSON, its comm/ scalars, its per-agent networks
OUTPUTS = {
    "decpg": ("distributed_scaling_quick.json", ("train", "env"), ("actor", "critic")),
    "dg_mappo": ("distributed_scaling_dg_mappo_quick.json", ("train", "exec", "env"), ("dgat", "actor", "critic")),
}


def network_share(n: int, ranks: int) -> tuple[float, float]:
    """Of rank 0's agents' bytes on the k=2 ring, by formula: the share across processes (mixing, D-GAT messages)."""
    from benchmarl_decentral.consensus import knn_ring, uniform
    from benchmarl_decentral.distributed import message_bytes, mixing_bytes, partition_agents

    owner = partition_agents(n, ranks)
    shares = []
    for link, network in (mixing_bytes(uniform(knn_ring(n, 2)), 1, owner), message_bytes(knn_ring(n, 2), 1, owner)):
        shares.append(float(network[owner == 0].sum() / link[owner == 0].sum()))
    return shares[0], shares[1]


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", list(OUTPUTS))
def test_distributed_scaling_quick_mode(tmp_path, algorithm):
    """n = 4, 8 agents, one process and 2 gloo ranks: the same bytes per agent in both modes where the
    formula says so, their share across processes by formula, and for the fixed-degree ring the same
    bytes per agent at n = 4 and 8."""
    file, kinds, networks = OUTPUTS[algorithm]
    args = () if algorithm == "decpg" else ("--algorithm", algorithm)
    result = run_quick_benchmark("distributed_scaling.py", tmp_path, *args)
    assert "| / single |" in result.stdout  # the markdown table of ratios was printed
    assert f"| {' + '.join(networks)} bytes/agent |" in result.stdout
    if "exec" in kinds:
        assert "| exec bytes/agent | exec network bytes/agent |" in result.stdout
    out = json.loads((REPO / "benchmarks" / "out" / file).read_text())
    assert out["config"]["algorithm"] == algorithm
    rows = {(r["n"], r["mode"]): r for r in out["rows"]}
    assert sorted(rows) == [(n, m) for n in (4, 8) for m in ("dist 2", "single")]
    assert all(f"| {n} | {m} |" in result.stdout for n, m in rows)  # a table row per run
    frames = out["config"]["frames"]
    for (n, mode), r in rows.items():
        single = rows[(n, "single")]
        assert r["iteration_time"] > 0 and r["n_iterations"] == 1
        # the same mixing and messages in every mode: the same bytes per agent and parameter sizes; on the
        # ring every agent sends as much whatever n (4 agents or 8)
        for kind in ("train", "exec"):
            if kind in kinds:
                assert r[f"{kind}_bytes_per_agent"] == single[f"{kind}_bytes_per_agent"] > 0, kind
                assert r[f"{kind}_bytes_per_agent"] == rows[(4, mode)][f"{kind}_bytes_per_agent"], kind
            else:
                assert f"{kind}_bytes_per_agent" not in r
        assert [key for key in r if key.endswith("_bytes")] == [f"{net}_bytes" for net in networks]
        assert all(r[f"{net}_bytes"] == single[f"{net}_bytes"] > 0 for net in networks)
        # across processes: the formula's share for rank 0's agents (on the ring the mixing's and the
        # D-GAT messages' shares are the same, so dg_mappo's train bytes keep it); the action exchange:
        # int64 actions, one per agent and frame, to each other rank
        mixing_share, message_share = network_share(n, r["ranks"])
        assert r["train_network_bytes_per_agent"] == pytest.approx(mixing_share * r["train_bytes_per_agent"])
        if "exec" in kinds:
            assert mixing_share == message_share
            assert r["exec_network_bytes_per_agent"] == pytest.approx(message_share * r["exec_bytes_per_agent"])
        assert r["env_bytes_per_agent"] == (0 if mode == "single" else frames * 8 * (r["ranks"] - 1))
    assert rows[(4, "dist 2")]["train_network_bytes_per_agent"] > 0
    if "exec" in kinds:
        assert rows[(4, "dist 2")]["exec_network_bytes_per_agent"] > 0


@pytest.mark.slow
def test_distributed_local_memory_quick_mode(tmp_path):
    """8 agents on 2 ranks: with --agents local rank 0 holds half the parameters and optimizer state, exactly."""
    result = run_quick_benchmark("distributed_local_memory.py", tmp_path)
    assert "| all / local |" in result.stdout
    out = json.loads((REPO / "benchmarks" / "out" / "distributed_local_memory_quick.json").read_text())
    runs = {r["agents"]: r for r in out["runs"]}
    assert sorted(runs) == ["all", "local"] and {r["n_agents"] for r in out["runs"]} == {8}
    full, block = runs["all"], runs["local"]
    assert full["params"] == 2 * block["params"] > 0  # the rank's 4 agents of 8: actor and critic
    # Adam: two moments per parameter, a step count per (stacked) tensor; the same number of tensors
    assert full["optim"] - 2 * full["params"] == block["optim"] - 2 * block["params"] > 0
    assert full["state_bytes"] > block["state_bytes"] and full["buffer_bytes"] > block["buffer_bytes"]


@pytest.mark.slow
def test_distributed_scaling_quick_mode_matrpo(tmp_path):
    """matrpo, n = 4, 8, one process and 2 gloo ranks: Table III's asynchronous ADMM sends two (M, K) float32
    values per activated link (K = n heads), 100 activations per update, so the mean over all n agents is
    2 x 100 x M x 4 bytes whatever n (the joint model's heads grow with n, each agent's share of the links
    shrinks as 1/n); on 2 ranks, rank 0's agents sent a part of theirs to the other rank."""
    result = run_quick_benchmark("distributed_scaling.py", tmp_path, "--algorithm", "matrpo")
    assert "| ADMM bytes/agent | ADMM network bytes/agent | env bytes/agent | actor + critic bytes/agent |" in (
        result.stdout)
    out = json.loads((REPO / "benchmarks" / "out" / "distributed_scaling_matrpo_quick.json").read_text())
    rows = {(r["n"], r["mode"]): r for r in out["rows"]}
    assert sorted(rows) == [(n, m) for n in (4, 8) for m in ("dist 2", "single")]
    frames = out["config"]["frames"]
    for (n, mode), r in rows.items():
        assert r["iteration_time"] > 0 and r["actor_bytes"] == rows[(n, "single")]["actor_bytes"] > 0
        if mode == "single":
            assert r["train_bytes_per_agent"] == 2 * 100 * frames * 4 and r["train_network_bytes_per_agent"] == 0
        else:  # rank 0's agents: the random schedule decides how many of the activations are theirs
            assert 0 < r["train_network_bytes_per_agent"] < r["train_bytes_per_agent"]
        assert r["env_bytes_per_agent"] == (0 if mode == "single" else frames * 8 * (r["ranks"] - 1))
    assert rows[(8, "single")]["actor_bytes"] > rows[(4, "single")]["actor_bytes"]  # a head per agent
