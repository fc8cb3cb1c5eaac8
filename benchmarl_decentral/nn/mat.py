"""003_13ad26f9f90dcfc4.txt sec. 4: the MAT-style centralized autoregressive guider of MAGPO.

The guider is the joint policy of sec. 4.1,

.. math::
    \mu(\mathbf{a}|s) = \mu^{i_1}(a^{i_1}|s)\,\mu^{i_2}(a^{i_2}|s, a^{i_1})\cdots
    \mu^{i_n}(a^{i_n}|s, \mathbf{a}^{i_{1:n-1}}),

built in the style of the Multi-Agent Transformer (Wen et al., 2022): an
**encoder** runs self-attention over one token per agent (the agent's
observation, or the global state, plus a one-hot agent id) and carries a
**value head**; a **decoder** runs causal self-attention over the previous
agents' actions (in the decoding order :math:`i_{1:n}`) and cross-attention to
the encoder. Sampling decodes the agents one after the other
(:meth:`MultiAgentTransformer.sample`, with the earlier positions' keys and
values cached, so decoding n agents costs about one teacher-forced pass);
training evaluates every agent's conditional distribution for a stored joint
action in one teacher-forced pass (:meth:`MultiAgentTransformer.forward`).

The decoding order is given per sample as ``rank`` (``rank[..., i]`` = position
of agent ``i`` in the order), so a batch may mix orders (:func:`random_rank`);
a fixed order is ``rank = arange(n)`` (:func:`fixed_rank`).

Pure ``torch``: nothing here imports BenchMARL, torchrl or hydra.

Shapes: ``x`` is ``(*B, n, input_dim)``; discrete actions ``(*B, n)`` (integer),
continuous ``(*B, n, action_dim)``; masks ``(*B, n, n_actions)`` (bool, True =
allowed); ``rank`` ``(*B, n)`` (long); values ``(*B, n, 1)``.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ActionDist", "INPUT_NORMS", "MultiAgentTransformer", "RunningInputNorm", "fixed_rank", "random_rank"]

_LOG2 = math.log(2.0)
#: inverse softplus of 1: ``softplus(x + _SOFTPLUS_1) == 1`` at ``x = 0``
_SOFTPLUS_1 = math.log(math.e - 1.0)


# ---------------------------------------------------------------------- distributions
class ActionDist:
    """One action distribution per agent, with the operations MAGPO's losses need.

    Three kinds, built with the class methods:

    * :meth:`categorical`: logits ``(*B, n_actions)`` and an optional bool mask;
      masked logits are set to the most negative finite value, so masked actions
      have probability exactly 0 and, when two distributions share the mask,
      their KL is finite (with different masks it is ``inf``, as it must be);
    * :meth:`normal`: a diagonal Gaussian ``(*B, d)``;
    * :meth:`normal` with ``low``/``high``: the Gaussian squashed by ``tanh`` and
      scaled to ``(low, high)`` (torchrl's ``TanhNormal`` with ``tanh_loc=False``).

    ``log_prob``, ``entropy`` and ``kl`` return the batch shape ``*B``.
    The KL is exact: the categorical KL (same rule as ``torch.distributions``),
    or ``torch.distributions.kl_divergence`` of the Gaussians before the
    squashing (a KL is invariant under the common bijection). The entropy of a squashed Gaussian is that of the
    Gaussian before squashing (the usual surrogate; used only as a bonus).
    """

    def __init__(self, kind: str, params: Tuple[Tensor, ...], low: Optional[Tensor] = None,
                 high: Optional[Tensor] = None):
        self.kind = kind
        self.params = params
        self.low = low
        self.high = high

    # ------------------------------------------------------------ constructors
    @classmethod
    def categorical(cls, logits: Tensor, mask: Optional[Tensor] = None) -> "ActionDist":
        """Categorical over the last dim of ``logits``; ``mask`` True = allowed."""
        if mask is not None:
            logits = logits.masked_fill(~mask.bool(), torch.finfo(logits.dtype).min)
        return cls("categorical", (logits.log_softmax(-1),))

    @classmethod
    def normal(cls, loc: Tensor, scale: Tensor, *, low: Optional[Tensor] = None,
               high: Optional[Tensor] = None) -> "ActionDist":
        """Diagonal Gaussian; squashed to ``(low, high)`` by ``tanh`` when both are given."""
        if (low is None) != (high is None):
            raise ValueError("ActionDist.normal needs both low and high, or neither.")
        if low is None:
            return cls("normal", (loc, scale))
        low = torch.as_tensor(low, dtype=loc.dtype, device=loc.device)
        high = torch.as_tensor(high, dtype=loc.dtype, device=loc.device)
        return cls("tanh_normal", (loc, scale), low, high)

    @property
    def discrete(self) -> bool:
        return self.kind == "categorical"

    @property
    def logits(self) -> Tensor:
        """Normalised log-probabilities of a categorical."""
        return self.params[0]

    def _torch(self) -> torch.distributions.Distribution:
        if self.discrete:
            return torch.distributions.Categorical(logits=self.params[0], validate_args=False)
        return torch.distributions.Normal(*self.params, validate_args=False)

    # ------------------------------------------------------------ operations
    def detach(self) -> "ActionDist":
        """The same distribution cut from the autograd graph (stop-gradient)."""
        return ActionDist(self.kind, tuple(p.detach() for p in self.params), self.low, self.high)

    def _squash(self, u: Tensor) -> Tensor:
        return self.low + (self.high - self.low) * (torch.tanh(u) + 1) / 2

    def log_prob(self, action: Tensor) -> Tensor:
        """``log p(action)``; integer actions ``*B`` for a categorical, ``(*B, d)`` otherwise."""
        if self.discrete:
            return self.params[0].gather(-1, action.long().unsqueeze(-1)).squeeze(-1)
        loc, scale = self.params
        base = torch.distributions.Normal(loc, scale, validate_args=False)
        if self.kind == "normal":
            return base.log_prob(action).sum(-1)
        eps = torch.finfo(loc.dtype).eps
        y = (2 * (action - self.low) / (self.high - self.low) - 1).clamp(-1 + eps, 1 - eps)
        u = torch.atanh(y)
        # log|d a / d u| = log(1 - tanh(u)^2) + log((high - low) / 2), the first written stably
        log_det = 2 * (_LOG2 - u - F.softplus(-2 * u)) + torch.log((self.high - self.low) / 2)
        return (base.log_prob(u) - log_det).sum(-1)

    def entropy(self) -> Tensor:
        """Exact for categorical / Gaussian; the pre-squash Gaussian's for ``tanh_normal``."""
        if self.discrete:
            logp = self.params[0]
            return -(logp.exp() * logp).sum(-1)
        return self._torch().entropy().sum(-1)

    def kl(self, other: "ActionDist") -> Tensor:
        """Exact ``KL(self || other)``; both must be of the same kind (and squashing range).

        Categorical: ``sum_a p(a) (log p(a) - log q(a))``, 0 where ``p(a) = 0`` and
        ``inf`` where ``q(a) = 0 < p(a)`` (the rule of ``torch.distributions``'
        categorical KL, written with ``where`` instead of boolean indexing).
        """
        if self.kind != other.kind:
            raise ValueError(f"KL between a {self.kind} and a {other.kind} distribution is not defined here.")
        if self.discrete:
            logp, logq = self.params[0], other.params[0]
            p = logp.exp()
            t = p * (logp - logq)
            t = torch.where(logq.exp() == 0, torch.full_like(t, math.inf), t)
            return torch.where(p == 0, torch.zeros_like(t), t).sum(-1)
        return torch.distributions.kl_divergence(self._torch(), other._torch()).sum(-1)

    def sample(self) -> Tensor:
        if self.discrete:
            return torch.multinomial(self.params[0].exp().reshape(-1, self.params[0].shape[-1]), 1).reshape(
                self.params[0].shape[:-1]
            )
        u = torch.normal(*self.params)
        return u if self.kind == "normal" else self._squash(u)

    def mode(self) -> Tensor:
        """Most likely action (categorical) or the squashed mean (Gaussian)."""
        if self.discrete:
            return self.params[0].argmax(-1)
        loc = self.params[0]
        return loc if self.kind == "normal" else self._squash(loc)


# ---------------------------------------------------------------------- orders
def fixed_rank(batch_shape: Tuple[int, ...], n: int, device=None) -> Tensor:
    """``rank`` of the fixed order ``0, 1, ..., n-1`` for every sample."""
    return torch.arange(n, device=device).expand(*batch_shape, n)


def random_rank(batch_shape: Tuple[int, ...], n: int, *, generator: Optional[torch.Generator] = None,
                device=None) -> Tensor:
    """An independent uniformly random order per sample (as ``rank``)."""
    noise = torch.rand(*batch_shape, n, generator=generator, device=device)
    return noise.argsort(-1).argsort(-1)


# ---------------------------------------------------------------------- layers
class _Attention(nn.Module):
    """Multi-head attention (``scaled_dot_product_attention``, fastest on CPU for a few tokens).

    ``forward(x)`` is self-attention (one fused q/k/v projection), ``forward(x,
    context)`` cross-attention; ``causal`` masks later positions.
    """

    def __init__(self, embed_dim: int, n_heads: int, *, cross: bool = False):
        super().__init__()
        if embed_dim % n_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by n_heads ({n_heads}).")
        self.n_heads = n_heads
        if cross:
            self.q = nn.Linear(embed_dim, embed_dim)
            self.kv = nn.Linear(embed_dim, 2 * embed_dim)
        else:
            self.qkv = nn.Linear(embed_dim, 3 * embed_dim)
        self.out = nn.Linear(embed_dim, embed_dim)

    def _split(self, t: Tensor) -> Tensor:  # (*B, L, d) -> (*B, heads, L, d / heads)
        if self.n_heads == 1:  # a view: no transpose, so no copy before and after the attention
            return t.unsqueeze(-3)
        return t.unflatten(-1, (self.n_heads, -1)).transpose(-3, -2)

    def _merge(self, y: Tensor) -> Tensor:  # (*B, heads, L, d / heads) -> (*B, L, d)
        if self.n_heads == 1:
            return self.out(y.squeeze(-3))
        return self.out(y.transpose(-3, -2).flatten(-2))

    def forward(self, x: Tensor, context: Optional[Tensor] = None, *, causal: bool = False) -> Tensor:
        if context is None:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        else:
            q, (k, v) = self.q(x), self.kv(context).chunk(2, dim=-1)
        y = F.scaled_dot_product_attention(self._split(q), self._split(k), self._split(v), is_causal=causal)
        return self._merge(y)

    # -- incremental decoding (exact: with causal attention, earlier positions never change)
    def context_kv(self, context: Tensor) -> Tuple[Tensor, Tensor]:
        """Cross-attention keys and values of ``context``, computed once per decode."""
        k, v = self.kv(context).chunk(2, dim=-1)
        return self._split(k), self._split(v)

    def step(self, x: Tensor, cache: Optional[Tuple[Tensor, Tensor]] = None,
             kv: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Tensor, Optional[Tuple[Tensor, Tensor]]]:
        """Attention of the newest position ``x (B, 1, d)``: self-attention over the cached
        keys/values plus its own (``kv is None``), or cross-attention to ``kv``."""
        if kv is None:
            q, k, v = (self._split(t) for t in self.qkv(x).chunk(3, dim=-1))
            if cache is not None:
                k, v = torch.cat([cache[0], k], dim=-2), torch.cat([cache[1], v], dim=-2)
            cache = (k, v)
        else:
            q, (k, v) = self._split(self.q(x)), kv
        return self._merge(F.scaled_dot_product_attention(q, k, v)), cache


def _mlp(embed_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.GELU(), nn.Linear(embed_dim, embed_dim))


class _EncoderBlock(nn.Module):
    """Pre-norm block: self-attention over all agents' tokens, then an MLP."""

    def __init__(self, embed_dim: int, n_heads: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(embed_dim), nn.LayerNorm(embed_dim)
        self.attn = _Attention(embed_dim, n_heads)
        self.mlp = _mlp(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _DecoderBlock(nn.Module):
    """Pre-norm block: causal self-attention over the action tokens, cross-attention
    to the encoder, then an MLP."""

    def __init__(self, embed_dim: int, n_heads: int):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(embed_dim) for _ in range(3))
        self.self_attn = _Attention(embed_dim, n_heads)
        self.cross_attn = _Attention(embed_dim, n_heads, cross=True)
        self.mlp = _mlp(embed_dim)

    def forward(self, x: Tensor, memory: Tensor) -> Tensor:
        x = x + self.self_attn(self.norm1(x), causal=True)
        x = x + self.cross_attn(self.norm2(x), memory)
        return x + self.mlp(self.norm3(x))

    def step(self, x: Tensor, memory_kv: Tuple[Tensor, Tensor],
             cache: Optional[Tuple[Tensor, Tensor]]) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        """:meth:`forward` for the newest position only, with the earlier positions' keys/values cached."""
        y, cache = self.self_attn.step(self.norm1(x), cache)
        x = x + y
        x = x + self.cross_attn.step(self.norm2(x), kv=memory_kv)[0]
        return x + self.mlp(self.norm3(x)), cache


def _gather_agents(t: Tensor, index: Tensor) -> Tensor:
    """``t[b, index[b, j]]`` for ``t`` of shape ``(B, n, ...)`` and ``index`` ``(B, n)``."""
    return t.gather(1, index.view(*index.shape, *([1] * (t.dim() - 2))).expand(*index.shape, *t.shape[2:]))


class RunningInputNorm(nn.Module):
    r"""Per-feature standardisation with running statistics: :math:`(x - m) / \sqrt{v + \epsilon}`.

    Unlike a LayerNorm (MAT's input norm), which normalises each token across its
    features, this keeps a feature's scale information: a raw integer target
    ``t`` in ``[0, 79]`` next to a one-hot agent id stays ``(t - 39.5) / 23``,
    where a LayerNorm maps every ``t >= 10`` to almost the same vector.

    The statistics (mean, variance, count; buffers, so they are checkpointed)
    change only in :meth:`update`, which the algorithm calls once per collected
    batch; :meth:`forward` never changes them, so the collection policy and the
    loss see the same normalisation within an update. Statistics are pooled
    over all leading dimensions (batch, time, agents). Normalised values are
    clipped to ``[-clip, clip]``.
    """

    def __init__(self, dim: int, *, eps: float = 1e-5, clip: float = 10.0):
        super().__init__()
        self.eps, self.clip = eps, clip
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Merge the statistics of ``x (..., dim)`` (parallel Welford / Chan et al.)."""
        x = x.detach().reshape(-1, x.shape[-1]).to(self.mean.dtype)
        n = x.shape[0]
        if n == 0:
            return
        batch_mean, batch_var = x.mean(0), x.var(0, unbiased=False)
        total = self.count + n
        delta = batch_mean - self.mean
        new_mean = self.mean + delta * (n / total).to(self.mean.dtype)
        m2 = self.var * self.count.to(self.var.dtype) + batch_var * n + delta.pow(2) * (self.count * n / total).to(
            self.var.dtype
        )
        self.mean.copy_(new_mean)
        self.var.copy_(m2 / total.to(self.var.dtype))
        self.count.copy_(total)

    def forward(self, x: Tensor) -> Tensor:
        return ((x - self.mean) / torch.sqrt(self.var + self.eps)).clamp(-self.clip, self.clip)


#: how the guider normalises its input tokens before the first linear layer
#: (``MultiAgentTransformer(input_norm=...)``): name -> module built from the token size
INPUT_NORMS = {"layernorm": nn.LayerNorm, "rmsnorm": nn.RMSNorm, "running": RunningInputNorm,
               "none": lambda dim: nn.Identity()}


def _input_norm(kind: str, dim: int) -> nn.Module:
    if kind not in INPUT_NORMS:
        raise ValueError(f"MultiAgentTransformer: unknown input_norm {kind!r}; choose one of {list(INPUT_NORMS)}.")
    return INPUT_NORMS[kind](dim)


# ---------------------------------------------------------------------- the guider
class MultiAgentTransformer(nn.Module):
    r"""MAT-style autoregressive joint policy with a value head (MAGPO's guider, paper 003 sec. 4).

    Encoder: :math:`e = \mathrm{Enc}(x_1, \dots, x_n)` (self-attention over the
    agents' tokens, no positional encoding, so it is permutation-equivariant) and
    per-agent values :math:`V_i = w_V^\top e_i + b_V`.
    Decoder input at position :math:`j` of the order :math:`i_{1:n}`:

    .. math::
        t_j = \mathrm{emb}(a^{i_{j-1}}) + e_{i_j}, \qquad
        t_1 = t_{\mathrm{start}} + e_{i_1},

    i.e. the previous agent's action (MAT's shifted action sequence) and the
    deciding agent's encoding (which tells the position which agent it decodes,
    whatever the order); causal self-attention over :math:`t_{1:j}`,
    cross-attention to :math:`e` and a linear head give the parameters of
    :math:`\mu^{i_j}(\cdot|s, \mathbf{a}^{i_{1:j-1}})`. Blocks are pre-norm
    (attention and a width-``embed_dim`` GELU MLP, each residual).

    Args:
        n_agents: number of agents n.
        input_dim: size of one agent's token ``x_i`` (flattened).
        action_dim: number of actions (discrete) or action size (continuous).
        discrete: categorical head (True) or Gaussian head (False).
        embed_dim: model width. Default 64 (paper 003 Table 4 range {32, 64, 128}).
        n_heads: attention heads. Default 1.
        n_blocks: encoder and decoder blocks. Default 1.
        action_low: lower bound of continuous actions, ``(action_dim,)`` or per
            agent ``(n, action_dim)``; with ``action_high``, the Gaussian is
            squashed by ``tanh`` into the bounds. Default None.
        action_high: upper bound of continuous actions. Default None.
        min_scale: smallest Gaussian standard deviation. Default 1e-4.
        input_norm: normalisation of the input tokens before the first linear
            layer: ``layernorm`` (MAT's, across each token's features),
            ``rmsnorm`` (the public MAGPO/Sable code's), ``running``
            (:class:`RunningInputNorm`, per feature, statistics updated by
            :meth:`update_input_stats`) or ``none``. Default ``layernorm``.
    """

    def __init__(
        self,
        *,
        n_agents: int,
        input_dim: int,
        action_dim: int,
        discrete: bool,
        embed_dim: int = 64,
        n_heads: int = 1,
        n_blocks: int = 1,
        action_low: Optional[Tensor] = None,
        action_high: Optional[Tensor] = None,
        min_scale: float = 1e-4,
        input_norm: str = "layernorm",
    ):
        super().__init__()
        for name, value in (("n_agents", n_agents), ("input_dim", input_dim), ("action_dim", action_dim),
                            ("embed_dim", embed_dim), ("n_heads", n_heads), ("n_blocks", n_blocks)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"MultiAgentTransformer: {name} must be an int >= 1, got {value!r}.")
        self.n_agents, self.action_dim, self.discrete = n_agents, action_dim, discrete
        self.min_scale = min_scale
        d = embed_dim
        # token[0] is the input norm (kept at index 0, so LayerNorm checkpoints load unchanged)
        self.token = nn.Sequential(_input_norm(input_norm, input_dim), nn.Linear(input_dim, d), nn.GELU())
        self.encoder = nn.ModuleList(_EncoderBlock(d, n_heads) for _ in range(n_blocks))
        self.encoder_norm = nn.LayerNorm(d)
        self.value_head = nn.Linear(d, 1)
        # discrete: a lookup table (= a bias-free Linear on the one-hot action); continuous: a Linear
        self.action_embed = nn.Embedding(action_dim, d) if discrete else nn.Linear(action_dim, d, bias=False)
        self.start = nn.Parameter(torch.zeros(d))
        self.decoder = nn.ModuleList(_DecoderBlock(d, n_heads) for _ in range(n_blocks))
        self.decoder_norm = nn.LayerNorm(d)
        out_dim = action_dim if discrete else 2 * action_dim
        self.policy_head = nn.Linear(d, out_dim)
        if (action_low is None) != (action_high is None):
            raise ValueError("MultiAgentTransformer: give both action_low and action_high, or neither.")
        if action_low is not None:
            self.register_buffer("action_low", torch.as_tensor(action_low, dtype=torch.float32).clone())
            self.register_buffer("action_high", torch.as_tensor(action_high, dtype=torch.float32).clone())
        else:
            self.action_low = self.action_high = None

    # ------------------------------------------------------------ building blocks
    def update_input_stats(self, x: Tensor) -> None:
        """Fold the tokens ``x (*B, n, input_dim)`` into the running input statistics
        (``input_norm="running"``; a no-op for the other norms)."""
        if isinstance(self.token[0], RunningInputNorm):
            self.token[0].update(x)

    def encode(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """Encoder: ``x (*B, n, input_dim)`` -> encodings ``(*B, n, d)``, values ``(*B, n, 1)``."""
        e = self.token(x)
        for block in self.encoder:
            e = block(e)
        e = self.encoder_norm(e)
        return e, self.value_head(e)

    def value(self, x: Tensor) -> Tensor:
        """Per-agent values ``(*B, n, 1)`` (the value head on the encoding)."""
        return self.encode(x)[1]

    def _embed_action(self, action: Tensor) -> Tensor:
        if self.discrete:
            return self.action_embed(action.long())
        return self.action_embed(action.to(self.start.dtype))

    def _decode(self, tokens: Tensor, memory: Tensor) -> Tensor:
        for block in self.decoder:
            tokens = block(tokens, memory)
        return self.policy_head(self.decoder_norm(tokens))

    def _dist(self, out: Tensor, mask: Optional[Tensor], agents: Optional[Tensor] = None) -> ActionDist:
        """Distribution from the head's output; ``agents`` (``(B,)``) picks per-agent bounds at one position."""
        if self.discrete:
            return ActionDist.categorical(out, mask)
        loc, raw_scale = out.chunk(2, dim=-1)
        scale = F.softplus(raw_scale + _SOFTPLUS_1) + self.min_scale
        low, high = self.action_low, self.action_high
        if low is not None and agents is not None and low.dim() == 2:  # (n, d): bounds per agent
            low, high = low[agents], high[agents]
        return ActionDist.normal(loc, scale, low=low, high=high)

    def _flatten(self, x: Tensor, *rest: Optional[Tensor]):
        batch = x.shape[:-2]
        flat = [x.reshape(-1, *x.shape[-2:])]
        for t in rest:
            flat.append(None if t is None else t.reshape(-1, *t.shape[len(batch):]))
        return batch, flat

    # ------------------------------------------------------------ teacher forcing
    def forward(self, x: Tensor, action: Tensor, rank: Tensor,
                mask: Optional[Tensor] = None) -> Tuple[ActionDist, Tensor]:
        """Teacher-forced pass: every agent's conditional distribution for the joint ``action``.

        Returns the distribution of :math:`\\mu^{i}(\\cdot|s, \\mathbf{a}^{\\text{agents before } i})`
        for every agent ``i`` (batch shape ``(*B, n)``, agents in their index
        order, not the decoding order) and the values ``(*B, n, 1)``, in one pass.
        """
        batch, (x, action, rank, mask) = self._flatten(x, action, rank, mask)
        e, value = self.encode(x)
        if rank.shape[0] and torch.equal(rank, rank[:1].expand_as(rank)):
            # one order for the whole batch (agent_order=shuffle/fixed): permute with index_select,
            # much cheaper than a per-sample gather (and its scatter-add backward)
            order, back = rank[0].argsort(), rank[0]
            permute = lambda t, index: t.index_select(1, index)  # noqa: E731
        else:
            order, back = rank.argsort(-1), rank  # order[:, j] = agent decided at position j
            permute = _gather_agents
        e_ord = permute(e, order)
        a_ord = permute(action, order)
        previous = self._embed_action(a_ord[:, :-1])
        start = self.start.expand(e.shape[0], 1, -1)
        tokens = torch.cat([start, previous], dim=1) + e_ord
        out = permute(self._decode(tokens, e), back)  # back to agent index order
        if mask is not None:
            mask = mask.reshape(*batch, *mask.shape[1:])
        dist = self._dist(out.reshape(*batch, *out.shape[1:]), mask)
        return dist, value.reshape(*batch, *value.shape[1:])

    # ------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, x: Tensor, rank: Tensor, mask: Optional[Tensor] = None, *,
               deterministic: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
        """Decode the agents one after the other in the order given by ``rank``.

        Returns the joint action (agents in index order), each agent's
        conditional log-probability ``(*B, n)`` as recorded while sampling, and
        the values ``(*B, n, 1)``. ``deterministic`` takes each conditional's mode.
        """
        batch, (x, rank, mask) = self._flatten(x, rank, mask)
        e, value = self.encode(x)
        order = rank.argsort(-1)
        e_ord = _gather_agents(e, order)
        mask_ord = None if mask is None else _gather_agents(mask, order)
        memory_kv = [block.cross_attn.context_kv(e) for block in self.decoder]
        caches: list = [None] * len(self.decoder)
        token = (self.start.expand(e.shape[0], -1) + e_ord[:, 0]).unsqueeze(1)
        actions, log_probs = [], []
        n = self.n_agents
        for j in range(n):  # autoregressive: position j sees the actions of positions < j
            h = token
            for b, block in enumerate(self.decoder):  # one new position, earlier ones cached
                h, caches[b] = block.step(h, memory_kv[b], caches[b])
            out = self.policy_head(self.decoder_norm(h[:, 0]))
            dist = self._dist(out, None if mask_ord is None else mask_ord[:, j], order[:, j])
            a = dist.mode() if deterministic else dist.sample()
            actions.append(a)
            log_probs.append(dist.log_prob(a))
            if j + 1 < n:
                token = (self._embed_action(a) + e_ord[:, j + 1]).unsqueeze(1)
        a_ord = torch.stack(actions, dim=1)
        logp_ord = torch.stack(log_probs, dim=1)
        action = _gather_agents(a_ord, rank)
        log_prob = _gather_agents(logp_ord, rank)
        return (
            action.reshape(*batch, *action.shape[1:]),
            log_prob.reshape(*batch, n),
            value.reshape(*batch, *value.shape[1:]),
        )
