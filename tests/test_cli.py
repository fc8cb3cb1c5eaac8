"""The `benchmarl` console script, end to end, in subprocesses (real BenchMARL, VMAS, PettingZoo)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import run_cli


def _ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def test_help_and_list(tmp_path):
    out = _ok(run_cli(["--help"], tmp_path)).stdout
    for command in ("run", "evaluate", "resume", "list"):
        assert f"  {command}" in out
    assert "algorithm=" in _ok(run_cli(["run", "--help"], tmp_path)).stdout
    assert "CHECKPOINT_FILE" in _ok(run_cli(["evaluate", "--help"], tmp_path)).stdout
    listing = _ok(run_cli(["list"], tmp_path)).stdout
    assert "* algorithm=decpg" in listing and "  algorithm=mappo" in listing and "task=vmas/balance" in listing
    bad = run_cli(["frobnicate"], tmp_path)
    assert bad.returncode == 2 and "unknown command 'frobnicate'" in bad.stderr


@pytest.mark.slow
def test_run_evaluate_resume_vmas_continuous(tmp_path, tiny):
    _ok(run_cli(["run", "algorithm=decpg", "task=vmas/balance", "task.n_agents=3",
                 "experiment.checkpoint_at_end=true", *tiny], tmp_path))
    (json_file,) = tmp_path.rglob("decpg_*.json")
    results = json.loads(json_file.read_text())
    assert "decpg" in json.dumps(results)
    assert list(tmp_path.rglob("scalars/eval_generalization_gap.csv"))
    (checkpoint,) = tmp_path.rglob("checkpoints/checkpoint_*.pt")
    state = torch.load(checkpoint, weights_only=False)
    assert "decpg" in state  # our extra state (link-failure generators) is checkpointed

    evaluated = _ok(run_cli(["evaluate", str(checkpoint)], tmp_path))
    assert "Evaluation results logged" in evaluated.stdout
    resumed = _ok(run_cli(["resume", str(checkpoint)], tmp_path))
    assert "Reloaded experiment" in resumed.stdout and "decpg" in resumed.stdout


@pytest.mark.slow
def test_run_vmas_discrete(tmp_path, tiny):
    result = _ok(run_cli(["run", "algorithm=decpg", "task=vmas/navigation", "task.n_agents=3",
                          "experiment.prefer_continuous_actions=false", *tiny], tmp_path))
    assert "Algorithm: decpg, Task: vmas/navigation" in result.stdout
    assert list(tmp_path.rglob("scalars/decpg_agents_actor_consensus_distance.csv"))


@pytest.mark.slow
def test_run_pettingzoo_mpe(tmp_path, tiny):
    _ok(run_cli(["run", "algorithm=decpg", "task=pettingzoo/simple_spread", "algorithm.k=1", *tiny], tmp_path))
    assert list(tmp_path.rglob("scalars/eval_reward_episode_reward_mean.csv"))


@pytest.mark.slow
def test_multirun_mixes_our_algorithms_with_benchmarl(tmp_path, tiny):
    _ok(run_cli(["run", "-m", "algorithm=decpg,mappo", "task=vmas/balance", "task.n_agents=3", *tiny], tmp_path))
    runs = sorted(p.name.split("_")[0] for p in tmp_path.glob("multirun/*/*/*/*") if p.is_dir() and "_mlp__" in p.name)
    assert runs == ["decpg", "mappo"]


@pytest.mark.slow
def test_python_m_benchmarl_run_finds_our_algorithms(tmp_path, tiny):
    """After pip install, BenchMARL's own entry point sees decpg via the hydra plugin."""
    _ok(run_cli(["algorithm=decpg", "task=vmas/balance", "task.n_agents=3", *tiny], tmp_path, module="benchmarl.run"))
    assert list(tmp_path.glob("outputs/*/*/decpg_balance_*"))


@pytest.mark.slow
def test_bad_input_fails_before_training(tmp_path, tiny):
    result = run_cli(["run", "algorithm=decpg", "task=vmas/balance", "task.n_agents=3", "algorithm.k=5", *tiny], tmp_path)
    assert result.returncode != 0
    assert "decpg: algorithm.k=5 does not fit group(s) 'agents' (3 agents, so at most k=2)" in result.stderr
    assert not (tmp_path / "outputs").exists()  # no run folder at all, not even hydra's
    assert "nothing was trained; the run folder outputs/" in result.stderr
    result = run_cli(["run", "algorithm=decpg", "task=vmas/balance", "algorithm.min_lr=1.0", *tiny], tmp_path)
    assert result.returncode != 0 and "set min_lr <= lr" in result.stderr
