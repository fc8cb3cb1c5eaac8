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


@pytest.mark.slow
def test_matrpo_admm_cost_quick_mode(tmp_path):
    """``--cost``: one timed update per ADMM setting on the same batch (benchmarks/README.md section 9)."""
    result = run_quick_benchmark("matrpo_admm_sweep.py", tmp_path, "--cost", "--tasks", "coordsum_private/3x5-12")
    assert "| ADMM CPU s |" in result.stdout
    rows = json.loads((REPO / "benchmarks" / "out" / "matrpo_admm_cost_quick.json").read_text())["cost"][
        "coordsum_private/3x5-12"]["rows"]
    assert list(rows) == ["table_iii", "exact_cg30", "kl_exact", "exact_rtol0.3"]
    for r in rows.values():
        assert 1 <= r["iterations_used"] <= 4 and r["cpu_admm"] > 0 and r["kl_over_bound"] <= 1 + 1e-4
        assert sum(r["cg_iterations"]) <= sum(r["primal_steps"]) * r["cg_iters"]  # counted CG iterations, capped
    # the relative stop runs fewer CG iterations than the fixed 30 over the same iterations of the same batch
    assert sum(rows["exact_rtol0.3"]["cg_iterations"]) < sum(rows["exact_cg30"]["cg_iterations"])


@pytest.mark.slow
def test_matrpo_critic_quick_mode(tmp_path):
    result = run_quick_benchmark("matrpo_critic.py", tmp_path)
    assert "| held-out EV (agent 0) |" in result.stdout  # the markdown table was printed
    out = json.loads((REPO / "benchmarks" / "out" / "matrpo_critic_quick.json").read_text())
    assert out["task"] == "coordsum_private/3x5-12"  # the results suite's matrpo_indep task and settings
    assert out["overrides"]["experiment.on_policy_minibatch_size"] == "250"
    schedules = out["schedules"]
    # today's (the suite's 4 epochs of 250 frames, scaled to the 200-frame batch: 4 x 50) and 3 x 64
    assert [(s["epochs"], s["minibatch"], s["steps"]) for s in schedules.values()] == [(4, 50, 16), (3, 64, 12)]
    for entry in schedules.values():
        (run,) = entry["runs"]
        assert len(run["iterations"]) == 3
        for it in run["iterations"]:
            assert it["critic_steps"] == entry["steps"]  # counted optimizer steps = the schedule's
            assert it["mse_agent0"] >= 0 and it["mse_unrewarded"] >= 0 and it["critic_cpu_s"] > 0
            assert it["ev_agent0"] <= 1 or it["ev_agent0"] != it["ev_agent0"]  # at most 1, or nan (no reward)


@pytest.mark.slow
def test_matrpo_admm_learning_quick_mode(tmp_path):
    """benchmarks/learning/matrpo_admm_learning.py: Table III's ADMM and the exact step, one tiny run each."""
    result = run_quick_benchmark("learning/matrpo_admm_learning.py", tmp_path, "--out", tmp_path / "runs")
    assert "| variant | seeds | hit rate" in result.stdout
    out = json.loads((tmp_path / "runs" / "results.json").read_text())
    assert set(out["summary"]) == {"table3", "exact"}
    for name, run in out["runs"].items():
        assert len(run["hit_curve"]) >= 2 and 0 <= run["hit_rate"] <= 1  # the team metric, every evaluation
        assert len(run["residual_per_update"]) == 2  # two policy iterations of 200 frames, one residual each
        assert run["cpu_per_iteration"] > 0
    exact, table3 = out["runs"]["exact/seed0"], out["runs"]["table3/seed0"]
    # the exact step stops every update at admm_tol = 0.05 (its 200-iteration cap not reached); Table III's 100
    # random-link iterations do not get there
    assert max(exact["residual_per_update"]) < 0.05 and all(k < 200 for k in exact["admm_iterations_per_update"])
    assert table3["admm_iterations_per_update"] == [100.0, 100.0]
    assert exact["cg_iterations_per_update"] and all(c > 0 for c in exact["cg_iterations_per_update"])
