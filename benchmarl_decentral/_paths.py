"""Where the plugin's YAML lives: a leaf module (imports nothing of the package).

Algorithms, models and environments read their YAML from here at import time
or lazily; :mod:`benchmarl_decentral._registry` re-exports :data:`CONF_DIR`
for compatibility. Keeping it out of ``_registry`` (which imports every
algorithm, model and task) avoids an import circle through the registry.
"""

from __future__ import annotations

import pathlib

__all__ = ["CONF_DIR"]

#: Folder holding our YAML (shipped inside the wheel as ``benchmarl_decentral.conf``).
CONF_DIR = pathlib.Path(__file__).parent / "conf"  # symlink to the top-level conf/ in a checkout
