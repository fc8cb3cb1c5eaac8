"""``torchrun --nproc-per-node N -m benchmarl_decentral.distributed [--agents all|local] [--env replicated|central] [--backend gloo|nccl] algorithm=decpg task=... [overrides]``.

Every rank composes the same hydra config as ``benchmarl run`` and checks it
(:func:`check_config`, :func:`~benchmarl_decentral.distributed.plan_launch`)
before it joins the process group or builds anything; a refused launch prints
one message (rank 0) and exits with status 2 on every rank. Then each rank
builds the experiment for its block of agents
(:func:`~benchmarl_decentral.distributed.experiment.build_rank_experiment`)
and trains. ``--agents all`` (the default): every rank builds every agent's
networks and trains its block; ``--agents local`` (decpg, dg_mappo, matrpo): every rank builds
the networks, optimizer state and replay buffer of its block only
(:mod:`benchmarl_decentral.distributed.local`), and ``--env`` picks who steps
the joint environment: ``replicated`` (the default: every rank its copy) or
``central`` (rank 0 alone, the other ranks send it their actions and receive
their part of its output); its checkpoints hold its block
only, and the launch file records the mode (a checkpoint is resumed in the
mode it was written in). Rank 0 writes the experiment folder, in ``experiment.save_folder``
or else the current directory (as BenchMARL's Python API does; there is no
hydra ``outputs/`` folder): CSV, JSON. The other ranks write nothing that stays,
except their checkpoints, which every rank writes into rank 0's run folder
(``experiment.checkpoint_interval`` / ``checkpoint_at_end``; see
:mod:`benchmarl_decentral.distributed.checkpoint`).

Resume: when torchrun restarts the ranks (``--max-restarts K``, a rank
died), or with ``experiment.restore_file=<run>/checkpoints_rank0/checkpoint_<frames>.pt``,
every rank decides from the files, before it joins the process group, which
complete checkpoint to resume
(:func:`~benchmarl_decentral.distributed.checkpoint.plan_resume`; a
checkpoint that does not fit the launch is refused like any bad input) and
loads its own file; rank 0 continues the same run folder and logs. Two
collectives run at setup, never in training: rank 0's choice of checkpoint
and its run folder, broadcast to the other ranks; with
``experiment.keep_checkpoints_num`` a barrier after training lets every rank
delete its files behind the last complete checkpoint. torchrun's agent keeps one
store across restarts, so each attempt's process-group keys go under a prefix of its
own (``TORCHELASTIC_RESTART_COUNT``). That needs every agent of the group
at the same count: true on one machine; across machines an agent that
restarts for a change of membership rather than a failure keeps its count
(not tried; the ranks would then wait on each other until the timeout).

``--backend gloo`` (the default, the tested path) or ``nccl``: nccl needs one
CUDA GPU per rank of the node and is refused before the ranks join
(:func:`~benchmarl_decentral.distributed.launch.check_backend`) where there
are fewer; each rank then sets ``cuda:LOCAL_RANK`` as its device and sends
and receives there (:mod:`benchmarl_decentral.distributed.wire`). Not run
yet: no machine with several GPUs was available.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import benchmarl
import hydra
import hydra.errors
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

import benchmarl_decentral  # noqa: F401  (registers our algorithms, models and tasks)
from benchmarl_decentral.distributed.launch import check_algorithm, check_backend, check_backend_name, plan_launch

PROG = "benchmarl_decentral.distributed"
CONF_DIR = str(Path(benchmarl.__file__).parent / "conf")


def check_agents(cfg: DictConfig, algorithm: str, agents: str, env: str = "replicated") -> None:
    """What ``--agents local`` cannot run yet, refused with the fix (nothing to check for ``--agents all``).

    Raises:
        ValueError: an unknown mode; an algorithm other than decpg,
            dg_mappo and matrpo; dg_mappo's topologies other than
            :data:`LOCAL_DGAT_TOPOLOGIES`, its radius graph with a
            ``position_key`` (the graphs of every agent's observation are read
            from the joint observation, :func:`needs_joint_observation`), its
            ``evaluation_dropout``; BenchMARL's joint gradient clip
            (``algorithm.max_grad_norm=null``), a norm over every agent;
            matrpo with ``env`` other than replicated or a model other than
            stacked MLPs (:func:`main` refuses its continuous actions once the
            task is loaded).
    """
    from benchmarl_decentral.distributed.local import AGENT_MODES

    if agents not in AGENT_MODES:
        raise ValueError(f"unknown --agents {agents}; choose one of {'|'.join(AGENT_MODES)}.")
    if agents == "all":
        return
    algo, exp = cfg.algorithm, cfg.experiment
    if not algorithm.startswith(("decpg", "dg_mappo", "matrpo")):
        raise ValueError(f"--agents local supports algorithm=decpg|dg_mappo|dg_mappo_paper|matrpo|matrpo_paper so far; "
                         f"launch {algorithm} with --agents all.")
    if algorithm.startswith("dg_mappo"):
        _check_dg_mappo_local(algo, algorithm)
    if algorithm.startswith("matrpo"):
        if env != "replicated":
            raise ValueError(f"--agents local --env {env}: matrpo's joint policy models score every agent's action and "
                             "action mask, which the central environment rank does not send yet; use --env replicated.")
        models = _model_names(cfg.model) + _model_names(cfg.critic_model)
        if any(name != "mlp" for name in models):
            raise ValueError(f"--agents local: matrpo builds a rank's block of joint policy models and critics from "
                             f"stacked per-agent MLPs only; got model {'+'.join(_model_names(cfg.model))}, critic_model "
                             f"{'+'.join(_model_names(cfg.critic_model))}. Use model=layers/mlp "
                             "model@critic_model=layers/mlp, or launch with --agents all.")
    # (matrpo has no max_grad_norm: it turns BenchMARL's joint clip off itself, critic_max_grad_norm clips each agent)
    if ("max_grad_norm" in algo and algo.max_grad_norm is None and exp.clip_grad_norm
            and exp.clip_grad_val is not None):
        raise ValueError("--agents local: algorithm.max_grad_norm=null clips with BenchMARL's gradient norm over all "
                         "agents at once, which no rank can compute from its own agents; set "
                         "algorithm.max_grad_norm=10 (per agent) or experiment.clip_grad_val=null.")


def _dgat_options(algo: DictConfig, key: str) -> list:
    """``algorithm.<key>`` and every ``algorithm.group_topology.<group>.<key>`` (None where unset)."""
    return [algo.get(key, None)] + [
        (options or {}).get(key, None) for options in (algo.get("group_topology", None) or {}).values()]


def _check_dg_mappo_local(algo: DictConfig, algorithm: str) -> None:
    """dg_mappo's settings a rank holding its block of agents only cannot run (see :func:`check_agents`)."""
    from benchmarl_decentral.algorithms.dg_mappo import local_agents_refusal

    topologies = _dgat_options(algo, "topology")
    dynamic = [t for t in topologies if t is not None and t not in LOCAL_DGAT_TOPOLOGIES]
    if dynamic:
        raise ValueError(f"--agents local: {algorithm}'s topology={dynamic[0]} has no graph a rank holding its "
                         "block can build; set algorithm.topology=ring (or knn_ring, full, custom, radius, visibility, "
                         "auto) or launch with --agents all.")
    position_key = next((key for key in _dgat_options(algo, "position_key") if key is not None), None)
    if "radius" in topologies and position_key is not None:
        raise ValueError(f"--agents local: {algorithm}'s radius graph reads every agent's position from the joint "
                         f"observation, not from algorithm.position_key={position_key}; set "
                         "algorithm.position_key=null (also in algorithm.group_topology; positions from the "
                         "observation, algorithm.position_dims) or launch with --agents all.")
    error = local_agents_refusal(algorithm, algo.get("consensus_params", []), algo.get("evaluation_dropout", None))
    if error is not None:
        raise ValueError(error)


#: dg_mappo's D-GAT topologies a rank holding its block can build (``--agents local``): the static ones, and
#: the graphs of every agent's observation (radius, ally visibility, auto's choice of them) from the joint
#: observation its environment offers (:func:`needs_joint_observation`)
LOCAL_DGAT_TOPOLOGIES = ("ring", "knn_ring", "full", "custom", "radius", "visibility", "auto")


def needs_joint_observation(cfg: DictConfig, algorithm: str) -> bool:
    """Whether a rank that builds its block of agents needs every agent's observation for a graph.

    decpg's and matrpo's ``topology=visibility`` (ally visibility of every
    batch), dg_mappo's radius, visibility and ``auto`` D-GAT graphs (rebuilt
    every step). Its environment then offers the joint observation also on a
    task with a global state (with ``--env replicated`` its own copy's: no
    message; with ``--env central`` rank 0 sends it whole).
    """
    if algorithm.startswith("dg_mappo"):
        return any(t in ("radius", "visibility", "auto") for t in _dgat_options(cfg.algorithm, "topology"))
    return cfg.algorithm.get("topology", None) == "visibility"



def split_options(argv: list[str]) -> tuple[str, str, str, list[str]]:
    """``--agents all|local``, ``--env replicated|central``, ``--backend gloo|nccl`` (or ``--x=...``), the overrides.

    Returns ``(agents, env, backend, overrides)`` (the hydra overrides: every other argument).
    """
    from benchmarl_decentral.distributed.local import ENV_BACKENDS

    options, overrides, rest = {"agents": "all", "env": "replicated", "backend": "gloo"}, [], list(argv)
    choices = {"agents": "--agents all or --agents local", "env": "--env replicated or --env central",
               "backend": "--backend gloo or --backend nccl"}
    while rest:
        arg = rest.pop(0)
        name = next((n for n in options if arg == f"--{n}" or arg.startswith(f"--{n}=")), None)
        if name is None:
            overrides.append(arg)
        elif "=" in arg:
            options[name] = arg.split("=", 1)[1]
        elif not rest:
            raise ValueError(f"--{name} needs a value: {choices[name]}.")
        else:
            options[name] = rest.pop(0)
    check_backend_name(options["backend"])
    if options["env"] not in ENV_BACKENDS:
        raise ValueError(f"unknown --env {options['env']}; choose one of {'|'.join(ENV_BACKENDS)}.")
    if options["env"] != "replicated" and options["agents"] != "local":
        raise ValueError(f"--env {options['env']} steps the environment for ranks that build their agents only; "
                         "add --agents local (with --agents all every rank steps its copy).")
    return options["agents"], options["env"], options["backend"], overrides


def check_config(cfg: DictConfig) -> None:
    """What the distributed preview cannot run yet, refused with the override that fixes it.

    Raises:
        ValueError: evaluation that reads every agent's parameters (decpg's
            ``average``/``individual`` models, perturbed or dropout
            evaluation, dg_mappo's ``evaluation_dropout``), dg_mappo settings
            that read across agents outside the transport
            (:func:`check_dg_mappo`). (A checkpoint to restore is checked
            by :func:`~benchmarl_decentral.distributed.checkpoint.plan_resume`.)
    """
    algo, exp = cfg.algorithm, cfg.experiment
    if exp.evaluation:
        needs_all = []
        if algo.get("evaluation_mode", "local") != "local":
            needs_all.append(f"algorithm.evaluation_mode={algo.evaluation_mode} (use local)")
        if algo.get("perturbed_evaluation", False):
            needs_all.append("algorithm.perturbed_evaluation=true (use false)")
        if algo.get("evaluation_dropout", None):
            needs_all.append("algorithm.evaluation_dropout (use [])")
        if needs_all:
            raise ValueError(
                "distributed runs evaluate each agent with its own parameters only; "
                f"{', '.join(needs_all)}, or set experiment.evaluation=false."
            )
    if "alpha_consensus" in algo:  # dg_mappo, dg_mappo_paper
        check_dg_mappo(cfg)
    if "admm_iterations" in algo:  # matrpo, matrpo_paper
        check_matrpo(cfg)


def launch_config(cfg: DictConfig) -> dict:
    """The config entries a distributed checkpoint must have been written with, resolved to plain data.

    :data:`~benchmarl_decentral.distributed.checkpoint.CONFIG_KEYS`: the
    algorithm's, model's and critic model's settings (a checkpoint of other
    network sizes would fail to load only once the ranks have joined).
    """
    from benchmarl_decentral.distributed.checkpoint import CONFIG_KEYS

    return {key: OmegaConf.to_container(cfg[key], resolve=True) for key in CONFIG_KEYS if key in cfg}


#: BenchMARL models whose per-agent copies read the other agents' inputs (a message outside the transport).
CROSS_AGENT_MODELS = ("gnn", "deepsets")


def _model_names(node) -> list:
    """The ``name`` of a model config and of every layer of a sequence model (hydra config nodes)."""
    names = [str(node["name"])] if "name" in node else []
    layers = node.get("layers", None) or {}
    for layer in layers.values() if hasattr(layers, "values") else layers:  # sequence: layers.l1, layers.l2, ...
        names += _model_names(layer)
    return names


def check_dg_mappo(cfg: DictConfig) -> None:
    """dg_mappo's settings that would read across agents outside the transport, refused with the fix.

    Raises:
        ValueError: ``algorithm.max_grad_norm=null`` with BenchMARL's joint
            gradient-norm clip (a norm over every agent's gradients), or an
            actor / critic model whose copies read the other agents
            (``layers/gnn``; D-GAT is dg_mappo's communication).
    """
    algo, exp = cfg.algorithm, cfg.experiment
    if algo.get("max_grad_norm", None) is None and exp.clip_grad_norm and exp.clip_grad_val is not None:
        raise ValueError(
            "dg_mappo with algorithm.max_grad_norm=null clips with BenchMARL's gradient norm over all agents at "
            "once, which no rank can compute from its own agents; set algorithm.max_grad_norm=10 (per agent) or "
            "experiment.clip_grad_val=null."
        )
    _refuse_cross_agent_models(cfg, "dg_mappo", "D-GAT is dg_mappo's communication", " (or layers/gru, layers/lstm)")


def check_matrpo(cfg: DictConfig) -> None:
    """matrpo's settings a distributed run cannot reproduce, refused with the fix.

    Raises:
        ValueError: ``algorithm.admm_tol`` above 0 with an asynchronous
            ``admm_mode`` or ``link_failure`` above 0 (the per-link stop tests
            a link on its far end's current ``J x``, which arrives every
            iteration only in synchronous mode without failures;
            :func:`~benchmarl_decentral.objectives.run_admm`), or an actor /
            critic model whose copies read the other agents (``layers/gnn``,
            ``layers/deepsets``: MATRPO's only messages are the ADMM link values).
    """
    algo = cfg.algorithm
    tol, mode, failure = algo.get("admm_tol", 0.0), algo.get("admm_mode"), algo.get("link_failure", 0.0)
    if tol and (mode != "synchronous" or failure):
        raise ValueError(
            f"matrpo with algorithm.admm_tol={tol}, algorithm.admm_mode={mode} and algorithm.link_failure={failure} "
            "stops a link on its far end's current log-ratios, which a rank receives every iteration only in "
            "synchronous mode without link failures; set algorithm.admm_mode=synchronous algorithm.link_failure=0 "
            "(matrpo's defaults), or algorithm.admm_tol=0 (run all algorithm.admm_iterations)."
        )
    _refuse_cross_agent_models(cfg, "matrpo", "MATRPO's messages are the ADMM link values", "")


def _refuse_cross_agent_models(cfg: DictConfig, algorithm: str, messages: str, others: str) -> None:
    """Refuse an actor or critic model whose per-agent copies read the other agents (:data:`CROSS_AGENT_MODELS`)."""
    for key in ("model", "critic_model"):
        crossing = [name for name in _model_names(cfg[key]) if name in CROSS_AGENT_MODELS]
        if crossing:
            raise ValueError(
                f"{algorithm}'s {key}={crossing[0]} reads the other agents' inputs inside the network, a message the "
                f"distributed transport does not carry ({messages}); use "
                f"{'model' if key == 'model' else 'model@critic_model'}=layers/mlp{others}."
            )


def _refuse(rank: int, message: str) -> None:
    if rank == 0:
        print(f"{PROG}: {message}", file=sys.stderr)
    sys.exit(2)


def compose(overrides: list[str]) -> tuple[DictConfig, str, str]:
    """The config ``benchmarl run`` would compose from ``overrides``; with the task and algorithm names.

    hydra's compose API: no ``outputs/`` folder, no ``.hydra/``, nothing
    written (a refused launch leaves nothing behind).
    """
    with hydra.initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = hydra.compose("config", overrides=overrides, return_hydra_config=True)
    choices = cfg.hydra.runtime.choices
    return cfg, choices.task, choices.algorithm


def _experiment(cfg: DictConfig, task_name: str, wrap=None):
    """BenchMARL's ``load_experiment_from_hydra``, with the task wrapped by ``wrap`` (``--agents local``)."""
    from benchmarl.experiment import Experiment
    from benchmarl.hydra_config import (
        load_algorithm_config_from_hydra,
        load_experiment_config_from_hydra,
        load_model_config_from_hydra,
        load_task_config_from_hydra,
    )

    task = load_task_config_from_hydra(cfg.task, task_name)
    return Experiment(
        task=task if wrap is None else wrap(task),
        algorithm_config=load_algorithm_config_from_hydra(cfg.algorithm),
        model_config=load_model_config_from_hydra(cfg.model),
        critic_model_config=load_model_config_from_hydra(cfg.critic_model),
        seed=cfg.seed,
        config=load_experiment_config_from_hydra(cfg.experiment),
        callbacks=(),
    )


def main(argv: list[str]) -> None:
    """One rank of a distributed run (see the module docstring); ``RANK`` / ``WORLD_SIZE`` from torchrun."""
    from benchmarl.hydra_config import (
        load_algorithm_config_from_hydra,
        load_experiment_config_from_hydra,
        load_task_config_from_hydra,
    )

    from benchmarl_decentral.distributed import checkpoint as ckpt
    from benchmarl_decentral.distributed.experiment import (
        ActionExchange,
        build_rank_experiment,
        group_sizes,
        has_global_state,
    )
    from benchmarl_decentral.distributed.local import EnvBytesLog

    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        _refuse(0, f"launch it with torchrun, e.g. torchrun --nproc-per-node 2 -m {PROG} "
                   "algorithm=decpg task=coordsum/8x15-100 experiment.evaluation=false")
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    try:
        agents, env_backend, backend, overrides = split_options(argv)
        # nccl: one GPU per rank of this node, checked before anything is composed or joined
        check_backend(backend, int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))
        cfg, task_name, algorithm = compose(overrides)
        check_algorithm(algorithm)  # first: no environment built for nothing
        check_config(cfg)
        check_agents(cfg, algorithm, agents, env_backend)
        on_policy = load_algorithm_config_from_hydra(cfg.algorithm).on_policy()  # the algorithm's own checks
        load_experiment_config_from_hydra(cfg.experiment).validate(on_policy)  # e.g. checkpoint_interval
        task = load_task_config_from_hydra(cfg.task, task_name)
        sizes = group_sizes(task, seed=cfg.seed)
        critic = _model_names(cfg.critic_model)
        if (agents == "local" and algorithm.startswith("decpg") and critic != ["mlp"]
                and not has_global_state(task, seed=cfg.seed)):
            raise ValueError(
                f"--agents local: task {task_name} has no global state, so each agent's critic reads the "
                f"concatenated observations of every agent, MAPPO's centralized critic for an MLP only; got "
                f"critic_model {'+'.join(critic)}. Use model@critic_model=layers/mlp, or launch with --agents all."
            )
        if (agents == "local" and algorithm.startswith("matrpo") and cfg.experiment.prefer_continuous_actions
                and task.supports_continuous_actions()):
            from benchmarl_decentral.algorithms.matrpo import LOCAL_CONTINUOUS_REFUSAL

            raise ValueError(f"--agents local: {LOCAL_CONTINUOUS_REFUSAL}")
        owners = plan_launch(algorithm, sizes, world_size)
        launch = ckpt.Launch.of(algorithm=algorithm, task=task_name, seed=cfg.seed, sizes=sizes,
                                world_size=world_size, config=launch_config(cfg), agent_mode=agents)
        save_folder = Path(  # where BenchMARL puts (or keeps) rank 0's run folder
            cfg.experiment.save_folder
            or (Path(cfg.experiment.restore_file).resolve().parent.parent.parent if cfg.experiment.restore_file
                else os.getcwd())
        )
        plan = ckpt.plan_resume(cfg.experiment.restore_file, launch, save_folder=save_folder,
                                restarts=ckpt.restart_count(), key=ckpt.launch_key())
    except (ValueError, hydra.errors.HydraException) as error:
        _refuse(rank, str(error))
    cfg.experiment.restore_file = plan.restore_file(rank)
    checkpoints = bool(cfg.experiment.checkpoint_interval or cfg.experiment.checkpoint_at_end)

    scratch = None
    if rank != 0:  # the run's outputs are rank 0's
        scratch = tempfile.mkdtemp(prefix=f"benchmarl_rank{rank}_")
        cfg.experiment.loggers = []
        # BenchMARL evaluates only with a logger or the JSON: every rank must evaluate (the actions are
        # exchanged), so the others keep the JSON, in a folder removed at the end
        cfg.experiment.create_json = True
        cfg.experiment.save_folder = scratch
    _init_process_group(ckpt.restart_count(), backend)
    try:
        # setup, outside training: every rank resumes what rank 0 resumes (one filesystem for the run folder)
        (first,) = _broadcast([(plan.run.name if plan.run else None, plan.frames)])
        if first != (plan.run.name if plan.run else None, plan.frames):
            raise RuntimeError(
                f"rank {rank} found {plan.note or 'no checkpoint to resume'}, rank 0 resumes {first}: "
                "every rank must see rank 0's run folder (experiment.save_folder on a shared filesystem)."
            )
        if rank == 0 and plan.note:
            ckpt.say(plan.note)
        experiment = build_rank_experiment(
            lambda wrap=None: _experiment(cfg, task_name, wrap), algorithm=algorithm, sizes=sizes, agents=agents,
            env=env_backend, joint_observation=agents == "local" and needs_joint_observation(cfg, algorithm),
        )
        (run,) = _broadcast([str(experiment.folder_name) if rank == 0 else None])
        saver = None
        if checkpoints or plan.run is not None:
            exchange = next((cb for cb in experiment.callbacks if isinstance(cb, (ActionExchange, EnvBytesLog))), None)
            agents = {group: torch.nonzero(owner == rank).flatten().tolist() for group, owner in owners.items()}
            saver = ckpt.RankCheckpoints(experiment, Path(run), rank, launch, agents, exchange)
            if plan.run is not None:
                saver.restore_extra(cfg.experiment.restore_file)
            if rank == 0:  # (the CSV rows after a resumed checkpoint: runs.truncate_scalars, when training starts)
                ckpt.write_launch(Path(run), launch)  # this launch's key: a restart finds the run
        experiment.run()
        if saver is not None:
            saver.finish()  # after training: each rank prunes behind the last complete checkpoint
    finally:
        dist.destroy_process_group()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _init_process_group(restarts: int, backend: str = "gloo") -> None:
    """gloo (or nccl) on torchrun's store (``env://``), its keys under a prefix of their own per restart.

    torchrun's agent keeps one store across restarts: without the prefix, a
    restarted rank can read the address a dead rank of the previous attempt
    published and fail to connect to it. nccl: the rank's GPU is
    ``cuda:LOCAL_RANK`` (:func:`~benchmarl_decentral.distributed.launch.check_backend`
    has checked there is one per rank), set before the group is joined.
    """
    from torch.distributed.rendezvous import rendezvous

    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    store, rank, world_size = next(rendezvous("env://"))
    dist.init_process_group(backend, store=dist.PrefixStore(f"benchmarl_decentral/restart_{restarts}", store),
                            rank=rank, world_size=world_size)


def _broadcast(objects: list) -> list:
    """Rank 0's ``objects`` on every rank (a collective at setup, never in training)."""
    dist.broadcast_object_list(objects, src=0)
    return objects


if __name__ == "__main__":
    main(sys.argv[1:])
