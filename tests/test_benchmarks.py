"""The benchmark scripts run (their --quick modes); the figures themselves are in benchmarks/README.md."""

from __future__ import annotations

import pytest

from conftest import run_quick_benchmark


@pytest.mark.slow
@pytest.mark.parametrize("script", ["mixing_overhead.py", "iteration_time.py", "dgat_layer.py"])
def test_benchmark_quick_mode(script, tmp_path):
    result = run_quick_benchmark(script, tmp_path)
    assert "|" in result.stdout  # a markdown table of ratios was printed
