"""The experiment hook (benchmarl_decentral.experiment_hooks): callbacks a task needs, on every Experiment."""

from __future__ import annotations

import pytest
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
