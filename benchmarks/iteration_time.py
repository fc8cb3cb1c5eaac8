"""Wall time per training iteration of decpg vs BenchMARL's mappo.

What is measured: BenchMARL's own per-iteration timers
(``timers/collection_time``, ``timers/training_time``,
``timers/iteration_time``), read from ``experiment.logger.log`` while
``experiment.run()`` trains, for three algorithms on the same task, batch,
model and seed:

* ``mappo (shared)``     BenchMARL's default: ``share_policy_params=True``,
                         ``share_param_critic=True`` (what a user runs);
* ``mappo (per-agent)``  ``share_policy_params=False``,
                         ``share_param_critic=False``: the same per-agent
                         (stacked) actor and critic sizes as decpg;
* ``decpg``              ``DecpgConfig.get_from_yaml()`` unchanged (SGD, kNN
                         ring k=2, mixing of actor and critic at every step,
                         per-agent gradient clip, consensus metrics).

Training iterations run with evaluation off (``experiment.evaluation=False``,
``loggers=[]``, ``create_json=False``); the first ``--warmup`` iterations of
every experiment are dropped, and experiments are run in ``--rounds`` rounds
with the algorithm order rotated, so that a slow spell of the machine does
not hit one algorithm only. Reported: medians, and decpg / mappo ratios.

Because iteration timings on a shared machine drift with other load, the
same comparison is also made at the granularity of one optimizer iteration
(one minibatch of ``--minibatch`` frames: both PPO losses, forward, backward,
clip and step, plus decpg's mixing and metrics): after training, the
experiments' own ``_optimizer_loop`` (BenchMARL's private per-minibatch step)
is called ``--step-repeats`` times per algorithm, interleaved round-robin on
the replay buffer each experiment just filled; decpg is timed a second time
with its mixing hooks disabled (``ConsensusMixer.enabled = False``), which
gives the share of the real decpg step spent mixing. An iteration performs
``--minibatch-iters x ceil(frames / minibatch)`` such steps (45 x 15 = 675
here), so this is the noise-robust estimate of the training-time ratio. Short
steps on a busy machine are hit by preemption (bimodal times), so the ratios
reported here are the ratio of minima (as ``timeit`` recommends) and the median
of the per-cycle paired ratios, not a ratio of medians.

Separately, the evaluation cost (``experiment.evaluate()``, i.e. BenchMARL's
evaluation loop, which decpg wraps): decpg with its default
``perturbed_evaluation: true`` runs a clean evaluation with the averaged
model plus a perturbed one, against mappo's single evaluation. decpg with
``perturbed_evaluation: false`` is shown too.

Usage::

    python benchmarks/iteration_time.py                       # full (vmas/navigation)
    python benchmarks/iteration_time.py --task balance --iters 2 --rounds 2
    python benchmarks/iteration_time.py --quick               # smoke test, < 60 s

Writes a markdown table to stdout and JSON to ``benchmarks/out/iteration_time.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

import benchmarl_decentral  # noqa: F401  (registers decpg with BenchMARL)
from benchmarl.algorithms import MappoConfig
from benchmarl.environments import VmasTask
from benchmarl.experiment import Experiment, ExperimentConfig
from benchmarl.models import MlpConfig
from benchmarl_decentral.algorithms import DecpgConfig
from _common import experiment_config as timing_config, machine_info  # noqa: E402  (benchmarks/ is the script's folder)

OUT_DIR = Path(__file__).resolve().parent / "out"
TIMERS = ("collection_time", "training_time", "iteration_time")
MAPPO_VARIANTS = ("mappo (shared)", "mappo (per-agent)")




# --------------------------------------------------------------------- configs
def experiment_config(args: argparse.Namespace, save_folder: str, *, evaluation: bool) -> ExperimentConfig:
    """A fresh ExperimentConfig per experiment, evaluating once per iteration when ``evaluation``."""
    return timing_config(
        args, save_folder, evaluation=evaluation,
        evaluation_episodes=args.eval_episodes, evaluation_interval=args.frames,
    )


def algorithm_setup(name: str):
    """(algorithm config, experiment share_policy_params) for a variant name."""
    if name == "mappo (shared)":
        algo = MappoConfig.get_from_yaml()
        algo.share_param_critic = True
        return algo, True
    if name == "mappo (per-agent)":
        algo = MappoConfig.get_from_yaml()
        algo.share_param_critic = False
        return algo, False
    if name.startswith("decpg"):
        algo = DecpgConfig.get_from_yaml()
        if "no perturbed" in name:
            algo.perturbed_evaluation = False
        return algo, False  # decpg keeps per-agent params whatever this says
    raise ValueError(name)


def build(name: str, args: argparse.Namespace, save_folder: str, *, evaluation: bool) -> Experiment:
    algo, share_policy = algorithm_setup(name)
    cfg = experiment_config(args, save_folder, evaluation=evaluation)
    cfg.share_policy_params = share_policy
    model = MlpConfig.get_from_yaml()
    if args.num_cells:
        model.num_cells = list(args.num_cells)
    critic = MlpConfig.get_from_yaml()
    critic.num_cells = list(model.num_cells)
    return Experiment(
        task=VmasTask[args.task.upper()].get_from_yaml(),
        algorithm_config=algo,
        model_config=model,
        critic_model_config=critic,
        seed=args.seed,
        config=cfg,
    )


# ------------------------------------------------------------------- measuring
def time_training(name: str, args: argparse.Namespace, save_folder: str) -> tuple[list[dict], Experiment]:
    """Per-iteration BenchMARL timers of one experiment (warm-up iterations dropped), and the experiment."""
    exp = build(name, args, save_folder, evaluation=False)
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


def set_decpg_mixing(exp: Experiment, enabled: bool) -> None:
    """Switch decpg's consensus mixing hooks on or off (``ConsensusMixer.enabled``)."""
    for mixer in exp.algorithm.callback.mixers.values():
        mixer.enabled = enabled


def time_optimizer_steps(
    variants: dict[str, tuple[Experiment, bool | None]], repeats: int, warmup: int = 3
) -> dict[str, list[float]]:
    """Seconds per ``_optimizer_loop`` (one minibatch, all groups), interleaved round-robin.

    ``variants``: name -> (experiment, decpg mixing on/off, or None for mappo).
    """
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(warmup + repeats):
        for name, (exp, mixing) in variants.items():
            if mixing is not None:
                set_decpg_mixing(exp, mixing)
            t = time.perf_counter()
            for group in exp.train_group_map:
                exp._optimizer_loop(group)
            if r >= warmup:
                times[name].append(time.perf_counter() - t)
    return times


def time_evaluation(names: list[str], args: argparse.Namespace, save_folder: str) -> dict[str, list[float]]:
    """Wall time of ``experiment.evaluate()`` per algorithm, interleaved (first call untimed)."""
    experiments = {name: build(name, args, save_folder, evaluation=True) for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    try:
        for r in range(1 + args.eval_repeats):
            for name, exp in experiments.items():
                t = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()):
                    exp.evaluate()
                if r:
                    times[name].append(time.perf_counter() - t)
    finally:
        for exp in experiments.values():
            exp.close()
    return times


# ------------------------------------------------------------------- reporting
def train_table(summary: dict) -> str:
    lines = [
        "| algorithm | collection (s) | training (s) | iteration (s) "
        "| decpg/this training | decpg/this iteration |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    d = summary["decpg"]
    for name, s in summary.items():
        lines.append(
            f"| {name} | {s['collection_time']:.2f} | {s['training_time']:.2f} | "
            f"{s['iteration_time']:.2f} | {d['training_time'] / s['training_time']:.2f}x "
            f"| {d['iteration_time'] / s['iteration_time']:.2f}x |"
        )
    return "\n".join(lines)


def step_stats(samples: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Per variant: min and median seconds, and decpg/variant as a ratio of minima and
    as the median of the per-cycle ratios (both variants timed in the same cycle)."""
    out = {}
    for name, v in samples.items():
        paired = [d / t for d, t in zip(samples["decpg"], v)]
        out[name] = {
            "min_s": min(v),
            "median_s": statistics.median(v),
            "decpg_over_this_min": min(samples["decpg"]) / min(v),
            "decpg_over_this_paired_median": statistics.median(paired),
        }
    return out


def step_table(stats: dict[str, dict[str, float]]) -> str:
    lines = [
        "| algorithm | min ms / minibatch step | median ms | decpg/this (ratio of minima) "
        "| decpg/this (median of paired ratios) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, st in stats.items():
        lines.append(
            f"| {name} | {1e3 * st['min_s']:.1f} | {1e3 * st['median_s']:.1f} "
            f"| {st['decpg_over_this_min']:.2f}x | {st['decpg_over_this_paired_median']:.2f}x |"
        )
    return "\n".join(lines)


def eval_table(summary: dict) -> str:
    base = summary["mappo (shared)"]
    lines = ["| evaluation run | time (s) | ratio to mappo (shared) |", "|---|---:|---:|"]
    for name, t in summary.items():
        lines.append(f"| {name} | {t:.2f} | {t / base:.2f}x |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="navigation", help="VMAS task name, e.g. navigation, balance")
    p.add_argument("--iters", type=int, default=2, help="timed iterations per experiment")
    p.add_argument("--warmup", type=int, default=1, help="untimed first iterations per experiment")
    p.add_argument("--rounds", type=int, default=2, help="experiments per algorithm, order rotated")
    p.add_argument("--frames", type=int, default=6000, help="on_policy_collected_frames_per_batch")
    p.add_argument("--n-envs", type=int, default=60, help="on_policy_n_envs_per_worker")
    p.add_argument("--minibatch", type=int, default=400, help="on_policy_minibatch_size")
    p.add_argument("--minibatch-iters", type=int, default=45, help="on_policy_n_minibatch_iters (passes over the batch)")
    p.add_argument("--num-cells", type=int, nargs="+", default=None, help="MLP sizes (default: BenchMARL's 256 256)")
    p.add_argument("--step-repeats", type=int, default=100, help="interleaved minibatch steps per algorithm")
    p.add_argument("--eval-episodes", type=int, default=10, help="experiment.evaluation_episodes")
    p.add_argument("--eval-repeats", type=int, default=3, help="timed evaluate() calls per algorithm")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation-cost part")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads", type=int, default=1,
        help="torch.set_num_threads (1 by default: stable on a small shared machine)",
    )
    p.add_argument("--out", type=Path, default=OUT_DIR / "iteration_time.json")
    p.add_argument("--quick", action="store_true", help="tiny run for tests (< 60 s)")
    args = p.parse_args(argv)
    if args.quick:
        args.iters, args.warmup, args.rounds = 1, 1, 1
        args.frames, args.n_envs, args.minibatch, args.minibatch_iters = 300, 6, 100, 2
        args.num_cells = args.num_cells or [32, 32]
        args.eval_episodes, args.eval_repeats, args.step_repeats = 2, 1, 3
        if args.out == OUT_DIR / "iteration_time.json":
            args.out = OUT_DIR / "iteration_time_quick.json"
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    info = machine_info()
    print(
        f"# iteration time on vmas/{args.task}: torch {info['torch']}, torch threads = "
        f"{info['torch_threads']}, nproc = {info['nproc']}, CPU = {info['cpu']}"
    )
    per_epoch = -(-args.frames // args.minibatch)
    print(
        f"# {args.frames} frames/iter from {args.n_envs} envs; {args.minibatch_iters} x {per_epoch} "
        f"= {args.minibatch_iters * per_epoch} minibatch steps of {args.minibatch} frames per iteration; "
        f"MLP {args.num_cells or [256, 256]}; {args.rounds} round(s) x "
        f"({args.warmup} warm-up + {args.iters} timed) iterations per algorithm; medians\n",
        flush=True,
    )
    names = [*MAPPO_VARIANTS, "decpg"]
    samples: dict[str, list[dict]] = {n: [] for n in names}
    eval_samples: dict[str, list[float]] = {}
    last: dict[str, Experiment] = {}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="benchmarl_iteration_time_") as folder:
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                records, last[name] = time_training(name, args, folder)
                samples[name] += records
                print(f"  round {r + 1}: {name} done ({time.perf_counter() - t_start:.0f} s)", flush=True)
        step_samples = time_optimizer_steps(
            {
                "mappo (shared)": (last["mappo (shared)"], None),
                "mappo (per-agent)": (last["mappo (per-agent)"], None),
                "decpg": (last["decpg"], True),
                "decpg, mixing off": (last["decpg"], False),
            },
            args.step_repeats,
        )
        last.clear()
        if not args.no_eval:
            eval_names = ["mappo (shared)", "mappo (per-agent)", "decpg", "decpg (no perturbed eval)"]
            eval_samples = time_evaluation(eval_names, args, folder)

    med = statistics.median
    summary = {n: {t: med(s[t] for s in samples[n]) for t in TIMERS} for n in names}
    step_summary = step_stats(step_samples)
    mixing_share = 1 - 1 / step_summary["decpg, mixing off"]["decpg_over_this_min"]
    print("\n## Training iteration (evaluation off; BenchMARL timers, medians)\n")
    print(train_table(summary))
    print(f"\n## One minibatch optimizer step, interleaved ({args.step_repeats} cycles)\n")
    print(step_table(step_summary))
    print(f"\nmixing share of decpg's minibatch step (1 - min(mixing off) / min(on)): {100 * mixing_share:.1f}%")
    result = {
        "machine": info,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "training": {"median": summary, "samples": samples},
        "optimizer_step": {
            "stats": step_summary,
            "samples_s": step_samples,
            "decpg_mixing_share": mixing_share,
        },
        "target_decpg_over_mappo": 1.2,
        "ratios": {
            m: {
                **{t: summary["decpg"][t] / summary[m][t] for t in TIMERS},
                "optimizer_step_min": step_summary[m]["decpg_over_this_min"],
                "optimizer_step_paired_median": step_summary[m]["decpg_over_this_paired_median"],
            }
            for m in MAPPO_VARIANTS
        },
    }
    if eval_samples:
        eval_summary = {n: med(v) for n, v in eval_samples.items()}
        print(
            f"\n## Evaluation cost (experiment.evaluate(), {args.eval_episodes} episodes; "
            "decpg = averaged-model evaluation + perturbed evaluation)\n"
        )
        print(eval_table(eval_summary))
        result["evaluation"] = {"median": eval_summary, "samples": eval_samples}
    print(f"\ntotal wall time {time.perf_counter() - t_start:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"JSON written to {args.out}")
    return result


if __name__ == "__main__":
    main()
