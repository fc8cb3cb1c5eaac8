"""Returns of CoordSum's scripted teams in both modes (reference rows for paper 003, Table 1).

Usage::

    python benchmarks/coordsum_scripted.py                       # coordsum/5x20-80, 1000 episodes
    python benchmarks/coordsum_scripted.py --task coordsum/3x10-30 --episodes 200

Prints a markdown table: mean episode return ± 95% CI (normal approximation) and
the hit rate of each team (``scripted_policy``) in each mode, all episodes run as
one batch of envs built by the task (seed ``--seed``).
"""

from __future__ import annotations

import argparse

import torch


def measure(task_name: str, mode: str, name: str, episodes: int, seed: int) -> dict:
    """One batch of ``episodes`` full episodes of the scripted team ``name``."""
    import benchmarl_decentral  # noqa: F401  (registers the tasks)
    from benchmarl.environments import task_config_registry

    from benchmarl_decentral.environments.coordsum import scripted_policy

    task = task_config_registry[task_name].get_from_yaml()
    task.config["mode"] = mode
    env = task.get_env_fun(num_envs=episodes, continuous_actions=False, seed=seed, device="cpu")()
    with torch.no_grad():
        roll = env.rollout(task.max_steps(env), policy=scripted_policy(env, name), break_when_any_done=False)
    ret = roll["next", "reward"].sum(1).squeeze(-1)
    return {
        "mean": ret.mean().item(),
        "ci95": 1.96 * ret.std().item() / ret.numel() ** 0.5,
        "hit_rate": roll["next", "info", "sum_hit"].float().mean().item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="coordsum/5x20-80")
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from benchmarl_decentral.environments.coordsum import MODES, SCRIPTED_POLICIES

    print(f"{args.task}, {args.episodes} episodes, seed {args.seed}\n")
    print("| team | mode | return (mean ± 95% CI) | hit rate |")
    print("|---|---|---|---|")
    for name in SCRIPTED_POLICIES:
        for mode in MODES:
            r = measure(args.task, mode, name, args.episodes, args.seed)
            print(f"| {name} | {mode} | {r['mean']:.2f} ± {r['ci95']:.2f} | {r['hit_rate']:.3f} |")


if __name__ == "__main__":
    main()
