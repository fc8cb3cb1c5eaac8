"""PNG plots of a report (matplotlib's Agg canvas; no pyplot, no global backend change)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from benchmarl_decentral.reporting.stats import AGGREGATE_TITLES, AGGREGATES, Profile, TaskScores


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(figure)
    return figure


def _colours(algorithms: List[str]) -> Dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {alg: cmap(i % 10) for i, alg in enumerate(sorted(algorithms))}


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path)
    return path


def plot_task_curves(task: TaskScores, metric: str, algorithms: List[str], path: Path,
                     references: Optional[Dict] = None) -> Path:
    """Mean metric vs frames per algorithm, 95% bootstrap CI band over seeds.

    ``references``: ``{policy: Reference}`` drawn as horizontal dashed lines with their CI band.
    """
    colours = _colours(algorithms)
    figure = _figure(6.0, 4.0)
    axes = figure.add_subplot(1, 1, 1)
    greys = ("black", "dimgrey", "darkgoldenrod", "purple", "teal")
    for i, (policy, ref) in enumerate(sorted((references or {}).items())):
        colour = greys[i % len(greys)]
        axes.axhline(ref.mean, color=colour, linestyle="--", linewidth=1.0, label=f"{policy} (reference)")
        if ref.ci_low is not None:
            axes.axhspan(ref.ci_low, ref.ci_high, color=colour, alpha=0.12, linewidth=0)
    for alg, curve in sorted(task.curves.items()):
        colour = colours[alg]
        n = len(curve.seeds)
        if curve.frames.size and curve.mean is not None:
            label = f"{alg} (n={n})" if curve.ci_low is not None else f"{alg} (n={n}, no CI)"
            axes.plot(curve.frames, curve.mean, color=colour, marker="o" if curve.frames.size < 3 else None,
                      label=label)
            if curve.ci_low is not None:
                axes.fill_between(curve.frames, curve.ci_low, curve.ci_high, color=colour, alpha=0.2, linewidth=0)
        else:  # seeds share no frame: each run on its own
            for i, (seed, frames, values) in enumerate(curve.per_run):
                axes.plot(frames, values, color=colour, alpha=0.7, linestyle="--",
                          label=f"{alg} (runs apart)" if i == 0 else None)
    if task.score_frame is not None:
        axes.axvline(task.score_frame, color="grey", linewidth=0.8, linestyle=":")
    axes.set_title(task.task_id)
    axes.set_xlabel("frames")
    axes.set_ylabel(f"{metric} (mean over seeds)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return _save(figure, path)


def _intervals(axes, labels, values, lows, highs, colours):
    y = np.arange(len(labels))
    for i, label in enumerate(labels):
        colour = colours[i]
        if lows[i] is not None:
            axes.barh(y[i], highs[i] - lows[i], left=lows[i], height=0.6, color=colour, alpha=0.5)
        axes.plot([values[i], values[i]], [y[i] - 0.3, y[i] + 0.3], color="black", linewidth=1.5)
        axes.plot([values[i]], [y[i]], marker="o", color=colour, markeredgecolor="black", markersize=5)
    finite = [v for v in list(values) + list(lows) + list(highs) if v is not None]
    axes.set_xlim(min([0.0] + finite) - 0.03, max([1.0] + finite) + 0.03)
    axes.set_ylim(-0.6, len(labels) - 0.4)
    axes.set_yticks(y)
    axes.set_yticklabels(labels)
    axes.grid(axis="x", alpha=0.3)


def plot_aggregates(rows: List[dict], path: Path) -> Path:
    """rliable-style interval plot: one panel per aggregate, one bar per algorithm."""
    algorithms = [row["algorithm"] for row in rows]
    colours = _colours(algorithms)
    figure = _figure(3.0 * len(AGGREGATES), 0.6 * len(rows) + 1.4)
    for k, name in enumerate(AGGREGATES):
        axes = figure.add_subplot(1, len(AGGREGATES), k + 1)
        _intervals(axes, algorithms, [r[name] for r in rows], [r[f"{name}_ci_low"] for r in rows],
                   [r[f"{name}_ci_high"] for r in rows], [colours[a] for a in algorithms])
        axes.set_title(AGGREGATE_TITLES[name])
        axes.set_xlabel("normalised score")
        if k:
            axes.set_yticklabels([])
    return _save(figure, path)


def plot_probability_of_improvement(rows: List[dict], path: Path) -> Path:
    rows = [r for r in rows if r["probability"] > 0.5 or (r["probability"] == 0.5 and r["x"] < r["y"])]
    rows.sort(key=lambda r: r["probability"])
    labels = [f"P({r['x']} > {r['y']})" for r in rows]
    figure = _figure(6.0, 0.5 * len(rows) + 1.2)
    axes = figure.add_subplot(1, 1, 1)
    _intervals(axes, labels, [r["probability"] for r in rows], [r["ci_low"] for r in rows],
               [r["ci_high"] for r in rows], ["tab:blue"] * len(rows))
    axes.axvline(0.5, color="grey", linestyle=":")
    axes.set_xlabel("probability of improvement")
    return _save(figure, path)


def plot_performance_profiles(profile: Profile, path: Path) -> Path:
    colours = _colours(list(profile.values))
    figure = _figure(6.0, 4.0)
    axes = figure.add_subplot(1, 1, 1)
    for alg, values in sorted(profile.values.items()):
        low: Optional[np.ndarray] = profile.ci_low[alg]
        axes.plot(profile.taus, values, color=colours[alg], drawstyle="steps-post",
                  label=alg if low is not None else f"{alg} (no CI)")
        if low is not None:
            axes.fill_between(profile.taus, low, profile.ci_high[alg], color=colours[alg], alpha=0.2, linewidth=0,
                              step="post")
    axes.set_xlabel(r"normalised score $\tau$")
    axes.set_ylabel(r"fraction of runs with score > $\tau$")
    axes.set_ylim(-0.02, 1.02)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return _save(figure, path)


def plot_communication(rows: List[dict], metric: str, path: Path) -> Path:
    """Bytes per agent and iteration (``total``) against the final score: one panel per task, one point per run.

    ``rows``: :func:`~benchmarl_decentral.reporting.communication.run_communication`
    rows with ``task``, ``algorithm`` and ``score``; runs without a score are left out.
    """
    rows = [r for r in rows if r["score"] is not None]
    tasks = sorted({r["task"] for r in rows})
    colours = _colours(sorted({r["algorithm"] for r in rows}))
    figure = _figure(4.5 * len(tasks), 3.8)
    for k, task in enumerate(tasks):
        axes = figure.add_subplot(1, len(tasks), k + 1)
        for alg in sorted({r["algorithm"] for r in rows if r["task"] == task}):
            points = [r for r in rows if r["task"] == task and r["algorithm"] == alg]
            axes.scatter([r["total"] for r in points], [r["score"] for r in points], color=colours[alg],
                         edgecolors="black", linewidths=0.5, label=f"{alg} (n={len(points)})")
        axes.set_title(task)
        axes.set_xlabel("bytes sent per agent per iteration")
        axes.set_ylabel(f"final {metric}")
        axes.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    return _save(figure, path)
