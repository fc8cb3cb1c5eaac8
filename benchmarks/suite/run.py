"""The results suite: a small, fixed comparison of our algorithms with BenchMARL's mappo and ippo.

One command runs every part (each a ``benchmarl benchmark`` sweep of
algorithms x 1 task x 3 seeds) and then ``benchmarl report`` on each part,
writing ``docs/results/`` (see benchmarks/suite/README.md)::

    python benchmarks/suite/run.py                  # every part, 2 runs at a time (--jobs 2)
    python benchmarks/suite/run.py --part decpg     # one part; the results of the others are kept
    python benchmarks/suite/run.py --list           # the parts, their budgets, and what is missing
    python benchmarks/suite/run.py --smoke          # tiny budgets, written under benchmarks/out/suite-smoke/
    python benchmarks/suite/run.py --profile gpu    # 10x the frames on CUDA: benchmarks/out/suite-gpu, docs/results-gpu
    python benchmarks/suite/run.py --report-only    # rewrite the reports from the run files archived in docs/results

Runs go to ``benchmarks/out/suite/<part>/`` (gitignored). Running the command
again resumes: finished runs are skipped (``benchmarl benchmark``'s rule), so
an interrupted suite goes on where it stopped. A part whose algorithm or task
is not registered in this install (or whose environment package is missing)
is skipped with a message naming what is missing.

Every algorithm of a part gets the same experiment config (:data:`COMMON`,
the part's frame budget, its task and the same reward definition) and its own
YAML defaults, unchanged. The finished runs' files are archived in
``docs/results/<part>/runs/`` and every report is made from that archive, so
``--report-only`` regenerates the reports byte for byte without the sweep
folders; each part's report has reference policies (cached in
``docs/results/<part>/reference.json``) and learning verdicts.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
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
from typing import Dict, List, Optional, Sequence, Tuple

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


#: Budget profiles: frames and evaluation interval of every part multiplied by ``scale`` (the
#: number of evaluations stays the same), plus device settings. ``cpu``: the committed results,
#: under two hours on 2 cores; ``gpu``: 10x the frames, training (and the torch-native simulators,
#: VMAS and CoordSum) on CUDA, for a machine with a GPU (not yet run on one).
PROFILES: Dict[str, dict] = {
    "cpu": {"scale": 1, "devices": [], "out": "suite", "docs": Path("docs") / "results"},
    "gpu": {"scale": 10, "devices": ["experiment.train_device=cuda", "experiment.buffer_device=cuda"],
            "out": "suite-gpu", "docs": Path("docs") / "results-gpu"},
}


@dataclass(frozen=True)
class Part:
    """One comparison: algorithms x one task x SEEDS, all with the same budget, experiment config and reward."""

    name: str
    claim: str  # the paper's claim this part looks at
    algorithms: Sequence[str]
    task: str
    task_overrides: Sequence[str]
    frames: int  # training frames per run (a multiple of the batch), cpu profile
    evaluation_interval: int  # frames between evaluations (a multiple of the batch), cpu profile
    est_minutes: float  # estimated wall time of the part with --jobs 2 on 2 cores (README), cpu profile
    requires_modules: Sequence[str] = field(default_factory=tuple)  # Python packages the task needs
    paper_frames: Optional[int] = None  # environment steps of the paper's runs for this claim (None: not stated)
    paper_budget: str = ""  # where paper_frames comes from
    gpu_sampling: bool = True  # the simulator is torch-native (VMAS, CoordSum): sample on CUDA in the gpu profile
    reward: str = ""  # the reward every algorithm of the part trains on
    rerun: str = ""  # why the committed results do not match this definition ("" when they do)
    previous_task_overrides: Optional[Sequence[str]] = None  # task overrides of the committed runs, when different
    #: experiment/algorithm settings of this part, the same for all its algorithms: an ``experiment.*`` key
    #: replaces COMMON's value of that key (e.g. a smaller batch for more policy iterations), other keys are added
    experiment_overrides: Sequence[str] = field(default_factory=tuple)
    #: the paper's claim as comparisons (x, relation, y) in the report's algorithm names: "better" (x above y)
    #: or "level" (x competitive with y: not worse); each gets a verdict from P(x > y) and its 95% CI
    claim_checks: Sequence[Tuple[str, str, str]] = field(default_factory=tuple)
    #: the same on a CSV scalar the runs log at every evaluation (``(scalar, x, relation, y)``, the scalar's file
    #: stem, e.g. ``eval_generalization_gap``): each run's score is its mean over the same last evaluations as the
    #: return's final score, higher is better
    scalar_checks: Sequence[Tuple[str, str, str, str]] = field(default_factory=tuple)
    #: keep a checkpoint at every evaluation (experiment.checkpoint_interval = the evaluation interval,
    #: all kept, no replay buffer), for re-evaluating the final and the best checkpoint after the runs
    checkpoints: bool = False
    #: ablation runs beside the part's algorithms, each ``(algorithm, "algorithm.key=value", ...)``: run with
    #: the part's budget, task and seeds by a second ``benchmarl benchmark`` into the same sweep folder, and
    #: named in the report by the settings that differ from the algorithm's defaults, e.g.
    #: ``dg_mappo[dgat_messages=zero]`` (``benchmarl_decentral.reporting.variants``)
    variants: Sequence[Tuple[str, ...]] = field(default_factory=tuple)

    def __post_init__(self):
        # BenchMARL refuses these only once a run starts (every run of the sweep then fails)
        batch = self.batch()
        for name in ("frames", "evaluation_interval"):
            value = getattr(self, name)
            if value % batch:
                raise ValueError(
                    f"results suite part {self.name}: {name}={value:,} is not a multiple of the part's batch "
                    f"(experiment.on_policy_collected_frames_per_batch={batch:,}); use e.g. "
                    f"{(value // batch + 1) * batch:,}."
                )

    def common(self) -> List[str]:
        """COMMON with this part's experiment settings in place (same key: the part's value wins)."""
        mine = {o.split("=", 1)[0]: o for o in self.experiment_overrides}
        common = [mine.pop(o.split("=", 1)[0], o) for o in COMMON]
        return common + list(mine.values())

    def batch(self) -> int:
        """Frames per training iteration (on_policy_collected_frames_per_batch) of this part."""
        key = "experiment.on_policy_collected_frames_per_batch="
        return int(next(o for o in self.common() if o.startswith(key))[len(key):])

    def budget(self, profile: str = "cpu") -> Tuple[int, int]:
        """(frames per run, evaluation interval) under ``profile``."""
        scale = PROFILES[profile]["scale"]
        return self.frames * scale, self.evaluation_interval * scale

    def paper_fraction(self, profile: str = "cpu") -> Optional[float]:
        return None if not self.paper_frames else self.budget(profile)[0] / self.paper_frames

    def overrides(self, smoke: bool, profile: str = "cpu") -> List[str]:
        if smoke:
            frames, interval = 400, 200
            smoke_keys = {o.split("=", 1)[0] for o in SMOKE}  # the part's settings, but the tiny batches
            common = SMOKE + [o for o in self.experiment_overrides if o.split("=", 1)[0] not in smoke_keys]
        else:
            frames, interval = self.budget(profile)
            common = self.common()
        budget = [f"experiment.max_n_frames={frames}", f"experiment.evaluation_interval={interval}"]
        if self.checkpoints:
            common = [o for o in common if not o.startswith("experiment.checkpoint_interval=")] + [
                f"experiment.checkpoint_interval={interval}", "experiment.keep_checkpoints_num=null",
                "experiment.exclude_buffer_from_checkpoint=true"]
        devices = list(PROFILES[profile]["devices"])
        if devices and self.gpu_sampling:
            devices.append("experiment.sampling_device=cuda")
        seeds = SMOKE_SEEDS if smoke else SEEDS
        return [f"algorithm={','.join(self.algorithms)}", f"task={self.task}", *self.task_overrides,
                f"seed={','.join(str(s) for s in seeds)}", *common, *budget, *devices]

    def names(self) -> List[str]:
        """The part's algorithms, then its variants as the report names them (``dg_mappo[dgat_messages=zero]``)."""
        return [*self.algorithms, *(f"{alg}[{','.join(o.split('.', 1)[1] for o in settings)}]"
                                    for alg, *settings in self.variants)]

    def variant_overrides(self, variant: Sequence[str], smoke: bool, profile: str = "cpu") -> List[str]:
        """:meth:`overrides` for one of :attr:`variants`: its algorithm, its settings in place of the part's.

        A variant of an algorithm that is not one of the part's (a baseline beside them) does not get the
        part's ``algorithm.*`` settings, which are keys of the part's algorithms' configs.
        """
        algorithm, *settings = variant
        keys = {o.split("=", 1)[0] for o in settings}
        foreign = algorithm not in self.algorithms
        rest = [o for o in self.overrides(smoke, profile)[1:] if o.split("=", 1)[0] not in keys
                and not (foreign and o.startswith("algorithm."))]
        return [f"algorithm={algorithm}", *rest, *settings]


#: MAGPO parts: the paper's evaluation protocol (sampled actions, paper 003's public code
#: ``evaluation_greedy: False``) for every algorithm, and the same exploration settings for all
#: (entropy bonus 0: BenchMARL's mappo and ippo default, and what learned best for magpo at this
#: budget, issue 19).
MAGPO_PROTOCOL = ("experiment.evaluation_deterministic_actions=false", "algorithm.entropy_coef=0.0")

_PARTS: Tuple[Part, ...] = (
    Part("decpg",
         "DecPG (paper 002): decentralized DSGD training matches centralized-critic MAPPO on MPE "
         "simple spread and generalizes better (eval_generalization_gap is logged for decpg)",
         ("decpg", "mappo", "ippo"), "pettingzoo/simple_spread", (),
         frames=36_000, evaluation_interval=12_000, est_minutes=9,
         paper_budget="paper 002 gives no step count for simple spread in its text",
         gpu_sampling=False,
         reward="every agent its own simple-spread reward (PettingZoo's per-agent rewards), for all three",
         claim_checks=(("decpg", "level", "mappo"),)),
    Part("dg_mappo",
         "DG-MAPPO (paper 000): per-agent D-GAT inference of the global state, fully decentralized, "
         "competitive with MAPPO's centralized critic on cooperative navigation; the D-GAT messages add "
         "return (ablation: the same dg_mappo with the other agents' messages zeroed, dgat_messages=zero)",
         ("dg_mappo", "mappo", "ippo"), "vmas/navigation", ("task.n_agents=4", "task.shared_rew=true"),
         # 72k frames (12 iterations) was where the D-GAT messages' early cost showed and 3 seeds could not
         # separate anything (benchmarks/learning/dg_mappo_sweep.md runs G); at 300k every algorithm learns
         # to within 20% of the scripted policy and seeds separate cleanly (runs H, I)
         frames=300_000, evaluation_interval=30_000, est_minutes=12, paper_frames=2_000_000,
         paper_budget="paper 000 has no navigation run; its smallest SMAC budget is 2e6 steps (3m, Table 3)",
         reward="the shared team reward (task.shared_rew=true) for all three: dg_mappo's team rule "
                "(mean over agents) leaves it unchanged",
         variants=(("dg_mappo", "algorithm.dgat_messages=zero"),),
         claim_checks=(("dgmappo", "level", "mappo"), ("dgmappo", "level", "ippo"),
                       ("dgmappo", "better", "dgmappo[dgat_messages=zero]"))),
    Part("matrpo",
         "MATRPO (paper 001): fully decentralized trust-region learning with private rewards beats "
         "independent learning when only one agent is rewarded and every agent's observation suffices to "
         "model the joint policy (Definition 1); here on private CoordSum (a coordinated team reaches a hit "
         "rate of 1.0), against BenchMARL's mappo and ippo as users get them: one policy network shared by "
         "the agents, which carries agent 0's reward to the others (matrpo_indep: per-agent baselines)",
         ("matrpo", "mappo", "ippo"), "coordsum_private/3x5-12", (),
         frames=150_000, evaluation_interval=30_000, est_minutes=42, paper_frames=5_000_000,
         paper_budget="paper 001: 5 million timesteps on MPE (sec. VI-B); 150 policy iterations of 1,000 frames "
                      "here, the paper runs 500 of 10,000",
         gpu_sampling=True,
         reward="the task's private rewards for all three (agent 0: CoordSum's hit reward; the others: 0); "
                "scored on the mean of the private returns = the team's hits per episode / n_agents",
         experiment_overrides=("experiment.on_policy_collected_frames_per_batch=1000",
                               "experiment.on_policy_n_envs_per_worker=10",
                               "experiment.on_policy_minibatch_size=250"),
         claim_checks=(("matrpo", "better", "ippo"), ("matrpo", "level", "mappo"))),
    Part("magpo",
         "MAGPO (paper 003): a centralized autoregressive guider lets decentralized learners coordinate "
         "on CoordSum, where independent policies struggle",
         ("magpo", "mappo", "ippo"), "coordsum/3x10-30", (),
         frames=180_000, evaluation_interval=30_000, est_minutes=6, paper_frames=20_000_000,
         paper_budget="paper 003: 20 million environment steps (sec. 5)",
         reward="CoordSum's shared team reward (hit reward) for all three",
         experiment_overrides=MAGPO_PROTOCOL, checkpoints=True,
         claim_checks=(("magpo", "better", "ippo"), ("magpo", "level", "mappo"))),
    Part("magpo_5x20",
         "MAGPO (paper 003, Table 2): ahead of MAPPO on CoordSum 5x20-80 (157.6 vs 142.5 at 20M steps; "
         "here at a few percent of that budget)",
         ("magpo", "mappo", "ippo"), "coordsum/5x20-80", ("task.mode=reference",),
         frames=1_020_000, evaluation_interval=102_000, est_minutes=30, paper_frames=20_000_000,
         paper_budget="paper 003: 20 million environment steps (sec. 5)",
         reward="CoordSum's shared team reward (hit reward) for all three, in the public code's task mode "
                "(task.mode=reference: the task behind the paper's Table 1-2 numbers)",
         previous_task_overrides=(),
         experiment_overrides=MAGPO_PROTOCOL, checkpoints=True,
         claim_checks=(("magpo", "better", "mappo"),)),
    Part("smax",
         "DG-MAPPO (paper 000) on SMAX 3m (JaxMARL's SMAC re-implementation, heuristic enemy): "
         "win rate and return against MAPPO (and IPPO: parameter sharing without the centralized critic)",
         ("dg_mappo", "mappo", "ippo"), "smax/3m", (),
         frames=60_000, evaluation_interval=12_000, est_minutes=5, requires_modules=("jax", "jaxmarl"),
         gpu_sampling=False,  # JAX simulates on the CPU (jax without CUDA); training on CUDA
         paper_frames=2_000_000, paper_budget="paper 000, Table 3: 2e6 steps on SMAC 3m",
         reward="SMAX's shared team reward for all three",
         claim_checks=(("dgmappo", "level", "mappo"), ("dgmappo", "level", "ippo"))),
    Part("smax_2s3z",
         "DG-MAPPO (paper 000) on SMAX 2s3z (2 stalkers + 3 zealots, heterogeneous units, heuristic enemy): "
         "win rate and return against MAPPO (and IPPO: parameter sharing without the centralized critic); "
         "ablation: the paper's SMAC clip (Table 3: 0.05)",
         ("dg_mappo", "mappo", "ippo"), "smax/2s3z", (),
         frames=180_000, evaluation_interval=30_000, est_minutes=8, requires_modules=("jax", "jaxmarl"),
         gpu_sampling=False,
         paper_frames=3_000_000,
         paper_budget="paper 000 has no 2s3z run; paper 001 trains SMAC maps (2s3z among them) for 3e6 steps",
         reward="SMAX's shared team reward for all",
         variants=(("dg_mappo", "algorithm.clip_epsilon=0.05"),),
         claim_checks=(("dgmappo", "level", "mappo"), ("dgmappo", "level", "ippo"))),
    Part("decpg_k",
         "DecPG (paper 002, sec. 5, Figs. 2-4): under one optimizer, parameter sharing (k = n - 1) against "
         "sparser DSGD graphs (k = 2, k = 0) on MPE simple spread with n = 8: the paper reports the generalization "
         "gap shrinking as k decreases on every simple spread n, and DecPG ahead of parameter sharing in test "
         "return for every n except 8 (and in training return except n = 8, 9); clean and perturbed returns "
         "and eval_generalization_gap are logged for all three",
         ("decpg_shared", "decpg", "decpg_k0"), "mpe/simple_spread", ("task.N=8",),
         # the paper's MPE task (PettingZoo's simple_spread_v3, 25-step episodes) in the batched port
         # (environments/mpe.py): BenchMARL's pettingzoo/simple_spread steps one Python world per env,
         # 2.6 ms per step at N = 8 (benchmarks/mpe_step.py), hours per part on 2 cores
         # at 360k frames decpg_k0 was still below the random policy (benchmarks/learning/decpg_k_mpe.md)
         frames=1_200_000, evaluation_interval=60_000, est_minutes=45,
         paper_budget="paper 002 gives no step count for simple spread in its text",
         reward="MPE simple spread's per-agent rewards (PettingZoo's simple_spread_v3, local_ratio 0.5: half the "
                "team's landmark-distance term, half the agent's own collisions), for all three",
         experiment_overrides=(
             # the paper's MPE action space (discrete; its test env replaces actions by random available ones)
             "experiment.prefer_continuous_actions=false",
             # Table 1: 32 evaluation episodes (training environment)
             "experiment.evaluation_episodes=32",
             # one optimizer for all three (Adam for the CPU budget; the paper: SGD, lr 1e-2 -> 1e-3, which
             # moves the policy far too slowly for this budget, issue 15), constant lr 2e-3: of 5e-4, 2e-3 and
             # 5e-3 the one that learned fastest without collapsing (benchmarks/learning/decpg_k_mpe.md)
             "algorithm.optimizer=adam", "algorithm.lr=0.002", "algorithm.min_lr=0.002",
         ),
         # BenchMARL's mappo and ippo beside them (one policy shared by the agents, as users get them), with the
         # same Adam learning rate: experiment.lr is theirs (decpg's is algorithm.lr)
         variants=(("mappo", "experiment.lr=0.002"), ("ippo", "experiment.lr=0.002")),
         claim_checks=(("decpg_shared", "level", "decpg"), ("decpg", "level", "decpg_k0")),
         # n = 8 is the paper's exception for the returns (parameter sharing not beaten, Figs. 2-3), not for the
         # gap (perturbed minus clean return; higher = less lost to the perturbations), which shrinks with k (Fig. 4)
         scalar_checks=(("eval_perturbed_reward_episode_reward_mean", "decpg_shared", "level", "decpg"),
                        ("eval_generalization_gap", "decpg", "better", "decpg_shared"),
                        ("eval_generalization_gap", "decpg_k0", "better", "decpg"))),
)


def _independent_baselines(part: Part) -> Part:
    """The same part with the baselines' policies per agent (``experiment.share_policy_params=false``)."""
    return dataclasses.replace(
        part, name=part.name + "_indep",
        claim=part.claim.split("; here on private CoordSum")[0] + "; here on private CoordSum, where independent "
        "learners are capped at a hit rate of about 0.2 (the unrewarded agents stay random) and a coordinated team "
        "reaches 1.0; the baselines' policies are per agent (experiment.share_policy_params=false, critics as "
        "BenchMARL's default), so ippo is independent learning as in the paper",
        experiment_overrides=(*part.experiment_overrides, "experiment.share_policy_params=false"))


PARTS: Dict[str, Part] = {}
for _part in _PARTS:
    PARTS[_part.name] = _part
    if _part.name == "matrpo":
        PARTS["matrpo_indep"] = _independent_baselines(_part)


# ------------------------------------------------------------------ checks
def missing(part: Part) -> List[str]:
    """What this install lacks to run ``part`` (empty when it can run)."""
    import benchmarl_decentral  # noqa: F401  (registers our algorithms and tasks)
    from benchmarl.algorithms import algorithm_config_registry
    from benchmarl.environments import task_config_registry

    names = dict.fromkeys([*part.algorithms, *(v[0] for v in part.variants)])
    lacks = [f"algorithm '{a}' is not registered" for a in names if a not in algorithm_config_registry]
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
def benchmark_commands(part: Part, out: Path, jobs: int, smoke: bool, profile: str = "cpu") -> List[List[str]]:
    """The part's ``benchmarl benchmark`` command, then one per ablation variant (same sweep folder)."""
    launcher = ["--launcher", "joblib", "--jobs", str(jobs)] if jobs > 1 else []
    sweeps = [part.overrides(smoke, profile)] + [part.variant_overrides(v, smoke, profile) for v in part.variants]
    return [["benchmarl", "benchmark", *overrides, *launcher, "--out", str(out)] for overrides in sweeps]


def run_part(part: Part, out: Path, jobs: int, smoke: bool, threads: int, profile: str = "cpu") -> dict:
    exe = Path(sys.executable).parent / "benchmarl"
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, str(threads))
    tic = time.perf_counter()
    commands, returncode = [], 0
    for command in benchmark_commands(part, out, jobs, smoke, profile):
        print(f"\n=== part {part.name}: {shlex.join(command)}", flush=True)
        result = subprocess.run([str(exe), *command[1:]], cwd=REPO, env=env)
        commands.append(shlex.join(command))
        returncode = returncode or result.returncode
    minutes = (time.perf_counter() - tic) / 60
    print(f"=== part {part.name}: exit status {returncode} after {minutes:.1f} min", flush=True)
    return {"command": " ; ".join(commands), "returncode": returncode, "minutes": round(minutes, 1),
            "threads": env["OMP_NUM_THREADS"]}


#: Files of a finished run kept in docs/results/<part>/runs/ (besides its BenchMARL JSON): enough for
#: `benchmarl report` to give the same numbers (configs for the reward and the reference policies,
#: the training return, the decentralised metrics), small enough to commit.
ARCHIVED_HYDRA = ("config.yaml", "overrides.yaml")
ARCHIVED_SCALARS = ("collection_reward_episode_reward_mean.csv", "counters_total_frames.csv")


def archive_runs(out: Path, archive: Path) -> int:
    """Copy the finished runs of a part's sweep folder into ``archive`` (committed); returns how many.

    Keeps BenchMARL's layout (``<job>/.hydra/``, ``<job>/status.yaml``,
    ``<job>/<exp>/<exp>.json``, ``<job>/<exp>/<exp>/scalars/``) so that
    ``benchmarl report ARCHIVE`` reads it as it reads the sweep. Runs that did
    not finish are left out. The archive is rebuilt from scratch, unless the
    sweep folder has no finished run (then it is left as it is).
    """
    import fnmatch
    import shutil

    import yaml

    from benchmarl_decentral.reporting.stats import EXTRA_METRICS

    finished = []
    for status_file in sorted(out.rglob("status.yaml")):
        status = yaml.safe_load(status_file.read_text()) or {}
        json_file = status_file.parent / str(status.get("json", ""))
        if status.get("state") == "finished" and status.get("json") and json_file.is_file():
            finished.append((status_file.parent, status, json_file))
    if not finished:  # nothing to archive: an archive made earlier stays as it is
        return 0
    if archive.exists():
        shutil.rmtree(archive)
    count = 0
    for job, status, json_file in finished:
        target = archive / job.relative_to(out)
        (target / ".hydra").mkdir(parents=True, exist_ok=True)
        keep = {k: v for k, v in status.items() if k not in ("pid", "host")}  # nothing machine-identifying
        (target / "status.yaml").write_text(yaml.safe_dump(keep, sort_keys=False))
        for name in ARCHIVED_HYDRA:
            if (job / ".hydra" / name).is_file():
                shutil.copy2(job / ".hydra" / name, target / ".hydra" / name)
        (target / json_file.relative_to(job)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(json_file, target / json_file.relative_to(job))
        scalars = json_file.parent / json_file.stem / "scalars"
        if scalars.is_dir():
            dest = target / scalars.relative_to(job)
            dest.mkdir(parents=True, exist_ok=True)
            for csv_file in sorted(scalars.glob("*.csv")):
                if csv_file.name in ARCHIVED_SCALARS or any(fnmatch.fnmatchcase(csv_file.stem, pattern)
                                                            for pattern, _ in EXTRA_METRICS):
                    shutil.copy2(csv_file, dest / csv_file.name)
        count += 1
    return count


class _InFolder:
    """Run a block with ``folder`` as the working directory (report paths relative to it)."""

    def __init__(self, folder: Path):
        self.folder, self.previous = folder, None

    def __enter__(self):
        self.previous = os.getcwd()
        os.chdir(self.folder)

    def __exit__(self, *exc):
        os.chdir(self.previous)


#: episodes per checkpoint and mode when a part's final and best checkpoints are re-evaluated
REEVALUATION_EPISODES = 100
REEVALUATION_EPISODES_SMOKE = 4


def reevaluate_part(part: Part, part_out: Path, docs: Path, smoke: bool) -> int:
    """Re-evaluate the final and the best checkpoint of every run in the part's sweep folder, greedy and
    sampled (``benchmarl report --reevaluate``), into ``docs/<part>/reevaluation.csv``; returns the rows.

    The checkpoints stay in the (uncommitted) sweep folder; the committed CSV is the cache that the part's
    report reads (:func:`report_part`), so ``--report-only`` reproduces the section without them.
    """
    from benchmarl_decentral.reporting import reevaluation
    from benchmarl_decentral.reporting.loading import load_runs

    episodes = REEVALUATION_EPISODES_SMOKE if smoke else REEVALUATION_EPISODES
    with _InFolder(docs):
        runs = load_runs([os.path.relpath(part_out, docs)]).runs
        options = reevaluation.parse_options("final,best", episodes, cache=f"{part.name}/{reevaluation.FILE_NAME}")
        result = reevaluation.reevaluate(runs, "return", options, Path(part.name))
        reevaluation.save(result, Path(part.name))
    for note in result.notes:
        print(f"=== part {part.name}: {note}", flush=True)
    return len(result.rows)


def archive_has_results(archive: Path) -> bool:
    """Whether a part's archive holds BenchMARL JSON results (``<job>/<exp>/<exp>.json``).

    Archives committed before ``.gitignore`` excluded ``docs/results*/`` from its
    ``*_mlp__*/`` rule (BenchMARL's run folders) hold only ``status.yaml`` and
    ``.hydra/`` per run in a fresh clone: ``benchmarl report`` cannot read them.
    """
    return any(json_file.parent.name == json_file.stem for json_file in archive.rglob("*.json"))


def report_part(part: Part, archive: Path, docs: Path, reps: int) -> Optional[str]:
    """``benchmarl report`` on one part's archived runs; returns the error, or None when it worked.

    Runs in ``docs`` with relative paths, so the report (runs.csv's sources
    included) does not depend on where the repository is; the reference
    policies come from ``docs/<part>/reference.json`` when it has them, and the
    re-evaluated checkpoints (parts with ``checkpoints``) from
    ``docs/<part>/reevaluation.csv`` (:func:`reevaluate_part`).
    """
    from benchmarl_decentral import cli
    from benchmarl_decentral.reporting.reevaluation import FILE_NAME

    extra: List[str] = []
    if part.checkpoints and (docs / part.name / FILE_NAME).is_file():
        extra = ["--reevaluate", "final,best", "--reevaluation-cache", f"{part.name}/{FILE_NAME}",
                 "--cached-reevaluation-only"]
    with _InFolder(docs):
        source = os.path.relpath(archive, docs)
        code = cli.main(["report", source, "--out", part.name, "--reps", str(reps), *extra])
    return None if code == 0 else f"benchmarl report {archive} exited with status {code} (message above)"


def part_setup(part: Part, legacy: bool = False):
    """The reference policies' TaskSetup of a part, from its composed BenchMARL config (no run needed).

    ``legacy``: with the task overrides of the committed runs (``previous_task_overrides``) when they differ.
    """
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    import benchmarl_decentral  # noqa: F401
    from benchmarl_decentral.reporting.reference import TaskSetup
    from benchmarl_decentral.reporting.scores import continuous_actions

    task_overrides = part.task_overrides
    if legacy and part.previous_task_overrides is not None:
        task_overrides = part.previous_task_overrides
    overrides = [f"algorithm={part.algorithms[0]}", f"task={part.task}", *task_overrides]
    with initialize_config_module(config_module="benchmarl.conf", version_base=None):
        cfg = OmegaConf.to_container(compose("config", overrides=overrides), resolve=True)
    continuous = continuous_actions(part.task, part.algorithms[0], cfg)
    return TaskSetup(part.task, dict(cfg["task"]), continuous)


def legacy_reference(part: Part, docs: Path, reps: int, seed: int = 0) -> List[dict]:
    """Reference rows for a part whose run files were not kept (its report predates the archive).

    Evaluates (or reads from ``docs/<part>/reference.json``) the reference
    policies on the part's task as defined in :data:`PARTS` with COMMON's
    evaluation episodes: for each seed, the episodes of the default final score.
    """
    from benchmarl_decentral.reporting.reference import ReferenceCache, reference_results
    from benchmarl_decentral.reporting.scores import default_last_k

    setup = part_setup(part, legacy=True)
    episodes = _evaluation_episodes()
    cache = ReferenceCache.load(docs / part.name / "reference.json")
    seeds = [f"seed_{s}" for s in SEEDS]
    refs, notes = reference_results({part.task: setup}, {part.task: seeds},
                                    {part.task: default_last_k(episodes) * episodes}, cache, True, reps, seed)
    for note in notes:
        print(f"  note: {note}")
    if cache.evaluated or set(cache.entries) != cache.used:
        cache.save()
    rows = []
    for policy, ref in refs.get(part.task, {}).items():
        rows.append({"task": part.task, "policy": policy, "description": ref.description, "seeds": len(ref.returns),
                     "episodes": ref.n_episodes, "mean": ref.mean,
                     "std": float(ref.episodes().std(ddof=1)) if ref.n_episodes > 1 else None,
                     "ci_low": ref.ci_low, "ci_high": ref.ci_high, "_episodes": ref.episodes()})
    return rows


def legacy_curves(part: Part, part_docs: Path, references: List[dict]) -> List[Path]:
    """Redraw a part's committed curve plots from its curves.csv, with the reference policies as lines.

    For parts whose run files were not kept: the curves (mean and 95% CI over
    seeds per evaluation) are those of the committed CSV, unchanged; only the
    reference lines are new.
    """
    from types import SimpleNamespace

    import numpy as np

    from benchmarl_decentral.reporting import plots
    from benchmarl_decentral.reporting.report import _slug
    from benchmarl_decentral.reporting.stats import Curve, TaskScores

    rows = _read_csv(part_docs / "curves.csv")
    written = []
    for task_id in sorted({r["task"] for r in rows}):
        curves = {}
        for alg in sorted({r["algorithm"] for r in rows if r["task"] == task_id}):
            points = sorted((int(r["frames"]), r) for r in rows if r["task"] == task_id and r["algorithm"] == alg)
            frames = np.asarray([f for f, _ in points], dtype=np.int64)
            n = int(points[0][1]["n_seeds"])
            has_ci = all(r["ci_low"] for _, r in points)
            curves[alg] = Curve([f"seed_{i}" for i in range(n)], frames, np.zeros((n, 0)), [],
                                np.asarray([float(r["mean"]) for _, r in points]),
                                np.asarray([float(r["ci_low"]) for _, r in points]) if has_ci else None,
                                np.asarray([float(r["ci_high"]) for _, r in points]) if has_ci else None)
        last = [int(r["score_frames"]) for r in _read_csv(part_docs / "runs.csv") if r.get("score_frames")]
        task = TaskScores(task_id, max(last) if last else None, {}, {}, {}, 0.0, 0.0, {}, curves)
        lines = {r["policy"]: SimpleNamespace(mean=r["mean"], ci_low=r["ci_low"], ci_high=r["ci_high"])
                 for r in references if r["task"] == task_id}
        path = part_docs / f"curves_{_slug(task_id)}.png"
        written.append(plots.plot_task_curves(task, "return", sorted(curves), path, lines))
    return written


def _evaluation_episodes() -> int:
    return int(next(o for o in COMMON if o.startswith("experiment.evaluation_episodes=")).split("=")[1])


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
PART_RECORD = "suite.json"


def write_part_record(part: Part, out: Path, archive: Path, docs: Path, profile: str, smoke: bool) -> Path:
    """docs/<part>/suite.json: how the part's archived runs were made (sweep, wall times, versions, machine)."""
    import json

    import yaml

    from benchmarl_decentral.benchmark import versions

    plan_file = out / "benchmark.yaml"
    plan = (yaml.safe_load(plan_file.read_text()) or {}) if plan_file.is_file() else {}
    stats = run_stats(archive)
    record = {
        "part": part.name, "task": part.task, "profile": "smoke" if smoke else profile,
        "sweep": str(plan.get("command", "")).replace(str(REPO) + os.sep, ""), "started": plan.get("started"),
        "runs": stats["states"],
        "minutes_per_run": {alg: round(sum(v) / len(v) / 60, 1) for alg, v in sorted(stats["seconds"].items())},
        "versions": versions(), "machine": machine(),
    }
    path = docs / part.name / PART_RECORD
    path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return path


def _read_record(docs: Path, part: Part) -> dict:
    import json

    path = docs / part.name / PART_RECORD
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _fraction(part: Part, profile: str) -> str:
    fraction = part.paper_fraction(profile)
    return "n/a" if fraction is None else f"{100 * fraction:.2g}%"


def _reference_lines(rows: List[dict]) -> List[str]:
    lines = []
    for row in rows:
        has_ci = row.get("ci_low") not in (None, "")
        ci = f"[{_fmt(row.get('ci_low'))}, {_fmt(row.get('ci_high'))}]" if has_ci else "n/a"
        lines.append(f"| *{row['policy']}* (reference: {row.get('description')}) | {row.get('episodes')} episodes "
                     f"| {_fmt(row.get('mean'))} ± {_fmt(row.get('std'))} | {ci} | | | | |")
    return lines


def _legacy_section(part: Part, part_docs: Path, references: List[dict], reps: int) -> List[str]:
    """Tables of a part whose runs were not kept: its old final-evaluation scores + fresh reference rows."""
    import numpy as np

    from benchmarl_decentral.reporting.scores import default_last_k, difference_ci, verdict

    k = default_last_k(_evaluation_episodes())
    random = next((r for r in references if r["policy"] == "random"), None)
    runs = _read_csv(part_docs / "runs.csv")
    curves = _read_csv(part_docs / "curves.csv")
    lines = ["| algorithm / policy | seeds | last evaluation: return mean ± std | 95% CI | "
             f"mean of the last {k} evaluations (curve) | above random (95%), last evaluation | "
             "last-evaluation minus random [95% CI] | trained on |",
             "|---|---:|---:|---|---:|---|---|---|"]
    for row in sorted(_read_csv(part_docs / "task_scores.csv"), key=lambda r: -float(r.get("mean") or "-inf")):
        alg = row["algorithm"]
        finals = np.asarray([float(r["score"]) for r in runs if r["algorithm"] == alg and r.get("score")])
        points = [(int(r["frames"]), float(r["mean"])) for r in curves if r["algorithm"] == alg]
        tail = [v for _, v in sorted(points)[-k:]]
        ci = f"[{_fmt(row.get('ci_low'))}, {_fmt(row.get('ci_high'))}]" if row.get("ci_low") else "n/a"
        if random is not None and finals.size:
            diff, low, high = difference_ci(finals, random["_episodes"], reps, 0)
            said, versus = verdict(finals.size, low), f"{_fmt(diff)} [{_fmt(low)}, {_fmt(high)}]"
        else:
            said, versus = "n/a (no reference)", "n/a"
        trained = _legacy_trained_on(part, alg)
        lines.append(f"| {alg} | {row.get('n_seeds')} | {_fmt(row.get('mean'))} ± {_fmt(row.get('std'))} | {ci} | "
                     f"{_fmt(np.mean(tail)) if tail else 'n/a'} ({len(tail)} evaluations x 3 seeds) | {said} | "
                     f"{versus} | {trained} |")
    lines += _reference_lines(references)
    return lines


def _legacy_trained_on(part: Part, alg: str) -> str:
    from benchmarl_decentral.reporting.scores import reward_used

    setup = part_setup(part, legacy=True)
    return reward_used(part.task, "dg_mappo" if alg == "dgmappo" else alg, setup.task_config, {})


def _verdict(x: str, relation: str, y: str, row: Optional[dict], learned: Dict[str, str], what: str = "") -> str:
    """One claim line from the P(x > y) row of a probability_of_improvement table (see :func:`claim_verdicts`)."""
    if row is None:
        return f"- {x} vs {y}{what}: no comparison in this report"
    p = float(row["probability"])
    low = float(row["ci_low"]) if row.get("ci_low") not in (None, "") else None
    high = float(row["ci_high"]) if row.get("ci_high") not in (None, "") else None
    stated = f"P({x} > {y}) = {_fmt(row['probability'])}" + (
        f" [{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}]" if low is not None else " (no CI)")
    if relation == "better":
        claim = f"{x} better than {y}{what}"
        said = ("confirmed" if low is not None and low > 0.5 else
                "contradicted" if high is not None and high < 0.5 else "not confirmed at this budget")
    else:
        claim = f"{x} competitive with {y}{what}"
        said = ("contradicted" if high is not None and high < 0.5 else
                f"not contradicted ({x} better)" if low is not None and low > 0.5 else
                "not contradicted (not told apart)")
    if p < 0.5 and said.startswith("not"):
        said += f"; {y} ahead on average"
    if learned.get(x) == "no" and learned.get(y) == "no":
        # neither learned: whatever P says compares two untrained policies
        return (f"- {claim}: **not tested at this budget: neither {x} nor {y} beat the random policy "
                f"(95%)**, {stated}")
    notes = [f"{alg} did not beat random (95%)" for alg in (x, y) if learned.get(alg) == "no"]
    return f"- {claim}: **{said}**, {stated}" + (f"; {', '.join(notes)}" if notes else "")


def claim_verdicts(part: Part, part_docs: Path, reps: int = 2000) -> List[str]:
    """One line per comparison of the part's claim: which way it went at this budget, from P(x > y).

    ``better``: confirmed when the 95% CI of P(x > y) is above 0.5, contradicted when it is below 0.5,
    otherwise not confirmed at this budget. ``level`` (x competitive with y): contradicted when the CI is
    below 0.5 (y better), otherwise not contradicted (x better when the CI is above 0.5). An algorithm that
    did not beat the random policy with 95% confidence is said so: its comparison shows little; when neither
    did, the comparison is "not tested at this budget". The part's :attr:`Part.scalar_checks` follow, on
    their scalars (:func:`scalar_scores`).
    """
    import numpy as np

    pairs = {(r["x"], r["y"]): r for r in _read_csv(part_docs / "probability_of_improvement.csv")}
    learned = {r["algorithm"]: r.get("above_random_95", "") for r in _read_csv(part_docs / "task_scores.csv")}
    lines = [_verdict(x, relation, y, pairs.get((x, y)), learned) for x, relation, y in part.claim_checks]
    if not part.scalar_checks:
        return lines
    from benchmarl_decentral.reporting.stats import probability_of_improvement

    all_scores = scalar_scores(part, part_docs / "runs", [c[0] for c in part.scalar_checks])
    for scalar, scores in all_scores.items():
        if not scores:
            lines.append(f"- `{scalar}`: not logged by the archived runs")
            continue
        rows = {(r["x"], r["y"]): r for r in probability_of_improvement(
            {alg: np.asarray(v, dtype=float).reshape(-1, 1) for alg, v in scores.items()}, reps=reps)}
        means = "; ".join(f"{alg} {_fmt(str(np.mean(v)))} ± {_fmt(str(np.std(v, ddof=1) if len(v) > 1 else 0.0))}"
                          for alg, v in sorted(scores.items()))
        for _, x, relation, y in (c for c in part.scalar_checks if c[0] == scalar):
            lines.append(_verdict(x, relation, y, rows.get((x, y)), learned, what=f" on `{scalar}`"))
        lines.append(f"  (`{scalar}`, mean ± std over seeds of each run's mean over its last "
                     f"{_last_k(part)} evaluations: {means})")
    return lines


def _last_k(part: Part) -> int:
    """Evaluations in the final-score window of ``part`` (the report's default for its episodes per evaluation)."""
    from benchmarl_decentral.reporting.scores import default_last_k

    key = "experiment.evaluation_episodes="
    return default_last_k(int(next(o for o in part.common() if o.startswith(key))[len(key):]))


def scalar_scores(part: Part, archive: Path, scalars: Sequence[str]) -> Dict[str, Dict[str, List[float]]]:
    """Per scalar (in the given order, once each) and algorithm, each archived run's mean of the scalar over its
    last :func:`_last_k` logged values; the archive is read once."""
    import numpy as np

    from benchmarl_decentral.reporting.loading import load_runs, read_scalar_steps

    scores: Dict[str, Dict[str, List[float]]] = {scalar: {} for scalar in scalars}
    if not archive.is_dir():
        return scores
    k = _last_k(part)
    for run in sorted(load_runs([archive]).runs, key=lambda r: (r.algorithm, r.seed)):
        for scalar, per_algorithm in scores.items():
            path = None if run.scalars_dir is None else run.scalars_dir / f"{scalar}.csv"
            steps = read_scalar_steps(path, finite_only=True) if path is not None and path.is_file() else {}
            if steps:
                tail = [steps[s] for s in sorted(steps)[-k:]]
                per_algorithm.setdefault(run.algorithm, []).append(float(np.mean(tail)))
    return scores


def _archived_section(part_docs: Path) -> List[str]:
    """Tables of a part reported from its archived runs (the new report's task_scores.csv)."""
    rows = _read_csv(part_docs / "task_scores.csv")
    if not rows:
        return []
    rule = rows[0].get("score_rule", "")
    lines = [f"Final score: {rule} (see the part's report).", "",
             "| algorithm / policy | seeds | final score mean ± std | 95% CI | training return | normalised "
             "| above random (95%) | trained on |", "|---|---:|---:|---|---:|---:|---|---|"]
    for row in sorted(rows, key=lambda r: -float(r.get("mean") or "-inf")):
        ci = f"[{_fmt(row.get('ci_low'))}, {_fmt(row.get('ci_high'))}]" if row.get("ci_low") else "n/a"
        lines.append(f"| {row['algorithm']} | {row.get('n_seeds')} | {_fmt(row.get('mean'))} ± {_fmt(row.get('std'))} "
                     f"| {ci} | {_fmt(row.get('train_return_mean'))} | {_fmt(row.get('normalised_mean'))} | "
                     f"{row.get('above_random_95')} | {row.get('trained_on')} |")
    refs = _read_csv(part_docs / "reference_scores.csv")
    lines += _reference_lines(refs)
    scored = sorted({r.get("scored_on") for r in rows if r.get("scored_on")})
    if scored:
        lines += ["", "Scored on: " + "; ".join(scored) + "."]
    return lines


def write_index(docs: Path, out_root: Path, argv: Sequence[str], runs: Dict[str, dict],
                skipped: Dict[str, List[str]], report_errors: Dict[str, str], smoke: bool, jobs: int,
                started: str, profile: str = "cpu", reps: int = 2000,
                references: Optional[Dict[str, List[dict]]] = None) -> Path:
    """docs/results/report.md: how the results were made, and one section per part."""
    from benchmarl_decentral.benchmark import versions
    from benchmarl_decentral.reporting import reevaluation

    references = references or {}
    info = machine()
    lines = ["# Results suite: our algorithms vs BenchMARL's mappo and ippo", ""]
    if smoke:
        lines += ["**SMOKE RUN: tiny budgets, the numbers mean nothing.**", ""]
    lines += [
        "Made by `benchmarks/suite/run.py` (see benchmarks/suite/README.md); regenerate with the command below.",
        "",
        f"- Command: `python benchmarks/suite/{Path(__file__).name} {shlex.join(argv)}`".rstrip() + f" (started {started})",
        f"- Profile: `{profile}` (frames x {PROFILES[profile]['scale']} of the cpu budgets)",
        f"- Versions (this report): {', '.join(f'{k} {v}' for k, v in versions().items())}",
        f"- Machine (this report): {info.get('cpu')}, {info.get('cores')} cores, {info.get('memory', '?')} RAM, "
        f"GPU: {info.get('gpu')}; {info.get('os')}",
        f"- Load average when the report was written (1, 5, 15 min): {load_average() or 'n/a'}"
        " (the machine may be shared: read wall times with that in mind)",
        "- Versions and machine of each part's runs: its `suite.json` (and its section below).",
        f"- Runs at a time: {jobs}; seeds {', '.join(map(str, SMOKE_SEEDS if smoke else SEEDS))}; every algorithm "
        "of a part has the same experiment config, budget and reward, and its own YAML defaults:",
        "",
        "```",
        *(SMOKE if smoke else COMMON),
        "```",
        "",
        "Result tables use BenchMARL's algorithm names (class names lowercased: `dgmappo` is `dg_mappo`). Every "
        "table has reference rows (uniform random, zero action, scripted policies where the task has one) and "
        "answers \"did it learn?\" (above random with 95% confidence) before \"which is better?\".",
        "",
        "| part | task | algorithms | frames per run | of the paper's budget | evaluation every | status "
        "| wall time (last invocation) |",
        "|---|---|---|---:|---:|---:|---|---|",
    ]
    for part in PARTS.values():
        part_docs = docs / part.name
        if part.name in skipped:
            status = "skipped: " + "; ".join(skipped[part.name])
        elif part.name in report_errors:
            status = f"no report: {report_errors[part.name]}"
        elif (part_docs / "report.md").is_file():
            record = _read_record(docs, part)
            status = f"[report]({part.name}/report.md); runs: " + ", ".join(
                f"{n} {s}" for s, n in sorted((record.get("runs") or {}).items()))
            if not (part_docs / "runs").is_dir():
                status += "; **run files not kept: rerun needed**"
            elif not archive_has_results(part_docs / "runs"):
                status += "; **run JSONs not in the archive: rerun to regenerate the report**"
        else:
            status = "not run yet"
        wall = f"{runs[part.name]['minutes']} min" if part.name in runs else ""
        frames, interval = part.budget(profile)
        frames_text = "400 (smoke)" if smoke else f"{frames:,}"
        interval_text = "200 (smoke)" if smoke else f"{interval:,}"
        lines.append(f"| {part.name} | `{part.task}` {' '.join(part.task_overrides)} | {', '.join(part.names())} "
                     f"| {frames_text} | {_fraction(part, profile)} | {interval_text} | {status} | {wall} |")

    for part in PARTS.values():
        part_docs = docs / part.name
        if not (part_docs / "report.md").is_file():
            continue
        record = _read_record(docs, part)
        archived = (part_docs / "runs").is_dir()
        lines += ["", f"## {part.name}: {part.task}", "", f"Claim looked at: {part.claim}.", "",
                  ("Budget: 400 frames per run (smoke)." if smoke else
                   f"Budget: {part.budget(profile)[0]:,} frames per run, {_fraction(part, profile)} of the paper's "
                   f"({part.paper_budget})."), "", f"Reward: {part.reward}.", ""]
        if part.rerun and not (part_docs / "runs").is_dir():
            lines[-2] = f"Reward, as the part is defined now (not the committed runs below, see there): {part.reward}."
        if record.get("sweep"):
            lines += [f"Sweep: `{record['sweep']}` (last invocation {record.get('started', '?')}).", ""]
        if record.get("machine"):
            m = record["machine"]
            lines += [f"Runs made with {', '.join(f'{k} {v}' for k, v in (record.get('versions') or {}).items())}; "
                      f"on {m.get('cpu')}, {m.get('cores')} cores, GPU: {m.get('gpu')}.", ""]
        if archived:
            if part.rerun:  # archived runs that no longer match the part's definition
                lines += [f"**Rerun needed:** {part.rerun}; the runs below are the committed ones.", ""]
            lines += _archived_section(part_docs)
            verdicts = claim_verdicts(part, part_docs, reps)
            if verdicts:
                lines += ["", "Which way the paper's claim went at this budget (3 seeds; P(x > y) over runs, "
                          "95% bootstrap CI):", *verdicts]
        else:
            lines += [f"**The run files of this part were not kept** (they predate the committed run archive): the "
                      "numbers below are its last report's (final score = the last evaluation, 10 episodes per run), "
                      "with the reference rows evaluated now on the task the runs used, the mean of the last "
                      "evaluations from the committed mean curve (no CI: per-seed curves were not kept), and the "
                      "learning verdict on the last-evaluation scores; its curve plot is redrawn from the "
                      "committed curves.csv with the reference lines. "
                      + (f"Rerun needed: {part.rerun}." if part.rerun else
                         "Rerun (`python benchmarks/suite/run.py --part " + part.name + "`) for the robust score, "
                         "its CI and the training return."), ""]
            lines += _legacy_section(part, part_docs, references.get(part.name, []), reps)
        lines.append("")
        win = [r for r in _read_csv(part_docs / "decentralised_metrics.csv")
               if r.get("metric") in ("eval_info_win_rate", "collection_info_win_rate")]
        if win:
            lines.append("Win rate at the last logged iteration (mean ± std over seeds): " + "; ".join(
                f"{r['algorithm']} {'evaluation' if r['metric'].startswith('eval') else 'collection'} "
                f"{_fmt(r.get('mean'))} ± {_fmt(r.get('std'))}"
                for r in sorted(win, key=lambda r: (r["metric"] != "eval_info_win_rate", r["algorithm"]))) + ".")
            lines.append("")
        final = {(r["algorithm"], r["mode"]): {**r, "std": r["std"] or 0.0} for r in reevaluation.summarise(
            reevaluation.read_rows(part_docs / reevaluation.FILE_NAME).values()) if r["which"] == "final"}
        if final:
            episodes = sorted({str(e) for r in final.values() for e in r["episodes"]})
            lines.append(f"Final checkpoint re-evaluated ({'/'.join(episodes)} episodes per seed and mode; mean ± std "
                         "over seeds; greedy / sampled actions): " + "; ".join(
                f"{alg} {_fmt(final[(alg, 'greedy')]['mean'])} ± {_fmt(final[(alg, 'greedy')]['std'])} / "
                f"{_fmt(final[(alg, 'sampled')]['mean'])} ± {_fmt(final[(alg, 'sampled')]['std'])}"
                for alg in sorted({a for a, _ in final}) if (alg, "greedy") in final and (alg, "sampled") in final)
                + f". The best checkpoint's are in [{part.name}/report.md]({part.name}/report.md).")
            lines.append("")
        if record.get("minutes_per_run"):
            lines.append("Wall time per run (min, mean over seeds): " + ", ".join(
                f"{alg} {v}" for alg, v in sorted(record["minutes_per_run"].items())) + ".")
            lines.append("")
        pairs = [r for r in _read_csv(part_docs / "probability_of_improvement.csv") if r.get("x") and r.get("y")]
        # each pair once, oriented so that P >= 0.5 (as report.md does)
        pairs = [r for r in pairs if float(r["probability"]) > 0.5
                 or (float(r["probability"]) == 0.5 and r["x"] < r["y"])]
        if pairs:
            lines.append("Probability of improvement (95% CI" + ("" if archived else ", last-evaluation scores")
                         + "): " + "; ".join(
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
    parser.add_argument("--profile", choices=list(PROFILES), default="cpu",
                        help="budgets: cpu (the committed results, under two hours on 2 cores) or gpu (10x the "
                             "frames, CUDA)")
    parser.add_argument("--out", type=Path, default=None,
                        help="sweep folders (default: benchmarks/out/suite[-gpu], or benchmarks/out/suite-smoke)")
    parser.add_argument("--docs", type=Path, default=None,
                        help="report folder (default: docs/results[-gpu], or <out>/docs with --smoke)")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap replications of the reports")
    parser.add_argument("--smoke", action="store_true", help="tiny budgets: check that the parts run, not results")
    parser.add_argument("--list", action="store_true", help="print the parts and what each needs, then exit")
    parser.add_argument("--report-only", action="store_true",
                        help="only (re)write the reports, from the run files archived in the docs folder")
    options = parser.parse_args(argv)
    if options.jobs < 1:
        parser.error("--jobs must be at least 1")
    profile = PROFILES[options.profile]
    default_out = "suite-smoke" if options.smoke else profile["out"]
    out_root = (options.out or REPO / "benchmarks" / "out" / default_out).resolve()
    docs = (options.docs or (out_root / "docs" if options.smoke else REPO / profile["docs"])).resolve()
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
            frames, _ = part.budget(options.profile)
            print(f"{part.name:10s} {part.task} x {', '.join(part.names())} x seeds {SEEDS}: "
                  f"{frames:,} frames/run ({_fraction(part, options.profile)} of the paper's), "
                  + (f"~{part.est_minutes:g} min with --jobs 2" if options.profile == "cpu" else "time not measured")
                  + f"  [{state}]")
        if options.profile == "cpu":
            print(f"estimated total (ready parts): "
                  f"~{sum(p.est_minutes for p in PARTS.values() if p.name not in skipped):g} min")
        return 0

    started = datetime.datetime.now().isoformat(timespec="seconds")
    runs: Dict[str, dict] = {}
    failures = 0
    if not options.report_only:
        for part in selected:
            if part.name in skipped:
                print(f"=== part {part.name}: skipped: {'; '.join(skipped[part.name])}", flush=True)
                continue
            runs[part.name] = run_part(part, out_root / part.name, options.jobs, options.smoke, threads,
                                       options.profile)
            failures += runs[part.name]["returncode"] != 0

    docs.mkdir(parents=True, exist_ok=True)
    report_errors: Dict[str, str] = {}
    references: Dict[str, List[dict]] = {}
    for part in PARTS.values():  # every part with results, so parts run at different times are merged
        part_out, part_docs = out_root / part.name, docs / part.name
        archive = part_docs / "runs"
        if part_out.is_dir() and not options.report_only:
            # (re)archive what the sweep folder holds; --report-only works from the committed archive alone
            part_docs.mkdir(parents=True, exist_ok=True)
            kept = archive_runs(part_out, archive)
            if part.name in runs or not (part_docs / PART_RECORD).is_file():  # the machine that ran them
                write_part_record(part, part_out, archive, docs, options.profile, options.smoke)
            print(f"=== part {part.name}: {kept} finished run(s) archived in {archive}", flush=True)
            if part.checkpoints and kept:
                rows = reevaluate_part(part, part_out, docs, options.smoke)
                print(f"=== part {part.name}: {rows} re-evaluation row(s) (final and best checkpoints, greedy and "
                      f"sampled) in {part_docs / 'reevaluation.csv'}", flush=True)
        if archive.is_dir() and not archive_has_results(archive):
            # archived before .gitignore let the run folders in: the committed report stays as it is
            print(f"=== part {part.name}: {archive} holds no run JSON (archived before the repository kept the "
                  "run folders); its committed report is kept. Rerun the part (--part "
                  f"{part.name}) to regenerate it.", flush=True)
        elif archive.is_dir():
            error = report_part(part, archive, docs, options.reps)
            if error:
                report_errors[part.name] = error
        elif (part_docs / "report.md").is_file() and part.name not in skipped:
            # a part reported before run files were archived: reference rows for its index section
            print(f"=== part {part.name}: no archived runs; reference policies for its committed results",
                  flush=True)
            references[part.name] = legacy_reference(part, docs, options.reps)
            _write_reference_csv(part_docs, references[part.name])
            legacy_curves(part, part_docs, references[part.name])
    index = write_index(docs, out_root, argv, runs, skipped, report_errors, options.smoke,
                        options.jobs, started, options.profile, options.reps, references)
    print(f"\nwritten: {index}")
    for name, lacks in skipped.items():
        if name in {p.name for p in selected}:
            print(f"skipped part {name}: {'; '.join(lacks)}")
    return 1 if failures or report_errors else 0


def _write_reference_csv(part_docs: Path, rows: List[dict]) -> None:
    columns = ["task", "policy", "description", "seeds", "episodes", "mean", "std", "ci_low", "ci_high"]
    with open(part_docs / "reference_scores.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else (repr(row[c]) if isinstance(row[c], float) else row[c])
                             for c in columns])


if __name__ == "__main__":
    sys.exit(main())
