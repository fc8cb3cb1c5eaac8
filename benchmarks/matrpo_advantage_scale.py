"""Per-agent advantage scale of MATRPO on one batch of a private-reward task (issue 15, item 4).

Usage::

    python benchmarks/matrpo_advantage_scale.py                                   # coordsum_private/3x5-12
    python benchmarks/matrpo_advantage_scale.py --task vmas_private/navigation_agent0 --frames 2000

Collects one batch with a freshly initialised ``algorithm=matrpo`` (the task's
defaults, seed ``--seed``), computes every agent's GAE with its own critic and
prints, per agent: the fraction of samples with a non-zero reward, the std of
the raw advantages, and the std after each ``advantage_norm``. An agent whose
reward is almost always 0 has raw advantages made of critic error only;
``agent_std`` scales them to unit variance, the same weight as the rewarded
agent's signal, while ``center`` keeps their small scale. No training.
"""

from __future__ import annotations

import argparse
import tempfile


def measure(task_name: str, frames: int, seed: int) -> dict:
    import benchmarl_decentral  # noqa: F401  (registers the algorithms and tasks)
    from benchmarl.algorithms import algorithm_config_registry
    from benchmarl.environments import task_config_registry
    from benchmarl.experiment import Experiment, ExperimentConfig
    from benchmarl.models import MlpConfig

    from benchmarl_decentral.algorithms.matrpo import ADVANTAGE_NORMS, scale_advantages

    config = ExperimentConfig.get_from_yaml()
    config.on_policy_collected_frames_per_batch = frames
    config.on_policy_n_envs_per_worker = 10
    config.max_n_iters, config.max_n_frames = 1, None
    config.evaluation, config.loggers, config.create_json, config.render = False, [], False, False
    with tempfile.TemporaryDirectory() as tmp:
        config.save_folder = tmp
        task = task_config_registry[task_name].get_from_yaml()
        exp = Experiment(task=task, algorithm_config=algorithm_config_registry["matrpo"].get_from_yaml(),
                         model_config=MlpConfig.get_from_yaml(), critic_model_config=MlpConfig.get_from_yaml(),
                         seed=seed, config=config)
        alg = exp.algorithm
        out = {}
        for group, agents in exp.group_map.items():
            batch = next(iter(exp.collector)).detach().exclude(*exp._get_excluded_keys(group))
            batch = alg.compute_advantages(group, alg._complete_group_keys(group, batch))
            n = len(agents)
            adv = batch.get((group, "advantage")).reshape(-1, n).T
            rew = batch.get(("next", group, "reward")).reshape(-1, n).T
            out[group] = {"nonzero_reward": (rew != 0).float().mean(-1).tolist(), "raw": adv.std(-1).tolist()}
            for mode in ADVANTAGE_NORMS:
                out[group][mode] = scale_advantages(adv, mode).std(-1).tolist()
        exp.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="coordsum_private/3x5-12")
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for group, row in measure(args.task, args.frames, args.seed).items():
        print(f"{args.task} group {group}, {args.frames} frames, seed {args.seed}")
        print("| agent | non-zero reward | raw std | agent_std | center | none |")
        print("|---|---|---|---|---|---|")
        for i in range(len(row["raw"])):
            print(f"| {i} | {row['nonzero_reward'][i]:.3f} | {row['raw'][i]:.4f} | {row['agent_std'][i]:.3f} "
                  f"| {row['center'][i]:.4f} | {row['none'][i]:.4f} |")


if __name__ == "__main__":
    main()
