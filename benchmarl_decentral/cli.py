"""The ``benchmarl`` console script (BenchMARL itself ships none).

``benchmarl run``, ``evaluate`` and ``resume`` execute BenchMARL's own entry
points (``benchmarl.run``, ``benchmarl.evaluate``, ``benchmarl.resume``) in this
process with the arguments given, so their semantics are exactly those of
``python -m benchmarl.run ...``; the plugin is imported first, so our
algorithms, models and tasks are available by name.
"""

from __future__ import annotations

import runpy
import sys
from typing import List, Optional

USAGE = """\
usage: benchmarl <command> [args]

Run, evaluate and resume BenchMARL experiments, with the algorithms, models and
tasks of benchmarl-decentral available next to BenchMARL's own.

commands:
  run       train: hydra overrides, exactly as `python -m benchmarl.run`
  evaluate  evaluate a checkpoint: as `python -m benchmarl.evaluate`
  resume    resume training from a checkpoint: as `python -m benchmarl.resume`
  list      list the algorithms, tasks and models available (* = benchmarl-decentral)

examples:
  benchmarl run algorithm=decpg task=vmas/balance
  benchmarl run -m algorithm=decpg,mappo task=vmas/navigation seed=0,1,2
  benchmarl evaluate outputs/<date>/<time>/<run>/checkpoints/checkpoint_300.pt
  benchmarl list

`benchmarl <command> --help` tells more about a command.
"""

RUN_HELP = """\
usage: benchmarl run [-m] [hydra overrides ...]

Train with BenchMARL's hydra app (`python -m benchmarl.run`), same overrides,
same output folders (outputs/ for a run, multirun/ with -m).

  algorithm=NAME        required: e.g. decpg, mappo, ippo (see `benchmarl list`)
  task=FAMILY/NAME      required: e.g. vmas/balance, pettingzoo/simple_spread
  model=layers/mlp      actor model (default), critic_model=... for the critic
  seed=0                random seed
  algorithm.k=4         any field of the algorithm's YAML
  experiment.max_n_frames=120000  any field of BenchMARL's experiment config
  -m                    multirun: comma-separated values sweep, e.g.
                        -m algorithm=decpg,mappo seed=0,1,2

Hydra's own flags work too: --cfg job (print the composed config and exit),
--hydra-help, hydra.run.dir=...
"""

CHECKPOINT_HELP = """\
usage: benchmarl {cmd} CHECKPOINT_FILE

{what} the experiment saved in CHECKPOINT_FILE (a checkpoints/checkpoint_*.pt
of a run made with `benchmarl run` or `python -m benchmarl.run`; its hydra
config is read from the run folder). Same as `python -m benchmarl.{cmd} FILE`.
"""

LIST_HELP = """\
usage: benchmarl list [algorithms|tasks|models]

List what can be passed as algorithm=, task= and model= (all three by
default). Entries added by benchmarl-decentral are marked with *.
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


def _list(what: Optional[str]) -> int:
    import benchmarl_decentral._registry as ours
    from benchmarl.algorithms import algorithm_config_registry
    from benchmarl.environments import task_config_registry
    from benchmarl.models import model_config_registry

    sections = {
        "algorithms": (algorithm_config_registry, set(ours.algorithm_configs())),
        "tasks": (task_config_registry, set(ours.task_configs())),
        "models": (model_config_registry, set(ours.model_configs())),
    }
    if what is not None and what not in sections:
        print(f"benchmarl list: unknown section '{what}'; choose algorithms, tasks or models.", file=sys.stderr)
        return 2
    for name, (registry, mine) in sections.items():
        if what is not None and name != what:
            continue
        print(f"{name}:")
        for entry in sorted(registry):
            print(f"  {'*' if entry in mine else ' '} {entry}")
    print("(* = added by benchmarl-decentral)")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    command, args = argv[0], argv[1:]
    wants_help = any(a in ("-h", "--help") for a in args)
    if command == "run":
        if wants_help:
            print(RUN_HELP)
            return 0
        return _run_module("benchmarl.run", args)
    if command in ("evaluate", "resume"):
        what = "Evaluate" if command == "evaluate" else "Resume training of"
        if wants_help:
            print(CHECKPOINT_HELP.format(cmd=command, what=what))
            return 0
        if len(args) != 1:
            print(CHECKPOINT_HELP.format(cmd=command, what=what), file=sys.stderr)
            print(f"benchmarl {command}: expected one checkpoint file, got {len(args)} arguments.", file=sys.stderr)
            return 2
        from pathlib import Path

        if not Path(args[0]).is_file():
            print(f"benchmarl {command}: checkpoint file not found: {args[0]}", file=sys.stderr)
            return 2
        return _run_module(f"benchmarl.{command}", args)
    if command == "list":
        if wants_help:
            print(LIST_HELP)
            return 0
        return _list(args[0] if args else None)
    print(f"benchmarl: unknown command '{command}'.\n", file=sys.stderr)
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
