"""The SMAX throughput benchmark runs (its --quick mode); the figures are in the benchmark's JSON/README."""

from __future__ import annotations

import json
import os
import tempfile

import pytest

from benchmarl_decentral.environments.smax import jaxmarl_available
from conftest import run_quick_benchmark


@pytest.mark.slow
@pytest.mark.skipif(not jaxmarl_available(), reason="jax/jaxmarl not installed: pip install 'benchmarl-decentral[smax]'")
def test_smax_throughput_quick_mode(tmp_path):
    out = tmp_path / "smax_throughput_quick.json"
    env = dict(os.environ)
    # reuse compiled SMAX steps across test processes (tests/test_smax.py uses the same folder)
    env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "benchmarl_decentral_jax"))
    result = run_quick_benchmark("smax_throughput.py", tmp_path, "--out", out, env=env)
    assert "| 3m | 64 |" in result.stdout  # the markdown table row
    row = json.loads(out.read_text())["rows"][0]
    for key in ("raw_steps_per_s", "wrapper_steps_per_s", "floor_steps_per_s"):
        assert row[key] > 0, key
    assert row["ratio_wrapper_raw"] == pytest.approx(row["wrapper_steps_per_s"] / row["raw_steps_per_s"])
