"""The single registration point of the plugin.

BenchMARL looks algorithms, models and tasks up in three module-level dicts
(``algorithm_config_registry``, ``model_config_registry``,
``task_config_registry``) and hydra validates each YAML against a ConfigStore
schema named in its ``defaults`` list (``defaults: [decpg_config, _self_]``).
:func:`register` fills all of them, and installs the experiment hook of
:mod:`benchmarl_decentral.experiment_hooks` (callbacks the tasks need) and
those of :mod:`benchmarl_decentral.runs` (checkpoints, result files); calling it again changes nothing.
"""

from __future__ import annotations

import warnings

from benchmarl_decentral._paths import CONF_DIR  # noqa: F401  (re-exported: the YAML folder)


def algorithm_configs() -> dict:
    """Hydra name -> AlgorithmConfig class for every algorithm this plugin adds."""
    from benchmarl_decentral.algorithms import (
        DecpgConfig, DecpgK0Config, DecpgSharedConfig, DgMappoConfig, DgMappoPaperConfig, MagpoConfig,
        MagpoPaperConfig, MatrpoConfig, MatrpoPaperConfig,
    )

    return {"decpg": DecpgConfig, "decpg_k0": DecpgK0Config, "decpg_shared": DecpgSharedConfig,
            "dg_mappo": DgMappoConfig, "dg_mappo_paper": DgMappoPaperConfig, "magpo": MagpoConfig,
            "magpo_paper": MagpoPaperConfig, "matrpo": MatrpoConfig, "matrpo_paper": MatrpoPaperConfig}


def model_configs() -> dict:
    """Hydra ``name`` field -> ModelConfig class for every model this plugin adds."""
    from benchmarl_decentral.models.dgat import DgatConfig

    return {"dgat": DgatConfig}


def task_configs() -> dict:
    """``"family/task"`` -> task enum member for every task this plugin adds."""
    from benchmarl_decentral.environments.coordsum import CoordSumTask
    from benchmarl_decentral.environments.mpe import MpeTask
    from benchmarl_decentral.environments.smax import SmaxTask

    tasks = {}
    for member in (*CoordSumTask, *SmaxTask, *MpeTask):
        tasks[f"{member.env_name()}/{member.name.lower()}"] = member
    from benchmarl_decentral.environments.reward_modes import private_task_configs

    tasks.update(private_task_configs())
    return tasks


def task_schemas() -> dict:
    """``"family_task"`` -> TaskConfig dataclass, for hydra type checking."""
    from benchmarl_decentral.environments.coordsum import CoordSumTask, CoordSumTaskConfig
    from benchmarl_decentral.environments.mpe import MpeSimpleSpreadConfig, MpeTask
    from benchmarl_decentral.environments.smax import SmaxTask, SmaxTaskConfig

    schemas = {f"{member.env_name()}_{member.name.lower()}": MpeSimpleSpreadConfig for member in MpeTask}
    for member in CoordSumTask:
        schemas[f"{member.env_name()}_{member.name.lower()}"] = CoordSumTaskConfig
    for member in SmaxTask:
        schemas[f"{member.env_name()}_{member.name.lower()}"] = SmaxTaskConfig
    from benchmarl_decentral.environments.reward_modes import private_task_schemas

    schemas.update(private_task_schemas())
    return schemas


_REGISTERED = False


def register() -> None:
    """Add our algorithms, models and tasks to BenchMARL and hydra (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    with warnings.catch_warnings():
        # TorchRL's import-time torch.jit.script deprecation is no business of a BenchMARL user;
        # only the warnings of this import are filtered, the global filters stay as they are.
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
        from benchmarl.algorithms import algorithm_config_registry
        from benchmarl.environments import task_config_registry
        from benchmarl.models import model_config_registry

    algorithms = algorithm_configs()
    models = model_configs()
    tasks = task_configs()
    for registry, ours, kind in (
        (algorithm_config_registry, algorithms, "algorithm"),
        (model_config_registry, models, "model"),
        (task_config_registry, tasks, "task"),
    ):
        for name, value in ours.items():
            if name in registry and registry[name] is not value:
                raise RuntimeError(
                    f"benchmarl-decentral: {kind} name '{name}' is already taken in "
                    "BenchMARL's registry by another package; uninstall the "
                    "conflicting plugin or rename ours."
                )
            registry[name] = value

    try:
        from hydra.core.config_store import ConfigStore
    except ImportError:  # hydra is optional in BenchMARL's python API
        pass
    else:
        cs = ConfigStore.instance()
        for name, config in algorithms.items():
            cs.store(name=f"{name}_config", group="algorithm", node=config)
        for name, schema in task_schemas().items():
            cs.store(name=f"{name}_config", group="task", node=schema)
    from benchmarl_decentral.experiment_hooks import install

    install()  # callbacks the tasks need (SMAC-family evaluation win rate), any entry point
    from benchmarl_decentral import runs

    runs.install()  # checkpoints checked first, resumed curves kept, evaluate beside the run
    _REGISTERED = True
