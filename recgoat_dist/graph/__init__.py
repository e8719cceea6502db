"""Graph construction (``recgoat graph``) and partitioning (``recgoat partition``).

Public API: :class:`GraphArtifact` (read a graph), :func:`build_graph`, :func:`build_heterograph`,
:func:`partition_graph_artifact`, :func:`load_partition`, :func:`load_id_maps`, and the KNN engines
:func:`knn` / :func:`symmetrise`.
"""
from recgoat_dist.graph.artifact import GraphArtifact
from recgoat_dist.graph.build import build_graph
from recgoat_dist.graph.hetero import build_heterograph
from recgoat_dist.graph.knn import Neighbours, knn, symmetrise
from recgoat_dist.graph.partition import LoadedPartition, load_id_maps, load_partition, partition_graph_artifact

__all__ = ["GraphArtifact", "LoadedPartition", "Neighbours", "build_graph", "build_heterograph", "knn",
           "load_id_maps", "load_partition", "partition_graph_artifact", "symmetrise"]
