"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

import torch


#: Where the benchmark scripts write their JSON results (gitignored).
OUT_DIR = Path(__file__).resolve().parent / "out"


def write_result(name: str, result: dict, quick: bool = False) -> Path:
    """Write ``result`` to ``benchmarks/out/<name>[_quick].json``; returns the path."""
    OUT_DIR.mkdir(exist_ok=True)
    out = OUT_DIR / f"{name}{'_quick' if quick else ''}.json"
    out.write_text(json.dumps(result, indent=2))
    return out


def publish(name: str, title: str, result: dict, table: str, quick: bool = False) -> Path:
    """:func:`write_result`, then print ``# <title> (<machine>)``, ``table`` and the JSON's path.

    ``result["machine"]`` is :func:`machine_info`'s dict. Returns the path.
    """
    out = write_result(name, result, quick)
    m = result["machine"]
    print(f"\n# {title} ({m['cpu']}, {m['nproc']} cores, torch threads {m['torch_threads']})\n")
    print(table)
    print(f"\nJSON: {out}")
    return out


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, left: Collection[str] = ()) -> str:
    """A markdown table: a line of ``headers``, its alignment line, then a line per row.

    The cells come formatted by the caller (anything else is ``str()``-ed). Columns are
    right-aligned (numbers) but for those whose header is in ``left`` (text).
    """
    unknown = set(left) - set(headers)
    if unknown:
        raise ValueError(f"left names columns the table does not have: {sorted(unknown)}")
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" if h in left else "---:" for h in headers) + "|"]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"a row has {len(row)} cells for {len(headers)} columns: {row}")
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    return "\n".join(lines)


def machine_info() -> dict:
    """What the figures were measured on: cores, CPU model, versions, torch threads."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def experiment_config(args, save_folder: str, *, max_n_iters: int | None = None, **overrides):
    """A fresh BenchMARL ExperimentConfig for a timing run (an algorithm may edit the one it gets).

    The batch comes from ``args`` (``frames``, ``n_envs``, ``minibatch``,
    ``minibatch_iters``); ``max_n_iters`` defaults to ``args.warmup + args.iters``.
    No evaluation, logging, JSON, rendering or checkpoints, everything on CPU;
    ``overrides`` set any other field (e.g. ``evaluation=True``).
    """
    from benchmarl.experiment import ExperimentConfig

    cfg = ExperimentConfig.get_from_yaml()
    cfg.max_n_frames = None
    cfg.max_n_iters = args.warmup + args.iters if max_n_iters is None else max_n_iters
    cfg.on_policy_collected_frames_per_batch = args.frames
    cfg.on_policy_n_envs_per_worker = args.n_envs
    cfg.on_policy_minibatch_size = args.minibatch
    cfg.on_policy_n_minibatch_iters = args.minibatch_iters
    cfg.evaluation = False
    cfg.render = False
    cfg.loggers = []
    cfg.create_json = False
    cfg.checkpoint_interval = 0
    cfg.checkpoint_at_end = False
    cfg.save_folder = save_folder
    cfg.sampling_device = cfg.train_device = cfg.buffer_device = "cpu"
    for key, value in overrides.items():
        if not hasattr(cfg, key):
            raise AttributeError(f"ExperimentConfig has no field '{key}'")
        setattr(cfg, key, value)
    return cfg
