"""The algorithms this plugin adds to BenchMARL."""

from benchmarl_decentral.algorithms.decpg import Decpg, DecpgConfig
from benchmarl_decentral.algorithms.dg_mappo import DgMappo, DgMappoConfig, DgMappoPaper, DgMappoPaperConfig
from benchmarl_decentral.algorithms.magpo import Magpo, MagpoConfig, MagpoPaper, MagpoPaperConfig
from benchmarl_decentral.algorithms.matrpo import Matrpo, MatrpoConfig

__all__ = [
    "Decpg", "DecpgConfig", "DgMappo", "DgMappoConfig", "DgMappoPaper", "DgMappoPaperConfig",
    "Magpo", "MagpoConfig", "MagpoPaper", "MagpoPaperConfig",
    "Matrpo", "MatrpoConfig",
]
