"""DecPG from BenchMARL's Python API, next to the hydra / `benchmarl run` route.

Trains DecPG (paper 002, k=1 kNN ring) on VMAS balance with 3 agents for a few
iterations and prints the consensus distance of the actors and the last
evaluation returns (clean and perturbed).

    python examples/decpg_python_api.py            # about a minute on a laptop CPU
    python examples/decpg_python_api.py --iters 50 # longer
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from benchmarl.environments import VmasTask
from benchmarl.experiment import Experiment, ExperimentConfig
from benchmarl.models import MlpConfig

import benchmarl_decentral  # noqa: F401  (registers decpg with BenchMARL)
from benchmarl_decentral.algorithms import DecpgConfig
from benchmarl_decentral.consensus import consensus_distance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    task = VmasTask.BALANCE.get_from_yaml()
    task.config["n_agents"] = 3

    algorithm = DecpgConfig.get_from_yaml()  # conf/algorithm/decpg.yaml (paper Table 1)
    algorithm.k = args.k

    experiment_config = ExperimentConfig.get_from_yaml()
    experiment_config.max_n_iters = args.iters
    experiment_config.max_n_frames = None
    experiment_config.on_policy_collected_frames_per_batch = 1200
    experiment_config.on_policy_n_envs_per_worker = 12
    # paper 002: one full-batch minibatch, 10 PPO epochs
    experiment_config.on_policy_minibatch_size = 1200
    experiment_config.on_policy_n_minibatch_iters = 10
    experiment_config.evaluation_interval = 1200 * args.iters
    experiment_config.evaluation_episodes = 4
    experiment_config.loggers = ["csv"]
    experiment_config.render = False
    experiment_config.save_folder = tempfile.mkdtemp(prefix="decpg_example_")

    model = MlpConfig(num_cells=[64, 64], layer_class=torch.nn.Linear, activation_class=torch.nn.Tanh)
    experiment = Experiment(
        task=task,
        algorithm_config=algorithm,
        model_config=model,
        critic_model_config=model,
        seed=args.seed,
        config=experiment_config,
    )
    experiment.run()

    actors = experiment.algorithm.actor_leaves("agents")
    print(f"actor consensus distance after training: {float(consensus_distance(actors)):.3e}")
    print(f"results in {experiment.folder_name}")


if __name__ == "__main__":
    main()
