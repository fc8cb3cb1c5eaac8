"""MAGPO losses (paper 003 eqs. 9-12, benchmarl_decentral/objectives/magpo.py) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarl_decentral.nn.mat import ActionDist
from benchmarl_decentral.objectives.magpo import (
    action_agreement,
    check_delta,
    expected_agreement,
    check_lambda,
    double_clip_ratio,
    guider_loss,
    kl_mask,
    learner_loss,
    normalize_advantage,
    value_loss,
)

DELTA, EPS = 1.5, 0.2
# Four samples, two actions, the stored action is 0 everywhere.
#                 mu(0)  pi(0)  mu_old(0)  A
SAMPLES = [(0.6, 0.5, 0.5, 1.0),    # mu/pi = 1.2 inside (1/delta, delta): plain PPO, no KL
           (0.8, 0.4, 0.5, 1.0),    # mu/pi = 2: inner clip to 1.5, x pi/mu_old = 0.8 -> 1.2; KL on
           (0.3, 0.6, 0.4, -2.0),   # mu/pi = 0.5: inner clip to 2/3, x 1.5 -> 1.0; KL on
           (0.6, 0.3, 0.55, 1.0)]   # mu/pi = 2: inner 1.5 x 0.3/0.55 = 0.818 < r = 1.0909; KL on


def _dists():
    mu0 = torch.tensor([s[0] for s in SAMPLES])
    pi0 = torch.tensor([s[1] for s in SAMPLES])
    mu_logits = torch.stack([mu0, 1 - mu0], -1).log().requires_grad_()
    pi_logits = torch.stack([pi0, 1 - pi0], -1).log().requires_grad_()
    log_mu_old = torch.tensor([s[2] for s in SAMPLES]).log()
    advantage = torch.tensor([s[3] for s in SAMPLES])
    action = torch.zeros(len(SAMPLES), dtype=torch.long)
    return mu_logits, pi_logits, log_mu_old, advantage, action


def _kl(p, q):
    """KL of two-action distributions given by the probability of action 0."""
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def test_double_clip_hand_computed():
    log = lambda v: torch.log(torch.tensor(v))  # noqa: E731
    cases = [((0.6, 0.5, 0.5), 1.2), ((0.8, 0.4, 0.5), 1.2), ((0.3, 0.6, 0.4), 1.0),
             ((0.6, 0.3, 0.55), 1.5 * 0.3 / 0.55),
             ((0.9, 0.7, 0.3), 1.2),   # mu/pi inside: r = 3 -> outer clip 1 + eps
             ((0.9, 0.1, 0.3), 0.8),   # mu/pi = 9 -> 1.5, x 1/3 = 0.5 -> outer clip 1 - eps
             ((0.1, 0.9, 0.5), 1.2)]   # mu/pi = 1/9 -> 2/3, x 1.8 = 1.2
    for (mu, pi, old), expected in cases:
        got = double_clip_ratio(log(mu), log(pi), log(old), delta=DELTA, epsilon=EPS)
        assert float(got) == pytest.approx(expected, rel=1e-6), (mu, pi, old)


def test_kl_mask_is_one_outside_the_delta_band():
    log_pi = torch.zeros(6)
    ratios = torch.tensor([1.0, 1.4, 1.6, 1 / 1.4, 1 / 1.6, 3.0])
    mask = kl_mask(ratios.log(), log_pi, delta=DELTA)
    assert mask.tolist() == [0.0, 0.0, 1.0, 0.0, 1.0, 1.0]


def test_guider_loss_hand_computed():
    mu_logits, pi_logits, log_mu_old, advantage, action = _dists()
    out = guider_loss(ActionDist.categorical(mu_logits), ActionDist.categorical(pi_logits), action, log_mu_old,
                      advantage, delta=DELTA, epsilon=EPS)
    surrogate = [1.2, 1.2, -2.0, 1.5 * 0.3 / 0.55]  # min(r A, clip(r, eps, delta) A), eq. 9-10
    mask = [0.0, 1.0, 1.0, 1.0]
    kl = [_kl(mu, pi) for mu, pi, _, _ in SAMPLES]  # KL(mu || pi)
    torch.testing.assert_close(out.surrogate, torch.tensor(surrogate))
    assert out.mask.tolist() == mask
    torch.testing.assert_close(out.kl, torch.tensor(kl))
    torch.testing.assert_close(out.ratio, torch.tensor([0.6 / 0.5, 0.8 / 0.5, 0.3 / 0.4, 0.6 / 0.55]))
    expected = -sum(s - m * k for s, m, k in zip(surrogate, mask, kl)) / 4
    assert float(out.loss.detach()) == pytest.approx(expected, rel=1e-6)
    # plain PPO would take min(1.0909, 1.2) = 1.0909 on sample 4: the inner clip is what differs
    assert float(out.surrogate[3].detach()) < 0.6 / 0.55 - 0.2


def test_inner_clip_stops_the_gradient_that_drifts_away_from_the_learner():
    """Sample 4 (mu/pi = 2 > delta, r inside PPO's band): with A > 0 the surrogate is the
    clipped constant (no gradient); with A < 0 it is r A and has a gradient."""
    for advantage, has_grad in ((1.0, False), (-1.0, True)):
        mu_logits = torch.tensor([[0.6, 0.4]]).log().requires_grad_()
        pi = ActionDist.categorical(torch.tensor([[0.3, 0.7]]).log())
        out = guider_loss(ActionDist.categorical(mu_logits), pi, torch.zeros(1, dtype=torch.long),
                          torch.tensor([0.55]).log(), torch.tensor([advantage]), delta=DELTA, epsilon=EPS)
        (grad,) = torch.autograd.grad(out.surrogate.sum(), mu_logits)
        assert bool(grad.abs().sum() > 0) == has_grad


def test_learner_loss_hand_computed_and_lambda():
    mu_logits, pi_logits, log_mu_old, advantage, action = _dists()
    mu, pi = ActionDist.categorical(mu_logits), ActionDist.categorical(pi_logits)
    kl = [_kl(p, m) for m, p, _, _ in SAMPLES]  # KL(pi || mu), eq. 11
    ratio = [0.5 / 0.5, 0.4 / 0.5, 0.6 / 0.4, 0.3 / 0.55]  # pi / mu_old, eq. 12
    surrogate = [min(r * a, min(max(r, 1 - EPS), 1 + EPS) * a) for r, (_, _, _, a) in zip(ratio, SAMPLES)]
    assert surrogate == pytest.approx([1.0, 0.8, -3.0, 0.3 / 0.55])
    for lam in (1.0, 2.0, 8.0):
        out = learner_loss(pi, mu, action, log_mu_old, advantage, lam=lam, epsilon=EPS)
        torch.testing.assert_close(out.kl, torch.tensor(kl))
        torch.testing.assert_close(out.surrogate, torch.tensor(surrogate))
        expected = sum(k - lam * s for k, s in zip(kl, surrogate)) / 4
        assert float(out.loss.detach()) == pytest.approx(expected, rel=1e-6)
    # lambda = 0: the RL term is off (not computed: even NaN advantages leave the loss finite)
    off = learner_loss(pi, mu, action, log_mu_old, torch.full_like(advantage, float("nan")), lam=0, epsilon=EPS)
    assert off.surrogate is None and off.ratio is None
    assert float(off.loss.detach()) == pytest.approx(sum(kl) / 4, rel=1e-6)


def test_both_kl_directions():
    """Guider: KL(mu || pi); learner: KL(pi || mu). They differ on an asymmetric pair."""
    mu_logits, pi_logits, log_mu_old, advantage, action = _dists()
    mu, pi = ActionDist.categorical(mu_logits), ActionDist.categorical(pi_logits)
    g = guider_loss(mu, pi, action, log_mu_old, advantage, delta=DELTA, epsilon=EPS)
    lrn = learner_loss(pi, mu, action, log_mu_old, advantage, lam=1.0, epsilon=EPS)
    assert float(g.kl[1].detach()) == pytest.approx(_kl(0.8, 0.4), rel=1e-6)
    assert float(lrn.kl[1].detach()) == pytest.approx(_kl(0.4, 0.8), rel=1e-6)
    assert abs(_kl(0.8, 0.4) - _kl(0.4, 0.8)) > 0.01


def test_gradients_reach_only_the_intended_distribution():
    mu_logits, pi_logits, log_mu_old, advantage, action = _dists()
    mu, pi = ActionDist.categorical(mu_logits), ActionDist.categorical(pi_logits)
    guider_loss(mu, pi, action, log_mu_old, advantage, delta=DELTA, epsilon=EPS).loss.backward()
    assert mu_logits.grad is not None and mu_logits.grad.abs().sum() > 0
    assert pi_logits.grad is None  # the learner is detached inside the guider loss
    mu_logits.grad = None
    learner_loss(pi, mu, action, log_mu_old, advantage, lam=1.0, epsilon=EPS).loss.backward()
    assert pi_logits.grad is not None and pi_logits.grad.abs().sum() > 0
    assert mu_logits.grad is None  # the guider is detached inside the learner loss


def test_masked_kl_term_gradient_only_where_the_mask_is_on():
    """With A = 0 only the masked KL is left: sample 1 (inside the band) gets no gradient."""
    mu_logits, pi_logits, log_mu_old, _, action = _dists()
    out = guider_loss(ActionDist.categorical(mu_logits), ActionDist.categorical(pi_logits), action, log_mu_old,
                      torch.zeros(4), delta=DELTA, epsilon=EPS)
    out.loss.backward()
    grad = mu_logits.grad.abs().sum(-1)
    assert grad[0] == 0 and torch.all(grad[1:] > 0)


def test_gaussian_learner_kl_closed_form():
    loc_p, scale_p = torch.tensor([[0.1, -0.3]]), torch.tensor([[0.5, 1.2]])
    loc_q, scale_q = torch.tensor([[0.4, 0.2]]), torch.tensor([[0.8, 0.6]])
    pi, mu = ActionDist.normal(loc_p, scale_p), ActionDist.normal(loc_q, scale_q)
    expected = (torch.log(scale_q / scale_p) + (scale_p ** 2 + (loc_p - loc_q) ** 2) / (2 * scale_q ** 2) - 0.5).sum()
    out = learner_loss(pi, mu, torch.zeros(1, 2), torch.zeros(1), torch.zeros(1), lam=0.0, epsilon=EPS)
    torch.testing.assert_close(out.loss, expected)


def test_value_loss_and_clipping():
    value, target = torch.tensor([1.0, 1.0]), torch.tensor([0.9, 2.0])
    old = torch.tensor([0.0, 1.5])
    # unclipped squared errors: 0.01, 1.0; clipped values: 0.2 (-> 0.49), 1.3 (-> 0.49); max: 0.49, 1.0
    assert float(value_loss(value, target, kind="l2")) == pytest.approx((0.01 + 1.0) / 2)
    assert float(value_loss(value, target, old, kind="l2", clip=0.2)) == pytest.approx((0.49 + 1.0) / 2)
    assert float(value_loss(value, target, kind="l1")) == pytest.approx((0.1 + 1.0) / 2)


def test_normalize_advantage():
    adv = normalize_advantage(torch.tensor([1.0, 2.0, 3.0, 6.0]))
    assert float(adv.mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(adv.std(correction=0)) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("delta", [1.0, 0.5, -2.0, "1.5"])
def test_delta_must_exceed_one(delta):
    with pytest.raises(ValueError, match="delta must be > 1"):
        check_delta(delta)


@pytest.mark.parametrize("lam", [-1.0, -1e-9, float("nan")])
def test_lambda_must_be_non_negative(lam):
    with pytest.raises(ValueError, match="aux_lambda .* must be >= 0"):
        check_lambda(lam)
    check_lambda(0)  # zero is allowed: it turns the auxiliary term off


# ------------------------------------------------------------------ symmetry diagnostics
def test_action_agreement_counts_agreeing_pairs():
    # 3 agents: pairs (0,1), (0,2), (1,2). [4, 4, 4] -> 3/3; [4, 4, 7] -> 1/3; [1, 2, 3] -> 0
    action = torch.tensor([[4, 4, 4], [4, 4, 7], [1, 2, 3]])
    assert action_agreement(action).item() == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert action_agreement(action.reshape(3, 1, 3).expand(3, 5, 3)).item() == pytest.approx(4 / 9)  # any batch
    with pytest.raises(ValueError, match="at least 2 agents"):
        action_agreement(torch.zeros(4, 1, dtype=torch.long))


def test_expected_agreement_is_the_chance_that_independent_picks_agree():
    p = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [1.0, 0.0, 0.0]])  # 3 agents, 3 actions
    # pairs: (0,1) 0.25, (0,2) 0.5, (1,2) 0.5
    assert expected_agreement(p).item() == pytest.approx((0.25 + 0.5 + 0.5) / 3)
    uniform = torch.full((2, 4, 10), 0.1)
    assert expected_agreement(uniform).item() == pytest.approx(0.1)
    same = torch.tensor([0.43, 0.16, 0.41]).expand(5, 3)  # symmetric team of identical mixed policies
    assert expected_agreement(same).item() == pytest.approx(0.43**2 + 0.16**2 + 0.41**2)
    # agrees with sampling
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(4, 6, generator=g), -1)
    draws = torch.multinomial(probs, 20000, replacement=True, generator=g).T  # (20000, 4)
    assert action_agreement(draws).item() == pytest.approx(expected_agreement(probs).item(), abs=0.01)
