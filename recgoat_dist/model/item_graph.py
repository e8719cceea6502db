"""The modality KNN graphs refining the item *ID* embeddings (``model.knn_refines: id | both``).

The paper refines node embeddings with graph attention over the KNN similarity graphs; read as
MMRec's FREEDOM and LATTICE do, the item-item graph built from the content also smooths the ID
embeddings, so two items with similar text get similar ID vectors even when few users link them:

    h^(0)_i   = e^(0)_i                                            (item ID ego embedding)
    h^(l+1)_i = sum_m w_m * mean_{j in N_m(i)} h^(l)_j              (w_m >= 0, sum_m w_m = 1)
    item_i    = lightgcn_i + h^(L)_i                                (what the rest of the model sees)

``N_m(i)``: the in-neighbours of ``i`` in the frozen ``knn_<m>`` graph (no learned weights: the
graph is the content's only contribution here). The mean is FREEDOM's normalisation (its
``D^-1/2 A D^-1/2`` on a top-k graph is ``A / k``); it also needs no node degree, so a block whose
destination keeps ``s`` uniformly sampled in-edges (sampled propagation, fanout ``knn_k``) gives an
unbiased estimate of the full mean, in every engine alike.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import dgl
import dgl.function as fn
import torch
from torch import nn


def mixing_weights(modalities: Sequence[str], weights: Optional[Mapping[str, float]]) -> dict[str, float]:
    """``{modality: w_m}`` normalised to sum 1; uniform when ``weights`` is None. A modality that
    ``weights`` leaves out gets 0 (is not propagated over)."""
    if weights is None:
        return {m: 1.0 / len(modalities) for m in modalities}
    from recgoat_dist.config import ConfigError
    unknown = sorted(set(weights) - set(modalities))
    if unknown:
        raise ConfigError(f"config key model.item_graph_weights: {unknown} have no knn graph among the model's "
                          f"item modalities {list(modalities)}")
    total = float(sum(weights.values()))
    if total <= 0:
        raise ConfigError(f"config key model.item_graph_weights: weights must sum to > 0, got {dict(weights)}")
    return {m: float(weights[m]) / total for m in modalities if weights.get(m, 0) > 0}


class ItemGraph(nn.Module):
    """``layers`` parameter-free propagations of item ID rows over the mixed KNN item graphs."""

    def __init__(self, weights: Mapping[str, float], layers: int = 1):
        super().__init__()
        if layers < 1 or not weights:
            raise ValueError(f"an item graph needs >= 1 layer and >= 1 modality, got {layers}, {dict(weights)}")
        self.weights, self.layers = dict(weights), layers

    def hop(self, block: dgl.DGLGraph, h_src: torch.Tensor) -> torch.Tensor:
        """One mixed-mean step: the block's destination items from (at least) its source item rows.
        Training and layer-wise inference share this step."""
        out = 0
        for m, w in self.weights.items():
            rel = block[f"knn_{m}"]
            with rel.local_scope():
                rel.srcdata["h"] = h_src[:rel.num_src_nodes()]
                rel.update_all(fn.copy_u("h", "m"), fn.mean("m", "out"))
                out = out + w * rel.dstdata["out"]
        return out

    def forward(self, blocks: Sequence[dgl.DGLGraph], ego_items: torch.Tensor) -> torch.Tensor:
        """``h^(L)`` of the last block's output items; ``ego_items``: ego rows of the input items."""
        if len(blocks) < self.layers:
            raise ValueError(f"{self.layers} item-graph layers need as many graphs/blocks, got {len(blocks)}")
        used = blocks[len(blocks) - self.layers:]
        h = ego_items[:used[0].num_src_nodes("item")]
        for block in used:
            h = self.hop(block, h)
        return h[:blocks[-1].num_dst_nodes("item")]
