#!/usr/bin/env python
"""Learning benchmark: DecPG (k=2, k=n-2) vs BenchMARL's MAPPO (parameter sharing).

One command runs the whole sweep sequentially with BenchMARL's Python API,
then evaluates every final policy in the clean training env and in the
perturbed test env of paper 002 sec. 4 (obs noise c * sample std, random
action with prob. eps), and writes ``results.json`` + ``results.md`` next to
this script (or under ``--results-dir``).

    python benchmarks/learning/decpg_vs_mappo.py                 # full sweep
    python benchmarks/learning/decpg_vs_mappo.py --quick         # smoke test (< 2 min)

BenchMARL run folders go under ``--out`` (default ``benchmarks/out/learning``,
gitignored). Each finished run also leaves ``<out>/<run>/result.json``; a
re-run skips runs whose result file exists (``--force`` to redo them).

Fairness: every algorithm gets the same task, experiment settings (frames per
batch, envs, full-batch minibatch, 10 PPO epochs, frames, gamma), networks
(MLP [64, 64], tanh, separate centralised critic) and PPO loss settings (clip
0.2, entropy 1e-3, Huber critic loss, GAE lambda 0.95, max grad norm 10: the
values paper 002 Table 1 shares across PS and DecPG, which are also decpg.yaml's
MAPPO backbone; advantage normalisation follows decpg.yaml's ``normalize_advantage``
unless ``--mappo-normalize-advantage`` says otherwise). decpg.yaml is read once
per sweep and the sha256 of decpg.py / decpg.yaml is stored with every run. What differs is only the algorithm: DecPG uses its paper
defaults (per-agent actors/critics with kNN-ring DSGD mixing, SGD with lr
1e-2 -> 1e-3 linear decay, per-agent grad clipping, averaged model at
evaluation); MAPPO shares one actor (and one critic) across agents and uses
Adam with ``experiment.lr`` (``--mappo-lr``, default 5e-4 as in Yu et al. 2022).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import pathlib
import platform
import statistics
import sys
import time
import warnings
from typing import Dict, List, Optional

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent

warnings.filterwarnings("ignore")

import torch  # noqa: E402

import benchmarl  # noqa: E402
import benchmarl_decentral  # noqa: E402,F401  (registers decpg)
from benchmarl.algorithms import MappoConfig  # noqa: E402
from benchmarl.environments import PettingZooTask, VmasTask  # noqa: E402
from benchmarl.experiment import Experiment, ExperimentConfig  # noqa: E402
from benchmarl.models.mlp import MlpConfig  # noqa: E402
from benchmarl_decentral.algorithms.decpg import Decpg, DecpgConfig  # noqa: E402
from benchmarl_decentral.consensus import (  # noqa: E402
    build_mixing_matrix,
    build_topology,
    spectral_gap,
)
from benchmarl_decentral.environments.perturbation import PerturbedPolicy  # noqa: E402
from torchrl.envs import Compose, TransformedEnv  # noqa: E402
from torchrl.envs.utils import ExplorationType, set_exploration_type  # noqa: E402

TASKS = {
    "vmas/simple_spread": (VmasTask.SIMPLE_SPREAD, "n_agents", "max_steps"),
    "vmas/navigation": (VmasTask.NAVIGATION, "n_agents", "max_steps"),
    "pettingzoo/simple_spread": (PettingZooTask.SIMPLE_SPREAD, "N", "max_cycles"),
}

# PPO loss settings shared by every algorithm (paper 002 Table 1 / decpg.yaml backbone)
SHARED_PPO = dict(
    clip_epsilon=0.2,
    entropy_coef=0.001,
    critic_coef=1.0,
    loss_critic_type="smooth_l1",
    lmbda=0.95,
)
MAX_GRAD_NORM = 10.0


# --------------------------------------------------------------------------- setup
def make_task(name: str, n_agents: int, max_steps: int):
    member, n_key, steps_key = TASKS[name]
    task = member.get_from_yaml()
    task.config[n_key] = n_agents
    task.config[steps_key] = max_steps
    return task


def make_experiment_config(args, save_folder: pathlib.Path) -> ExperimentConfig:
    cfg = ExperimentConfig.get_from_yaml()
    cfg.sampling_device = cfg.train_device = cfg.buffer_device = "cpu"
    cfg.share_policy_params = True  # MAPPO = parameter sharing; decpg overrides it per agent
    cfg.prefer_continuous_actions = False  # discrete actions, as MPE in the paper
    cfg.gamma = 0.99
    cfg.lr = args.mappo_lr  # used by mappo only (decpg.lr replaces it)
    cfg.clip_grad_norm = True
    cfg.clip_grad_val = MAX_GRAD_NORM  # mappo's joint clip; decpg switches to per-agent 10
    cfg.max_n_iters = None
    cfg.max_n_frames = args.frames
    cfg.on_policy_collected_frames_per_batch = args.frames_per_batch
    cfg.on_policy_n_envs_per_worker = args.n_envs
    cfg.on_policy_minibatch_size = args.frames_per_batch  # one full-batch minibatch
    cfg.on_policy_n_minibatch_iters = args.epochs  # PPO epochs
    cfg.evaluation = True
    cfg.evaluation_interval = args.eval_interval
    cfg.evaluation_episodes = args.train_eval_episodes
    cfg.evaluation_deterministic_actions = True
    cfg.render = False
    cfg.loggers = ["csv"]
    cfg.create_json = False
    cfg.save_folder = str(save_folder)
    cfg.checkpoint_interval = 0
    cfg.checkpoint_at_end = False
    return cfg


_DECPG_BASE: Optional[DecpgConfig] = None


def decpg_base() -> DecpgConfig:
    """decpg.yaml read once per sweep, so every run of a sweep uses the same defaults."""
    global _DECPG_BASE
    if _DECPG_BASE is None:
        _DECPG_BASE = DecpgConfig.get_from_yaml()
    return _DECPG_BASE


def mappo_normalizes_advantage(args) -> bool:
    if args.mappo_normalize_advantage == "auto":  # same as decpg's backbone
        return bool(getattr(decpg_base(), "normalize_advantage", False))
    return args.mappo_normalize_advantage == "on"


def code_fingerprint() -> dict:
    """sha256 of the decpg code and yaml (others edit the repo while sweeps run)."""
    import hashlib

    import benchmarl_decentral.algorithms.decpg as decpg_module
    from benchmarl_decentral._paths import CONF_DIR

    out = {}
    for name, path in (
        ("decpg.py", pathlib.Path(decpg_module.__file__)),
        ("decpg.yaml", CONF_DIR / "algorithm" / "decpg.yaml"),
        ("perturbation.py", pathlib.Path(sys.modules[PerturbedPolicy.__module__].__file__)),
    ):
        out[name] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return out


def make_algorithm_config(algo: str, k: Optional[int], args):
    if algo == "mappo":
        cfg = MappoConfig.get_from_yaml()
        cfg.share_param_critic = True
        for key, value in SHARED_PPO.items():
            setattr(cfg, key, value)
        return cfg
    import copy

    cfg = copy.deepcopy(decpg_base())  # paper defaults (Table 1)
    cfg.k = k
    if args.decpg_optimizer is not None:  # optimiser-matched control (not the paper's setting)
        cfg.optimizer = args.decpg_optimizer
    if args.decpg_lr is not None:
        cfg.lr = cfg.min_lr = args.decpg_lr
    cfg.perturbation_c = args.c
    cfg.perturbation_eps = args.eps
    for key, value in SHARED_PPO.items():  # already the yaml values; asserted equal
        assert getattr(cfg, key) == value, (key, getattr(cfg, key), value)
    assert cfg.max_grad_norm == MAX_GRAD_NORM
    return cfg


def make_model_config(args) -> MlpConfig:
    cfg = MlpConfig.get_from_yaml()
    cfg.num_cells = list(args.hidden)
    return cfg


def gap_of(algo: str, k: Optional[int], n: int) -> float:
    if algo == "mappo":
        return 1.0  # parameter sharing = fully connected averaging (k = n-1)
    return float(spectral_gap(build_mixing_matrix("uniform", build_topology("knn_ring", n, k=k))))


# ------------------------------------------------------------------ final evaluation
def make_eval_env(exp: Experiment, n_episodes: int, seed: int):
    """A fresh test env like ``exp.test_env`` (same task, transforms), other seed."""
    vectorised = exp.test_env.batch_size != ()
    base = exp.task.get_env_fun(
        num_envs=n_episodes if vectorised else 1,
        continuous_actions=exp.continuous_actions,
        seed=seed,
        device=exp.config.sampling_device,
    )()
    env = TransformedEnv(base, Compose(*exp.task.get_env_transforms(base)))
    return exp.algorithm.process_env_fun(lambda: env)()


def perturbed_policy(exp: Experiment, c: float, eps: float, seed: int) -> PerturbedPolicy:
    """The same construction decpg's own perturbed evaluation uses."""
    return PerturbedPolicy.from_experiment(exp, c=c, eps=eps, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def episode_returns(exp: Experiment, env, policy, n_episodes: int, seed: int) -> List[float]:
    """Deterministic rollouts; per-episode return as BenchMARL's logger computes it
    (reward summed to the first done, mean over agents, mean over groups)."""
    torch.manual_seed(seed)
    env.set_seed(seed)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        if env.batch_size == ():
            rollouts = [
                env.rollout(max_steps=exp.max_steps, policy=policy,
                            auto_cast_to_device=True, break_when_any_done=True)
                for _ in range(n_episodes)
            ]
        else:
            rollouts = list(
                env.rollout(max_steps=exp.max_steps, policy=policy,
                            auto_cast_to_device=True, break_when_any_done=False).unbind(0)
            )
    out = []
    for r in rollouts:
        done = exp.logger._get_global_done(r).squeeze(-1).nonzero(as_tuple=True)[0]
        r = r[: int(done[0]) + 1] if done.numel() else r
        per_group = [exp.logger._get_reward(g, r).sum(0).mean() for g in exp.group_map]
        out.append(float(torch.stack(per_group).mean()))
    return out


def final_evaluation(exp: Experiment, args, seed: int) -> Dict[str, float]:
    eval_seed = 10_000 + seed  # unseen by training (seed) and BenchMARL's eval env
    env = make_eval_env(exp, args.final_eval_episodes, eval_seed)
    ctx = exp.algorithm.evaluation_parameters() if isinstance(exp.algorithm, Decpg) else _null()
    with ctx:  # decpg: the averaged model theta_avg (sec. 3); mappo: the shared policy
        clean = episode_returns(exp, env, exp.policy, args.final_eval_episodes, eval_seed)
        pert = episode_returns(
            exp, env, perturbed_policy(exp, args.c, args.eps, eval_seed + 1),
            args.final_eval_episodes, eval_seed,  # same initial states as clean
        )
    env.close()
    return {
        "train_return": statistics.fmean(clean),
        "train_return_sem": statistics.stdev(clean) / math.sqrt(len(clean)) if len(clean) > 1 else 0.0,
        "test_return": statistics.fmean(pert),
        "test_return_sem": statistics.stdev(pert) / math.sqrt(len(pert)) if len(pert) > 1 else 0.0,
        "generalization_gap": statistics.fmean(pert) - statistics.fmean(clean),
        "n_episodes": len(clean),
    }


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def read_scalars(folder: pathlib.Path, frames_per_batch: int) -> Dict[str, List[List[float]]]:
    """BenchMARL csv scalars -> {name: [[frames, value], ...]} (step = iteration index;
    the evaluation at iteration i runs after (i + 1) * frames_per_batch frames)."""
    wanted = {
        "eval_reward_episode_reward_mean": "eval_clean",
        "eval_perturbed_reward_episode_reward_mean": "eval_perturbed",
        "eval_generalization_gap": "eval_gap",
        "collection_reward_episode_reward_mean": "collection",
    }
    out: Dict[str, List[List[float]]] = {}
    for path in folder.rglob("*.csv"):
        name = wanted.get(path.stem)
        if name is None and path.stem.startswith("train_"):
            for metric in ("entropy", "kl_approx", "explained_variance", "grad_norm_loss_objective"):
                if path.stem.endswith("_" + metric):
                    name = metric
        if name is None:
            continue
        rows = []
        with open(path) as f:
            for row in csv.reader(f):
                try:
                    step, value = int(float(row[0])), float(row[1])
                except (ValueError, IndexError):
                    continue
                rows.append([(step + 1) * frames_per_batch, value])
        out[name] = sorted(rows)
    return out


# ----------------------------------------------------------------------------- runs
def run_one(algo: str, k: Optional[int], seed: int, args, out: pathlib.Path) -> dict:
    tag = f"{algo}" + (f"_k{k}" if k is not None else "") + f"_seed{seed}"
    folder = out / tag
    result_file = folder / "result.json"
    if result_file.exists() and not args.force:
        old = json.loads(result_file.read_text())
        if old.get("code") == args.code:
            print(f"[skip] {tag}: {result_file} exists (same code)", flush=True)
            return old
        print(f"[redo] {tag}: decpg code/yaml changed since {result_file}", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():  # a stale, unfinished run of the same tag
        if old.is_dir():
            import shutil

            shutil.rmtree(old)

    task = make_task(args.task, args.n_agents, args.max_steps)
    exp = Experiment(
        task=task,
        algorithm_config=make_algorithm_config(algo, k, args),
        model_config=make_model_config(args),
        critic_model_config=make_model_config(args),
        seed=seed,
        config=make_experiment_config(args, folder),
    )
    if algo == "mappo" and mappo_normalizes_advantage(args):
        # BenchMARL's Mappo hard-codes normalize_advantage=False; Yu et al.'s MAPPO
        # (and decpg's backbone, decpg.yaml) standardise advantages. Under parameter
        # sharing the statistics are over all agents' samples of the minibatch.
        for group in exp.group_map:
            exp.losses[group].normalize_advantage = True
    t0 = time.time()
    exp.run()  # closes the experiment's envs/loggers at the end; policy stays usable
    train_s = time.time() - t0
    t1 = time.time()
    final = final_evaluation(exp, args, seed)
    eval_s = time.time() - t1
    curves = read_scalars(folder, args.frames_per_batch)
    nan_seen = any(  # "collection" is NaN when no episode ended in a batch: not a failure
        not math.isfinite(v) for name, series in curves.items() if name != "collection" for _, v in series
    ) or not all(math.isfinite(final[x]) for x in ("train_return", "test_return"))
    result = {
        "code": args.code,
        "normalize_advantage": (
            mappo_normalizes_advantage(args) if algo == "mappo"
            else bool(getattr(exp.algorithm, "normalize_advantage", False))
        ),
        "algorithm": algo,
        "optimizer": getattr(exp.algorithm, "optimizer", "adam"),
        "k": k,
        "seed": seed,
        "spectral_gap": gap_of(algo, k, args.n_agents),
        "final": final,
        "curves": curves,
        "total_frames": exp.total_frames,
        "iterations": exp.n_iters_performed,
        "train_wall_s": train_s,
        "final_eval_wall_s": eval_s,
        "nan_seen": nan_seen,
    }
    result_file.write_text(json.dumps(result, indent=1))
    print(
        f"[done] {tag}: clean {final['train_return']:.2f}  perturbed {final['test_return']:.2f}"
        f"  gap {final['generalization_gap']:.2f}  ({train_s:.0f}s train, {eval_s:.0f}s eval)",
        flush=True,
    )
    return result


# -------------------------------------------------------------------------- summary
def mean_std(xs: List[float]) -> tuple:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def value_at(series: List[List[float]], frames: int) -> Optional[float]:
    """Value of the last evaluation at or before ``frames``."""
    best = None
    for f, v in series:
        if f <= frames:
            best = v
    return best


def summarise(results: List[dict], args, wall_s: float) -> dict:
    variants = []
    for r in results:
        key = (r["algorithm"], r["k"])
        if key not in variants:
            variants.append(key)
    all_frames = sorted({f for r in results for f, _ in r["curves"].get("eval_clean", [])})
    n_points = min(len(all_frames), 6)
    if n_points:
        idx = sorted({round(i * (len(all_frames) - 1) / max(1, n_points - 1)) for i in range(n_points)})
        curve_frames = [all_frames[i] for i in idx]
    else:
        curve_frames = []
    rows = []
    for algo, k in variants:
        rs = [r for r in results if r["algorithm"] == algo and r["k"] == k]
        row = {
            "algorithm": algo,
            "optimizer": rs[0].get("optimizer", "sgd" if algo == "decpg" else "adam"),
            "k": k,
            "spectral_gap": rs[0]["spectral_gap"],
            "seeds": [r["seed"] for r in rs],
            "nan_seen": any(r["nan_seen"] for r in rs),
        }
        for metric in ("train_return", "test_return", "generalization_gap"):
            m, s = mean_std([r["final"][metric] for r in rs])
            row[metric] = {"mean": m, "std": s, "per_seed": [r["final"][metric] for r in rs]}
        m, s = mean_std([value_at(r["curves"].get("eval_clean", []), 10**18) for r in rs])
        row["last_benchmarl_eval"] = {"mean": m, "std": s}
        m, s = mean_std([value_at(r["curves"].get("entropy", []), 10**18) for r in rs])
        row["final_policy_entropy"] = {"mean": m, "std": s}
        m, s = mean_std([
            statistics.fmean(v for _, v in r["curves"]["kl_approx"]) if r["curves"].get("kl_approx") else None
            for r in rs
        ])
        row["mean_kl_approx"] = {"mean": m, "std": s}
        row["curve"] = []
        for f in curve_frames:
            m, s = mean_std([value_at(r["curves"].get("eval_clean", []), f) for r in rs])
            row["curve"].append({"frames": f, "mean": m, "std": s})
        rows.append(row)
    return {
        "settings": vars_for_json(args),
        "versions": versions(),
        "machine": machine(),
        "sweep_wall_s": wall_s,
        "summary": rows,
        "runs": results,
    }


def vars_for_json(args) -> dict:
    d = dict(vars(args))
    d["out"] = str(d["out"])
    d["results_dir"] = str(d["results_dir"])
    d["ks"] = [str(x) for x in d["ks"]]
    return d


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("benchmarl", "torchrl", "torch", "tensordict", "vmas", "pettingzoo", "benchmarl-decentral"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }


def fmt(d: dict, digits: int = 2) -> str:
    return f"{d['mean']:.{digits}f} ± {d['std']:.{digits}f}"


def write_markdown(summary: dict, path: pathlib.Path) -> None:
    s = summary["settings"]
    lines = [
        "# DecPG vs MAPPO: learning and perturbed-test results",
        "",
        f"Task `{s['task']}`, n = {s['n_agents']} agents, {s['max_steps']} steps/episode, "
        f"{s['frames']:,} frames, {s['frames_per_batch']} frames/batch x {s['epochs']} full-batch "
        f"PPO epochs, {s['n_envs']} envs, MLP {s['hidden']}, seeds {s['seeds']}. "
        f"Final evaluation: {s['final_eval_episodes']} deterministic episodes per policy, clean "
        f"and perturbed (c = {s['c']}, eps = {s['eps']}), same initial states. "
        f"MAPPO: Adam lr {s['mappo_lr']}, advantage normalisation "
        f"{'on' if any(r['normalize_advantage'] for r in summary['runs'] if r['algorithm'] == 'mappo') else 'off'}; "
        f"decpg: decpg.yaml defaults (SGD, lr 1e-2 -> 1e-3), advantage normalisation "
        f"{'on' if any(r['normalize_advantage'] for r in summary['runs'] if r['algorithm'] == 'decpg') else 'off'}. "
        f"Code: {', '.join(f'{k} {v}' for k, v in s['code'].items())} (sha256 prefixes). "
        f"Sweep wall time {summary['sweep_wall_s'] / 60:.1f} min.",
        "",
        "Mean ± std over seeds (higher return is better; gap = perturbed - clean).",
        "",
        "| algorithm | k | spectral gap | final train return (clean) | perturbed test return | generalization gap | last BenchMARL eval |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in summary["summary"]:
        k = "-" if row["k"] is None else str(row["k"])
        name = row["algorithm"] + (" (PS, Adam)" if row["algorithm"] == "mappo" else f" ({row.get('optimizer', 'sgd').upper()})")
        lines.append(
            f"| {name} | {k} | {row['spectral_gap']:.3f} | {fmt(row['train_return'])} | "
            f"{fmt(row['test_return'])} | {fmt(row['generalization_gap'])} | "
            f"{fmt(row['last_benchmarl_eval'])} |"
            + (" NaN!" if row["nan_seen"] else "")
        )
    lines += [
        "",
        "Training diagnostics (BenchMARL train scalars, mean ± std over seeds): policy entropy "
        "at the last iteration (uniform over the actions = ln |A|) and PPO's approximate KL per "
        "update averaged over training.",
        "",
        "| algorithm | k | final policy entropy | mean approx. KL |",
        "|---|---|---|---|",
    ]
    for row in summary["summary"]:
        k = "-" if row["k"] is None else str(row["k"])
        e, kl = row["final_policy_entropy"], row["mean_kl_approx"]
        lines.append(f"| {row['algorithm']} | {k} | {e['mean']:.3f} ± {e['std']:.3f} | {kl['mean']:.2e} ± {kl['std']:.1e} |")
    lines += ["", "Per seed (clean / perturbed):", ""]
    for row in summary["summary"]:
        k = "" if row["k"] is None else f" k={row['k']}"
        pairs = ", ".join(
            f"s{sd}: {a:.2f} / {b:.2f}"
            for sd, a, b in zip(row["seeds"], row["train_return"]["per_seed"], row["test_return"]["per_seed"])
        )
        lines.append(f"- {row['algorithm']}{k}: {pairs}")
    if summary["summary"] and summary["summary"][0]["curve"]:
        frames = [p["frames"] for p in summary["summary"][0]["curve"]]
        lines += [
            "",
            "Learning curve: BenchMARL's clean deterministic evaluation "
            f"({s['train_eval_episodes']} episodes), mean ± std over seeds, at frames:",
            "",
            "| algorithm | k | " + " | ".join(f"{f:,}" for f in frames) + " |",
            "|---|---|" + "---|" * len(frames),
        ]
        for row in summary["summary"]:
            k = "-" if row["k"] is None else str(row["k"])
            lines.append(
                f"| {row['algorithm']} | {k} | " + " | ".join(fmt(p, 1) for p in row["curve"]) + " |"
            )
    path.write_text("\n".join(lines) + "\n")


def maybe_plot(summary: dict, path: pathlib.Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for row in summary["summary"]:
        rs = [r for r in summary["runs"] if r["algorithm"] == row["algorithm"] and r["k"] == row["k"]]
        frames = sorted({f for r in rs for f, _ in r["curves"].get("eval_clean", [])})
        ms = [mean_std([value_at(r["curves"]["eval_clean"], f) for r in rs]) for f in frames]
        label = row["algorithm"] + ("" if row["k"] is None else f" k={row['k']}")
        ax.plot(frames, [m for m, _ in ms], label=label)
        ax.fill_between(frames, [m - s for m, s in ms], [m + s for m, s in ms], alpha=0.2)
    ax.set_xlabel("frames")
    ax.set_ylabel("clean eval return")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return True


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny smoke test (< 2 min)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--frames", type=int, default=None, help="max frames per run")
    p.add_argument("--task", choices=sorted(TASKS), default="vmas/navigation")
    p.add_argument("--n-agents", type=int, default=6)
    p.add_argument("--max-steps", type=int, default=100, help="episode length (BenchMARL VMAS default 100)")
    p.add_argument("--ks", nargs="+", default=["2", "n-2"], help="decpg k values ('n-2' allowed)")
    p.add_argument("--algorithms", nargs="+", default=["decpg", "mappo"], choices=["decpg", "mappo"])
    p.add_argument("--frames-per-batch", type=int, default=None)
    p.add_argument("--n-envs", type=int, default=None)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    p.add_argument("--mappo-lr", type=float, default=5e-4)
    p.add_argument("--mappo-normalize-advantage", choices=["auto", "on", "off"], default="auto",
                   help="auto: same as decpg.yaml's normalize_advantage")
    p.add_argument("--eval-interval", type=int, default=None, help="frames between BenchMARL evals")
    p.add_argument("--train-eval-episodes", type=int, default=32, help="paper: 32")
    p.add_argument("--final-eval-episodes", type=int, default=200)
    p.add_argument("--c", type=float, default=0.2)
    p.add_argument("--eps", type=float, default=0.2)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", type=pathlib.Path, default=REPO / "benchmarks" / "out" / "learning")
    p.add_argument("--results-dir", type=pathlib.Path, default=HERE)
    p.add_argument("--decpg-optimizer", choices=["sgd", "adam"], default=None,
                   help="override decpg.yaml's optimizer (control run; default: yaml, SGD)")
    p.add_argument("--decpg-lr", type=float, default=None,
                   help="constant decpg learning rate (sets lr = min_lr; control run)")
    p.add_argument("--force", action="store_true", help="redo runs that already have result.json")
    args = p.parse_args(argv)
    if args.quick:
        args.frames = args.frames or 1_200
        args.frames_per_batch = args.frames_per_batch or 300
        args.n_envs = args.n_envs or 12
        args.seeds = args.seeds if args.seeds != [0, 1, 2] else [0]
        args.final_eval_episodes = min(args.final_eval_episodes, 20)
        args.train_eval_episodes = min(args.train_eval_episodes, 8)
        if args.out == REPO / "benchmarks" / "out" / "learning":
            args.out = REPO / "benchmarks" / "out" / "learning_quick"
        if args.results_dir == HERE:
            args.results_dir = args.out
    args.frames = args.frames or 240_000
    args.frames_per_batch = args.frames_per_batch or 3_000
    args.n_envs = args.n_envs or 30
    if args.frames_per_batch % (args.n_envs * 1) or args.frames % args.frames_per_batch:
        p.error("frames must be a multiple of frames-per-batch, itself a multiple of n-envs")
    args.eval_interval = args.eval_interval or max(
        args.frames_per_batch, (args.frames // 10) // args.frames_per_batch * args.frames_per_batch
    )
    ks = []
    for k in args.ks:
        k = args.n_agents - int(k[2:]) if k.startswith("n-") else int(k)
        if k not in ks:
            ks.append(k)
    args.ks = ks
    args.code = code_fingerprint()
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    variants = []
    for algo in args.algorithms:
        variants += [(algo, k) for k in args.ks] if algo == "decpg" else [(algo, None)]
    print(f"sweep: {variants} x seeds {args.seeds}; {args.frames} frames each; out {args.out}", flush=True)
    t0 = time.time()
    results = []
    for seed in args.seeds:  # seed-major: a partial sweep still compares every variant
        for algo, k in variants:
            try:
                results.append(run_one(algo, k, seed, args, args.out))
            except Exception as err:  # keep the sweep going; report the failure
                import traceback

                traceback.print_exc()
                print(f"[fail] {algo} k={k} seed={seed}: {err!r}", flush=True)
            summary = summarise(results, args, time.time() - t0)
            (args.results_dir / "results.json").write_text(json.dumps(summary, indent=1))
            write_markdown(summary, args.results_dir / "results.md")
    summary = summarise(results, args, time.time() - t0)
    (args.results_dir / "results.json").write_text(json.dumps(summary, indent=1))
    write_markdown(summary, args.results_dir / "results.md")
    if maybe_plot(summary, args.results_dir / "curves.png"):
        print(f"wrote {args.results_dir / 'curves.png'}")
    print(f"wrote {args.results_dir / 'results.json'} and results.md in {(time.time() - t0) / 60:.1f} min")
    print((args.results_dir / "results.md").read_text())


if __name__ == "__main__":
    main()
