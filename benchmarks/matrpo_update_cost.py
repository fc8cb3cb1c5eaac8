"""Cost of one MATRPO policy update vs one BenchMARL mappo training phase on the same batch.

What is measured, on VMAS navigation (discrete actions) with ``n`` agents, one
collected batch of ``--frames`` frames, networks 2 x 128 SELU for both
algorithms (MATRPO's default, sec. VI of paper 001_8ff130c17487d6e3.txt):

* ``matrpo update``: :meth:`Matrpo.policy_update` on that batch, i.e. the
  linearisation at ``theta_old`` (output-space KL Hessians, cached forwards
  per link), ``K`` ADMM iterations (default asynchronous: one random link per
  iteration, eq. 22: CG with Fisher-vector products, ``J x``, ``J^T u``,
  z / y updates) and the per-agent KL line search. Advantages are computed
  before the clock starts; the policy parameters are restored before every
  repeat, so every repeat solves the same problem.
* ``mappo phase``: what BenchMARL's ``timers/training_time`` covers for one
  group: ``Mappo.process_batch`` (GAE), the replay-buffer fill and
  ``on_policy_n_minibatch_iters x ceil(frames / minibatch)`` optimizer steps
  (BenchMARL defaults 45 x 15 = 675 for 6000 frames, both PPO losses,
  backward, clip, Adam), with BenchMARL's default mappo (shared actor and
  critic) on the *same* batch (its ``log_prob`` recomputed with mappo's policy).
* ``matrpo phase`` (for reference): MATRPO's whole training phase on the batch:
  ``process_batch`` (GAE + the update) plus the same minibatch loop for its
  per-agent critics (its only optimizer).

Measurements alternate between the algorithms in ``--rounds`` rounds; the
minimum over rounds is reported (``timeit``'s advice on a shared machine),
and ratios are ratios of minima. ``K`` is varied at the smallest ``n``; ``n``
at ``--k-for-n``; one row with ``fisher_subsample=1`` (Fisher-vector products
on every sample instead of every 5th) shows what the exact eq. (14) costs.

Usage::

    python benchmarks/matrpo_update_cost.py            # n = 3 6 12, K = 25 50 100 200, 6000 frames
    python benchmarks/matrpo_update_cost.py --quick    # smoke test, < 60 s

Prints a markdown table; writes JSON to ``benchmarks/out/matrpo_update_cost[_quick].json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
import warnings

import torch

import benchmarl_decentral  # noqa: F401  (registers matrpo with BenchMARL)
from benchmarl.algorithms import MappoConfig
from benchmarl.environments import VmasTask
from benchmarl.experiment import Experiment, ExperimentConfig
from benchmarl.models import MlpConfig
from benchmarl_decentral.algorithms import TABLE_III_ADMM, MatrpoConfig
from _common import experiment_config as timing_config, machine_info, publish  # noqa: E402  (benchmarks/ is the script's folder)

GROUP = "agents"


def experiment_config(args, save_folder: str) -> ExperimentConfig:
    """One iteration's config: the benchmark collects and times the update phases itself."""
    return timing_config(args, save_folder, max_n_iters=1, prefer_continuous_actions=False)


def build(algorithm: str, n: int, args, save_folder: str, **algo_changes) -> Experiment:
    algo = MatrpoConfig.get_from_yaml() if algorithm == "matrpo" else MappoConfig.get_from_yaml()
    if algorithm == "matrpo":  # Table III's ADMM, the committed figures' (matrpo's default until 2026-12-07)
        algo_changes = {**TABLE_III_ADMM, "admm_mode": args.admm_mode, **algo_changes}
    for key, value in algo_changes.items():
        setattr(algo, key, value)
    model = MlpConfig(num_cells=[128, 128], layer_class=torch.nn.Linear, activation_class=torch.nn.SELU)
    task = VmasTask.NAVIGATION.get_from_yaml()
    task.config["n_agents"] = n
    return Experiment(task=task, algorithm_config=algo, model_config=model, critic_model_config=model,
                      seed=args.seed, config=experiment_config(args, save_folder))


def collect(exp: Experiment):
    with contextlib.redirect_stderr(io.StringIO()):
        batch = next(iter(exp.collector)).detach()
    return batch.exclude(*exp._get_excluded_keys(GROUP))


def mappo_batch(mexp: Experiment, batch):
    """The batch as mappo's loss needs it: log-probabilities of the taken actions under mappo's policy."""
    td = batch.exclude((GROUP, "matrpo_joint"), (GROUP, "logits"), (GROUP, "log_prob")).clone()
    with torch.no_grad():
        dist = mexp.group_policies[GROUP].get_dist(td.clone())
        td.set((GROUP, "log_prob"), dist.log_prob(td.get((GROUP, "action"))))
    return td


def training_phase(exp: Experiment, batch) -> float:
    """Seconds of BenchMARL's training phase for one group on ``batch`` (see ``Experiment._collection_loop``)."""
    t = time.perf_counter()
    group_batch = exp.algorithm.process_batch(GROUP, batch.clone())
    group_batch = group_batch.reshape(-1)
    buffer = exp.replay_buffers[GROUP]
    buffer.empty()
    buffer.extend(group_batch.to(buffer.storage.device))
    steps = -(-exp.config.train_batch_size(True) // exp.config.train_minibatch_size(True))
    for _ in range(exp.config.n_optimizer_steps(True)):
        for _ in range(steps):
            exp._optimizer_loop(GROUP)
    return time.perf_counter() - t


def matrpo_update(exp: Experiment, batch, admm_iterations: int, fisher_subsample: int) -> tuple[float, dict]:
    alg = exp.algorithm
    alg.admm_iterations = admm_iterations
    alg.fisher_subsample = fisher_subsample
    saved = {k: v.detach().clone() for k, v in alg.policy_parameters(GROUP).items()}
    prepared = alg.compute_advantages(GROUP, alg._complete_group_keys(GROUP, batch.clone()))
    t = time.perf_counter()
    stats = alg.policy_update(GROUP, prepared)
    seconds = time.perf_counter() - t
    with torch.no_grad():
        for k, v in alg.policy_parameters(GROUP).items():
            v.copy_(saved[k])
    return seconds, {"kl_max": float(stats.kl.max()), "primal_residual": float(stats.primal_residual.mean())}


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    cases = [(args.agents[0], k, 5) for k in args.admm_iterations]
    cases += [(n, args.k_for_n, 5) for n in args.agents[1:]]
    if args.exact_fisher_row:
        cases.append((args.agents[0], args.k_for_n, 1))
    rows = []
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for n in args.agents:
            mexp_matrpo = build("matrpo", n, args, tmp)
            mexp_mappo = build("mappo", n, args, tmp)
            batch = collect(mexp_matrpo)
            mbatch = mappo_batch(mexp_mappo, batch)
            mine = [c for c in cases if c[0] == n]
            times = {("mappo",): [], ("matrpo phase",): []}
            for c in mine:
                times[c] = []
            info = {}
            # one untimed warm-up of each (first-call allocations, lazy imports)
            training_phase(mexp_mappo, mbatch)
            matrpo_update(mexp_matrpo, batch, mine[0][1], mine[0][2])
            for r in range(args.rounds):
                times[("mappo",)].append(training_phase(mexp_mappo, mbatch))
                for c in mine:
                    seconds, info[c] = matrpo_update(mexp_matrpo, batch, c[1], c[2])
                    times[c].append(seconds)
                if args.matrpo_phase:
                    mexp_matrpo.algorithm.admm_iterations = args.k_for_n
                    mexp_matrpo.algorithm.fisher_subsample = 5
                    saved = {k: v.detach().clone() for k, v in mexp_matrpo.algorithm.policy_parameters(GROUP).items()}
                    times[("matrpo phase",)].append(training_phase(mexp_matrpo, batch))
                    with torch.no_grad():
                        for k, v in mexp_matrpo.algorithm.policy_parameters(GROUP).items():
                            v.copy_(saved[k])
            mappo = min(times[("mappo",)])
            phase = min(times[("matrpo phase",)]) if times[("matrpo phase",)] else None
            for c in mine:
                upd = min(times[c])
                rows.append({
                    "n_agents": n, "admm_iterations": c[1], "fisher_subsample": c[2], "frames": args.frames,
                    "matrpo_update_s": upd, "per_admm_iteration_ms": 1000 * upd / c[1],
                    "mappo_phase_s": mappo, "ratio_update_over_mappo": upd / mappo,
                    "matrpo_phase_s": phase if c[1] == args.k_for_n and c[2] == 5 else None,
                    "all_update_s": times[c], "all_mappo_s": times[("mappo",)], **info[c],
                })
            mexp_matrpo.close()
            mexp_mappo.close()
    return {"machine": machine_info(), "args": vars(args), "rows": rows}


def table(result: dict) -> str:
    lines = [
        "| n | K (ADMM iters) | Fisher on | frames | matrpo update (s) | per ADMM iter (ms) | mappo phase (s) | update / mappo | matrpo phase (s) |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        fisher = "every sample" if r["fisher_subsample"] == 1 else f"every {r['fisher_subsample']}th"
        phase = f"{r['matrpo_phase_s']:.2f}" if r["matrpo_phase_s"] is not None else ""
        lines.append(
            f"| {r['n_agents']} | {r['admm_iterations']} | {fisher} | {r['frames']} | {r['matrpo_update_s']:.2f} "
            f"| {r['per_admm_iteration_ms']:.1f} | {r['mappo_phase_s']:.2f} | {r['ratio_update_over_mappo']:.2f}x | {phase} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, nargs="+", default=[3, 6, 12])
    parser.add_argument("--admm-iterations", type=int, nargs="+", default=[25, 50, 100, 200],
                        help="K values timed at the first --agents value")
    parser.add_argument("--admm-mode", default="random",
                        help="ADMM link activation (the figures of benchmarks/README.md section 6: random, Table III)")
    parser.add_argument("--k-for-n", type=int, default=100, help="K for the other agent counts (Table III: 100)")
    parser.add_argument("--frames", type=int, default=6000)
    parser.add_argument("--n-envs", type=int, default=60)
    parser.add_argument("--minibatch", type=int, default=400)
    parser.add_argument("--minibatch-iters", type=int, default=45)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-exact-fisher-row", dest="exact_fisher_row", action="store_false")
    parser.add_argument("--no-matrpo-phase", dest="matrpo_phase", action="store_false")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for tests")
    args = parser.parse_args()
    if args.quick:
        args.agents, args.admm_iterations, args.k_for_n = [3, 4], [2, 4], 2
        args.frames, args.n_envs, args.minibatch, args.minibatch_iters, args.rounds = 120, 4, 60, 2, 1
    result = run(args)
    publish("matrpo_update_cost", "MATRPO update vs mappo training phase", result, table(result), args.quick)


if __name__ == "__main__":
    main()
