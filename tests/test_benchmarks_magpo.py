"""benchmarks/magpo_iteration.py runs (its --quick mode); the figures themselves are in benchmarks/README.md."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
def test_magpo_iteration_quick_mode(tmp_path):
    out = tmp_path / "magpo_iteration_quick.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "magpo_iteration.py"), "--quick", "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| magpo / mappo |" in result.stdout and "target <= 2.0x" in result.stdout
    ratios = json.loads(out.read_text())["ratios"]
    for key in ("iteration_time", "optimizer_step_min", "collection_min", "iteration_estimate"):
        assert ratios[key] > 0, key  # every part was timed for both algorithms
