"""Topology options resolved per agent group (multi-group tasks, small groups).

BenchMARL tasks may split their agents into groups of different sizes
(``pettingzoo/simple_tag``: 3 adversaries and 2 good agents; ``vmas/simple_tag``:
3 and 1). Every group gets its own communication graph, built from the
algorithm's topology options (``algorithm.topology``, ``algorithm.k``, ...)
after two steps, done here once for ``decpg``, ``dg_mappo`` and ``matrpo``:

1. **Per-group overrides**: ``algorithm.group_topology={adversary: {topology: full}}``
   replaces some options for the named groups only (:func:`check_group_topology`
   validates the keys without the task, :func:`resolve_group_topologies` the
   group names against the task).
2. **Small groups**:

   * a 1-agent group has no neighbours, so there is no graph and no mixing:
     its topology becomes ``full`` (the empty graph over one agent) whatever
     the options, said once at INFO;
   * ``knn_ring`` with the *default* ``k`` (the YAML's) on a group of
     ``n <= k`` agents uses ``k = n - 1`` (the full graph of that group), said
     once at INFO;
   * an ``k`` the user chose (a global value that differs from the YAML
     default, or one given in ``group_topology``) that does not fit a group of
     two or more agents is refused, naming the group and both fixes;
   * a custom ``adjacency`` whose size differs from the group's is refused the
     same way (give the group its own through ``group_topology``).

Nothing here imports BenchMARL, hydra or torchrl.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Mapping, Optional, Sequence

LOGGER = logging.getLogger("benchmarl_decentral")

#: Topologies whose graph is fixed before training (the others are rebuilt from observations).
STATIC_TOPOLOGIES: tuple[str, ...] = ("knn_ring", "ring", "full", "custom")


def _as_dict(value: Any) -> Optional[Dict[Any, Any]]:
    """A plain dict of a mapping (dict, omegaconf DictConfig), else None."""
    if hasattr(value, "keys") and hasattr(value, "__getitem__"):
        return {key: value[key] for key in value.keys()}
    return None


def _plain(value: Any) -> Any:
    """Nested omegaconf lists / dicts as plain Python lists / dicts."""
    mapping = _as_dict(value)
    if mapping is not None:
        return {key: _plain(v) for key, v in mapping.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        return [_plain(v) for v in value]
    return value


def check_group_topology(
    value: Any,
    *,
    owner: str,
    keys: Sequence[str],
    topologies: Sequence[str],
    topology: Optional[str] = None,
    prefix: str = "algorithm",
) -> Dict[str, Dict[str, Any]]:
    """Validate ``group_topology`` without the task: ``{group: {option: value}}``.

    Args:
        value: the configured value; ``None`` or ``{}`` means no override.
        owner: the algorithm's name, first word of every message.
        keys: the options a group may override (``topology`` and those it reads).
        topologies: the topologies a group may choose.
        topology: the global topology; with ``visibility`` (read for every
            group of a SMAC-family task) no override is accepted. (default: None)
        prefix: where the option lives on the command line. (default: "algorithm")

    Returns:
        Plain dicts, ``{group: {option: value}}``.

    Raises:
        ValueError: naming the bad entry and the fix.
    """
    example = f"{prefix}.group_topology={{adversary: {{topology: full}}}}"
    if value is None:
        return {}
    groups = _as_dict(value)
    if groups is None:
        raise ValueError(
            f"{owner}: group_topology must map group names to topology options, got {value!r}; "
            f"set e.g. {example} (or {{}} for none)"
        )
    out: Dict[str, Dict[str, Any]] = {}
    for group, options in groups.items():
        opts = _as_dict(options)
        if opts is None:
            raise ValueError(
                f"{owner}: group_topology.{group} must be a mapping of topology options, got {options!r}; "
                f"set e.g. {example}"
            )
        bad = [key for key in opts if key not in keys]
        if bad:
            raise ValueError(
                f"{owner}: group_topology.{group} has unknown option(s) {bad}; a group may set "
                f"{list(keys)}, e.g. {example}"
            )
        chosen = opts.get("topology")
        if chosen is not None and chosen not in topologies:
            raise ValueError(
                f"{owner}: group_topology.{group}.topology={chosen!r} is not a per-group topology; "
                f"choose one of {list(topologies)}"
            )
        out[str(group)] = {key: _plain(v) for key, v in opts.items()}
    if out and topology == "visibility":
        raise ValueError(
            f"{owner}: {prefix}.group_topology cannot be combined with {prefix}.topology=visibility (ally "
            f"visibility is read for every group of a SMAC-family task); drop group_topology or choose a "
            f"static {prefix}.topology"
        )
    return out


def resolve_group_topologies(
    *,
    owner: str,
    task: str,
    group_map: Mapping[str, Sequence[Any]],
    options: Mapping[str, Any],
    overrides: Mapping[str, Mapping[str, Any]],
    uses: Mapping[str, tuple[str, ...]],
    default_k: Optional[int] = None,
    prefix: str = "algorithm",
    logger: logging.Logger = LOGGER,
) -> Dict[str, Dict[str, Any]]:
    """The topology options of every group: global ones, the group's overrides, small-group rules.

    See the module docstring for the rules. Logs one INFO line per group whose
    options were changed (1 agent, or the default ``k`` lowered).

    Args:
        owner: the algorithm's name, first word of every message.
        task: the task's name, for the messages.
        group_map: group name -> its agents.
        options: the global options (``topology`` and those in ``uses``).
        overrides: validated ``group_topology`` (:func:`check_group_topology`).
        uses: option -> the topologies that read it (``k`` -> ``("knn_ring",)``, ...).
        default_k: the YAML default of ``k``; a global ``k`` equal to it is
            lowered to ``n - 1`` on smaller groups, any other is refused there.
        prefix: where the options live on the command line. (default: "algorithm")
        logger: where the INFO lines go. (default: the ``benchmarl_decentral`` logger)

    Returns:
        ``{group: options}``, each with the same keys as ``options``; an option
        the group's topology does not read is ``None``.

    Raises:
        ValueError: an unknown group in ``overrides`` (naming the task's groups),
            an override option its topology does not read, or a user-set ``k`` /
            ``adjacency`` that does not fit a group; each names the group and the fix.
    """
    unknown = [group for group in overrides if group not in group_map]
    if unknown:
        raise ValueError(
            f"{owner}: group_topology names group(s) {unknown} that task {task} does not have; "
            f"its groups are {list(group_map)}"
        )
    resolved: Dict[str, Dict[str, Any]] = {}
    too_big: Dict[str, tuple[int, str]] = {}  # group -> (its n, where its k was set): a user k that does not fit
    for group, agents in group_map.items():
        n = len(agents)
        own = dict(overrides.get(group, {}))
        opts = {**options, **own}
        topology = opts["topology"]
        for key in own:
            if key != "topology" and topology not in uses.get(key, ()):
                needs = " or ".join(uses.get(key, ()))
                raise ValueError(
                    f"{owner}: group_topology.{group}.{key} is read only with topology {needs}, but group "
                    f"'{group}' uses topology {topology}; remove {key} from group_topology.{group} or set "
                    f"its topology to {needs} there"
                )
        # an option the group's topology does not read is cleared (a global k
        # does not follow a group switched to topology full)
        opts.update({key: None for key, readers in uses.items() if key in opts and topology not in readers})
        if n == 1:
            if topology != "visibility":
                opts.update({key: None for key in uses if key in opts}, topology="full")
            logger.info(
                "%s: group '%s' of task %s has 1 agent: no neighbours, no mixing (its topology options are not used)",
                owner, group, task,
            )
            resolved[group] = opts
            continue
        k = opts.get("k")
        if topology == "knn_ring" and isinstance(k, int) and k > n - 1:
            if "k" in own or k != default_k:
                too_big[group] = (n, f"group_topology.{group}.k={k}" if "k" in own else f"{prefix}.k={k}")
                continue
            opts["k"] = n - 1
            logger.info(
                "%s: group '%s' of task %s has %d agents, so the default k=%d is lowered to k=%d "
                "(k = n-1: the full graph of the group)",
                owner, group, task, n, k, n - 1,
            )
        adjacency = opts.get("adjacency")
        if topology == "custom" and adjacency is not None and hasattr(adjacency, "__len__") and len(adjacency) != n:
            where = f"{prefix}.group_topology.{group}.adjacency" if "adjacency" in own else f"{prefix}.adjacency"
            fix = (
                f"give {where} {n} rows and {n} columns" if len(group_map) == 1 or "adjacency" in own else
                f"give this group its own {n} x {n} matrix with {prefix}.group_topology={{{group}: "
                f"{{adjacency: [[...], ...]}}}} (or another topology, e.g. {{{group}: {{topology: ring}}}})"
            )
            raise ValueError(
                f"{owner}: {where} has {len(adjacency)} rows but group '{group}' of task {task} has {n} agents; {fix}"
            )
        resolved[group] = opts
    if too_big:
        where = sorted({w for _, w in too_big.values()})
        groups = ", ".join(f"'{g}' ({n} agents, so at most k={n - 1})" for g, (n, _) in too_big.items())
        if len(group_map) == 1:
            ((n, _),) = too_big.values()
            fix = f"set {prefix}.k={n - 1} or less"
        else:
            per_group = ", ".join(f"{g}: {{k: {n - 1}}}" for g, (n, _) in too_big.items())
            fix = (
                f"set {prefix}.group_topology={{{per_group}}} for these groups, or a smaller {prefix}.k for all "
                f"(the default k is lowered to n-1 per group by itself)"
            )
        raise ValueError(
            f"{owner}: {' and '.join(where)} does not fit group(s) {groups} of task {task} (k = n-1 is the full "
            f"graph); {fix}"
        )
    return resolved


def resolve_static_group_topologies(
    *,
    owner: str,
    task: str,
    group_map: Mapping[str, Sequence[Any]],
    topology: str,
    k: Optional[int],
    adjacency: Any,
    group_topology: Any,
    keys: Sequence[str],
    option_uses: Mapping[str, tuple[str, ...]],
    default_k: Optional[int],
) -> Dict[str, Dict[str, Any]]:
    """:func:`resolve_group_topologies` for the ``topology`` / ``k`` / ``adjacency`` options of decpg and matrpo.

    Validates ``group_topology`` (:func:`check_group_topology`, static
    topologies only) and resolves every group's options; raises ``ValueError``
    as those two do.
    """
    return resolve_group_topologies(
        owner=owner, task=task, group_map=group_map,
        options={"topology": topology, "k": k, "adjacency": adjacency},
        overrides=check_group_topology(group_topology, owner=owner, keys=keys, topologies=STATIC_TOPOLOGIES,
                                       topology=topology),
        uses={key: option_uses[key] for key in ("k", "adjacency")},
        default_k=default_k,
    )
