"""Property and oracle tests for benchmarl_decentral.consensus (CPU, pure torch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from benchmarl_decentral.consensus import (
    MIXING_RULES,
    TOPOLOGIES,
    ConsensusMixer,
    adjacency_to_edge_index,
    average_degree,
    build_mixing_matrix,
    build_topology,
    consensus_distance,
    degrees,
    drop_links,
    edge_index_to_adjacency,
    from_adjacency,
    full,
    gradient_disagreement,
    is_connected,
    is_doubly_stochastic,
    is_row_stochastic,
    is_symmetric,
    knn_ring,
    metropolis,
    mix_,
    mix_delayed_,
    radius,
    ring,
    row,
    snapshot,
    spectral_gap,
    uniform,
    uniform_knn,
    update_variance,
)

NK = [(n, k) for n in (1, 2, 4, 5, 10) for k in range(n)]


def random_undirected(n: int, seed: int, p: float = 0.4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = (torch.rand(n, n, generator=g) < p).triu(1)
    return a | a.T


# --------------------------------------------------------------------- topology


@pytest.mark.parametrize("n,k", NK)
def test_knn_ring_degrees_and_symmetry(n, k):
    adj = knn_ring(n, k)
    assert adj.dtype == torch.bool and adj.shape == (n, n)
    assert not adj.diagonal().any()
    assert (degrees(adj) == k).all()  # in-degree
    assert (adj.sum(0) == k).all()  # out-degree: circulant
    assert is_symmetric(adj) == (k % 2 == 0 or k == n - 1)
    assert average_degree(adj).item() == pytest.approx(k)


def test_knn_ring_fig1_offsets():
    # DecPG Fig. 1 (n=10): k=3 -> i-1, i+1 and the red one-way edge i+2
    adj = knn_ring(10, 3)
    assert adj[0].nonzero().flatten().tolist() == [1, 2, 9]
    assert not adj[2, 0]  # one-directional


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 10])
def test_knn_ring_extremes(n):
    assert torch.equal(knn_ring(n, n - 1), full(n))
    assert not knn_ring(n, 0).any()
    assert is_connected(full(n))


def test_ring():
    for n in (3, 5, 10):
        assert torch.equal(ring(n), knn_ring(n, 2))
        assert is_symmetric(ring(n)) and is_connected(ring(n))
    assert not ring(1).any()
    assert torch.equal(ring(2), full(2))


def test_is_connected_directed():
    cycle = torch.roll(torch.eye(4, dtype=torch.bool), 1, dims=1)  # i receives from i+1
    assert is_connected(cycle)
    path = cycle.clone()
    path[3, 0] = False  # break the cycle: no longer strongly connected
    assert not is_connected(path)
    assert not is_connected(knn_ring(6, 0))
    two_components = torch.block_diag(full(3), full(3))
    assert not is_connected(two_components)


def test_edge_index_roundtrip():
    adj = knn_ring(6, 3)
    ei = adjacency_to_edge_index(adj)
    assert ei.shape == (2, 18)
    # edge_index[0] = source j, edge_index[1] = target i  for A[i, j]
    assert adj[ei[1], ei[0]].all()
    assert torch.equal(edge_index_to_adjacency(ei, 6), adj)


def test_from_adjacency_and_build_topology():
    lst = [[1, 1, 0], [1, 0, 1], [0, 1, 0]]  # diagonal ignored
    adj = from_adjacency(lst, n=3, require_symmetric=True, require_connected=True)
    assert adj.dtype == torch.bool and not adj.diagonal().any()
    assert adj.tolist() == [[False, True, False], [True, False, True], [False, True, False]]
    assert torch.equal(build_topology("custom", 3, adjacency=lst), adj)
    assert torch.equal(build_topology("knn_ring", 7, k=4), knn_ring(7, 4))
    assert torch.equal(build_topology("ring", 5), ring(5))
    assert torch.equal(build_topology("full", 5), full(5))
    assert set(TOPOLOGIES) == {"knn_ring", "ring", "full", "custom"}


def test_radius_hand_placed():
    pos = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [3.0, 1.5]])
    expected = torch.tensor(
        [[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]], dtype=torch.bool
    )
    assert torch.equal(radius(pos, 1.5), expected)  # distance == r is a link
    assert not radius(pos, 0.5).any()
    assert torch.equal(radius(pos, 10.0), full(4))
    # cap: each agent keeps only its nearest neighbour
    capped = radius(pos, 10.0, max_num_neighbors=1)
    assert (degrees(capped) == 1).all()
    assert capped[0].nonzero().flatten().tolist() == [1]
    assert capped[3].nonzero().flatten().tolist() == [2]


def test_radius_batched():
    g = torch.Generator().manual_seed(0)
    pos = torch.rand(2, 3, 5, 2, generator=g)
    adj = radius(pos, 0.5)
    assert adj.shape == (2, 3, 5, 5) and adj.dtype == torch.bool
    for b in range(2):
        for c in range(3):
            assert torch.equal(adj[b, c], radius(pos[b, c], 0.5))
    assert is_symmetric(adj)
    assert not adj.diagonal(dim1=-2, dim2=-1).any()
    assert average_degree(adj).shape == (2, 3)
    assert row(adj).shape == (2, 3, 5, 5)


# ----------------------------------------------------------------------- mixing


@pytest.mark.parametrize("n", [4, 5, 10])
def test_uniform_knn_doubly_stochastic(n):
    for k in range(n):
        W = uniform_knn(n, k)
        assert is_doubly_stochastic(W)
        off = W[knn_ring(n, k)]
        assert torch.allclose(off, torch.full_like(off, 1 / (k + 1)))
        assert torch.allclose(W.diagonal(), torch.full((n,), 1 / (k + 1)))


@pytest.mark.parametrize("seed", range(5))
def test_metropolis_random_undirected(seed):
    adj = random_undirected(7, seed)
    assert not adj.diagonal().any() and 0 < adj.sum() < 42 and degrees(adj).unique().numel() > 1
    W = metropolis(adj)
    assert is_doubly_stochastic(W) and torch.allclose(W, W.T)
    assert (W[~adj & ~torch.eye(7, dtype=torch.bool)] == 0).all()
    d = degrees(adj)
    i, j = adj.nonzero()[0]
    assert W[i, j].item() == pytest.approx(1 / (1 + max(d[i], d[j]).item()))


def test_row_stochastic_batched():
    adj = torch.stack([random_undirected(6, s, 0.3) for s in range(4)]).reshape(2, 2, 6, 6)
    adj[0, 0, 0, 1] = True  # one directed edge
    W = row(adj)
    assert W.shape == (2, 2, 6, 6) and is_row_stochastic(W)
    n_i = degrees(adj) + 1  # |N_i| includes self
    assert torch.allclose(W.diagonal(dim1=-2, dim2=-1), 1 / n_i.float())
    assert torch.equal(uniform(adj), W)
    # irregular graph (path 0-1-2): row but not doubly stochastic
    path = from_adjacency([[0, 1, 0], [1, 0, 1], [0, 1, 0]])
    assert is_row_stochastic(row(path)) and not is_doubly_stochastic(row(path))
    assert is_doubly_stochastic(metropolis(path))


@pytest.mark.parametrize("seed", range(3))
def test_spectral_gap_matches_numpy(seed):
    adj = random_undirected(8, seed) | torch.roll(torch.eye(8, dtype=torch.bool), 1, 1)
    for W in (row(adj), metropolis(adj | adj.T), uniform_knn(8, 3)):
        mod = np.sort(np.abs(np.linalg.eigvals(W.double().numpy())))[::-1]
        assert spectral_gap(W) == pytest.approx(1 - mod[1], abs=1e-9)


def test_spectral_gap_decpg_knn():
    # DecPG sec. 4: n=10, k=2,4,6,8 -> spectral gaps ~0.13, 0.35, 0.63, 0.89
    gaps = [spectral_gap(uniform_knn(10, k)) for k in (2, 4, 6, 8)]
    assert gaps == pytest.approx([0.13, 0.35, 0.63, 0.89], abs=0.03)
    assert gaps == sorted(gaps)
    assert spectral_gap(uniform(full(6))) == pytest.approx(1.0, abs=1e-6)
    assert spectral_gap(uniform_knn(6, 0)) == pytest.approx(0.0, abs=1e-9)


def test_build_mixing_matrix_dispatch():
    adj = ring(5)
    assert torch.equal(build_mixing_matrix("uniform", adj), uniform(adj))
    assert torch.equal(build_mixing_matrix("row", adj), row(adj))
    assert torch.equal(build_mixing_matrix("metropolis", adj), metropolis(adj))
    assert set(MIXING_RULES) == {"uniform", "metropolis", "row"}


# ----------------------------------------------------------------- mixing step


@pytest.mark.parametrize("shape", [(), (3,), (2, 3)])
def test_mix_matches_einsum_and_keeps_mean(shape):
    n = 5
    g = torch.Generator().manual_seed(1)
    p = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    W = uniform_knn(n, 2)
    expected = torch.einsum("ij,j...->i...", W.double(), p)
    mean = p.mean(0)
    mix_([p], W)
    assert torch.allclose(p, expected)
    assert torch.allclose(p.mean(0), mean)  # doubly stochastic W keeps the average


def test_mix_full_and_empty_topologies():
    n = 4
    p, q = torch.randn(n, 3), torch.randn(n, 2, 2)
    mix_([p, q], uniform_knn(n, n - 1))
    assert torch.allclose(p, p[:1].expand_as(p)) and torch.allclose(q, q[:1].expand_as(q))
    assert consensus_distance([p, q]).item() == pytest.approx(0.0, abs=1e-10)
    r = torch.randn(n, 3)
    r0 = r.clone()
    mix_([r], uniform_knn(n, 0))
    assert torch.equal(r, r0)


def test_mix_parameters_no_grad_tracking():
    w = nn.Parameter(torch.randn(3, 4))
    expected = uniform_knn(3, 2) @ w.detach()
    mix_([w], uniform_knn(3, 2))
    assert isinstance(w, nn.Parameter) and w.requires_grad and w.grad_fn is None
    assert torch.allclose(w.detach(), expected)
    w.sum().backward()  # still a usable leaf
    assert torch.equal(w.grad, torch.ones(3, 4))


def test_mix_tensordict_params_from_modules():
    tensordict = pytest.importorskip("tensordict")
    mods = [nn.Linear(3, 2) for _ in range(4)]
    params = tensordict.nn.TensorDictParams(tensordict.TensorDict.from_modules(*mods, as_module=True))
    W = uniform_knn(4, 2)
    expected = {k: torch.einsum("ij,j...->i...", W, v.detach()) for k, v in params.items()}
    mix_(params.values(include_nested=True, leaves_only=True), W)
    for k, v in params.items():
        assert isinstance(v, nn.Parameter) and torch.allclose(v.detach(), expected[k])


def _sgd_setup(when: str, lr: float = 0.1):
    g = torch.Generator().manual_seed(0)
    w = nn.Parameter(torch.randn(4, 3, generator=g))
    b = nn.Parameter(torch.randn(4, generator=g))
    target = torch.randn(4, 3, generator=g)
    opt = torch.optim.SGD([w, b], lr=lr)
    mixer = ConsensusMixer([w, b], adjacency=knn_ring(4, 2), rule="uniform")
    handle = mixer.attach(opt, when=when)
    loss = ((w - target) ** 2).sum() + (b**3).sum()
    loss.backward()
    before = [w.detach().clone(), b.detach().clone()]
    grads = [2 * (before[0] - target), 3 * before[1] ** 2]  # by hand
    assert torch.allclose(w.grad, grads[0]) and torch.allclose(b.grad, grads[1])
    opt.step()
    return mixer, opt, handle, [w, b], before, grads, lr


def test_pre_hook_is_decpg_update():
    mixer, _, _, params, before, grads, lr = _sgd_setup("pre")
    W = mixer.matrix()
    for p, t, gr in zip(params, before, grads):
        assert torch.allclose(p.detach(), W @ t - lr * gr, atol=1e-6)


def test_post_hook_is_adapt_then_combine():
    mixer, _, _, params, before, grads, lr = _sgd_setup("post")
    W = mixer.matrix()
    for p, t, gr in zip(params, before, grads):
        assert torch.allclose(p.detach(), W @ (t - lr * gr), atol=1e-6)


def test_hook_remove_and_enabled():
    mixer, opt, handle, params, *_ = _sgd_setup("pre")
    handle.remove()
    opt.zero_grad()
    w0 = params[0].detach().clone()
    opt.step()  # no gradient, no hook: nothing changes
    assert torch.equal(params[0].detach(), w0)
    mixer.attach(opt)
    mixer.enabled = False
    opt.step()
    assert torch.equal(params[0].detach(), w0)
    assert mixer.step() is None
    mixer.enabled = True
    opt.step()
    assert torch.allclose(params[0].detach(), mixer.matrix() @ w0)


def test_mixer_attributes_and_set_adjacency():
    p = torch.randn(6, 2)
    p0 = p.clone()
    mixer = ConsensusMixer([p], adjacency=knn_ring(6, 2), rule="metropolis")
    assert mixer.n_agents == 6
    assert mixer.spectral_gap == pytest.approx(spectral_gap(metropolis(knn_ring(6, 2))))
    mixer.set_adjacency(full(6))
    assert torch.allclose(mixer.matrix(), torch.full((6, 6), 1 / 6))
    W = mixer.step()
    # one full-graph step is the average: every row equal to float32 precision (a BLAS kernel may sum
    # rows in different orders, so bitwise equality across rows is not guaranteed; it failed after
    # test_decpg.py had run in the same session)
    torch.testing.assert_close(p, p[:1].expand_as(p), rtol=1.3e-6, atol=1e-6)
    torch.testing.assert_close(p[0], p0.mean(0), rtol=1.3e-6, atol=1e-6)
    assert W is mixer.matrix()


# ---------------------------------------------------------------- link failure


@pytest.mark.parametrize("rule", MIXING_RULES)
def test_link_failure(rule):
    n = 8
    adj = knn_ring(n, 4)
    base = build_mixing_matrix(rule, adj)
    p = torch.randn(n, 3)
    assert torch.equal(ConsensusMixer([p], adjacency=adj, rule=rule).step(), base)
    mixer = ConsensusMixer(
        [p], adjacency=adj, rule=rule, link_failure=0.5, generator=torch.Generator().manual_seed(0)
    )
    Ws = [mixer.step().clone() for _ in range(5)]
    assert any(not torch.equal(W, base) for W in Ws)
    for W in Ws:
        assert is_row_stochastic(W)
        assert ((W > 0) <= (base > 0)).all()  # only existing links survive
        if rule == "metropolis":
            assert is_doubly_stochastic(W)
    assert mixer.spectral_gap == pytest.approx(spectral_gap(base))


# ------------------------------------------------------------------ link latency

LATENCY_N, LATENCY_STEPS, LATENCY_LR = 5, 7, 0.1


def _latency_run(latency: int, steps: int = LATENCY_STEPS, mixer_state=None):
    """SGD on agent i's sum(scale_i * sin(theta_i)) with decpg's pre-hook mixing on a ring with failing links.

    Returns the parameters after each step, the W of each step and the mixer.
    """
    gen = torch.Generator().manual_seed(3)
    theta = nn.Parameter(torch.randn(LATENCY_N, 3, generator=gen))
    scale = torch.rand(LATENCY_N, 1, generator=gen) + 0.5
    mixer = ConsensusMixer([theta], adjacency=ring(LATENCY_N), rule="uniform", link_failure=0.4,
                           generator=torch.Generator().manual_seed(11), latency=latency)
    opt = torch.optim.SGD([theta], lr=LATENCY_LR)
    mixer.attach(opt, when="pre")
    after, used = [theta.detach().clone()], []
    for _ in range(steps):
        opt.zero_grad()
        (scale * torch.sin(theta)).sum().backward()
        opt.step()
        after.append(theta.detach().clone())
        used.append(mixer.matrix().clone())
    return after, used, mixer, scale


@pytest.mark.parametrize("latency", [1, 2, 3])
def test_link_latency_is_the_hand_written_delayed_dsgd_step(latency):
    """theta_i(t+1) = W_s,ii theta_i(t) + sum_{j != i} W_s,ij theta_j(s) - lr g_i(theta_i(t)), s = max(t - d, 0)."""
    after, used, mixer, scale = _latency_run(latency)
    sync_after, sync_used, _, _ = _latency_run(0)
    # the link failures are drawn as without latency: the same W at every step, some with failed links
    assert all(torch.equal(W, V) for W, V in zip(used, sync_used))
    assert any(not torch.equal(W, mixer._base_W) for W in used)
    ref = [after[0].double()]
    for t in range(LATENCY_STEPS):
        s = max(t - latency, 0)
        W, cur, old = used[s].double(), ref[t], ref[s]
        nxt = torch.zeros_like(cur)
        for i in range(LATENCY_N):
            nxt[i] = W[i, i] * cur[i] - LATENCY_LR * scale[i].double() * torch.cos(cur[i])
            for j in range(LATENCY_N):
                if j != i:
                    nxt[i] += W[i, j] * old[j]
        ref.append(nxt)
    for got, want in zip(after, ref):
        torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(after[-1], sync_after[-1], atol=1e-4)  # the delay changes the run
    assert mixer.history.steps == LATENCY_STEPS


def test_link_latency_zero_is_the_synchronous_step_bit_for_bit():
    """latency=0 keeps no history and mixes with mix_ (the step before the key existed), bit for bit."""
    after, used, mixer, scale = _latency_run(0)
    assert mixer.history is None
    theta = nn.Parameter(after[0].clone())
    opt = torch.optim.SGD([theta], lr=LATENCY_LR)  # no mixer: the gradient, mix_, then the optimizer's step
    for t in range(LATENCY_STEPS):
        opt.zero_grad()
        (scale * torch.sin(theta)).sum().backward()
        mix_([theta], used[t])
        opt.step()
        assert torch.equal(after[t + 1], theta.detach())


def test_mix_delayed_with_current_vectors_is_mix():
    gen = torch.Generator().manual_seed(0)
    p, W = torch.randn(6, 2, 3, generator=gen), metropolis(knn_ring(6, 4))
    q = p.clone()
    mix_([p], W)
    mix_delayed_([q], [q.clone()], W)
    torch.testing.assert_close(p, q)
    with pytest.raises(ValueError, match="delayed vectors"):
        mix_delayed_([q], [q[:, :1]], W)


def test_link_history_round_trip_continues_exactly(tmp_path):
    """A mixer restored from its saved history and link-failure state goes on as the one that never stopped."""
    after, used, mixer, _ = _latency_run(3, steps=LATENCY_STEPS)
    torch.save({"history": mixer.history.state_dict(), "generator": mixer.generator.get_state(),
                "theta": after[2]}, tmp_path / "state.pt")
    # a run stopped after 2 steps (its history: 2 entries, the ring not yet turned over), resumed
    stopped, _, stopped_mixer, _ = _latency_run(3, steps=2)
    torch.save({"history": stopped_mixer.history.state_dict(), "generator": stopped_mixer.generator.get_state(),
                "theta": stopped[-1]}, tmp_path / "stopped.pt")
    state = torch.load(tmp_path / "stopped.pt", weights_only=True)
    _, _, fresh, scale = _latency_run(3, steps=0)
    fresh.history.load_state_dict(state["history"])
    fresh.generator.set_state(state["generator"])
    with torch.no_grad():
        fresh.leaves[0].copy_(state["theta"])
    opt = torch.optim.SGD(fresh.leaves, lr=LATENCY_LR)
    fresh.attach(opt, when="pre")
    theta = fresh.leaves[0]
    for t in range(2, LATENCY_STEPS):
        opt.zero_grad()
        (scale * torch.sin(theta)).sum().backward()
        opt.step()
        assert torch.equal(theta.detach(), after[t + 1]), t
    with pytest.raises(ValueError, match="latency 3, this run 2"):
        ConsensusMixer([theta], adjacency=ring(LATENCY_N), latency=2).history.load_state_dict(state["history"])


def test_drop_links_symmetric_and_reproducible():
    adj = random_undirected(10, 3, 0.6)
    a = drop_links(adj, 0.5, generator=torch.Generator().manual_seed(7))
    b = drop_links(adj, 0.5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert is_symmetric(a) and (a <= adj).all() and a.sum() < adj.sum()
    assert torch.equal(drop_links(adj, 0.0), adj)
    directed = drop_links(full(10), 0.5, generator=torch.Generator().manual_seed(7), symmetric=False)
    assert not is_symmetric(directed)
    batched = drop_links(adj.expand(3, 10, 10), 0.5, generator=torch.Generator().manual_seed(1))
    assert is_symmetric(batched) and not torch.equal(batched[0], batched[1])


# --------------------------------------------------------------------- metrics


def test_consensus_distance():
    same = torch.ones(4, 3)
    assert consensus_distance([same, same[:, :1]]).item() == 0.0
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0]])  # mean (1, 0): each at distance^2 1
    y = torch.tensor([[1.0], [3.0]])  # mean 2: each at 1
    assert consensus_distance([x, y]).item() == pytest.approx(2.0)
    assert consensus_distance([]).item() == 0.0


def test_gradient_disagreement():
    a = nn.Parameter(torch.zeros(3, 2))
    b = nn.Parameter(torch.zeros(3))
    c = nn.Parameter(torch.zeros(3, 5))  # no grad: skipped
    assert gradient_disagreement([a, b, c]).item() == 0.0
    a.grad = torch.tensor([[1.0, 0.0], [0.0, 0.0], [2.0, 3.0]])
    b.grad = torch.tensor([0.0, 3.0, 6.0])
    # g_bar of a = (1, 1): ||.||^2 = 1, 2, 5 ; b: mean 3 -> 9, 0, 9
    expected = (1 + 2 + 5) / 3 + (9 + 0 + 9) / 3
    assert gradient_disagreement([a, b, c]).item() == pytest.approx(expected)


def test_update_variance():
    theta = [torch.zeros(2, 2), torch.ones(2)]
    before = snapshot(theta)
    theta[0] += torch.tensor([[1.0, 1.0], [3.0, 1.0]])  # delta mean (2, 1): 1 each
    theta[1] += torch.tensor([5.0, 5.0])  # identical updates: 0
    assert before[0].sum() == 0  # snapshot is a copy
    assert update_variance(before, theta).item() == pytest.approx(1.0)


# ------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: knn_ring(5, -1), r"k must be in \[0, n-1\].*k=-1.*5 agents"),
        (lambda: knn_ring(5, 5), r"k must be in \[0, n-1\].*k=5"),
        (lambda: knn_ring(0, 0), "at least one agent"),
        (lambda: from_adjacency(full(4), n=5), "4 rows but the group has 5 agents"),
        (lambda: from_adjacency([[0, 1, 0], [1, 0, 1]]), "square"),
        (lambda: from_adjacency([[0, 2], [1, 0]]), "0 or 1"),
        (lambda: from_adjacency(knn_ring(5, 1), require_symmetric=True), "symmetric"),
        (lambda: from_adjacency(knn_ring(4, 0), require_connected=True), "not .*connected"),
        (lambda: metropolis(knn_ring(5, 3)), "undirected graph"),
        (lambda: build_topology("star", 4), "unknown topology 'star'.*knn_ring"),
        (lambda: build_topology("knn_ring", 4), "needs k"),
        (lambda: build_topology("custom", 4), "needs an adjacency"),
        (lambda: build_mixing_matrix("max_degree", ring(4)), "unknown mixing rule.*metropolis"),
        (lambda: ConsensusMixer([], adjacency=ring(4), rule="x"), "unknown mixing rule"),
        (lambda: mix_([torch.zeros(4, 2), torch.zeros(3, 2)], uniform_knn(4, 2)), "leaf 1 .* 4 x 4"),
        (lambda: ConsensusMixer([torch.zeros(3)], adjacency=ring(4)), "leading agent dim"),
        (
            lambda: ConsensusMixer([], adjacency=ring(4)).attach(
                torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), when="mid"
            ),
            "when must be",
        ),
        (lambda: drop_links(ring(4), 1.0), r"\[0, 1\)"),
        (lambda: drop_links(ring(4), -0.1), r"\[0, 1\)"),
        (lambda: ConsensusMixer([], adjacency=ring(4), link_failure=1.5), r"\[0, 1\)"),
        (lambda: ConsensusMixer([], adjacency=ring(4), latency=-1), "latency must be an integer number of mixing steps >= 0.*got -1"),
        (lambda: ConsensusMixer([], adjacency=ring(4), latency=1.5), "latency must be an integer .* got 1.5"),
        (lambda: ConsensusMixer([], adjacency=ring(4), latency=True), "latency must be an integer .* got True"),
        (lambda: update_variance([torch.zeros(2)], []), "matching"),
        (lambda: consensus_distance([torch.zeros(2), torch.zeros(3)]), "3 agents"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_mix_error_leaves_nothing_half_mixed():
    p = torch.randn(4, 2)
    p0 = p.clone()
    with pytest.raises(ValueError):
        mix_([p, torch.zeros(3)], uniform_knn(4, 2))
    assert torch.equal(p, p0)
