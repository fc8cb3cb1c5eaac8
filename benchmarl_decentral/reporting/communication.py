"""Communication cost of the runs (``comm/`` scalars of the csv logger) against their final score.

``decpg`` logs, per iteration, the bytes each agent sent
(``comm/train_bytes_per_agent``: consensus mixing;
``comm/train_network_bytes_per_agent``: the part that crossed a process
boundary; distributed runs also ``comm/env_bytes_per_agent``: the environment
interface); ``dg_mappo`` also ``comm/exec_bytes_per_agent``, its D-GAT messages
while acting (its training messages and their gradients are in ``train``) and, with ``algorithm.log_link_bytes=true``, the bytes of every link
(``comm/<group>/link_<i>_to_<j>/train_bytes``). The csv logger writes them as
``<run>/<run>/scalars/<key with / -> _>.csv``; this module reads them back:

* :func:`run_communication`: per run, the mean over its logged iterations of
  each kind, and their sum ``total`` (train + env: what an agent sends);
* :func:`link_rows`: per run and link, the mean bytes per iteration.

Runs without these scalars (other algorithms, or no csv logger) give nothing.
Numpy only.
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence

import numpy as np

from benchmarl_decentral.reporting.loading import Run, read_scalar_steps

#: The per-agent kinds, in table order: (csv stem, column, description).
KINDS = (
    ("comm_train_bytes_per_agent", "train", "consensus mixing (training)"),
    ("comm_train_network_bytes_per_agent", "train_network", "of which across processes"),
    ("comm_exec_bytes_per_agent", "exec", "D-GAT messages of execution (dg_mappo)"),
    ("comm_env_bytes_per_agent", "env", "environment interface (distributed runs)"),
)
LINK = re.compile(r"^comm_(?P<group>.+)_link_(?P<i>\d+)_to_(?P<j>\d+)_train_bytes$")


def _mean(path) -> tuple[Optional[float], int]:
    steps = read_scalar_steps(path, finite_only=True)
    if not steps:
        return None, 0
    return float(np.mean(list(steps.values()))), len(steps)


def run_communication(run: Run) -> Optional[dict]:
    """Mean bytes per agent and iteration of one run, by kind; None when it logged none.

    Returns:
        ``{"train", "train_network", "exec", "env", "total", "iterations"}``: each kind
        the mean of its logged iterations (None when not logged); ``total`` =
        train + exec + env (what one agent sends per iteration; network is part of
        train); ``iterations``: iterations of ``train``.
    """
    if run.scalars_dir is None:
        return None
    row: Dict[str, Optional[float]] = {}
    iterations = 0
    for stem, column, _ in KINDS:
        path = run.scalars_dir / f"{stem}.csv"
        value, n = _mean(path) if path.is_file() else (None, 0)
        row[column] = value
        if column == "train":
            iterations = n
    if row["train"] is None and row["env"] is None and row["exec"] is None:
        return None
    row["total"] = (row["train"] or 0.0) + (row["exec"] or 0.0) + (row["env"] or 0.0)
    row["iterations"] = iterations
    return row


def link_rows(run: Run) -> List[dict]:
    """Per link the run logged (``algorithm.log_link_bytes``): mean bytes per iteration.

    The mean is over the iterations of ``comm/train_bytes_per_agent`` (a link
    not logged in an iteration, e.g. of a visibility graph, carried nothing
    then); over the link's own logged iterations when that file is missing.
    """
    if run.scalars_dir is None:
        return []
    links = []
    for path in sorted(run.scalars_dir.glob("comm_*_link_*_to_*_train_bytes.csv")):
        match = LINK.match(path.stem)
        if match:
            links.append((match, path))
    if not links:
        return []
    train = run.scalars_dir / "comm_train_bytes_per_agent.csv"
    iterations = len(read_scalar_steps(train, finite_only=True)) if train.is_file() else 0
    rows = []
    for match, path in links:
        steps = read_scalar_steps(path, finite_only=True)
        if not steps:
            continue
        n = max(iterations, len(steps))
        rows.append({"group": match["group"], "sender": int(match["i"]), "receiver": int(match["j"]),
                     "iterations": n, "bytes_per_iteration": float(sum(steps.values())) / n})
    rows.sort(key=lambda r: (r["group"], r["sender"], r["receiver"]))
    return rows


def summarise(rows: Sequence[dict], keys: Sequence[str], values: Sequence[str]) -> List[dict]:
    """Mean and std over seeds of ``values`` per ``keys`` (rows: one per run); None where no run has a value."""
    groups: Dict[tuple, List[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    out = []
    for key, items in sorted(groups.items(), key=lambda kv: tuple(str(k) for k in kv[0])):
        summary = dict(zip(keys, key))
        summary["n_seeds"] = len(items)
        for name in values:
            present = np.asarray([r[name] for r in items if r.get(name) is not None], dtype=float)
            summary[name] = float(present.mean()) if present.size else None
            summary[f"{name}_std"] = float(present.std(ddof=1)) if present.size >= 2 else None
        out.append(summary)
    return out
