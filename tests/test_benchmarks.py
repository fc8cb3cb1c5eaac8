"""The benchmark scripts run (their --quick modes); the figures themselves are in benchmarks/README.md."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
@pytest.mark.parametrize("script", ["mixing_overhead.py", "iteration_time.py", "dgat_layer.py"])
def test_benchmark_quick_mode(script, tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), "--quick"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "|" in result.stdout  # a markdown table of ratios was printed
