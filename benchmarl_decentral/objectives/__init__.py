"""Pure loss / trust-region / ADMM math, unit-testable without BenchMARL.

* :mod:`.trust_region` — matrix-free J x (jvp), J^T u (vjp), true-KL
  Fisher-vector products, batched conjugate gradient, MATRPO's closed-form
  natural step and the KL backtracking line search (001_8ff130c17487d6e3.txt
  eqs. 13-14, 20, 22, 51), all batched over stacked per-agent parameters.
* :mod:`.admm` — MATRPO's asynchronous (random / round-robin) and synchronous
  ADMM over communication links on per-sample log-ratios (eqs. 21-22, 40,
  Algorithm 1), with per-link relative residuals and a per-link stop.
* :mod:`.matrpo` — cached linearisation operators (``CachedLinearisation``)
  and one MATRPO policy iteration (``matrpo_update``: ADMM, then the line
  search on the KL bound and the surrogate improvement).
"""

from __future__ import annotations

from benchmarl_decentral.objectives.admm import (
    ADMM_METRICS,
    ADMM_MODES,
    AdmmState,
    activate_link,
    canonical_links,
    consensus_gradient,
    dual_update,
    init_state,
    link_signs,
    link_converged,
    links_from_adjacency,
    per_agent_relative_residuals,
    per_agent_residuals,
    primal_residual,
    relative_residuals,
    primal_step,
    run_admm,
    select_link,
    synchronous_iteration,
)
from benchmarl_decentral.objectives.trust_region import (
    LineSearchResult,
    Linearisation,
    NaturalStep,
    PolicyFn,
    add_step,
    backtracking_line_search,
    check_agent_dims,
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

__all__ = [
    "ADMM_METRICS",
    "ADMM_MODES",
    "AdmmState",
    "LineSearchResult",
    "Linearisation",
    "NaturalStep",
    "PolicyFn",
    "activate_link",
    "add_step",
    "backtracking_line_search",
    "canonical_links",
    "check_agent_dims",
    "conjugate_gradient",
    "consensus_gradient",
    "dual_update",
    "fisher_vector_product",
    "flat_params",
    "init_state",
    "jvp_logratio",
    "link_signs",
    "links_from_adjacency",
    "log_prob",
    "make_fvp",
    "mean_kl",
    "natural_step",
    "link_converged",
    "per_agent_relative_residuals",
    "per_agent_residuals",
    "relative_residuals",
    "primal_residual",
    "primal_step",
    "run_admm",
    "select_link",
    "stacked_policy",
    "surrogate",
    "synchronous_iteration",
    "trpo_step",
    "unflatten",
    "vjp_logratio",
]
