"""Robust final scores, learning verdicts and the rewards behind each run.

- :func:`default_last_k`: how many of the last evaluations the final score
  averages (default: the fewest covering at least :data:`MIN_SCORE_EPISODES`
  episodes, from the episodes per evaluation of the runs);
- :func:`training_return`: mean training (collection) return of the last
  iterations, from the csv logger's ``collection_reward_episode_reward_mean``;
- :func:`verdict`: "above random with 95% confidence" from a bootstrap CI of
  (algorithm's mean final score - random policy's mean return), resampling the
  algorithm's seeds and the random policy's episodes independently;
- :func:`run_config` / :func:`reward_used`: which reward a run trained on and
  which metric it is scored on, read from its ``.hydra/config.yaml``.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from benchmarl_decentral.reporting.loading import read_scalar_steps as _read_steps, Run

#: The default final score averages the last evaluations until they cover this many episodes.
MIN_SCORE_EPISODES = 50
#: Fewer seeds than this: bootstrap intervals over seeds mean little, the report says so
#: and gives no learning verdict.
MIN_SEEDS = 3
#: csv logger file of the training return (BenchMARL's "collection/reward/episode_reward_mean").
TRAINING_RETURN_SCALAR = "collection_reward_episode_reward_mean.csv"


def episodes_per_evaluation(runs: Sequence[Run], metric: str) -> int:
    """The smallest number of episodes of ``metric`` in one evaluation of any run (at least 1)."""
    counts = [len(values[metric]) for run in runs for values in run.evaluations.values() if values.get(metric)]
    return max(1, min(counts)) if counts else 1


def default_last_k(episodes: int, min_episodes: int = MIN_SCORE_EPISODES) -> int:
    """Fewest evaluations of ``episodes`` episodes that cover ``min_episodes`` episodes."""
    return max(1, math.ceil(min_episodes / max(1, episodes)))


def window_mean(frames: np.ndarray, values: np.ndarray, until: Optional[int], k: int) -> Tuple[float, int, int]:
    """Mean of the last ``k`` values at frames <= ``until`` (None: the last ones).

    Returns (mean, number of evaluations used, first frame of the window).
    """
    keep = np.ones(frames.shape, dtype=bool) if until is None else frames <= until
    f, v = frames[keep], values[keep]
    f, v = f[-k:], v[-k:]
    return float(v.mean()), int(v.size), int(f[0])


# -------------------------------------------------------------- training return
def training_return(run: Run, from_frame: Optional[int], until: Optional[int]) -> Tuple[Optional[float], int]:
    """Mean training return over the iterations whose frames are in ``(from_frame, until]``.

    The iterations are the csv logger's steps; their frames come from
    ``counters_total_frames.csv``. Without those files: (None, 0). With
    ``from_frame`` None: the last iteration only.
    """
    if run.scalars_dir is None:
        return None, 0
    returns = _read_steps(run.scalars_dir / TRAINING_RETURN_SCALAR)
    frames = _read_steps(run.scalars_dir / "counters_total_frames.csv")
    if not returns or not frames:
        return None, 0
    items = [(frames[s], v) for s, v in sorted(returns.items()) if s in frames and math.isfinite(v)]
    if until is not None:
        items = [(f, v) for f, v in items if f <= until]
    if not items:
        return None, 0
    window = [items[-1][1]] if from_frame is None else [v for f, v in items if f > from_frame]
    window = window or [items[-1][1]]
    return float(np.mean(window)), len(window)


# --------------------------------------------------------------------- verdict
def difference_ci(scores: np.ndarray, reference_episodes: np.ndarray, reps: int = 2000, seed: Optional[int] = 0,
                  confidence: float = 0.95) -> Tuple[float, Optional[float], Optional[float]]:
    """mean(scores) - mean(reference) with a percentile bootstrap CI (independent resampling).

    ``scores``: one final score per seed; ``reference_episodes``: the reference
    policy's episode returns. CI None when there are fewer than 2 seeds.
    """
    scores = np.asarray(scores, dtype=float)
    ref = np.asarray(reference_episodes, dtype=float)
    point = float(scores.mean() - ref.mean())
    if scores.size < 2 or ref.size < 1:
        return point, None, None
    rng = np.random.default_rng(seed)
    a = scores[rng.integers(0, scores.size, size=(reps, scores.size))].mean(axis=1)
    b = ref[rng.integers(0, ref.size, size=(reps, ref.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    diff = a - b
    return point, float(np.quantile(diff, alpha)), float(np.quantile(diff, 1 - alpha))


def verdict(n_seeds: int, low: Optional[float]) -> str:
    """"yes" / "no" (above random with 95% confidence), or why there is none."""
    if low is None:
        return "n/a (no random reference)" if n_seeds >= 2 else "n/a (1 seed)"
    if n_seeds < MIN_SEEDS:
        return f"n/a ({n_seeds} seeds < {MIN_SEEDS})"
    return "yes" if low > 0 else "no"


# ---------------------------------------------------------------- run configs
def run_folder(run: Run) -> Optional[Path]:
    """The hydra job folder of a run (``<job>/<experiment>/<experiment>.json``), if it has ``.hydra/``."""
    for folder in (run.source.parent.parent, run.source.parent):
        if (folder / ".hydra" / "config.yaml").is_file():
            return folder
    return None


def run_config(run: Run) -> Optional[dict]:
    """``{"config": .hydra/config.yaml, "task_name": ..., "algorithm_name": ...}`` of a run, or None."""
    import yaml

    folder = run_folder(run)
    if folder is None:
        return None
    try:
        config = yaml.safe_load((folder / ".hydra" / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    choices: dict = {}
    hydra_file = folder / ".hydra" / "hydra.yaml"
    if hydra_file.is_file():
        try:
            choices = ((yaml.safe_load(hydra_file.read_text()) or {}).get("hydra") or {}).get("runtime", {}).get(
                "choices", {}) or {}
        except (OSError, yaml.YAMLError, AttributeError):
            choices = {}
    status: dict = {}
    if (folder / "status.yaml").is_file():
        try:
            status = yaml.safe_load((folder / "status.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError):
            status = {}
    task_name = choices.get("task") or status.get("task") or run.task_id
    algorithm_name = choices.get("algorithm") or status.get("algorithm") or run.algorithm
    return {"config": config, "task_name": str(task_name), "algorithm_name": str(algorithm_name)}


def continuous_actions(task_name: str, algorithm_name: str, config: dict) -> bool:
    """BenchMARL's choice of action type (``Experiment._set_action_type``) for a run's config."""
    import benchmarl_decentral  # noqa: F401
    from benchmarl.algorithms import algorithm_config_registry
    from benchmarl.hydra_config import load_task_config_from_hydra
    from omegaconf import OmegaConf

    with warnings.catch_warnings():  # BenchMARL warns for tasks without a config dataclass (ours have YAML checks)
        warnings.filterwarnings("ignore", message="TaskConfig python dataclass not found")
        task = load_task_config_from_hydra(OmegaConf.create(dict(config.get("task") or {})), task_name)
    algorithm = algorithm_config_registry[algorithm_name]
    prefer = bool((config.get("experiment") or {}).get("prefer_continuous_actions", True))
    if task.supports_continuous_actions() and algorithm.supports_continuous_actions() and prefer:
        return True
    if task.supports_discrete_actions() and algorithm.supports_discrete_actions():
        return False
    return bool(task.supports_continuous_actions())


#: Task options that switch a task between a shared team reward and per-agent rewards.
_SHARED_SWITCHES = ("shared_rew", "share_reward", "shared_reward")
#: Task families whose reward is one shared team reward.
_SHARED_FAMILIES = {"coordsum": "shared team reward (CoordSum's hit reward)",
                    "smax": "shared team reward (SMAX: enemy health removed, win bonus)",
                    "smacv2": "shared team reward"}


def task_reward(task_name: str, task_config: dict) -> Tuple[str, bool]:
    """(description of the task's reward, whether each agent gets its own reward)."""
    family = task_name.split("/")[0]
    config = task_config or {}
    mode = config.get("reward_mode")
    if mode == "agent0":
        who = config.get("rewarded_agent", 0)
        penalty = config.get("penalty_key")
        return (f"private: only agent {who} rewarded (the team objective"
                + (f" + its own '{penalty}' penalty), the others get their own '{penalty}' penalty" if penalty
                   else "), the others get 0"), True)
    if mode == "individual":
        return "private per-agent rewards (the task's own)", True
    if family in _SHARED_FAMILIES:
        return _SHARED_FAMILIES[family], False
    for switch in _SHARED_SWITCHES:
        if switch in config:
            if config[switch]:
                return f"shared team reward ({switch}=true)", False
            return f"per-agent rewards ({switch}=false)", True
    if family == "pettingzoo":
        return "per-agent rewards (PettingZoo)", True
    if family == "mpe":
        return "per-agent rewards (MPE: (1 - local_ratio) x team distance term + local_ratio x own collisions)", True
    return "the task's reward", True


def reward_used(task_name: str, algorithm_name: str, task_config: dict, algorithm_config: dict) -> str:
    """What a run trained on: the task's reward as the algorithm uses it."""
    description, per_agent = task_reward(task_name, task_config)
    if algorithm_name == "dg_mappo" and per_agent:
        return f"team: mean over agents of the {description} (dg_mappo's rule, paper 000 sec. 2.1)"
    if per_agent:
        return f"each agent its own: {description}"
    return description


def scored_on(metric: str, task_name: str, task_config: dict) -> str:
    """What the score measures, for the report."""
    if metric != "return":
        return f"`{metric}` (BenchMARL evaluation JSON)"
    _, per_agent = task_reward(task_name, task_config)
    mode = (task_config or {}).get("reward_mode")
    if mode == "agent0":
        penalty = (task_config or {}).get("penalty_key")
        family = task_name.split("/")[0]
        detail = {"vmas_private": " (VMAS navigation_agent0: goal shaping + all-on-goal bonus + every agent's "
                                  "collision penalty, over n)",
                  "coordsum_private": " (CoordSum: the team's hits per episode over n)"}.get(family, "")
        return ("`return`: mean over agents of the private returns = (rewarded agent's return"
                + (f" + the others' '{penalty}' penalties" if penalty else "") + ") / n_agents: the team metric "
                "scaled by 1/n" + detail)
    if per_agent:
        return "`return`: mean over agents of their episode returns (= the team's mean reward)"
    return "`return`: episode return of the shared team reward"
