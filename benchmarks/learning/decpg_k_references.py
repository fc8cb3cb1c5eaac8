"""Reference policies on VMAS simple spread, discrete actions (benchmarks/learning/decpg_k_findings.md).

``python benchmarks/learning/decpg_k_references.py N_AGENTS MAX_STEPS``: mean ± std return of the
first agent (the shared team reward) over 100 episodes, seed 0, for the zero action, uniform
random actions, a scripted policy (each agent to its landmark, Hungarian assignment at reset,
bang-bang per axis), with the collision part of each return, and uniform random mixed with probability p of one fixed move per agent.
"""

import sys

import torch
import vmas
from scipy.optimize import linear_sum_assignment

N, T, E = int(sys.argv[1]), int(sys.argv[2]), 100
torch.manual_seed(0)
env = vmas.make_env("simple_spread", num_envs=E, continuous_actions=False, max_steps=T, n_agents=N, seed=0)


def axis(x):  # VMAS's 3 values per axis: 0 stay, 1 negative, 2 positive; flat action = 3 * ax + ay
    return torch.where(x > 0.02, 2, torch.where(x < -0.02, 1, 0))


def episode(kind, p=0.0):
    """Returns (team return, its collision part) per env."""
    env.reset()
    ret, collisions = torch.zeros(E), torch.zeros(E)
    if kind == "scripted":
        agents = torch.stack([a.state.pos for a in env.agents], 1)
        landmarks = torch.stack([lm.state.pos for lm in env.world.landmarks], 1)
        assign = torch.zeros(E, N, dtype=torch.long)
        for e in range(E):
            rows, cols = linear_sum_assignment(torch.cdist(agents[e], landmarks[e]).numpy())
            assign[e, torch.as_tensor(rows)] = torch.as_tensor(cols)
        targets = torch.stack([landmarks[torch.arange(E), assign[:, i]] for i in range(N)])
    bias = torch.randint(1, 9, (N, E))
    for _ in range(T):
        actions = []
        for i, agent in enumerate(env.agents):
            if kind == "zero":
                act = torch.zeros(E, dtype=torch.long)
            elif kind == "scripted":
                d = targets[i] - agent.state.pos - 0.5 * agent.state.vel
                act = axis(d[:, 0]) * 3 + axis(d[:, 1])
            else:
                act = torch.where(torch.rand(E) < p, bias[i], torch.randint(0, 9, (E,)))
            actions.append(act.unsqueeze(-1))
        _, rewards, _, _ = env.step(actions)
        ret += rewards[0]
        for a in env.agents:  # the scenario's -1 per overlapping (agent, other) ordered pair
            for b in env.agents:
                if a is not b:
                    collisions -= env.world.is_overlapping(a, b).float()
    return ret, collisions


for kind in ("zero", "random", "scripted"):
    r, c = episode(kind)
    print(f"n={N} max_steps={T} {kind}: {r.mean():.1f} ± {r.std():.1f} (collisions: {c.mean():.1f})")
for p in (0.1, 0.2, 0.4):
    r, _ = episode("biased", p)
    print(f"n={N} max_steps={T} random + p={p} of one fixed move per agent: {r.mean():.1f} ± {r.std():.1f}")
