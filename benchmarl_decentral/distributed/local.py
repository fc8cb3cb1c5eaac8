"""Local agents only (``--agents local``): a rank builds the networks, optimizer state and buffers of its block.

BenchMARL builds one network per agent of every group its task's ``group_map``
lists, on the specs the task reads from its environment. :class:`LocalAgentsTask`
wraps a task so that every group lists the rank's block of agents only and the
environment it builds (:class:`LocalAgentsEnv`) has the specs of those agents:
their observations, action masks, actions, and (when the environment has
them per agent) rewards and dones; everything outside the groups (a global
``state``, a shared reward, the dones, ``info``) is the joint environment's.
So the experiment BenchMARL builds on it has networks, optimizers and replay
buffers of ``n / world_size`` agents per group, and nothing of the others.

Stepping the joint environment goes to a *backend* (``--env``).
:class:`ReplicatedEnvs` (``replicated``, the default): every rank steps its
own copy of the joint environment; before each step the ranks exchange their
blocks of the action (point to point, each rank's block to every other
rank), so every copy sees the same joint action, observations and rewards.
:class:`CentralEnv` (``central``): rank 0 alone resets and steps the joint
environment; every other rank sends it its block of the action and receives
its part of the output (its agents' entries, the rest whole), point to point
in an order derived from the specs.

Exactness. A rank in this mode reaches the single-process run's parameters
for its agents (tests/test_distributed.py): its networks start from the
same ``theta_0`` (decpg and dg_mappo build every network from a seed of its own, not from
the global stream, so how many agents a process builds changes nothing:
:func:`network_seed`), and it draws the same sampling noise: its policy's
distribution draws the noise of the whole group and keeps its block's
(:func:`block_sampling`), so the global random stream advances as in one
process and its agents' actions are the single-process run's. With
:class:`CentralEnv` this needs an environment that draws from a generator of
its own (coordsum's generator; VMAS 1.5 swaps its own random state in around
every reset and step), not from the global torch stream: only rank 0 runs the
environment, so only rank 0's global stream would advance.

Pure BenchMARL/TorchRL around the transport: the exchange runs on the default
process group (torch.distributed, gloo on one machine).
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
from benchmarl.environments.common import TaskClass
from benchmarl.experiment.callback import Callback
from tensordict import TensorDict, TensorDictBase
from torch import Tensor
from torchrl.data import Composite, Unbounded
from torchrl.envs import EnvBase

from benchmarl_decentral.distributed.transport import bytes_per_agent_metrics
from benchmarl_decentral.distributed.wire import to_wire, wire_device

#: Root key of the joint observations a :class:`LocalAgentsEnv` adds for a task without a global state:
#: ``(JOINT_OBSERVATION, group)``, every agent's observation of the group, flat ``(*B, n * F)`` (agent-major).
JOINT_OBSERVATION = "joint_observation"

#: Root key of the joint rewards a :class:`LocalAgentsEnv` adds for groups with per-agent rewards:
#: ``(JOINT_REWARD, group, "reward")``, ``(*B, n, 1)``, every agent's; what rank 0 logs (:func:`log_joint_rewards`).
JOINT_REWARD = "joint_reward"

#: Root keys of the joint actions and action masks a :class:`LocalAgentsEnv` adds with ``joint_actions``
#: (matrpo: every agent's joint policy model scores the joint action, paper 001 eq. 8):
#: ``(JOINT_ACTION, group)``, ``(*B, n, ...)``, the joint action that led to this observation (zeros after a
#: reset), so ``("next", JOINT_ACTION, group)`` of a transition is the joint action taken in it; and
#: ``(JOINT_ACTION_MASK, group)``, ``(*B, n, F)``, every agent's legal actions at this observation.
JOINT_ACTION = "joint_action"
JOINT_ACTION_MASK = "joint_action_mask"

#: ``--env`` of the entry point (``--agents local``): every rank steps its copy of the joint environment
#: (:class:`ReplicatedEnvs`), or rank 0 steps the only one (:class:`CentralEnv`).
ENV_BACKENDS = ("replicated", "central")

#: ``--agents`` of the entry point: ``all`` (every rank builds every agent's networks; its block trains) or
#: ``local`` (every rank builds its block only).
AGENT_MODES = ("all", "local")


def blocks_of(owners: Mapping[str, Tensor], rank: int) -> dict[str, tuple[int, int]]:
    """``(first, last)`` (end excluded) of this rank's contiguous block of every group."""
    out = {}
    for group, owner in owners.items():
        rows = torch.nonzero(owner == rank).flatten()
        first, last = int(rows[0]), int(rows[-1]) + 1
        if last - first != rows.numel():
            raise ValueError(f"rank {rank}'s agents of group '{group}', {rows.tolist()}, are not one block")
        out[group] = (first, last)
    return out


def network_seed(seed: int, group: str, net: str) -> int:
    """The seed a network of ``group`` is built from: the same in every process, whatever agents it builds."""
    return zlib.crc32(f"{int(seed)}/{group}/{net}".encode()) & 0x7FFFFFFF


@contextlib.contextmanager
def network_rng(seed: int, group: str, net: str, device: Any = "cpu") -> Iterator[None]:
    """Draw a network's initial parameters from :func:`network_seed` (``torch.random.fork_rng``).

    The first agent's draw, which every agent starts from (decpg's
    ``theta_0``, paper 002 sec. 3; dg_mappo's common point of 000 eq. 9), is
    then the same whatever number of agents a process builds (every agent,
    or a distributed rank's block), and the global random stream (action
    sampling, minibatches) is left where it was. ``device``: a CUDA device's
    stream is forked and seeded too.
    """
    devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(network_seed(seed, group, net))
        yield


class _EnvBackend:
    """What both environment backends hold: the agents' owners, this rank's blocks, the bytes sent.

    Args:
        owners: group to the rank of each of its agents (:func:`~benchmarl_decentral.distributed.plan_launch`).
        rank: this process's rank.
    """

    name = ""

    def __init__(self, owners: Mapping[str, Tensor], rank: int) -> None:
        self.owners = {group: owner.cpu().long() for group, owner in owners.items()}
        self.rank = rank
        self.world_size = int(max(int(o.max()) for o in self.owners.values())) + 1
        self.blocks = blocks_of(self.owners, rank)
        self.groups = list(self.owners)
        #: bytes each agent of this rank sent since the last batch, per group (the same for every agent of a block)
        self.sent = {group: 0 for group in self.groups}


class ReplicatedEnvs(_EnvBackend):
    """Backend: every rank steps its own copy of the joint environment; the ranks exchange their action blocks.

    :meth:`joint_action` sends this rank's block of a group's action to every
    other rank and receives theirs, one message per rank pair, group and
    step, in one ``batch_isend_irecv``. Every rank must step its environments
    the same number of times and in the same order (same config). Counts, per
    group, the bytes each agent of this rank sent (:attr:`sent`; read and reset by
    :class:`EnvBytesLog`).

    Args:
        owners: group to the rank of each of its agents (:func:`~benchmarl_decentral.distributed.plan_launch`).
        rank: this process's rank.
    """

    name = "replicated"

    def joint_action(self, group: str, local: Tensor, agent_dim: int) -> Tensor:
        """The group's joint action ``(*B, n, ...)`` from this rank's block ``local`` ``(*B, n_local, ...)``."""
        owner = self.owners[group]
        n = owner.numel()
        first, last = self.blocks[group]
        if local.shape[agent_dim] != last - first:
            raise ValueError(f"group '{group}': got {local.shape[agent_dim]} agents' actions, rank {self.rank} "
                             f"holds {last - first}")
        shape = list(local.shape)
        shape[agent_dim] = n
        joint = local.new_empty(shape)
        joint.narrow(agent_dim, first, last - first).copy_(local)
        sent = to_wire(local.detach().contiguous())
        ops, received = [], []
        for r in range(self.world_size):
            if r == self.rank:
                continue
            ops.append(dist.P2POp(dist.isend, sent, r))
            rows = torch.nonzero(owner == r).flatten()
            shape[agent_dim] = rows.numel()
            buf = torch.empty(shape, dtype=sent.dtype, device=wire_device())
            ops.append(dist.P2POp(dist.irecv, buf, r))
            received.append((int(rows[0]), buf))
        if ops:
            for request in dist.batch_isend_irecv(ops):
                request.wait()
        for start, buf in received:
            joint.narrow(agent_dim, start, buf.shape[agent_dim]).copy_(buf.to(joint.device))
        self.sent[group] += (self.world_size - 1) * sent.numel() * sent.element_size() // (last - first)
        return joint


def _group_of(key: Any, groups: list) -> str:
    """The group a leaf's bytes are counted for: its group, ``(JOINT_*, group, ...)``'s, else the first group."""
    if isinstance(key, tuple):
        if key[0] in groups:
            return key[0]
        if key[0] in (JOINT_OBSERVATION, JOINT_REWARD) and len(key) > 1 and key[1] in groups:
            return key[1]
    return groups[0]


class CentralEnv(_EnvBackend):
    """Backend: rank 0 steps the only joint environment; every other rank sends its actions, receives its part.

    Each step, every rank other than 0 sends rank 0 its block of every
    group's action (one tensor per action key, in the joint environment's
    action-spec order); rank 0 assembles the joint action, steps the joint
    environment and sends every rank its part of the output: for every key of
    the rank's :class:`LocalAgentsEnv` output specs (observations, then
    rewards, then dones, in spec order) the leaf, cut to that rank's block
    where the key is a group's; what is outside the groups (a global state,
    a shared reward, the dones, ``info``, the joint observation and every
    agent's reward, :data:`JOINT_OBSERVATION` / :data:`JOINT_REWARD`) whole.
    A reset sends nothing to rank 0 (the ``_reset`` mask follows from the
    dones every rank received) and the same part back. All point to point,
    in an order every rank derives from the specs. The other ranks build the
    joint environment object (its specs and group map) but never reset or
    step it.

    Counts, per group, the bytes each agent of this rank sent
    (:attr:`sent`): a rank other than 0 its block's actions; rank 0 the
    parts it sent, a leaf counted for its group (``JOINT_*`` leaves for the
    group they name, the rest for the first group), divided by rank 0's
    agents of that group.

    Exactness: only rank 0 resets and steps the environment, so the other
    ranks reach the single-process run only where the environment draws
    from a random state of its own (coordsum: its ``torch.Generator``; VMAS
    1.5: ``local_seed`` around every reset, step and seed); one that drew
    from the global torch stream would advance it on rank 0 only, and the
    other ranks' sampling noise would then differ from the single-process run's.

    Args:
        owners: group to the rank of each of its agents.
        rank: this process's rank.
    """

    name = "central"
    #: the rank that steps the environment
    central = 0

    def __init__(self, owners: Mapping[str, Tensor], rank: int) -> None:
        super().__init__(owners, rank)
        self.rank_blocks = {r: blocks_of(self.owners, r) for r in range(self.world_size)}
        #: joint steps and resets rank 0 ran for the other ranks (every rank counts its calls)
        self.steps = self.resets = 0

    @property
    def is_central(self) -> bool:
        return self.rank == self.central

    def _count(self, key: Any, tensor: Tensor) -> None:
        group = _group_of(key, self.groups)
        first, last = self.blocks[group]
        self.sent[group] += tensor.numel() * tensor.element_size() / (last - first)

    @staticmethod
    def _wait(ops: list) -> None:
        if ops:
            for request in dist.batch_isend_irecv(ops):
                request.wait()

    def _action_keys(self, env: "LocalAgentsEnv") -> list:
        return [key for key in env.joint_env.full_action_spec.keys(True, True)
                if isinstance(key, tuple) and key[0] in self.blocks]

    def step(self, env: "LocalAgentsEnv", tensordict: TensorDictBase) -> TensorDictBase:
        """The step's output for this rank's agents (rank 0 steps the joint environment)."""
        nb = len(env.batch_size)
        self.steps += 1
        actions = self._action_keys(env)
        if not self.is_central:
            ops = []
            for key in actions:
                value = to_wire(tensordict.get(key).detach().contiguous())
                ops.append(dist.P2POp(dist.isend, value, self.central))
                self._count(key, value)
            self._wait(ops)
            return self._receive(env, reset=False)
        joint = TensorDict({}, batch_size=env.joint_env.batch_size, device=env.device)
        ops, received = [], []
        for key in actions:
            local = tensordict.get(key)
            n = self.owners[key[0]].numel()
            shape = list(local.shape)
            shape[nb] = n
            value = local.new_empty(shape)
            first, last = self.blocks[key[0]]
            value.narrow(nb, first, last - first).copy_(local)
            for r in range(self.world_size):
                if r == self.rank:
                    continue
                a, b = self.rank_blocks[r][key[0]]
                shape[nb] = b - a
                buf = torch.empty(shape, dtype=local.dtype, device=wire_device())
                ops.append(dist.P2POp(dist.irecv, buf, r))
                received.append((value, a, buf))
            joint.set(key, value)
        self._wait(ops)
        for value, a, buf in received:
            value.narrow(nb, a, buf.shape[nb]).copy_(buf.to(value.device))
        for key in env.joint_env.full_state_spec.keys(True, True):  # inputs outside the groups: rank 0's own
            value = tensordict.get(key, None)
            if value is not None:
                joint.set(key, value)
        #: the last joint action rank 0's environment stepped with (what the tests read)
        self.last_joint_action = joint
        out = env._add_joint(env.joint_env.step(joint).get("next"))
        return self._scatter(env, out, reset=False)

    def reset(self, env: "LocalAgentsEnv", inner: Optional[TensorDictBase]) -> TensorDictBase:
        """The reset's output for this rank's agents (rank 0 resets the joint environment)."""
        self.resets += 1
        if not self.is_central:
            return self._receive(env, reset=True)
        return self._scatter(env, env._add_joint(env.joint_env.reset(inner)), reset=True)

    def _scatter(self, env: "LocalAgentsEnv", out: TensorDictBase, reset: bool) -> TensorDictBase:
        nb = len(env.batch_size)
        keys = env.output_keys(reset)
        ops = []
        for r in range(self.world_size):
            if r == self.rank:
                continue
            for key in keys:
                value = out.get(key)
                if isinstance(key, tuple) and key[0] in self.rank_blocks[r]:
                    a, b = self.rank_blocks[r][key[0]]
                    value = value.narrow(nb, a, b - a)
                value = to_wire(value.detach().contiguous())
                ops.append(dist.P2POp(dist.isend, value, r))
                self._count(key, value)
        self._wait(ops)
        mine = self._empty(env, keys)
        for key in keys:
            value = out.get(key)
            if isinstance(key, tuple) and key[0] in self.blocks:
                a, b = self.blocks[key[0]]
                value = value.narrow(nb, a, b - a)
            mine.set(key, value)
        return mine

    def _empty(self, env: "LocalAgentsEnv", keys: list) -> TensorDictBase:
        """An output tensordict whose groups have this rank's agent dim (filled leaf by leaf)."""
        out = TensorDict({}, batch_size=env.batch_size, device=env.device)
        for group, (first, last) in self.blocks.items():
            if any(isinstance(key, tuple) and key[0] == group for key in keys):
                out.set(group, TensorDict({}, batch_size=(*env.batch_size, last - first), device=env.device))
        return out

    def _receive(self, env: "LocalAgentsEnv", reset: bool) -> TensorDictBase:
        specs = env.output_specs()
        keys = env.output_keys(reset)
        bufs = [to_wire(specs[key].zero()).contiguous() for key in keys]
        self._wait([dist.P2POp(dist.irecv, buf, self.central) for buf in bufs])
        out = self._empty(env, keys)
        for key, buf in zip(keys, bufs):
            out.set(key, buf.to(env.device))
        return out


def _cut_group_map(full: Mapping[str, list], blocks: Mapping[str, tuple[int, int]]) -> dict[str, list]:
    """A ``group_map`` with every group of ``blocks`` cut to its block (other groups whole)."""
    return {g: list(agents[slice(*blocks[g])]) if g in blocks else list(agents) for g, agents in full.items()}


def _narrow_spec(spec: Composite, blocks: Mapping[str, tuple[int, int]], batch_dims: int) -> Composite:
    """``spec`` with every group's sub-spec cut to its block (the agent dim follows the batch dims)."""
    for group, (first, last) in blocks.items():
        if group in spec.keys():
            index = (slice(None),) * batch_dims + (slice(first, last),)
            spec[group] = spec[group][index]
    return spec


def _narrow_td(td: TensorDictBase, blocks: Mapping[str, tuple[int, int]], batch_dims: int) -> TensorDictBase:
    for group, (first, last) in blocks.items():
        sub = td.get(group, None)
        if sub is not None:
            td.set(group, sub[(slice(None),) * batch_dims + (slice(first, last),)])
    return td


class LocalAgentsEnv(EnvBase):
    """The rank's view of a joint environment: its agents' entries of every group, the rest as they are.

    Steps go to the backend: with :class:`ReplicatedEnvs` the actions of the
    agents of this rank are completed to the joint action
    (:meth:`ReplicatedEnvs.joint_action`), the joint environment steps, and
    its output is cut to this rank's agents; with :class:`CentralEnv`
    (:meth:`CentralEnv.step` / :meth:`CentralEnv.reset`) rank 0 does that
    for every rank and sends each its cut (:meth:`output_keys`), and the
    other ranks never reset or step their ``joint_env`` (built for its specs).

    With ``joint``, it also observes every agent's observation of those
    groups, as one flat vector per environment, under
    ``(JOINT_OBSERVATION, group)``: what a centralized critic reads (a
    task without a global state; decpg's critics, paper 002 sec. 3; dg_mappo's radius graph). With the
    replicated backend it is the joint environment's own observation (no
    message; with the central backend rank 0 sends it to every rank whole); its leaves (``joint[group]``, the task's observation keys of the
    group, 1-D features each) are concatenated per agent, then the agents.

    It also rewards every agent of a group that has per-agent rewards under
    ``(JOINT_REWARD, group, "reward")`` (not trained on: what the logs read,
    so that rank 0's returns are the run's, :func:`log_joint_rewards`).

    With ``joint_actions`` it observes every group's joint action (the one
    that led here, :data:`JOINT_ACTION`) and, where the group has action
    masks, every agent's mask (:data:`JOINT_ACTION_MASK`): what matrpo's
    joint policy models score (paper 001 eq. 8). With the replicated
    backend both are on the rank already (the exchanged actions, its copy's
    masks): no message.

    Args:
        env: the joint environment (the task's own).
        backend: :class:`ReplicatedEnvs` or :class:`CentralEnv`.
        joint: group to its observation leaves to offer jointly. (default: none)
        joint_actions: offer the joint actions and masks. (default: False)
    """

    def __init__(self, env: EnvBase, backend: ReplicatedEnvs, joint: Mapping[str, list] | None = None,
                 joint_actions: bool = False) -> None:
        super().__init__(device=env.device, batch_size=env.batch_size)
        self.joint_env = env
        self.backend = backend
        self._batch_locked = env.batch_locked
        blocks, nb = backend.blocks, len(env.batch_size)
        done_groups = [key[0] for key in env.full_done_spec.keys(True, True) if isinstance(key, tuple)]
        if any(group in blocks for group in done_groups):
            raise ValueError(
                f"--agents local: the environment has per-agent done flags in groups {sorted(set(done_groups))}, "
                f"whose partial resets the {backend.name} backend does not carry yet; launch with --agents all."
            )
        grouped_inputs = [key for key in env.full_state_spec.keys(True, True)
                          if isinstance(key, tuple) and key[0] in blocks]
        if backend.name == "central" and grouped_inputs:
            raise ValueError(f"--env central: the environment takes per-agent inputs {grouped_inputs} besides the "
                             "actions, which the central backend does not send yet; launch with --env replicated.")
        self.joint = {group: list(keys) for group, keys in (joint or {}).items()}
        observation_spec = env.full_observation_spec.clone()
        for group, keys in self.joint.items():
            leaves = [observation_spec[group][key] for key in keys]
            if not leaves or any(leaf.ndim != nb + 2 for leaf in leaves):
                raise ValueError(f"--agents local: group '{group}' observes {keys} with shapes "
                                 f"{[tuple(leaf.shape) for leaf in leaves]}; a joint observation needs 1-D features")
            features = sum(leaf.shape[-1] for leaf in leaves) * leaves[0].shape[nb]
            observation_spec[(JOINT_OBSERVATION, group)] = Unbounded(
                shape=(*env.batch_size, features), dtype=leaves[0].dtype, device=env.device)
        if joint_actions and backend.name == "central":
            raise ValueError("--env central does not send the joint actions and masks matrpo's joint policy models "
                             "score yet; launch with --env replicated.")
        #: groups whose joint actions (and masks, where they have them) this environment observes
        self.joint_actions = {}
        for group in blocks if joint_actions else ():
            mask = (group, "action_mask") in observation_spec.keys(True, True)
            self.joint_actions[group] = mask
            observation_spec[(JOINT_ACTION, group)] = env.full_action_spec[group, "action"].clone()
            if mask:
                observation_spec[(JOINT_ACTION_MASK, group)] = observation_spec[group, "action_mask"].clone()
        self.full_observation_spec = _narrow_spec(observation_spec, blocks, nb)
        self.full_action_spec = _narrow_spec(env.full_action_spec.clone(), blocks, nb)
        reward_spec = env.full_reward_spec.clone()
        #: groups whose every agent's reward this environment also gives (under JOINT_REWARD)
        self.joint_rewards = [g for g in blocks if (g, "reward") in reward_spec.keys(True, True)]
        for group in self.joint_rewards:
            reward_spec[(JOINT_REWARD, group, "reward")] = reward_spec[(group, "reward")].clone()
        self.full_reward_spec = _narrow_spec(reward_spec, blocks, nb)
        self.full_done_spec = env.full_done_spec.clone()
        self.full_state_spec = _narrow_spec(env.full_state_spec.clone(), blocks, nb)

    @property
    def group_map(self) -> dict[str, list[str]]:
        """The joint environment's ``group_map`` (when it has one) cut to this rank's agents."""
        return _cut_group_map(self.joint_env.group_map, self.backend.blocks)

    def _set_seed(self, seed: Optional[int]) -> None:
        self.joint_env.set_seed(seed, static_seed=True)

    def output_specs(self) -> Composite:
        """This rank's observation, reward and done specs in one ``Composite`` (what a step outputs)."""
        specs = self.full_observation_spec.clone()
        for spec in (self.full_reward_spec, self.full_done_spec):
            for key in spec.keys(True, True):
                specs[key] = spec[key].clone()
        return specs

    def output_keys(self, reset: bool) -> list:
        """The leaves of a step's (``reset``: a reset's) output, in spec order: observations, rewards, dones."""
        keys = list(self.full_observation_spec.keys(True, True))
        if not reset:
            keys += list(self.full_reward_spec.keys(True, True))
        return keys + list(self.full_done_spec.keys(True, True))

    def _reset(self, tensordict: Optional[TensorDictBase] = None, **kwargs) -> TensorDictBase:
        inner = None
        if tensordict is not None and "_reset" in tensordict.keys():
            inner = TensorDict({"_reset": tensordict.get("_reset")}, batch_size=self.batch_size, device=self.device)
        if isinstance(self.backend, CentralEnv):
            return self.backend.reset(self, inner)
        out = self.joint_env.reset(inner)
        for group in self.joint_actions:  # no action led here
            out.set((JOINT_ACTION, group), self.full_observation_spec[JOINT_ACTION, group].zero())
        return _narrow_td(self._add_joint(out), self.backend.blocks, len(self.batch_size))

    def _add_joint(self, td: TensorDictBase) -> TensorDictBase:
        nb = len(self.batch_size)
        for group, mask in self.joint_actions.items():
            if mask:
                td.set((JOINT_ACTION_MASK, group), td.get((group, "action_mask")).clone())
        for group, keys in self.joint.items():
            obs = torch.cat([td.get(group).get(key) for key in keys], dim=-1)  # (*B, n, F)
            td.set((JOINT_OBSERVATION, group), obs.reshape(*obs.shape[:nb], -1))
        for group in self.joint_rewards:
            reward = td.get((group, "reward"), None)
            if reward is not None:  # a step (not a reset)
                td.set((JOINT_REWARD, group, "reward"), reward)
        return td

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        if isinstance(self.backend, CentralEnv):
            return self.backend.step(self, tensordict)
        nb = len(self.batch_size)
        joint = TensorDict({}, batch_size=self.joint_env.batch_size, device=self.device)
        inputs = [*self.joint_env.full_action_spec.keys(True, True), *self.joint_env.full_state_spec.keys(True, True)]
        for key in inputs:
            value = tensordict.get(key, None)
            if value is None:
                continue
            if isinstance(key, tuple) and key[0] in self.backend.blocks:
                value = self.backend.joint_action(key[0], value, nb)
            joint.set(key, value)
        out = self.joint_env.step(joint).get("next")
        for group in self.joint_actions:
            out.set((JOINT_ACTION, group), joint.get((group, "action")))
        return _narrow_td(self._add_joint(out), self.backend.blocks, nb)

    def close(self, *, raise_if_closed: bool = True) -> None:
        self.joint_env.close()
        super().close(raise_if_closed=raise_if_closed)


def _joint_env(env: EnvBase) -> EnvBase:
    """The :class:`LocalAgentsEnv` under BenchMARL's transforms (``env`` itself if none), else ``env``."""
    seen = env
    while not isinstance(seen, LocalAgentsEnv) and hasattr(seen, "base_env"):
        seen = seen.base_env
    return seen.joint_env if isinstance(seen, LocalAgentsEnv) else env


def _without_joint(spec: Optional[Composite]) -> Optional[Composite]:
    """A task's spec without the joint observations, actions and masks (the task's methods clone what the
    environment has)."""
    for key in (JOINT_OBSERVATION, JOINT_ACTION, JOINT_ACTION_MASK):
        if spec is not None and key in spec.keys():
            del spec[key]
    return spec


class LocalAgentsTask(TaskClass):
    """A BenchMARL task whose groups are this rank's blocks (see the module docstring).

    Everything but :meth:`get_env_fun` and :meth:`group_map` is the wrapped
    task's, read from the narrowed environment, so the specs BenchMARL builds
    the networks from are those of this rank's agents. The run's name and
    config are the task's (the run folder is named as in one process). A
    task without a global state (:meth:`state_spec` None) gets every group's
    joint observation in its environment (``(JOINT_OBSERVATION, group)``,
    see :class:`LocalAgentsEnv`; read through :func:`joint_observation_spec`),
    kept out of :meth:`observation_spec` so the actors see what they see in one process.

    Args:
        task: the task (BenchMARL's ``TaskClass``).
        backend: :class:`ReplicatedEnvs` or :class:`CentralEnv`.
        joint_actions: its environments offer every group's joint action and masks
            (:class:`LocalAgentsEnv`; matrpo). (default: False)
        joint_observation: its environments offer every group's joint observation also on a task with a
            global state (graphs read from every agent's observation: ally visibility, a radius graph;
            :func:`every_agent_observation`). (default: False)

    Attributes:
        sizes: agents per group of the joint task.
        blocks: ``(first, last)`` of this rank's agents per group.
    """

    def __init__(self, task: TaskClass, backend: ReplicatedEnvs, joint_actions: bool = False,
                 joint_observation: bool = False) -> None:
        super().__init__(name=task.name, config=task.config)
        self.task = task
        self.backend = backend
        self.joint_actions = joint_actions
        self.joint_observation = joint_observation
        self.blocks = dict(backend.blocks)
        self.sizes = {group: owner.numel() for group, owner in backend.owners.items()}

    def get_env_fun(self, num_envs: int, continuous_actions: bool, seed: Optional[int], device) -> Callable[[], EnvBase]:
        make = self.task.get_env_fun(num_envs=num_envs, continuous_actions=continuous_actions, seed=seed,
                                     device=device)
        backend, task, joint_actions, joint_observation = self.backend, self.task, self.joint_actions, \
            self.joint_observation

        def env() -> EnvBase:
            joint_env = make()
            joint = None
            # what a centralized critic reads instead of a state; what a graph of every agent's observation reads
            if joint_observation or task.state_spec(joint_env) is None:
                spec = task.observation_spec(joint_env)
                joint = {g: list(spec[g].keys(True, True)) for g in backend.blocks if g in spec.keys()}
            return LocalAgentsEnv(joint_env, backend, joint, joint_actions=joint_actions)

        return env

    def group_map(self, env: EnvBase) -> Dict[str, List[str]]:
        return _cut_group_map(self.task.group_map(_joint_env(env)), self.blocks)

    def supports_continuous_actions(self) -> bool:
        return self.task.supports_continuous_actions()

    def supports_discrete_actions(self) -> bool:
        return self.task.supports_discrete_actions()

    def max_steps(self, env: EnvBase) -> int:
        return self.task.max_steps(env)

    def has_render(self, env: EnvBase) -> bool:
        return False  # a render reads the joint environment's scene; rank 0's copy would draw every agent

    def observation_spec(self, env: EnvBase) -> Composite:
        return _without_joint(self.task.observation_spec(env))

    def info_spec(self, env: EnvBase) -> Optional[Composite]:
        return _without_joint(self.task.info_spec(env))

    def state_spec(self, env: EnvBase) -> Optional[Composite]:
        return _without_joint(self.task.state_spec(env))

    def action_spec(self, env: EnvBase) -> Composite:
        return self.task.action_spec(env)

    def action_mask_spec(self, env: EnvBase) -> Optional[Composite]:
        return _without_joint(self.task.action_mask_spec(env))

    def env_name(self) -> str:  # an instance method: BenchMARL calls it on the task
        return self.task.env_name()

    def log_info(self, batch: TensorDictBase) -> Dict[str, float]:
        return self.task.log_info(batch)

    def get_reward_sum_transform(self, env: EnvBase):
        """The task's, or with joint rewards BenchMARL's ``RewardSum`` over every reward key (the dones are global)."""
        if not any(isinstance(key, tuple) and key[0] == JOINT_REWARD for key in env.reward_keys):
            return self.task.get_reward_sum_transform(env)
        from torchrl.envs.transforms import RewardSum

        keys = list(env.reward_keys)
        return RewardSum(in_keys=keys, reset_keys=["_reset"] * len(keys))

    def get_env_transforms(self, env: EnvBase):
        return self.task.get_env_transforms(env)

    def get_replay_buffer_transforms(self, env: EnvBase, group: str):
        return self.task.get_replay_buffer_transforms(env, group)

    def __getattr__(self, name: str) -> Any:  # what a task class adds (e.g. CoordSum's mode) is the task's
        if name == "task":
            raise AttributeError(name)
        return getattr(self.task, name)


def group_size(experiment: Any, group: str) -> int:
    """Agents of ``group`` in the joint task: every agent, also where this process builds only its block."""
    task = experiment.task
    if isinstance(task, LocalAgentsTask):
        return task.sizes[group]
    return len(experiment.group_map[group])


def local_block(experiment: Any, group: str) -> tuple[int, int] | None:
    """``(first, last)`` of the agents of ``group`` this process builds, None when it builds every agent."""
    task = experiment.task
    return task.blocks[group] if isinstance(task, LocalAgentsTask) else None


def joint_observation_spec(experiment: Any, group: str) -> tuple[Any, Any] | None:
    """``(key, spec)`` of the joint observation of ``group`` (flat, ``(n * F,)``), None where there is none.

    Only a process that builds a block (:class:`LocalAgentsTask`) of a task
    without a global state has one (:class:`LocalAgentsEnv`).
    """
    if not isinstance(experiment.task, LocalAgentsTask):
        return None
    spec = experiment.test_env.full_observation_spec_unbatched
    key = (JOINT_OBSERVATION, group)
    return (key, spec[key]) if key in spec.keys(True, True) else None


def grown(spec: Composite, n: int) -> Composite:
    """A group's spec ``(m, ...)`` (its agents' entries) for ``n`` agents of the same entries (``spec`` when ``m == n``)."""
    if spec.shape[0] == n:
        return spec
    one = spec[0]
    return one.expand(n, *one.shape)


def block_of_group_draw(experiment: Any, group: str, build: Callable[[int], Any]) -> Any:
    """``build(m)``'s network of this process's ``m`` agents of ``group``, initialised as one process draws it.

    ``build(m)`` builds the group's network for ``m`` agents (stacked per-agent
    parameters, leading dim ``m``). Where this process builds every agent it
    is ``build(m)``. Where it builds a block (:class:`LocalAgentsTask`) the
    network of every agent of the group is drawn first, from the global
    random stream as one process draws it (so the stream ends where it would
    there, and what is drawn after it is the same), and the block's network,
    built without advancing the stream, takes its rows ``first .. last - 1``
    of every leaf: each agent starts from its single-process parameters,
    whatever per-agent initialisation the model has.

    Raises:
        ValueError: the block's network has a leaf whose leading dim is not its agents (not per agent).
    """
    block = local_block(experiment, group)
    m = len(experiment.group_map[group])
    if block is None:
        return build(m)
    first, last = block
    full = build(group_size(experiment, group))
    with torch.random.fork_rng(devices=[]):
        mine = build(m)
    theirs = TensorDict.from_module(full)
    with torch.no_grad():
        for key, leaf in TensorDict.from_module(mine).items(True, True):
            if leaf.dim() == 0 or leaf.shape[0] != m:
                raise ValueError(f"--agents local: {key} of group '{group}''s network is not stacked per agent "
                                 f"(shape {tuple(leaf.shape)}); use a per-agent model (layers/mlp)")
            leaf.copy_(theirs.get(key)[first:last])
    return mine


def every_agent_observation(experiment: Any, group: str, td: TensorDictBase) -> Tensor:
    """Every agent's ``(group, "observation")`` ``(..., n, F)``: the group's own, or a block's joint observation.

    What a graph rebuilt from every agent's observation reads (ally
    visibility): in a process that builds every agent, the group's
    observation in ``td``; in a block (:class:`LocalAgentsTask` with
    ``joint_observation``), the joint observation ``(JOINT_OBSERVATION,
    group)`` cut per agent, which holds every agent's observation when it is
    the group's only observation leaf.

    Raises:
        ValueError: a block without the joint observation, or whose group has other observation leaves.
    """
    if local_block(experiment, group) is None:
        return td.get((group, "observation"))
    joint = td.get((JOINT_OBSERVATION, group), None)
    spec = experiment.observation_spec[group]
    if joint is None or list(spec.keys(True, True)) != ["observation"]:
        raise ValueError(
            f"--agents local: group '{group}''s graph reads every agent's observation, which needs its joint "
            f"observation with 'observation' as the group's only leaf (has {list(spec.keys(True, True))}, joint "
            f"observation {'present' if joint is not None else 'absent'}); launch with --agents all"
        )
    return joint.unflatten(-1, (group_size(experiment, group), -1))


# ------------------------------------------------------------------ the sampling noise of the whole group
def _block_distribution(base: type, n: int, first: int) -> type:
    """A subclass of ``base`` whose ``sample`` / ``rsample`` draw the noise of ``n`` agents and keep its block.

    Built with this rank's block of parameters ``(*B, n_local, ...)``; a
    draw pads every parameter shaped like the batch to ``n`` agents (the
    block's first row in the others' place), samples the padded distribution
    and cuts the block: the random stream advances as in a process that
    holds every agent, and each agent of the block gets the noise it gets there.
    """

    class Block(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._block_args = (args, kwargs)

        def _padded(self) -> tuple[Any, int]:
            batch = self.batch_shape
            dim = len(batch) - 1  # the agent dim
            local = batch[dim]

            def pad(value):
                if not isinstance(value, Tensor) or value.dim() < len(batch) or value.shape[: len(batch)] != batch:
                    return value
                fill = value.narrow(dim, 0, 1)
                before = fill.expand(*batch[:dim], first, *value.shape[dim + 1:])
                after = fill.expand(*batch[:dim], n - first - local, *value.shape[dim + 1:])
                return torch.cat([before, value, after], dim)

            args, kwargs = self._block_args
            full = base(*[pad(a) for a in args], **{k: pad(v) for k, v in kwargs.items()})
            return full, dim

        def _cut(self, value: Tensor, sample_shape, dim: int) -> Tensor:
            return value.narrow(len(torch.Size(sample_shape)) + dim, first, self.batch_shape[dim])

        def sample(self, sample_shape=torch.Size()):
            full, dim = self._padded()
            return self._cut(full.sample(sample_shape), sample_shape, dim)

        def rsample(self, sample_shape=torch.Size()):
            full, dim = self._padded()
            return self._cut(full.rsample(sample_shape), sample_shape, dim)

    Block.__name__ = Block.__qualname__ = f"Block{base.__name__}"
    return Block


def block_sampling(policy: Any, experiment: Any, group: str) -> Any:
    """``policy`` (a group's actor) drawing the whole group's sampling noise in a process that builds a block.

    A no-op when the process builds every agent of the group. Sets the
    ``distribution_class`` of every probabilistic module of ``policy`` to
    :func:`_block_distribution` of it (before any copy of the policy is made).
    """
    block = local_block(experiment, group)
    if block is None:
        return policy
    from tensordict.nn import ProbabilisticTensorDictModule

    n = group_size(experiment, group)
    for module in policy.modules():
        if isinstance(module, ProbabilisticTensorDictModule) and not getattr(module, "_block_sampling", False):
            module.distribution_class = _block_distribution(module.distribution_class, n, block[0])
            module._block_sampling = True
    return policy


def log_joint_rewards(logger: Any) -> None:
    """BenchMARL's ``logger`` reads every agent's rewards where the batch has them (:data:`JOINT_REWARD`).

    So the returns a rank logs (rank 0: the run's CSV / JSON) are the means
    over all agents of a group, as in one process, not over its own block.
    """
    get_reward, get_episode_reward = logger._get_reward, logger._get_episode_reward

    def joint(read, name):
        def get(group, td, remove_agent_dim=False):
            value = td.get(("next", JOINT_REWARD, group, name), None)
            if value is None:
                return read(group, td, remove_agent_dim)
            return value.mean(-2) if remove_agent_dim else value

        return get

    logger._get_reward = joint(get_reward, "reward")
    logger._get_episode_reward = joint(get_episode_reward, "episode_reward")


class EnvBytesLog(Callback):
    """Logs ``comm/<group>/env_bytes_per_agent`` and ``comm/env_bytes_per_agent`` of the backend each batch.

    What each agent of this rank sent for the environment interface since the
    previous batch (its collection, and any evaluation run in between), as
    :class:`~benchmarl_decentral.distributed.experiment.ActionExchange` logs it
    for ``--agents all``. Has the exchange's ``sent`` and ``groups`` (what a
    rank's checkpoint keeps).
    """

    def __init__(self, backend: ReplicatedEnvs) -> None:
        super().__init__()
        self.backend = backend
        self.groups = backend.groups
        self.sent = backend.sent

    def on_batch_collected(self, batch: TensorDictBase) -> None:
        totals: dict = {}
        metrics: dict[str, float] = {}
        for group in self.groups:
            first, last = self.backend.blocks[group]
            held = last - first
            metrics.update(bytes_per_agent_metrics(totals, group, self.groups[-1], held,
                                                   {"env": float(self.sent[group] * held)}))
            self.sent[group] = 0
        self.experiment.logger.log(metrics, step=self.experiment.n_iters_performed)
