#!/usr/bin/env python
"""Seeded sweep of DG-MAPPO settings (issue 14) on the results suite's dg_mappo part.

Every variant runs ``benchmarl run`` with the results suite's experiment
overrides (``benchmarks/suite/run.py``: :data:`COMMON`, the dg_mappo part's
task, agents, frames and evaluation interval; ``--frames`` shortens it) and
the CSV logger; the score of a run is the mean of its last 5 evaluation
returns (``eval_reward_episode_reward_mean``, 10 episodes each), reported as
mean ± std over seeds, with the last evaluation alone next to it. Variants (``--variants``, any subset, in this order by default):

* ``first``: the first version's defaults (full graph, K = n hops, D-GAT-only mixing;
  the current code otherwise: ``õ`` reuse, common start of mixed networks);
* ``default``: ``algorithm=dg_mappo`` as shipped (K = 1, all three networks mixed after every step);
* ``dgat_only``: the default with D-GAT-only mixing (the paper's text, K = 1);
* ``mix_all``: ``consensus_params=[dgat,actor,critic]`` after every step (the default since issue 14);
* ``mix_all_update3``: the public code's schedule, all three networks mixed 3 times per update;
* ``mix_all_clip02``: ``mix_all`` with PPO clip 0.2 (MAPPO's);
* ``clip02``: the default with PPO clip 0.2;
* ``full_graph``: the default on the full graph (the default before ``topology: auto``);
* ``zero_messages``: the default with the D-GAT messages zeroed (``dgat_messages: zero``), the ablation;
* ``no_consensus_loss``: the default without eq. 11's consensus loss (``alpha_consensus: 0``), messages on;
* ``value_linear``: the default with GATv2's value transform (``value: linear``), so messages are learned
  projections of the neighbours' observations instead of the raw observations;
* ``mappo_ppo``: the default with BenchMARL mappo's PPO settings (clip 0.2, entropy 0, l2 value loss,
  gradient clip 5), D-GAT, per-agent critics and consensus unchanged;
* ``mappo_ppo_vn``: ``mappo_ppo`` with ``value_norm: true``;
* ``paper``: ``algorithm=dg_mappo_paper``;
* ``mappo``, ``ippo``: BenchMARL's, same overrides.

Usage::

    python benchmarks/learning/dg_mappo_sweep.py                                  # all variants, seeds 0 1 2, suite budget
    python benchmarks/learning/dg_mappo_sweep.py --variants first mix_all --seeds 0 --frames 24000
    python benchmarks/learning/dg_mappo_sweep.py --summary-only                   # the table of the finished runs
    python benchmarks/learning/dg_mappo_sweep.py --quick                          # smoke test

Run folders go under ``--out`` (default ``benchmarks/out/dg_mappo_sweep``,
gitignored); a run whose ``score.json`` exists is skipped. Writes
``<out>/results.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "benchmarks" / "suite"))
from run import COMMON, PARTS, SMOKE  # noqa: E402  (the results suite's settings)

PART = PARTS["dg_mappo"]
#: BenchMARL mappo's PPO settings (mappo.yaml + base_experiment.yaml's clip_grad_val) on dg_mappo's keys.
MAPPO_PPO = ["algorithm.clip_epsilon=0.2", "algorithm.entropy_coef=0.0", "algorithm.loss_critic_type=l2",
             "algorithm.max_grad_norm=5.0"]
#: dg_mappo's defaults before runs I (clip 0.05 and lr 5e-4, Tables 2-3; no output gain): runs A-H ran on them, so every
#: variant of those runs pins them and reproduces its rows with today's code.
PREVIOUS = ["algorithm.clip_epsilon=0.05", "algorithm.lr=0.0005", "algorithm.actor_output_gain=null"]
#: the default of runs I (clip 0.2, lr 1e-3, no output gain): runs J change one setting of it
RUNS_I = ["algorithm=dg_mappo", "algorithm.actor_output_gain=null"]


def _previous(*settings: str) -> list[str]:
    """``algorithm=dg_mappo`` on the previous defaults, ``settings`` in place of theirs (same key)."""
    keys = {o.split("=", 1)[0] for o in settings}
    return ["algorithm=dg_mappo", *(o for o in PREVIOUS if o.split("=", 1)[0] not in keys), *settings]


VARIANTS = {
    "default": ["algorithm=dg_mappo"],  # today's default (clip 0.2, lr 1e-3: runs I; output gain auto: runs J)
    "previous_default": _previous(),  # the "default" rows of runs A-H
    "first": _previous("algorithm.num_hops=null", "algorithm.consensus_params=[dgat]"),
    "dgat_only": _previous("algorithm.consensus_params=[dgat]"),
    "mix_all": _previous("algorithm.consensus_params=[dgat,actor,critic]"),
    "mix_all_update3": _previous("algorithm.consensus_params=[dgat,actor,critic]", "algorithm.mix_every=update",
                                 "algorithm.mixes_per_update=3"),
    "mix_all_clip02": _previous("algorithm.consensus_params=[dgat,actor,critic]", "algorithm.clip_epsilon=0.2"),
    "clip02": _previous("algorithm.clip_epsilon=0.2"),
    "clip02_lr1e3": _previous("algorithm.clip_epsilon=0.2", "algorithm.lr=0.001"),  # = runs I's default
    "clip02_lmbda09": _previous("algorithm.clip_epsilon=0.2", "algorithm.lmbda=0.9"),
    "clip02_no_adv_norm": _previous("algorithm.clip_epsilon=0.2", "algorithm.normalize_advantage=false"),
    "full_graph": _previous("algorithm.topology=full"),
    "zero_messages": _previous("algorithm.dgat_messages=zero"),
    "default_zero_messages": ["algorithm=dg_mappo", "algorithm.dgat_messages=zero"],  # the suite's ablation
    "no_consensus_loss": _previous("algorithm.alpha_consensus=0"),
    "value_linear": _previous("algorithm.value=linear"),
    "mappo_ppo": _previous(*MAPPO_PPO),
    "mappo_ppo_vn": _previous(*MAPPO_PPO, "algorithm.value_norm=true"),
    "mappo_all": _previous(*MAPPO_PPO, "algorithm.lmbda=0.9", "algorithm.normalize_advantage=false"),
    "paper": ["algorithm=dg_mappo_paper"],
    "mappo": ["algorithm=mappo"],
    "ippo": ["algorithm=ippo"],
    "mappo_lr1e3": ["algorithm=mappo", "experiment.lr=0.001"],
    "ippo_lr1e3": ["algorithm=ippo", "experiment.lr=0.001"],
    # runs J: on runs I's default (clip 0.2, lr 1e-3, no output gain), one setting changed each
    "lr2e3": [*RUNS_I, "algorithm.lr=0.002"],
    "value_norm": [*RUNS_I, "algorithm.value_norm=true"],
    "hops2": [*RUNS_I, "algorithm.num_hops=2"],
    "entropy0": [*RUNS_I, "algorithm.entropy_coef=0.0"],
    "output_gain": ["algorithm=dg_mappo", "algorithm.actor_output_gain=0.01"],  # = today's default on an mlp
    "alpha5": [*RUNS_I, "algorithm.alpha_consensus=5.0"],
    # smax/2s3z (runs K): which of runs I-J's changes costs dg_mappo there
    "lr5e4": ["algorithm=dg_mappo", "algorithm.lr=0.0005"],
    "clip005": ["algorithm=dg_mappo", "algorithm.clip_epsilon=0.05"],
}
METRIC = "eval_reward_episode_reward_mean.csv"


def command(variant: str, seed: int, run_dir: Path, args: argparse.Namespace) -> list[str]:
    budget = [f"experiment.max_n_frames={args.frames}", f"experiment.evaluation_interval={args.evaluation_interval}"]
    keys = {o.split("=", 1)[0] for o in VARIANTS[variant]}  # a variant's experiment.* key replaces COMMON's
    common = [o for o in (SMOKE if args.quick else COMMON) if o.split("=", 1)[0] not in keys]
    return [
        str(Path(sys.executable).parent / "benchmarl"), "run", *VARIANTS[variant], f"task={args.task}",
        *args.task_overrides, f"seed={seed}", *common, *budget,
        "experiment.loggers=[csv]", "experiment.create_json=false", "experiment.render=false",
        f"experiment.save_folder={run_dir}", f"hydra.run.dir={run_dir / 'hydra'}",
    ]


#: Evaluations averaged into a run's score: 5 x 10 episodes, the results suite's final score (`benchmarl report`).
LAST = 5


def score(run_dir: Path) -> dict:
    """Mean of the last LAST evaluation returns, and the whole evaluation curve."""
    path = next(run_dir.rglob(f"scalars/{METRIC}"))
    rows = [(int(float(step)), float(value)) for step, value in csv.reader(path.open())]
    last = [v for _, v in rows[-LAST:]]
    return {"final": statistics.fmean(last), "curve": rows}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--task", default=PART.task, help=f"BenchMARL task (default: the suite part's, {PART.task})")
    p.add_argument("--task-overrides", nargs="*", default=None,
                   help=f"task.* overrides (default: the suite part's, {' '.join(PART.task_overrides)}, "
                        "when --task is the part's task; none otherwise)")
    p.add_argument("--frames", type=int, default=PART.frames, help=f"training frames per run (default: the suite part's, {PART.frames})")
    p.add_argument("--evaluation-interval", type=int, default=PART.evaluation_interval)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "dg_mappo_sweep")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per run")
    p.add_argument("--summary-only", action="store_true", help="only summarise the finished runs (run nothing)")
    p.add_argument("--quick", action="store_true", help="tiny budget, seed 0, two variants (smoke test)")
    args = p.parse_args(argv)
    if args.task_overrides is None:
        args.task_overrides = list(PART.task_overrides) if args.task == PART.task else []
    if args.quick:
        args.seeds, args.frames, args.evaluation_interval = [0], 400, 200
        args.variants = [v for v in args.variants if v in ("default", "mix_all")] or ["default"]
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    results: dict = {"settings": {k: str(v) for k, v in vars(args).items()}, "runs": {}, "summary": {}}
    for variant in args.variants:
        finals, lasts = [], []
        for seed in args.seeds:
            run_dir = args.out / variant / f"seed{seed}"
            done = run_dir / "score.json"
            if not done.exists() and args.summary_only:
                continue
            if not done.exists():
                run_dir.mkdir(parents=True, exist_ok=True)
                cmd = command(variant, seed, run_dir, args)
                t = time.perf_counter()
                proc = subprocess.run(cmd, cwd=run_dir, env=env, capture_output=True, text=True, timeout=args.timeout)
                if proc.returncode != 0:
                    raise SystemExit(f"{variant} seed {seed} failed:\n{' '.join(cmd)}\n{proc.stderr[-3000:]}")
                result = {**score(run_dir), "seconds": time.perf_counter() - t, "command": cmd}
                done.write_text(json.dumps(result))
            result = json.loads(done.read_text())
            results["runs"][f"{variant}/seed{seed}"] = result
            finals.append(result["final"])
            lasts.append(result["curve"][-1][1])
            print(f"{variant} seed {seed}: final {result['final']:.3f}, last evaluation {lasts[-1]:.3f} "
                  f"({result['seconds']:.0f} s)", flush=True)
        if not finals:
            continue
        results["summary"][variant] = {
            "mean": statistics.fmean(finals), "std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
            "last_mean": statistics.fmean(lasts), "last_std": statistics.stdev(lasts) if len(lasts) > 1 else 0.0,
            "n": len(finals),
        }
    print(f"\n{args.task} ({' '.join(args.task_overrides)}), {args.frames} frames, seeds {args.seeds}; "
          f"final = mean of the last {LAST} evaluation returns\n")
    print(f"| variant | final return, last {LAST} evaluations (mean ± std) | last evaluation (mean ± std) | seeds |\n"
          "|---|---:|---:|---:|")
    for variant, s in results["summary"].items():
        print(f"| {variant} | {s['mean']:.3f} ± {s['std']:.3f} | {s['last_mean']:.3f} ± {s['last_std']:.3f} | {s['n']} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
