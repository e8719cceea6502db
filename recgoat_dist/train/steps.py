"""The loss of one BPR batch under each propagation mode, shared by both engines.

* ``full``: every stream runs on the whole graph (the heterograph repeated once per layer), and
  the batch indexes the full-graph representations. A step costs a full-graph pass (MMRec's
  LightGCN does the same); right for small graphs, and the protocol check on lfm2k.
* ``sampled``: the batch's users and items (and the OAT landmarks) are the seeds; their
  neighbourhoods are sampled hop by hop (``train.fanouts`` on the user-item graph, ``k`` on the
  KNN graphs); LightGCN layers beyond the sampled hops read the historical layer tables of the
  last layer-wise inference. A step costs O(batch x fanout), whatever the graph's size.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from recgoat_dist.model import DEGREE_KEY, RecGOAT
from recgoat_dist.train.sampling import SeedBatch

NTYPES = ("user", "item")


def attach_degrees(blocks, degree: Callable[[str, torch.Tensor], torch.Tensor]) -> None:
    """LightGCN normalises by each node's *training* degree, which a sampled block cannot see:
    ``degree(ntype, ids)`` gives it (a local tensor, or a ``DistTensor`` on the servers)."""
    import dgl

    for block in blocks:
        for nt in NTYPES:
            block.srcnodes[nt].data[DEGREE_KEY] = degree(nt, block.srcnodes[nt].data[dgl.NID])
            block.dstnodes[nt].data[DEGREE_KEY] = degree(nt, block.dstnodes[nt].data[dgl.NID])


class SampledObjective(torch.nn.Module):
    """Forward *and* loss of a sampled batch in one module, so that DDP (distributed engine) sees
    every dense parameter the loss touches (OAT and fusion weights are used after the forward)."""

    def __init__(self, model: RecGOAT):
        super().__init__()
        self.model = model

    def forward(self, blocks, input_nodes, item_feats, user_feats, history, batch: SeedBatch):
        reps = self.model(blocks, input_nodes, item_feats, user_feats, history)
        device = reps.item_id.device
        landmarks = reps.item_id[batch.landmark_pos.to(device)] if batch.landmark_pos is not None else None
        user_landmarks = (reps.user_id[batch.user_landmark_pos.to(device)]
                          if batch.user_landmark_pos is not None else None)
        out = self.model.loss(reps, batch.user_pos.to(device), batch.pos_pos.to(device), batch.neg_pos.to(device),
                              landmarks=landmarks, user_landmarks=user_landmarks)
        return out.total, out.parts


class InputRows:
    """Content features of a step's input nodes of one type, read when a stream asks for rows by
    position: a content stream reads only the nodes behind its outputs (a sampled block's user
    sources are mostly the raters of the batch's items, which the user stream does not use), so
    the other rows are neither pulled from the servers nor gathered."""

    def __init__(self, read: Callable[[torch.Tensor], torch.Tensor], nodes: torch.Tensor):
        self.read, self.nodes = read, nodes

    def __len__(self) -> int:
        return len(self.nodes)

    def __getitem__(self, positions) -> torch.Tensor:
        return self.read(self.nodes[positions])


def sampled_loss(objective, graph, sampler, batch: SeedBatch, features: Callable, degree: Callable,
                 history: Callable, device: torch.device) -> tuple[torch.Tensor, dict, dict]:
    """Sample ``batch``'s blocks and run ``objective`` (a :class:`SampledObjective`, or DDP around
    one) on them; returns ``(loss, loss parts, {ntype: input nodes})``.

    ``features(input_nodes) -> (item_feats, user_feats)`` of the input nodes (tensors or
    :class:`InputRows`); ``degree(ntype, ids)``
    training degrees; ``history(layer, ntype, ids)`` historical LightGCN layers.
    """
    input_nodes, _, blocks = sampler.sample_blocks(graph, batch.seeds)
    attach_degrees(blocks, degree)
    blocks = [b.to(device) for b in blocks]
    input_nodes = {nt: ids.to(device) for nt, ids in input_nodes.items()}
    item_feats, user_feats = features(input_nodes)
    total, parts = objective(blocks, input_nodes, item_feats, user_feats, history, batch)
    return total, parts, {nt: int(len(ids)) for nt, ids in input_nodes.items()}


def landmark_seeds(model: RecGOAT) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """The landmark items and users a sampled step adds to its seeds (OAT variants only)."""
    # content_entry=input transports onto the landmarks' ego rows, looked up without a block.
    items = (model.landmark_idx if model.oat is not None and not model.content_input and len(model.landmark_idx)
             else None)
    users = model.user_landmark_idx if model.user_oat is not None and len(model.user_landmark_idx) else None
    return items, users
