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


def test_episode_returns_are_benchmarl_evaluation_returns():
    """Oracle: reward summed step by step up to the first done, mean over agents. The rollout runs
    past max_steps (auto-reset), so the steps after the first done must be left out."""
    import torch
    from benchmarl.environments import task_config_registry

    task = task_config_registry["vmas/balance"].get_from_yaml()
    task.config["max_steps"] = 20
    env = task.get_env_fun(num_envs=3, continuous_actions=True, seed=0, device="cpu")()
    torch.manual_seed(0)
    rollout = env.rollout(max_steps=30, break_when_any_done=False)
    groups = list(task.group_map(env))
    reward, done = rollout.get(("next", groups[0], "reward")), rollout.get(("next", "done"))
    expected = []
    for e in range(3):
        total = 0.0
        for t in range(30):
            total += reward[e, t].mean().item()
            if done[e, t].item():
                break
        expected.append(total)
    assert done[:, :-1].any()  # an episode ended (and restarted) within the rollout
    assert quickstart_summary.episode_returns(rollout, groups) == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_random_policy_returns_are_seeded_episodes():
    returns = quickstart_summary.random_policy_returns("vmas/balance", episodes=3)
    assert len(returns) == 3 and all(math.isfinite(r) for r in returns) and len(set(returns)) == 3
    assert returns == quickstart_summary.random_policy_returns("vmas/balance", episodes=3)


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
