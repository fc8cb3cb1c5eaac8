"""MATRPO's critic schedule: held-out fit, return and time per policy iteration (issue 15, item 4).

Usage::

    python benchmarks/matrpo_critic.py                        # 4 schedules x seeds 0 1 2, 30 iterations each
    python benchmarks/matrpo_critic.py --seeds 0 --iters 10   # shorter
    python benchmarks/matrpo_critic.py --quick                # a few seconds: 2 schedules, 3 small iterations

Runs ``algorithm=matrpo`` on the results suite's ``matrpo_indep`` task and experiment settings
(``benchmarks/suite/run.py``: COMMON + ``PARTS["matrpo_indep"].experiment_overrides``,
coordsum_private/3x5-12, 1000 frames per policy iteration, only agent 0 rewarded) with one critic
schedule per row (``algorithm.critic_epochs`` x ``ceil(frames / algorithm.critic_minibatch_size)``
Adam steps per iteration; the policy update is the same in every row). Per iteration it records

* the critic's fit on the *fresh* batch, before the critic trains on it (held out: the critic has
  seen only earlier batches): explained variance and MSE of agent 0's values against its GAE
  targets (``Matrpo.critic_stats``, Baselines' ``ev_tdlam_before``), and the MSE of the unrewarded
  agents (their targets are 0: what they predict is noise in their advantages);
* the mean training return (mean over agents of the private returns = team hits per episode / 3);
* the iteration's training time (policy update + critic; collection is the same in every row)
  and the critic's share (first to last critic step), as CPU seconds of the process (one thread;
  the table) and wall seconds (the JSON), and the number of critic optimizer steps (counted).

Fits are averaged over iterations ``--skip``.. (the first critics have seen little data), returns
over the last ``--last`` iterations; then mean and std over seeds. The JSON goes to
``benchmarks/out/matrpo_critic[_quick].json``, the markdown table to stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # _common
sys.path.insert(0, str(HERE / "suite"))  # run: the results suite's settings

from _common import machine_info, write_result  # noqa: E402
from benchmarl.experiment.callback import Callback  # noqa: E402


class Recorder(Callback):
    """Per policy iteration: return, the critic's held-out fit, its optimizer steps and the times."""

    def __init__(self):
        super().__init__()
        self.rows, self.row = [], None

    def on_batch_collected(self, batch):
        self.row = {"start": time.perf_counter(), "cpu_start": time.process_time(),
                    "return": float(self.experiment.mean_return), "steps": 0}

    def on_train_step(self, batch, group):
        if self.row["steps"] == 0:
            self.row["critic_start"], self.row["critic_cpu_start"] = time.perf_counter(), time.process_time()
        self.row["steps"] += 1

    def on_train_end(self, training_td, group):
        end, cpu_end = time.perf_counter(), time.process_time()
        stats = self.experiment.algorithm.critic_stats[group]
        ev, mse = stats["explained_variance"], stats["mse"]
        self.rows.append({
            "iteration": len(self.rows),
            "return": self.row["return"],
            "ev_agent0": float(ev[0]),
            "mse_agent0": float(mse[0]),
            "mse_unrewarded": float(mse[1:].mean()),
            "critic_steps": self.row["steps"],
            "critic_s": end - self.row["critic_start"],
            "train_s": end - self.row["start"],  # policy update + critic (collection: the same in every row)
            # CPU seconds of this process (one thread: OMP_NUM_THREADS=1): wall time on a shared machine is not
            "critic_cpu_s": cpu_end - self.row["critic_cpu_start"],
            "train_cpu_s": cpu_end - self.row["cpu_start"],
        })


#: name -> (critic_epochs, critic_minibatch_size); None: the suite's experiment value (4 epochs x 250),
#: matrpo's schedule before the keys
SCHEDULES = {
    "experiment's (before)": (None, None),
    "public code's epochs": (3, 64),
    "~100 steps": (6, 64),
    "~470 steps": (30, 64),
}
QUICK_SCHEDULES = {"experiment's (before)": (None, None), "3 x 64": (3, 64)}


def suite_settings():
    """``(task, experiment overrides)`` of the results suite's ``matrpo_indep`` part."""
    from run import COMMON, PARTS

    part = PARTS["matrpo_indep"]
    assert not part.task_overrides, "matrpo_indep has no task overrides"
    overrides = {}
    for item in (*COMMON, *part.experiment_overrides):
        key, _, value = item.partition("=")
        overrides[key] = value  # a part's experiment.* key replaces COMMON's
    return part.task, overrides


def _experiment_config(overrides: dict, save_folder: str, iters: int, frames: int | None):
    import yaml
    from benchmarl.experiment import ExperimentConfig

    cfg = ExperimentConfig.get_from_yaml()
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if section == "experiment":
            setattr(cfg, name, yaml.safe_load(value))
    if frames is not None:  # --quick: a smaller batch, the same number of minibatches per epoch
        scale = frames / cfg.on_policy_collected_frames_per_batch
        cfg.on_policy_collected_frames_per_batch = frames
        cfg.on_policy_n_envs_per_worker = max(1, round(cfg.on_policy_n_envs_per_worker * scale))
        cfg.on_policy_minibatch_size = max(1, round(cfg.on_policy_minibatch_size * scale))
    cfg.max_n_iters, cfg.max_n_frames = iters, None
    cfg.evaluation, cfg.render, cfg.loggers, cfg.create_json = False, False, [], False
    cfg.checkpoint_interval, cfg.checkpoint_at_end = 0, False
    cfg.save_folder = save_folder
    cfg.sampling_device = cfg.train_device = cfg.buffer_device = "cpu"
    return cfg


def run(task_name: str, overrides: dict, epochs, minibatch, seed: int, iters: int, frames: int | None = None) -> dict:
    """One matrpo run with one critic schedule; per-iteration records."""
    import torch
    from benchmarl.algorithms import algorithm_config_registry
    from benchmarl.environments import task_config_registry
    from benchmarl.experiment import Experiment
    from benchmarl.models import MlpConfig

    import benchmarl_decentral  # noqa: F401  (registers the algorithms and tasks)
    from benchmarl_decentral.algorithms import TABLE_III_ADMM

    with tempfile.TemporaryDirectory() as tmp:
        cfg = _experiment_config(overrides, tmp, iters, frames)
        algo = algorithm_config_registry["matrpo"].get_from_yaml()
        # Table III's ADMM, with which the committed figures were taken (matrpo's default until 2026-12-07)
        for key, value in TABLE_III_ADMM.items():
            setattr(algo, key, value)
        algo.critic_epochs, algo.critic_minibatch_size = epochs, minibatch
        model = MlpConfig.get_from_yaml()  # matrpo's num_cells / activation replace its layers
        recorder = Recorder()
        torch.manual_seed(seed)
        exp = Experiment(task=task_config_registry[task_name].get_from_yaml(), algorithm_config=algo,
                         model_config=model, critic_model_config=model, seed=seed, config=cfg,
                         callbacks=[recorder])
        batch = exp.config.on_policy_collected_frames_per_batch
        schedule = {"epochs": exp.config.on_policy_n_minibatch_iters,
                    "minibatch": exp.config.on_policy_minibatch_size}
        schedule["steps"] = schedule["epochs"] * math.ceil(batch / schedule["minibatch"])
        exp.run()
    return {"seed": seed, "frames_per_iteration": batch, **schedule, "iterations": recorder.rows}


def summarise(result: dict, skip: int, last: int) -> dict:
    rows = result["iterations"]
    fit = rows[skip:] or rows
    finite = [r["ev_agent0"] for r in fit if math.isfinite(r["ev_agent0"])]
    returns = [r["return"] for r in rows[-last:] if math.isfinite(r["return"])]
    return {
        "ev_agent0": statistics.fmean(finite) if finite else float("nan"),
        "mse_agent0": statistics.fmean(r["mse_agent0"] for r in fit),
        "mse_unrewarded": statistics.fmean(r["mse_unrewarded"] for r in fit),
        "return": statistics.fmean(returns) if returns else float("nan"),
        "train_s": statistics.fmean(r["train_s"] for r in rows[1:] or rows),
        "critic_s": statistics.fmean(r["critic_s"] for r in rows[1:] or rows),
        "train_cpu_s": statistics.fmean(r["train_cpu_s"] for r in rows[1:] or rows),
        "critic_cpu_s": statistics.fmean(r["critic_cpu_s"] for r in rows[1:] or rows),
    }


def _ms(values) -> str:
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3g}"
    return f"{statistics.fmean(values):.3g} ± {statistics.stdev(values):.2g}"


def table(schedules: dict) -> str:
    lines = [
        "| schedule | epochs x minibatch | critic steps / iteration | seeds | held-out EV (agent 0) | held-out MSE (agent 0) "
        "| MSE unrewarded agents | mean return (last iterations) | training CPU s / iteration | critic CPU s / iteration |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in schedules.items():
        s = entry["summaries"]
        lines.append(
            f"| {name} | {entry['epochs']} x {entry['minibatch']} | {entry['steps']} | {len(s)} "
            f"| {_ms([x['ev_agent0'] for x in s])} | {_ms([x['mse_agent0'] for x in s])} "
            f"| {_ms([x['mse_unrewarded'] for x in s])} | {_ms([x['return'] for x in s])} "
            f"| {_ms([x['train_cpu_s'] for x in s])} | {_ms([x['critic_cpu_s'] for x in s])} |"
        )
    return "\n".join(lines)


def merge(results: list) -> dict:
    """One result from several (the same task and iterations; their seeds' runs side by side)."""
    merged = {**results[0], "seeds": [], "schedules": {}}
    for result in results:
        if (result["task"], result["iters"]) != (merged["task"], merged["iters"]):
            raise ValueError("--table: the results differ in task or iterations")
        merged["seeds"] += result["seeds"]
        for name, entry in result["schedules"].items():
            into = merged["schedules"].setdefault(name, {**entry, "runs": [], "summaries": []})
            into["runs"] += entry["runs"]
            into["summaries"] += entry["summaries"]
    return merged


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iters", type=int, default=30, help="policy iterations per run")
    parser.add_argument("--skip", type=int, default=5, help="iterations left out of the fit averages")
    parser.add_argument("--last", type=int, default=10, help="iterations the return is averaged over")
    parser.add_argument("--schedules", nargs="+", default=None, help=f"a subset of {list(SCHEDULES)}")
    parser.add_argument("--out", default="matrpo_critic", help="JSON name under benchmarks/out/")
    parser.add_argument("--table", nargs="+", metavar="JSON", help="print the table of saved results, merged "
                        "(e.g. runs of different seeds in parallel processes, --out), and exit")
    parser.add_argument("--quick", action="store_true", help="2 schedules, 1 seed, 3 iterations of 200 frames")
    args = parser.parse_args(argv)
    if args.table:
        merged = merge([json.loads(Path(p).read_text()) for p in args.table])
        print(f"{merged['task']}, {merged['iters']} iterations, seeds {merged['seeds']}; fit over iterations "
              f"{merged['skip']}.., return over the last {merged['last']}\n")
        print(table(merged["schedules"]))
        return merged
    task, overrides = suite_settings()
    schedules = QUICK_SCHEDULES if args.quick else {k: SCHEDULES[k] for k in (args.schedules or SCHEDULES)}
    seeds = args.seeds[:1] if args.quick else args.seeds
    iters, frames = (3, 200) if args.quick else (args.iters, None)
    skip, last = (1, 2) if args.quick else (args.skip, args.last)
    out = {"task": task, "overrides": overrides, "seeds": seeds, "iters": iters, "skip": skip, "last": last,
           "machine": machine_info(), "schedules": {}}
    for seed in seeds:  # every schedule of a seed before the next seed: comparable rows early
        for name, (epochs, minibatch) in schedules.items():
            t0 = time.perf_counter()
            result = run(task, overrides, epochs, minibatch, seed, iters, frames)
            result["summary"] = summarise(result, skip, last)
            entry = out["schedules"].setdefault(name, {
                **{k: result[k] for k in ("epochs", "minibatch", "steps", "frames_per_iteration")},
                "critic_epochs": epochs, "critic_minibatch_size": minibatch, "runs": [], "summaries": []})
            entry["runs"].append(result)
            entry["summaries"].append(result["summary"])
            print(f"{name} seed {seed}: {result['summary']} ({time.perf_counter() - t0:.0f} s)", flush=True)
            write_result(args.out, out, quick=args.quick)  # partial results survive an interruption
    print(f"\n{task}, {frames or entry['frames_per_iteration']} frames per iteration, "
          f"{iters} iterations, seeds {seeds}; fit over iterations {skip}.., return over the last {last}\n")
    print(table(out["schedules"]))
    return out


if __name__ == "__main__":
    main()
