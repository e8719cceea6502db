"""Content streams: frozen LM/content features -> projection -> graph attention on a similarity graph.

Item modalities run on their ``knn_<modality>`` item-item graph, the user LM profile on the ``uu``
user-user graph. Each GAT layer (DGL ``GATConv``, heads concatenated) adds to a residual, because the
KNN graphs carry no self-loops and a node's own content must survive. Like LightGCN, a stream runs
on a list of graphs: its last ``gat_layers`` entries (full graph repeated, or sampled blocks); the
input rows are those of the first used graph's source nodes, a prefix of the mini-batch inputs.

The GAT layers keep DGL's ``GATConv`` parameters (names, shapes, initialisation), but the layer is
computed by :func:`attend`, so that the first layer's source transform can be folded into the
projection's last linear map: ``fc_src(W2 z + b2) = (fc_src W2) z + fc_src b2``. A sampled hop
has ~10 sources per destination, and only the destinations need the projection itself (for the
residual), so the fold removes one of the three ``dim x dim`` products over the sources, and
its two backward products.
"""
from __future__ import annotations

from typing import Sequence

import dgl
import dgl.function as fn
import torch
import torch.nn.functional as F
from dgl.nn import GATConv
from dgl.nn.functional import edge_softmax
from torch import nn


class FeatureStream(nn.Module):
    """Projection of ``in_dim``-d content features to ``dim``, then ``gat_layers`` GAT layers on
    relation ``etype`` (0 layers: projection only, the ``no_gat`` ablation)."""

    def __init__(self, in_dim: int, dim: int, etype: str, ntype: str, gat_layers: int = 1, heads: int = 2,
                 dropout: float = 0.0):
        super().__init__()
        self.etype, self.ntype = etype, ntype
        self.project = nn.Sequential(nn.Linear(in_dim, dim), nn.LeakyReLU(0.2), nn.Linear(dim, dim))
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by gat_heads {heads}")
        self.gats = nn.ModuleList(     # heads of dim/heads features each, concatenated
            GATConv((dim, dim), dim // heads, num_heads=heads, feat_drop=dropout, attn_drop=dropout,
                    allow_zero_in_degree=True) for _ in range(gat_layers))

    def forward(self, blocks: Sequence[dgl.DGLGraph], x: torch.Tensor) -> torch.Tensor:
        """``x``: features of the mini-batch input nodes of ``ntype`` (a tensor, or rows read by
        position: :class:`recgoat_dist.train.steps.InputRows`); returns (n_out, dim)."""
        n_out = blocks[-1].num_dst_nodes(self.ntype)
        if not self.gats:
            return self.project(x[:n_out])
        if len(blocks) < len(self.gats):
            raise ValueError(f"{len(self.gats)} GAT layers need as many graphs/blocks, got {len(blocks)}")
        rels = [block[self.etype] for block in blocks[len(blocks) - len(self.gats):]]
        if rels[0].is_block:
            # A sampled block's sources of this node type also hold the nodes the other streams
            # reached (the users behind a batch item's ratings are most of them); only those
            # with an edge of this stream's graph into an output count.
            rels, inputs = used_relations(rels)
            x = x[inputs]
        x = x[:rels[0].num_src_nodes()]
        first = self.gats[0]
        if first.feat_drop.p > 0 and self.training:
            # Dropout acts on the projection of every source, which the fold never forms.
            h = self.project(x)
            h = self.hop(0, rels[0], h, h[:rels[0].num_dst_nodes()])
        else:
            hidden = self.project[1](self.project[0](x))
            last = self.project[2]
            h_dst = last(hidden[:rels[0].num_dst_nodes()])
            folded = F.linear(hidden, first.fc_src.weight @ last.weight, first.fc_src.weight @ last.bias)
            h = h_dst + attend(first, rels[0], folded, first.fc_dst(h_dst))
        for layer, rel in enumerate(rels[1:], start=1):
            h = self.hop(layer, rel, h, h[:rel.num_dst_nodes()])
        return h[:n_out]

    def hop(self, layer: int, rel: dgl.DGLGraph, h_src: torch.Tensor, h_dst: torch.Tensor) -> torch.Tensor:
        """GAT layer ``layer`` on one relation graph: residual plus concatenated heads. Training
        and layer-wise inference (:mod:`recgoat_dist.model.inference`) share this one step."""
        gat = self.gats[layer]
        return h_dst + attend(gat, rel, gat.fc_src(gat.feat_drop(h_src)), gat.fc_dst(gat.feat_drop(h_dst)))


def attend(gat: GATConv, rel: dgl.DGLGraph, feat_src: torch.Tensor, feat_dst: torch.Tensor) -> torch.Tensor:
    """``gat``'s layer (DGL's ``GATConv.forward``, bipartite input, no residual, no activation) from
    the transformed features ``feat_src = fc_src(h_src)`` and ``feat_dst = fc_dst(h_dst)``; returns
    the heads concatenated, ``(n_dst, heads * out)``. A destination without in-edges gets the bias."""
    heads, out = gat.attn_l.shape[1:]
    feat_src, feat_dst = feat_src.view(-1, heads, out), feat_dst.view(-1, heads, out)
    with rel.local_scope():
        rel.srcdata.update({"ft": feat_src, "el": (feat_src * gat.attn_l).sum(-1, keepdim=True)})
        rel.dstdata["er"] = (feat_dst * gat.attn_r).sum(-1, keepdim=True)
        rel.apply_edges(fn.u_add_v("el", "er", "e"))
        rel.edata["a"] = gat.attn_drop(edge_softmax(rel, gat.leaky_relu(rel.edata.pop("e"))))
        rel.update_all(fn.u_mul_e("ft", "a", "m"), fn.sum("m", "ft"))
        return (rel.dstdata["ft"] + gat.bias.view(1, heads, out)).flatten(1)


def used_relations(rels: Sequence[dgl.DGLGraph]) -> tuple[list, torch.Tensor]:
    """Sub-blocks of a stream's relation blocks (outermost first) that keep only the nodes its
    outputs depend on: every destination of the last block, and hop by hop inwards the sources of
    their in-edges. Returns the sub-blocks and, for the first one's source nodes in order, their
    positions among the first block's sources. Each sub-block lists its destinations first among
    its sources (DGL's block convention, which :meth:`FeatureStream.hop` relies on)."""
    out = []
    need = torch.arange(rels[-1].num_dst_nodes(), device=rels[-1].device)
    for rel in reversed(rels):
        src, dst = rel.in_edges(need)
        pos = torch.full((rel.num_src_nodes(),), -1, dtype=torch.int64, device=need.device)
        pos[need] = torch.arange(len(need), device=need.device)     # destinations lead the sources
        extra = torch.unique(src[pos[src] < 0])
        pos[extra] = torch.arange(len(need), len(need) + len(extra), device=need.device)
        out.append(dgl.create_block((pos[src], pos[dst]), num_src_nodes=len(need) + len(extra),
                                    num_dst_nodes=len(need), idtype=rel.idtype, device=rel.device))
        need = torch.cat([need, extra])      # sources of this block = destinations of the one before
    return out[::-1], need
