"""Topology of sampled loss landscapes: filtration graphs, loss-valued lower-star
persistence, landscape features and their estimator.

Modules: :mod:`~topoland.topology.graphs` (k-NN graphs, spanning trees, the principal plane),
:mod:`~topoland.topology.persistence` (lower-star persistence with GUDHI),
:mod:`~topoland.topology.summaries` (total persistence, landscape features),
:mod:`~topoland.topology.vectorize` (diagram distances and vectorizations),
:mod:`~topoland.topology.pipeline` (``topology_of_samples``, ``LossTopology``),
:mod:`~topoland.topology.embedding` (cosine distances of snapshots, their sketch, PHATE).
"""
from topoland.topology.embedding import (PhateResult, alpha_decay_affinity, cosine_distances,
                                         cosine_distances_from_gram, cosine_distances_reference,
                                         cosine_sketch, phate_embedding, sketch_cosine_distances)
from topoland.topology.graphs import (GRAPHS, delaunay_edges, euclidean_distances,
                                      filtration_graph, knn_graph, knn_graph_reference,
                                      mst_edges, mst_edges_reference, n_components,
                                      potential_distances, principal_plane, to_networkx,
                                      union_edges)
from topoland.topology.persistence import (COMPLEXES, DEFAULT_COMPLEX, EXTENDED_PARTS,
                                           extended_diagrams, lower_star_persistence,
                                           vertex_values)
from topoland.topology.pipeline import (DISTANCES, GRAPH_ON, PLANES, RESAMPLE, VALUES,
                                        LossTopology, TopologyResult, TopologyWarning,
                                        TrajectorySet, topology_of_samples)
from topoland.topology.summaries import (AUTO_NOISE_MULTIPLE, DEFAULT_ESSENTIAL, ESSENTIAL,
                                         betti_curve, diagram_features, extended_features,
                                         landscape_features, noise_level,
                                         resolve_min_persistence, total_persistence)
from topoland.topology.vectorize import (betti_curve_vector, bottleneck_distance,
                                         persistence_image, persistence_landscape,
                                         wasserstein_distance)

__all__ = [
    "GRAPHS", "COMPLEXES", "DEFAULT_COMPLEX", "EXTENDED_PARTS", "DISTANCES", "GRAPH_ON", "PLANES",
    "RESAMPLE", "VALUES", "AUTO_NOISE_MULTIPLE", "DEFAULT_ESSENTIAL", "ESSENTIAL",
    "LossTopology", "TopologyResult", "TopologyWarning", "TrajectorySet", "topology_of_samples",
    "knn_graph", "knn_graph_reference", "mst_edges", "mst_edges_reference", "filtration_graph",
    "n_components", "union_edges", "euclidean_distances", "potential_distances", "to_networkx",
    "principal_plane", "delaunay_edges", "vertex_values", "lower_star_persistence",
    "extended_diagrams", "total_persistence", "betti_curve", "diagram_features",
    "landscape_features", "extended_features", "noise_level", "resolve_min_persistence",
    "bottleneck_distance", "wasserstein_distance", "persistence_image", "persistence_landscape",
    "betti_curve_vector", "PhateResult", "alpha_decay_affinity", "cosine_distances",
    "cosine_distances_from_gram", "cosine_distances_reference", "cosine_sketch", "phate_embedding",
    "sketch_cosine_distances",
]
