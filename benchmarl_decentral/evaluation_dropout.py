"""Agent dropout at evaluation: how a decentralized policy degrades when agents fail.

With ``algorithm.evaluation_dropout=[i, j]`` (a key of ``decpg``, ``dg_mappo``,
``matrpo``, ``magpo``; default ``[]``, off), every clean evaluation is followed
by a second one, on the same test env and with the same policy parameters, in
which agents ``i`` and ``j`` of every group are *silenced*:

* their actions are replaced by a no-op, the ``zero`` policy of the report
  (:class:`~benchmarl_decentral.reporting.reference.ZeroPolicy`): continuous
  actions become 0 (clipped to the action bounds); discrete actions become the
  task family's no-op, ``stop`` (action 4) on ``smax/*``, action 0 elsewhere
  (VMAS's and MPE's no-op). An ``action_mask`` is respected: where it forbids
  the no-op, the first allowed action is taken;
* their messages are removed from every D-GAT communication graph
  (``algorithm=dg_mappo`` and ``model=layers/dgat``): no agent receives from a
  silenced agent, so nothing it observes reaches the others
  (:func:`benchmarl_decentral.models.dgat.silenced_senders`).

The indices are agent positions within each group; each must exist in every
group and no group may be silenced entirely (checked when the task is built,
before training). The callback that runs it, :class:`DropoutEvaluation`, is
attached by :mod:`benchmarl_decentral.experiment_hooks`, whatever the entry
point. It logs, at the evaluation's step,

* ``eval/dropout/<group>/reward/episode_reward_{min,mean,max}``,
* ``eval/dropout/reward/episode_reward_mean`` (mean over groups, as
  BenchMARL's ``eval/reward/episode_reward_mean``),
* ``eval/dropout_gap``: dropout return minus clean return (negative: the team
  loses that much when those agents fail).

It runs wherever BenchMARL evaluates: during training (``experiment.evaluation``
true and a logger or ``create_json``, BenchMARL's own condition) and in
``benchmarl evaluate`` of a run trained with it (the run's own config). It
runs inside BenchMARL's evaluation loop (at its end),
so DecPG's averaged evaluation model is in place for both. With
``experiment.evaluation_static=true`` it is re-seeded like the clean one, so
both play the same episodes and the gap is the dropout's alone; otherwise it
draws its own. The global random states (``torch``, ``numpy``, ``random``)
are restored afterwards, so it takes no draws from the streams training uses.
"""

from __future__ import annotations

import contextlib
import random
from typing import Any, List, Optional, Sequence

import numpy as np
import torch
from benchmarl.experiment.callback import Callback
from tensordict import TensorDictBase
from torchrl.envs.utils import ExplorationType, set_exploration_type

__all__ = ["DropoutEvaluation", "SilencedPolicy", "check_evaluation_dropout", "check_groups", "dropout_callbacks",
           "episode_returns", "evaluation_rollouts", "group_returns", "mean_return"]

KEY = "evaluation_dropout"


def check_evaluation_dropout(owner: str, value: Any) -> List[int]:
    """``value`` as a list of agent indices, or one ValueError naming ``algorithm.evaluation_dropout``.

    The checks that need no task: a list of distinct integers >= 0. Called by
    the ``validate`` of each of our algorithm configs.
    """
    fix = f"set algorithm.{KEY} to a list of distinct agent indices >= 0, e.g. [1, 2] (or [] for none)"
    if value is None:
        return []
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{owner}: {KEY} must be a list of agent indices, got {value!r}; {fix}.")
    indices = list(value)
    if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in indices):
        raise ValueError(f"{owner}: {KEY} must hold integers >= 0, got {indices!r}; {fix}.")
    if len(set(indices)) != len(indices):
        raise ValueError(f"{owner}: {KEY} lists an agent twice: {indices!r}; {fix}.")
    return indices


def check_groups(owner: str, indices: Sequence[int], group_map) -> None:
    """Each index names an agent of every group, and no group is silenced entirely (ValueError otherwise)."""
    for group, agents in group_map.items():
        n = len(agents)
        bad = [i for i in indices if i >= n]
        if bad:
            raise ValueError(
                f"{owner}: {KEY}={list(indices)} names agent(s) {bad}, but group '{group}' has {n} agents "
                f"(indices 0..{n - 1}); set algorithm.{KEY} to indices below {n}."
            )
        if len(indices) >= n:
            raise ValueError(
                f"{owner}: {KEY}={list(indices)} silences all {n} agents of group '{group}'; "
                f"leave at least one agent active (set algorithm.{KEY} to fewer indices)."
            )


def dropout_callbacks(experiment) -> List[Callback]:
    """``[DropoutEvaluation]`` if the algorithm config asks for it (checked against the task's groups)."""
    config = experiment.algorithm_config
    if not hasattr(config, KEY):
        return []
    from benchmarl.algorithms import algorithm_config_registry

    owner = next((name for name, cls in algorithm_config_registry.items() if cls is type(config)), "algorithm")
    indices = check_evaluation_dropout(owner, getattr(config, KEY))
    if not indices:
        return []
    check_groups(owner, indices, experiment.group_map)
    return [DropoutEvaluation(indices)]


class SilencedPolicy:
    """``policy``, then the no-op action for the silenced agents of every group.

    The no-op is :class:`~benchmarl_decentral.reporting.reference.ZeroPolicy`'s:
    continuous 0 (clipped to the bounds); discrete ``stop`` (4) for the
    ``smax`` family, action 0 otherwise; where the step's ``action_mask``
    forbids it, the first allowed action.

    Args:
        policy: the evaluation policy (writes ``(group, "action")``).
        env: the env it acts in (its ``full_action_spec``).
        group_map: ``{group: agent names}``.
        family: the env family (``"smax"``, ``"vmas"``, ...), which picks the discrete no-op.
        agents: indices of the silenced agents within each group.
    """

    def __init__(self, policy, env, group_map, family: str, agents: Sequence[int]):
        from benchmarl_decentral.reporting.reference import ZeroPolicy

        self.policy = policy
        self.agents = list(agents)
        self.noop = ZeroPolicy(env, group_map, family.lower())

    @classmethod
    def from_experiment(cls, policy, experiment, agents: Sequence[int]) -> "SilencedPolicy":
        """For the experiment's test env and task family."""
        return cls(policy, experiment.test_env, experiment.group_map, experiment.task.env_name(), agents)

    def __call__(self, td: TensorDictBase) -> TensorDictBase:
        td = self.policy(td)
        for group, spec in self.noop.specs.items():
            action = td.get((group, "action"))
            noop = self.noop.action(td, group, spec).to(action.device).reshape(action.shape)
            agent_dim = td.get(group).batch_dims - 1
            silenced = torch.zeros(action.shape[agent_dim], dtype=torch.bool, device=action.device)
            silenced[self.agents] = True
            silenced = silenced.view(-1, *([1] * (action.dim() - agent_dim - 1)))
            td.set((group, "action"), torch.where(silenced, noop, action))
        return td


@contextlib.contextmanager
def _rng_restored(devices: Sequence[int]):
    state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=list(devices)):
        try:
            yield
        finally:
            random.setstate(state[0])
            np.random.set_state(state[1])


def _cut(experiment, rollouts: List[TensorDictBase]) -> List[TensorDictBase]:
    """Each episode up to its first done, as BenchMARL's logger does."""
    cut = []
    for r in rollouts:
        done = experiment.logger._get_global_done(r).squeeze(-1).nonzero(as_tuple=True)[0]
        cut.append(r[: int(done[0]) + 1] if done.numel() else r)
    return cut


def group_returns(experiment, rollouts: List[TensorDictBase]) -> dict:
    """``{group: episode returns (n_episodes,)}`` as BenchMARL's logger computes them."""
    logger = experiment.logger
    rollouts = _cut(experiment, rollouts)
    return {
        group: torch.stack([logger._get_reward(group, td).sum(0).mean() for td in rollouts])
        for group in experiment.group_map
    }


def mean_return(experiment, rollouts: List[TensorDictBase]) -> torch.Tensor:
    """The mean episode return over groups, as BenchMARL's logger computes ``episode_reward_mean``."""
    return torch.stack([r.mean() for r in group_returns(experiment, rollouts).values()]).mean()


def episode_returns(experiment, rollouts: List[TensorDictBase]) -> torch.Tensor:
    """Per episode, the mean over groups of the group's return: BenchMARL's evaluation ``return``.

    The values the JSON writer stores as ``return`` (``Logger.log_evaluation``,
    ``_log_global_episode_reward``), shape ``(n_episodes,)``.
    """
    return torch.stack(list(group_returns(experiment, rollouts).values()), dim=0).mean(0)


@torch.no_grad()
def evaluation_rollouts(experiment, policy, *, reseed: bool = True) -> List[TensorDictBase]:
    """BenchMARL's evaluation rollouts (``Experiment._evaluation_loop``) with ``policy``, no video.

    With ``reseed`` and ``experiment.evaluation_static`` the episodes are
    re-seeded as BenchMARL's clean evaluation is, so both play the same ones.
    """
    exp = experiment
    env = exp.test_env
    if reseed and exp.config.evaluation_static:
        from benchmarl.utils import seed_everything

        seed_everything(exp.seed)
        with contextlib.suppress(NotImplementedError):
            env.set_seed(exp.seed)
    exploration = (
        ExplorationType.DETERMINISTIC if exp.config.evaluation_deterministic_actions else ExplorationType.RANDOM
    )
    with set_exploration_type(exploration):
        if env.batch_size == ():
            return [
                env.rollout(max_steps=exp.max_steps, policy=policy, auto_cast_to_device=True,
                            break_when_any_done=True)
                for _ in range(exp.config.evaluation_episodes)
            ]
        return list(
            env.rollout(max_steps=exp.max_steps, policy=policy, auto_cast_to_device=True,
                        break_when_any_done=False).unbind(0)
        )


class DropoutEvaluation(Callback):
    """After each clean evaluation, evaluate again with ``agents`` silenced and log the gap (module doc)."""

    def __init__(self, agents: Sequence[int]):
        super().__init__()
        self.agents = list(agents)
        self.last: Optional[dict] = None  # the last logged metrics

    def on_evaluation_end(self, rollouts: List[TensorDictBase]):
        from benchmarl_decentral.models.dgat import silenced_senders

        exp = self.experiment
        clean = mean_return(exp, rollouts)
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
        policy = SilencedPolicy.from_experiment(exp.policy, exp, self.agents)
        with _rng_restored(devices), silenced_senders(self.agents):
            dropped = group_returns(exp, evaluation_rollouts(exp, policy))
        to_log = {}
        for group, returns in dropped.items():
            for stat in ("min", "mean", "max"):
                to_log[f"eval/dropout/{group}/reward/episode_reward_{stat}"] = float(getattr(returns, stat)())
        mean = float(torch.stack([r.mean() for r in dropped.values()]).mean())
        to_log["eval/dropout/reward/episode_reward_mean"] = mean
        to_log["eval/dropout_gap"] = mean - float(clean)
        self.last = to_log
        exp.logger.log(to_log, step=exp.n_iters_performed)
