"""How connected the radius graph of ``topology: auto`` is on vmas/navigation (issue 14, item 2).

``algorithm=dg_mappo`` with ``topology: auto`` builds, on vmas/navigation, a
radius graph from the agents' positions (``obs[..., 0:2]``) at every step. This
script measures, for a grid of radii, on BenchMARL's vmas/navigation task
(``--n-agents`` agents, ``task.shared_rew=true`` as in the results suite):

* ``connected``: the fraction of steps whose graph is connected (Assumption 1
  of paper 000), and the average node degree (A.4), over ``--envs`` x
  ``--steps`` steps of a uniform random policy from the task's own resets;
* ``connected at goals``: the same over the agents' goal positions (where a
  policy that solves the task ends), ``goal = pos - (pos - goal)`` read from
  ``obs[..., 0:2]`` and ``obs[..., 4:6]``;
* ``union over an episode``: the fraction of episodes whose union of graphs
  over all steps is connected (the "connected over time" reading of
  Assumption 1 for time-varying graphs).

Usage::

    python benchmarks/dg_mappo_radius.py                 # 4 agents, radii 0.25 .. 2.0
    python benchmarks/dg_mappo_radius.py --n-agents 6 --radii 0.5 1 1.5
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarl.environments import VmasTask
from benchmarl_decentral.consensus.topology import average_degree, radius
from benchmarl_decentral.models.dgat import strongly_connected


def rollout(n_agents: int, envs: int, steps: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions ``(steps, envs, n, 2)`` under a random policy, and the goals ``(envs, n, 2)`` of step 0."""
    task = VmasTask.NAVIGATION.get_from_yaml()
    task.config.update(n_agents=n_agents, shared_rew=True, max_steps=steps)
    env = task.get_env_fun(num_envs=envs, continuous_actions=True, seed=seed, device="cpu")()
    td = env.reset()
    group = next(iter(task.group_map(env)))
    obs = td.get((group, "observation"))
    goals = obs[..., 0:2] - obs[..., 4:6]
    positions = []
    for _ in range(steps):
        positions.append(td.get((group, "observation"))[..., 0:2].clone())
        td = env.step(env.rand_action(td)).get("next")
    return torch.stack(positions), goals


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-agents", type=int, default=4)
    p.add_argument("--envs", type=int, default=100)
    p.add_argument("--steps", type=int, default=100, help="steps per episode (the task's max_steps)")
    p.add_argument("--radii", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    t = time.perf_counter()
    pos, goals = rollout(args.n_agents, args.envs, args.steps, args.seed)
    print(
        f"# vmas/navigation, {args.n_agents} agents, shared_rew=true, {args.envs} envs x {args.steps} steps of a "
        f"uniform random policy (seed {args.seed}); rollout {time.perf_counter() - t:.0f} s\n"
    )
    print("| radius | connected (steps) | average degree | connected at goals | union over an episode connected |")
    print("|---:|---:|---:|---:|---:|")
    for r in args.radii:
        adj = radius(pos, r)
        connected = strongly_connected(adj).float().mean()
        at_goals = strongly_connected(radius(goals, r)).float().mean()
        union = strongly_connected(adj.any(0)).float().mean()
        print(
            f"| {r:g} | {connected:.2f} | {average_degree(adj).mean():.2f} of {args.n_agents - 1} "
            f"| {at_goals:.2f} | {union:.2f} |"
        )


if __name__ == "__main__":
    main()
