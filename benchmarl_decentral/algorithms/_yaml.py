"""Read our YAML configs (BenchMARL's ``get_from_yaml`` only reads its own folder)."""

from __future__ import annotations

import functools
from typing import Any, Dict, Optional

from benchmarl.utils import _read_yaml_config

from benchmarl_decentral._paths import CONF_DIR


def load_algorithm_yaml(name: str, path: Optional[str] = None) -> Dict[str, Any]:
    """The dict of ``conf/algorithm/<name>.yaml`` (or of ``path``), without ``defaults``."""
    if path is None:
        path = str(CONF_DIR / "algorithm" / f"{name}.yaml")
    return _read_yaml_config(path)


@functools.lru_cache(maxsize=None)
def _defaults(name: str) -> Dict[str, Any]:
    return load_algorithm_yaml(name)


def algorithm_defaults(name: str) -> Dict[str, Any]:
    """The defaults of ``conf/algorithm/<name>.yaml`` (read once; a copy)."""
    return dict(_defaults(name))
