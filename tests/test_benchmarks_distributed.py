"""The distributed scaling benchmark runs (its --quick mode); the figures are in benchmarks/README.md."""

from __future__ import annotations

import json

import pytest

from conftest import REPO, run_quick_benchmark


@pytest.mark.slow
def test_distributed_scaling_quick_mode(tmp_path):
    from benchmarl_decentral.consensus import knn_ring, uniform
    from benchmarl_decentral.distributed import mixing_bytes, partition_agents

    result = run_quick_benchmark("distributed_scaling.py", tmp_path)
    assert "| / single |" in result.stdout  # the markdown table of ratios was printed
    out = json.loads((REPO / "benchmarks" / "out" / "distributed_scaling_quick.json").read_text())
    rows = {(r["n"], r["mode"]): r for r in out["rows"]}
    assert sorted(rows) == [(n, m) for n in (4, 8) for m in ("dist 2", "single")]
    frames = out["config"]["frames"]
    for (n, mode), r in rows.items():
        single = rows[(n, "single")]
        assert r["iteration_time"] > 0 and r["n_iterations"] == 1
        # the same mixing in every mode: the same bytes per agent and parameter sizes
        assert r["train_bytes_per_agent"] == single["train_bytes_per_agent"] > 0
        assert r["actor_bytes"] == single["actor_bytes"] and r["critic_bytes"] == single["critic_bytes"]
        # across processes: the formula's share for rank 0's agents; the action exchange: int64 actions,
        # one per agent and frame, to each other rank
        owner = partition_agents(n, r["ranks"])
        link, network = mixing_bytes(uniform(knn_ring(n, 2)), 1, owner)
        share = float(network[owner == 0].sum() / link[owner == 0].sum())
        assert r["train_network_bytes_per_agent"] == pytest.approx(share * r["train_bytes_per_agent"])
        assert r["env_bytes_per_agent"] == (0 if mode == "single" else frames * 8 * (r["ranks"] - 1))
    assert rows[(4, "dist 2")]["train_network_bytes_per_agent"] > 0
