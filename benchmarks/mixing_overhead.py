"""Overhead of the DSGD consensus mixing hook on one optimizer step.

What is measured, for n stacked per-agent MLP actors (torchrl ``MultiAgentMLP``
with ``share_params=False``, i.e. every leaf has shape ``(n, ...)``, as in
``decpg``), an optimizer (``torch.optim.SGD`` or ``Adam``) and a minibatch of
``B`` frames x n agents:

* ``fb``        forward + backward of a policy-gradient surrogate loss;
* ``step``      ``optimizer.step()`` with no hook;
* ``step+mix``  ``optimizer.step()`` of a second optimizer on the same
                parameters with ``ConsensusMixer(...).attach(opt, when="pre")``
                (DecPG's ``mix_then_step``);
* ``mix``       the hook's cost: per repeat, ``(step+mix) - step`` on the same
                gradients (paired difference), median over repeats;
* ``mix direct`` ``ConsensusMixer.step()`` timed alone, as a cross-check.

Two ratios are reported against the baseline of the same run:
(a) ``mix / step`` (mixing relative to ``optimizer.step()`` alone) and
(b) ``mix / (fb + step)`` (relative to the full training step), the quantity
of the target "mixing <= 5% of the step".

Each repeat times both variants back to back, alternating which goes first;
numbers are medians over ``--repeats`` repeats after ``--warmup`` untimed ones.

Networks ("paper sizes"): ``paper64`` = 3 hidden layers of 64 (DecPG paper,
002_4f291ba56d03e11d.txt, Table 1: hidden size 64) and ``bm256`` = 2 x 256
(BenchMARL's default ``layers/mlp``). The mixing matrix is DecPG's default:
uniform weights on a kNN ring with ``k = 2``.

Usage::

    python benchmarks/mixing_overhead.py                     # full: n = 4 10 32, 50 repeats
    python benchmarks/mixing_overhead.py --agents 4 10 32 --repeats 50 --threads 1
    python benchmarks/mixing_overhead.py --quick             # smoke test, < 10 s

Writes a markdown table to stdout and JSON to ``benchmarks/out/mixing_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torchrl.modules import MultiAgentMLP

from benchmarl_decentral.consensus import ConsensusMixer, knn_ring
from _common import machine_info, markdown_table  # noqa: E402  (benchmarks/ is the script's folder)

OUT_DIR = Path(__file__).resolve().parent / "out"

#: name -> (depth, num_cells) of the MultiAgentMLP
NETWORKS = {
    "paper64": (3, 64),  # DecPG Table 1: hidden size 64 (3 linear layers before the GRU)
    "bm256": (2, 256),  # BenchMARL's default model: layers/mlp, num_cells [256, 256]
}
OPTIMIZERS = {
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr),
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
}




def ms(seconds: float) -> float:
    return 1e3 * seconds


def bench_one(n: int, net: str, opt_name: str, args: argparse.Namespace) -> dict:
    """Time fb, step and step+mix for one (n agents, network, optimizer)."""
    torch.manual_seed(0)
    depth, cells = NETWORKS[net]
    actor = MultiAgentMLP(
        n_agent_inputs=args.obs_dim,
        n_agent_outputs=args.n_actions,
        n_agents=n,
        centralized=False,
        share_params=False,
        depth=depth,
        num_cells=cells,
        activation_class=nn.Tanh,
    )
    leaves = list(actor.parameters())
    assert all(p.shape[0] == n for p in leaves), "leaves must be stacked on the agent dim"
    n_params = sum(p.numel() for p in leaves) // n

    plain = OPTIMIZERS[opt_name](leaves, args.lr)
    mixed = OPTIMIZERS[opt_name](leaves, args.lr)
    mixer = ConsensusMixer(leaves, adjacency=knn_ring(n, min(args.k, n - 1)), rule="uniform")
    mixer.attach(mixed, when="pre")

    obs = torch.randn(args.minibatch, n, args.obs_dim)
    actions = torch.randint(args.n_actions, (args.minibatch, n, 1))
    advantage = torch.randn(args.minibatch, n, 1)

    def forward_backward() -> None:
        for p in leaves:
            p.grad = None
        logp = torch.log_softmax(actor(obs), -1).gather(-1, actions)
        (-(logp * advantage).mean()).backward()

    def timed(fn) -> float:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    fb, step, step_mix, mix_diff, mix_direct = [], [], [], [], []
    for r in range(args.warmup + args.repeats):
        t_fb = timed(forward_backward)
        # same gradients for both steps; alternate the order to cancel cache effects
        if r % 2 == 0:
            t_plain, t_mixed = timed(plain.step), timed(mixed.step)
        else:
            t_mixed, t_plain = timed(mixed.step), timed(plain.step)
        t_direct = timed(mixer.step)
        if r >= args.warmup:
            fb.append(t_fb)
            step.append(t_plain)
            step_mix.append(t_mixed)
            mix_diff.append(t_mixed - t_plain)
            mix_direct.append(t_direct)

    med = statistics.median
    mix = max(med(mix_diff), 0.0)
    return {
        "n_agents": n,
        "network": net,
        "params_per_agent": n_params,
        "optimizer": opt_name,
        "minibatch_frames": args.minibatch,
        "fb_ms": ms(med(fb)),
        "step_ms": ms(med(step)),
        "step_mix_ms": ms(med(step_mix)),
        "mix_ms": ms(mix),
        "mix_direct_ms": ms(med(mix_direct)),
        "mix_over_step": mix / med(step),
        "mix_over_train_step": mix / (med(fb) + med(step)),
        "mix_direct_over_train_step": med(mix_direct) / (med(fb) + med(step)),
    }


def markdown(rows: list[dict]) -> str:
    headers = [
        "n", "network", "params/agent", "opt", "fb (ms)", "step (ms)", "step+mix (ms)",
        "mix (ms)", "mix direct (ms)", "(a) mix/step", "(b) mix/(fb+step)",
    ]
    cells = [
        [
            r["n_agents"], r["network"], f"{r['params_per_agent']:,}", r["optimizer"],
            f"{r['fb_ms']:.2f}", f"{r['step_ms']:.3f}", f"{r['step_mix_ms']:.3f}",
            f"{r['mix_ms']:.3f}", f"{r['mix_direct_ms']:.3f}",
            f"{100 * r['mix_over_step']:.0f}%", f"{100 * r['mix_over_train_step']:.1f}%",
        ]
        for r in rows
    ]
    return markdown_table(headers, cells, left={"network", "opt"})


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, nargs="+", default=[4, 10, 32], help="numbers of agents n")
    p.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    p.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
    p.add_argument("--repeats", type=int, default=50, help="timed repeats (median reported)")
    p.add_argument("--warmup", type=int, default=10, help="untimed repeats first")
    p.add_argument("--minibatch", type=int, default=400, help="frames per minibatch (x n agents)")
    p.add_argument("--obs-dim", type=int, default=18, help="per-agent observation size (simple_spread: 18)")
    p.add_argument("--n-actions", type=int, default=5, help="discrete actions (MPE: 5)")
    p.add_argument("--k", type=int, default=2, help="kNN-ring neighbours (decpg default: 2)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--threads", type=int, default=1,
        help="torch.set_num_threads (1 by default: stable on a small shared machine)",
    )
    p.add_argument("--out", type=Path, default=OUT_DIR / "mixing_overhead.json")
    p.add_argument("--quick", action="store_true", help="tiny run for tests (< 10 s)")
    args = p.parse_args(argv)
    if args.quick:
        args.agents, args.networks = [4], ["paper64"]
        args.repeats, args.warmup, args.minibatch = 5, 2, 64
        if args.out == OUT_DIR / "mixing_overhead.json":
            args.out = OUT_DIR / "mixing_overhead_quick.json"
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    info = machine_info()
    print(
        f"# mixing overhead: torch {info['torch']}, torch threads = {info['torch_threads']}, "
        f"nproc = {info['nproc']}, CPU = {info['cpu']}"
    )
    print(
        f"# minibatch = {args.minibatch} frames x n agents, obs dim {args.obs_dim}, "
        f"kNN ring k = {args.k}, {args.repeats} repeats after {args.warmup} warm-up (medians)\n",
        flush=True,
    )
    rows = []
    for n in args.agents:
        for net in args.networks:
            for opt_name in args.optimizers:
                rows.append(bench_one(n, net, opt_name, args))
    table = markdown(rows)
    print(table)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    result = {"machine": info, "settings": settings, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nJSON written to {args.out}")
    return result


if __name__ == "__main__":
    main()
