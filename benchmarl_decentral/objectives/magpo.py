"""003_13ad26f9f90dcfc4.txt sec. 4.2, eqs. 9-12: the MAGPO guider and learner losses.

Notation of the paper: guider :math:`\mu_\phi` (centralized, autoregressive),
its behaviour copy :math:`\mu_{\phi_{old}}` (the stored log-probabilities of the
collected joint actions), learner :math:`\pi_\theta` (decentralized),
advantages :math:`\hat A_t` from GAE on the guider's value.

* Guider (eqs. 9-10): PPO on :math:`r = \mu/\mu_{old}` with the **double clip**
  :math:`\mathrm{clip}(\mathrm{clip}(\mu/\pi, 1/\delta, \delta)\cdot\pi/\mu_{old}, 1-\epsilon, 1+\epsilon)`
  and the **masked KL** :math:`m\,D_{KL}(\mu\|\pi)`, with
  :math:`m = \mathbb{I}(\mu/\pi \notin (1/\delta, \delta))`. The learner is
  detached here (its outputs are constants for the guider).
* Learner (eqs. 11-12): :math:`D_{KL}(\pi\|\mu) - \lambda\,\min(r\hat A, \mathrm{clip}(r, 1-\epsilon, 1+\epsilon)\hat A)`
  with :math:`r = \pi/\mu_{old}`. The guider is detached here; ``lam = 0`` drops
  the auxiliary RL term (it is then not even computed).

Both losses are means over samples and agents (the :math:`\frac{1}{Tn}\sum_j\sum_t`
of eqs. 9 and 11). Guider and learner must be evaluated with the same action
mask, or the KLs are infinite.

Note: the paper's public code (Mava, ``rec_magpo.py``) uses
:math:`D_{KL}(\mu\|\pi)` in the learner loss; eq. 11 and this module use
:math:`D_{KL}(\pi\|\mu)`.

Pure ``torch``: nothing here imports BenchMARL, torchrl or hydra.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarl_decentral.nn.mat import ActionDist

__all__ = [
    "action_agreement",
    "expected_agreement",
    "GuiderLoss",
    "LearnerLoss",
    "VALUE_LOSSES",
    "check_delta",
    "check_lambda",
    "double_clip_ratio",
    "guider_loss",
    "kl_mask",
    "learner_loss",
    "normalize_advantage",
    "value_loss",
]

VALUE_LOSSES = ("l2", "smooth_l1", "l1")


def check_delta(delta: float) -> None:
    """``delta`` bounds ``mu/pi`` within ``(1/delta, delta)``: it must be > 1 (paper 003 sec. 4.2)."""
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not delta > 1:
        raise ValueError(
            f"magpo: delta must be > 1 (the guider/learner ratio is kept in (1/delta, delta)), got "
            f"delta={delta!r}; set algorithm.delta=1.5 (paper default; Table 7 searches 1.1 to 3)."
        )


def check_lambda(lam: float) -> None:
    """``lambda`` weights the learner's auxiliary RL term (eq. 11): it must be >= 0."""
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not lam >= 0:
        raise ValueError(
            f"magpo: aux_lambda (lambda of eq. 11) must be >= 0, got {lam!r}; set "
            "algorithm.aux_lambda=1 (paper default) or 0 to turn the auxiliary RL term off."
        )


def normalize_advantage(advantage: Tensor, eps: float = 1e-8) -> Tensor:
    """Standardise over the whole minibatch (as the paper's implementation does)."""
    return (advantage - advantage.mean()) / (advantage.std(correction=0) + eps)


def double_clip_ratio(log_mu: Tensor, log_pi: Tensor, log_mu_old: Tensor, *, delta: float,
                      epsilon: float) -> Tensor:
    r"""Eq. 10: :math:`\mathrm{clip}(\mathrm{clip}(\mu/\pi, 1/\delta, \delta)\,\pi/\mu_{old}, 1-\epsilon, 1+\epsilon)`.

    Computed in log space. Inside ``(1/delta, delta)`` the inner clip is the
    identity and this is PPO's clipped ratio :math:`\mu/\mu_{old}`; outside, the
    inner clip stops the gradient that would move the guider further from the learner.
    """
    log_delta = math.log(delta)
    inner = (log_mu - log_pi).clamp(-log_delta, log_delta)
    return torch.exp(inner + log_pi - log_mu_old).clamp(1 - epsilon, 1 + epsilon)


def kl_mask(log_mu: Tensor, log_pi: Tensor, *, delta: float) -> Tensor:
    r"""Eq. 9's :math:`m = \mathbb{I}(\mu/\pi \notin (1/\delta, \delta))` as a float tensor."""
    log_delta = math.log(delta)
    return ((log_mu - log_pi).abs() >= log_delta).to(log_mu.dtype)


@dataclass
class GuiderLoss:
    """Eq. 9 and its parts (all per-sample tensors are ``(*B,)``; ``loss`` is the mean)."""

    loss: Tensor
    surrogate: Tensor
    kl: Tensor
    mask: Tensor
    ratio: Tensor
    ratio_mu_pi: Tensor


@dataclass
class LearnerLoss:
    """Eq. 11 and its parts (per-sample ``kl`` and ``surrogate``; ``loss`` is the mean)."""

    loss: Tensor
    kl: Tensor
    surrogate: Optional[Tensor]
    ratio: Optional[Tensor]


def guider_loss(mu: ActionDist, pi: ActionDist, action: Tensor, log_mu_old: Tensor, advantage: Tensor, *,
                delta: float, epsilon: float) -> GuiderLoss:
    r"""Eqs. 9-10: the guider's PPO objective with the double clip and the masked KL.

    .. math::
        \mathcal{L}(\phi) = -\frac{1}{Tn}\sum_{j,t}\Big[\min\big(r\hat A,\ \mathrm{clip}(r, \epsilon, \delta)\hat A\big)
        - m\,D_{KL}(\mu_\phi\|\pi_\theta)\Big],\quad r = \frac{\mu_\phi}{\mu_{\phi_{old}}}

    Args:
        mu: the guider's conditional distributions :math:`\mu^{i_j}(\cdot|s, \mathbf{a}^{i_{1:j-1}})`
            (teacher-forced on the stored joint action), batch shape ``*B``.
        pi: the learner's distributions :math:`\pi^{i_j}(\cdot|o^{i_j})`, same batch
            shape and action mask; detached here.
        action: the stored actions.
        log_mu_old: the stored log-probabilities :math:`\log\mu_{\phi_{old}}(a)`.
        advantage: :math:`\hat A`, broadcastable to ``*B``.
        delta: the double-clip bound, > 1.
        epsilon: PPO's clip.
    """
    pi = pi.detach()  # the learner is a constant for the guider (eq. 9)
    log_mu = mu.log_prob(action)
    log_pi = pi.log_prob(action)
    ratio = torch.exp(log_mu - log_mu_old)
    clipped = double_clip_ratio(log_mu, log_pi, log_mu_old, delta=delta, epsilon=epsilon)
    surrogate = torch.min(ratio * advantage, clipped * advantage)
    mask = kl_mask(log_mu.detach(), log_pi, delta=delta)
    kl = mu.kl(pi)
    # m * KL with m = 0 must stay 0 even where the KL is not finite
    masked_kl = torch.where(mask > 0, kl, torch.zeros_like(kl))
    loss = -(surrogate - masked_kl).mean()
    return GuiderLoss(loss=loss, surrogate=surrogate, kl=kl, mask=mask, ratio=ratio,
                      ratio_mu_pi=torch.exp(log_mu.detach() - log_pi))


def learner_loss(pi: ActionDist, mu: ActionDist, action: Tensor, log_mu_old: Tensor, advantage: Tensor, *,
                 lam: float, epsilon: float) -> LearnerLoss:
    r"""Eqs. 11-12: follow the guider by KL, plus :math:`\lambda` times PPO's objective.

    .. math::
        \mathcal{L}(\theta) = \frac{1}{Tn}\sum_{j,t}\Big[D_{KL}(\pi_\theta\|\mu_\phi)
        - \lambda\min\big(r\hat A,\ \mathrm{clip}(r, 1-\epsilon, 1+\epsilon)\hat A\big)\Big],
        \quad r = \frac{\pi_\theta}{\mu_{\phi_{old}}}

    ``mu`` is detached here. With ``lam == 0`` the RL term is not computed.
    """
    mu = mu.detach()  # the guider is a constant for the learner (eq. 11)
    kl = pi.kl(mu)
    if lam == 0:
        return LearnerLoss(loss=kl.mean(), kl=kl, surrogate=None, ratio=None)
    ratio = torch.exp(pi.log_prob(action) - log_mu_old)
    surrogate = torch.min(ratio * advantage, ratio.clamp(1 - epsilon, 1 + epsilon) * advantage)
    return LearnerLoss(loss=(kl - lam * surrogate).mean(), kl=kl, surrogate=surrogate, ratio=ratio)


def value_loss(value: Tensor, target: Tensor, old_value: Optional[Tensor] = None, *, kind: str = "l2",
               clip: Optional[float] = None) -> Tensor:
    """Mean value loss of the guider's value head; with ``clip``, PPO's clipped value loss
    ``max(loss(v), loss(v_old + clamp(v - v_old, -clip, clip)))``.

    ``kind``: ``l2`` (squared error), ``smooth_l1`` (Huber) or ``l1``.
    """
    fn = {"l2": F.mse_loss, "smooth_l1": F.smooth_l1_loss, "l1": F.l1_loss}[kind]
    loss = fn(value, target, reduction="none")
    if clip is not None and old_value is not None:
        clipped = old_value + (value - old_value).clamp(-clip, clip)
        loss = torch.max(loss, fn(clipped, target, reduction="none"))
    return loss.mean()


# ------------------------------------------------------------------ diagnostics
def action_agreement(action: Tensor) -> Tensor:
    """How often two agents pick the same action: the fraction of agent pairs ``i < j``
    with ``a^i == a^j``, averaged over the batch.

    Args:
        action: integer joint actions ``(*B, n)``, ``n >= 2``.

    Returns:
        A scalar in ``[0, 1]``: 1 when all agents always agree, ``1/|A|`` in
        expectation for independent uniform picks over ``|A|`` actions.
    """
    n = action.shape[-1]
    if n < 2:
        raise ValueError(f"action_agreement needs at least 2 agents, got {n}.")
    same = (action.unsqueeze(-1) == action.unsqueeze(-2)).to(torch.float32).sum((-1, -2))
    return ((same - n) / (n * (n - 1))).mean()


def expected_agreement(probs: Tensor) -> Tensor:
    """The chance that two agents' *independent* picks agree, for decentralized policies:
    the mean over pairs ``i < j`` of :math:`\sum_a \pi^i(a)\pi^j(a)`, averaged over the batch.

    Args:
        probs: per-agent action probabilities ``(*B, n, |A|)``, ``n >= 2``.

    Returns:
        A scalar in ``[0, 1]``; it is 1 only when all agents play the same action
        deterministically, so a value near 1 with a high entropy cannot happen,
        and a symmetric team of near-identical policies shows as the sum of its
        squared probabilities.
    """
    n = probs.shape[-2]
    if n < 2:
        raise ValueError(f"expected_agreement needs at least 2 agents, got {n}.")
    pair = probs @ probs.transpose(-1, -2)  # (*B, n, n): sum_a p_i(a) p_j(a)
    off_diagonal = pair.sum((-1, -2)) - pair.diagonal(dim1=-2, dim2=-1).sum(-1)
    return (off_diagonal / (n * (n - 1))).mean()
