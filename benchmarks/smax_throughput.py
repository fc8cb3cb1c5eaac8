"""SMAX env throughput: the TorchRL wrapper (``SmaxEnv``) against the raw JAX loop.

What is measured, per map and number of envs ``B`` (env-steps/s = ``B`` x steps / seconds);
every variant samples uniform legal actions from the current masks:

* ``raw``      the raw JAX loop driven by a torch policy, i.e. the same work as the
               wrapper without TorchRL: ``torch.multinomial`` on the masks, the
               actions handed to one ``jax.jit``-compiled function that steps the
               ``B`` games with JaxMARL's own ``vmap``-ped ``HeuristicEnemySMAX.step``
               (auto-reset included) and computes the next masks, then observations,
               masks, world state, rewards and dones taken back to torch by DLPack.
               This is the ratio's denominator (the issue's "jit+vmap step with a
               torch policy").
* ``wrapper``  ``SmaxEnv`` driven as a TorchRL collector drives it: the same torch
               policy on ``("agents", "action_mask")``, then ``env.step_and_maybe_reset``
               (DLPack transfers, TensorDicts, the action-mask check, TorchRL's partial
               resets of finished envs).
* ``floor``    the wrapper loop with SMAX's jitted step replaced by returning cached
               outputs (3% of envs finishing per step): what TorchRL's
               ``step_and_maybe_reset`` and the policy cost by themselves, i.e. the part
               of the gap no env implementation can remove.
* ``raw jax policy`` / ``fused`` (references, full mode only): actions sampled
               inside the jitted step; and that step inside ``jax.lax.scan`` over all
               steps (one dispatch, what pure-JAX training loops reach).

Ratio = wrapper / raw of the same run (target >= 0.80). Each repeat times the
variants back to back after compilation and warm-up; medians over ``--repeats``.
Env options are the task defaults (see_enemy_actions, walls_cause_death,
attack_mode=closest, 100-step limit).

Usage::

    python benchmarks/smax_throughput.py                   # 3m and smacv2_5_units, B = 64 512
    python benchmarks/smax_throughput.py --maps 3m --envs 64 512 --steps 200 --repeats 5
    python benchmarks/smax_throughput.py --quick            # smoke test: 3m, B = 64, no references

Writes a markdown table to stdout and JSON to ``benchmarks/out/smax_throughput[_quick].json``.
Set ``JAX_COMPILATION_CACHE_DIR`` to reuse compiled steps across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import types
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import torch

from benchmarl_decentral.environments.smax import SmaxEnv, _import_smax
from _common import machine_info  # noqa: E402  (benchmarks/ is the script's folder)

OUT_DIR = Path(__file__).resolve().parent / "out"


def make_raw(map_name: str, num_envs: int, seed: int = 0) -> SimpleNamespace:
    """The raw JAX loop's jitted functions and initial carry ``(key, state, masks)``."""
    jax, jnp, HeuristicEnemySMAX, map_name_to_scenario = _import_smax()
    game = HeuristicEnemySMAX(
        scenario=map_name_to_scenario(map_name), see_enemy_actions=True, walls_cause_death=True,
        attack_mode="closest",
    )
    agents = list(game.agents)

    def masks(state):
        avail = jax.vmap(game.get_avail_actions)(state)
        return jnp.stack([avail[a] for a in agents], axis=1).astype(bool)

    def env_step(key, state, actions):
        key, k_step = jax.random.split(key)
        obs, state, reward, dones, _ = jax.vmap(game.step)(
            jax.random.split(k_step, num_envs), state, {a: actions[:, i] for i, a in enumerate(agents)}
        )
        out = (jnp.stack([obs[a] for a in agents], axis=1), masks(state), obs["world_state"],
               reward[agents[0]], dones["__all__"])
        return key, state, out

    def jax_policy_step(carry):
        key, state, avail = carry
        key, k_act = jax.random.split(key)
        actions = jax.random.categorical(k_act, jnp.where(avail, 0.0, -jnp.inf))  # (B, n)
        key, state, out = env_step(key, state, actions)
        return (key, state, out[1]), out

    def init(key):
        key, sub = jax.random.split(key)
        _, state = jax.vmap(game.reset)(jax.random.split(sub, num_envs))
        return key, state, masks(state)

    def fused(carry, steps):
        return jax.lax.scan(lambda c, _: jax_policy_step(c), carry, None, length=steps)

    return SimpleNamespace(
        jax=jax,
        env_step=jax.jit(env_step),
        jax_policy_step=jax.jit(jax_policy_step),
        fused=jax.jit(fused, static_argnums=1),
        carry=jax.jit(init)(jax.random.PRNGKey(seed)),
    )


def sample(mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Uniform legal actions, ``mask`` ``(..., n_actions)`` bool -> ``(...)`` int64."""
    flat = mask.reshape(-1, mask.shape[-1]).float()
    return torch.multinomial(flat, 1, generator=generator).reshape(mask.shape[:-1])


def time_raw(raw: SimpleNamespace, generator: torch.Generator, steps: int) -> float:
    key, state, avail = raw.carry
    mask = torch.from_dlpack(avail)
    start = time.perf_counter()
    for _ in range(steps):
        actions = sample(mask, generator).to(torch.int32).numpy().copy()
        key, state, out = raw.env_step(key, state, actions)
        obs, mask, world, reward, done = (torch.from_dlpack(x) for x in out)  # waits for the step
    elapsed = time.perf_counter() - start
    raw.carry = (key, state, out[1])
    return elapsed


def time_jax_policy(raw: SimpleNamespace, steps: int) -> float:
    carry = raw.carry
    start = time.perf_counter()
    for _ in range(steps):
        carry, out = raw.jax_policy_step(carry)
        raw.jax.block_until_ready(out)
    raw.carry = carry
    return time.perf_counter() - start


def time_fused(raw: SimpleNamespace, steps: int) -> float:
    start = time.perf_counter()
    carry, out = raw.fused(raw.carry, steps)
    raw.jax.block_until_ready(out)
    raw.carry = carry
    return time.perf_counter() - start


def policy_module(generator: torch.Generator):
    def policy(td):
        td.set(("agents", "action"), sample(td.get(("agents", "action_mask")), generator))
        return td

    return policy


def time_wrapper(env, policy, td, steps: int):
    start = time.perf_counter()
    for _ in range(steps):
        td = policy(td)
        _, td = env.step_and_maybe_reset(td)
    return time.perf_counter() - start, td


def make_floor(env, policy) -> SmaxEnv:
    """``env`` with its jitted dynamics replaced by cached outputs (TorchRL's own cost)."""
    td = env.reset()
    td = policy(td)
    out, _ = env.step_and_maybe_reset(td)
    cached = out["next"].clone()
    done = torch.zeros(env.num_envs, 1, dtype=torch.bool)
    done[::33] = True  # ~3% of the envs finish every step
    cached["done"], cached["terminated"], cached["truncated"] = done, done.clone(), torch.zeros_like(done)
    cached_reset = env.reset().clone()
    env._step = types.MethodType(lambda self, tensordict: cached.clone(False), env)
    env._reset = types.MethodType(lambda self, tensordict=None, **kw: cached_reset.clone(False), env)
    return env


def bench(map_name: str, num_envs: int, steps: int, repeats: int, warmup: int, references: bool) -> dict:
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    raw = make_raw(map_name, num_envs)
    env = SmaxEnv(map_name, num_envs=num_envs, seed=0)
    floor = make_floor(SmaxEnv(map_name, num_envs=num_envs, seed=1), policy_module(gen))
    policy = policy_module(gen)
    # compile + warm up (jaxmarl's reset state is weakly typed: its raw step compiles twice)
    time_raw(raw, gen, warmup)
    _, td = time_wrapper(env, policy, env.reset(), warmup)
    _, ftd = time_wrapper(floor, policy, floor.reset(), warmup)
    if references:
        time_jax_policy(raw, warmup)
        time_fused(raw, steps)
    setup_s = time.perf_counter() - t0

    res = {k: [] for k in ("raw", "wrapper", "floor", "jax_policy", "fused")}
    for _ in range(repeats):
        res["raw"].append(num_envs * steps / time_raw(raw, gen, steps))
        dt, td = time_wrapper(env, policy, td, steps)
        res["wrapper"].append(num_envs * steps / dt)
        dt, ftd = time_wrapper(floor, policy, ftd, steps)
        res["floor"].append(num_envs * steps / dt)
        if references:
            res["jax_policy"].append(num_envs * steps / time_jax_policy(raw, steps))
            res["fused"].append(num_envs * steps / time_fused(raw, steps))
    med = statistics.median
    return {
        "map": map_name,
        "num_envs": num_envs,
        "steps": steps,
        "repeats": repeats,
        **{f"{k}_steps_per_s": (med(v) if v else None) for k, v in res.items()},
        "ratio_wrapper_raw": med(w / r for w, r in zip(res["wrapper"], res["raw"])),
        # per-step costs (ms): the wrapper's extra time next to TorchRL's own
        "wrapper_extra_ms": 1e3 * num_envs * med(1 / w - 1 / r for w, r in zip(res["wrapper"], res["raw"])),
        "torchrl_floor_ms": 1e3 * num_envs / med(res["floor"]),
        "setup_s": setup_s,
        "all": res,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--maps", nargs="+", default=["3m", "smacv2_5_units"])
    parser.add_argument("--envs", nargs="+", type=int, default=[64, 512])
    parser.add_argument("--steps", type=int, default=100, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--quick", action="store_true", help="3m, 64 envs, 20 steps, 1 repeat, no references")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.maps, args.envs, args.steps, args.repeats, args.warmup = ["3m"], [64], 20, 1, 3
    torch.set_num_threads(args.threads)
    import jax

    rows = [bench(m, b, args.steps, args.repeats, args.warmup, references=not args.quick)
            for m in args.maps for b in args.envs]
    info = {**machine_info(), "jax": jax.__version__, "jax_backend": jax.default_backend()}
    print(f"SMAX throughput, env-steps/s (median of {args.repeats}); {info['cpu']}, "
          f"{info['nproc']} cores, torch threads {args.threads}, jax {info['jax']} ({info['jax_backend']})\n")
    print("| map | envs | raw | wrapper | wrapper / raw | wrapper extra (ms/step) | TorchRL floor (ms/step) "
          "| raw jax policy | fused (ref.) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    fmt = lambda v: "-" if v is None else f"{v:,.0f}"  # noqa: E731
    for r in rows:
        print(f"| {r['map']} | {r['num_envs']} | {fmt(r['raw_steps_per_s'])} | {fmt(r['wrapper_steps_per_s'])} | "
              f"{r['ratio_wrapper_raw']:.2f} | {r['wrapper_extra_ms']:.2f} | {r['torchrl_floor_ms']:.2f} | "
              f"{fmt(r['jax_policy_steps_per_s'])} | {fmt(r['fused_steps_per_s'])} |")
    out = args.out or OUT_DIR / ("smax_throughput_quick.json" if args.quick else "smax_throughput.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "args": {k: str(v) for k, v in vars(args).items()},
                               "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
