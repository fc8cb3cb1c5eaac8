"""Distributed dg_mappo: D-GAT messages and their gradients over the transport, mixing, bytes (CPU, gloo)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from tensordict import TensorDict
from torchrl.data import Composite, Unbounded

from benchmarl_decentral.distributed import (
    CommCounter,
    InProcessTransport,
    TorchDistributedTransport,
    message_bytes,
    partition_agents,
    spawn_local,
    use_transport,
)
from benchmarl_decentral.models.dgat import DgatConfig
from benchmarl_decentral.nn.dgat_conv import consensus_loss

GROUP = "agents"
N, F, HOPS, BATCH = 4, 5, 2, (3, 2)
#: (topology, options): a static graph and a radius graph rebuilt from every sample's positions
GRAPHS = [("ring", {}), ("radius", {"radius": 0.9, "position_dims": [0, 2]})]


def _no_collectives(*args, **kwargs):
    raise AssertionError("a collective over all ranks; D-GAT messages must be neighbour-only p2p")


def _dgat(topology: str, options: dict, seed: int):
    """A D-GAT model (no head: outputs õ = [o || ô], eq. 13) of 4 agents, built under the current transport."""
    cfg = DgatConfig(**{**DgatConfig.get_from_yaml().__dict__, "hidden_channels": 8, "num_hops": HOPS,
                        "num_cells": None, "topology": topology, **options})
    spec = lambda key, f: Composite({GROUP: Composite({key: Unbounded(shape=(N, f))}, shape=(N,))})  # noqa: E731
    torch.manual_seed(seed)
    return cfg.get_model(input_spec=spec("observation", F), output_spec=spec("out", 2 * F), agent_group=GROUP,
                         input_has_agent_dim=True, n_agents=N, centralised=False, share_params=False,
                         device="cpu", action_spec=None)


def _losses(model, obs: torch.Tensor, weight: torch.Tensor):
    """dg_mappo's loss structure: a per-agent loss of õ_i (PPO/critic-like) + eq. 11 over the neighbours' ĥ_j."""
    td = TensorDict({GROUP: TensorDict({"observation": obs}, [*BATCH, N])}, list(BATCH))
    tilde = model(td).get(model.out_key)
    own = torch.sin(tilde * weight.view(N, 1)).sum(-1).mean()  # every agent's rows, as BenchMARL's means
    h = tilde[..., F:]
    adj = model.communication_graph(td)
    consensus = model.local_mean(consensus_loss(model.neighbour_rows(h, adj), adj, reduction="none"))
    return tilde, N * (own + 20.0 * consensus), adj


def _dgat_worker(rank: int, world_size: int) -> None:
    for name in ("all_reduce", "all_gather", "broadcast", "reduce", "all_to_all", "barrier"):
        setattr(dist, name, _no_collectives)
    owner = partition_agents(N, world_size)
    transport = TorchDistributedTransport(owner)
    local = transport.local_agents(N)
    others = torch.nonzero(owner != rank).flatten()
    for s, (topology, options) in enumerate(GRAPHS):
        gen = torch.Generator().manual_seed(10 + s)
        obs = torch.rand(*BATCH, N, F, generator=gen) * 2
        weight = torch.rand(N, generator=gen) + 0.5
        runs = {}
        for mode in ("in_process", "distributed"):
            with use_transport(InProcessTransport() if mode == "in_process" else transport):
                model = _dgat(topology, options, seed=s)
            if mode == "distributed":  # the other agents' parameters are noise here: they must not be read
                with torch.no_grad():
                    for p in model.parameters():
                        p[others] = torch.randn(p[others].shape, generator=gen)
            with torch.no_grad():
                td = TensorDict({GROUP: TensorDict({"observation": obs}, [*BATCH, N])}, list(BATCH))
                executed = model(td).get(model.out_key)  # execution: no gradient (the dense form)
            execution = (model.comm.link_bytes.clone(), model.comm.network_bytes.clone(), model.comm.steps)
            model.comm.reset()
            tilde, loss, adj = _losses(model, obs, weight)
            loss.backward()
            runs[mode] = dict(model=model, executed=executed, tilde=tilde, adj=adj, execution=execution,
                              train=(model.comm.link_bytes, model.comm.network_bytes, model.comm.steps))
        ref, got = runs["in_process"], runs["distributed"]
        if topology == "radius":  # a dynamic graph: the samples' graphs differ and some link crosses the ranks
            assert len({tuple(a.flatten().tolist()) for a in ref["adj"].reshape(-1, N, N)}) > 1
        torch.testing.assert_close(got["executed"][..., local, :], ref["executed"][..., local, :])
        torch.testing.assert_close(got["tilde"][..., local, :], ref["tilde"][..., local, :])
        for (name, p), q in zip(got["model"].named_parameters(), ref["model"].parameters(), strict=True):
            assert q.grad is not None and float(q.grad[local].abs().sum()) > 0, name
            torch.testing.assert_close(p.grad[local], q.grad[local], rtol=1e-5, atol=1e-6, msg=name)

        # bytes: counted from what was sent == the formula (hops and eq. 11 exchange rows of F floats)
        reads = ref["adj"].expand(*BATCH, N, N) if ref["adj"].dim() == 2 else ref["adj"]
        row = F * 4
        fwd, fwd_net = message_bytes(reads, row, owner)
        bwd, bwd_net = message_bytes(reads, row, owner, backward=True)
        assert torch.equal(ref["execution"][0], HOPS * fwd) and int(ref["execution"][1].sum()) == 0
        assert torch.equal(got["execution"][0], HOPS * fwd[local])
        assert torch.equal(got["execution"][1], HOPS * fwd_net[local]) and int(fwd_net[local].sum()) > 0
        assert ref["execution"][2] == got["execution"][2] == HOPS
        # training: HOPS + 1 exchanges forward (the hops, eq. 11's ĥ_j); gradients travel back for all but the
        # first hop's (observations carry none)
        assert torch.equal(ref["train"][0], (HOPS + 1) * fwd + HOPS * bwd)
        assert torch.equal(got["train"][0], ((HOPS + 1) * fwd + HOPS * bwd)[local])
        assert torch.equal(got["train"][1], ((HOPS + 1) * fwd_net + HOPS * bwd_net)[local])
        assert int(bwd_net[local].sum()) > 0
        assert ref["train"][2] == got["train"][2] == 2 * HOPS + 1


@pytest.mark.parametrize("world_size", [2, 4])
def test_dgat_messages_and_their_gradients_across_ranks_equal_one_process(world_size):
    """Oracle for eqs. 7-8 and 11 split by agent: each rank computes its agents' hops from the rows its
    neighbours' ranks send, sends the gradients of the rows it read back to them, and gets the
    single-process outputs and gradients for its agents (static ring and per-sample radius graphs),
    while the other agents' parameters are noise on the rank; bytes counted from the sent tensors equal
    the formula."""
    spawn_local(_dgat_worker, world_size, start_method="fork", timeout_s=60)


def test_message_bytes_formula_on_a_small_graph():
    reads = torch.zeros(2, 3, 3, dtype=torch.bool)
    reads[0, 0, 1] = reads[0, 2, 1] = True  # sample 0: agents 0 and 2 read agent 1
    reads[1, 1, 0] = reads[1, 1, 1] = True  # sample 1: agent 1 reads 0 (and itself: not a message)
    link, network = message_bytes(reads, 10)
    assert link.tolist() == [10, 20, 0] and network.tolist() == [0, 0, 0]
    owner = torch.tensor([0, 0, 1])  # agent 1's row goes to rank 1 once (for agent 2); agent 0 reads from memory
    assert message_bytes(reads, 10, owner)[1].tolist() == [0, 10, 0]
    back, back_network = message_bytes(reads, 10, owner, backward=True)
    assert back.tolist() == [10, 10, 10]  # each reader sends one gradient row per link it read
    assert back_network.tolist() == [0, 0, 10]  # agent 2's rank sends dL/dh_1 back to rank 0


def test_in_process_exchange_is_the_identity_and_counts_by_formula():
    h = torch.randn(3, 4, 2, requires_grad=True)
    reads = torch.ones(4, 4, dtype=torch.bool)
    counter = CommCounter()
    out = InProcessTransport().exchange_rows(h, reads, counter.add)
    torch.testing.assert_close(out, h, rtol=0, atol=0)
    assert counter.link_bytes.tolist() == [3 * 3 * 8] * 4 and counter.steps == 1
    out.sum().backward()
    assert counter.steps == 2 and counter.link_bytes.tolist() == [2 * 3 * 3 * 8] * 4
    assert torch.equal(h.grad, torch.ones_like(h))
    assert InProcessTransport().own_rows(h) is h


# ------------------------------------------------------------------ dg_mappo training on agent blocks
ITERS = 2
#: 4 agents on vmas/navigation: a static ring and the radius graph rebuilt from every step's positions
DG_GRAPHS = {
    "ring": {"topology": "ring"},
    "radius": {"topology": "radius", "radius": 1.5, "position_dims": [0, 2]},
}


def _dg_mappo_run(folder, graph: str, build=lambda make: make(), scrub=None, options=None):
    """dg_mappo for ITERS iterations (2 minibatches each), all networks mixed after every step (``options``: more
    algorithm keys, e.g. ``link_latency`` or ``mix_every``)."""
    from conftest import make_experiment

    folder.mkdir(parents=True, exist_ok=True)
    exp = build(lambda wrap=None: make_experiment(
        folder, task_wrapper=wrap, algorithm="dg_mappo", task="vmas/navigation", task_overrides={"n_agents": N, "max_steps": 10},
        algorithm_overrides={**DG_GRAPHS[graph], "hidden_channels": 8, "num_hops": 2, **(options or {})},
        max_n_iters=ITERS, on_policy_collected_frames_per_batch=40, on_policy_minibatch_size=20, loggers=["csv"],
    ))
    leaves = exp.algorithm.network_leaves(GROUP)
    if scrub is not None:  # the other ranks' agents: nothing here may read them
        with torch.no_grad():
            for net in leaves.values():
                for p in net:
                    p[scrub] = 0.0
    sent = []
    callback = exp.algorithm.callback
    callback.on_train_end = _record(callback.on_train_end, callback, sent)
    callback.mixed_with = []  # the matrix of every mixing step, in order

    def mix_with(group, W, mix=callback._mix_with):
        callback.mixed_with.append(W.clone())
        mix(group, W)

    callback._mix_with = mix_with
    exp.run()
    return exp, leaves, sent


def _record(on_train_end, callback, sent):
    def wrapped(training_td, group):
        on_train_end(training_td, group)
        sent.append({k: v if k == "agents" else tuple(t.clone() for t in v) for k, v in callback.sent[group].items()})
    return wrapped


def _logged(exp, name):
    import csv

    with open(exp.folder_name / exp.name / "scalars" / f"{name}.csv") as f:
        return [float(row[1]) for row in csv.reader(f)]


def _dg_mappo_worker(rank: int, world_size: int, folder, graph: str, reference, agents: str = "all",
                     options=None) -> None:
    from benchmarl_decentral.distributed.experiment import build_rank_experiment

    ref = torch.load(reference)
    owner = partition_agents(N, world_size)
    exp, leaves, sent = _dg_mappo_run(
        folder / f"rank{rank}", graph,
        lambda make: build_rank_experiment(make, algorithm="dg_mappo", sizes={GROUP: N}, agents=agents),
        scrub=torch.nonzero(owner != rank).flatten() if agents == "all" else None,  # local: no other rows
        options=options,
    )
    local = exp.algorithm.transport.local_agents(N)
    assert isinstance(exp.algorithm.transport, TorchDistributedTransport) and local.numel() == N // world_size
    assert len(exp.algorithm.callback.mixed_with) == ref["mixings"]
    latency = (options or {}).get("link_latency", 0)
    if latency:  # what this rank keeps: its agents' vectors and the ones it received, with its rows of W
        kept = exp.algorithm.callback.histories[GROUP].state_dict()["slots"]
        assert len(kept) == latency and all(e["W"].shape == (local.numel(), N) for e in kept)
        assert all(set(local.tolist()) <= set(e["agents"].tolist()) for e in kept)
    if agents == "local":  # this rank built its block only: D-GAT, actor, critic, Adam's state, replay buffer
        assert exp.group_map == {GROUP: [f"agent_{i}" for i in local.tolist()]}
        optimized = [p for opt in exp.optimizers[GROUP].values() for g in opt.param_groups for p in g["params"]]
        assert {p.shape[0] for ps in leaves.values() for p in ps} | {p.shape[0] for p in optimized} == {local.numel()}
        assert all(t.shape[0] == local.numel() for opt in exp.optimizers[GROUP].values()
                   for st in opt.state.values() for t in st.values() if t.dim())
        assert exp.replay_buffers[GROUP].storage._storage.get((GROUP, "action")).shape[1] == local.numel()
    # the same joint actions on every rank: the same episodes as the single-process run
    assert _logged(exp, "collection_reward_reward_mean") == ref["reward"]
    for net, ps in leaves.items():
        for p, q in zip(ps, ref["leaves"][net], strict=True):
            mine = p.detach() if agents == "local" else p.detach()[local]
            torch.testing.assert_close(mine, q[local], rtol=1e-4, atol=1e-5, msg=net)
    # bytes per agent held here, counted from what was sent: every link's messages as in one process
    for got, want in zip(sent, ref["sent"], strict=True):
        for kind in ("train", "exec"):
            assert torch.equal(got[kind][0], want[kind][0][local]), kind
            assert int(got[kind][1].sum()) > 0 and int(want[kind][1].sum()) == 0, kind  # across ranks / not
    assert _logged(exp, "comm_train_bytes_per_agent") == [float(s["train"][0].sum()) / local.numel() for s in sent]
    assert _logged(exp, "comm_exec_network_bytes_per_agent") == [
        float(s["exec"][1].sum()) / local.numel() for s in sent]


#: more algorithm keys of some runs: a neighbour's vector read 2 mixing steps late (D-SGD with link latency,
#: the radius graph's matrices of those steps), the mixings after each update (the public code's), and both
OPTIONS = {"latency": {"link_latency": 2}, "update": {"mix_every": "update", "mixes_per_update": 3},
           "both": {"link_latency": 2, "mix_every": "update", "mixes_per_update": 3},
           # dg_mappo_paper's: D-SGD of the D-GAT only, each agent its own actor and critic (with A.3's output gain)
           "paper": {"consensus_params": ["dgat"], "actor_output_gain": 0.01}}


@pytest.mark.slow
@pytest.mark.parametrize(("graph", "agents", "options"), [
    ("ring", "all", None), ("radius", "all", None), ("ring", "local", None), ("radius", "local", None),
    ("radius", "local", "latency"), ("ring", "local", "update"), ("radius", "local", "both"),
    ("ring", "local", "paper"),
], ids=["ring-all", "radius-all", "ring-local", "radius-local", "radius-local-latency", "ring-local-update",
        "radius-local-update-latency", "ring-local-per-agent-starts"])
def test_dg_mappo_training_on_agent_blocks_equals_the_single_process_run(tmp_path, graph, agents, options):
    """2 ranks x 2 agents of vmas/navigation, 2 iterations of dg_mappo (K=2 D-GAT hops, eq. 11, D-SGD of
    D-GAT, actor and critic after every step): each rank trains its block with the D-GAT messages and
    their gradients exchanged point to point, and ends with the single-process parameters, rewards and
    per-agent bytes. ``all``: the other agents' rows of its networks are zeroed; ``local``: it builds its
    2 agents only (D-GAT, actor, critic, Adam's state, buffer: leading dim 2), its D-GAT placing its rows
    and the received ones by global index; the radius graph is built from every agent's positions in the
    joint observation its environment gives (navigation has no global state). ``latency``:
    ``link_latency=2``, each rank mixes with the neighbours' vectors (and the radius graph's matrices) of 2
    mixing steps earlier, which it received and kept; ``update``: ``mix_every=update``, 3 mixings with the
    collected batch's matrix after each update instead of one after every step; ``both``: the two together on
    the radius graph (each mixing of an update reads the vectors of 2 mixings earlier); ``paper``:
    ``dg_mappo_paper``'s per-agent starts (D-SGD of the D-GAT only), each rank's actor and critic taken
    from the group's draw (its rows), its output layers' orthogonal slices drawn after the agents before it."""
    options = OPTIONS.get(options)
    exp, leaves, sent = _dg_mappo_run(tmp_path / "single", graph, options=options)
    assert len(sent) == ITERS and all(int(s["exec"][0].sum()) > 0 and int(s["train"][0].sum()) > 0 for s in sent)
    mixed_with = exp.algorithm.callback.mixed_with
    cfg = exp.config
    steps = cfg.on_policy_n_minibatch_iters * cfg.on_policy_collected_frames_per_batch // cfg.on_policy_minibatch_size
    assert len(mixed_with) == ITERS * (3 if (options or {}).get("mix_every") == "update" else steps)
    if (options or {}).get("link_latency"):  # every mixing went through the history; the graph changed meanwhile
        assert exp.algorithm.callback.histories[GROUP].steps == len(mixed_with)
        assert any(not torch.equal(W, mixed_with[0]) for W in mixed_with)
    reference = {
        "mixings": len(mixed_with),
        "reward": _logged(exp, "collection_reward_reward_mean"),
        "leaves": {net: [p.detach().clone() for p in ps] for net, ps in leaves.items()},
        "sent": sent,
    }
    torch.save(reference, tmp_path / "reference.pt")
    spawn_local(_dg_mappo_worker, 2, tmp_path, graph, tmp_path / "reference.pt", agents, options,
                start_method="fork", timeout_s=120)


# ------------------------------------------------------------------ the entry point, and benchmarl report
@pytest.mark.slow
@pytest.mark.parametrize("agents", ["all", "local"])
def test_entry_point_trains_dg_mappo_on_two_ranks_like_one_process(tmp_path, agents):
    """``torchrun --nproc-per-node 2 -m benchmarl_decentral.distributed [--agents local] algorithm=dg_mappo ...``'s
    main on 2 forked ranks: the single-process rewards and evaluation, and a report whose communication row has
    dg_mappo's execution and network bytes."""
    import torch.multiprocessing as mp
    from benchmarl.hydra_config import load_experiment_from_hydra

    from benchmarl_decentral.distributed import free_port
    from benchmarl_decentral.distributed.__main__ import compose
    from benchmarl_decentral.reporting import build_report
    from test_distributed import _entry_worker

    entry = ["algorithm=dg_mappo", "task=coordsum/8x15-100", "algorithm.topology=ring", "algorithm.hidden_channels=8",
             "experiment.evaluation_interval=60", "experiment.evaluation_episodes=2", "experiment.loggers=[csv]",
             "experiment.max_n_iters=2", "experiment.max_n_frames=null",
             "experiment.on_policy_collected_frames_per_batch=60", "experiment.on_policy_n_envs_per_worker=2",
             "experiment.on_policy_minibatch_size=30", "experiment.on_policy_n_minibatch_iters=1",
             "model.num_cells=[16]", "critic_model.num_cells=[16]"]
    cfg, task_name, _ = compose([*entry, f"experiment.save_folder={tmp_path / 'single'}"])
    (tmp_path / "single").mkdir()
    single = load_experiment_from_hydra(cfg, task_name=task_name)
    single.run()

    for folder in ("dist", "scratch"):
        (tmp_path / folder).mkdir()
    mp.start_processes(_entry_worker, args=(2, free_port(), [f"--agents={agents}", *entry,
                                                             f"experiment.save_folder={tmp_path / 'dist'}"],
                                            tmp_path / "scratch"), nprocs=2, start_method="fork")
    (run,) = (tmp_path / "dist").iterdir()
    assert list((tmp_path / "scratch").iterdir()) == []

    def logged(folder, name):
        import csv

        with open(folder / folder.name / "scalars" / f"{name}.csv") as f:
            return [float(row[1]) for row in csv.reader(f)]

    for name in ("collection_reward_reward_mean", "eval_reward_episode_reward_mean"):
        assert logged(run, name) == logged(single.folder_name, name)
    # a ring of 8: every agent sends the same, so rank 0's mean equals the mean over all agents
    for name in ("comm_train_bytes_per_agent", "comm_exec_bytes_per_agent"):
        assert logged(run, name) == logged(single.folder_name, name) and min(logged(run, name)) > 0
    assert min(logged(run, "comm_exec_network_bytes_per_agent")) > 0
    assert logged(single.folder_name, "comm_exec_network_bytes_per_agent") == [0.0, 0.0]
    (comm,) = build_report([run], reps=50, reference=False).communication
    assert comm["algorithm"] == "dgmappo" and comm["exec"] > 0 and comm["train_network"] > 0 and comm["env"] > 0
    assert comm["total"] == pytest.approx(comm["train"] + comm["exec"] + comm["env"])


# ------------------------------------------------------------------ --agents local: a block's D-GAT, its start
@pytest.mark.parametrize(("first", "m"), [(0, 2), (2, 2), (1, 3)])
def test_dense_dgat_of_a_block_of_receivers_equals_those_rows_of_the_whole_group(first, m):
    """``dense_dgat_conv(..., block=(first, m))`` with the block's parameter sets: the rows of the whole
    group's layer, forward and gradient, on a batch of random graphs (eqs. 7-8, self loops added)."""
    from benchmarl_decentral.models.dgat import dense_dgat_conv
    from benchmarl_decentral.nn.dgat_conv import DGATConv

    torch.manual_seed(0)
    full = DGATConv(F, 3, N, heads=2, value="linear")
    part = DGATConv(F, 3, m, heads=2, value="linear")
    with torch.no_grad():
        for p, q in zip(part.parameters(), full.parameters(), strict=True):
            p.copy_(q[first:first + m])
    x = torch.randn(*BATCH, N, F, requires_grad=True)
    adj = torch.rand(*BATCH, N, N) < 0.5
    want = dense_dgat_conv(full, x, adj)[..., first:first + m, :]
    got = dense_dgat_conv(part, x, adj, block=(first, m))
    torch.testing.assert_close(got, want)
    (want_grad,) = torch.autograd.grad(want.square().sum(), x)
    (got_grad,) = torch.autograd.grad(got.square().sum(), x)
    torch.testing.assert_close(got_grad, want_grad)


def test_dg_mappo_starts_every_agent_from_the_same_draw_whatever_agents_a_process_builds(tmp_path):
    """The common psi_0, actor and critic (eq. 9) do not depend on the number of agents built: 2 and 4
    agents of vmas/navigation under the same seed start from the same parameters (each network drawn
    from a seed of its own, the D-GAT's for one agent)."""
    from conftest import make_experiment

    starts = {}
    for n in (2, 4):
        (tmp_path / str(n)).mkdir()
        exp = make_experiment(
            tmp_path / str(n), algorithm="dg_mappo", task="vmas/navigation", task_overrides={"n_agents": n},
            algorithm_overrides={"topology": "ring", "hidden_channels": 8}, max_n_iters=1,
        )
        leaves = exp.algorithm.network_leaves(GROUP)
        for net, ps in leaves.items():
            assert all(torch.equal(p[i], p[0]) for p in ps for i in range(n)), net  # a common start
        starts[n] = {net: [p[0].detach().clone() for p in ps] for net, ps in leaves.items()}
    for net in starts[2]:
        for p, q in zip(starts[2][net], starts[4][net], strict=True):
            assert torch.equal(p, q), net
