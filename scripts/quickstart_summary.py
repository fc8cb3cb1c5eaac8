"""The end of ``scripts/quickstart.sh``: did the agent learn? Compared with a uniform random policy.

Reads the run that the quickstart wrote (BenchMARL's results JSON, its
checkpoint), evaluates a uniform random policy on the run's own task (its .hydra config) with the same
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


def random_policy_returns(run_dir: Path, task_name: str, *, episodes: int, seed: int = 0) -> List[float]:
    """Episode returns of a uniform random policy on the run's own task (the report's ``random`` row).

    The task is rebuilt from the run's ``.hydra/config.yaml`` (so task
    overrides passed to the quickstart, e.g. ``task.n_agents=5``, hold) and
    evaluated by :func:`benchmarl_decentral.reporting.reference.evaluate_policy`,
    the code ``benchmarl report`` uses for its reference rows: ``episodes``
    vectorised episodes, each cut at its first done as BenchMARL's evaluation
    does.
    """
    import yaml

    from benchmarl_decentral.reporting.reference import TaskSetup, evaluate_policy
    from benchmarl_decentral.reporting.scores import continuous_actions

    config_file = run_dir / ".hydra" / "config.yaml"
    config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}
    if not config.get("task"):
        raise FileNotFoundError(f"{config_file} does not hold the run's task config")
    continuous = continuous_actions(task_name, "decpg", config)
    setup = TaskSetup(task_name, dict(config["task"]), continuous)
    return evaluate_policy(setup, "random", seed, episodes)


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
    randoms = random_policy_returns(args.out, args.task, episodes=args.episodes)
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
