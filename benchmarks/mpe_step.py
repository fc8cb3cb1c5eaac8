"""MPE simple spread env-steps/s: the batched port (``mpe/simple_spread``) against BenchMARL's PettingZoo task.

Both are built from BenchMARL's task registry with the same config (``N`` agents, 25-step
episodes) and stepped with uniform random discrete actions, resetting finished episodes as a
collector does (``step_and_maybe_reset``):

* ``pettingzoo``  ``pettingzoo/simple_spread``: one PettingZoo world in TorchRL's
                  ``PettingZooEnv`` (BenchMARL runs several in a ``SerialEnv``, one at a time).
* ``port``        ``mpe/simple_spread``: ``--envs`` worlds stepped together in torch (float64).

Ratio = port / pettingzoo env-steps/s of the same run (one env-step = one world advanced by one
step). Medians over ``--repeats``.

Usage::

    python benchmarks/mpe_step.py                  # N = 8, 60 envs for the port
    python benchmarks/mpe_step.py --quick          # smoke test (few steps)

Writes a markdown table to stdout and JSON to ``benchmarks/out/mpe_step[_quick].json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import torch

import benchmarl_decentral  # noqa: F401  (registers mpe/simple_spread)
from _common import machine_info, markdown_table, publish  # noqa: E402  (benchmarks/ is the script's folder)


def _env(task_name: str, config: dict, num_envs: int):
    from benchmarl.environments import task_config_registry

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # pettingzoo.mpe -> mpe2 notice
        task = task_config_registry[task_name].get_from_yaml()  # the YAML's other keys (PettingZoo's task id)
        task.config.update(config)
        return task.get_env_fun(num_envs=num_envs, continuous_actions=False, seed=0, device="cpu")()


def steps_per_second(env, steps: int) -> float:
    """World-steps per second of ``env`` over ``steps`` batched steps (random actions, auto-reset)."""
    td = env.reset()
    worlds = max(1, env.batch_size.numel())
    tic = time.perf_counter()
    for _ in range(steps):
        td = env.rand_action(td)
        _, td = env.step_and_maybe_reset(td)
    return worlds * steps / (time.perf_counter() - tic)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--envs", type=int, default=60, help="worlds the port steps together")
    parser.add_argument("--steps", type=int, default=500, help="batched steps per timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.repeats = 30, 1
    config = {"N": args.agents, "local_ratio": 0.5, "max_cycles": 25}
    envs = {"pettingzoo": _env("pettingzoo/simple_spread", config, 1),
            "port": _env("mpe/simple_spread", config, args.envs)}
    for env in envs.values():  # warm-up
        steps_per_second(env, 5)
    rates = {name: statistics.median(steps_per_second(env, args.steps) for _ in range(args.repeats))
             for name, env in envs.items()}
    row = {"agents": args.agents, "port_envs": args.envs, "steps": args.steps, "repeats": args.repeats,
           "pettingzoo_steps_per_s": rates["pettingzoo"], "port_steps_per_s": rates["port"],
           "ratio_port_pettingzoo": rates["port"] / rates["pettingzoo"],
           "pettingzoo_ms_per_step": 1e3 / rates["pettingzoo"],
           "port_ms_per_batched_step": 1e3 * args.envs / rates["port"]}
    result = {"machine": machine_info(), "rows": [row]}
    table = markdown_table(
        ["N", "pettingzoo env-steps/s", "port env-steps/s (envs)", "ratio", "pettingzoo ms/step",
         "port ms/batched step"],
        [[args.agents, f"{rates['pettingzoo']:,.0f}", f"{rates['port']:,.0f} ({args.envs})",
          f"{row['ratio_port_pettingzoo']:.0f}x", f"{row['pettingzoo_ms_per_step']:.2f}",
          f"{row['port_ms_per_batched_step']:.2f}"]])
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        print(table)
    else:
        publish("mpe_step", "MPE simple spread env-steps/s", result, table, quick=args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
