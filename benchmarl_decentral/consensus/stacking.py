"""Per-agent parameters of any BenchMARL model as stacked ``(n, ...)`` leaves, for consensus mixing.

With ``share_params=False`` BenchMARL (1.5.2) keeps an agent's parameters in
one of two ways:

* **stacked**: one tensor per leaf with a leading agent dim ``(n, ...)``
  (torchrl's ``MultiAgentMLP`` / ``MultiAgentConvNet``, BenchMARL's
  ``MultiAgentGRU`` / ``MultiAgentLSTM`` through ``TensorDict.from_modules``):
  the mixer uses the leaf as it is;
* **n copies**: an ``nn.ModuleList`` of ``n`` identical modules, the ``i``-th
  agent's at index ``i`` (``layers/gnn``'s ``gnns``, ``layers/deepsets``'s
  ``local_deepsets`` / ``global_deepsets``, and the ``mlp`` / ``cnn`` / ``gru``
  / ``lstm`` lists those models build when their input has no agent dim).

:class:`AgentStack` gathers the copies: for every parameter of the copied
module it allocates one stacked tensor ``S`` of shape ``(n, ...)`` and points
each copy's parameter at its row (``param.data = S[i]``). The parameters stay
the same ``nn.Parameter`` objects (what the optimizer, the loss and the
collection policy hold), only their storage moves, so an in-place write to
``S`` (a mixing step ``S <- W S``, the common initialisation, the averaged
evaluation model) is a write to every copy, and an optimizer step on a copy is
a write to its row of ``S``. The mixer then sees stacked leaves only, the same
as for ``layers/mlp``.

Copies are recognised structurally (no BenchMARL import): a ``ModuleList`` of
length ``n`` that is a direct child of a module whose ``n_agents == n`` and
``share_params is False`` (BenchMARL's ``Model`` attributes), whose entries
have the same parameter names and shapes and are not themselves agent-aware
models (a ``SequenceModel`` of ``n`` layers is a list of models, not copies).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn


def agent_copy_lists(module: nn.Module, n_agents: int) -> list[str]:
    """Dotted paths of the ``ModuleList``\\ s that hold one module per agent (see the module doc).

    Args:
        module: the network (a BenchMARL model, or any module holding some).
        n_agents: the group's number of agents.

    Returns:
        Paths as in ``module.named_modules()``, e.g. ``"module.0.gnns"``.
    """
    found = []
    for path, owner in module.named_modules():
        if getattr(owner, "share_params", None) is not False or getattr(owner, "n_agents", None) != n_agents:
            continue
        for name, child in owner.named_children():
            if not isinstance(child, nn.ModuleList) or len(child) != n_agents:
                continue
            if any(hasattr(copy, "n_agents") for copy in child):
                continue  # a list of agent-aware models (BenchMARL's SequenceModel.models), not copies
            layouts = [[(k, tuple(p.shape)) for k, p in copy.named_parameters()] for copy in child]
            if layouts[0] and all(layout == layouts[0] for layout in layouts):
                found.append(f"{path}.{name}" if path else name)
    return found


class AgentStack:
    """One network's per-agent parameters as stacked ``(n, ...)`` leaves (see the module doc).

    Args:
        params: the network's parameters by dotted name (e.g. a torchrl loss's
            ``actor_network_params.flatten_keys()``): the tensors the optimizer
            steps. Copies are re-pointed at rows of new stacked tensors.
        module: a module with the same structure and names as ``params``
            (the network itself, or the loss's functional copy of it).
        n_agents: the group's number of agents ``n``.
        what: the network's name for error messages (e.g. ``"actor"``).

    Attributes:
        leaves: one ``(n, ...)`` tensor per per-agent parameter; in-place writes
            reach the parameters.
        names: the leaves' names, in the same order: a stacked parameter's own
            name, or ``path.*.rest`` for a leaf gathered from ``n`` copies.
        parameters: the parameters themselves (what an optimizer holds).
        gathered: stacked leaf name (``path.*.rest``) -> the copies' names,
            for the leaves gathered from ``n`` copies.

    Raises:
        ValueError: a parameter neither stacked on a leading agent dim of size
            ``n`` nor one of ``n`` copies (e.g. a parameter shared by all agents).
    """

    def __init__(self, params: Mapping[str, Tensor], module: nn.Module, n_agents: int, what: str) -> None:
        n = n_agents
        params = dict(params)
        lists = agent_copy_lists(module, n)
        groups: dict[str, list[str | None]] = {}
        stacked: dict[str, Tensor] = {}
        order: list[str] = []  # leaf names in params' order
        bad: list[tuple[str, tuple]] = []
        for name, p in params.items():
            prefix = next((pre for pre in lists if name.startswith(pre + ".")), None)
            if prefix is not None:
                index, rest = name[len(prefix) + 1 :].split(".", 1)
                key = f"{prefix}.*.{rest}"
                if key not in groups:
                    groups[key] = [None] * n
                    order.append(key)
                groups[key][int(index)] = name
            elif p.dim() > 0 and p.shape[0] == n:
                stacked[name] = p
                order.append(name)
            else:
                bad.append((name, tuple(p.shape)))
        if bad:
            raise ValueError(
                f"{what} parameter(s) {bad[:3]} are neither stacked on a leading agent dim of size {n} nor one "
                f"of {n} per-agent copies, so no agent owns them and DSGD cannot mix them"
            )
        gathered: dict[str, Tensor] = {}
        for key, names in groups.items():
            copies = [params[name] for name in names]  # complete: agent_copy_lists checked the layouts
            S = torch.stack([p.detach() for p in copies])
            for i, p in enumerate(copies):
                p.data = S[i]
            gathered[key] = S
        self.n_agents = n
        self.leaves: list[Tensor] = [gathered[k] if k in gathered else stacked[k] for k in order]
        self.names: list[str] = list(order)
        self.parameters: list[Tensor] = list(params.values())
        self.gathered: dict[str, list[str]] = {k: list(v) for k, v in groups.items()}
        self._copies: list[list[Tensor] | None] = [
            [params[name] for name in groups[k]] if k in groups else None for k in order
        ]

    def check_aliasing(self) -> None:
        """Raise if a copy's storage no longer is its row of the stacked leaf (e.g. a parameter was replaced)."""
        for leaf, copies in zip(self.leaves, self._copies):
            if copies is not None:
                for i, p in enumerate(copies):
                    if p.data_ptr() != leaf[i].data_ptr():
                        raise RuntimeError(
                            "a gathered per-agent parameter no longer shares storage with its stacked leaf; "
                            "mixing would not reach it"
                        )

    def grads(self) -> list[Tensor | None]:
        """Stacked gradients ``(n, ...)``, one per leaf (None where no agent has one).

        For a gathered leaf the copies' gradients are stacked into one tensor and
        each copy's ``.grad`` is pointed at its row (a copy without a gradient
        gets zeros), so in-place writes to the returned tensor (per-agent
        clipping) reach what the optimizer applies. Call after ``backward()``.
        """
        out: list[Tensor | None] = []
        for leaf, copies in zip(self.leaves, self._copies):
            if copies is None:
                out.append(leaf.grad)
                continue
            grads = [p.grad for p in copies]
            if all(g is None for g in grads):
                out.append(None)
                continue
            G = torch.stack([torch.zeros_like(p) if g is None else g for p, g in zip(copies, grads)])
            for i, p in enumerate(copies):
                p.grad = G[i]
            out.append(G)
        return out
