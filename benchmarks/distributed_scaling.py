"""Scaling of decpg, dg_mappo or matrpo with the number of agents: one process vs the distributed mode on 1, 2 and 4 ranks.

What is measured (issue 18, item 5): for ``n`` agents on a fixed-degree
topology (kNN ring, ``k=2``: every agent mixes with 2 neighbours, whatever
``n``), on CoordSum with ``n`` agents (``coordsum/8x15-100`` with
``task.n_agents=n``, ``obs_agent_id=false`` so that an agent's observation,
hence its actor, does not grow with ``n``), the algorithm (``--algorithm``:
decpg, or dg_mappo with its YAML defaults and the same static ring as its
D-GAT communication graph and D-SGD graph, eqs. 7-10, or matrpo with its
Table III defaults on the same ring as its ADMM links: 100 asynchronous
iterations, one random link each) trains for
``--warmup + --iters`` iterations in each mode:

* ``single``: the normal run, every agent stacked in one process
  (:class:`~benchmarl_decentral.distributed.InProcessTransport`);
* ``dist R`` (R = 1, 2, 4): R local gloo processes
  (:func:`~benchmarl_decentral.distributed.spawn_local`, as
  ``torchrun --nproc-per-node R``), each building the rank experiment of
  :func:`~benchmarl_decentral.distributed.experiment.build_rank_experiment`
  (its own copy of the environment, the action exchange, mixing through
  :class:`~benchmarl_decentral.distributed.TorchDistributedTransport`).
  ``R`` must divide ``n``.

Recorded per iteration: BenchMARL's ``timers/iteration_time`` (collection +
training), ``timers/training_time`` and the ``comm/`` scalars (bytes per agent:
``train`` = mixing (dg_mappo: also the D-GAT messages of training and their
gradients; matrpo: its ADMM link values, eq. 22), ``train_network`` = of those across processes, dg_mappo's
``exec`` = its D-GAT messages while acting and ``exec_network`` = of those
across processes, ``env`` = the action exchange). For a distributed run an
iteration's time is the slowest rank's (the ranks wait on each other's
messages); bytes are rank 0's agents'.
The first ``--warmup`` iterations are dropped; the whole grid runs ``--rounds``
times, the order of the modes rotated each round; the median over rounds of
each run's median is reported, with
ratios against the single-process run of the same ``n`` measured in the same
invocation (``time / single``) and the cost per agent
(``single time / n``) against the smallest ``n``.

Every process uses one torch thread. The ranks of one run share the
machine's cores with each other (and with anything else running: the load
average is recorded before and after), so on a 2-core machine ``dist 4``
is oversubscribed by design of the measurement: it shows the per-process
overhead, not a speed-up.

Usage::

    python benchmarks/distributed_scaling.py                 # n = 4, 8, 16, 32; single, dist 1, 2, 4
    python benchmarks/distributed_scaling.py --quick         # smoke test: n = 4, 8; single, dist 2
    python benchmarks/distributed_scaling.py --algorithm dg_mappo [--quick]
    python benchmarks/distributed_scaling.py --algorithm matrpo [--quick]

Writes a markdown table to stdout and JSON to
``benchmarks/out/distributed_scaling[_dg_mappo|_matrpo][_quick].json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, also in the spawned ranks

import benchmarl_decentral  # noqa: E402,F401  (registers decpg, dg_mappo and coordsum)
from _common import experiment_config, machine_info, markdown_table, write_result  # noqa: E402

TIMERS = ("iteration_time", "training_time", "collection_time")


@dataclass(frozen=True)
class Measured:
    """What differs between the algorithms: their config, ``comm/`` scalars and per-agent networks.

    Attributes:
        config: the algorithm's config, from its YAML, set to the kNN ring k=2.
        comm: ``(scalar, table header)`` per ``comm/<scalar>`` the algorithm
            logs (the env scalar comes from the action exchange of a
            distributed run; 0 in one process).
        networks: the per-agent networks of group ``agents`` by name, each
            a list of stacked leaves ``(n, ...)`` (their bytes per agent are
            the ``<name>_bytes`` of the results).
    """

    config: Callable[[], object]
    comm: tuple[tuple[str, str], ...]
    networks: Callable[[object], dict]


def _decpg_config():
    from benchmarl_decentral.algorithms import DecpgConfig

    algo = DecpgConfig.get_from_yaml()
    algo.k = 2
    algo.topology = "knn_ring"
    algo.evaluation_mode = "local"  # no evaluation runs here; the distributed mode's setting
    algo.perturbed_evaluation = False
    return algo


def _dg_mappo_config():
    from benchmarl_decentral.algorithms import DgMappoConfig

    algo = DgMappoConfig.get_from_yaml()  # D-SGD of D-GAT, actor and critic on the D-GAT graph (eqs. 9-10)
    algo.k = 2
    algo.topology = "knn_ring"  # static, so every step's graph and mixing matrix is the ring
    return algo


def _matrpo_config():
    from benchmarl_decentral.algorithms import TABLE_III_ADMM, MatrpoConfig

    # Table III's ADMM: asynchronous, one random link per iteration, 100 of them (a fixed traffic per update;
    # matrpo's default stops each link at its residual tolerance, so its traffic depends on the batch)
    algo = MatrpoConfig.get_from_yaml()
    for key, value in TABLE_III_ADMM.items():
        setattr(algo, key, value)
    algo.k = 2
    algo.topology = "knn_ring"
    return algo


def _matrpo_networks(algo) -> dict:
    """matrpo's per-agent networks: the joint policy model (its output grows with n: a head per agent) and the critic."""
    return {"actor": list(algo.policy_parameters("agents").values()), "critic": algo._critic_stacks["agents"].leaves}


#: per algorithm: decpg's train bytes are its mixing; dg_mappo's also its D-GAT messages of training and their
#: gradients, and it sends D-GAT messages while acting (exec); matrpo's its ADMM link values (eq. 22)
ALGORITHMS = {
    "decpg": Measured(
        _decpg_config,
        (("train_bytes_per_agent", "train bytes/agent"), ("train_network_bytes_per_agent", "network bytes/agent"),
         ("env_bytes_per_agent", "env bytes/agent")),
        lambda algo: {"actor": algo.actor_leaves("agents"), "critic": algo.critic_leaves("agents")},
    ),
    "dg_mappo": Measured(
        _dg_mappo_config,
        (("train_bytes_per_agent", "train bytes/agent"), ("train_network_bytes_per_agent", "train network bytes/agent"),
         ("exec_bytes_per_agent", "exec bytes/agent"), ("exec_network_bytes_per_agent", "exec network bytes/agent"),
         ("env_bytes_per_agent", "env bytes/agent")),
        lambda algo: algo.network_leaves("agents"),  # dgat, actor, critic
    ),
    "matrpo": Measured(
        _matrpo_config,
        (("train_bytes_per_agent", "ADMM bytes/agent"), ("train_network_bytes_per_agent", "ADMM network bytes/agent"),
         ("env_bytes_per_agent", "env bytes/agent")),
        _matrpo_networks,
    ),
}


def comm_names(args: argparse.Namespace) -> tuple[str, ...]:
    """The ``comm/`` scalars recorded for ``args.algorithm``."""
    return tuple(name for name, _ in ALGORITHMS[args.algorithm].comm)


def make_experiment(args: argparse.Namespace, n: int, save_folder: str):
    """``args.algorithm`` on CoordSum with ``n`` agents, kNN ring k=2, the batch of ``args``; the same on every rank."""
    from benchmarl.environments import task_config_registry
    from benchmarl.experiment import Experiment
    from benchmarl.models import MlpConfig

    task = task_config_registry["coordsum/8x15-100"].get_from_yaml()
    task.config.update(n_agents=n, obs_agent_id=False)
    algo = ALGORITHMS[args.algorithm].config()
    model = MlpConfig.get_from_yaml()
    model.num_cells = list(args.num_cells)
    return Experiment(task=task, algorithm_config=algo, model_config=model, critic_model_config=model,
                      seed=args.seed, config=experiment_config(args, save_folder))


def record(exp, comm: tuple[str, ...]) -> list[dict]:
    """Per iteration: BenchMARL's timers and the ``comm/`` scalars ``comm``, captured from ``experiment.logger.log``."""
    records: dict[int, dict] = {}
    log = exp.logger.log

    def recording_log(values: dict, step: int | None = None):
        it = records.setdefault(exp.n_iters_performed, {})
        for key, value in values.items():
            name = key.split("/", 1)[-1]
            if key.startswith("timers/") and name in TIMERS or key.startswith("comm/") and name in comm:
                it[name] = float(value)
        return log(values, step=step)

    exp.logger.log = recording_log
    return records


def sizes(args: argparse.Namespace, exp) -> dict:
    """Bytes of one agent's parameters per network, ``<network>_bytes``."""
    from benchmarl_decentral.distributed import bytes_per_agent

    networks = ALGORITHMS[args.algorithm].networks(exp.algorithm)
    return {f"{name}_bytes": bytes_per_agent(leaves) for name, leaves in networks.items()}


def train(args: argparse.Namespace, exp) -> list[dict]:
    records = record(exp, comm_names(args))
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():  # tqdm bar, NaN-episode warnings
        warnings.simplefilter("ignore")
        exp.run()
    return [records[k] for k in sorted(records) if "iteration_time" in records[k]]


def _rank(rank: int, world_size: int, args: argparse.Namespace, n: int, out: str) -> None:
    from benchmarl_decentral.distributed.experiment import build_rank_experiment

    with tempfile.TemporaryDirectory() as folder:
        exp = build_rank_experiment(lambda: make_experiment(args, n, folder), algorithm=args.algorithm,
                                    sizes={"agents": n})
        iterations = train(args, exp)
        Path(out, f"rank{rank}.json").write_text(json.dumps({"iterations": iterations, **sizes(args, exp)}))
        exp.close()


def run_single(args: argparse.Namespace, n: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        exp = make_experiment(args, n, folder)
        iterations = train(args, exp)
        result = {"iterations": iterations, **sizes(args, exp)}
        exp.close()
    return result


def run_distributed(args: argparse.Namespace, n: int, ranks: int) -> dict:
    from benchmarl_decentral.distributed import spawn_local

    with tempfile.TemporaryDirectory() as out:
        spawn_local(_rank, ranks, args, n, out, start_method="fork", timeout_s=600)
        per_rank = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(ranks)]
    iterations = []
    for its in zip(*(p["iterations"] for p in per_rank)):  # an iteration lasts as long as its slowest rank
        row = dict(its[0])  # bytes: rank 0's agents
        for timer in TIMERS:
            row[timer] = max(it[timer] for it in its)
        iterations.append(row)
    return {"iterations": iterations, **{k: v for k, v in per_rank[0].items() if k.endswith("_bytes")}}


def summarise(args: argparse.Namespace, result: dict) -> dict:
    kept = result["iterations"][args.warmup:]
    out = {name: statistics.median(it[name] for it in kept) for name in TIMERS}
    for name in comm_names(args):
        values = [it[name] for it in kept if name in it]
        out[name] = statistics.median(values) if values else 0.0
    out["n_iterations"] = len(kept)
    out.update((k, v) for k, v in result.items() if k.endswith("_bytes"))
    return out


def table(args: argparse.Namespace, rows: list[dict]) -> str:
    base = {r["n"]: r for r in rows if r["mode"] == "single"}
    first = {}  # per mode, its row at the smallest n
    for r in rows:
        first.setdefault(r["mode"], r)
    measured = ALGORITHMS[args.algorithm]
    networks = [key for key in rows[0] if key.endswith("_bytes")]  # actor_bytes, ... in the algorithm's order
    headers = [
        "n", "mode", "agents/rank", "iteration (s)", "/ single", "training (s)", "training per agent (ms)",
        "iteration per agent (ms)", "per agent / smallest n's", *(header for _, header in measured.comm),
        " + ".join(key.removesuffix("_bytes") for key in networks) + " bytes/agent",
    ]
    cells = []
    for r in rows:
        b, f = base[r["n"]], first[r["mode"]]
        per_agent = r["iteration_time"] / r["n"]
        cells.append([
            r["n"], r["mode"], r["n"] // r["ranks"], f"{r['iteration_time']:.2f}",
            f"{r['iteration_time'] / b['iteration_time']:.2f}", f"{r['training_time']:.2f}",
            f"{1000 * r['training_time'] / r['n']:.0f}", f"{1000 * per_agent:.0f}",
            f"{per_agent / (f['iteration_time'] / f['n']):.2f}",
            *(f"{r[name]:,.0f}" for name, _ in measured.comm), f"{int(sum(r[key] for key in networks)):,}",
        ])
    return markdown_table(headers, cells, left={"mode"})


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algorithm", choices=sorted(ALGORITHMS), default="decpg")
    parser.add_argument("--agents", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4], help="world sizes of the distributed runs")
    parser.add_argument("--frames", type=int, default=120, help="frames collected per iteration")
    parser.add_argument("--n-envs", dest="n_envs", type=int, default=2)
    parser.add_argument("--minibatch", type=int, default=60)
    parser.add_argument("--minibatch-iters", dest="minibatch_iters", type=int, default=2)
    parser.add_argument("--num-cells", dest="num_cells", type=int, nargs="+", default=[64, 64])
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=2, help="repeats of the whole grid, the order of the modes "
                        "rotated; the median over rounds is reported")
    parser.add_argument("--quick", action="store_true", help="n = 4, 8; 2 ranks; 1 + 1 iterations")
    args = parser.parse_args(argv)
    if args.quick:
        args.agents, args.ranks, args.warmup, args.iters, args.frames, args.rounds = [4, 8], [2], 1, 1, 60, 1
    bad = [(n, r) for n in args.agents for r in args.ranks if n % r]
    if bad or min(args.agents) < 3:
        parser.error(f"every --ranks value must divide every --agents value, and n >= 3 (k=2 ring); "
                     f"bad (n, ranks): {bad or args.agents}")
    return args


def main(argv=None) -> None:
    args = parse(argv)
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    start = time.time()
    runs: dict[tuple, list[dict]] = {}
    for round_ in range(args.rounds):
        for n in args.agents:
            modes = [("single", 1, lambda n=n: run_single(args, n))]
            modes += [(f"dist {r}", r, lambda n=n, r=r: run_distributed(args, n, r)) for r in args.ranks]
            shift = round_ % len(modes)  # rotate the order: a slow spell of the machine hits every mode
            for mode, ranks, run in modes[shift:] + modes[:shift]:
                summary = summarise(args, run())
                runs.setdefault((n, mode, ranks), []).append(summary)
                print(f"round {round_} n={n} {mode}: iteration {summary['iteration_time']:.2f} s",
                      file=sys.stderr, flush=True)
    rows = []
    order = sorted(runs, key=lambda key: (key[0], key[2], key[1] != "single"))  # n, then single, dist 1, 2, 4
    for n, mode, ranks in order:
        summaries = runs[(n, mode, ranks)]
        row = {"n": n, "mode": mode, "ranks": ranks, "rounds": summaries}
        for key in summaries[0]:  # the median over rounds of each run's median
            row[key] = statistics.median(s[key] for s in summaries)
        rows.append(row)
    result = {
        "config": {k: v for k, v in vars(args).items()},
        "machine": machine_info(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "wall_s": time.time() - start,
        "rows": rows,
    }
    name = "distributed_scaling" + ("" if args.algorithm == "decpg" else f"_{args.algorithm}")
    path = write_result(name, result, quick=args.quick)
    print(table(args, rows))
    print(f"\nload average (1, 5, 15 min) before {load_before}, after {result['load_average_after']}; "
          f"{result['wall_s']:.0f} s; JSON: {path}")


if __name__ == "__main__":
    main()
