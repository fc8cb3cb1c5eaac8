"""Oracle tests for objectives/trust_region.py (001_8ff130c17487d6e3.txt eqs. 13-14, 20, 22, 51).

Every matrix-free, agent-batched operator is compared against dense matrices
built agent by agent (a Python loop, no vmap) with torch.autograd.functional:
J = jacobian(per-sample log-probs), H = hessian(true mean KL).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Categorical, Independent, Normal, kl_divergence
from torch.func import functional_call, stack_module_state

from benchmarl_decentral.objectives.trust_region import (
    Linearisation,
    add_step,
    backtracking_line_search,
    conjugate_gradient,
    fisher_vector_product,
    flat_params,
    jvp_logratio,
    log_prob,
    make_fvp,
    mean_kl,
    natural_step,
    stacked_policy,
    surrogate,
    trpo_step,
    unflatten,
    vjp_logratio,
)

N_AGENTS, M, K, N_ACT, OBS = 3, 6, 2, 3, 4
DAMPING = 1e-3


@pytest.fixture(autouse=True)
def _float64_one_thread():
    # float64 for tight oracle comparisons; one thread: tiny ops on a shared 2-core box
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


class CategoricalNet(nn.Module):
    """Tiny joint-policy net: K categorical heads over N_ACT actions."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(OBS, 4), nn.Tanh(), nn.Linear(4, K * N_ACT))

    def forward(self, o):
        return self.body(o).unflatten(-1, (K, N_ACT))


class GaussianNet(nn.Module):
    """Tiny joint-policy net: K Gaussian heads of dim 2, state-independent log-std."""

    def __init__(self) -> None:
        super().__init__()
        self.mu = nn.Sequential(nn.Linear(OBS, 3), nn.Tanh(), nn.Linear(3, K * 2))
        self.log_std = nn.Parameter(0.3 * torch.randn(K, 2))

    def forward(self, o):
        loc = self.mu(o).unflatten(-1, (K, 2))
        return loc, self.log_std.exp().expand_as(loc)


def categorical(out):
    return Categorical(logits=out)


def gaussian(out):
    return Independent(Normal(out[0], out[1]), 1)


KINDS = {"categorical": (CategoricalNet, categorical), "gaussian": (GaussianNet, gaussian)}


def make_problem(kind: str, n: int = N_AGENTS, seed: int = 0):
    """n agents with different parameters and observations, one shared joint action per sample."""
    net_cls, make_dist = KINDS[kind]
    torch.manual_seed(seed)
    nets = [net_cls() for _ in range(n)]
    params, _ = stack_module_state(nets)
    params = {k: v.detach() for k, v in params.items()}
    policy = stacked_policy(nets[0], make_dist)
    obs = torch.randn(n, M, OBS)
    with torch.no_grad():
        actions = policy(params, obs).sample()[0]  # the joint action every agent scores
    actions = actions.expand(n, *actions.shape)
    advantages = torch.randn(n, M)
    return nets[0], make_dist, policy, params, obs, actions, advantages


def agent_slice(params, i):
    return {k: v[i] for k, v in params.items()}


def dense_agent(net, make_dist, params, obs, actions, i):
    """Per-agent oracle (plain loop, no vmap): theta_i, J_i (M*K, D), H_i (D, D), logp_old_i."""
    like = {k: v[i : i + 1] for k, v in params.items()}
    theta = flat_params(like)[0]

    def unflat(t):
        return {k: v[0] for k, v in unflatten(t[None], like).items()}

    def logp(t):
        return make_dist(functional_call(net, unflat(t), (obs[i],))).log_prob(actions[i]).reshape(-1)

    with torch.no_grad():
        old = make_dist(functional_call(net, agent_slice(params, i), (obs[i],)))

    def kl(t):
        return kl_divergence(old, make_dist(functional_call(net, unflat(t), (obs[i],)))).sum(-1).mean()

    J = torch.autograd.functional.jacobian(logp, theta)
    H = torch.autograd.functional.hessian(kl, theta)
    return theta, J, H, logp(theta).detach()


def dense_trpo_step(g, H, delta, damping):
    Hd = H + damping * torch.eye(H.shape[0])
    d = torch.linalg.solve(Hd, g)
    return math.sqrt(2 * delta / float(g @ d)) * d


# ------------------------------------------------------------------------ helpers


def test_flat_params_roundtrip_and_add_step():
    _, _, _, params, *_ = make_problem("gaussian")
    flat = flat_params(params)
    assert flat.shape[0] == N_AGENTS
    back = unflatten(flat, params)
    assert all(torch.equal(back[k], params[k]) for k in params)
    step = torch.randn_like(flat)
    frac = torch.tensor([0.0, 0.5, 1.0])
    new = flat_params(add_step(params, step, frac))
    torch.testing.assert_close(new, flat + frac[:, None] * step)


def test_stacked_policy_equals_per_agent_modules():
    for kind in KINDS:
        net, make_dist, policy, params, obs, actions, _ = make_problem(kind)
        lp = log_prob(policy, params, obs, actions)
        for i in range(N_AGENTS):
            out = functional_call(net, agent_slice(params, i), (obs[i],))
            torch.testing.assert_close(lp[i], make_dist(out).log_prob(actions[i]))


# ------------------------------------------------------------- J x, J^T u, H v


@pytest.mark.parametrize("kind", list(KINDS))
def test_jvp_vjp_match_dense_jacobian(kind):
    net, make_dist, policy, params, obs, actions, _ = make_problem(kind)
    D = flat_params(params).shape[1]
    x = torch.randn(N_AGENTS, D)
    u = torch.randn(N_AGENTS, M, K)
    jx = jvp_logratio(policy, params, obs, actions, x)
    jtu = vjp_logratio(policy, params, obs, actions, u)
    assert jx.shape == (N_AGENTS, M, K) and jtu.shape == (N_AGENTS, D)
    for i in range(N_AGENTS):  # the loop is the oracle for the vmapped, stacked call
        _, J, _, _ = dense_agent(net, make_dist, params, obs, actions, i)
        torch.testing.assert_close(jx[i].reshape(-1), J @ x[i])
        torch.testing.assert_close(jtu[i], J.T @ u[i].reshape(-1))


@pytest.mark.parametrize("kind", list(KINDS))
def test_fvp_matches_dense_true_kl_hessian(kind):
    net, make_dist, policy, params, obs, actions, _ = make_problem(kind)
    D = flat_params(params).shape[1]
    v = torch.randn(N_AGENTS, D)
    Avp = make_fvp(policy, params, obs, damping=DAMPING)
    hv, hv2 = Avp(v), Avp(2 * v)  # the cached graph is reusable
    torch.testing.assert_close(hv2, 2 * hv)
    torch.testing.assert_close(fisher_vector_product(policy, params, obs, v, damping=DAMPING), hv)
    for i in range(N_AGENTS):
        _, _, H, _ = dense_agent(net, make_dist, params, obs, actions, i)
        torch.testing.assert_close(hv[i], (H + DAMPING * torch.eye(D)) @ v[i])


def test_categorical_fisher_is_the_real_kl_hessian():
    """H = E_{a ~ pi_old}[grad log pi grad log pi^T] summed over heads (eq. 46), not a logit surrogate."""
    net, make_dist, policy, params, obs, actions, _ = make_problem("categorical")
    like = {k: v[:1] for k, v in params.items()}
    theta = flat_params(like)[0]

    def log_softmax(t):  # (M, K, N_ACT) log-probabilities of every action
        p = {k: v[0] for k, v in unflatten(t[None], like).items()}
        return functional_call(net, p, (obs[0],)).log_softmax(-1)

    G = torch.autograd.functional.jacobian(log_softmax, theta)  # (M, K, A, D)
    prob = log_softmax(theta).exp().detach()
    fisher = torch.einsum("mka,mkad,mkae->de", prob, G, G) / M
    v = torch.randn(1, theta.numel())
    hv = fisher_vector_product(policy, like, obs[:1], v, damping=DAMPING)
    torch.testing.assert_close(hv[0], (fisher + DAMPING * torch.eye(theta.numel())) @ v[0])


# ---------------------------------------------------------------------------- CG


def test_conjugate_gradient_solves_random_spd_per_agent():
    torch.manual_seed(1)
    n, D = 4, 7
    B = torch.randn(n, D, D)
    A = B @ B.transpose(1, 2) + 0.5 * torch.eye(D)
    A[1] = torch.eye(D)  # converges in one iteration while the others continue
    b = torch.randn(n, D)
    b[2] = 0.0  # already solved: must stay exactly zero

    def Avp(v):
        return torch.einsum("nij,nj->ni", A, v)

    x = conjugate_gradient(Avp, b, iters=50, residual_tol=1e-20)
    torch.testing.assert_close(x, torch.linalg.solve(A, b))
    assert torch.equal(x[2], torch.zeros(D))
    # each agent its own CG scalars: truncated batched CG == truncated CG per agent
    x3 = conjugate_gradient(Avp, b, iters=3)
    for i in range(n):
        xi = conjugate_gradient(lambda v, i=i: v @ A[i].T, b[i : i + 1], iters=3)
        torch.testing.assert_close(x3[i], xi[0])
    # a warm start at the solution needs no iteration
    torch.testing.assert_close(conjugate_gradient(Avp, b, iters=0, x0=x), x)


def test_conjugate_gradient_relative_stop_shrinks_the_warm_starts_residual_per_agent():
    """``rtol``: each agent stops at the first iteration with ``||r|| <= rtol ||r0||`` (r0: its warm start's)."""
    torch.manual_seed(2)
    n, D, rtol = 3, 12, 0.3
    B = torch.randn(n, D, D)
    A = B @ B.transpose(1, 2) + 0.1 * torch.eye(D)
    b, x0 = torch.randn(n, D), torch.randn(n, D)

    def Avp(v):
        return torch.einsum("nij,nj->ni", A, v)

    def residual(x):
        return (b - Avp(x)).norm(dim=1)

    counts = torch.zeros(n, dtype=torch.long)
    x = conjugate_gradient(Avp, b, iters=50, residual_tol=0.0, x0=x0, rtol=rtol, counts=counts)
    assert bool((residual(x) <= rtol * residual(x0) * (1 + 1e-6)).all())
    for i in range(n):  # the same as plain CG of exactly that many iterations, one step fewer is not enough
        k = int(counts[i])
        assert 1 <= k < D
        xi = conjugate_gradient(Avp, b, iters=k, residual_tol=0.0, x0=x0)
        torch.testing.assert_close(x[i], xi[i])
        fewer = conjugate_gradient(Avp, b, iters=k - 1, residual_tol=0.0, x0=x0)
        assert float(residual(fewer)[i]) > rtol * float(residual(x0)[i])
    with pytest.raises(ValueError, match="rtol must be in"):
        conjugate_gradient(Avp, b, rtol=1.0)


# -------------------------------------------------------------- the natural step


@pytest.mark.parametrize("kind", list(KINDS))
def test_natural_step_is_the_dense_natural_gradient_trpo_step(kind):
    net, make_dist, policy, params, obs, actions, adv = make_problem(kind)
    delta = 0.01
    lin = Linearisation(policy, params, obs, actions, damping=DAMPING)
    D = lin.n_params
    g = lin.surrogate_gradient(adv)
    _, nat, _ = trpo_step(lin, adv, delta=delta, cg_iters=4 * D, residual_tol=1e-24, line_search=False)
    for i in range(N_AGENTS):
        theta, J, H, logp_old = dense_agent(net, make_dist, params, obs, actions, i)
        # g is the gradient of the surrogate mean(ratio * A) at theta_old
        like = {k: v[i : i + 1] for k, v in params.items()}
        t = theta.clone().requires_grad_(True)
        surr = surrogate(policy, unflatten(t[None], like), obs[i : i + 1], actions[i : i + 1],
                         adv[i : i + 1], logp_old=logp_old.reshape(1, M, K))
        (g_dense,) = torch.autograd.grad(surr.sum(), t)
        torch.testing.assert_close(g[i], g_dense)
        torch.testing.assert_close(g[i], J.T @ adv[i].repeat_interleave(K) / M)
        expected = dense_trpo_step(g_dense, H, delta, DAMPING)
        cos = torch.nn.functional.cosine_similarity(nat.step[i], expected, dim=0)
        assert cos > 1 - 1e-10
        torch.testing.assert_close(nat.step[i].norm(), expected.norm())
        # on the quadratic model's boundary: 1/2 x^T (H + damping) x = delta
        Hd = H + DAMPING * torch.eye(D)
        torch.testing.assert_close(0.5 * nat.step[i] @ Hd @ nat.step[i], torch.tensor(delta))


def test_natural_step_zero_gradient_gives_zero_step():
    _, _, policy, params, obs, actions, _ = make_problem("categorical")
    lin = Linearisation(policy, params, obs, actions)
    nat = natural_step(lin.fvp(), torch.zeros(N_AGENTS, lin.n_params), delta=0.01)
    assert torch.equal(nat.step, torch.zeros_like(nat.step))


# -------------------------------------------------------------------- line search


def test_line_search_shrinks_an_overshooting_step_per_agent():
    _, _, policy, params, obs, actions, adv = make_problem("categorical")
    bound = 0.003
    lin = Linearisation(policy, params, obs, actions, damping=DAMPING)
    _, nat, _ = trpo_step(lin, adv, delta=bound, line_search=False)
    step = nat.step * torch.tensor([4.0, 0.5, 1.0])[:, None]  # agent 0 far outside the region
    assert mean_kl(policy, add_step(params, step), params, obs)[0] > bound
    res = backtracking_line_search(policy, params, step, obs, bound=bound)
    assert res.fraction[0] < 1.0 and res.fraction[1] == 1.0
    assert bool(res.accepted.all())
    kl = mean_kl(policy, res.params, params, obs)
    assert bool((kl <= bound).all())
    torch.testing.assert_close(kl, res.kl)
    torch.testing.assert_close(flat_params(res.params), flat_params(params) + res.fraction[:, None] * step)


def test_line_search_reverts_when_no_fraction_passes():
    _, _, policy, params, obs, actions, adv = make_problem("gaussian")
    lin = Linearisation(policy, params, obs, actions, damping=DAMPING)
    g = lin.surrogate_gradient(adv)
    step = 50.0 * g / g.norm(dim=1, keepdim=True)
    res = backtracking_line_search(policy, params, step, obs, bound=1e-3, max_backtracks=2)
    assert torch.equal(res.fraction, torch.zeros(N_AGENTS)) and not bool(res.accepted.any())
    torch.testing.assert_close(flat_params(res.params), flat_params(params))
    # a KL-feasible step that lowers the surrogate is refused when advantages are given
    _, nat, _ = trpo_step(lin, adv, delta=1e-3, line_search=False)
    res = backtracking_line_search(policy, params, -nat.step, obs, bound=1e-3, actions=actions,
                                   advantages=adv, max_backtracks=3)
    assert not bool(res.accepted.any())
    res = backtracking_line_search(policy, params, nat.step, obs, bound=1e-3, actions=actions,
                                   advantages=adv)
    assert bool(res.accepted.all()) and bool((res.improvement > 0).all())


def test_trpo_step_keeps_every_agent_inside_its_bound():
    _, _, policy, params, obs, actions, adv = make_problem("gaussian", seed=3)
    lin = Linearisation(policy, params, obs, actions)
    new, _, ls = trpo_step(lin, adv, delta=0.003)
    assert bool((mean_kl(policy, new, params, obs) <= 0.003).all())
    assert bool((ls.improvement >= 0).all())


# -------------------------------------------------------------------------- errors


def test_clear_errors():
    _, _, policy, params, obs, actions, adv = make_problem("categorical")
    lin = Linearisation(policy, params, obs, actions)
    g = lin.surrogate_gradient(adv)
    for delta in (0.0, -0.1):
        with pytest.raises(ValueError, match="delta"):
            natural_step(lin.fvp(), g, delta=delta)
        with pytest.raises(ValueError, match="delta"):
            trpo_step(lin, adv, delta=delta)
    for damping in (0.0, -1e-3):
        with pytest.raises(ValueError, match="damping"):
            make_fvp(policy, params, obs, damping=damping)
        with pytest.raises(ValueError, match="damping"):
            Linearisation(policy, params, obs, actions, damping=damping)
    with pytest.raises(ValueError, match="bound"):
        backtracking_line_search(policy, params, g, obs, bound=0.0)
    # mismatched agent dims
    bad = dict(params)
    first = next(iter(bad))
    bad[first] = bad[first][:2]
    with pytest.raises(ValueError, match="agent dim"):
        flat_params(bad)
    with pytest.raises(ValueError, match="obs"):
        Linearisation(policy, params, obs[:2], actions)
    with pytest.raises(ValueError, match="actions"):
        jvp_logratio(policy, params, obs, actions[:1], g)
    with pytest.raises(ValueError, match="x must be flat"):
        jvp_logratio(policy, params, obs, actions, g[:2])
    with pytest.raises(ValueError, match="v must be flat"):
        lin.fvp()(g[:, :-1])
    with pytest.raises(ValueError, match="advantages"):
        lin.surrogate_gradient(adv[:, :-1])
