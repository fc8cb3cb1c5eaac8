"""benchmarks/dg_mappo_iteration.py runs (its --quick mode); the figures are in benchmarks/README.md."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import REPO, run_quick_benchmark


@pytest.mark.slow
def test_dg_mappo_iteration_quick_mode(tmp_path):
    out = tmp_path / "dg_mappo_iteration.json"
    result = run_quick_benchmark("dg_mappo_iteration.py", tmp_path, "--out", out)
    assert "| dg_mappo |" in result.stdout  # the markdown tables were printed
    ratios = json.loads(out.read_text())["ratios"]
    for base in ("mappo (shared)", "mappo (per-agent)"):
        assert ratios[base]["optimizer_step_min"] > 0 and ratios[base]["iteration_time"] > 0


def test_every_dg_mappo_sweep_variant_composes_into_the_config_it_names():
    """benchmarks/learning/dg_mappo_sweep.py: each variant is a valid override list; the older runs' variants
    pin the previous defaults (clip 0.05, lr 5e-4, no output gain), runs J's vary runs I's default and
    today's "default" is the shipped config."""
    from benchmarl.hydra_config import load_algorithm_config_from_hydra
    from hydra import compose, initialize_config_module

    import benchmarl_decentral  # noqa: F401

    sys.path.insert(0, str(REPO / "benchmarks" / "learning"))
    import dg_mappo_sweep

    configs = {}
    with initialize_config_module(config_module="benchmarl.conf", version_base=None):
        for name, overrides in dg_mappo_sweep.VARIANTS.items():
            cfg = compose(config_name="config", overrides=[*overrides, "task=vmas/navigation"])
            configs[name] = load_algorithm_config_from_hydra(cfg.algorithm)
    assert (configs["previous_default"].clip_epsilon, configs["previous_default"].lr) == (0.05, 0.0005)
    assert (configs["clip02"].clip_epsilon, configs["clip02"].lr) == (0.2, 0.0005)
    assert configs["clip02_lr1e3"].actor_output_gain is None  # runs A-I ran without the output gain
    runs_i = {k: v for k, v in vars(configs["lr2e3"]).items() if k != "lr"}  # runs J vary runs I's default
    assert runs_i == {k: v for k, v in vars(configs["clip02_lr1e3"]).items() if k != "lr"}
    # runs J chose today's default: runs I's default with A.3's output gain (auto = 0.01 on the mlp actor)
    assert {k: v for k, v in vars(configs["default"]).items() if k != "actor_output_gain"} == {
        k: v for k, v in vars(configs["clip02_lr1e3"]).items() if k != "actor_output_gain"}
    assert configs["default"].actor_output_gain == "auto" and configs["output_gain"].actor_output_gain == 0.01
    assert configs["zero_messages"].dgat_messages == "zero" and configs["zero_messages"].lr == 0.0005


@pytest.mark.slow
def test_dg_mappo_sweep_quick_mode(tmp_path):
    result = run_quick_benchmark("learning/dg_mappo_sweep.py", tmp_path, "--out", tmp_path / "sweep")
    summary = json.loads((tmp_path / "sweep" / "results.json").read_text())["summary"]
    assert list(summary) == ["default", "mix_all"] and all(s["n"] == 1 for s in summary.values())
    assert "| default |" in result.stdout and "| mix_all |" in result.stdout
