"""What one rank of a distributed decpg run holds: ``--agents all`` (every agent built) vs ``--agents local`` (its block).

For ``n`` agents (``coordsum/8x15-100``, ``task.n_agents=n``) on ``R`` ranks
(local gloo processes, :func:`~benchmarl_decentral.distributed.spawn_local`),
each rank builds its experiment with
:func:`~benchmarl_decentral.distributed.experiment.build_rank_experiment` in
both modes and trains one iteration (so that Adam's state exists), then
counts, on rank 0:

* ``params``: elements of the parameters of its actor and critic networks
  (the unique tensors of its losses and policy);
* ``optim``: elements of its optimizer state (Adam: two moments per
  parameter, and a step count per tensor);
* ``buffer``: bytes of its replay buffer's storage (the collected batch its
  group trains on);

and the bytes of parameters + optimizer state (float32). The model is
BenchMARL's default MLP (two hidden layers of 256), ``optimizer=adam``,
``k=2``. Nothing is timed: the figures are exact counts, the same on any
machine. ``--quick``: ``n = 8`` on 2 ranks only.

Run: ``python benchmarks/distributed_local_memory.py [--quick]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, markdown_table, publish  # noqa: E402


def _build(folder: str, n: int, wrap=None):
    from benchmarl.algorithms import algorithm_config_registry
    from benchmarl.environments import task_config_registry
    from benchmarl.experiment import Experiment, ExperimentConfig
    from benchmarl.models import MlpConfig

    import benchmarl_decentral  # noqa: F401

    task = task_config_registry["coordsum/8x15-100"].get_from_yaml()
    task.config.update({"n_agents": n})
    algo = algorithm_config_registry["decpg"].get_from_yaml()
    algo.k, algo.optimizer, algo.evaluation_mode, algo.perturbed_evaluation = 2, "adam", "local", False
    config = ExperimentConfig.get_from_yaml()
    config.max_n_iters, config.max_n_frames = 1, None
    config.on_policy_collected_frames_per_batch, config.on_policy_n_envs_per_worker = 60, 2
    config.on_policy_minibatch_size, config.on_policy_n_minibatch_iters = 60, 1
    config.evaluation, config.loggers, config.create_json, config.render = False, [], False, False
    config.save_folder = folder
    model = MlpConfig.get_from_yaml()  # BenchMARL's default: num_cells [256, 256], Tanh
    return Experiment(task=task if wrap is None else wrap(task), algorithm_config=algo, model_config=model,
                      critic_model_config=model, seed=0, config=config)


def _count(exp) -> dict:
    params = {id(p): p for loss in exp.losses.values() for p in loss.parameters()}
    params.update({id(p): p for p in exp.policy.parameters()})
    state = [t for group in exp.optimizers.values() for opt in group.values() for s in opt.state.values()
             for t in s.values() if torch.is_tensor(t)]
    stored = [exp.replay_buffers[g].storage._storage for g in exp.group_map]
    return {
        "params": sum(p.numel() for p in params.values()),
        "optim": sum(t.numel() for t in state),
        "state_bytes": sum(p.numel() * p.element_size() for p in params.values())
        + sum(t.numel() * t.element_size() for t in state),
        "buffer_bytes": sum(td.bytes() for td in stored),
    }


def _worker(rank: int, world_size: int, n: int, agents: str, out: str) -> None:
    from benchmarl_decentral.distributed.experiment import build_rank_experiment

    with tempfile.TemporaryDirectory() as folder:
        exp = build_rank_experiment(lambda wrap=None: _build(folder, n, wrap), algorithm="decpg",
                                    sizes={"agents": n}, agents=agents)
        exp.run()
        if rank == 0:
            torch.save(_count(exp), out)


def main() -> None:
    from benchmarl_decentral.distributed import spawn_local

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 agents on 2 ranks only")
    args = parser.parse_args()
    grid = [(8, 2)] if args.quick else [(8, 2), (8, 4), (16, 4)]
    rows, result = [], {"machine": machine_info(), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for n, world_size in grid:
            counts = {}
            for agents in ("all", "local"):
                out = f"{tmp}/{n}_{world_size}_{agents}.pt"
                spawn_local(_worker, world_size, n, agents, out, start_method="fork", timeout_s=300)
                counts[agents] = torch.load(out)
                result["runs"].append({"n_agents": n, "world_size": world_size, "agents": agents, **counts[agents]})
            a, b = counts["all"], counts["local"]
            rows.append([n, world_size, f"{a['params']:,}", f"{b['params']:,}", f"{a['optim']:,}", f"{b['optim']:,}",
                         f"{a['state_bytes'] / 2**20:.2f}", f"{b['state_bytes'] / 2**20:.2f}",
                         f"{a['state_bytes'] / b['state_bytes']:.2f}",
                         f"{a['buffer_bytes'] / 2**10:.0f}", f"{b['buffer_bytes'] / 2**10:.0f}"])
    table = markdown_table(
        ["n", "ranks", "params all", "params local", "optim all", "optim local", "MiB all", "MiB local",
         "all / local", "buffer KiB all", "buffer KiB local"], rows)
    publish("distributed_local_memory", "decpg, what rank 0 holds: --agents all vs --agents local", result, table,
            args.quick)


if __name__ == "__main__":
    main()
