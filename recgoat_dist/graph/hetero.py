"""One DGL heterograph from a graph artifact plus its dataset's node features.

Node types ``user`` and ``item``; edge types ``rates`` (user -> item), ``rated_by`` (item -> user),
``knn_<modality>`` (item -> item) and ``uu`` (user -> user), each with edge feature ``weight``.
Node features: every item modality on ``item``, every user modality on ``user``, named by the
modality. Shared by the partitioner and the single-process trainer.
"""
from __future__ import annotations

import logging

import numpy as np

from recgoat_dist.graph.artifact import GraphArtifact, edge_ntypes

logger = logging.getLogger(__name__)


def build_heterograph(graph_url: str, *, node_features: bool = True):
    """Assemble the heterograph of the graph artifact at ``graph_url`` (int64 ids, CPU).

    Edge types with no edges are left out (DGL's partitioner cannot split an empty type).
    """
    import dgl
    import torch

    from recgoat_dist.data.dataset import DataError, Dataset

    graph = GraphArtifact(graph_url)
    data, weights = {}, {}
    for etype in graph.edge_types:
        if graph.num_edges[etype] == 0:
            logger.warning("%s: edge type %s has no edges; left out of the heterograph", graph.url, etype)
            continue
        src, dst, w = (torch.from_numpy(np.ascontiguousarray(a)) for a in graph.edges(etype))
        s_type, d_type = edge_ntypes(etype)
        data[(s_type, etype, d_type)] = (src, dst)
        weights[etype] = w
        if etype == "rates":                       # the reverse relation shares the arrays
            data[("item", "rated_by", "user")] = (dst, src)
            weights["rated_by"] = w
    g = dgl.heterograph(data, num_nodes_dict={"user": graph.num_users, "item": graph.num_items},
                        idtype=torch.int64)
    for etype, w in weights.items():
        g.edges[etype].data["weight"] = w
    if node_features:
        ds = Dataset(graph.dataset_url)
        if (ds.num_users, ds.num_items) != (graph.num_users, graph.num_items):
            raise DataError(f"{graph.url}: built for {graph.num_users} users / {graph.num_items} items "
                            f"but its dataset {ds.url} now has {ds.num_users} / {ds.num_items}")
        for name in ds.modalities:
            g.nodes["item"].data[name] = torch.from_numpy(ds.item_features(name))
        for name in ds.user_modalities:
            g.nodes["user"].data[name] = torch.from_numpy(ds.user_features(name))
    return g
