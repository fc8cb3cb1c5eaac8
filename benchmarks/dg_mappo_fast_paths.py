"""CPU seconds of dg_mappo with its fast paths on vs off, interleaved in one process (issue 14, item 3).

dg_mappo as shipped (``topology: auto``: radius 1.5 on vmas/navigation) with
``--n-agents`` agents; one experiment, ``DgMappo.set_fast_paths(True/False)``
switched between rounds: a collection of ``--frames`` frames from
``--n-envs`` envs, then ``--steps`` minibatch optimizer steps, each timed in
CPU seconds of this process (``time.process_time``), so that a starved
process on a loaded machine still measures its own work. Small by default so
that it finishes on a busy 2-core machine.

Usage::

    python benchmarks/dg_mappo_fast_paths.py
    python benchmarks/dg_mappo_fast_paths.py --n-envs 60 --frames 6000 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings

import torch

import benchmarl_decentral  # noqa: F401  (registers dg_mappo with BenchMARL)
from dg_mappo_iteration import build, parse_args  # noqa: E402  (benchmarks/ is the script's folder)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-agents", type=int, default=4)
    p.add_argument("--frames", type=int, default=1200)
    p.add_argument("--n-envs", type=int, default=12)
    p.add_argument("--minibatch", type=int, default=400)
    p.add_argument("--steps", type=int, default=4, help="minibatch steps per round and setting")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    print(f"# load average at start {os.getloadavg()}", flush=True)
    exp_args = parse_args([
        "--n-agents", str(args.n_agents), "--frames", str(args.frames), "--n-envs", str(args.n_envs),
        "--minibatch", str(args.minibatch), "--minibatch-iters", "1",
        "--warmup", "0", "--iters", str(1 + 2 * args.rounds),  # the collector's frame budget
    ])
    exp = build("dg_mappo", exp_args, tempfile.mkdtemp(prefix="dg_mappo_fast_paths_"))
    group = next(iter(exp.group_map))
    batches = iter(exp.collector)
    batch = next(batches).exclude(*exp._get_excluded_keys(group))
    exp.replay_buffers[group].extend(exp.algorithm.process_batch(group, batch).reshape(-1))
    collection: dict[bool, list[float]] = {True: [], False: []}
    step: dict[bool, list[float]] = {True: [], False: []}
    for r in range(args.rounds):
        for on in (True, False):
            exp.algorithm.set_fast_paths(on)
            t = time.process_time()
            next(batches)
            collection[on].append(time.process_time() - t)
            for k in range(args.steps):
                t = time.process_time()
                exp._optimizer_loop(group)
                if r or k:  # the very first step of each setting warms up
                    step[on].append(time.process_time() - t)
    med = statistics.median
    result = {
        "collection_cpu_s": {str(k): v for k, v in collection.items()},
        "step_cpu_s": {str(k): v for k, v in step.items()},
        "collection_on_over_off": med(collection[True]) / med(collection[False]),
        "step_on_over_off": med(step[True]) / med(step[False]),
    }
    print(
        f"collection of {args.frames} frames ({args.n_envs} envs), CPU s (median of {args.rounds}): "
        f"fast paths on {med(collection[True]):.3f}, off {med(collection[False]):.3f}, "
        f"on/off {result['collection_on_over_off']:.2f}"
    )
    print(
        f"minibatch step ({args.minibatch} frames), CPU ms (median of {len(step[True])}): "
        f"on {1e3 * med(step[True]):.1f}, off {1e3 * med(step[False]):.1f}, on/off {result['step_on_over_off']:.2f}"
    )
    print(f"# load average at end {os.getloadavg()}", flush=True)
    exp.close()
    return result


if __name__ == "__main__":
    main()
