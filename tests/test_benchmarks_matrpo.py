"""The MATRPO update-cost benchmark runs (its --quick mode); the figures are in benchmarks/README.md."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
def test_matrpo_update_cost_quick_mode(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "matrpo_update_cost.py"), "--quick"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| update / mappo |" in result.stdout  # the markdown table of ratios was printed
    rows = json.loads((REPO / "benchmarks" / "out" / "matrpo_update_cost_quick.json").read_text())["rows"]
    assert {r["n_agents"] for r in rows} == {3, 4}
    for r in rows:
        assert r["matrpo_update_s"] > 0 and r["mappo_phase_s"] > 0
        assert r["kl_max"] <= 0.003 * (1 + 1e-4)  # the timed update respected the trust region
