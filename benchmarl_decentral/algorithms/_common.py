"""Glue shared by our algorithms."""

from __future__ import annotations

import shutil
from typing import Optional

import torch
from torchrl.data import Composite, Unbounded

from benchmarl_decentral.consensus.visibility import task_layout, visibility_adjacency


def config_error(experiment, message: str) -> ValueError:
    """A ValueError for a config that does not fit the task, raised before training.

    BenchMARL has already created the run folder (holding only ``config.pkl``)
    when an algorithm is built; remove it so no half-written run is left behind.
    """
    folder = getattr(experiment, "folder_name", None)
    if (
        folder is not None
        and experiment.config.restore_file is None
        and folder.is_dir()
        and {p.name for p in folder.iterdir()} <= {"config.pkl"}
    ):
        shutil.rmtree(folder, ignore_errors=True)
    return ValueError(message)


def visibility_layout(algorithm, name: str) -> str:
    """The ally-visibility layout of the algorithm's task, checked on every group's observation.

    For ``topology=visibility`` of ``decpg`` and ``matrpo``: the graph is read
    from the group's ``observation`` (:mod:`benchmarl_decentral.consensus.visibility`),
    so the task must be SMAC-family and the observation must have that
    layout. Either failure is a :func:`config_error` before training.
    """
    experiment = algorithm.experiment
    task = experiment.task.name.lower()
    layout = task_layout(experiment.task)
    if layout is None:
        raise config_error(
            experiment,
            f"{name}: topology=visibility builds the communication graph from SMAC ally visibility, "
            f"but task {task} is not a SMAC-family task (smax/*, smacv2/*). Use a static topology "
            "(algorithm.topology=ring, knn_ring, full or custom).",
        )
    for group, agents in algorithm.group_map.items():
        key = (group, "observation")
        if key not in algorithm.observation_spec.keys(True, True):
            raise config_error(experiment, f"{name}: topology=visibility needs {key} in task {task}'s observations.")
        from benchmarl_decentral.distributed.local import group_size

        n = group_size(experiment, group)  # every agent of the group (a distributed rank may build a block of them)
        shape = algorithm.observation_spec[key].shape
        try:
            visibility_adjacency(torch.zeros(n, *shape[1:]), layout=layout, n_agents=n)
        except ValueError as err:
            raise config_error(
                experiment,
                f"{name}: topology=visibility cannot read group '{group}' of task {task}: {err}",
            ) from None
    return layout


#: The per-agent networks D-SGD can keep in consensus (``algorithm.consensus_params``).
CONSENSUS_NETWORKS: tuple[str, ...] = ("dgat", "actor", "critic")


def check_consensus_params(value, algorithm: str, allowed: tuple[str, ...] = CONSENSUS_NETWORKS) -> tuple[str, ...]:
    """Validate ``algorithm.consensus_params``: a list of distinct names out of ``allowed``.

    Args:
        value: the configured value (a list, an omegaconf ListConfig, or a tuple).
        algorithm: the algorithm's name, for the message.
        allowed: the networks this algorithm has.

    Returns:
        The names as a tuple, in the order given.

    Raises:
        ValueError: one message naming the problem and the fix.
    """
    example = f"algorithm.consensus_params=[{','.join(allowed)}]"
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        raise ValueError(
            f"{algorithm}: consensus_params must be a list of networks out of {list(allowed)}, got "
            f"{value!r}; set e.g. {example} ([] mixes nothing)"
        )
    names = tuple(value)
    unknown = [v for v in names if v not in allowed]
    if unknown or len(set(names)) != len(names):
        problem = f"unknown {unknown}" if unknown else "a repeated name"
        raise ValueError(
            f"{algorithm}: consensus_params {list(names)} has {problem}; choose distinct names out of "
            f"{list(allowed)}, e.g. {example}"
        )
    return names


def check_link_latency(value, algorithm: str, consensus_params, networks: tuple[str, ...] = ("actor", "critic")) -> int:
    """Validate ``algorithm.link_latency``: an int ``d >= 0``, and 0 when ``consensus_params`` mixes nothing.

    Raises:
        ValueError: one message naming the problem and the fix.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(
            f"{algorithm}: link_latency must be an integer number of mixing steps >= 0, got {value!r}; "
            "set e.g. algorithm.link_latency=2 (0: the synchronous DSGD step)"
        )
    if value > 0 and not list(consensus_params):
        raise ValueError(
            f"{algorithm}: link_latency={value} delays the DSGD mixing messages, but consensus_params is [] "
            "(nothing is mixed, so it would do nothing); set algorithm.link_latency=0 or mix a network, "
            f"e.g. algorithm.consensus_params=[{','.join(networks)}]"
        )
    return value


def layer_configs(config) -> list:
    """The layers of a model config: itself, or each layer of a (nested) ``SequenceModelConfig``."""
    layers = getattr(config, "model_configs", None)
    if layers is None:
        return [config]
    return [leaf for layer in layers for leaf in layer_configs(layer)]


def gnn_dropout_conflict(owner: str, evaluation_dropout, model_config, silenced: str) -> Optional[str]:
    """Why ``evaluation_dropout`` cannot silence agents with this actor (``None``: it can).

    A ``layers/gnn`` actor sends its own messages over the gnn's graph at execution, so a
    silenced agent's observation would still reach the others: the ablation would not be one.
    """
    if not evaluation_dropout or not any(type(layer).__name__ == "GnnConfig" for layer in layer_configs(model_config)):
        return None
    return (f"{owner}: evaluation_dropout={list(evaluation_dropout)} silences agents ({silenced}), but a layers/gnn "
            "actor sends its own messages over the gnn's graph, which would still carry the silenced agents' "
            "observations to the others; use an actor without gnn (model=layers/mlp, gru or lstm) or "
            "algorithm.evaluation_dropout=[]")


def per_agent_model(config, group: str, input_spec, key: str, n_agents: int, features: int, *, device,
                    action_spec) -> torch.nn.Module:
    """BenchMARL ``config``'s network of ``n_agents`` agents of ``group`` with no parameter shared between them,
    each reading its own row of ``input_spec`` (agent dim included) and writing ``features`` values under
    ``(group, key)``: the per-agent actor, critic and message networks of matrpo and dg_mappo."""
    return config.get_model(
        input_spec=Composite({group: input_spec}),
        output_spec=Composite({group: Composite({key: Unbounded(shape=(n_agents, features))}, shape=(n_agents,))}),
        agent_group=group,
        input_has_agent_dim=True,
        n_agents=n_agents,
        centralised=False,
        share_params=False,
        device=device,
        action_spec=action_spec,
    )
