"""Wall time per training iteration of dg_mappo vs BenchMARL's mappo (target: dg_mappo <= 2x mappo).

What is measured, in one process, on the same VMAS task, batch, actor/critic
MLP and seed:

* ``mappo (shared)``     BenchMARL's default (``share_policy_params=True``,
                         ``share_param_critic=True``, centralised critic);
* ``mappo (per-agent)``  ``share_policy_params=False``,
                         ``share_param_critic=False``: per-agent (stacked)
                         actor and critic, as dg_mappo has;
* ``dg_mappo``           ``DgMappoConfig.get_from_yaml()`` as shipped: its
                         default graph (``topology: auto``: on vmas/navigation
                         a radius graph, radius 1.5 on ``obs[..., 0:2]``,
                         rebuilt every step; ``full`` on other tasks) and
                         ``K`` (1 hop), D-GAT in
                         the actor and critic, consensus loss, per-agent
                         clipping, D-SGD mixing of D-GAT, actor and critic
                         after every step, the
                         collected ``õ`` reused in ``process_batch``;
                         ``--graph radius`` uses a radius graph from the
                         agents' positions (``--radius``, ``obs[..., 0:2]``,
                         rebuilt every step) instead, ``--graph full`` the
                         full graph;
* ``dg_mappo (no fast paths)`` the same, with the speed-ups of the profiling
                         pass of issue 14 switched off
                         (``DgMappo.set_fast_paths(False)``: D-GAT without
                         gradient on its sparse layer instead of the dense
                         form, every agent's gradient rescaled even when no
                         clip applies, and, from the second pass, Adam's
                         per-parameter loop instead of its foreach form and
                         the graph built again in the loss), for the before/after
                         ratio of those passes in one run; left out with ``--no-before``;
* ``dg_mappo (before)``  the first version's defaults, for the before/after
                         ratio in one run: ``K = n_agents`` hops on the same
                         graph, D-GAT-only mixing, and D-GAT recomputed over the whole batch and
                         its next observations in ``process_batch``
                         (``DgMappo.reuse_dgat_outputs = False``); left out
                         with ``--no-before``.

First BenchMARL's own per-iteration timers (``timers/collection_time``,
``timers/training_time``, ``timers/iteration_time``) read from
``experiment.logger.log`` while ``experiment.run()`` trains (evaluation off,
first ``--warmup`` iterations of every experiment dropped, ``--rounds`` rounds
with the algorithm order rotated). Then, because iteration timings drift with
other load on a shared machine, one optimizer iteration (one minibatch of
``--minibatch`` frames: forward, backward, clip, step, and dg_mappo's mixing)
is timed by calling each experiment's ``_optimizer_loop`` (BenchMARL's private
per-minibatch step) ``--step-repeats`` times, interleaved round-robin on the
replay buffer each experiment just filled; reported as the ratio of minima and
the median of per-cycle paired ratios. dg_mappo's step is also split: the
D-GAT forward + backward alone (the group's communication module on the
minibatch, gradient of the sum of its output), which is the part mappo does
not have.

Usage::

    python benchmarks/dg_mappo_iteration.py                  # full (vmas/navigation, 3 agents)
    python benchmarks/dg_mappo_iteration.py --n-agents 6 --radius 0.8
    python benchmarks/dg_mappo_iteration.py --quick          # smoke test, < 60 s

Writes a markdown table to stdout and JSON to ``benchmarks/out/dg_mappo_iteration.json``.
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

import benchmarl_decentral  # noqa: F401  (registers dg_mappo with BenchMARL)
from benchmarl.algorithms import MappoConfig
from benchmarl.environments import VmasTask
from benchmarl.experiment import Experiment, ExperimentConfig
from benchmarl.models import MlpConfig
from benchmarl_decentral.algorithms import DgMappoConfig
from benchmarl_decentral.algorithms.dg_mappo import AUTO_TOPOLOGY, resolve_auto_topology
from _common import experiment_config as timing_config, machine_info  # noqa: E402  (benchmarks/ is the script's folder)

OUT_DIR = Path(__file__).resolve().parent / "out"
TIMERS = ("collection_time", "training_time", "iteration_time")
#: also recorded: CPU seconds of the process per iteration (a starved, loaded machine stretches wall time only)
ALL_TIMES = (*TIMERS, "cpu_iteration_time")
NAMES = ("mappo (shared)", "mappo (per-agent)", "dg_mappo", "dg_mappo (no fast paths)", "dg_mappo (before)")
BASES = NAMES[:2]


# --------------------------------------------------------------------- configs
def experiment_config(args: argparse.Namespace, save_folder: str) -> ExperimentConfig:
    """A fresh ExperimentConfig per experiment (an algorithm may edit the one it gets)."""
    return timing_config(args, save_folder)


def build(name: str, args: argparse.Namespace, save_folder: str) -> Experiment:
    cfg = experiment_config(args, save_folder)
    if name.startswith("dg_mappo"):
        algo = DgMappoConfig.get_from_yaml()
        if args.graph == "radius":
            algo.topology, algo.radius, algo.position_dims = "radius", args.radius, [0, 2]
        elif args.graph == "full":
            algo.topology = "full"
        if name == "dg_mappo (before)":
            algo.num_hops = None  # K = n_agents, the first version's default
            algo.consensus_params = ["dgat"]  # the first version mixed the D-GAT only
        if args.hidden_channels is not None:
            algo.hidden_channels = args.hidden_channels
        cfg.share_policy_params = False  # dg_mappo never shares, whatever this says
    else:
        algo = MappoConfig.get_from_yaml()
        algo.share_param_critic = name == "mappo (shared)"
        cfg.share_policy_params = name == "mappo (shared)"
    model = MlpConfig.get_from_yaml()
    model.num_cells = list(args.num_cells)
    critic = MlpConfig.get_from_yaml()
    critic.num_cells = list(args.num_cells)
    task = VmasTask[args.task.upper()].get_from_yaml()
    task.config["n_agents"] = args.n_agents
    exp = Experiment(
        task=task, algorithm_config=algo, model_config=model, critic_model_config=critic, seed=args.seed, config=cfg
    )
    if name == "dg_mappo (before)":
        exp.algorithm.reuse_dgat_outputs = False
    if name in ("dg_mappo (before)", "dg_mappo (no fast paths)"):
        exp.algorithm.set_fast_paths(False)
    return exp


def graph_name(args: argparse.Namespace) -> str:
    """dg_mappo's graph in words (``topology: auto`` resolved for the task)."""
    if args.graph == "radius":
        return f"radius graph r={args.radius}"
    topology = "full" if args.graph == "full" else DgMappoConfig.get_from_yaml().topology
    if topology == AUTO_TOPOLOGY:
        options, _ = resolve_auto_topology("vmas", args.task.lower())
        detail = f" r={options['radius']}" if options["topology"] == "radius" else ""
        return f"graph auto -> {options['topology']}{detail}"
    return f"graph {topology}"


# ------------------------------------------------------------------- measuring
def time_training(name: str, args: argparse.Namespace, save_folder: str) -> tuple[list[dict], dict, Experiment]:
    """Per-iteration BenchMARL timers (warm-up dropped), dg_mappo's graph metrics, and the experiment."""
    exp = build(name, args, save_folder)
    records: list[dict] = []
    graph: dict = {}
    log = exp.logger.log
    cpu = [time.process_time()]

    def recording_log(values: dict, step: int | None = None):
        if "timers/iteration_time" in values:
            now = time.process_time()  # CPU seconds of this process since the last iteration
            records.append({**{t: float(values[f"timers/{t}"]) for t in TIMERS}, "cpu_iteration_time": now - cpu[0]})
            cpu[0] = now
        graph.update({k.split("/")[-1]: float(v) for k, v in values.items() if k.startswith("dg_mappo/")})
        return log(values, step=step)

    exp.logger.log = recording_log
    with contextlib.redirect_stderr(io.StringIO()):  # tqdm progress bar
        exp.run()
    return records[args.warmup :], graph, exp


def time_optimizer_steps(
    experiments: dict[str, Experiment], repeats: int, warmup: int = 3, clock=time.perf_counter
) -> dict[str, list[float]]:
    """Seconds per ``_optimizer_loop`` (one minibatch, all groups), interleaved round-robin."""
    times: dict[str, list[float]] = {name: [] for name in experiments}
    for r in range(warmup + repeats):
        for name, exp in experiments.items():
            t = clock()
            for group in exp.train_group_map:
                exp._optimizer_loop(group)
            if r >= warmup:
                times[name].append(clock() - t)
    return times


def time_dgat(exp: Experiment, repeats: int, warmup: int = 3) -> list[float]:
    """Seconds of the D-GAT part of one dg_mappo minibatch: forward (graph + K hops) and backward."""
    times = []
    for r in range(warmup + repeats):
        t = time.perf_counter()
        for group in exp.train_group_map:
            batch = exp.replay_buffers[group].sample()
            comm = exp.algorithm.communication[group]
            comm(batch.exclude((group, "dgat_observation"))).get((group, "dgat_observation")).sum().backward()
        if r >= warmup:
            times.append(time.perf_counter() - t)
    for group in exp.train_group_map:
        exp.optimizers[group]["loss_total"].zero_grad()
    return times


# ------------------------------------------------------------------- reporting
def train_table(summary: dict) -> str:
    lines = [
        "| algorithm | collection (s) | training (s) | iteration (s) | iteration, CPU (s) "
        "| dg_mappo/this training | dg_mappo/this iteration | dg_mappo/this iteration, CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    d = summary["dg_mappo"]
    for name, s in summary.items():
        lines.append(
            f"| {name} | {s['collection_time']:.2f} | {s['training_time']:.2f} | {s['iteration_time']:.2f} "
            f"| {s['cpu_iteration_time']:.2f} "
            f"| {d['training_time'] / s['training_time']:.2f}x | {d['iteration_time'] / s['iteration_time']:.2f}x "
            f"| {d['cpu_iteration_time'] / s['cpu_iteration_time']:.2f}x |"
        )
    return "\n".join(lines)


def step_stats(samples: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Per variant: min / median seconds, and dg_mappo/variant as a ratio of minima and as the
    median of per-cycle paired ratios."""
    d = samples["dg_mappo"]
    return {
        name: {
            "min_s": min(v),
            "median_s": statistics.median(v),
            "dg_mappo_over_this_min": min(d) / min(v),
            "dg_mappo_over_this_paired_median": statistics.median(a / b for a, b in zip(d, v)),
        }
        for name, v in samples.items()
    }


def step_table(stats: dict[str, dict[str, float]]) -> str:
    lines = [
        "| algorithm | min ms / minibatch step | median ms | dg_mappo/this (ratio of minima) "
        "| dg_mappo/this (median of paired ratios) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, st in stats.items():
        lines.append(
            f"| {name} | {1e3 * st['min_s']:.1f} | {1e3 * st['median_s']:.1f} "
            f"| {st['dg_mappo_over_this_min']:.2f}x | {st['dg_mappo_over_this_paired_median']:.2f}x |"
        )
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="navigation", help="VMAS task with positions in obs[..., 0:2]")
    p.add_argument("--n-agents", type=int, default=3)
    p.add_argument(
        "--graph", choices=("default", "radius", "full"), default="default",
        help="dg_mappo's graph: the YAML's (default: topology auto), a radius graph from positions, or full",
    )
    p.add_argument("--radius", type=float, default=1.0, help="dg_mappo communication radius (--graph radius)")
    p.add_argument(
        "--no-before", action="store_true", help="leave out the 'dg_mappo (no fast paths)' and '(before)' variants"
    )
    p.add_argument(
        "--no-first-version", action="store_true", help="leave out the 'dg_mappo (before)' variant (first version)"
    )
    p.add_argument(
        "--hidden-channels", type=int, default=None, help="D-GAT attention size d' (default: the YAML's, 128)"
    )
    p.add_argument("--iters", type=int, default=2, help="timed iterations per experiment")
    p.add_argument("--warmup", type=int, default=1, help="untimed first iterations per experiment")
    p.add_argument("--rounds", type=int, default=2, help="experiments per algorithm, order rotated")
    p.add_argument("--frames", type=int, default=6000, help="on_policy_collected_frames_per_batch")
    p.add_argument("--n-envs", type=int, default=60, help="on_policy_n_envs_per_worker")
    p.add_argument("--minibatch", type=int, default=400, help="on_policy_minibatch_size")
    p.add_argument("--minibatch-iters", type=int, default=10, help="PPO epochs (Table 3: 5-10)")
    p.add_argument("--num-cells", type=int, nargs="+", default=[256, 256], help="actor/critic MLP (BenchMARL's default)")
    p.add_argument("--step-repeats", type=int, default=100, help="interleaved minibatch steps per algorithm")
    p.add_argument(
        "--cpu-time", action="store_true",
        help="time the interleaved minibatch steps in CPU seconds (process_time) instead of wall seconds",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads", type=int, default=1, help="torch.set_num_threads (1 by default: stable on a small shared machine)"
    )
    p.add_argument("--out", type=Path, default=OUT_DIR / "dg_mappo_iteration.json")
    p.add_argument("--quick", action="store_true", help="tiny run for tests (< 60 s)")
    args = p.parse_args(argv)
    if args.quick:
        args.iters, args.warmup, args.rounds = 1, 1, 1
        args.frames, args.n_envs, args.minibatch, args.minibatch_iters = 300, 6, 100, 2
        args.num_cells, args.step_repeats = [32, 32], 3
        if args.out == OUT_DIR / "dg_mappo_iteration.json":
            args.out = OUT_DIR / "dg_mappo_iteration_quick.json"
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    info = machine_info()
    print(
        f"# dg_mappo iteration time on vmas/{args.task}, {args.n_agents} agents: torch {info['torch']}, "
        f"torch threads = {info['torch_threads']}, nproc = {info['nproc']}, CPU = {info['cpu']}"
    )
    per_epoch = -(-args.frames // args.minibatch)
    print(
        f"# {args.frames} frames/iter from {args.n_envs} envs; {args.minibatch_iters} x {per_epoch} minibatch steps "
        f"of {args.minibatch} frames per iteration; MLP {args.num_cells}; dg_mappo: "
        f"{graph_name(args)}, "
        f"K={DgMappoConfig.get_from_yaml().num_hops or args.n_agents} hops (before: K={args.n_agents}, D-GAT recomputed "
        f"in process_batch), d'={args.hidden_channels or 'YAML (128)'}; {args.rounds} round(s) x "
        f"({args.warmup} warm-up + {args.iters} timed) iterations\n",
        flush=True,
    )
    names = NAMES[:3] if args.no_before else NAMES[:4] if args.no_first_version else NAMES
    samples: dict[str, list[dict]] = {n: [] for n in names}
    last: dict[str, Experiment] = {}
    graph: dict = {}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="benchmarl_dg_mappo_iteration_") as folder:
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                records, metrics, last[name] = time_training(name, args, folder)
                samples[name] += records
                graph = metrics or graph
                print(f"  round {r + 1}: {name} done ({time.perf_counter() - t_start:.0f} s)", flush=True)
        step_samples = time_optimizer_steps(
            last, args.step_repeats, clock=time.process_time if args.cpu_time else time.perf_counter
        )
        dgat_samples = time_dgat(last["dg_mappo"], args.step_repeats)
        last.clear()

    med = statistics.median
    summary = {n: {t: med(s[t] for s in samples[n]) for t in ALL_TIMES} for n in names}
    stats = step_stats(step_samples)
    dgat_share = min(dgat_samples) / stats["dg_mappo"]["min_s"]
    print("\n## Training iteration (evaluation off; BenchMARL timers, medians)\n")
    print(train_table(summary))
    print(f"\n## One minibatch optimizer step, interleaved ({args.step_repeats} cycles)\n")
    print(step_table(stats))
    print(
        f"\nD-GAT forward + backward alone: {1e3 * min(dgat_samples):.1f} ms (min), "
        f"{100 * dgat_share:.0f}% of dg_mappo's minibatch step"
    )
    if graph:
        print("dg_mappo graph metrics (last iteration): " + ", ".join(f"{k} = {v:.3g}" for k, v in graph.items()))
    result = {
        "machine": info,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "training": {"median": summary, "samples": samples},
        "optimizer_step": {"stats": stats, "samples_s": step_samples},
        "dgat_forward_backward_s": dgat_samples,
        "dgat_share_of_step": dgat_share,
        "graph_metrics": graph,
        "target_dg_mappo_over_mappo": 2.0,
        "ratios": {
            m: {
                **{t: summary["dg_mappo"][t] / summary[m][t] for t in ALL_TIMES},
                "optimizer_step_min": stats[m]["dg_mappo_over_this_min"],
                "optimizer_step_paired_median": stats[m]["dg_mappo_over_this_paired_median"],
            }
            for m in BASES
        },
    }
    if "dg_mappo (no fast paths)" in summary:
        slow = summary["dg_mappo (no fast paths)"]
        result["ratios_no_fast_paths"] = {m: {t: slow[t] / summary[m][t] for t in ALL_TIMES} for m in BASES}
        print(
            "\nfast paths on/off, iteration (wall; CPU): "
            + ", ".join(f"dg_mappo/{m} {result['ratios'][m]['iteration_time']:.2f}x; "
                        f"{result['ratios'][m]['cpu_iteration_time']:.2f}x "
                        f"(no fast paths {result['ratios_no_fast_paths'][m]['iteration_time']:.2f}x; "
                        f"{result['ratios_no_fast_paths'][m]['cpu_iteration_time']:.2f}x)" for m in BASES)
        )
    if "dg_mappo (before)" in summary:
        before = summary["dg_mappo (before)"]
        result["ratios_before"] = {
            m: {t: before[t] / summary[m][t] for t in TIMERS} for m in BASES
        }
        print(
            "\nbefore/after, iteration: "
            + ", ".join(f"dg_mappo/{m} {result['ratios'][m]['iteration_time']:.2f}x "
                        f"(before {result['ratios_before'][m]['iteration_time']:.2f}x)" for m in BASES)
        )
    print(f"\ntotal wall time {time.perf_counter() - t_start:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"JSON written to {args.out}")
    return result


if __name__ == "__main__":
    main()
