"""The MATRPO update-cost benchmark runs (its --quick mode); the figures are in benchmarks/README.md."""

from __future__ import annotations

import json

import pytest

from conftest import REPO, run_quick_benchmark


@pytest.mark.slow
def test_matrpo_update_cost_quick_mode(tmp_path):
    result = run_quick_benchmark("matrpo_update_cost.py", tmp_path)
    assert "| update / mappo |" in result.stdout  # the markdown table of ratios was printed
    rows = json.loads((REPO / "benchmarks" / "out" / "matrpo_update_cost_quick.json").read_text())["rows"]
    assert {r["n_agents"] for r in rows} == {3, 4}
    for r in rows:
        assert r["matrpo_update_s"] > 0 and r["mappo_phase_s"] > 0
        assert r["kl_max"] <= 0.003 * (1 + 1e-4)  # the timed update respected the trust region


@pytest.mark.slow
def test_matrpo_admm_sweep_quick_mode(tmp_path):
    result = run_quick_benchmark("matrpo_admm_sweep.py", tmp_path)
    assert "| max rel. primal |" in result.stdout
    tasks = json.loads((REPO / "benchmarks" / "out" / "matrpo_admm_sweep_quick.json").read_text())["tasks"]
    assert set(tasks) == {"coordsum_private/3x5-12", "vmas_private/navigation_agent0"}
    assert [t["n_agents"] for t in tasks.values()] == [3, 4]
    for task in tasks.values():
        assert {(r["mode"], r["beta"]) for r in task["runs"]} == {("random", 1.0), ("synchronous", 1.0)}
        assert {r["metric"] for r in task["runs"]} == {"kl", "gauss_newton"}  # both primal steps (section 9)
        for run in task["runs"]:
            assert [c["iterations"] for c in run["checkpoints"]] == [2, 4]
            for c in run["checkpoints"]:
                assert c["kl_bound_holds"] and c["kl_over_bound"] <= 1 + 1e-4  # the line search's bound
                assert c["primal_max"] >= 0 and c["dual_max"] >= 0 and c["seconds"] > 0
