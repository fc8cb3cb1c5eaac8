"""The algorithms this plugin adds to BenchMARL."""

from benchmarl_decentral.algorithms.decpg import Decpg, DecpgConfig

__all__ = ["Decpg", "DecpgConfig"]
