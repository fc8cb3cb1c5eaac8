"""scripts/quickstart.sh end to end (tiny budget), and its random-policy baseline."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import quickstart_summary  # noqa: E402


def test_random_baseline_is_the_reports_random_row_on_the_runs_own_task(tmp_path):
    """The quickstart's random policy is the report's ``random`` reference row, on the task as the run's
    config defines it (a task override such as ``task.n_agents=3`` holds), seeded."""
    import yaml

    from benchmarl_decentral.reporting.reference import TaskSetup, evaluate_policy

    task_config = {"n_agents": 3, "max_steps": 20, "package_mass": 5, "random_package_pos_on_line": True}
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"task": task_config, "experiment": {}}))
    returns = quickstart_summary.random_policy_returns(tmp_path, "vmas/balance", episodes=3)
    assert len(returns) == 3 and all(math.isfinite(r) for r in returns) and len(set(returns)) == 3
    assert returns == evaluate_policy(TaskSetup("vmas/balance", task_config, True), "random", 0, 3)
    # another task config gives other episodes: the override is used, not the task's YAML defaults
    other = dict(task_config, n_agents=4)
    assert returns != evaluate_policy(TaskSetup("vmas/balance", other, True), "random", 0, 3)
    (tmp_path / ".hydra" / "config.yaml").write_text("{}")
    with pytest.raises(FileNotFoundError, match="does not hold the run's task config"):
        quickstart_summary.random_policy_returns(tmp_path, "vmas/balance", episodes=3)


@pytest.mark.slow
def test_quickstart_writes_checkpoints_curve_and_a_verdict_against_random(tmp_path):
    """2 iterations of 300 frames, one epoch each (an override passed through to `benchmarl run`)."""
    out = tmp_path / "quickstart"
    env = dict(os.environ, VENV=str(Path(sys.executable).parent.parent), QUICKSTART_FRAMES="600",
               QUICKSTART_BATCH="300", QUICKSTART_OUT=str(out))
    result = subprocess.run(["bash", str(REPO / "scripts" / "quickstart.sh"),
                             "experiment.on_policy_n_minibatch_iters=1"],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = result.stdout.split("Quickstart summary", 1)[1]
    assert "first evaluation (300 frames):" in summary and "last evaluation  (600 frames):" in summary
    assert "uniform random policy (10 episodes):" in summary and "verdict: " in summary
    png = out / "learning_curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (mid,) = out.glob("*/checkpoints/checkpoint_300.pt")
    (final,) = out.glob("*/checkpoints/checkpoint_600.pt")
    assert f"benchmarl evaluate {final}" in summary and f"benchmarl resume {mid}" in summary
