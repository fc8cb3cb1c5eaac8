"""Graphs of every agent's observation on ranks (issue 18): SMAC ally visibility on smax/8m, 2 ranks x 4 agents.

decpg's and matrpo's links (``topology=visibility``: each minibatch's / batch's ally-visibility graph)
and dg_mappo's D-GAT graph (``topology=auto``: visibility on SMAX, rebuilt every step) read every
agent's observation. With ``--agents all`` each rank reads its copy of the environment's; with ``--agents
local`` its environment offers the joint observation (``LocalAgentsTask(..., joint_observation=True)``;
SMAX has a global state, so it is not offered otherwise), from the rank's own copy (no message). Each
rank's agents end with the single-process parameters and returns, and the graphs crossed the ranks
(bytes to the other rank). Ranks are spawned: jax does not survive a fork of a process that has run it.
"""

from __future__ import annotations

import csv

import pytest
import torch

from benchmarl_decentral.distributed import partition_agents, spawn_local

from conftest import make_experiment

pytest.importorskip("jaxmarl")

N, ITERS = 8, 2
OVERRIDES = {
    "decpg": {"topology": "visibility", "evaluation_mode": "local", "perturbed_evaluation": False,
              "link_failure": 0.2},
    "matrpo": {"topology": "visibility", "admm_iterations": 12, "admm_mode": "random", "admm_tol": 0.0,
               "link_failure": 0.2},
    "dg_mappo": {"topology": "auto", "hidden_channels": 8},  # auto: ally visibility on SMAX
}


def _run(folder, algorithm: str, build=lambda make: make()):
    folder.mkdir(parents=True, exist_ok=True)
    exp = build(lambda wrap=None: make_experiment(
        folder, task_wrapper=wrap, algorithm=algorithm, task="smax/8m", algorithm_overrides=OVERRIDES[algorithm],
        max_n_iters=ITERS, on_policy_minibatch_size=20, loggers=["csv"],
    ))
    exp.run()
    return exp


def _leaves(exp, algorithm: str) -> list:
    algo = exp.algorithm
    if algorithm == "decpg":
        leaves = algo.actor_leaves("agents") + algo.critic_leaves("agents")
    elif algorithm == "matrpo":
        leaves = list(algo.policy_parameters("agents").values()) + list(algo._critic_stacks["agents"].leaves)
    else:
        leaves = [p for ps in algo.network_leaves("agents").values() for p in ps]
    return [p.detach().clone() for p in leaves]


def _logged(exp, name):
    with open(exp.folder_name / exp.name / "scalars" / f"{name}.csv") as f:
        return [float(row[1]) for row in csv.reader(f)]


def _worker(rank: int, world_size: int, folder, algorithm: str, agents: str, reference) -> None:
    from benchmarl_decentral.distributed.experiment import build_rank_experiment

    torch.set_num_threads(1)
    ref = torch.load(reference)
    local = torch.nonzero(partition_agents(N, world_size) == rank).flatten()
    exp = _run(folder / f"rank{rank}", algorithm, lambda make: build_rank_experiment(
        make, algorithm=algorithm, sizes={"agents": N}, agents=agents, joint_observation=agents == "local"))
    if agents == "local":  # its block only, and every agent's observation beside it
        assert exp.group_map == {"agents": [f"agent_{i}" for i in local.tolist()]}
        assert ("joint_observation", "agents") in exp.replay_buffers["agents"].storage._storage.keys(True, True)
    # the same joint actions, episodes (SMAX: the mean over agents' rewards, bit for bit)
    got = _logged(exp, "collection_reward_reward_mean")
    assert len(got) == len(ref["reward"]) and all(abs(a - b) <= 1e-6 * max(1.0, abs(b))
                                                  for a, b in zip(got, ref["reward"])), (got, ref["reward"])
    for p, q in zip(_leaves(exp, algorithm), ref["leaves"], strict=True):
        torch.testing.assert_close(p if agents == "local" else p[local], q[local], rtol=1e-4, atol=1e-5)
    assert max(_logged(exp, "comm_train_network_bytes_per_agent")) > 0  # the graphs linked the two ranks' agents


@pytest.mark.slow
@pytest.mark.parametrize(("algorithm", "agents"), [
    ("decpg", "all"), ("decpg", "local"), ("matrpo", "local"), ("dg_mappo", "local"),
])
def test_visibility_graphs_on_ranks_equal_the_single_process_run(tmp_path, algorithm, agents):
    single = _run(tmp_path / "single", algorithm)
    reference = {"reward": _logged(single, "collection_reward_reward_mean"), "leaves": _leaves(single, algorithm)}
    torch.save(reference, tmp_path / "reference.pt")
    spawn_local(_worker, 2, tmp_path, algorithm, agents, tmp_path / "reference.pt", start_method="spawn",
                timeout_s=180)
