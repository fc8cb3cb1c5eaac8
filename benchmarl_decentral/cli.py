"""The ``benchmarl`` console script (BenchMARL itself ships none).

``benchmarl run`` executes BenchMARL's own entry point (``benchmarl.run``) in
this process with the arguments given, so overrides and hydra flags are those
of ``python -m benchmarl.run ...``; the plugin is imported first, so our
algorithms, models and tasks are available by name. Two differences, for runs
that can be trusted (:mod:`benchmarl_decentral.runs`): ``run`` creates its
output folder itself (unique per process, removed when the run is refused),
and ``evaluate`` / ``resume`` check the checkpoint first and rebuild the run
from its own ``config.pkl`` (BenchMARL's ``Experiment.reload_from_file``)
instead of the ``.hydra`` folder that ``python -m benchmarl.evaluate|resume`` read.
"""

from __future__ import annotations

import os
import runpy
import sys
from typing import Callable, List, Optional

USAGE = """\
usage: benchmarl <command> [args]

Run, evaluate and resume BenchMARL experiments, with the algorithms, models and
tasks of benchmarl-decentral available next to BenchMARL's own.

commands:
  run       train: hydra overrides, exactly as `python -m benchmarl.run`
  evaluate  evaluate a checkpoint: as `python -m benchmarl.evaluate`
  resume    resume training from a checkpoint: as `python -m benchmarl.resume`
  list      what to type after algorithm=, task=, model= (* = ours; [extra] = not installed)
  benchmark sweep algorithms x tasks x seeds on a launcher; failed runs do not stop it, reruns resume it
  report    compare algorithms from result folders: IQM, CIs, probability of improvement, curves

examples:
  benchmarl run algorithm=decpg task=vmas/balance experiment.loggers=[csv]
  benchmarl run -m algorithm=decpg,mappo task=vmas/navigation seed=0,1,2 experiment.loggers=[csv]
  benchmarl evaluate outputs/<date>/<time>/<run>/checkpoints/checkpoint_300.pt
  benchmarl list
  benchmarl benchmark algorithm=decpg,mappo task=vmas/balance seed=0,1 --launcher joblib --jobs 2 --out bench
  benchmarl report multirun/<date>/<time> --out report

`benchmarl <command> --help` tells more about a command. An error is one line
naming the fix; add --debug (or set HYDRA_FULL_ERROR=1) for the traceback.
"""

RUN_HELP = """\
usage: benchmarl run [-m] [hydra overrides ...]

Train with BenchMARL's hydra app (`python -m benchmarl.run`), same overrides,
same output folders (outputs/ for a run, multirun/ with -m).

  algorithm=NAME        required: e.g. decpg, mappo, ippo (see `benchmarl list`)
  task=FAMILY/NAME      required: e.g. vmas/balance, pettingzoo/simple_spread
  model=layers/mlp      actor model (default); model@critic_model=layers/mlp for the critic
  seed=0                random seed
  algorithm.k=4         any field of the algorithm's YAML
  experiment.max_n_frames=120000  any field of BenchMARL's experiment config
  -m                    multirun: comma-separated values sweep, e.g.
                        -m algorithm=decpg,mappo seed=0,1,2

  experiment.loggers=[csv]  BenchMARL's default [csv, wandb] needs `pip install wandb`
  experiment.render=false   no evaluation video (faster)
  experiment.checkpoint_at_end=true  a checkpoint for `benchmarl evaluate` / `resume`

Hydra's own flags work too: --cfg job (print the composed config and exit),
--hydra-help, hydra.run.dir=...  --debug: the traceback of an error.

The run folder, outputs/<date>/<time> (multirun/... with -m), is created by
this command, atomically: <time>-2, <time>-3 ... when another run has taken
that second. A run that fails before training starts leaves no folder (one
given with hydra.run.dir= is kept).
"""

CHECKPOINT_HELP = """\
usage: benchmarl {cmd} CHECKPOINT_FILE

{what} the experiment saved in CHECKPOINT_FILE (a checkpoints/checkpoint_*.pt
of a run made with `benchmarl run` or `python -m benchmarl.run`). As
`python -m benchmarl.{cmd} FILE`, except that the file is checked first (one
message, nothing written, when it is missing, empty, truncated or not a
checkpoint) and the config is the run's own config.pkl (next to checkpoints/),
not the .hydra folder above it, which runs sharing an output folder overwrite.
resume keeps the run's results JSON one curve (evaluations up to the
checkpoint kept); evaluate writes <run>/evaluations/checkpoint_<frames>.json
(and a CSV folder beside it) and leaves the run's results unchanged.
"""

LIST_HELP = """\
usage: benchmarl list [algorithms|tasks|models]

List what can be passed as algorithm=, task= and model= (all three by
default), written as you type them (task=vmas/balance, model=layers/dgat).
Entries added by benchmarl-decentral are marked with *; tasks whose packages
are not installed here are marked [extra], and the end of the list says how
to install each.
"""

REPORT_HELP = """\
usage: benchmarl report FOLDER [FOLDER ...] [--out DIR] [--metric NAME] [--reps N] [--last-k K] [--no-reference] [--reference-cache FILE] [--cached-reference-only] [--reevaluate final,best] [--reevaluate-episodes N] [--reevaluate-modes greedy,sampled] [--reevaluation-cache FILE] [--cached-reevaluation-only] [--include-incomplete]

Compare algorithms on the results BenchMARL writes (<run>/<run>.json, written
when experiment.create_json=true, the default). Every FOLDER is searched at any
depth (single runs, multirun folders, JSON files); all runs found are merged.

Writes into DIR: report.md (tables + plots), the tables as CSV, and PNG plots:
  - per task: mean metric vs frames, 95% bootstrap CI over seeds
  - aggregate IQM / mean / median / optimality gap of min-max normalised final
    scores (per task), 95% stratified bootstrap CIs (rliable)
  - probability of improvement for every pair of algorithms, performance profiles
  - final consensus distance, generalization gap, perturbed-env return (and the
    other decentralised metrics), when the runs logged them with loggers=[csv]

  - reference policies per task (uniform random, zero action, scripted ones
    where registered) evaluated on the runs' own environment, as rows of the
    summary table and horizontal lines on the curves; normalised scores use
    random = 0; per algorithm and task a learning verdict ("above random with
    95% confidence"), and the reward each algorithm trained on

  --out DIR       output folder (default: report)
  --metric NAME   metric of the JSON files (default: return; per group: <group>_return)
  --reps N        bootstrap replications (default: 2000)
  --last-k K      the final score is the mean of the last K evaluations (default: the
                  fewest covering 50 episodes; 1: the last evaluation alone)
  --no-reference  no reference policies (nothing is evaluated)
  --reference-cache FILE   reference results cache (default: DIR/reference.json);
                  cached results are reused, never re-evaluated
  --cached-reference-only  use cached reference results only, evaluate nothing
  --reevaluate final,best  re-evaluate each run's checkpoints (written when it
                  trained with experiment.checkpoint_interval=<evaluation_interval>
                  experiment.keep_checkpoints_num=null): final = the last one,
                  best = the one at the highest logged evaluation return (optimistic:
                  chosen on the same noisy evaluations); a section of report.md and
                  DIR/reevaluation.csv. Runs without checkpoints are named in a note
  --reevaluate-episodes N  episodes per checkpoint and mode (default: 100)
  --reevaluate-modes greedy,sampled  deterministic and/or sampled actions (default: both)
  --reevaluation-cache FILE  re-evaluation CSV to reuse (default: DIR/reevaluation.csv);
                  its rows are reused, missing ones computed and written to it
  --cached-reevaluation-only  use cached re-evaluation rows only, evaluate nothing
  --include-incomplete  also read runs that did not finish (benchmark runs whose
                  status.yaml is not finished, *.json.incomplete); by default they
                  are left out and a note says how many

A resumed run is one curve; `benchmarl evaluate`'s results (<run>/evaluations/)
are not read.

Runs are scored up to the last evaluation common to all runs of a task; with one
seed, confidence intervals are reported as unavailable, and with fewer than 3
seeds no learning verdict is given. Exit status 2 when there
is nothing to report on (no results, unknown metric), with the reason.
Needs the report extra: pip install "benchmarl-decentral[report]".
"""

BENCHMARK_HELP = """\
usage: benchmarl benchmark [--launcher NAME] [--jobs N] [--out DIR] [--dry-run] OVERRIDES ...

Run every combination of the comma-separated values (algorithms x tasks x seeds
x any other swept key, ours and BenchMARL's mixed freely) as one hydra multirun
of BenchMARL's run app, on the launcher chosen here. Then compare with
`benchmarl report DIR`.

  algorithm=A,B,...     required (see `benchmarl list algorithms`)
  task=F/T,...          required (see `benchmarl list tasks`)
  seed=0,1,2            default seed=0
  any other override    as for `benchmarl run`, e.g. experiment.max_n_frames=300000,
                        algorithm.k=1,2 (swept), hydra.launcher.partition=gpu

  --launcher NAME       sequential (default: one run after the other, in this process)
                        joblib          local parallel runs (loky processes)
                        submitit_local  local submitit jobs, all at once
                        submitit_slurm  a Slurm job array (hydra.launcher.* sets partition, time ...)
                        ray             a Ray cluster (pip install hydra-ray-launcher)
                        joblib and submitit: pip install "benchmarl-decentral[launchers]"
  --jobs N              runs at a time (joblib: n_jobs, default all cores; submitit_slurm: array_parallelism)
  --out DIR             sweep folder (default: benchmark); run the same command again to resume
  --dry-run             print the runs (to run / already finished) and exit

Layout: DIR/benchmark.yaml (the plan), DIR/<env>/<task>/<algorithm>/<swept overrides,seed=N>/
with hydra's .hydra/ and log, status.yaml (running / finished / failed / interrupted, overrides,
timings), run.lock while the run runs, error.txt for a failed run, and BenchMARL's experiment
folder (<run>/<run>.json).

A run is finished when status.yaml says so and its BenchMARL JSON exists. A
failed run is reported with its error and the others go on; running the same
command again skips finished runs and runs the others (the JSON of an
unfinished attempt is renamed *.json.incomplete, so reports read finished runs
only). A run locked by another sweep (run.lock of a live process) is
skipped and reported as such; SIGTERM / Ctrl-C mark the running run
interrupted (status.yaml), and the sweep exits with 128 + the signal number.
Defaults that differ from `benchmarl run`: experiment.loggers=[csv],
experiment.render=false (override them if you want), experiment.create_json=true.
Progress: BenchMARL's tqdm bar per run and a "[benchmark] k/N runs done" line
after each run. Exit status: 0 when every run finished, 1 when some failed or
did not run, 2 on bad input (nothing is run).
"""


def _run_module(module: str, args: List[str]) -> int:
    import benchmarl_decentral  # noqa: F401  (registers our algorithms/models/tasks)

    spec_origin = __import__("importlib.util").util.find_spec(module).origin
    saved = sys.argv
    sys.argv = [spec_origin, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.argv = saved
    return 0


def _given_dir(args: List[str], key: str) -> Optional[str]:
    """The value of a ``key=...`` override in ``args`` (the last one), or None."""
    value = None
    for arg in args:
        if arg.lstrip("+").startswith(key + "="):
            value = arg.split("=", 1)[1]
    return value


def _run_in_own_folder(args: List[str]) -> int:
    """``benchmarl run``: BenchMARL's run app in a run folder of its own, none left when refused.

    Hydra names the folder after the second the run started
    (``outputs/<date>/<time>``, ``multirun/<date>/<time>`` with ``-m``), so runs
    started in the same second would share it (and its ``.hydra``). Unless
    ``hydra.run.dir`` / ``hydra.sweep.dir`` is given, the folder is created
    here, atomically (:func:`benchmarl_decentral.runs.claim_run_dir`), and passed
    to hydra. A single run that fails before training starts (a refused
    config, a task that cannot be built) leaves no folder: the one this command
    created is removed; a run that failed during training keeps it. A folder
    the user names (``hydra.run.dir=...``) is used as given and never removed.
    """
    from pathlib import Path

    from benchmarl_decentral import runs

    multirun = any(a in ("-m", "--multirun") for a in args)
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    if _given_dir(args, key) is not None:  # the user's folder: used as given, never removed
        return _run_module("benchmarl.run", args)
    root = Path("multirun" if multirun else "outputs")
    new_root = not root.exists()
    created = runs.claim_run_dir(root)
    # next to the user's overrides: hydra's argparse takes positional overrides in one block only
    last = max((i for i, a in enumerate(args) if "=" in a and not a.startswith("-")), default=-1)
    try:
        code = _run_module("benchmarl.run", [*args[:last + 1], f"{key}={created}", *args[last + 1:]])
    except BaseException as error:  # HYDRA_FULL_ERROR=1 makes hydra re-raise
        if _remove_if_untrained(created, root, new_root, 1, multirun):
            # told on the error's own line by `_guarded` (one line per error)
            error.removed_run_dir = str(created)  # type: ignore[attr-defined]
        raise
    if _remove_if_untrained(created, root, new_root, code, multirun) and code != 0:
        print(f"benchmarl run: nothing was trained; the run folder {created} was removed.", file=sys.stderr)
    return code


def _remove_if_untrained(created, root, new_root: bool, code: int, multirun: bool) -> bool:
    """Remove the run folder ``created`` when it is empty, or when its single run failed before training.

    Returns whether it was removed.
    """
    import shutil

    from benchmarl_decentral import runs

    if created.is_dir():
        if not any(created.iterdir()) or (code != 0 and not multirun and not runs.training_started()):
            shutil.rmtree(created, ignore_errors=True)
            # outputs/<date> (and outputs/ when this command made it): removed when left empty
            for parent in (created.parent, root) if new_root else (created.parent,):
                try:
                    parent.rmdir()
                except OSError:
                    break
            return True
    return False


def _checkpoint_command(command: str, checkpoint: str) -> int:
    """``benchmarl resume|evaluate FILE``: the checkpoint checked, its own run's config, then BenchMARL.

    Same as ``python -m benchmarl.resume|evaluate FILE`` except that (1) the
    checkpoint is checked before anything is read or written (one message for a
    missing, empty, truncated or foreign file) and (2) the config is the one
    BenchMARL pickled in the checkpoint's run folder (``config.pkl``), not the
    ``.hydra`` folder above it, which runs sharing an output folder overwrite.
    ``evaluate`` writes to ``<run>/evaluations/`` (see :mod:`benchmarl_decentral.runs`).
    """
    import benchmarl_decentral  # noqa: F401  (registers our algorithms/models/tasks)
    from benchmarl_decentral import runs

    try:
        experiment = runs.reload_experiment(checkpoint)
    except runs.CheckpointError as error:
        print(f"benchmarl {command}: {error}", file=sys.stderr)
        return 2
    if command == "resume":
        experiment.run()
    else:
        experiment.evaluate()
    return 0


def _list(what: Optional[str]) -> int:
    """``benchmarl list``: what to type after ``algorithm=``, ``task=``, ``model=``; tasks not installed marked."""
    import benchmarl_decentral._registry as ours
    from benchmarl.algorithms import algorithm_config_registry
    from benchmarl.environments import task_config_registry
    from benchmarl.models import model_config_registry

    from benchmarl_decentral.cli_checks import README_SMAC, smax_alternative, task_requirement

    sections = {
        "algorithms": ("algorithm=", algorithm_config_registry, set(ours.algorithm_configs()), ""),
        "tasks": ("task=", task_config_registry, set(ours.task_configs()), ""),
        "models": ("model=layers/", model_config_registry, set(ours.model_configs()),
                   "  (the critic: model@critic_model=layers/NAME)"),
    }
    if what is not None and what not in sections:
        print(f"benchmarl list: unknown section '{what}'; choose algorithms, tasks or models.", file=sys.stderr)
        return 2
    missing = {}  # requirement tag -> requirement
    for name, (prefix, registry, mine, note) in sections.items():
        if what is not None and name != what:
            continue
        print(f"{name}:{note}")
        width = min(max((len(prefix + entry) for entry in registry), default=0), 44)
        for entry in sorted(registry):
            needs = task_requirement(entry) if name == "tasks" else None
            tag = ""
            if needs is not None:
                missing[needs.tag] = needs
                tag = f"[{needs.tag}]"
            print(f"  {'*' if entry in mine else ' '} {prefix + entry:<{width}}  {tag}".rstrip())
    print("* = added by benchmarl-decentral")
    for tag, needs in sorted(missing.items()):
        if tag == "starcraft":
            print(f"[{tag}] not installed here: StarCraft II, SC2PATH and the smacv2 package ({README_SMAC}); "
                  f"without StarCraft: task={smax_alternative('smacv2/protoss_5_vs_5')} ... (smax extra)")
        else:
            print(f"[{tag}] not installed here: {needs.install}")
    return 0


def _report(args: List[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="benchmarl report", add_help=False, usage=REPORT_HELP.splitlines()[0][7:])
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--out", default="report")
    parser.add_argument("--metric", default="return")
    parser.add_argument("--reps", type=int, default=2000)
    parser.add_argument("--last-k", type=int, default=None)
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--reference-cache", default=None)
    parser.add_argument("--cached-reference-only", action="store_true")
    parser.add_argument("--reevaluate", default=None)
    parser.add_argument("--reevaluate-episodes", type=int, default=None)
    parser.add_argument("--reevaluate-modes", default=None)
    parser.add_argument("--reevaluation-cache", default=None)
    parser.add_argument("--cached-reevaluation-only", action="store_true")
    parser.add_argument("--include-incomplete", action="store_true")
    try:
        options = parser.parse_args(args)
    except SystemExit as exit_:  # argparse has printed the usage and the error
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        import matplotlib  # noqa: F401
        import rliable  # noqa: F401

        from benchmarl_decentral.reporting import ReportInputError, make_report
        from benchmarl_decentral.reporting.loading import including_incomplete
    except ImportError as error:
        print(f"benchmarl report: {error}. Install the report extra: "
              'pip install "benchmarl-decentral[report]"', file=sys.stderr)
        return 2
    command = " ".join(["benchmarl", "report", *args])
    try:
        with including_incomplete(options.include_incomplete):
            report = make_report(options.folders, out=options.out, metric=options.metric, reps=options.reps,
                                 command=command, last_k=options.last_k, reference=not options.no_reference,
                                 reference_cache=options.reference_cache,
                                 evaluate_reference=not options.cached_reference_only,
                                 reevaluate=options.reevaluate, reevaluate_episodes=options.reevaluate_episodes,
                                 reevaluate_modes=options.reevaluate_modes,
                                 reevaluation_cache=options.reevaluation_cache,
                                 evaluate_reevaluation=not options.cached_reevaluation_only)
    except ReportInputError as error:
        print(f"benchmarl report: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"benchmarl report: cannot write the report: {error}", file=sys.stderr)
        return 2
    scores = report.scores
    print(f"benchmarl report: {len(report.loaded.runs)} run(s), {len(scores.tasks)} task(s), "
          f"{len(scores.algorithms)} algorithm(s) ({', '.join(scores.algorithms)}); metric '{scores.metric}'.")
    for note in report.notes:
        print(f"  note: {note}")
    print(f"written: {report.markdown} (+ {len(report.files) - 1} CSV/PNG files in {report.out})")
    return 0


def _benchmark(args: List[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="benchmarl benchmark", add_help=False,
                                     usage=BENCHMARK_HELP.splitlines()[0][7:])
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--launcher", default="sequential")
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--out", default="benchmark")
    parser.add_argument("--dry-run", action="store_true")
    try:
        options, unknown = parser.parse_known_intermixed_args(args)
    except SystemExit as exit_:  # argparse has printed the usage and the error
        return exit_.code if isinstance(exit_.code, int) else 2
    from benchmarl_decentral import benchmark

    command = " ".join(["benchmarl", "benchmark", *args])
    try:
        unknown = [u for u in unknown if u not in ("-m", "--multirun")]  # a benchmark is always a multirun
        if unknown:
            raise benchmark.BenchmarkError(f"unknown option(s) {' '.join(unknown)}; see `benchmarl benchmark --help`.")
        plan = benchmark.plan_benchmark(options.overrides, out=options.out, launcher=options.launcher,
                                        jobs=options.jobs, command=command)
    except benchmark.BenchmarkError as error:
        print(f"benchmarl benchmark: {error}", file=sys.stderr)
        return 2
    print(benchmark.describe(plan), flush=True)
    if options.dry_run:
        return 0
    if not plan.to_run:
        if plan.busy:
            print(f"benchmark: nothing to run here: {len(plan.busy)} run(s) are running in another sweep; "
                  "run the same command again once it has ended.")
            return 1
        print(f"benchmark: every run is finished; compare them with: benchmarl report {plan.out}")
        return 0
    benchmark.write_plan(plan)
    code = benchmark.launch(plan)
    result = benchmark.outcome(plan)
    print(benchmark.summarise(plan, result), flush=True)
    if code != 0:
        print(f"benchmarl benchmark: hydra stopped the sweep (exit status {code}); see the messages above.",
              file=sys.stderr)
        return code if code > 128 else 1  # 128 + signal when a run was interrupted
    return 0 if result.ok else 1


def _dispatch(argv: List[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    command, args = argv[0], argv[1:]
    wants_help = any(a in ("-h", "--help") for a in args)
    if command == "run":
        if wants_help:
            print(RUN_HELP)
            return 0
        _preflight_run(args)
        return _run_in_own_folder(args)
    if command in ("evaluate", "resume"):
        what = "Evaluate" if command == "evaluate" else "Resume training of"
        if wants_help:
            print(CHECKPOINT_HELP.format(cmd=command, what=what))
            return 0
        if len(args) != 1:
            print(CHECKPOINT_HELP.format(cmd=command, what=what), file=sys.stderr)
            print(f"benchmarl {command}: expected one checkpoint file, got {len(args)} arguments.", file=sys.stderr)
            return 2
        return _checkpoint_command(command, args[0])
    if command == "list":
        if wants_help:
            print(LIST_HELP)
            return 0
        return _list(args[0] if args else None)
    if command == "benchmark":
        if wants_help:
            print(BENCHMARK_HELP)
            return 0
        return _benchmark(args)
    if command == "report":
        if wants_help:
            print(REPORT_HELP)
            return 0
        return _report(args)
    print(f"benchmarl: unknown command '{command}'.\n", file=sys.stderr)
    print(USAGE, file=sys.stderr)
    return 2


#: hydra flags with which `benchmarl run` prints something and trains nothing.
_HYDRA_NO_RUN_FLAGS = ("--cfg", "-c", "--info", "-i", "--hydra-help", "--shell-completion", "-sc", "--resolve")


def _preflight_run(args: List[str]) -> None:
    """Refuse a run whose task packages (or wandb logger) are missing, before hydra writes anything."""
    from benchmarl_decentral.cli_checks import CliError, preflight

    if any(a.split("=", 1)[0] in _HYDRA_NO_RUN_FLAGS for a in args):
        return  # hydra prints (config, help, info) and runs nothing: nothing is needed
    problem = preflight([a for a in args if a not in ("-m", "--multirun")])
    if problem is not None:
        raise CliError(problem)


def _guarded(command: str, args: List[str], call: Callable[[], int], *, debug: bool) -> int:
    """Run ``call``; an error becomes one line on stderr (the traceback with ``debug``).

    hydra prints an exception itself unless ``HYDRA_FULL_ERROR`` is set, so it
    is set while ``call`` runs: hydra then re-raises and the error reaches
    :func:`~benchmarl_decentral.cli_checks.explain`. Exit status 2 for bad
    input (a config, a name, a missing package), 1 for any other error.
    """
    from benchmarl_decentral.cli_checks import CliError, explain, is_bad_input, without_hydra_job_error

    saved = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        if debug:
            return call()
        with without_hydra_job_error():
            return call()
    except Exception as error:  # noqa: BLE001  (every error gets one line; --debug shows the traceback)
        if debug and not isinstance(error, CliError):  # a CliError is the whole story
            removed = getattr(error, "removed_run_dir", None)
            if removed:  # the one-line message leaves it out: the README says no folder is left
                print(f"benchmarl {command}: nothing was trained; the run folder {removed} was removed.",
                      file=sys.stderr)
            raise
        print(f"benchmarl {command}: {explain(error, args)}", file=sys.stderr)
        return 2 if is_bad_input(error) else 1
    finally:
        if saved is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved


def main(argv: Optional[List[str]] = None) -> int:
    """The ``benchmarl`` console script: ``benchmarl <command> [args] [--debug]``.

    ``run``, ``evaluate`` and ``resume`` report an error as one line naming
    the fix; ``--debug`` (anywhere on the line) or ``HYDRA_FULL_ERROR=1``
    shows the traceback instead.
    """
    from benchmarl_decentral.cli_checks import quiet

    quiet()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("HYDRA_FULL_ERROR", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if argv and argv[0] in ("run", "evaluate", "resume"):
        return _guarded(argv[0], argv[1:], lambda: _dispatch(argv), debug=debug)
    return _dispatch(argv)


if __name__ == "__main__":
    sys.exit(main())
