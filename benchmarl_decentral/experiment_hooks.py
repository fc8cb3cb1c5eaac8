"""Callbacks that a task needs, attached to every BenchMARL ``Experiment``.

BenchMARL's evaluation logs rewards only, and a task has no way to add a
metric to it: a task never sees the ``Experiment``, and the hydra apps
(``python -m benchmarl.run``, ``benchmarl run``, multiruns, ``benchmarl
benchmark``) build every ``Experiment`` with no callbacks. So that the SMAC
family logs its evaluation win rate whatever the entry point and algorithm,
:func:`install` (called once by :func:`benchmarl_decentral.register`) wraps
``Experiment._setup_task``: right after BenchMARL has built the task's envs
and specs, :func:`task_callbacks` says which callbacks the task needs and
those not already given by the user are appended.

Four rules:

* a task whose info spec carries ``battle_won`` (our ``smax/*`` and
  BenchMARL's own ``smacv2/*``) gets
  :class:`~benchmarl_decentral.environments.smax.SmacWinRateCallback`
  (``eval/info/win_rate``, ``eval/info/episode_limit_rate``);
* a task whose info spec carries ``sum_hit`` (``coordsum/*``,
  ``coordsum_private/*``) gets
  :class:`~benchmarl_decentral.environments.coordsum.CoordSumHitRateCallback`
  (``eval/info/sum_hit_rate``, the team metric);
* an algorithm config with a non-empty ``evaluation_dropout`` (our four
  algorithms) gets
  :class:`~benchmarl_decentral.evaluation_dropout.DropoutEvaluation` (a second
  evaluation with those agents silenced, ``eval/dropout/...`` and
  ``eval/dropout_gap``); indices that do not fit the task's groups are
  refused right there, before training, and the run folder is removed;
* a D-GAT model (``model=layers/dgat``, as the model, the critic model or a
  layer of a sequence) with ``topology: visibility`` and no
  ``graph_kwargs.layout`` gets the observation layout of the task
  (:func:`~benchmarl_decentral.consensus.visibility.task_layout`), as
  ``algorithm=dg_mappo`` does for its own D-GAT. The model config is copied
  first, never changed in place (a ``Benchmark`` shares it between tasks).
  Models are built after the task, so the layout is there when they are.
  On a task without one (not SMAC-family) such a model is refused right
  there, naming ``model.topology`` / ``critic_model.topology``.

The wrapper only appends to ``experiment.callbacks`` and replaces those
model configs; it changes nothing else, and :func:`uninstall` restores
BenchMARL's method.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from typing import Any, List, Optional

from benchmarl.experiment.callback import Callback

__all__ = ["install", "installed", "task_callbacks", "uninstall", "with_visibility_layout"]

_MARK = "_benchmarl_decentral_hook"


def task_callbacks(experiment) -> List[Callback]:
    """The callbacks ``experiment``'s task needs (its envs and specs are built)."""
    from benchmarl_decentral.environments.coordsum import CoordSumHitRateCallback
    from benchmarl_decentral.environments.smax import SmacWinRateCallback

    callbacks: List[Callback] = []
    info = getattr(experiment, "info_spec", None)
    if info is not None and ("info", "battle_won") in info.keys(True, True):
        callbacks.append(SmacWinRateCallback())
    if info is not None and ("info", "sum_hit") in info.keys(True, True):
        callbacks.append(CoordSumHitRateCallback())
    callbacks.extend(_dropout_callbacks(experiment))
    return callbacks


def _dropout_callbacks(experiment) -> List[Callback]:
    from benchmarl_decentral.algorithms._common import config_error
    from benchmarl_decentral.evaluation_dropout import dropout_callbacks

    try:
        return dropout_callbacks(experiment)
    except ValueError as err:
        raise config_error(experiment, str(err)) from None


def _attach(experiment) -> None:
    present = {type(cb) for cb in experiment.callbacks}
    new = [cb for cb in task_callbacks(experiment) if type(cb) not in present]
    for cb in new:
        cb.experiment = experiment
    if new:
        # hydra runs pass callbacks=() (a tuple): rebind rather than append
        experiment.callbacks = [*experiment.callbacks, *new]


def with_visibility_layout(model_config: Any, layout: Optional[str]) -> Any:
    """``model_config`` with ``graph_kwargs.layout`` set on every visibility D-GAT in it (a copy if changed)."""
    from benchmarl.models import SequenceModelConfig

    from benchmarl_decentral.consensus.visibility import with_layout
    from benchmarl_decentral.models.dgat import DgatConfig

    if layout is None:
        return model_config
    if isinstance(model_config, SequenceModelConfig):
        layers = [with_visibility_layout(c, layout) for c in model_config.model_configs]
        if all(new is old for new, old in zip(layers, model_config.model_configs)):
            return model_config
        return dataclasses.replace(model_config, model_configs=layers)
    if isinstance(model_config, DgatConfig) and model_config.topology == "visibility":
        kwargs = with_layout(model_config.graph_kwargs, layout)
        if kwargs != dict(model_config.graph_kwargs or {}):
            model_config = copy.copy(model_config)
            model_config.graph_kwargs = kwargs
    return model_config


def _visibility_without_layout(model_config: Any) -> bool:
    """Whether ``model_config`` holds a visibility D-GAT whose ``graph_kwargs`` give no layout."""
    from benchmarl.models import SequenceModelConfig

    from benchmarl_decentral.models.dgat import DgatConfig

    if isinstance(model_config, SequenceModelConfig):
        return any(_visibility_without_layout(c) for c in model_config.model_configs)
    return (
        isinstance(model_config, DgatConfig)
        and model_config.topology == "visibility"
        and not (model_config.graph_kwargs or {}).get("layout")
    )


def _fill_layouts(experiment) -> None:
    from benchmarl_decentral.consensus.visibility import task_layout

    layout = task_layout(experiment.task)
    for name, prefix in (("model_config", "model"), ("critic_model_config", "critic_model")):
        config = getattr(experiment, name, None)
        if config is None:
            continue
        if layout is None and _visibility_without_layout(config):
            # refused here, before any model is built, with the key to change
            from benchmarl_decentral.algorithms._common import config_error
            from benchmarl_decentral.models.dgat import not_smac_message

            task = f"{experiment.task.env_name()}/{experiment.task.name.lower()}"
            raise config_error(experiment, not_smac_message("D-GAT", prefix, task))
        setattr(experiment, name, with_visibility_layout(config, layout))


def installed() -> bool:
    """Whether ``Experiment._setup_task`` is wrapped."""
    from benchmarl.experiment import Experiment

    return getattr(Experiment._setup_task, _MARK, False)


def install() -> None:
    """Wrap ``Experiment._setup_task`` so that :func:`task_callbacks` are attached (idempotent).

    Also installs :mod:`benchmarl_decentral.resume` (optimizer, random and
    environment state in checkpoints).
    """
    from benchmarl.experiment import Experiment

    from benchmarl_decentral import resume

    resume.install()
    if installed():
        return
    original = Experiment._setup_task

    @functools.wraps(original)
    def _setup_task(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        _attach(self)
        _fill_layouts(self)
        return result

    setattr(_setup_task, _MARK, True)
    _setup_task.__wrapped_original__ = original
    Experiment._setup_task = _setup_task


def uninstall() -> None:
    """Restore BenchMARL's ``Experiment._setup_task`` (and the methods :mod:`~benchmarl_decentral.resume` wraps)."""
    from benchmarl.experiment import Experiment

    from benchmarl_decentral import resume

    resume.uninstall()
    if installed():
        Experiment._setup_task = Experiment._setup_task.__wrapped_original__
