"""MATRPO on ranks (issue 18): each rank updates its block of agents; the ADMM link values travel point to point.

Oracle: 2 gloo ranks, each stepping its copy of the environment with the joint
action (:class:`~benchmarl_decentral.distributed.experiment.ActionExchange`),
end with the single-process run's parameters, returns, per-agent statistics
and ADMM bytes for their own agents, while every row of the other rank's
agents is zeroed on them (nothing may read it).
"""

from __future__ import annotations

import csv

import pytest
import torch

import benchmarl_decentral.objectives.matrpo as matrpo_objectives
from benchmarl_decentral.distributed import partition_agents, spawn_local

from conftest import make_experiment

ITERS, N = 2, 8
LINKS = torch.tensor([[i, i + 1] for i in range(N - 1)] + [[0, N - 1]])  # the ring, canonical (i < j)


def _config(mode: str, failure: float, metric: str, general: bool = False, task: str = "coordsum/8x15-100",
            tol: float = 0.0, beta: float = 1.0) -> dict:
    topology = {"topology": "visibility"} if task.startswith("smax/") else {}
    return dict(general=general,
        algorithm="matrpo", task=task, max_n_iters=ITERS, on_policy_minibatch_size=20,
        loggers=["csv"],
        algorithm_overrides={"admm_mode": mode, "link_failure": failure, "admm_metric": metric, "beta": beta,
                             "admm_iterations": 12, "admm_tol": tol, "exact_kkt": metric == "gauss_newton",
                             **topology},
    )


def _record_link_updates(store: list, ring: bool = True) -> None:
    """Wraps ``run_admm`` as ``matrpo_update`` calls it: every update's links and z/y updates per link."""
    run_admm = matrpo_objectives.run_admm

    def recording(*args, **kwargs):
        state = run_admm(*args, **kwargs)
        if ring:
            assert sorted(map(tuple, state.links.tolist())) == sorted(map(tuple, LINKS.tolist()))
        store.append((state.links.cpu().clone(), state.link_updates.cpu().clone()))
        return state

    matrpo_objectives.run_admm = recording


def _params(exp) -> dict:
    return {name: p.detach().clone() for name, p in exp.algorithm.policy_parameters("agents").items()}


def _critic(exp, live: bool = False) -> list:
    leaves = exp.algorithm._critic_stacks["agents"].leaves
    return list(leaves) if live else [p.detach().clone() for p in leaves]


def _logged(exp, name):
    with open(exp.folder_name / exp.name / "scalars" / f"{name}.csv") as f:
        return [float(row[1]) for row in csv.reader(f)]


STATS = ("kl", "step_fraction", "primal_residual", "dual_residual", "admm_updates", "primal_residual_rel",
         "critic_explained_variance")
#: statistics that read a link's far end's log-ratios J^j x^j
FAR_END_STATS = ("primal_residual", "primal_residual_rel")


def _worker(rank: int, world_size: int, folder, reference, config, agents="all") -> None:
    from benchmarl_decentral.distributed.experiment import build_rank_experiment

    ref = torch.load(reference, weights_only=False)
    owner = partition_agents(N, world_size)
    local = torch.nonzero(owner == rank).flatten()
    others = torch.nonzero(owner != rank).flatten()
    updates: list = []
    _record_link_updates(updates, ring=config["task"].startswith("coordsum"))
    (folder / f"rank{rank}").mkdir(parents=True, exist_ok=True)
    general = config.pop("general")
    exp = build_rank_experiment(lambda wrap=None: make_experiment(folder / f"rank{rank}", task_wrapper=wrap, **config),
                                algorithm="matrpo", sizes={"agents": N}, agents=agents)
    exp.algorithm.force_general_path = general
    assert exp.algorithm.transport is not None and torch.equal(exp.algorithm.held_agents("agents"), local)
    if agents == "all":
        with torch.no_grad():  # what this rank does not own: zeros, which nothing here may read
            for p in list(exp.algorithm.policy_parameters("agents").values()) + _critic(exp, live=True):
                p[others] = 0.0
    else:  # this rank built its block only: networks (the joint models' heads: every agent), optimizer, buffer
        assert exp.group_map == {"agents": [f"agent_{i}" for i in local.tolist()]}
        stacked = list(exp.algorithm.policy_parameters("agents").values()) + _critic(exp, live=True)
        assert {p.shape[0] for p in stacked} == {local.numel()}
        out_bias = [p for name, p in exp.algorithm.policy_parameters("agents").items() if name.endswith("bias")][-1]
        assert out_bias.shape[-1] == N * 15  # the output layer: a head for every agent of the group
        for name, p in exp.algorithm.policy_parameters("agents").items():  # theta_0: one process's draw
            torch.testing.assert_close(p, ref["policy0"][name][local], rtol=0, atol=0)
    exp.run()

    assert _logged(exp, "collection_reward_reward_mean") == ref["reward"]  # the same joint actions, episodes
    for name, p in _params(exp).items():
        mine = p[local] if agents == "all" else p
        torch.testing.assert_close(mine, ref["policy"][name][local], rtol=1e-5, atol=1e-6)
        if agents == "all":
            assert torch.count_nonzero(p[others]) == 0  # never updated here: their owner's
    for p, q in zip(_critic(exp), ref["critic"], strict=True):
        torch.testing.assert_close(p[local] if agents == "all" else p, q[local], rtol=1e-5, atol=1e-6)
    if agents == "local":
        optimized = [p for g in exp.optimizers["agents"]["loss_critic"].param_groups for p in g["params"]]
        state = exp.optimizers["agents"]["loss_critic"].state
        assert state and all(t.shape[0] == local.numel() for st in state.values() for t in st.values() if t.dim())
        assert {p.shape[0] for p in optimized} == {local.numel()}
        stored = exp.replay_buffers["agents"].storage._storage
        assert stored.get(("agents", "observation")).shape[:2] == (60, local.numel())
    # per-agent statistics: this rank's agents, as the single process logged them (residuals from the
    # far ends' log-ratios recovered from what they sent)
    algo = config["algorithm_overrides"]
    every_link_every_iteration = algo["admm_mode"] == "synchronous" and algo["link_failure"] == 0
    crossing_agents = torch.cat([links[owner[links[:, 0]] != owner[links[:, 1]]].reshape(-1)
                                 for links, _ in ref["link_updates"]])
    for i in local.tolist():
        for stat in STATS:
            if stat in FAR_END_STATS and not every_link_every_iteration and i in crossing_agents.tolist():
                # one link at a time, or failed links: the far end may have moved (over its other links) since
                # it last sent to i, and i's residual reads the log-ratios it last received, not its current ones
                continue
            torch.testing.assert_close(torch.tensor(_logged(exp, f"matrpo_agents_agent_{i}_{stat}")),
                                       torch.tensor(ref["stats"][(i, stat)]), rtol=1e-4, atol=1e-6,
                                       msg=lambda m, i=i, stat=stat: f"agent {i} {stat}: {m}")
    scalars = exp.folder_name / exp.name / "scalars"
    assert not any((scalars / f"matrpo_agents_agent_{i}_kl.csv").exists() for i in others.tolist())
    # bytes: one (M, K) float32 value per link end and z/y update (M = 60 samples, K = 8 heads); the links of
    # this rank's agents, counted from what was sent; the part to the other rank's agents left the process
    value = 60 * N * 4
    train, network = [], []
    for links, counts in ref["link_updates"]:
        ends = links.reshape(-1)
        if algo["admm_tol"]:  # the per-link stop: every link's ends send their value and a verdict byte every
            # iteration, idle or not (the loop runs all admm_iterations on ranks)
            per_end = torch.full((ends.numel(),), algo["admm_iterations"] * (value + 1))
        else:
            per_end = (counts[:, None].expand(-1, 2).reshape(-1) * value)
        mine = torch.isin(ends, local)
        crossing = (owner[links[:, 0]] != owner[links[:, 1]])[:, None].expand(-1, 2).reshape(-1)
        train.append(float(per_end[mine].sum()) / local.numel())
        network.append(float(per_end[mine & crossing].sum()) / local.numel())
    assert max(network) > 0 and all(n <= t for n, t in zip(network, train))  # (visibility: an update may
    # have no link across the ranks)
    assert _logged(exp, "comm_train_bytes_per_agent") == pytest.approx(train)
    assert _logged(exp, "comm_train_network_bytes_per_agent") == pytest.approx(network)
    assert len(updates) == len(ref["link_updates"])
    for (links, got), (want_links, want) in zip(updates, ref["link_updates"]):
        assert torch.equal(links, want_links)  # the same graph (visibility: read from the same batch)
        touching = (owner[links] == rank).any(1)  # the links this rank updates (an end here)
        assert torch.equal(got[touching], want[touching])
    assert sum(int(c.sum()) for _, c in updates) > 0


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "failure", "metric", "general"), [
    ("random", 0.3, "kl", False),  # Algorithm 1: one random link per iteration, failing links
    ("round_robin", 0.0, "kl", False),
    ("synchronous", 0.3, "gauss_newton", False),  # every link each iteration; the exact step's metric
    ("random", 0.3, "kl_exact", False),  # the exact step with the true-KL metric (per-agent multipliers)
    ("synchronous", 0.0, "kl", False),  # every link exchanges every iteration: the far ends' residuals are exact
    ("random", 0.0, "kl", True),  # the joint model through GatheredJointNetwork (any BenchMARL model's path)
    ("smax/8m", 0.0, "kl", False),  # a dynamic graph: SMAC ally visibility of each batch (random links)
])
def test_matrpo_training_on_agent_blocks_equals_the_single_process_run(tmp_path, mode, failure, metric, general):
    """2 ranks x 4 agents of coordsum/8x15-100, 2 policy iterations of MATRPO on the ring.

    Every rank draws the same link schedule and failures from the run's seed
    (no message), steps the primal updates of its agents, and sends their link
    values ``y + beta C J x`` (eq. 22) to the other end's rank when a link
    crosses; the critics and the line search are per agent. The rank's agents
    end with the single-process parameters, and log the same statistics and bytes.
    """
    if mode.startswith("smax/"):
        pytest.importorskip("jaxmarl")
        config = _config("random", failure, metric, general, task=mode)
    else:
        config = _config(mode, failure, metric, general)
    _reference(tmp_path, config, ring=not mode.startswith("smax/"))
    # jax (SMAX) does not survive a fork of a process that has run it: spawn fresh ranks there
    spawn_local(_worker, 2, tmp_path, tmp_path / "reference.pt", config,
                start_method="spawn" if mode.startswith("smax/") else "fork", timeout_s=120)


@pytest.mark.slow
def test_matrpo_per_link_stop_on_agent_blocks_equals_the_single_process_run(tmp_path):
    """matrpo's default ADMM (kl_exact, beta 10, synchronous, per-link stop admm_tol = 0.05) on 2 ranks x 4 agents.

    Each link's two ends run its stop test on what they hold (the far end's
    ``J x`` recovered from the value it sent that iteration), swap verdicts
    and idle only when both agree; idle links still send their values. The
    links idle after different numbers of z/y updates (8 to 11 of 12 here,
    checked on the single-process run), and every rank's agents end with the
    single-process parameters, statistics and z/y updates per link; bytes:
    every iteration, one value and one verdict byte per link end.
    """
    config = _config("synchronous", 0.0, "kl_exact", tol=0.05, beta=10.0)
    _reference(tmp_path, config)
    counts = [c for _, c in torch.load(tmp_path / "reference.pt", weights_only=False)["link_updates"]]
    assert any(bool((c < 12).any()) for c in counts)  # the stop acted: some links idled
    assert len({int(v) for c in counts for v in c}) > 1  # at different times
    spawn_local(_worker, 2, tmp_path, tmp_path / "reference.pt", config, start_method="fork", timeout_s=300)


def _reference(tmp_path, config: dict, ring: bool = True) -> None:
    """The single-process run of ``config``: what every rank's agents must end with (``reference.pt``)."""
    general = config["general"]
    updates: list = []
    run_admm = matrpo_objectives.run_admm
    _record_link_updates(updates, ring=ring)
    try:
        (tmp_path / "single").mkdir()
        exp = make_experiment(tmp_path / "single", **{k: v for k, v in config.items() if k != "general"})
        exp.algorithm.force_general_path = general
        policy0 = _params(exp)
        exp.run()
    finally:
        matrpo_objectives.run_admm = run_admm
    assert len(updates) == ITERS
    if config["algorithm_overrides"]["link_failure"]:
        assert exp.algorithm.last_stats["agents"].links_up < 1.0
    reference = {
        "reward": _logged(exp, "collection_reward_reward_mean"),
        "policy0": policy0,
        "policy": _params(exp),
        "critic": _critic(exp),
        "stats": {(i, stat): _logged(exp, f"matrpo_agents_agent_{i}_{stat}") for i in range(N) for stat in STATS},
        "link_updates": updates,
    }
    assert any(float(v.abs().sum()) > 0 for v in reference["policy"].values())
    torch.save(reference, tmp_path / "reference.pt")


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "failure"), [("random", 0.3), ("synchronous", 0.0)])
def test_matrpo_on_ranks_that_build_their_agents_only_equals_the_single_process_run(tmp_path, mode, failure):
    """``--agents local``: 2 ranks x 4 agents of coordsum/8x15-100, each building its block only.

    The rank's joint policy models (a head for each of the 8 agents), critics,
    the critics' Adam state and its replay buffer have leading dim 4; each
    agent starts from the single-process draw (the group's networks drawn
    as one process draws them, the block kept), the policy draws the whole
    group's sampling noise and keeps its block's, and the environment offers
    the joint action and every agent's action mask (what the joint models
    score). The block ends with the single-process parameters, returns,
    statistics and ADMM bytes.
    """
    config = _config(mode, failure, "kl")
    _reference(tmp_path, config)
    spawn_local(_worker, 2, tmp_path, tmp_path / "reference.pt", config, "local", start_method="fork", timeout_s=120)


ENTRY = ["algorithm=matrpo", "task=coordsum/8x15-100", "algorithm.admm_iterations=8",
         "experiment.evaluation_interval=60", "experiment.evaluation_episodes=2", "experiment.loggers=[csv]",
         "experiment.max_n_iters=2", "experiment.max_n_frames=null", "experiment.on_policy_collected_frames_per_batch=60",
         "experiment.on_policy_n_envs_per_worker=2", "experiment.on_policy_minibatch_size=20",
         "experiment.on_policy_n_minibatch_iters=1", "model.num_cells=[16]", "critic_model.num_cells=[16]"]


@pytest.mark.slow
def test_entry_point_trains_matrpo_on_two_ranks_like_one_process(tmp_path):
    """``torchrun --nproc-per-node 2 -m benchmarl_decentral.distributed algorithm=matrpo ...`` (its main on 2 ranks):
    the run folder, JSON and CSV of a normal run, the single process's returns, and ``benchmarl report`` reads
    its ADMM bytes, the part sent to the other rank among them."""
    import torch.multiprocessing as mp

    from benchmarl_decentral.distributed import free_port
    from benchmarl_decentral.reporting import build_report
    from test_distributed import _entry_worker, single_run

    single = single_run(ENTRY, tmp_path / "single")

    (tmp_path / "dist").mkdir()
    (tmp_path / "scratch").mkdir()
    mp.start_processes(_entry_worker, args=(2, free_port(), [*ENTRY, f"experiment.save_folder={tmp_path / 'dist'}"],
                                            tmp_path / "scratch"), nprocs=2, start_method="fork")
    (run,) = (tmp_path / "dist").iterdir()
    assert list((tmp_path / "scratch").iterdir()) == [] and (run / f"{run.name}.json").is_file()

    def logged(folder, name):
        with open(folder / folder.name / "scalars" / f"{name}.csv") as f:
            return [float(row[1]) for row in csv.reader(f)]

    for name in ("collection_reward_reward_mean", "eval_reward_episode_reward_mean"):
        assert logged(run, name) == logged(single.folder_name, name)
    for i in range(4):  # rank 0's agents
        assert logged(run, f"matrpo_agents_agent_{i}_kl") == pytest.approx(
            logged(single.folder_name, f"matrpo_agents_agent_{i}_kl"), rel=1e-4, abs=1e-7)
    assert min(logged(run, "comm_train_network_bytes_per_agent")) > 0
    assert logged(single.folder_name, "comm_train_network_bytes_per_agent") == [0.0, 0.0]
    (comm,) = build_report([run], reps=50, reference=False).communication
    assert comm["algorithm"] == "matrpo" and comm["train_network"] > 0 and comm["env"] > 0
