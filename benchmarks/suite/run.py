"""The results suite: a small, fixed comparison of our algorithms with BenchMARL's mappo and ippo.

One command runs every part (each a ``benchmarl benchmark`` sweep of
algorithms x 1 task x 3 seeds) and then ``benchmarl report`` on each part,
writing ``docs/results/`` (see benchmarks/suite/README.md)::

    python benchmarks/suite/run.py                  # every part, 2 runs at a time (--jobs 2)
    python benchmarks/suite/run.py --part decpg     # one part; the results of the others are kept
    python benchmarks/suite/run.py --list           # the parts, their budgets, and what is missing
    python benchmarks/suite/run.py --smoke          # tiny budgets, written under benchmarks/out/suite-smoke/

Runs go to ``benchmarks/out/suite/<part>/`` (gitignored). Running the command
again resumes: finished runs are skipped (``benchmarl benchmark``'s rule), so
an interrupted suite goes on where it stopped. A part whose algorithm or task
is not registered in this install (or whose environment package is missing)
is skipped with a message naming what is missing.

Every algorithm of a part gets the same experiment config (:data:`COMMON`,
the part's frame budget, its task) and its own YAML defaults, unchanged.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import importlib.util
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[2]
SEEDS = (0, 1, 2)
SMOKE_SEEDS = (0,)

#: Experiment settings shared by every run of every part (BenchMARL's experiment config).
COMMON = [
    "experiment.max_n_iters=null",
    "experiment.on_policy_collected_frames_per_batch=6000",
    "experiment.on_policy_n_envs_per_worker=60",
    "experiment.on_policy_minibatch_size=1000",  # 6 minibatches x 4 epochs = 24 optimizer steps per batch
    "experiment.on_policy_n_minibatch_iters=4",
    "experiment.lr=0.0005",  # MAPPO paper's order; algorithms with their own lr in their YAML keep it
    "experiment.evaluation_episodes=10",
    "experiment.evaluation_deterministic_actions=true",
    "experiment.checkpoint_interval=0",
    "model.num_cells=[64,64]",
    "critic_model.num_cells=[64,64]",
]

#: The same, tiny, for --smoke (one seed; checks that every part runs end to end; numbers are meaningless).
SMOKE = [
    "experiment.max_n_iters=null",
    "experiment.on_policy_collected_frames_per_batch=200",
    "experiment.on_policy_n_envs_per_worker=2",
    "experiment.on_policy_minibatch_size=100",
    "experiment.on_policy_n_minibatch_iters=1",
    "experiment.evaluation_episodes=2",
    "experiment.checkpoint_interval=0",
    "model.num_cells=[16]",
    "critic_model.num_cells=[16]",
]


@dataclass(frozen=True)
class Part:
    """One comparison: algorithms x one task x SEEDS, all with the same budget and experiment config."""

    name: str
    claim: str  # the paper's claim this part looks at
    algorithms: Sequence[str]
    task: str
    task_overrides: Sequence[str]
    frames: int  # training frames per run (a multiple of the batch)
    evaluation_interval: int  # frames between evaluations (a multiple of the batch)
    est_minutes: float  # estimated wall time of the part with --jobs 2 on 2 cores (README)
    requires_modules: Sequence[str] = field(default_factory=tuple)  # Python packages the task needs

    def overrides(self, smoke: bool) -> List[str]:
        if smoke:
            budget = ["experiment.max_n_frames=400", "experiment.evaluation_interval=200"]
            common = SMOKE
        else:
            budget = [f"experiment.max_n_frames={self.frames}",
                      f"experiment.evaluation_interval={self.evaluation_interval}"]
            common = COMMON
        seeds = SMOKE_SEEDS if smoke else SEEDS
        return [f"algorithm={','.join(self.algorithms)}", f"task={self.task}", *self.task_overrides,
                f"seed={','.join(str(s) for s in seeds)}", *common, *budget]


PARTS: Dict[str, Part] = {part.name: part for part in (
    Part("decpg",
         "DecPG (paper 002): decentralized DSGD training matches centralized-critic MAPPO on MPE "
         "simple spread and generalizes better (eval_generalization_gap is logged for decpg)",
         ("decpg", "mappo", "ippo"), "pettingzoo/simple_spread", (),
         frames=36_000, evaluation_interval=12_000, est_minutes=16),
    Part("dg_mappo",
         "DG-MAPPO (paper 000): per-agent D-GAT inference of the global state, fully decentralized, "
         "competitive with MAPPO's centralized critic on cooperative navigation",
         ("dg_mappo", "mappo", "ippo"), "vmas/navigation", ("task.n_agents=4",),
         frames=72_000, evaluation_interval=12_000, est_minutes=13),
    Part("matrpo",
         "MATRPO (paper 001): fully decentralized trust-region learning with private rewards beats "
         "independent learning on navigation where only agent 0 is rewarded",
         ("matrpo", "mappo", "ippo"), "vmas_private/navigation_agent0", ("task.n_agents=4",),
         frames=60_000, evaluation_interval=12_000, est_minutes=10),
    Part("magpo",
         "MAGPO (paper 003): a centralized autoregressive guider lets decentralized learners coordinate "
         "on CoordSum, where independent policies struggle",
         ("magpo", "mappo", "ippo"), "coordsum/3x10-30", (),
         frames=180_000, evaluation_interval=30_000, est_minutes=6),
    Part("magpo_5x20",
         "MAGPO (paper 003, Table 2): ahead of MAPPO on CoordSum 5x20-80 (157.6 vs 142.5 at 20M steps; "
         "here at a few percent of that budget)",
         ("magpo", "mappo", "ippo"), "coordsum/5x20-80", (),
         frames=600_000, evaluation_interval=60_000, est_minutes=16),
    Part("smax",
         "DG-MAPPO (paper 000) on SMAX 3m (JaxMARL's SMAC re-implementation, heuristic enemy): "
         "win rate and return against MAPPO",
         ("dg_mappo", "mappo"), "smax/3m", (),
         frames=60_000, evaluation_interval=12_000, est_minutes=12, requires_modules=("jax", "jaxmarl")),
    Part("smax_2s3z",
         "DG-MAPPO (paper 000) on SMAX 2s3z (2 stalkers + 3 zealots, heterogeneous units, heuristic enemy): "
         "win rate and return against MAPPO",
         ("dg_mappo", "mappo"), "smax/2s3z", (),
         frames=180_000, evaluation_interval=30_000, est_minutes=30, requires_modules=("jax", "jaxmarl")),
)}


# ------------------------------------------------------------------ checks
def missing(part: Part) -> List[str]:
    """What this install lacks to run ``part`` (empty when it can run)."""
    import benchmarl_decentral  # noqa: F401  (registers our algorithms and tasks)
    from benchmarl.algorithms import algorithm_config_registry
    from benchmarl.environments import task_config_registry

    lacks = [f"algorithm '{a}' is not registered" for a in part.algorithms if a not in algorithm_config_registry]
    if part.task not in task_config_registry:
        lacks.append(f"task '{part.task}' is not registered")
    lacks += [f"Python package '{m}' is not installed" for m in part.requires_modules
              if importlib.util.find_spec(m) is None]
    return lacks


# ------------------------------------------------------------------ machine
def machine() -> Dict[str, str]:
    info = {"cpu": platform.processor() or platform.machine(), "cores": str(os.cpu_count())}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory"] = f"{int(line.split()[1]) / 2**20:.0f} GiB"
                break
    except OSError:
        pass
    try:
        import torch

        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU only)"
    except Exception:  # noqa: BLE001 - a header field, never a reason to fail
        info["gpu"] = "unknown"
    info["os"] = platform.platform()
    return info


def load_average() -> Optional[str]:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return None


# ------------------------------------------------------------------ running
def benchmark_command(part: Part, out: Path, jobs: int, smoke: bool) -> List[str]:
    launcher = ["--launcher", "joblib", "--jobs", str(jobs)] if jobs > 1 else []
    return ["benchmarl", "benchmark", *part.overrides(smoke), *launcher, "--out", str(out)]


def run_part(part: Part, out: Path, jobs: int, smoke: bool, threads: int) -> dict:
    command = benchmark_command(part, out, jobs, smoke)
    exe = Path(sys.executable).parent / "benchmarl"
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, str(threads))
    print(f"\n=== part {part.name}: {shlex.join(command)}", flush=True)
    tic = time.perf_counter()
    result = subprocess.run([str(exe), *command[1:]], cwd=REPO, env=env)
    minutes = (time.perf_counter() - tic) / 60
    print(f"=== part {part.name}: exit status {result.returncode} after {minutes:.1f} min", flush=True)
    return {"command": shlex.join(command), "returncode": result.returncode, "minutes": round(minutes, 1),
            "threads": env["OMP_NUM_THREADS"]}


def report_part(part: Part, out: Path, docs: Path, reps: int) -> Optional[str]:
    """``benchmarl report`` on one part's runs; returns the error, or None when it worked."""
    from benchmarl_decentral import cli

    code = cli.main(["report", str(out), "--out", str(docs / part.name), "--reps", str(reps)])
    return None if code == 0 else f"benchmarl report {out} exited with status {code} (message above)"


def run_stats(out: Path) -> dict:
    """Per-run wall times and states from the status files of a part's sweep folder."""
    import yaml

    states: Dict[str, int] = {}
    seconds: Dict[str, List[float]] = {}
    for status_file in sorted(out.rglob("status.yaml")):
        status = yaml.safe_load(status_file.read_text()) or {}
        states[status.get("state", "?")] = states.get(status.get("state", "?"), 0) + 1
        if status.get("state") == "finished" and status.get("seconds") is not None:
            seconds.setdefault(status.get("algorithm", "?"), []).append(float(status["seconds"]))
    return {"states": states, "seconds": seconds}


def _read_csv(path: Path) -> List[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _fmt(value: Optional[str], digits: int = 2) -> str:
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return "n/a"


# ------------------------------------------------------------------ index
def write_index(docs: Path, out_root: Path, argv: Sequence[str], runs: Dict[str, dict],
                skipped: Dict[str, List[str]], report_errors: Dict[str, str], smoke: bool, jobs: int,
                started: str) -> Path:
    """docs/results/report.md: how the results were made, and one section per part."""
    from benchmarl_decentral.benchmark import versions

    import yaml

    info = machine()
    lines = ["# Results suite: our algorithms vs BenchMARL's mappo and ippo", ""]
    if smoke:
        lines += ["**SMOKE RUN: tiny budgets, the numbers mean nothing.**", ""]
    lines += [
        "Made by `benchmarks/suite/run.py` (see benchmarks/suite/README.md); regenerate with the command below.",
        "",
        f"- Command: `python benchmarks/suite/{Path(__file__).name} {shlex.join(argv)}`".rstrip() + f" (started {started})",
        f"- Versions: {', '.join(f'{k} {v}' for k, v in versions().items())}",
        f"- Machine: {info.get('cpu')}, {info.get('cores')} cores, {info.get('memory', '?')} RAM, "
        f"GPU: {info.get('gpu')}; {info.get('os')}",
        f"- Load average when the report was written (1, 5, 15 min): {load_average() or 'n/a'}"
        " (the machine may be shared: read wall times with that in mind)",
        f"- Runs at a time: {jobs}; seeds {', '.join(map(str, SMOKE_SEEDS if smoke else SEEDS))}; every algorithm "
        "of a part has the same experiment config and budget, and its own YAML defaults:",
        "",
        "```",
        *(SMOKE if smoke else COMMON),
        "```",
        "",
        "Result tables use BenchMARL's algorithm names (class names lowercased: `dgmappo` is `dg_mappo`).",
        "",
        "| part | task | algorithms | frames per run | evaluation every | status | wall time (last invocation) |",
        "|---|---|---|---:|---:|---|---|",
    ]
    for part in PARTS.values():
        part_out = out_root / part.name
        if part.name in skipped:
            status = "skipped: " + "; ".join(skipped[part.name])
        elif part.name in report_errors:
            status = f"no report: {report_errors[part.name]}"
        elif (docs / part.name / "report.md").is_file():
            stats = run_stats(part_out)
            status = f"[report]({part.name}/report.md); runs: " + ", ".join(
                f"{n} {s}" for s, n in sorted(stats["states"].items()))
        else:
            status = "not run yet"
        wall = f"{runs[part.name]['minutes']} min" if part.name in runs else ""
        frames = "400 (smoke)" if smoke else f"{part.frames:,}"
        interval = "200 (smoke)" if smoke else f"{part.evaluation_interval:,}"
        lines.append(f"| {part.name} | `{part.task}` {' '.join(part.task_overrides)} | {', '.join(part.algorithms)} "
                     f"| {frames} | {interval} | {status} | {wall} |")

    for part in PARTS.values():
        part_docs = docs / part.name
        if not (part_docs / "report.md").is_file():
            continue
        lines += ["", f"## {part.name}: {part.task}", "", f"Claim looked at: {part.claim}.", ""]
        plan_file = out_root / part.name / "benchmark.yaml"
        if plan_file.is_file():
            plan = yaml.safe_load(plan_file.read_text()) or {}
            lines.append(f"Sweep: `{plan.get('command', '')}` (last invocation {plan.get('started', '?')}).")
            lines.append("")
        rows = _read_csv(part_docs / "task_scores.csv")
        if rows:
            lines += ["| algorithm | seeds | frames | final return mean ± std | 95% CI | normalised |",
                      "|---|---:|---:|---:|---|---:|"]
            for row in sorted(rows, key=lambda r: -float(r.get("mean") or "-inf")):
                ci = (f"[{_fmt(row.get('ci_low'))}, {_fmt(row.get('ci_high'))}]"
                      if row.get("ci_low") else "n/a")
                lines.append(f"| {row.get('algorithm')} | {row.get('n_seeds')} | {row.get('frames')} | "
                             f"{_fmt(row.get('mean'))} ± {_fmt(row.get('std'))} | {ci} | "
                             f"{_fmt(row.get('normalised_mean'))} |")
            lines.append("")
        win = [r for r in _read_csv(part_docs / "decentralised_metrics.csv")
               if r.get("metric") in ("eval_info_win_rate", "collection_info_win_rate")]
        if win:
            lines.append("Win rate at the last logged iteration (mean ± std over seeds): " + "; ".join(
                f"{r['algorithm']} {'evaluation' if r['metric'].startswith('eval') else 'collection'} "
                f"{_fmt(r.get('mean'))} ± {_fmt(r.get('std'))}"
                for r in sorted(win, key=lambda r: (r["metric"] != "eval_info_win_rate", r["algorithm"]))) + ".")
            lines.append("")
        stats = run_stats(out_root / part.name)
        if stats["seconds"]:
            lines.append("Wall time per run (min, mean over seeds): " + ", ".join(
                f"{alg} {sum(v) / len(v) / 60:.1f}" for alg, v in sorted(stats["seconds"].items())) + ".")
            lines.append("")
        pairs = [r for r in _read_csv(part_docs / "probability_of_improvement.csv") if r.get("x") and r.get("y")]
        # each pair once, oriented so that P >= 0.5 (as report.md does)
        pairs = [r for r in pairs if float(r["probability"]) > 0.5
                 or (float(r["probability"]) == 0.5 and r["x"] < r["y"])]
        if pairs:
            lines.append("Probability of improvement (95% CI): " + "; ".join(
                f"P({r['x']} > {r['y']}) = {_fmt(r.get('probability'))}"
                + (f" [{_fmt(r.get('ci_low'))}, {_fmt(r.get('ci_high'))}]" if r.get("ci_low") else "")
                for r in sorted(pairs, key=lambda r: -float(r["probability"]))) + ".")
            lines.append("")
        curves = sorted(part_docs.glob("curves_*.png"))
        for curve in curves:
            lines.append(f"![{part.name} curves]({part.name}/{curve.name})")
        lines += ["", f"Full report: [{part.name}/report.md]({part.name}/report.md)."]
    path = docs / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------ main
def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", nargs="+", choices=list(PARTS), help="parts to run (default: all)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (joblib launcher when > 1)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per run (default: cores // jobs; OMP_NUM_THREADS wins when set)")
    parser.add_argument("--out", type=Path, default=None,
                        help="sweep folders (default: benchmarks/out/suite, or benchmarks/out/suite-smoke)")
    parser.add_argument("--docs", type=Path, default=None,
                        help="report folder (default: docs/results, or <out>/docs with --smoke)")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap replications of the reports")
    parser.add_argument("--smoke", action="store_true", help="tiny budgets: check that the parts run, not results")
    parser.add_argument("--list", action="store_true", help="print the parts and what each needs, then exit")
    parser.add_argument("--report-only", action="store_true", help="only (re)write the reports from existing runs")
    options = parser.parse_args(argv)
    if options.jobs < 1:
        parser.error("--jobs must be at least 1")
    out_root = (options.out or REPO / "benchmarks" / "out" / ("suite-smoke" if options.smoke else "suite")).resolve()
    docs = (options.docs or (out_root / "docs" if options.smoke else REPO / "docs" / "results")).resolve()
    threads = options.threads or max(1, (os.cpu_count() or 1) // options.jobs)
    selected = [PARTS[name] for name in (options.part or PARTS)]

    skipped: Dict[str, List[str]] = {}
    for part in PARTS.values():
        lacks = missing(part)
        if lacks:
            skipped[part.name] = lacks
    if options.list:
        for part in PARTS.values():
            state = "SKIPPED: " + "; ".join(skipped[part.name]) if part.name in skipped else "ready"
            print(f"{part.name:10s} {part.task} x {', '.join(part.algorithms)} x seeds {SEEDS}: "
                  f"{part.frames:,} frames/run, ~{part.est_minutes:g} min with --jobs 2  [{state}]")
        print(f"estimated total (ready parts): ~{sum(p.est_minutes for p in PARTS.values() if p.name not in skipped):g} min")
        return 0

    started = datetime.datetime.now().isoformat(timespec="seconds")
    runs: Dict[str, dict] = {}
    failures = 0
    if not options.report_only:
        for part in selected:
            if part.name in skipped:
                print(f"=== part {part.name}: skipped: {'; '.join(skipped[part.name])}", flush=True)
                continue
            runs[part.name] = run_part(part, out_root / part.name, options.jobs, options.smoke, threads)
            failures += runs[part.name]["returncode"] != 0

    docs.mkdir(parents=True, exist_ok=True)
    report_errors: Dict[str, str] = {}
    for part in PARTS.values():  # every part with results, so parts run at different times are merged
        part_out = out_root / part.name
        if part.name in skipped or not part_out.is_dir():
            continue
        error = report_part(part, part_out, docs, options.reps)
        if error:
            report_errors[part.name] = error
    index = write_index(docs, out_root, argv, runs, skipped, report_errors, options.smoke,
                        options.jobs, started)
    print(f"\nwritten: {index}")
    for name, lacks in skipped.items():
        if name in {p.name for p in selected}:
            print(f"skipped part {name}: {'; '.join(lacks)}")
    return 1 if failures or report_errors else 0


if __name__ == "__main__":
    sys.exit(main())
