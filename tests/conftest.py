"""Shared fixtures: tiny BenchMARL experiments on real VMAS / PettingZoo tasks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from benchmarl.experiment.callback import Callback

import benchmarl_decentral  # noqa: F401  (registers our algorithms)

REPO = Path(__file__).resolve().parent.parent


def tiny_experiment_config(tmp_path, **overrides):
    """A BenchMARL ExperimentConfig small enough for CPU unit tests."""
    from benchmarl.experiment import ExperimentConfig

    config = ExperimentConfig.get_from_yaml()
    config.max_n_iters = 2
    config.max_n_frames = None
    config.on_policy_collected_frames_per_batch = 60
    config.on_policy_n_envs_per_worker = 2
    config.on_policy_minibatch_size = 30
    config.on_policy_n_minibatch_iters = 1
    config.evaluation = False
    config.evaluation_interval = 60
    config.evaluation_episodes = 2
    config.loggers = []
    config.create_json = False
    config.render = False
    config.save_folder = str(tmp_path)
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def make_experiment(tmp_path, *, algorithm="decpg", task="vmas/balance", task_overrides=None,
                    algorithm_overrides=None, seed=0, callbacks=None, task_wrapper=None, **experiment_overrides):
    """A tiny experiment; ``task_wrapper`` wraps the task first (e.g. a distributed rank's ``LocalAgentsTask``)."""
    from benchmarl.algorithms import algorithm_config_registry
    from benchmarl.environments import task_config_registry
    from benchmarl.experiment import Experiment
    from benchmarl.models import MlpConfig

    task_cfg = task_config_registry[task].get_from_yaml()
    if task_overrides:
        task_cfg.config.update(task_overrides)
    algo_cfg = algorithm_config_registry[algorithm].get_from_yaml()
    for key, value in (algorithm_overrides or {}).items():
        setattr(algo_cfg, key, value)
    model = MlpConfig(num_cells=[16], layer_class=torch.nn.Linear, activation_class=torch.nn.Tanh)
    return Experiment(
        task=task_cfg if task_wrapper is None else task_wrapper(task_cfg),
        algorithm_config=algo_cfg,
        model_config=model,
        critic_model_config=model,
        seed=seed,
        config=tiny_experiment_config(tmp_path, **experiment_overrides),
        callbacks=callbacks,
    )


# Tiny BenchMARL model configs (hidden sizes of 8) for the per-model tests of each algorithm.
def mlp_config(cells=(8,)):
    """An MLP with ``cells`` hidden units per layer and Tanh activations."""
    from benchmarl.models import MlpConfig

    return MlpConfig(num_cells=list(cells), layer_class=torch.nn.Linear, activation_class=torch.nn.Tanh)


def gnn_config():
    """BenchMARL's default Gnn: GraphConv, full topology, one torch_geometric module per agent."""
    from benchmarl.models import GnnConfig

    return GnnConfig.get_from_yaml()


def deepsets_config():
    """Deepsets with hidden sizes of 8 in its local and global networks."""
    from benchmarl.models import DeepsetsConfig

    config = DeepsetsConfig.get_from_yaml()
    config.local_nn_num_cells, config.global_nn_num_cells, config.out_features_local_nn = [8], [8], 8
    return config


def recurrent_config(cls):
    """A recurrent model config (``GruConfig`` or ``LstmConfig``) with hidden size 8."""
    config = cls.get_from_yaml()
    config.hidden_size, config.mlp_num_cells = 8, [8]
    return config


def cnn_config():
    """A CNN with 4 channels and an MLP head of 8 units."""
    from benchmarl.models import CnnConfig

    config = CnnConfig.get_from_yaml()
    config.cnn_num_cells, config.mlp_num_cells = [4], [8]
    return config


class EvaluationCounter(Callback):
    """Records, at each evaluation, how many episodes it rolled out (in ``episodes``)."""

    def __init__(self):
        super().__init__()
        self.episodes = []

    def on_evaluation_end(self, rollouts):
        self.episodes.append(len(rollouts))


def run_cli(args, cwd, timeout=600, module=None, as_user=False):
    """Run the `benchmarl` console script (or `python -m module`) in a subprocess.

    By default with full tracebacks and warnings off (for debugging failures);
    ``as_user=True`` runs it as a user would (neither HYDRA_FULL_ERROR nor
    PYTHONWARNINGS set), to check what they see.
    """
    env = dict(os.environ, HYDRA_FULL_ERROR="1", PYTHONWARNINGS="ignore")
    if as_user:
        env.pop("HYDRA_FULL_ERROR")
        env.pop("PYTHONWARNINGS")
    if module is None:
        exe = Path(sys.executable).parent / "benchmarl"
        cmd = [str(exe), *args]
    else:
        cmd = [sys.executable, "-m", module, *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def run_quick_benchmark(script, cwd, *args, env=None):
    """Run ``benchmarks/<script> --quick *args`` in ``cwd`` and check that it exits 0; returns the result.

    ``script`` is relative to ``benchmarks/`` (e.g. ``"learning/dg_mappo_sweep.py"``); on a
    failure the assertion shows the tail of its stderr.
    """
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), "--quick", *map(str, args)],
        cwd=cwd, capture_output=True, text=True, timeout=600, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


# Tiny experiment overrides for CLI runs (hydra syntax).
TINY = [
    "experiment.max_n_iters=2",
    "experiment.max_n_frames=null",
    "experiment.on_policy_collected_frames_per_batch=100",
    "experiment.on_policy_n_envs_per_worker=2",
    "experiment.on_policy_minibatch_size=50",
    "experiment.on_policy_n_minibatch_iters=1",
    "experiment.evaluation_interval=100",
    "experiment.evaluation_episodes=2",
    "experiment.loggers=[csv]",
    "experiment.render=false",
    "model.num_cells=[16]",
    "critic_model.num_cells=[16]",
]


@pytest.fixture
def tiny():
    return list(TINY)
