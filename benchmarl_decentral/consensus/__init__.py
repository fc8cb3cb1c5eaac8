"""Topologies, mixing matrices, the DSGD mixing hook and consensus metrics.

Pure torch: no BenchMARL, hydra or torchrl import, so the algorithms
(``dg_mappo``, ``decpg``, ``matrpo``) and the tests share one implementation.
"""

from __future__ import annotations

from benchmarl_decentral.consensus.hook import ConsensusMixer, mix_, mix_delayed_
from benchmarl_decentral.consensus.metrics import (
    consensus_distance,
    gradient_disagreement,
    snapshot,
    update_variance,
)
from benchmarl_decentral.consensus.mixing import (
    BATCH_GRAPH_MODES,
    MIXING_RULES,
    batch_mixing_matrix,
    build_mixing_matrix,
    drop_links,
    is_doubly_stochastic,
    is_row_stochastic,
    metropolis,
    row,
    spectral_gap,
    uniform,
    uniform_knn,
)
from benchmarl_decentral.consensus.topology import (
    TOPOLOGIES,
    adjacency_to_edge_index,
    average_degree,
    build_topology,
    component_labels,
    degrees,
    edge_index_to_adjacency,
    from_adjacency,
    full,
    is_connected,
    is_symmetric,
    knn_ring,
    majority_graph,
    radius,
    ring,
)

__all__ = [
    "TOPOLOGIES",
    "MIXING_RULES",
    "BATCH_GRAPH_MODES",
    "knn_ring",
    "ring",
    "full",
    "radius",
    "from_adjacency",
    "is_connected",
    "component_labels",
    "majority_graph",
    "is_symmetric",
    "degrees",
    "average_degree",
    "adjacency_to_edge_index",
    "edge_index_to_adjacency",
    "build_topology",
    "uniform",
    "uniform_knn",
    "metropolis",
    "row",
    "build_mixing_matrix",
    "batch_mixing_matrix",
    "spectral_gap",
    "is_doubly_stochastic",
    "is_row_stochastic",
    "drop_links",
    "mix_",
    "mix_delayed_",
    "ConsensusMixer",
    "consensus_distance",
    "gradient_disagreement",
    "update_variance",
    "snapshot",
]
