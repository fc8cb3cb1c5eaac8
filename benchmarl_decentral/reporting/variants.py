"""Runs of one algorithm with different ``algorithm.*`` settings, reported apart.

BenchMARL names a run's algorithm after its class only (``dg_mappo``), so an
ablation such as ``algorithm=dg_mappo algorithm.dgat_messages=zero`` lands in
the JSON under the same name as the default runs; left alone, a report would
average the two variants together (or keep one run per seed and drop the other
as a "duplicate"). :func:`label_variants` gives such runs their own name, from
their hydra config (``.hydra/config.yaml`` of the run folder):

* only where runs of one algorithm on one task have *different* algorithm
  settings (a sweep that sets ``algorithm.entropy_coef=0`` for every run keeps
  the plain names, so names stay stable and comparable across reports);
* the label lists the settings that differ between those runs *and* from the
  algorithm's own defaults (``get_from_yaml()``), so the default runs keep the
  plain name: ``dg_mappo`` and ``dg_mappo[dgat_messages=zero]``. Two different
  settings always get two different labels (a setting that differs between
  them differs from the default in at least one of them).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Dict, List, Optional, Sequence, Tuple

_MISSING = object()


def _canonical(value) -> str:
    if value is _MISSING:
        return "<missing>"
    return json.dumps(value, sort_keys=True, default=str)


def _render(value) -> str:
    """A value as one would type it in a hydra override (``null``, ``true``, ``[a,b]``, ``{k:v}``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_render(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_render(v)}" for k, v in value.items()) + "}"
    return str(value)


def algorithm_settings(run) -> Optional[dict]:
    """The ``algorithm`` section of a run's hydra config, or None (no config beside its JSON)."""
    from benchmarl_decentral.reporting.scores import run_config

    info = run_config(run)
    section = info["config"].get("algorithm") if info is not None and isinstance(info["config"], dict) else None
    return dict(section) if isinstance(section, dict) else None


def algorithm_defaults(name: str) -> Dict[str, object]:
    """The default settings (its YAML) of the algorithm a JSON names ``name``, or ``{}`` when unknown.

    The JSON holds BenchMARL's run name, the algorithm class's lower-cased name (``dgmappo`` for
    ``algorithm=dg_mappo``), so the registry is searched by that name as well as by its key.
    """
    try:
        import benchmarl_decentral  # noqa: F401  (registers ours)
        from benchmarl.algorithms import algorithm_config_registry

        config_class = algorithm_config_registry.get(name) or next(
            (c for c in algorithm_config_registry.values() if c.associated_class().__name__.lower() == name), None)
        if config_class is None:
            return {}
        config = config_class.get_from_yaml()
        return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    except Exception:  # noqa: BLE001 - unreadable YAML: every differing setting is shown
        return {}


def _normalise(value):
    """Tuples as lists, as YAML reads them, so a dataclass default compares equal to the config's value."""
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    return value


def label_variants(runs: Sequence) -> List[str]:
    """Rename (``run.algorithm``) the runs of an algorithm whose settings differ on a task; returns notes."""
    groups: Dict[Tuple[str, str, str], List[Tuple[object, Optional[dict]]]] = {}
    for run in runs:
        groups.setdefault((run.env, run.task, run.algorithm), []).append((run, None))
    notes: List[str] = []
    for (env, task, algorithm), members in groups.items():
        if len(members) < 2:
            continue
        settings = [(run, algorithm_settings(run)) for run, _ in members]
        known = [s for _, s in settings if s is not None]
        if len({_canonical(s) for s in known}) < 2:
            continue
        keys = sorted({k for s in known for k in s})
        differing = [k for k in keys if len({_canonical(s.get(k, _MISSING)) for s in known}) > 1]
        defaults = {k: _normalise(v) for k, v in algorithm_defaults(algorithm).items()}
        labels = set()
        unlabelled = 0
        for run, values in settings:
            if values is None:
                unlabelled += 1
                continue
            diffs = [k for k in differing
                     if _canonical(_normalise(values.get(k, _MISSING))) != _canonical(defaults.get(k, _MISSING))]
            if diffs:
                run.algorithm = f"{algorithm}[{','.join(f'{k}={_render(values.get(k))}' for k in diffs)}]"
            labels.add(run.algorithm)
        note = (f"{env}/{task}: {algorithm} runs with different algorithm settings are reported apart, named by "
                f"the settings that differ from its defaults: {', '.join(sorted(labels))}")
        if unlabelled:
            note += f" ({unlabelled} run(s) without a hydra config kept the plain name)"
        notes.append(note)
    return notes
