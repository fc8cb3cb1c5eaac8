"""nn of benchmarl-decentral: pure torch / torch_geometric layers (no BenchMARL import)."""

from benchmarl_decentral.nn.dgat_conv import DGAT, VALUE_MODES, DGATConv, consensus_loss

__all__ = ["DGAT", "DGATConv", "VALUE_MODES", "consensus_loss"]
