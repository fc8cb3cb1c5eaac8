"""Distributed mode with several agent groups: every rank owns a block of every group (CPU, gloo)."""

from __future__ import annotations

import csv
import re

import pytest
import torch
import torch.distributed as dist

from benchmarl_decentral.distributed import (
    TorchDistributedTransport,
    bytes_per_agent,
    mixing_bytes,
    partition_agents,
    per_link_bytes,
    plan_launch,
    spawn_local,
)

from conftest import make_experiment


# ------------------------------------------------------------------ the launch plan of a multi-group task
def test_every_group_splits_into_equal_blocks():
    owners = plan_launch("decpg", {"adversary": 4, "agent": 2}, 2)
    assert list(owners) == ["adversary", "agent"]
    assert owners["adversary"].tolist() == [0, 0, 1, 1] and owners["agent"].tolist() == [0, 1]


@pytest.mark.parametrize(
    "sizes, world_size, match",
    [
        ({"adversary": 4, "agent": 2}, 4,
         r"^world size 4 does not fit group 'agent' of 2 agents: 2 of the 4 ranks would own no agent\. Every rank "
         r"owns an equal block of every group: launch a number of processes that divides every group's size "
         r"\('adversary' 4, 'agent' 2\) \(torchrun --nproc-per-node N with N in \[1, 2\]\)\.$"),
        ({"adversary": 4, "agent": 6}, 3,
         r"^world size 3 does not fit group 'adversary' of 4 agents: 4 agents do not split into 3 equal blocks\. "
         r".* N in \[1, 2\]\)\.$"),
        ({"adversary": 3, "agent": 5}, 2,
         r"^world size 2 does not fit group 'adversary' of 3 agents: 3 agents do not split into 2 equal blocks; "
         r"group 'agent' of 5 agents: 5 agents do not split into 2 equal blocks\. .* N in \[1\]\)\.$"),
    ],
)
def test_a_world_size_that_does_not_divide_some_group_is_refused_with_one_message(sizes, world_size, match):
    with pytest.raises(ValueError, match=match) as error:
        plan_launch("decpg", sizes, world_size)
    assert "\n" not in str(error.value)


def _transport_worker(rank: int, world_size: int) -> None:
    four, eight = partition_agents(4, world_size), partition_agents(8, world_size)
    transport = TorchDistributedTransport({"adversary": eight, "agent": four, "other": four.clone()})
    assert transport.local_agents(8).tolist() == torch.nonzero(eight == rank).flatten().tolist()
    assert transport.local_agents(4).tolist() == [rank]
    assert transport.holds(torch.arange(8), 8).tolist() == (eight == rank).tolist()
    assert torch.equal(transport.owner_of(4), four)
    with pytest.raises(ValueError, match=r"group\(s\) 'adversary' of 8, 'agent' of 4, 'other' of 4 on 4 ranks, "
                                         r"but got a group of 6 agents"):
        transport.local_agents(6)
    with pytest.raises(ValueError, match=r"places groups of sizes \[4, 8\]: use owner_of\(n_agents\)"):
        transport.owner  # noqa: B018
    with pytest.raises(ValueError, match=r"groups 'agent' and 'other' have 4 agents each but different owners"):
        TorchDistributedTransport({"agent": four, "other": four.flip(0)})
    with pytest.raises(ValueError, match=r"owner of group 'other' must give .* every rank at least one agent"):
        TorchDistributedTransport({"agent": four, "other": torch.zeros(2, dtype=torch.int64)})
    assert torch.equal(TorchDistributedTransport(four).owner, four)  # one group: a bare owner
    dist.barrier()  # no rank leaves while gloo still connects the others (no message was sent above)


def test_one_transport_places_every_group_by_its_size():
    spawn_local(_transport_worker, 4, start_method="fork", timeout_s=60)


@pytest.mark.parametrize(
    "overrides, world_size, match",
    [
        ([], 4, r"world size 4 does not fit group 'agent' of 2 agents: 2 of the 4 ranks would own no agent\. .* "
                r"N in \[1, 2\]\)\.$"),
        # checkpoints of several groups are resumed like one group's: the same checks of the file given
        (["experiment.checkpoint_interval=6000", "experiment.restore_file=runs/run/checkpoints/checkpoint_60.pt"], 2,
         r"experiment.restore_file=runs/run/checkpoints/checkpoint_60.pt is not a checkpoint of a distributed run"),
    ],
)
def test_entry_point_refuses_a_multi_group_launch_it_cannot_run(tmp_path, monkeypatch, capsys, overrides,
                                                                world_size, match):
    from benchmarl_decentral.distributed.__main__ import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    with pytest.raises(SystemExit) as exit_:
        main(["algorithm=decpg", "task=vmas/simple_tag", "task.num_adversaries=4", "task.num_good_agents=2",
              "experiment.evaluation=false", *overrides])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("benchmarl_decentral.distributed: ") and err.count("\n") == 1, err
    assert re.search(match, err.strip()), err
    assert list(tmp_path.iterdir()) == [] and not dist.is_initialized()


# ------------------------------------------------------------------ decpg on vmas/simple_tag: groups of 4 and 2
GROUPS = {"adversary": 4, "agent": 2}  # of different sizes: each its own blocks (rank 0: adversaries 0, 1, agent 0)
ITERS, STEPS_PER_ITER = 2, 3  # 60 frames, minibatches of 20
NETS = (("actor", "loss_objective"), ("critic", "loss_critic"))
TAG = dict(task="vmas/simple_tag", task_overrides={"num_good_agents": 2, "num_adversaries": 4, "max_steps": 10},
           algorithm_overrides={"link_failure": 0.3, "log_link_bytes": True, "evaluation_mode": "local",
                                "perturbed_evaluation": False},
           max_n_iters=ITERS, on_policy_minibatch_size=20, loggers=["csv"], evaluation=True)
#: the returns every rank logs: the single-process run's (collection and evaluation, per group and over groups)
RETURNS = tuple(f"{when}_{who}reward_episode_reward_mean" for when in ("collection", "eval")
                for who in ("", "adversary_", "agent_")) + ("collection_reward_reward_mean",)


def _leaves(exp, group, net):
    return exp.algorithm.actor_leaves(group) if net == "actor" else exp.algorithm.critic_leaves(group)


def _tag_run(folder, build=lambda make: make(), scrub=None, local=None):
    """decpg on simple_tag for ITERS iterations; the experiment and the W of every (group, net) optimizer step.

    ``scrub``: per group, the agents whose parameters are zeroed before training
    (the other ranks' agents: this rank must not depend on them). ``local``: the
    agents per group the experiment builds (``--agents local``), None: all.
    """
    folder.mkdir(parents=True, exist_ok=True)
    exp = build(lambda wrap=None: make_experiment(folder, task_wrapper=wrap, **TAG))
    assert {g: len(a) for g, a in exp.group_map.items()} == (GROUPS if local is None else local)
    if scrub is not None:
        with torch.no_grad():
            for group, others in scrub.items():
                for net, _ in NETS:
                    for p in _leaves(exp, group, net):
                        p[others] = 0.0
    used = {}
    for group in GROUPS:
        for net, loss in NETS:
            mixer = exp.algorithm.callback.mixers[(group, net)]
            used[group, net] = []
            exp.optimizers[group][loss].register_step_post_hook(
                lambda *_, m=mixer, u=used[group, net]: u.append(m.matrix().detach().clone())
            )
    exp.run()
    return exp, used


def _logged(exp, name):
    with open(exp.folder_name / exp.name / "scalars" / f"{name}.csv") as f:
        return [float(row[1]) for row in csv.reader(f)]


def _iteration(steps, t):
    return steps[t * STEPS_PER_ITER:(t + 1) * STEPS_PER_ITER]


def _tag_worker(rank: int, world_size: int, folder, reference, agents) -> None:
    from benchmarl_decentral.distributed.experiment import ActionExchange, build_rank_experiment
    from benchmarl_decentral.distributed.local import EnvBytesLog

    ref = torch.load(reference)
    owners = {g: partition_agents(n, world_size) for g, n in GROUPS.items()}
    exp, used = _tag_run(
        folder / f"rank{rank}",
        lambda make: build_rank_experiment(make, algorithm="decpg", sizes=dict(GROUPS), agents=agents),
        scrub={g: torch.nonzero(owner != rank).flatten() for g, owner in owners.items()} if agents == "all" else None,
        local=None if agents == "all" else {g: n // world_size for g, n in GROUPS.items()},
    )
    transport = exp.algorithm.callback.mixers[("agent", "actor")].transport
    assert isinstance(transport, TorchDistributedTransport)
    (exchange,) = [cb for cb in exp.callbacks if isinstance(cb, ActionExchange if agents == "all" else EnvBytesLog)]
    assert exchange.groups == list(GROUPS)
    # the same joint actions of both groups on every rank: the single-process episodes and returns (with
    # --agents local from the joint rewards its environment also gives: the good agents' rewards differ)
    assert {name: _logged(exp, name) for name in ref["logged"]} == ref["logged"]
    totals = {"train": [0.0] * ITERS, "train_network": [0.0] * ITERS}
    for group in GROUPS:
        local = transport.local_agents(GROUPS[group])
        assert local.tolist() == torch.nonzero(owners[group] == rank).flatten().tolist()
        for net, _ in NETS:
            assert exp.algorithm.callback.mixers[(group, net)].leaves[0].shape[0] == local.numel()
            for W, W_ref in zip(used[group, net], ref["used"][group, net], strict=True):
                assert torch.equal(W, W_ref)
            for p, q in zip(_leaves(exp, group, net), ref["leaves"][group, net], strict=True):
                mine = p.detach()[local] if agents == "all" else p.detach()
                torch.testing.assert_close(mine, q[local], rtol=1e-5, atol=1e-6)
        # this group's bytes per agent: counted from the sent tensors == the formula, with the group's owners
        for kind, which in (("train", 0), ("train_network", 1)):
            expected = [
                sum(int(mixing_bytes(W, ref["bytes_per_agent"][group, net], owners[group])[which][local].sum())
                    for net, _ in NETS for W in _iteration(ref["used"][group, net], t))
                for t in range(ITERS)
            ]
            assert min(expected) > 0
            assert _logged(exp, f"comm_{group}_{kind}_bytes_per_agent") == pytest.approx(
                [e / local.numel() for e in expected])
            totals[kind] = [a + b for a, b in zip(totals[kind], expected)]
        # per link, the links of this rank's agents of the group only (decpg's k=2: a ring of 4, a pair)
        links = [(i, j) for i in local.tolist() for j in torch.nonzero(exp.algorithm.adjacencies[group][i]).flatten()
                 .tolist()]
        assert len(links) == local.numel() * min(2, GROUPS[group] - 1)
        for i, j in links:
            expected = [sum(int(per_link_bytes(W, ref["bytes_per_agent"][group, net])[i, j])
                            for net, _ in NETS for W in _iteration(ref["used"][group, net], t))
                        for t in range(ITERS)]
            assert _logged(exp, f"comm_{group}_link_{i}_to_{j}_train_bytes") == expected
        scalars = exp.folder_name / exp.name / "scalars"
        assert len(list(scalars.glob(f"comm_{group}_link_*"))) == len(links)
        # environment interface: each step, this rank's block of the group's float32 actions (2 dims, 2 envs): 30
        # steps of collection, and from the second batch on the evaluation after the previous one (2 episodes of 10)
        env = [(30 + 10 * (t > 0)) * 2 * 2 * 4 * (world_size - 1) for t in range(ITERS)]
        assert _logged(exp, f"comm_{group}_env_bytes_per_agent") == env
    held = sum(GROUPS.values()) // world_size
    for kind in ("train", "train_network"):  # over every group: the mean over all agents of this rank
        assert _logged(exp, f"comm_{kind}_bytes_per_agent") == pytest.approx([t / held for t in totals[kind]])
    assert _logged(exp, "comm_env_bytes_per_agent") == env


@pytest.mark.slow
@pytest.mark.parametrize("agents", ["all", "local"])
def test_decpg_with_two_agent_groups_on_two_ranks_equals_the_single_process_run(tmp_path, agents):
    """vmas/simple_tag with 4 adversaries and 2 good agents, 2 gloo ranks, 2 iterations of decpg (link
    failures): each rank owns a block of each group (2 adversaries, 1 good agent), steps its copy of the environment with both groups'
    joint actions (its agents' own, the others' received), and its agents of both groups end with the
    single-process parameters and per-group bytes, while the other agents' rows are zeroed on it (``all``) or
    not built (``local``: each group's block only, both groups' critics on their joint observations). The
    logged returns are the single-process ones on every rank (``local``: from every agent's reward, which its
    environment gives beside its block's)."""
    exp, used = _tag_run(tmp_path / "single")
    assert all(len(steps) == ITERS * STEPS_PER_ITER for steps in used.values())
    assert any(not torch.equal(W, steps[0]) for steps in used.values() for W in steps)  # links failed
    reference = {
        "used": used,
        "logged": {name: _logged(exp, name) for name in RETURNS},
        "leaves": {(g, net): [p.detach().clone() for p in _leaves(exp, g, net)] for g in GROUPS for net, _ in NETS},
        "bytes_per_agent": {(g, net): bytes_per_agent(_leaves(exp, g, net)) for g in GROUPS for net, _ in NETS},
    }
    assert reference["bytes_per_agent"]["adversary", "actor"] != reference["bytes_per_agent"]["agent", "actor"]
    torch.save(reference, tmp_path / "reference.pt")
    spawn_local(_tag_worker, 2, tmp_path, tmp_path / "reference.pt", agents, start_method="fork", timeout_s=120)


# ------------------------------------------------------------------ dg_mappo on the same task
DG_TAG = dict(task="vmas/simple_tag", task_overrides={"num_good_agents": 2, "num_adversaries": 4, "max_steps": 10},
              algorithm="dg_mappo", algorithm_overrides={"topology": "ring", "hidden_channels": 8, "num_hops": 2},
              max_n_iters=ITERS, on_policy_collected_frames_per_batch=40, on_policy_minibatch_size=20,
              loggers=["csv"])


def _dg_tag_run(folder, build=lambda make: make(), scrub=None):
    """dg_mappo on simple_tag for ITERS iterations; the experiment, its leaves per group and what each group sent."""
    folder.mkdir(parents=True, exist_ok=True)
    exp = build(lambda: make_experiment(folder, **DG_TAG))
    leaves = {g: exp.algorithm.network_leaves(g) for g in GROUPS}
    if scrub is not None:
        with torch.no_grad():
            for group, others in scrub.items():
                for ps in leaves[group].values():
                    for p in ps:
                        p[others] = 0.0
    callback, sent = exp.algorithm.callback, []
    on_train_end = callback.on_train_end

    def record(training_td, group):
        on_train_end(training_td, group)
        sent.append((group, {k: tuple(t.clone() for t in v) for k, v in callback.sent[group].items()
                             if k != "agents"}))

    callback.on_train_end = record
    exp.run()
    return exp, leaves, sent


def _dg_tag_worker(rank: int, world_size: int, folder, reference) -> None:
    from benchmarl_decentral.distributed.experiment import build_rank_experiment

    ref = torch.load(reference)
    owners = {g: partition_agents(n, world_size) for g, n in GROUPS.items()}
    exp, leaves, sent = _dg_tag_run(
        folder / f"rank{rank}", lambda make: build_rank_experiment(make, algorithm="dg_mappo", sizes=dict(GROUPS)),
        scrub={g: torch.nonzero(owner != rank).flatten() for g, owner in owners.items()},
    )
    assert _logged(exp, "collection_reward_reward_mean") == ref["reward"]
    for group in GROUPS:
        local = exp.algorithm.transport.local_agents(GROUPS[group])
        for net, ps in leaves[group].items():
            for p, q in zip(ps, ref["leaves"][group][net], strict=True):
                torch.testing.assert_close(p.detach()[local], q[local], rtol=1e-4, atol=1e-5, msg=f"{group} {net}")
    assert [g for g, _ in sent] == [g for g, _ in ref["sent"]]
    for (group, got), (_, want) in zip(sent, ref["sent"], strict=True):
        local = exp.algorithm.transport.local_agents(GROUPS[group])
        for kind in ("train", "exec"):
            assert torch.equal(got[kind][0], want[kind][0][local]), (group, kind)
            assert int(got[kind][1].sum()) > 0 and int(want[kind][1].sum()) == 0, (group, kind)
    for group in GROUPS:  # the group's bytes per agent of this rank
        held = GROUPS[group] // world_size
        mine = [s for g, s in sent if g == group]
        for kind, key in (("train", "train"), ("exec", "exec_network")):
            which = 0 if kind == key else 1
            assert _logged(exp, f"comm_{group}_{key}_bytes_per_agent") == pytest.approx(
                [float(s[kind][which].sum()) / held for s in mine])


@pytest.mark.slow
def test_dg_mappo_with_two_agent_groups_on_two_ranks_equals_the_single_process_run(tmp_path):
    """The same task and ranks, 2 iterations of dg_mappo (K=2 D-GAT hops on each group's ring, eq. 11, D-SGD
    of every network): each rank's agents of both groups end with the single-process parameters, the same
    rewards and per-group bytes (train and exec), D-GAT messages of both groups crossing the ranks."""
    exp, leaves, sent = _dg_tag_run(tmp_path / "single")
    assert len(sent) == ITERS * len(GROUPS)
    reference = {
        "reward": _logged(exp, "collection_reward_reward_mean"),
        "leaves": {g: {net: [p.detach().clone() for p in ps] for net, ps in nets.items()} for g, nets in leaves.items()},
        "sent": sent,
    }
    torch.save(reference, tmp_path / "reference.pt")
    spawn_local(_dg_tag_worker, 2, tmp_path, tmp_path / "reference.pt", start_method="fork", timeout_s=120)
