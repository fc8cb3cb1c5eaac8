"""benchmarl-decentral: decentralized multi-agent RL algorithms for BenchMARL.

Importing this package registers every algorithm, model and task it adds into
BenchMARL's registries and stores their hydra ConfigStore schemas
(see :mod:`benchmarl_decentral._registry`). Registration is idempotent.
"""

from __future__ import annotations

__version__ = "0.1.0"

from benchmarl_decentral._registry import register

register()

__all__ = ["__version__", "register"]
