"""D-GAT layer (000_ef718962e1e8f612.txt eqs. 7-8, 11): oracle and property tests, CPU, small."""

from __future__ import annotations

import math

import pytest
import torch
from torch_geometric.nn.conv import GATv2Conv

from benchmarl_decentral.consensus.topology import ring
from benchmarl_decentral.nn import DGAT, DGATConv, consensus_loss

BATCH_SHAPES = [(), (2,), (3, 2)]


def random_adj(batch_shape, n, *, p=0.5, diagonal=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    adj = torch.rand(*batch_shape, n, n, generator=g) < p
    if not diagonal:
        adj &= ~torch.eye(n, dtype=torch.bool)
    return adj


def block_edge_index(adj):
    """(*B, n, n) bool (i receives from j) -> (2, E) block-diagonal PyG edges (source, target)."""
    n = adj.shape[-1]
    g, i, j = adj.reshape(-1, n, n).nonzero(as_tuple=True)
    return torch.stack([g * n + j, g * n + i])


def path_adj(n):
    i = torch.arange(n - 1)
    adj = torch.zeros(n, n, dtype=torch.bool)
    adj[i, i + 1] = adj[i + 1, i] = True
    return adj


def naive_dgat(conv: DGATConv, x, adj):
    """Eqs. 7-8 written literally, graph by graph and agent by agent: W^i [h_i || h_j]."""
    n, heads, c = conv.n_agents, conv.heads, conv.out_channels
    w_r = conv.lin_l_weight if conv.share_weights else conv.lin_r_weight
    b_l = conv.lin_l_bias if conv.lin_l_bias is not None else torch.zeros(n, heads * c)
    b_r = conv.lin_r_bias if not conv.share_weights else conv.lin_l_bias
    b_r = b_r if b_r is not None else torch.zeros(n, heads * c)
    xs = x.reshape(-1, n, x.shape[-1])
    adjs = adj.expand(*x.shape[:-2], n, n).reshape(-1, n, n).clone()
    if conv.add_self_loops:
        adjs |= torch.eye(n, dtype=torch.bool)
    outs = []
    for h, a in zip(xs, adjs):
        rows = []
        for i in range(n):
            w_cat = torch.cat([w_r[i], conv.lin_l_weight[i]], dim=1)  # W^i acting on [h_i || h_j]
            nbrs = a[i].nonzero().flatten().tolist()
            head_out = []
            for k in range(heads):
                sl = slice(k * c, (k + 1) * c)
                scores, values = [], []
                for j in nbrs:
                    z = w_cat[sl] @ torch.cat([h[i], h[j]]) + b_r[i, sl] + b_l[i, sl]
                    scores.append(conv.att[i, k] @ torch.nn.functional.leaky_relu(z, conv.negative_slope))
                    lin_j = conv.lin_l_weight[i, sl] @ h[j] + b_l[i, sl]
                    values.append(lin_j if conv.value == "linear" else h[j])
                width = c if conv.value == "linear" else h.shape[-1]
                if nbrs:
                    alpha = torch.softmax(torch.stack(scores), 0)
                    head_out.append((alpha[:, None] * torch.stack(values)).sum(0))
                else:
                    head_out.append(torch.zeros(width))
            o = torch.cat(head_out) if conv.concat else torch.stack(head_out).mean(0)
            rows.append(o + (conv.bias[i] if conv.bias is not None else 0))
        outs.append(torch.stack(rows))
    return torch.stack(outs).reshape(*x.shape[:-1], -1)


# ----------------------------------------------------------------------------- oracles
@pytest.mark.parametrize("batch_shape", BATCH_SHAPES)
@pytest.mark.parametrize("heads,concat", [(1, True), (2, True), (2, False)])
@pytest.mark.parametrize("self_loops", [True, False])
def test_from_gatv2_equals_gatv2conv(batch_shape, heads, concat, self_loops):
    n, f, c = 4, 5, 3
    for seed in range(3):
        torch.manual_seed(seed)
        conv = GATv2Conv(f, c, heads=heads, concat=concat, add_self_loops=self_loops, share_weights=seed == 2)
        with torch.no_grad():
            conv.bias.normal_()  # zero at init: make the copy of the output bias visible
        dgat = DGATConv.from_gatv2(conv, n)
        x = torch.randn(*batch_shape, n, f)
        # without self loops, the given diagonal is used as is (on both sides)
        adj = random_adj(batch_shape, n, diagonal=not self_loops, seed=seed)
        ref = conv(x.reshape(-1, f), block_edge_index(adj))
        out = dgat(x, adj)
        assert out.shape == (*batch_shape, n, c * (heads if concat else 1))
        torch.testing.assert_close(out.reshape(-1, out.shape[-1]), ref, atol=1e-5, rtol=1e-5)


def test_from_gatv2_attention_weights_and_copies():
    n = 4
    torch.manual_seed(0)
    conv = GATv2Conv(5, 3, heads=2)
    dgat = DGATConv.from_gatv2(conv, n)
    x, adj = torch.randn(2, n, 5), random_adj((2,), n, seed=1)
    _, (ei, alpha_ref) = conv(x.reshape(-1, 5), block_edge_index(adj), return_attention_weights=True)
    _, alpha = dgat(x, adj, return_attention_weights=True)
    g, i, j = ei[1] // n, ei[1] % n, ei[0] % n
    torch.testing.assert_close(alpha[g, i, j], alpha_ref)
    torch.testing.assert_close(alpha.sum(-2), torch.ones(2, n, 2))  # rows of alpha_ij sum to 1
    # parameters are copies: training the D-GAT does not move the GATv2 layer
    with torch.no_grad():
        dgat.att.add_(1.0)
    assert not torch.equal(dgat.att[0], conv.att[0])


@pytest.mark.parametrize("batch_shape", BATCH_SHAPES)
@pytest.mark.parametrize(
    "value,heads,concat,share_weights",
    [
        ("identity", 1, True, False),
        ("linear", 1, True, False),
        ("identity", 2, True, True),
        ("linear", 2, False, False),
    ],
)
def test_untied_agents_match_literal_equations(batch_shape, value, heads, concat, share_weights):
    """Independent parameters per agent vs eqs. 7-8 computed agent by agent; dense == sparse."""
    n, f = 3, 4
    torch.manual_seed(1)
    conv = DGATConv(f, 5, n, heads=heads, concat=concat, value=value, share_weights=share_weights)
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.randn(*batch_shape, n, f)
    adj = random_adj(batch_shape, n, seed=2)
    ref = naive_dgat(conv, x, adj)
    torch.testing.assert_close(conv(x, adj), ref, atol=1e-5, rtol=1e-5)
    agent = torch.arange(n).repeat(math.prod(batch_shape))
    sparse = conv.forward_sparse(x.reshape(-1, f), block_edge_index(adj), agent)
    torch.testing.assert_close(sparse, ref.reshape(-1, ref.shape[-1]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("graph", ["star", "empty"])
def test_irregular_and_empty_graphs_match_gatv2(graph):
    """Very unequal in-degrees (padding in the per-agent grouping) and no edges at all."""
    n, b = 5, 3
    torch.manual_seed(7)
    conv = GATv2Conv(4, 3, add_self_loops=graph == "star")
    with torch.no_grad():
        conv.bias.normal_()
    adj = torch.zeros(b, n, n, dtype=torch.bool)
    if graph == "star":
        adj[:, 0, 1:] = True  # agent 0 hears everyone, the others only themselves
        adj[1, 2, 3] = True
    x = torch.randn(b, n, 4)
    ref = conv(x.reshape(-1, 4), block_edge_index(adj)).view(b, n, 3)
    torch.testing.assert_close(DGATConv.from_gatv2(conv, n)(x, adj), ref, atol=1e-5, rtol=1e-5)
    if graph == "empty":  # nobody receives anything: the output is the (per-agent) bias
        torch.testing.assert_close(ref, conv.bias.expand(b, n, 3))


def test_sparse_any_node_order_and_shared_adjacency():
    """forward_sparse only needs the agent index; a (n, n) adj is broadcast to every graph."""
    n, f, b = 4, 3, 3
    torch.manual_seed(2)
    conv = DGATConv(f, 4, n, value="linear")
    x = torch.randn(b, n, f)
    adj = ring(n)
    dense = conv(x, adj)
    torch.testing.assert_close(dense, conv(x, adj.expand(b, n, n)))
    perm = torch.randperm(b * n)  # node v of the shuffled graph is old node perm[v]
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(b * n)
    ei = inv[block_edge_index(adj.expand(b, n, n))]
    out = conv.forward_sparse(x.reshape(-1, f)[perm], ei, (torch.arange(b * n) % n)[perm])
    torch.testing.assert_close(out, dense.reshape(-1, conv.out_dim)[perm])


# ----------------------------------------------------------------------------- per-agent parameters
@pytest.mark.parametrize("batch_shape", BATCH_SHAPES)
@pytest.mark.parametrize("value", ["identity", "linear"])
def test_agent_parameters_only_move_their_receiver(batch_shape, value):
    n = 3
    torch.manual_seed(3)
    conv = DGATConv(4, 5, n, value=value, heads=2)
    x = torch.randn(*batch_shape, n, 4)
    adj = torch.ones(n, n, dtype=torch.bool)
    before = conv(x, adj)
    with torch.no_grad():
        for p in conv.parameters():
            p[0].add_(torch.randn_like(p[0]))
    after = conv(x, adj)
    assert torch.equal(after[..., 1:, :], before[..., 1:, :])  # bit for bit
    assert ((after[..., 0, :] - before[..., 0, :]).abs().amax(-1) > 1e-4).all()  # in every graph


def test_reset_parameters_independent_per_agent():
    n, f, c = 4, 6, 5
    conv = DGATConv(f, c, n, heads=2)
    for p in (conv.lin_l_weight, conv.lin_r_weight, conv.att, conv.lin_l_bias):
        assert p.shape[0] == n
        assert all(not torch.equal(p[0], p[a]) for a in range(1, n))
    bound = math.sqrt(6.0 / (2 * c + f))  # glorot of one agent's (H C, F) weight
    assert conv.lin_l_weight.abs().max() <= bound
    assert conv.lin_l_weight.abs().max() > 0.5 * bound
    assert torch.equal(conv.bias, torch.zeros_like(conv.bias))
    old = conv.att.detach().clone()
    conv.reset_parameters()
    assert not torch.equal(old, conv.att)


# ----------------------------------------------------------------------------- K-hop stack
@pytest.mark.parametrize("batch_shape", BATCH_SHAPES)
def test_k_hops_are_local_on_a_path(batch_shape):
    n, f, k = 6, 3, 2
    torch.manual_seed(4)
    model = DGAT(f, 8, n, num_hops=k)
    adj = path_adj(n)
    x = torch.randn(*batch_shape, n, f)
    base = model(x, adj)
    for j in range(n):
        x2 = x.clone()
        x2[..., j, :] += torch.randn(f)
        moved = model(x2, adj)
        for i in range(n):
            if abs(i - j) > k:
                assert torch.equal(moved[..., i, :], base[..., i, :]), (i, j)
            else:
                assert ((moved[..., i, :] - base[..., i, :]).abs().amax(-1) > 1e-6).all(), (i, j)


def test_default_hops_equal_agents_and_reach_everyone():
    n, f = 4, 3
    torch.manual_seed(5)
    model = DGAT(f, 6, n, value="linear", activation="tanh", act_last=False)
    assert model.num_hops == n and len(model.convs) == n and model.out_dim == 6
    adj = path_adj(n)
    x = torch.randn(n, f)
    x2 = x.clone()
    x2[n - 1] += 1.0
    assert (model(x2, adj)[0] - model(x, adj)[0]).abs().max() > 1e-6  # n - 1 hops away
    assert all(p.shape[0] == n for p in model.parameters())  # stacked: ready for D-SGD mixing


@pytest.mark.parametrize("value", ["identity", "linear"])
def test_gradients_reach_every_agent(value):
    """From the task loss and from the consensus loss (eq. 11) alone."""
    n, f = 4, 3
    torch.manual_seed(6)
    model = DGAT(f, 5, n, num_hops=2, value=value)
    adj = ring(n)
    x = torch.randn(2, 3, n, f)
    for loss_fn in (lambda h: h.square().mean(), lambda h: consensus_loss(h, adj)):
        model.zero_grad(set_to_none=True)
        loss_fn(model(x, adj)).backward()
        for name, p in model.named_parameters():
            assert p.grad is not None, name
            assert (p.grad.flatten(1).abs().sum(1) > 0).all(), f"{name}: some agent got no gradient"


# ----------------------------------------------------------------------------- consensus loss (eq. 11)
def test_consensus_loss_hand_computed():
    h = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    adj = torch.tensor([[False, True, True], [True, True, False], [False, False, False]])  # diagonal ignored
    # agent 0: (MSE(h0,h1) + MSE(h0,h2)) / 2 = (0.5 + 2) / 2; agent 1: MSE(h1,h0) = 0.5; agent 2: no neighbours
    expected = torch.tensor([1.25, 0.5, 0.0])
    torch.testing.assert_close(consensus_loss(h, adj, reduction="none"), expected)
    torch.testing.assert_close(consensus_loss(h, adj), expected.mean())
    hb = h.expand(3, 2, 3, 2)
    torch.testing.assert_close(consensus_loss(hb, adj, reduction="none"), expected.expand(3, 2, 3))
    torch.testing.assert_close(consensus_loss(hb, adj.expand(3, 2, 3, 3)), expected.mean())


def test_consensus_loss_zero_for_identical_and_detach():
    h = torch.randn(5).expand(2, 4, 5)
    assert consensus_loss(h, torch.ones(4, 4, dtype=torch.bool)).item() == 0.0
    full = torch.ones(2, 2, dtype=torch.bool)
    for detach, grad0 in ((False, -2.0), (True, -1.0)):
        h = torch.tensor([[0.0], [1.0]], requires_grad=True)
        consensus_loss(h, full, detach_neighbours=detach).backward()
        assert h.grad[0].item() == pytest.approx(grad0)


# ----------------------------------------------------------------------------- errors
def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="heads"):
        DGATConv(3, 4, 2, heads=0)
    with pytest.raises(ValueError, match="value mode"):
        DGATConv(3, 4, 2, value="softplus")
    with pytest.raises(ValueError, match="num_hops"):
        DGAT(3, 4, 2, num_hops=0)
    with pytest.raises(ValueError, match="activation"):
        DGAT(3, 4, 2, activation="gelu")
    conv = DGATConv(3, 4, 2)
    with pytest.raises(ValueError, match="n_agents"):
        conv(torch.randn(5, 3, 3), torch.ones(3, 3, dtype=torch.bool))  # 3 agents, 2 parameter sets
    with pytest.raises(ValueError, match="in_channels"):
        conv(torch.randn(5, 2, 4), torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="adj must have shape"):
        conv(torch.randn(5, 2, 3), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="batch shape"):
        conv(torch.randn(5, 2, 3), torch.ones(4, 2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        conv(torch.randn(5, 2, 3), torch.ones(2, 2))
    with pytest.raises(ValueError, match="agent_index"):
        conv.forward_sparse(torch.randn(4, 3), torch.zeros(2, 0, dtype=torch.long), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="edge_dim"):
        DGATConv.from_gatv2(GATv2Conv(3, 4, edge_dim=2), 2)
    with pytest.raises(ValueError, match="adj"):
        consensus_loss(torch.randn(2, 3, 4), torch.ones(2, 2, dtype=torch.bool))
