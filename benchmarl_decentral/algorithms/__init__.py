"""The algorithms this plugin adds to BenchMARL."""

from benchmarl_decentral.algorithms.decpg import (
    Decpg, DecpgConfig, DecpgK0, DecpgK0Config, DecpgShared, DecpgSharedConfig,
)
from benchmarl_decentral.algorithms.dg_mappo import DgMappo, DgMappoConfig, DgMappoPaper, DgMappoPaperConfig
from benchmarl_decentral.algorithms.magpo import Magpo, MagpoConfig, MagpoPaper, MagpoPaperConfig
from benchmarl_decentral.algorithms.matrpo import TABLE_III_ADMM, Matrpo, MatrpoConfig, MatrpoPaper, MatrpoPaperConfig

__all__ = [
    "Decpg", "DecpgConfig", "DecpgK0", "DecpgK0Config", "DecpgShared", "DecpgSharedConfig",
    "DgMappo", "DgMappoConfig", "DgMappoPaper", "DgMappoPaperConfig",
    "Magpo", "MagpoConfig", "MagpoPaper", "MagpoPaperConfig",
    "Matrpo", "MatrpoConfig", "MatrpoPaper", "MatrpoPaperConfig", "TABLE_III_ADMM",
]
