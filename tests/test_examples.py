"""Every example and README command runs as written (small budgets)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO


@pytest.mark.slow
def test_python_api_example(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "decpg_python_api.py"), "--iters", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "actor consensus distance after training" in result.stdout
