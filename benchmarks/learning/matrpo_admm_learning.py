#!/usr/bin/env python
"""MATRPO's exact ADMM step against the default on the results suite's matrpo part: learning (issue 15, item 3).

Every variant runs ``benchmarl run`` with the results suite's settings for the
matrpo part (``benchmarks/suite/run.py``, ``Part.overrides``: ``COMMON`` with the part's
experiment overrides: ``coordsum_private/3x5-12``, 150,000 frames in batches of
1,000 from 10 envs, minibatch 250, an evaluation every 30,000 frames;
``--frames`` shortens it) and the CSV logger. Variants (``--variants``):

* ``table3``: Table III's ADMM (the paper's closed-form true-KL step, beta 1, one
  random link per iteration, 100 iterations, 10 CG iterations), matrpo's default
  until 2026-12-07 (``default`` in the committed tables; ``default_*`` there are
  ``table3_*`` here);
* ``default``: ``algorithm=matrpo`` as shipped (today the ``kl_exact`` variant);
* ``exact``: the exact ADMM step of benchmarks/README.md section 9
  (``admm_metric=gauss_newton``, ``exact_kkt``, beta 10, synchronous, per-link
  stop ``admm_tol=0.05`` with at most 200 iterations, at most 30 CG iterations)
  with the relative CG stop ``cg_rtol=0.3`` (same fixed point, about a third of
  the CPU time of 30 fixed CG iterations);
* ``exact_cg30``: ``exact`` with every primal step's 30 CG iterations (``cg_rtol=0``);
* ``exact_center`` and ``table3_center``: ``exact`` and ``table3`` with the advantages
  centred per agent but not scaled (``advantage_norm=center``), so the unrewarded agents'
  critic noise is not blown up to unit variance (issue 15, items 3-4).

Per run it reports: the team metric (hit rate, ``eval/info/sum_hit_rate``) and
the return (``eval_reward_episode_reward_mean``), both as the mean of the last
``LAST`` evaluations and the last one; per policy update, the largest relative
primal residual over the links after the ADMM
(``matrpo/<group>/primal_residual_rel_max``, :func:`~benchmarl_decentral.objectives.relative_residuals`),
the ADMM iterations used and the CG iterations per agent; and the run's CPU
seconds (``resource.getrusage`` of the child process, user + system) per
policy iteration.

Usage::

    python benchmarks/learning/matrpo_admm_learning.py                       # table3 + exact, seeds 0 1 2
    python benchmarks/learning/matrpo_admm_learning.py --variants exact --seeds 0
    python benchmarks/learning/matrpo_admm_learning.py --summary-only        # the table of the finished runs
    python benchmarks/learning/matrpo_admm_learning.py --summary-only --include-partial  # and unfinished runs' curves
    python benchmarks/learning/matrpo_admm_learning.py --quick               # smoke test

Run folders go under ``--out`` (default ``benchmarks/out/matrpo_admm_learning``,
gitignored); a run whose ``score.json`` exists is skipped. Writes
``<out>/results.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "benchmarks" / "suite"))
from run import PARTS  # noqa: E402  (the results suite's settings)

PART = PARTS["matrpo"]
#: the exact ADMM step of benchmarks/README.md section 9 (conf/algorithm/matrpo.yaml's comment)
EXACT = ["algorithm=matrpo", "algorithm.admm_metric=gauss_newton", "algorithm.exact_kkt=true", "algorithm.beta=10",
         "algorithm.admm_mode=synchronous", "algorithm.admm_tol=0.05", "algorithm.admm_iterations=200",
         "algorithm.cg_iters=30"]
#: Table III's ADMM (the paper's closed-form true-KL step, beta 1, one random link per iteration, 100 iterations):
#: matrpo's default until 2026-12-07 (the committed tables call it ``default``), ``algorithm=matrpo_paper``'s ADMM
TABLE3 = ["algorithm=matrpo", "algorithm.admm_metric=kl", "algorithm.beta=1.0", "algorithm.admm_mode=random",
          "algorithm.admm_tol=0.0", "algorithm.admm_iterations=100"]
VARIANTS = {
    "table3": TABLE3,
    "default": ["algorithm=matrpo"],  # as shipped: the kl_exact variant below
    "exact": [*EXACT, "algorithm.cg_rtol=0.3"],
    "exact_cg30": [*EXACT, "algorithm.cg_rtol=0.0"],
    "exact_center": [*EXACT, "algorithm.cg_rtol=0.3", "algorithm.advantage_norm=center"],
    "table3_center": [*TABLE3, "algorithm.advantage_norm=center"],
    # 3x the per-agent KL bound (delta/N 0.009): does the exact step learn less because, at consensus, the
    # trust region binds on the joint step? (table3_delta3 is the control: a larger step for Table III)
    "exact_delta3": [*EXACT, "algorithm.cg_rtol=0.3", "algorithm.delta=0.009"],
    "table3_delta3": [*TABLE3, "algorithm.delta=0.009"],
    # Table III's ADMM (beta 1, one random link, 100 iterations: not at consensus) with the exact step's metric
    # (1/M sum J^T J, eq. 46) instead of the true-KL Hessian (eq. 47): separates the metric from the consensus
    "gn_inexact": [*TABLE3[:1], "algorithm.admm_metric=gauss_newton", *TABLE3[2:]],
    # the exact step with the paper's metric (admm_metric kl_exact: eq. 42 minimised with the true-KL Hessian,
    # objectives/admm.py): consensus (the per-link stop at 0.05) without the Gauss-Newton metric
    "kl_exact": ["algorithm=matrpo", "algorithm.admm_metric=kl_exact", "algorithm.beta=10",
                 "algorithm.admm_mode=synchronous", "algorithm.admm_tol=0.05", "algorithm.admm_iterations=200"],
    # the same exact step on Table III's ADMM schedule (beta 1, one random link, 100 iterations, no stop): not at
    # consensus (separates the consensus from the step)
    "kl_exact_table3": [*TABLE3[:1], "algorithm.admm_metric=kl_exact", *TABLE3[2:]],
}
#: Evaluations averaged into a run's score (the results suite's final score averages the last 5 of its curve;
#: at 150k frames and one evaluation per 30k there are 6, so the last 3 here).
LAST = 3
HIT = "eval_info_sum_hit_rate.csv"
RETURN = "eval_reward_episode_reward_mean.csv"


def command(variant: str, seed: int, run_dir: Path, args: argparse.Namespace) -> list[str]:
    """``benchmarl run`` of one variant and seed with the suite part's overrides (``Part.overrides``), CSV logger."""
    overrides = PART.overrides(smoke=args.quick)
    keep = [o for o in overrides if not o.startswith(("algorithm=", "seed=", "experiment.max_n_frames=",
                                                       "experiment.evaluation_interval=", "task="))]
    budget = [f"experiment.max_n_frames={args.frames}", f"experiment.evaluation_interval={args.evaluation_interval}"]
    return [
        str(Path(sys.executable).parent / "benchmarl"), "run", *VARIANTS[variant], f"task={args.task}",
        f"seed={seed}", *keep, *budget,
        "experiment.loggers=[csv]", "experiment.create_json=false", "experiment.render=false",
        f"experiment.save_folder={run_dir}", f"hydra.run.dir={run_dir / 'hydra'}",
    ]


def _csv(run_dir: Path, name: str) -> list[tuple[int, float]]:
    paths = list(run_dir.rglob(f"scalars/{name}"))
    if not paths:
        return []
    return [(int(float(step)), float(value)) for step, value in csv.reader(paths[0].open())]


def _mean_last(rows: list[tuple[int, float]]) -> float | None:
    return statistics.fmean(v for _, v in rows[-LAST:]) if rows else None


def score(run_dir: Path, group: str = "agents") -> dict:
    """The run's evaluation curves and its per-update ADMM figures (CSV logger)."""
    hit, ret = _csv(run_dir, HIT), _csv(run_dir, RETURN)
    residual = _csv(run_dir, f"matrpo_{group}_primal_residual_rel_max.csv")
    admm_iters = _csv(run_dir, f"matrpo_{group}_admm_iterations.csv")
    cg = [_csv(run_dir, f"matrpo_{group}_agent_{i}_cg_iterations.csv") for i in range(8)]
    cg = [c for c in cg if c]
    per_agent = {}  # the median over updates of each agent's KL after the update and line-search step fraction
    for name in ("kl", "step_fraction"):
        curves = [_csv(run_dir, f"matrpo_{group}_agent_{i}_{name}.csv") for i in range(8)]
        per_agent[name] = [statistics.median(v for _, v in c) for c in curves if c]
    return {
        "hit_rate": _mean_last(hit), "hit_rate_last": hit[-1][1] if hit else None, "hit_curve": hit,
        "return": _mean_last(ret), "return_last": ret[-1][1] if ret else None, "return_curve": ret,
        "residual_per_update": [v for _, v in residual],
        "admm_iterations_per_update": [v for _, v in admm_iters],
        "cg_iterations_per_update": [statistics.fmean(vs) for vs in zip(*[[v for _, v in c] for c in cg])] if cg else [],
        "kl_median_per_agent": per_agent["kl"], "step_fraction_median_per_agent": per_agent["step_fraction"],
    }


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", default=["table3", "exact"], choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--task", default=PART.task)
    p.add_argument("--frames", type=int, default=PART.frames, help=f"training frames per run (default: the suite part's, {PART.frames})")
    p.add_argument("--evaluation-interval", type=int, default=PART.evaluation_interval)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "matrpo_admm_learning")
    p.add_argument("--timeout", type=int, default=5400, help="seconds per run")
    p.add_argument("--summary-only", action="store_true", help="only summarise the finished runs (run nothing)")
    p.add_argument("--include-partial", action="store_true",
                   help="with --summary-only: also list unfinished runs (from their CSVs so far, marked partial; "
                        "not in the summary rows)")
    p.add_argument("--quick", action="store_true", help="tiny budget, seed 0 (smoke test)")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.frames, args.evaluation_interval = [0], 400, 200
    return args


def _fmt(x, spec=".3f") -> str:
    return "n/a" if x is None else format(x, spec)


def _ms(values: list[float], spec=".3f") -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{format(statistics.fmean(values), spec)} ± {format(sd, spec)}"


def main(argv=None) -> dict:
    args = parse_args(argv)
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    results: dict = {"settings": {k: str(v) for k, v in vars(args).items()}, "runs": {}, "summary": {}}
    for variant in args.variants:
        runs = []
        for seed in args.seeds:
            run_dir = args.out / variant / f"seed{seed}"
            done = run_dir / "score.json"
            if not done.exists() and args.summary_only:
                if args.include_partial and list(run_dir.rglob(f"scalars/{HIT}")):
                    part = score(run_dir)
                    res = part["residual_per_update"]
                    results["runs"][f"{variant}/seed{seed}"] = {**part, "partial": True}
                    print(f"{variant} seed {seed}: PARTIAL, {len(res)} updates, evaluations "
                          + ", ".join(f"iteration {step}: hit {v:.3f}" for step, v in part["hit_curve"])
                          + f"; residual median {_fmt(statistics.median(res) if res else None)}", flush=True)
                continue
            if not done.exists():
                run_dir.mkdir(parents=True, exist_ok=True)
                cmd = command(variant, seed, run_dir, args)
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                t = time.perf_counter()
                proc = subprocess.run(cmd, cwd=run_dir, env=env, capture_output=True, text=True, timeout=args.timeout)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                if proc.returncode != 0:
                    raise SystemExit(f"{variant} seed {seed} failed:\n{' '.join(cmd)}\n{proc.stderr[-3000:]}")
                cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
                iterations = args.frames // 1000 if not args.quick else args.frames // 200
                result = {**score(run_dir), "seconds": time.perf_counter() - t, "cpu_seconds": cpu,
                          "cpu_per_iteration": cpu / max(iterations, 1), "command": cmd}
                done.write_text(json.dumps(result))
            result = json.loads(done.read_text())
            results["runs"][f"{variant}/seed{seed}"] = result
            runs.append(result)
            res = result["residual_per_update"]
            print(f"{variant} seed {seed}: hit rate {_fmt(result['hit_rate'])} (last {_fmt(result['hit_rate_last'])}), "
                  f"return {_fmt(result['return'])}, final residual {_fmt(res[-1] if res else None)}, "
                  f"{result['cpu_per_iteration']:.2f} CPU s / iteration", flush=True)
        if not runs:
            continue
        residuals = [v for r in runs for v in r["residual_per_update"]]
        results["summary"][variant] = {
            "hit_rate": [r["hit_rate"] for r in runs], "return": [r["return"] for r in runs],
            "final_residual": [r["residual_per_update"][-1] if r["residual_per_update"] else None for r in runs],
            "residual_median": statistics.median(residuals) if residuals else None,
            "residual_max": max(residuals) if residuals else None,
            "cpu_per_iteration": [r["cpu_per_iteration"] for r in runs], "n": len(runs),
        }
    print(f"\n{args.task}, {args.frames} frames, seeds {args.seeds}; hit rate and return: mean of the last {LAST} "
          "evaluations; residual: max relative primal residual over the links after each update's ADMM\n")
    print("| variant | seeds | hit rate (mean ± std) | return (mean ± std) | final residual (mean ± std) "
          "| residual, all updates (median / max) | CPU s / iteration |\n|---|---:|---:|---:|---:|---:|---:|")
    for variant, s in results["summary"].items():
        print(f"| {variant} | {s['n']} | {_ms(s['hit_rate'])} | {_ms(s['return'])} | {_ms(s['final_residual'])} "
              f"| {_fmt(s['residual_median'])} / {_fmt(s['residual_max'])} | {_ms(s['cpu_per_iteration'], '.2f')} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
