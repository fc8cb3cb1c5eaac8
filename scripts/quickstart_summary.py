"""The end of ``scripts/quickstart.sh``: did the agent learn? Compared with a uniform random policy.

Reads the run that the quickstart wrote (BenchMARL's results JSON, its
checkpoint), evaluates a uniform random policy on the same task with the same
episode return as BenchMARL's evaluation (reward summed to the first done,
mean over agents, mean over groups; ``benchmarl/experiment/logger.py``),
draws the evaluation curve against it (``learning_curve.png``) and prints a
short summary with the next commands to try::

    python scripts/quickstart_summary.py OUT_DIR [--task vmas/balance] [--episodes 10]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path
from typing import List, Tuple

warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)


def evaluation_curve(run_json: Path) -> List[Tuple[int, List[float]]]:
    """``(frames, return of each evaluation episode)`` of every evaluation in BenchMARL's results JSON, in order."""
    data = json.loads(run_json.read_text())
    (env,) = data.values()
    (task,) = env.values()
    (algorithm,) = task.values()
    (seed,) = algorithm.values()
    curve = []
    for key, value in seed.items():
        if key.startswith("step_"):
            curve.append((int(value["step_count"]), [float(r) for r in value["return"]]))
    return sorted(curve)


def random_policy_returns(task_name: str, *, episodes: int, seed: int = 0) -> List[float]:
    """Episode returns of a uniform random policy (each action drawn uniformly from its spec).

    One vectorised environment with ``episodes`` copies, rolled out for the
    task's ``max_steps``; each episode's return is cut at its first done, as
    BenchMARL's evaluation does.
    """
    import torch
    from benchmarl.environments import task_config_registry

    import benchmarl_decentral  # noqa: F401  (registers our tasks)

    torch.manual_seed(seed)
    task = task_config_registry[task_name].get_from_yaml()
    env = task.get_env_fun(num_envs=episodes, continuous_actions=True, seed=seed, device="cpu")()
    rollout = env.rollout(max_steps=task.max_steps(env), break_when_any_done=False)  # policy=None: uniform random
    groups = list(task.group_map(env))
    env.close()
    return episode_returns(rollout, groups)


def episode_returns(rollout, groups: List[str]) -> List[float]:
    """BenchMARL's evaluation return of each episode of a ``(episodes, T)`` rollout.

    Reward summed up to and including the first done, mean over the agents of
    a group, mean over groups (``Logger.log_evaluation``).
    """
    import torch

    done = rollout.get(("next", "done")).squeeze(-1).long()  # (episodes, T)
    alive = (done.cumsum(-1) - done) == 0  # steps up to and including the first done
    group_returns = []
    for group in groups:
        reward = rollout.get(("next", group, "reward"), None)
        if reward is None:  # a shared reward
            reward = rollout.get(("next", "reward")).unsqueeze(-2)
        per_step = reward.squeeze(-1).mean(-1)  # (episodes, T), mean over agents
        group_returns.append((per_step * alive).sum(-1))
    return torch.stack(group_returns).mean(0).tolist()


def mean_and_error(values: List[float]) -> Tuple[float, float]:
    """The mean and its standard error."""
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var / n)


def plot(curve: List[Tuple[int, float]], random_return: float, path: Path, title: str) -> None:
    """The evaluation returns against frames, the random policy as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([f for f, _ in curve], [r for _, r in curve], marker="o", label="DecPG (evaluation, mean return)")
    ax.axhline(random_return, linestyle="--", color="grey", label="uniform random policy")
    ax.set_xlabel("frames")
    ax.set_ylabel("episode return")
    ax.set_title(title)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the quickstart's output folder (hydra.run.dir)")
    parser.add_argument("--task", default="vmas/balance")
    parser.add_argument("--episodes", type=int, default=10, help="episodes of the random policy (default 10)")
    args = parser.parse_args(argv)

    jsons = sorted(p for p in args.out.rglob("*.json") if not p.name.startswith("."))
    checkpoints = sorted(args.out.rglob("checkpoints/checkpoint_*.pt"), key=lambda p: int(p.stem.split("_")[-1]))
    if not jsons or not checkpoints:
        print(f"quickstart: no results JSON or checkpoint under {args.out}; the run above did not finish.",
              file=sys.stderr)
        return 1
    curve = evaluation_curve(jsons[0])
    if not curve:
        print(f"quickstart: {jsons[0]} holds no evaluation.", file=sys.stderr)
        return 1
    randoms = random_policy_returns(args.task, episodes=args.episodes)
    random_return, random_error = mean_and_error(randoms)
    means = [(frames, mean_and_error(returns)) for frames, returns in curve]
    png = args.out / "learning_curve.png"
    plot([(f, m) for f, (m, _) in means], random_return, png, f"DecPG on {args.task}")

    (start_frames, (start, _)), (end_frames, (end, end_error)) = means[0], means[-1]
    best_frames, (best, best_error) = max(means, key=lambda fm: fm[1][0])
    # two standard errors of the difference: closer than that is not told apart by 10 episodes
    margin = 2 * math.hypot(end_error, random_error)
    if end - random_return > margin:
        verdict = f"learned: the final policy beats the random policy by {end - random_return:.2f} (> 2 s.e. = {margin:.2f})"
    elif best - random_return > 2 * math.hypot(best_error, random_error):
        verdict = (f"learned, then fell back: its best evaluation ({best:.2f} at {best_frames} frames) beat the "
                   "random policy, its last did not (returns over 10 episodes are noisy)")
    else:
        verdict = ("not told apart from the random policy yet (within 2 standard errors): "
                   "train longer, e.g. QUICKSTART_FRAMES=200000")
    checkpoint, first = checkpoints[-1], checkpoints[0]
    print()
    print("Quickstart summary (DecPG on %s, evaluation return = mean episode reward over agents)" % args.task)
    print(f"  first evaluation ({start_frames} frames): {start:8.2f}")
    print(f"  last evaluation  ({end_frames} frames): {end:8.2f} +- {end_error:.2f}   (best {best:.2f} at {best_frames} frames)")
    print(f"  uniform random policy ({len(randoms)} episodes): {random_return:8.2f} +- {random_error:.2f}")
    print(f"  verdict: {verdict}")
    print(f"  learning curve: {png}")
    print(f"  results JSON:   {jsons[0]}")
    print(f"  checkpoints:    {checkpoint}" + ("" if first == checkpoint else f"\n                  {first}"))
    print()
    print("Next commands to try:")
    print(f"  benchmarl evaluate {checkpoint}   # evaluate the final policy again")
    if first != checkpoint:
        print(f"  benchmarl resume {first}   # train again from mid-run up to the end")
    print(f"  benchmarl report {args.out} --out {args.out / 'report'}   # tables and plots of the run")
    print("  benchmarl run algorithm=mappo task=vmas/balance experiment.loggers=[csv]   # BenchMARL's MAPPO, same task")
    print("  benchmarl list                                   # every algorithm, task and model by name")
    return 0


if __name__ == "__main__":
    sys.exit(main())
