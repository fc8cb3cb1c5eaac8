"""How far MATRPO's ADMM gets to consensus in one policy update: beta x admm_mode x iterations (issue 15, item 3).

For each task, ONE batch is collected with a freshly initialised
``algorithm=matrpo`` (its YAML defaults, the task's defaults, seed
``--seed``) and its per-agent advantages are computed (GAE with each agent's
own critic, ``advantage_norm`` of the YAML). Then, for every ``beta`` and
``admm_mode``, one MATRPO policy update is run on that same batch from the same
``theta_old`` (paper 001 Algorithm 1: linearisation, ADMM eqs. 21-22, the
per-agent KL / improvement line search), with the ring topology of the YAML,
no ``admm_tol`` early stop, the primal step's trust-region metric ``--metrics`` (``kl``: the true-KL Hessian, the step before the fix; ``gauss_newton``: the exact ADMM step) and ``--exact-kkt`` (default
``false``: the paper's closed form on the KL boundary, matrpo_paper's; ``kl_exact``, matrpo.yaml's default
metric, ignores it). The ADMM run is read at iterations ``--iterations``
(one run of the largest value, read on the way: with the same link-selection
seed, the first ``K`` iterations of a longer run are exactly a ``K``-iteration
run), and at each read-out the script records:

* ``primal_max``: the largest relative primal residual over the links,
  ``RMS(J^i x^i - J^j x^j) / s_e`` (:func:`~benchmarl_decentral.objectives.relative_residuals`:
  0 at consensus, about 1.4 for uncorrelated log-ratios);
* ``dual_max``: the largest relative dual residual over the links (the last z change over ``s_e``);
* ``seconds``: wall time of the update up to there (linearisation + ADMM + one line search);
* the line search on the step reached: ``kl_max / (delta/N)`` (the bound holds when <= 1,
  which the line search enforces by construction), the smallest accepted step fraction and the
  number of agents whose step was reverted (no fraction passed the KL and improvement tests);
  and the agents' mean surrogate improvement at the accepted step (in units of the scaled advantage);
* ``first_below``: the first iteration (checked every ``--check-every``) at which
  ``primal_max`` fell below each ``--thresholds`` value.

Usage::

    python benchmarks/matrpo_admm_sweep.py            # both tasks, beta 0.3 1 3 10, random + synchronous, K <= 400
    python benchmarks/matrpo_admm_sweep.py --quick    # smoke test, tiny sizes
    python benchmarks/matrpo_admm_sweep.py --cost --cg-rtols 0.3 0.1   # CPU per update: Table III vs the exact step

``--cost`` times one update per setting of :data:`COST_SETTINGS` (and the exact step with each
``--cg-rtols`` value) on the same batch: iterations used, residuals, CG iterations per primal step and the
CPU seconds (``time.process_time``) of the ADMM and of the whole update (linearisation, ADMM, line search);
JSON to ``benchmarks/out/matrpo_admm_cost[_quick].json``.

Prints a markdown table; writes JSON to ``benchmarks/out/matrpo_admm_sweep[_quick].json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
import warnings

import torch

from _common import machine_info, publish  # noqa: E402  (benchmarks/ is the script's folder)

#: (task, task config changes): a private-reward task where Definition 1 holds (every agent sees the
#: target, only agent 0 is rewarded) and the navigation task of the committed matrpo suite part.
TASKS = {
    "coordsum_private/3x5-12": {},
    "vmas_private/navigation_agent0": {"n_agents": 4},
}


def collect(task_name: str, task_changes: dict, frames: int, n_envs: int, seed: int, save_folder: str):
    """``(experiment, group, batch with matrpo_advantage)``: one batch of the initial policy."""
    import benchmarl_decentral  # noqa: F401  (registers matrpo and the tasks)
    from benchmarl.algorithms import algorithm_config_registry
    from benchmarl.environments import task_config_registry
    from benchmarl.experiment import Experiment, ExperimentConfig
    from benchmarl.models import MlpConfig

    config = ExperimentConfig.get_from_yaml()
    config.on_policy_collected_frames_per_batch = frames
    config.on_policy_n_envs_per_worker = n_envs
    config.max_n_iters, config.max_n_frames = 1, None
    config.evaluation, config.loggers, config.create_json, config.render = False, [], False, False
    config.checkpoint_interval, config.checkpoint_at_end = 0, False
    config.sampling_device = config.train_device = config.buffer_device = "cpu"
    config.save_folder = save_folder
    task = task_config_registry[task_name].get_from_yaml()
    task.config.update(task_changes)
    exp = Experiment(task=task, algorithm_config=algorithm_config_registry["matrpo"].get_from_yaml(),
                     model_config=MlpConfig.get_from_yaml(), critic_model_config=MlpConfig.get_from_yaml(),
                     seed=seed, config=config)
    (group,) = exp.group_map  # these tasks have one group
    with contextlib.redirect_stderr(io.StringIO()):
        batch = next(iter(exp.collector)).detach()
    batch = batch.exclude(*exp._get_excluded_keys(group))
    alg = exp.algorithm
    batch = alg.compute_advantages(group, alg._complete_group_keys(group, batch))
    return exp, group, batch


def one_update(exp, group: str, batch, *, beta: float, mode: str, exact_kkt: bool, metric: str, checkpoints,
               check_every: int, thresholds, seed: int, cg_iters: int | None = None) -> dict:
    """One policy update's ADMM from ``theta_old``, read at every checkpoint (see the module docstring)."""
    from benchmarl_decentral.objectives import relative_residuals, run_admm
    from benchmarl_decentral.objectives import init_state
    from benchmarl_decentral.objectives.trust_region import backtracking_line_search

    alg = exp.algorithm
    links = alg.links[group]
    generator = torch.Generator().manual_seed(seed)
    tic = time.perf_counter()
    lin = alg.linearisation(group, batch)
    _, _, _, advantages = alg.policy_inputs(group, batch)
    state = init_state(links, lin.n_samples, n_params=lin.n_params, n_agents=lin.n_agents,
                       n_components=lin.n_components, dtype=lin.dtype, device=lin.device)
    admm_seconds = time.perf_counter() - tic
    rows, first_below, done = [], {str(t): None for t in thresholds}, 0
    for target in range(check_every, max(checkpoints) + 1, check_every):
        t = time.perf_counter()
        run_admm(lin, advantages, links, delta=alg.delta, beta=beta, iterations=target - done, mode=mode,
                 generator=generator, exact_kkt=exact_kkt, cg_iters=cg_iters or alg.cg_iters, state=state, metric=metric)
        admm_seconds += time.perf_counter() - t
        done = target
        primal, dual = relative_residuals(state)
        for thr in thresholds:
            if first_below[str(thr)] is None and float(primal.max()) < thr:
                first_below[str(thr)] = done
        if done in checkpoints:
            t = time.perf_counter()
            ls = backtracking_line_search(
                lin.policy, lin.params_old, state.x, lin.obs, bound=alg.delta,
                actions=lin.actions if alg.line_search_improvement else None,
                advantages=advantages.to(lin.dtype) if alg.line_search_improvement else None,
                backtrack_ratio=alg.backtrack_ratio, max_backtracks=alg.max_backtracks,
            )
            search_seconds = time.perf_counter() - t
            rows.append({
                "iterations": done,
                "primal_max": float(primal.max()), "primal_mean": float(primal.mean()),
                "dual_max": float(dual.max()),
                "kl_over_bound": float(ls.kl.max()) / alg.delta,
                "kl_bound_holds": bool(float(ls.kl.max()) <= alg.delta * (1 + 1e-6)),
                "min_step_fraction": float(ls.fraction.min()),
                "reverted_agents": int((ls.fraction == 0).sum()),
                # each agent's own surrogate gain L^i(theta_new) - L^i(theta_old) at the accepted step
                "improvement_mean": float(ls.improvement.mean()) if ls.improvement is not None else None,
                "seconds": admm_seconds + search_seconds,
            })
    lin.release()
    return {"beta": beta, "mode": mode, "exact_kkt": exact_kkt, "metric": metric, "cg_iters": cg_iters or alg.cg_iters, "n_links": int(links.shape[0]),
            "first_below": first_below, "checkpoints": rows}


#: ``--cost``: the ADMM settings timed on the same batch; (label, run_admm keywords). Table III's (``algorithm=matrpo_paper``;
#: ``algorithm=matrpo`` until 2026-12-07) and the exact step of section 9 with every primal step's 30 CG iterations; ``--cg-rtols`` adds the exact
#: step with the relative CG stop.
COST_SETTINGS = {
    "table_iii": dict(metric="kl", exact_kkt=False, beta=1.0, mode="random", iterations=100, tol=None, cg_iters=10,
                      cg_rtol=0.0),
    "exact_cg30": dict(metric="gauss_newton", exact_kkt=True, beta=10.0, mode="synchronous", iterations=200, tol=0.05,
                       cg_iters=30, cg_rtol=0.0),
    # the exact step with the true-KL metric (algorithm=matrpo's default): Table III's 10 CG iterations per primal step
    "kl_exact": dict(metric="kl_exact", exact_kkt=False, beta=10.0, mode="synchronous", iterations=200, tol=0.05,
                     cg_iters=10, cg_rtol=0.0),
}


def cost_update(exp, group: str, batch, setting: dict, seed: int) -> dict:
    """One policy update of ``setting`` from ``theta_old`` on ``batch``, timed part by part (CPU seconds).

    A fresh linearisation (nothing cached from another setting), the ADMM (:func:`run_admm`, with the per-link
    stop when ``tol``), then the line search of :func:`matrpo_update`.
    """
    from benchmarl_decentral.objectives import relative_residuals, run_admm
    from benchmarl_decentral.objectives.trust_region import backtracking_line_search

    alg = exp.algorithm
    links = alg.links[group]
    t0 = time.process_time()
    lin = alg.linearisation(group, batch)
    _, _, _, advantages = alg.policy_inputs(group, batch)
    t1 = time.process_time()
    # cg_rtol only when set: the same script then times the code before the key too (the README's "before" column)
    kw = {k: v for k, v in setting.items() if k != "cg_rtol" or v}
    state = run_admm(lin, advantages, links, delta=alg.delta, generator=torch.Generator().manual_seed(seed), **kw)
    t2 = time.process_time()
    ls = backtracking_line_search(
        lin.policy, lin.params_old, state.x, lin.obs, bound=alg.delta, actions=lin.actions,
        advantages=advantages.to(lin.dtype), backtrack_ratio=alg.backtrack_ratio, max_backtracks=alg.max_backtracks)
    t3 = time.process_time()
    primal, dual = relative_residuals(state)
    lin.release()
    return {**setting, "iterations_used": state.iteration, "primal_max": float(primal.max()),
            "dual_max": float(dual.max()),
            "cg_iterations": state.cg_iterations.tolist() if hasattr(state, "cg_iterations") else None,
            "primal_steps": state.agent_updates.tolist(), "kl_over_bound": float(ls.kl.max()) / alg.delta,
            "min_step_fraction": float(ls.fraction.min()), "improvement_mean": float(ls.improvement.mean()),
            "cpu_linearisation": t1 - t0, "cpu_admm": t2 - t1, "cpu_line_search": t3 - t2, "cpu_update": t3 - t0}


def run_cost(args) -> dict:
    torch.set_num_threads(args.threads)
    settings = {k: v for k, v in COST_SETTINGS.items() if k in args.settings}
    for r in args.cg_rtols:
        settings[f"exact_rtol{r:g}"] = {**COST_SETTINGS["exact_cg30"], "cg_rtol": r}
    if args.quick:
        settings = {k: {**v, "iterations": min(v["iterations"], 4)} for k, v in settings.items()}
    out = {"machine": machine_info(), "args": vars(args), "cost": {}}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for task_name in args.tasks:
            exp, group, batch = collect(task_name, TASKS.get(task_name, {}), args.frames[task_name], args.n_envs,
                                        args.seed, tmp)
            rows = {}
            for label, setting in settings.items():
                rows[label] = cost_update(exp, group, batch, setting, args.seed)
                r = rows[label]
                print(f"{task_name} {label}: {r['iterations_used']} iterations, primal_max {r['primal_max']:.3f}, "
                      f"ADMM {r['cpu_admm']:.1f} CPU s", flush=True)
            out["cost"][task_name] = {"n_agents": len(exp.group_map[group]), "frames": args.frames[task_name],
                                      "rows": rows}
            exp.close()
    return out


def cost_table(result: dict) -> str:
    lines = ["| task | setting | iterations used | max rel. primal | max rel. dual | CG iterations per primal step "
             "| KL / bound | ADMM CPU s | update CPU s |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for task_name, task in result["cost"].items():
        for label, r in task["rows"].items():
            per_step = ("n/a" if r["cg_iterations"] is None
                        else f"{sum(r['cg_iterations']) / max(sum(r['primal_steps']), 1):.1f}")
            lines.append(f"| {task_name} | {label} | {r['iterations_used']} | {r['primal_max']:.3f} | {r['dual_max']:.3f} "
                         f"| {per_step} | {r['kl_over_bound']:.2f} | {r['cpu_admm']:.1f} | {r['cpu_update']:.1f} |")
    return "\n".join(lines)


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    out = {"machine": machine_info(), "args": vars(args), "tasks": {}}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for task_name in args.tasks:
            frames = args.frames[task_name]
            exp, group, batch = collect(task_name, TASKS.get(task_name, {}), frames, args.n_envs, args.seed, tmp)
            alg = exp.algorithm
            runs = []
            for metric in args.metrics:
                for exact_kkt in args.exact_kkt:
                    for beta in args.betas:
                        for mode in args.modes:
                            runs.append(one_update(exp, group, batch, beta=beta, mode=mode, exact_kkt=exact_kkt,
                                                   metric=metric, checkpoints=args.iterations,
                                                   check_every=args.check_every, thresholds=args.thresholds,
                                                   seed=args.seed, cg_iters=args.cg_iters))
                            last = runs[-1]["checkpoints"][-1]
                            print(f"{task_name} metric={metric} exact_kkt={exact_kkt} beta={beta} {mode}: primal_max "
                                  f"{last['primal_max']:.3f} after {last['iterations']} ({last['seconds']:.1f} s)",
                                  flush=True)
            out["tasks"][task_name] = {
                "n_agents": len(exp.group_map[group]), "frames": frames, "delta": alg.delta,
                "topology": alg.topology,
                "advantage_norm": alg.advantage_norm,
                "runs": runs,
            }
            exp.close()
    return out


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.2e}"


def table(result: dict) -> str:
    lines = []
    for task_name, task in result["tasks"].items():
        thresholds = list(task["runs"][0]["first_below"]) if task["runs"] else []
        lines += [
            f"**{task_name}** ({task['n_agents']} agents, ring, one batch of {task['frames']} frames, "
            f"delta/N = {task['delta']}):",
            "",
            "| metric | exact_kkt | beta | mode | K | max rel. primal | max rel. dual | KL / bound | min step fraction "
            "| reverted | surrogate gain | s |"
            + "".join(f" first K < {t} |" for t in thresholds),
            "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(thresholds),
        ]
        for r in task["runs"]:
            for c in r["checkpoints"]:
                first = "".join(f" {r['first_below'][t] if r['first_below'][t] is not None else '-'} |"
                                for t in thresholds) if c is r["checkpoints"][-1] else " |" * len(thresholds)
                lines.append(
                    f"| {r.get('metric', 'kl')} | {str(r['exact_kkt']).lower()} | {r['beta']:g} | {r['mode']} | {c['iterations']} "
                    f"| {c['primal_max']:.3f} | {c['dual_max']:.3f} | {c['kl_over_bound']:.2f} | {c['min_step_fraction']:.2f} | {c['reverted_agents']} "
                    f"| {_fmt(c['improvement_mean'])} | {c['seconds']:.1f} |{first}"
                )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--frames-coordsum", type=int, default=1000)
    parser.add_argument("--frames-navigation", type=int, default=1000)
    parser.add_argument("--n-envs", type=int, default=10)
    parser.add_argument("--betas", type=float, nargs="+", default=[0.3, 1.0, 3.0, 10.0])
    parser.add_argument("--modes", nargs="+", default=["random", "synchronous"])
    parser.add_argument("--exact-kkt", nargs="+", choices=["false", "true"], default=["false"],
                        help="primal step: the paper's closed form on the KL boundary (false, matrpo.yaml) or its "
                             "multiplier clipped at 0 (true); see objectives/admm.py")
    parser.add_argument("--metrics", nargs="+", choices=["kl", "gauss_newton", "kl_exact"], default=["kl", "gauss_newton"],
                        help="trust-region metric of the primal step (objectives/admm.py): the true-KL Hessian (kl) "
                             "or the penalty's 1/M sum_n J^T J (gauss_newton, the exact ADMM step)")
    parser.add_argument("--cg-iters", type=int, default=None, help="CG iterations per primal step (default: the YAML's)")
    parser.add_argument("--iterations", type=int, nargs="+", default=[50, 100, 200, 400])
    parser.add_argument("--check-every", type=int, default=10, help="iterations between residual checks")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.1, 0.05])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cost", action="store_true",
                        help="instead of the sweep: the CPU cost of one update per setting (COST_SETTINGS, --cg-rtols)")
    parser.add_argument("--settings", nargs="+", choices=list(COST_SETTINGS), default=list(COST_SETTINGS),
                        help="--cost: the settings to time (COST_SETTINGS)")
    parser.add_argument("--cg-rtols", type=float, nargs="*", default=[0.3],
                        help="--cost: the exact step with these relative CG stops (algorithm.cg_rtol) too")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for tests")
    args = parser.parse_args()
    if args.quick:
        args.frames_coordsum = args.frames_navigation = 40
        args.n_envs, args.betas, args.iterations, args.check_every = 4, [1.0], [2, 4], 2
    args.exact_kkt = [v == "true" for v in args.exact_kkt]
    args.frames = {t: args.frames_coordsum if t.startswith("coordsum") else args.frames_navigation
                   for t in args.tasks}
    if args.cost:
        result = run_cost(args)
        publish("matrpo_admm_cost", "MATRPO ADMM cost per update", result, cost_table(result), args.quick)
        return
    if any(k % args.check_every for k in args.iterations):
        parser.error("every --iterations value must be a multiple of --check-every")
    result = run(args)
    publish("matrpo_admm_sweep", "MATRPO ADMM sweep", result, table(result), args.quick)


if __name__ == "__main__":
    main()
