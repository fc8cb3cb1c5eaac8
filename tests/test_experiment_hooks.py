"""The experiment hook (benchmarl_decentral.experiment_hooks): callbacks a task needs, on every Experiment."""

from __future__ import annotations

import pytest
import torch
from benchmarl.experiment import Experiment

from benchmarl_decentral import experiment_hooks
from benchmarl_decentral.environments.smax import jaxmarl_available, SmacWinRateCallback
from conftest import make_experiment

needs_jaxmarl = pytest.mark.skipif(not jaxmarl_available(),
                                   reason="jax/jaxmarl not installed: pip install 'benchmarl-decentral[smax]'")


def _win_rate_callbacks(experiment):
    return [cb for cb in experiment.callbacks if isinstance(cb, SmacWinRateCallback)]


def test_installed_by_register_and_idempotent():
    import benchmarl_decentral

    assert experiment_hooks.installed()
    wrapped = Experiment._setup_task
    benchmarl_decentral.register()
    experiment_hooks.install()
    assert Experiment._setup_task is wrapped  # not wrapped twice


def test_uninstall_restores_benchmarls_method():
    wrapped = Experiment._setup_task
    original = wrapped.__wrapped_original__
    try:
        experiment_hooks.uninstall()
        assert Experiment._setup_task is original and not experiment_hooks.installed()
    finally:
        experiment_hooks.install()
    assert experiment_hooks.installed() and Experiment._setup_task.__wrapped_original__ is original


def test_tasks_without_battle_info_get_no_callback(tmp_path):
    exp = make_experiment(tmp_path, algorithm="mappo", task="vmas/balance")
    assert _win_rate_callbacks(exp) == [] and experiment_hooks.task_callbacks(exp) == []
    exp.close()


@needs_jaxmarl
def test_smax_experiment_built_in_python_gets_the_win_rate_callback_once(tmp_path):
    exp = make_experiment(tmp_path, algorithm="mappo", task="smax/3m")  # no callbacks given
    (cb,) = _win_rate_callbacks(exp)
    assert cb.experiment is exp
    exp.close()
    mine = SmacWinRateCallback()
    exp = make_experiment(tmp_path, algorithm="mappo", task="smax/3m", callbacks=[mine], seed=1)
    assert _win_rate_callbacks(exp) == [mine]  # the user's own is kept, none added
    exp.close()


def _dgat(**overrides):
    from benchmarl_decentral.models.dgat import DgatConfig

    config = DgatConfig.get_from_yaml()
    config.num_cells, config.hidden_channels, config.num_hops = [16], 8, 1
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def test_visibility_layout_is_filled_in_on_a_copy():
    from benchmarl.models import MlpConfig, SequenceModelConfig

    fill = experiment_hooks.with_visibility_layout
    dgat = _dgat(topology="visibility", graph_kwargs={"symmetric": True})
    filled = fill(dgat, "smax")
    assert filled is not dgat and filled.graph_kwargs == {"symmetric": True, "layout": "smax"}
    assert dgat.graph_kwargs == {"symmetric": True}  # the caller's config is untouched
    explicit = _dgat(topology="visibility", graph_kwargs={"layout": "smacv2/protoss_5_vs_5"})
    assert fill(explicit, "smax") is explicit  # an explicit layout wins
    full = _dgat(topology="full")
    assert fill(full, "smax") is full
    assert fill(dgat, None) is dgat  # not a SMAC-family task: the model's own error stays
    mlp = MlpConfig.get_from_yaml()
    sequence = SequenceModelConfig(model_configs=[dgat, mlp], intermediate_sizes=[8])
    filled = fill(sequence, "smax")
    assert filled is not sequence and filled.model_configs[0].graph_kwargs["layout"] == "smax"
    assert filled.model_configs[1] is mlp and sequence.model_configs[0] is dgat


@needs_jaxmarl
def test_dgat_model_with_visibility_on_smax_needs_no_layout(tmp_path):
    """``model=layers/dgat model.topology=visibility`` on smax/3m: the layout comes from the task."""
    from benchmarl.algorithms import MappoConfig
    from benchmarl.environments import task_config_registry
    from benchmarl.models import MlpConfig
    from conftest import tiny_experiment_config

    dgat = _dgat(topology="visibility")
    experiment = Experiment(
        task=task_config_registry["smax/3m"].get_from_yaml(),
        algorithm_config=MappoConfig.get_from_yaml(),
        model_config=dgat,
        critic_model_config=MlpConfig(num_cells=[16], layer_class=torch.nn.Linear, activation_class=torch.nn.Tanh),
        seed=0,
        config=tiny_experiment_config(tmp_path, max_n_iters=1),
    )
    assert experiment.model_config.graph_kwargs == {"layout": "smax"} and dgat.graph_kwargs is None
    experiment.run()
    assert experiment.n_iters_performed == 1
