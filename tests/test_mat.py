"""The MAT-style guider (benchmarl_decentral/nn/mat.py; paper 003 sec. 4): pure torch, tiny sizes."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from benchmarl_decentral.nn.mat import ActionDist, fixed_rank, MultiAgentTransformer, random_rank

N, OBS, ACTIONS = 4, 7, 5


def _discrete(n_heads=2, **kw):
    torch.manual_seed(0)
    return MultiAgentTransformer(n_agents=N, input_dim=OBS, action_dim=ACTIONS, discrete=True, embed_dim=16,
                                 n_heads=n_heads, n_blocks=2, **kw)


def _continuous():
    torch.manual_seed(0)
    low = torch.tensor([[-1.0, -2.0], [-1.0, -2.0], [0.0, -0.5], [-3.0, 1.0]])
    return MultiAgentTransformer(n_agents=N, input_dim=OBS, action_dim=2, discrete=False, embed_dim=16,
                                 n_heads=2, n_blocks=2, action_low=low, action_high=low + torch.tensor([2.0, 1.0]))


def _mask(batch, generator):
    mask = torch.rand(*batch, N, ACTIONS, generator=generator) > 0.4
    mask[..., 2] = True  # at least one available action per agent
    return mask


@pytest.mark.parametrize("n_heads", [1, 2])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_torch_multihead_attention(n_heads, causal):
    """_Attention (fused projections; a no-copy path for one head) == nn.MultiheadAttention, same weights."""
    from benchmarl_decentral.nn.mat import _Attention

    torch.manual_seed(3)
    d, L = 16, 5
    ours, cross = _Attention(d, n_heads), _Attention(d, n_heads, cross=True)
    ref = torch.nn.MultiheadAttention(d, n_heads, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.qkv.weight)
        ref.in_proj_bias.copy_(ours.qkv.bias)
        ref.out_proj.weight.copy_(ours.out.weight)
        ref.out_proj.bias.copy_(ours.out.bias)
    x = torch.randn(3, 2, L, d)  # extra batch dims
    mask = torch.ones(L, L, dtype=torch.bool).triu(1) if causal else None
    expected = ref(*(x.reshape(6, L, d),) * 3, attn_mask=mask, need_weights=False)[0].reshape(3, 2, L, d)
    torch.testing.assert_close(ours(x, causal=causal), expected, rtol=1e-5, atol=1e-5)
    # cross-attention: queries from x, keys and values from a context of another length
    context = torch.randn(3, 2, L + 2, d)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([cross.q.weight, cross.kv.weight]))
        ref.in_proj_bias.copy_(torch.cat([cross.q.bias, cross.kv.bias]))
        ref.out_proj.weight.copy_(cross.out.weight)
        ref.out_proj.bias.copy_(cross.out.bias)
    expected = ref(x.reshape(6, L, d), *(context.reshape(6, L + 2, d),) * 2, need_weights=False)[0]
    torch.testing.assert_close(cross(x, context), expected.reshape(3, 2, L, d), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [(), (2,), (3, 2)])
@pytest.mark.parametrize("order", ["random", "fixed"])
@pytest.mark.parametrize("n_heads", [1, 2])
def test_teacher_forced_log_prob_equals_sampled_log_probs_discrete(batch, order, n_heads):
    """Autoregressive consistency: one teacher-forced pass == the per-step log-probs of sampling."""
    g = torch.Generator().manual_seed(1)
    model = _discrete(n_heads)
    x = torch.randn(*batch, N, OBS, generator=g)
    rank = random_rank(batch, N, generator=g) if order == "random" else fixed_rank(batch, N)
    mask = _mask(batch, g)
    action, log_prob, value = model.sample(x, rank, mask)
    assert action.shape == (*batch, N) and log_prob.shape == (*batch, N) and value.shape == (*batch, N, 1)
    assert mask.gather(-1, action.unsqueeze(-1)).all()  # sampled actions respect the mask
    dist, value_tf = model(x, action, rank, mask)
    torch.testing.assert_close(dist.log_prob(action), log_prob, rtol=0, atol=1e-5)
    torch.testing.assert_close(value_tf, value)
    torch.testing.assert_close(model.value(x), value)  # any batch shape, attention over agents only
    # joint log-probability = sum of the conditionals
    torch.testing.assert_close(dist.log_prob(action).sum(-1), log_prob.sum(-1), rtol=0, atol=1e-5)


@pytest.mark.parametrize("batch", [(), (3, 2)])
def test_teacher_forced_log_prob_equals_sampled_log_probs_continuous(batch):
    g = torch.Generator().manual_seed(2)
    model = _continuous()
    x = torch.randn(*batch, N, OBS, generator=g)
    rank = random_rank(batch, N, generator=g)
    action, log_prob, _ = model.sample(x, rank)
    assert action.shape == (*batch, N, 2)
    low, high = model.action_low, model.action_high
    assert torch.all(action >= low) and torch.all(action <= high)  # per-agent bounds, whatever the order
    dist, _ = model(x, action, rank)
    torch.testing.assert_close(dist.log_prob(action), log_prob, rtol=0, atol=1e-4)


def test_conditionals_depend_only_on_earlier_agents_in_the_order():
    """mu^{i_j}(.|s, a^{i_{1:j-1}}): changing a later agent's action changes nothing before it."""
    model = _discrete()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, N, OBS, generator=g)
    rank = torch.tensor([2, 0, 3, 1]).expand(5, N)  # order: agent 1, 3, 0, 2
    action = torch.randint(ACTIONS, (5, N), generator=g)
    base, _ = model(x, action, rank)
    changed = action.clone()
    changed[:, 0] = (changed[:, 0] + 1) % ACTIONS  # agent 0 is third in the order
    dist, _ = model(x, changed, rank)
    for agent in (1, 3, 0):  # agents up to and including agent 0 itself are unaffected
        torch.testing.assert_close(dist.logits[:, agent], base.logits[:, agent])
    assert not torch.allclose(dist.logits[:, 2], base.logits[:, 2])  # the last agent sees it


def test_encoder_and_values_are_permutation_equivariant_and_order_free():
    model = _discrete()
    x = torch.randn(3, N, OBS)
    perm = torch.tensor([3, 1, 0, 2])
    _, value = model.encode(x)
    _, value_perm = model.encode(x[:, perm])
    torch.testing.assert_close(value_perm, value[:, perm], rtol=1e-5, atol=1e-6)
    action = torch.randint(ACTIONS, (3, N))
    _, v1 = model(x, action, fixed_rank((3,), N))
    _, v2 = model(x, action, random_rank((3,), N))
    torch.testing.assert_close(v1, v2)  # the value head does not depend on the decoding order


def test_deterministic_sampling_takes_each_conditional_mode():
    model = _discrete()
    x = torch.randn(4, N, OBS)
    rank = random_rank((4,), N)
    action, _, _ = model.sample(x, rank, deterministic=True)
    dist, _ = model(x, action, rank)
    torch.testing.assert_close(action, dist.logits.argmax(-1))


def test_masked_actions_have_zero_probability_and_kl_needs_the_same_mask():
    logits = torch.tensor([[0.3, 1.0, -0.5], [2.0, 0.0, 0.1]])
    other = torch.tensor([[1.0, 0.0, 0.5], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, False, True], [True, True, False]])
    p, q = ActionDist.categorical(logits, mask), ActionDist.categorical(other, mask)
    assert torch.all(p.logits.exp()[~mask] == 0)
    # exact KL on the allowed actions (torch.distributions.kl_divergence)
    for b in range(2):
        pp = torch.softmax(logits[b][mask[b]], -1)
        qq = torch.softmax(other[b][mask[b]], -1)
        torch.testing.assert_close(p.kl(q)[b], (pp * (pp / qq).log()).sum())
    assert torch.isfinite(p.entropy()).all()
    # same values as torch.distributions.kl_divergence (the reference), gradients included
    lp = logits.clone().requires_grad_()
    ours = ActionDist.categorical(lp, mask).kl(q)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Categorical(logits=lp.masked_fill(~mask, torch.finfo(lp.dtype).min)),
        torch.distributions.Categorical(logits=other.masked_fill(~mask, torch.finfo(lp.dtype).min)),
    )
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(torch.autograd.grad(ours.sum(), lp)[0], torch.autograd.grad(ref.sum(), lp)[0])
    wrong = ActionDist.categorical(other, torch.tensor([[True, True, False], [True, True, False]]))
    assert torch.isinf(p.kl(wrong)[0])  # different masks: the KL is infinite, as it must be


def test_squashed_gaussian_matches_torchrl_tanh_normal():
    from torchrl.modules import TanhNormal

    loc, scale = torch.tensor([[0.3, -1.2], [2.0, 0.1]]), torch.tensor([[0.5, 1.3], [0.2, 0.9]])
    low, high = torch.tensor([-1.0, 0.0]), torch.tensor([1.0, 4.0])
    ours = ActionDist.normal(loc, scale, low=low, high=high)
    ref = TanhNormal(loc, scale, low=low, high=high)
    action = ref.sample((3,))
    torch.testing.assert_close(ours.log_prob(action), ref.log_prob(action), rtol=1e-4, atol=1e-4)
    # KL of squashed Gaussians = KL of the Gaussians (common bijection)
    other = ActionDist.normal(loc + 0.5, scale * 2, low=low, high=high)
    base = torch.distributions.kl_divergence(
        torch.distributions.Normal(loc, scale), torch.distributions.Normal(loc + 0.5, scale * 2)
    ).sum(-1)
    torch.testing.assert_close(ours.kl(other), base)
    expected = 0.5 * ((scale / (2 * scale)) ** 2 + (0.5 / (2 * scale)) ** 2 - 1 - 2 * torch.log(scale / (2 * scale)))
    torch.testing.assert_close(ours.kl(other), expected.sum(-1))


def test_detach_cuts_the_graph():
    logits = torch.randn(2, 3, requires_grad=True)
    d = ActionDist.categorical(logits).detach()
    assert not d.logits.requires_grad


def test_orders():
    rank = random_rank((100,), 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(rank.sort(-1).values, torch.arange(5).expand(100, 5))  # permutations
    assert len({tuple(r.tolist()) for r in rank}) > 20
    assert torch.equal(fixed_rank((2,), 3), torch.tensor([[0, 1, 2], [0, 1, 2]]))


def test_every_order_gives_a_normalised_joint_distribution():
    """Sum over all joint actions of prod_j mu^{i_j} = 1 for any order (tiny enumeration)."""
    torch.manual_seed(0)
    model = MultiAgentTransformer(n_agents=3, input_dim=4, action_dim=3, discrete=True, embed_dim=8)
    x = torch.randn(1, 3, 4).expand(27, 3, 4)
    joint = torch.tensor(list(itertools.product(range(3), repeat=3)))
    for rank in (torch.tensor([0, 1, 2]), torch.tensor([2, 0, 1])):
        dist, _ = model(x, joint, rank.expand(27, 3))
        total = dist.log_prob(joint).sum(-1).exp().sum().detach()
        assert math.isclose(float(total), 1.0, rel_tol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"embed_dim": 10, "n_heads": 3}, "divisible by n_heads"),
        ({"n_blocks": 0}, "n_blocks must be an int >= 1"),
        ({"action_low": torch.zeros(2)}, "both action_low and action_high"),
    ],
)
def test_bad_arguments(kwargs, match):
    base = dict(n_agents=3, input_dim=4, action_dim=2, discrete=False)
    with pytest.raises(ValueError, match=match):
        MultiAgentTransformer(**{**base, **kwargs})
