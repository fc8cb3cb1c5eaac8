"""benchmarks/dg_mappo_iteration.py runs (its --quick mode); the figures are in benchmarks/README.md."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
def test_dg_mappo_iteration_quick_mode(tmp_path):
    out = tmp_path / "dg_mappo_iteration.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "dg_mappo_iteration.py"), "--quick", "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| dg_mappo |" in result.stdout  # the markdown tables were printed
    ratios = json.loads(out.read_text())["ratios"]
    for base in ("mappo (shared)", "mappo (per-agent)"):
        assert ratios[base]["optimizer_step_min"] > 0 and ratios[base]["iteration_time"] > 0
