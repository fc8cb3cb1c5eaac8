"""benchmarks/magpo_iteration.py runs (its --quick mode); the figures themselves are in benchmarks/README.md."""

from __future__ import annotations

import json

import pytest

from conftest import run_quick_benchmark


@pytest.mark.slow
def test_magpo_iteration_quick_mode(tmp_path):
    out = tmp_path / "magpo_iteration_quick.json"
    result = run_quick_benchmark("magpo_iteration.py", tmp_path, "--out", out)
    assert "| magpo / mappo |" in result.stdout and "target <= 2.0x" in result.stdout
    ratios = json.loads(out.read_text())["ratios"]
    for key in ("iteration_time", "optimizer_step_min", "collection_min", "iteration_estimate"):
        assert ratios[key] > 0, key  # every part was timed for both algorithms
