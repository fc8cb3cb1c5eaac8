"""Wall time per training iteration of magpo vs BenchMARL's mappo (target: magpo <= 2x mappo).

What is measured, in one process, on the same task, batch, MLP and seed:

* ``mappo``  BenchMARL's default ``MappoConfig.get_from_yaml()`` with
             ``share_policy_params=True`` (one shared actor, one shared
             centralised critic): what a user runs;
* ``magpo``  ``MagpoConfig.get_from_yaml()`` unchanged: a MAT-style guider
             (1 block, width 64, 1 head) that samples the joint action agent
             by agent during collection and is trained by eqs. 9-10 (teacher
             forcing, value head), plus the shared decentralized learner (the
             experiment's MLP on own observation + agent id) trained by eqs.
             11-12: two losses, two Adam optimizers.

1. BenchMARL's own per-iteration timers (``timers/collection_time``,
   ``timers/training_time``, ``timers/iteration_time``) read from
   ``experiment.logger.log`` while ``experiment.run()`` trains (evaluation off,
   the first ``--warmup`` iterations of every experiment dropped, ``--rounds``
   rounds with the algorithm order rotated); medians.
2. Because iteration timings drift with other load on a shared machine, the
   two parts are also timed interleaved (fresh experiments, replay buffers
   filled with one processed batch): one minibatch
   optimizer step (each experiment's ``_optimizer_loop``, BenchMARL's private
   per-minibatch step: all loss keys' forward, backward, clip and step) and one
   collection of ``--frames`` frames (``collector.rollout()``; for magpo the
   autoregressive guider, n decoder passes per env step), round-robin,
   ``--step-repeats`` / ``--collect-repeats`` cycles; reported as the ratio of
   minima (as ``timeit`` recommends) and the median of per-cycle paired ratios.
   An iteration = one collection + ``--minibatch-iters x ceil(frames /
   minibatch)`` steps; the estimate ``collect + steps x step`` from the minima
   gives the noise-robust iteration ratio.

Usage::

    python benchmarks/magpo_iteration.py                           # full (coordsum/5x20-80)
    python benchmarks/magpo_iteration.py --task vmas/balance       # continuous actions
    python benchmarks/magpo_iteration.py --quick                   # smoke test, < 60 s

Writes a markdown table to stdout and JSON to ``benchmarks/out/magpo_iteration.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

import benchmarl_decentral  # noqa: F401  (registers magpo and coordsum with BenchMARL)
from benchmarl.algorithms import MappoConfig
from benchmarl.environments import task_config_registry
from benchmarl.experiment import Experiment, ExperimentConfig
from benchmarl.models import MlpConfig
from benchmarl_decentral.algorithms import MagpoConfig
from _common import experiment_config as timing_config, machine_info  # noqa: E402  (benchmarks/ is the script's folder)

OUT_DIR = Path(__file__).resolve().parent / "out"
TIMERS = ("collection_time", "training_time", "iteration_time")
NAMES = ("mappo", "magpo")
TARGET = 2.0


# --------------------------------------------------------------------- configs
def experiment_config(args: argparse.Namespace, save_folder: str) -> ExperimentConfig:
    """A fresh ExperimentConfig per experiment; mappo's default parameter sharing."""
    return timing_config(args, save_folder, share_policy_params=True)


def build(name: str, args: argparse.Namespace, save_folder: str) -> Experiment:
    algo = MappoConfig.get_from_yaml() if name == "mappo" else MagpoConfig.get_from_yaml()
    model = MlpConfig.get_from_yaml()
    if args.num_cells:
        model.num_cells = list(args.num_cells)
    critic = MlpConfig.get_from_yaml()
    critic.num_cells = list(model.num_cells)
    task = task_config_registry[args.task].get_from_yaml()
    if args.n_agents is not None:
        task.config["n_agents"] = args.n_agents
    return Experiment(
        task=task,
        algorithm_config=algo,
        model_config=model,
        critic_model_config=critic,
        seed=args.seed,
        config=experiment_config(args, save_folder),
    )


# ------------------------------------------------------------------- measuring
def time_training(name: str, args: argparse.Namespace, save_folder: str) -> tuple[list[dict], Experiment]:
    """Per-iteration BenchMARL timers of one experiment (warm-up iterations dropped), and the experiment."""
    exp = build(name, args, save_folder)
    records: list[dict] = []
    log = exp.logger.log

    def recording_log(values: dict, step: int | None = None):
        if "timers/iteration_time" in values:
            records.append({t: float(values[f"timers/{t}"]) for t in TIMERS})
        return log(values, step=step)

    exp.logger.log = recording_log
    with contextlib.redirect_stderr(io.StringIO()):  # tqdm progress bar
        exp.run()
    return records[args.warmup :], exp


def _interleaved(fns: dict, repeats: int, warmup: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(warmup + repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            if r >= warmup:
                times[name].append(time.perf_counter() - t)
    return times


def prepare(name: str, args: argparse.Namespace, save_folder: str) -> Experiment:
    """A fresh experiment with a live collector and a replay buffer filled by one processed batch."""
    exp = build(name, args, save_folder)
    batch = next(iter(exp.collector))
    for group in exp.train_group_map:
        group_batch = exp.algorithm.process_batch(group, batch.exclude(*exp._get_excluded_keys(group)))
        exp.replay_buffers[group].extend(group_batch.reshape(-1))
    return exp


def time_parts(args: argparse.Namespace, save_folder: str) -> dict[str, dict[str, list[float]]]:
    """Seconds per minibatch optimizer step and per collection, interleaved round-robin."""
    experiments = {name: prepare(name, args, save_folder) for name in NAMES}

    def step(exp):
        return lambda: [exp._optimizer_loop(group) for group in exp.train_group_map]

    def collect(exp):
        return lambda: exp.collector.rollout()

    try:
        return {
            "optimizer_step": _interleaved({n: step(e) for n, e in experiments.items()}, args.step_repeats, 3),
            "collection": _interleaved({n: collect(e) for n, e in experiments.items()}, args.collect_repeats, 1),
        }
    finally:
        for exp in experiments.values():
            exp.close()


def paired_stats(samples: dict[str, list[float]]) -> dict[str, float]:
    m, g = samples["mappo"], samples["magpo"]
    return {
        "mappo_min_s": min(m),
        "magpo_min_s": min(g),
        "mappo_median_s": statistics.median(m),
        "magpo_median_s": statistics.median(g),
        "ratio_of_minima": min(g) / min(m),
        "paired_median_ratio": statistics.median(b / a for a, b in zip(m, g)),
    }


# ------------------------------------------------------------------- reporting
def train_table(summary: dict) -> str:
    lines = [
        "| algorithm | collection (s) | training (s) | iteration (s) |",
        "|---|---:|---:|---:|",
    ]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['collection_time']:.2f} | {s['training_time']:.2f} | {s['iteration_time']:.2f} |")
    m, g = summary["mappo"], summary["magpo"]
    lines.append(
        f"| magpo / mappo | {g['collection_time'] / m['collection_time']:.2f}x | "
        f"{g['training_time'] / m['training_time']:.2f}x | {g['iteration_time'] / m['iteration_time']:.2f}x |"
    )
    return "\n".join(lines)


def parts_table(parts: dict[str, dict[str, float]], estimate: dict[str, float]) -> str:
    lines = [
        "| part | mappo min (ms) | magpo min (ms) | mappo median (ms) | magpo median (ms) "
        "| magpo/mappo (ratio of minima) | magpo/mappo (median of paired ratios) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, st in parts.items():
        lines.append(
            f"| {name.replace('_', ' ')} | {1e3 * st['mappo_min_s']:.1f} | {1e3 * st['magpo_min_s']:.1f} "
            f"| {1e3 * st['mappo_median_s']:.1f} | {1e3 * st['magpo_median_s']:.1f} "
            f"| {st['ratio_of_minima']:.2f}x | {st['paired_median_ratio']:.2f}x |"
        )
    lines.append(
        f"| iteration estimate (collection + steps x step, minima) | {1e3 * estimate['mappo_s']:.0f} "
        f"| {1e3 * estimate['magpo_s']:.0f} | | | {estimate['ratio']:.2f}x | |"
    )
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="coordsum/5x20-80", help="registered task, e.g. coordsum/3x10-30, vmas/balance")
    p.add_argument("--n-agents", type=int, default=None, help="override task.n_agents")
    p.add_argument("--iters", type=int, default=2, help="timed iterations per experiment")
    p.add_argument("--warmup", type=int, default=1, help="untimed first iterations per experiment")
    p.add_argument("--rounds", type=int, default=2, help="experiments per algorithm, order rotated")
    p.add_argument("--frames", type=int, default=6000, help="on_policy_collected_frames_per_batch")
    p.add_argument("--n-envs", type=int, default=60, help="on_policy_n_envs_per_worker")
    p.add_argument("--minibatch", type=int, default=400, help="on_policy_minibatch_size")
    p.add_argument("--minibatch-iters", type=int, default=45, help="on_policy_n_minibatch_iters (passes over the batch)")
    p.add_argument("--num-cells", type=int, nargs="+", default=None, help="MLP sizes (default: BenchMARL's 256 256)")
    p.add_argument("--step-repeats", type=int, default=100, help="interleaved minibatch steps per algorithm")
    p.add_argument("--collect-repeats", type=int, default=5, help="interleaved collections per algorithm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (1: stable on a small shared machine)")
    p.add_argument("--out", type=Path, default=OUT_DIR / "magpo_iteration.json")
    p.add_argument("--quick", action="store_true", help="tiny run for tests (< 60 s)")
    args = p.parse_args(argv)
    if args.quick:
        args.iters, args.warmup, args.rounds = 1, 1, 1
        args.frames, args.n_envs, args.minibatch, args.minibatch_iters = 300, 6, 100, 2
        args.num_cells = args.num_cells or [32, 32]
        args.step_repeats, args.collect_repeats = 3, 1
        if args.task == "coordsum/5x20-80":
            args.task = "coordsum/3x10-30"
        if args.out == OUT_DIR / "magpo_iteration.json":
            args.out = OUT_DIR / "magpo_iteration_quick.json"
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    info = machine_info()
    steps = args.minibatch_iters * -(-args.frames // args.minibatch)
    print(
        f"# magpo vs mappo iteration time on {args.task}: torch {info['torch']}, torch threads = "
        f"{info['torch_threads']}, nproc = {info['nproc']}, CPU = {info['cpu']}"
    )
    print(
        f"# {args.frames} frames/iter from {args.n_envs} envs; {steps} minibatch steps of {args.minibatch} "
        f"frames per iteration; MLP {args.num_cells or [256, 256]}; {args.rounds} round(s) x "
        f"({args.warmup} warm-up + {args.iters} timed) iterations per algorithm\n",
        flush=True,
    )
    samples: dict[str, list[dict]] = {n: [] for n in NAMES}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="benchmarl_magpo_iteration_") as folder:
        for r in range(args.rounds):
            for name in NAMES[r % 2 :] + NAMES[: r % 2]:
                records, _ = time_training(name, args, folder)
                samples[name] += records
                print(f"  round {r + 1}: {name} done ({time.perf_counter() - t_start:.0f} s)", flush=True)
        raw_parts = time_parts(args, folder)

    med = statistics.median
    summary = {n: {t: med(s[t] for s in samples[n]) for t in TIMERS} for n in NAMES}
    parts = {k: paired_stats(v) for k, v in raw_parts.items()}
    estimate = {
        n: parts["collection"][f"{n}_min_s"] + steps * parts["optimizer_step"][f"{n}_min_s"] for n in NAMES
    }
    estimate = {"mappo_s": estimate["mappo"], "magpo_s": estimate["magpo"],
                "ratio": estimate["magpo"] / estimate["mappo"]}
    print("## Training iteration (evaluation off; BenchMARL timers, medians)\n")
    print(train_table(summary))
    print(
        f"\n## Parts, interleaved ({args.step_repeats} minibatch steps, {args.collect_repeats} "
        f"collections of {args.frames} frames per algorithm)\n"
    )
    print(parts_table(parts, estimate))
    ratio = summary["magpo"]["iteration_time"] / summary["mappo"]["iteration_time"]
    print(
        f"\nmagpo / mappo iteration: {ratio:.2f}x (timers), {estimate['ratio']:.2f}x (estimate from "
        f"interleaved minima); target <= {TARGET}x"
    )
    print(f"total wall time {time.perf_counter() - t_start:.0f} s")
    result = {
        "machine": info,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "training": {"median": summary, "samples": samples},
        "parts": {"stats": parts, "samples_s": raw_parts, "iteration_estimate": estimate},
        "ratios": {
            **{t: summary["magpo"][t] / summary["mappo"][t] for t in TIMERS},
            "optimizer_step_min": parts["optimizer_step"]["ratio_of_minima"],
            "collection_min": parts["collection"]["ratio_of_minima"],
            "iteration_estimate": estimate["ratio"],
        },
        "target_magpo_over_mappo": TARGET,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"JSON written to {args.out}")
    return result


if __name__ == "__main__":
    main()
