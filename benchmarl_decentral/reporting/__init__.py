"""rliable-based reports on BenchMARL results (``benchmarl report``).

- :mod:`.loading`: read BenchMARL's per-run JSON files (marl-eval format) and
  the csv logger's scalars; numpy only.
- :mod:`.stats`: frame alignment, min-max normalisation, rliable estimates
  (IQM / mean / median / optimality gap, probability of improvement,
  performance profiles, curves with bootstrap CIs), decentralised metrics.
- :mod:`.report`: :func:`make_report` writes report.md, CSV tables and PNG plots.
- :mod:`.reevaluation`: ``--reevaluate final,best``: runs' checkpoints replayed with
  greedy and sampled actions, cached in ``reevaluation.csv``.

rliable and matplotlib are imported when a statistic or a plot is computed:
install them with ``pip install "benchmarl-decentral[report]"``.
"""

from benchmarl_decentral.reporting.loading import (
    LoadResult,
    ReportInputError,
    Run,
    find_json_files,
    load_runs,
    parse_results,
    read_scalar,
)
from benchmarl_decentral.reporting.report import Report, build_report, make_report
from benchmarl_decentral.reporting.stats import (
    EXTRA_METRICS,
    ScoreSet,
    aggregate_estimates,
    collect_scores,
    curve_intervals,
    extra_metrics,
    normalise,
    performance_profiles,
    probability_of_improvement,
    score_matrices,
    task_table,
)

__all__ = [
    "EXTRA_METRICS",
    "LoadResult",
    "Report",
    "ReportInputError",
    "Run",
    "ScoreSet",
    "aggregate_estimates",
    "build_report",
    "collect_scores",
    "curve_intervals",
    "extra_metrics",
    "find_json_files",
    "load_runs",
    "make_report",
    "normalise",
    "parse_results",
    "performance_profiles",
    "probability_of_improvement",
    "read_scalar",
    "score_matrices",
    "task_table",
]

