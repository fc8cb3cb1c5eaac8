"""A BenchMARL experiment as one rank of a distributed run (decpg, dg_mappo), with replicated environments.

Every rank builds the same experiment (same task, seed and config) with the
:class:`~benchmarl_decentral.distributed.TorchDistributedTransport` installed,
so ``decpg`` and ``dg_mappo`` mix only the rows of their own agents
(:meth:`~benchmarl_decentral.distributed.Transport.local_rows`), exchanging
parameter vectors with the ranks of their neighbours. The other rows of its
stacked networks are never trained correctly on this rank and are never read
for its own agents: every ``decpg`` loss is separable by agent, and
``dg_mappo``'s D-GAT takes its neighbours' rows from their ranks
(:meth:`~benchmarl_decentral.distributed.Transport.exchange_rows`, gradients
sent back) and cuts the rows of the agents it does not hold before any loss.

Environment interface: every rank steps its own copy of the (joint)
environment. After a group's policy acts, each rank sends the actions of its
agents of that group to every other rank and takes theirs for the other agents
(:class:`ActionExchange`), so all copies see the same joint action, the same
observations and rewards, and collect the single-process run's batch for their
own agents. This exchange is the only traffic outside the mixing; it goes to
every rank, one message per rank, group and environment step.

With ``agents="local"`` (:func:`build_rank_experiment`) the rank builds its
block of agents only and the environment interface is its environment's
step instead (:mod:`benchmarl_decentral.distributed.local`): the same action
exchange (``env="replicated"``), or rank 0 stepping the only copy and
sending each rank its part (``env="central"``; more bytes, since the parts
are observations, see the plan in :mod:`benchmarl_decentral.distributed`).

Left out (refused or documented): evaluation with the averaged model, and the
cross-agent metrics (consensus distance, gradient disagreement), need every
agent's parameters; they are computed here from the rows this rank holds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from benchmarl.experiment import Experiment
from tensordict import TensorDictBase

from benchmarl_decentral.distributed.launch import plan_launch
from benchmarl_decentral.distributed.local import EnvBytesLog, ReplicatedEnvs
from benchmarl_decentral.distributed.torch_dist import TorchDistributedTransport
from benchmarl_decentral.distributed.transport import use_transport


class ActionExchange(EnvBytesLog):
    """Joint action on every rank: send this rank's agents' actions, take the others' (point to point).

    Registered as a forward hook on every group's collection policy; every call
    (collection and evaluation alike) exchanges that group's ``(group, "action")``
    rows, this rank's block of the group to every other rank
    (:meth:`~benchmarl_decentral.distributed.local.ReplicatedEnvs.joint_action`,
    the exchange of ``--agents local``), and writes the others' rows in place,
    so every rank must call the policies the same number of times and in the
    same order (same config: every rank evaluates when one does).
    Logs ``comm/<group>/env_bytes_per_agent`` and, over every group,
    ``comm/env_bytes_per_agent`` (:class:`~benchmarl_decentral.distributed.local.EnvBytesLog`):
    bytes each agent of this rank sent for the environment interface since
    the previous batch (its collection, and any evaluation run in between).

    Args:
        experiment: the experiment of this rank (already built).
        transport: the transport its mixers use (its ``owners`` place the agents).
        groups: the agent groups whose actions travel (the task's groups).
    """

    def __init__(self, experiment: Experiment, transport: TorchDistributedTransport, groups: list[str]) -> None:
        super().__init__(ReplicatedEnvs({group: transport.owners[group] for group in groups}, transport.rank))
        self.experiment = experiment
        self.transport = transport
        self._handles = [
            experiment.group_policies[group].register_forward_hook(self._hook(group)) for group in self.groups
        ]

    def _hook(self, group: str) -> Callable:
        def exchange(module: Any, args: Any, output: TensorDictBase) -> TensorDictBase:
            self._exchange(group, output.get(group))
            return output

        return exchange

    def _exchange(self, group: str, group_td: TensorDictBase) -> None:
        action = group_td.get("action")
        dim = group_td.batch_dims - 1  # the agent dim
        first, last = self.backend.blocks[group]
        joint = self.backend.joint_action(group, action.narrow(dim, first, last - first), dim)
        with torch.no_grad():
            action.copy_(joint)  # the others' rows written in place (this rank's are its own)


@contextlib.contextmanager
def _one_env(task: Any, seed: int) -> Iterator[Any]:
    """One environment of a BenchMARL task config (no experiment, no folder), closed on exit."""
    continuous = task.supports_continuous_actions()
    env = task.get_env_fun(num_envs=1, continuous_actions=continuous, seed=seed, device="cpu")()
    try:
        yield env
    finally:
        env.close()


def group_sizes(task: Any, *, seed: int = 0) -> dict[str, int]:
    """Agents per group of a BenchMARL task config, from one environment (no experiment, no folder)."""
    with _one_env(task, seed) as env:
        return {group: len(agents) for group, agents in task.group_map(env).items()}


def has_global_state(task: Any, *, seed: int = 0) -> bool:
    """Whether a BenchMARL task config has a global state (its ``state_spec``), from one environment."""
    with _one_env(task, seed) as env:
        return task.state_spec(env) is not None


def build_rank_experiment(make: Callable[..., Experiment], *, algorithm: str, sizes: dict[str, int],
                          agents: str = "all", env: str = "replicated", joint_observation: bool = False) -> Experiment:
    """This rank's experiment: checks, the transport installed while ``make`` builds it, the environment interface.

    Args:
        make: builds the experiment (the same on every rank). With
            ``agents="all"`` it is called with no argument; with
            ``agents="local"`` with a function that wraps a BenchMARL task
            (``TaskClass``) into this rank's
            :class:`~benchmarl_decentral.distributed.local.LocalAgentsTask`,
            which ``make`` must build the experiment on.
        algorithm: the algorithm's name, checked by :func:`plan_launch`.
        sizes: agents per group (:func:`group_sizes`).
        agents: ``all``: every rank builds every agent's networks, steps its
            copy of the environment with the joint action its
            :class:`ActionExchange` assembles, trains its block; ``local``:
            it builds its block only (networks, optimizer state, buffers),
            its environment is the joint one cut to its agents
            (:mod:`benchmarl_decentral.distributed.local`). (default: "all")
        env: with ``agents="local"``, who steps the joint environment:
            ``replicated`` (every rank its copy,
            :class:`~benchmarl_decentral.distributed.local.ReplicatedEnvs`)
            or ``central`` (rank 0 alone,
            :class:`~benchmarl_decentral.distributed.local.CentralEnv`).
            (default: "replicated")
        joint_observation: with ``agents="local"``, the environment offers
            every group's joint observation also on a task with a global state
            (a graph rebuilt from every agent's observation: ally visibility, a
            radius graph). (default: False)

    Raises:
        ValueError: from :func:`plan_launch` (one message, before ``make``
            builds anything), or an unknown ``agents``.
    """
    from benchmarl_decentral.distributed.local import (
        AGENT_MODES,
        ENV_BACKENDS,
        CentralEnv,
        LocalAgentsTask,
        log_joint_rewards,
    )

    if agents not in AGENT_MODES:
        raise ValueError(f"unknown agents={agents!r}; choose one of {list(AGENT_MODES)}")
    if env not in ENV_BACKENDS:
        raise ValueError(f"unknown env={env!r}; choose one of {list(ENV_BACKENDS)}")
    if env != "replicated" and agents != "local":
        raise ValueError(f"env={env!r} needs agents='local' (with agents='all' every rank steps its copy)")
    owners = plan_launch(algorithm, sizes, dist.get_world_size())
    transport = TorchDistributedTransport(owners)
    if agents == "local":
        backend = (CentralEnv if env == "central" else ReplicatedEnvs)(owners, transport.rank)
        with use_transport(transport):
            # matrpo's joint policy models score every agent's action (eq. 8): the environment offers them
            exp = make(lambda task: LocalAgentsTask(task, backend, joint_actions=algorithm.startswith("matrpo"),
                                                    joint_observation=joint_observation))
        if not isinstance(exp.task, LocalAgentsTask):
            raise ValueError("agents='local': make must build the experiment on the task it is given wrapped")
        log_joint_rewards(exp.logger)  # the run's returns, every agent's
        log = EnvBytesLog(backend)
        log.experiment = exp
        exp.callbacks = [*exp.callbacks, log]
        return exp
    with use_transport(transport):
        exp = make()
    exchange = ActionExchange(exp, transport, list(owners))
    exp.callbacks = [*exp.callbacks, exchange]
    return exp
