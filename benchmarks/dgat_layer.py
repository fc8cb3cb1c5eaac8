"""Cost of one D-GAT layer (forward + backward) against GATv2 and BenchMARL's per-agent Gnn.

What is timed, for ``n`` agents, a batch of ``B`` dense graphs ``(B, n, F)`` and
hidden size ``F`` (input = attention = output size, 1 head, self loops):

* ``gatv2``      PyG ``GATv2Conv`` with one shared parameter set, on the same
                 big block-diagonal graph (the lower bound: no per-agent work);
* ``dgat``       :class:`benchmarl_decentral.nn.DGATConv` with per-agent
                 parameters, ``value="linear"`` (same maths as GATv2, built by
                 ``from_gatv2`` and checked equal to it before timing);
* ``dgat-id``    the same layer with ``value="identity"`` (eq. 8 as written);
* ``bm-gnn``     ``benchmarl.models.Gnn`` (``GnnConfig(topology="full",
                 self_loops=True, gnn_class=GATv2Conv)``) with
                 ``share_params=False``: BenchMARL runs ``n`` full GATv2s on the
                 whole batch and keeps agent i's rows of the i-th.

Graphs: ``full`` (complete graph with self loops; the only topology BenchMARL's
Gnn supports here, its ``from_pos`` needs ``torch_cluster``) and ``radius``
(random positions in the unit square, radius ``--radius``, one graph per
sample; GATv2 and D-GAT only).

Each timed step is ``zero_grad`` + forward + ``out.square().mean().backward()``.
Repeats are interleaved (every repeat runs all methods, in a rotating order);
numbers are medians over ``--repeats`` after ``--warmup`` untimed repeats, of
CPU time (``time.process_time``: with one thread, the time the step computed,
unaffected by other jobs taking the core) and of wall-clock time.
Targets: (a) ``dgat / gatv2 <= 1.5``; (b) ``bm-gnn / dgat >= 5``.

Usage::

    python benchmarks/dgat_layer.py                 # n = 10, B = 1024, hidden 64 and 128
    python benchmarks/dgat_layer.py --quick         # smoke test, a few seconds
    python benchmarks/dgat_layer.py --repeats 30 --threads 0 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
from torch_geometric.nn.conv import GATv2Conv

from benchmarl_decentral.consensus.topology import radius
from benchmarl_decentral.nn import DGATConv
from _common import machine_info, markdown_table  # noqa: E402  (benchmarks/ is the script's folder)

METHODS = ("gatv2", "dgat", "dgat-id", "bm-gnn")




def block_edge_index(adj: torch.Tensor) -> torch.Tensor:
    """``(B, n, n)`` bool (i receives from j) -> PyG ``(2, E)`` of the block-diagonal big graph."""
    n = adj.shape[-1]
    g, i, j = adj.nonzero(as_tuple=True)
    return torch.stack([g * n + j, g * n + i])


def benchmarl_gnn(n: int, hidden: int):
    """BenchMARL's Gnn with per-agent parameters (``share_params=False``), GATv2 inside."""
    from benchmarl.models import GnnConfig
    from torchrl.data import Composite, Unbounded

    group = "agents"
    config = GnnConfig(
        topology="full",
        self_loops=True,
        gnn_class=GATv2Conv,
        gnn_kwargs={"heads": 1, "add_self_loops": True},
    )
    model = config.get_model(
        input_spec=Composite({group: Composite({"observation": Unbounded((n, hidden))}, shape=(n,))}),
        output_spec=Composite({group: Composite({"out": Unbounded((n, hidden))}, shape=(n,))}),
        agent_group=group,
        input_has_agent_dim=True,
        n_agents=n,
        centralised=False,
        share_params=False,
        device="cpu",
        action_spec=Composite(),
    )
    assert len(model.gnns) == n, "share_params=False must build one GNN per agent"
    return model, group


def build_case(graph: str, hidden: int, args: argparse.Namespace) -> tuple[dict[str, Callable[[], None]], dict]:
    """The step functions of every method for one (graph, hidden) case, on shared inputs."""
    n, batch = args.agents, args.batch
    torch.manual_seed(0)
    x = torch.randn(batch, n, hidden)
    if graph == "full":
        adj = ~torch.eye(n, dtype=torch.bool)  # layers add the self loops
        adj_b = adj.expand(batch, n, n)
    else:
        adj_b = radius(torch.rand(batch, n, 2), args.radius)
        adj = adj_b
    edge_index = block_edge_index(adj_b)  # without self loops: GATv2Conv adds them
    gatv2 = GATv2Conv(hidden, hidden, heads=1, add_self_loops=True)
    dgat = DGATConv.from_gatv2(gatv2, n)
    with torch.no_grad():  # untie the agents: timing must not depend on it, but be honest
        for p in dgat.parameters():
            p.add_(0.01 * torch.randn_like(p))
    dgat_id = DGATConv(hidden, hidden, n, value="identity")
    x_flat = x.reshape(-1, hidden)

    # sanity: with tied parameters D-GAT is GATv2 on this very graph
    with torch.no_grad():
        tied = DGATConv.from_gatv2(gatv2, n)
        err = (tied(x, adj).reshape(-1, hidden) - gatv2(x_flat, edge_index)).abs().max().item()
    assert err < 1e-4, f"D-GAT(from_gatv2) != GATv2Conv (max err {err})"

    def step(module: torch.nn.Module, fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        params = list(module.parameters())

        def run() -> None:
            for p in params:
                p.grad = None
            fn().square().mean().backward()

        return run

    steps = {
        "gatv2": step(gatv2, lambda: gatv2(x_flat, edge_index)),
        "dgat": step(dgat, lambda: dgat(x, adj)),
        "dgat-id": step(dgat_id, lambda: dgat_id(x, adj)),
    }
    if graph == "full" and not args.no_benchmarl:
        from tensordict import TensorDict

        model, group = benchmarl_gnn(n, hidden)
        td = TensorDict({group: TensorDict({"observation": x}, batch_size=[batch, n])}, batch_size=[batch])
        steps["bm-gnn"] = step(model, lambda: model(td.clone(False)).get((group, "out")))
    info = {
        "graph": graph,
        "hidden": hidden,
        "n_agents": n,
        "batch": batch,
        "edges_with_self_loops": int(edge_index.shape[1] + batch * n),
        "oracle_max_err": err,
    }
    return steps, info


def time_case(steps: dict[str, Callable[[], None]], args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Median CPU time (``time.process_time``) and wall time per method, in ms."""
    names = list(steps)
    cpu: dict[str, list[float]] = {k: [] for k in names}
    wall: dict[str, list[float]] = {k: [] for k in names}
    for r in range(args.warmup + args.repeats):
        order = names[r % len(names):] + names[: r % len(names)]  # rotate to spread drift
        for k in order:
            c, w = time.process_time(), time.perf_counter()
            steps[k]()
            dc, dw = time.process_time() - c, time.perf_counter() - w
            if r >= args.warmup:
                cpu[k].append(dc)
                wall[k].append(dw)
    med = statistics.median
    return {"cpu": {k: 1e3 * med(v) for k, v in cpu.items()}, "wall": {k: 1e3 * med(v) for k, v in wall.items()}}


def markdown(rows: list[dict], clock: str) -> str:
    headers = [
        "graph", "hidden", "edges", "GATv2 shared", "D-GAT linear", "D-GAT identity",
        "BenchMARL Gnn per-agent", "(a) D-GAT / GATv2", "(b) BenchMARL / D-GAT",
    ]
    cells = []
    for r in rows:
        ms = r[clock]
        bm = ms.get("bm-gnn")
        bm_ms = "n/a" if bm is None else f"{bm:.1f}"
        bm_ratio = "n/a" if bm is None else f"{bm / ms['dgat']:.1f}x"
        cells.append([
            r["graph"], r["hidden"], f"{r['edges_with_self_loops']:,}", f"{ms['gatv2']:.1f}",
            f"{ms['dgat']:.1f}", f"{ms['dgat-id']:.1f}", bm_ms,
            f"{ms['dgat'] / ms['gatv2']:.2f}x", bm_ratio,
        ])
    return markdown_table(headers, cells, left={"graph"})


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, default=10, help="agents per graph n")
    p.add_argument("--batch", type=int, default=1024, help="graphs per batch B")
    p.add_argument("--hidden", type=int, nargs="+", default=[64, 128], help="feature sizes F")
    p.add_argument("--graphs", nargs="+", default=["full", "radius"], choices=["full", "radius"])
    p.add_argument("--radius", type=float, default=0.4, help="communication radius for 'radius' graphs")
    p.add_argument("--repeats", type=int, default=15, help="timed repeats (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed repeats first")
    p.add_argument(
        "--threads", type=int, default=1,
        help="torch.set_num_threads, 0 = leave torch's default (1 by default: on a small shared "
        "machine more threads than free cores makes scatter kernels 10-100x slower)",
    )
    p.add_argument("--no-benchmarl", action="store_true", help="skip BenchMARL's Gnn (slowest)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    p.add_argument("--quick", action="store_true", help="tiny run for smoke tests (a few seconds)")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.hidden, args.repeats, args.warmup = 64, [16], 3, 1
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info()
    print(
        f"# D-GAT layer benchmark: n={args.agents}, batch={args.batch}, repeats={args.repeats} "
        f"(median), warmup={args.warmup}\n# torch {info['torch']}, threads={info['torch_threads']}, "
        f"nproc={info['nproc']}, cpu={info['cpu']}"
    )
    rows = []
    for graph in args.graphs:
        for hidden in args.hidden:
            steps, row = build_case(graph, hidden, args)
            row.update(time_case(steps, args))
            rows.append(row)
            print(f"#   done {graph} F={hidden}: " + ", ".join(f"{k} {v:.1f}" for k, v in row["cpu"].items())
                  + " (CPU ms)", flush=True)
    print("\nForward + backward, median CPU time per step (ms; robust to other jobs on the machine):\n")
    print(markdown(rows, "cpu"))
    print("\nSame runs, median wall-clock time (ms):\n")
    print(markdown(rows, "wall"))
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": info, "args": {k: str(v) for k, v in vars(args).items()},
                                         "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
