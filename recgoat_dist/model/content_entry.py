"""Content at the ID stream's input layer (``model.content_entry: input``).

With ``output`` (the paper's fusion) an item's transported content is added to LightGCN's output:

    e_i = lightgcn_i(e^(0)) [+ h_i] + c_i,        c_i = sum_m gamma_m T_m(gat_m(proj_m(x_i^m)))

With ``input`` it joins the item's layer-0 row instead, so propagation over the user-item graph
carries it to the item's users and, through them, to other items (as FREEDOM's item graph shapes
what LightGCN propagates), and the item graph (``knn_refines: id | both``) smooths it too:

    z^(0)_i = e^(0)_i + c_i,     e_i = lightgcn_i(z^(0)) [+ h_i(z^(0))],     users: lightgcn_u(z^(0))

**Landmarks.** With ``output`` the OAT targets are landmark items' *propagated* ID
representations. With ``input`` those depend on ``c`` (it is inside them), and ``c`` is transported
onto them: a cycle. So the targets are the landmark items' *ego* rows ``e^(0)_j``: the same ID
space (LightGCN's output is a mean of propagations of these rows), defined before any content, and
a plain parameter lookup in every engine and step (no extra seeds or history needed). Landmark
items are chosen (k-means++) on the ego rows too, so the vectors chosen are the vectors used.
The previous refresh's propagated tables would also break the cycle, but would make a step's
targets stale and detached, and differ between a full forward and a sampled one.

**Hops.** The content must exist at every input node of the ID stream, so the item streams' GAT
runs on ``content_hops`` graphs/blocks *before* the ID stream's: ``blocks[:content_hops]`` refine
the content (KNN edges only are used there), ``blocks[content_hops:]`` propagate the IDs (sampled
steps draw that many extra KNN hops, :func:`recgoat_dist.train.sampling.step_sampler`).
Layer-wise inference fills the streams' tables first, then ``z^(0)``, then the ID layers
(:func:`recgoat_dist.model.inference.layerwise_inference`).

Cold items (no training interaction): their ``z^(0)`` carries random ``e^(0)``; like ``output``
the ranked vector is their transported content ``c_i`` instead (:meth:`RecGOAT.final_embeddings`).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import dgl
import torch


def stream_rows(stream, blocks: Sequence[dgl.DGLGraph], x: torch.Tensor, n_rows: int) -> torch.Tensor:
    """A content stream's representation of the first ``n_rows`` input items: its GAT on
    ``blocks`` (as many as its layers; their last destinations are those rows), or the projection."""
    if not stream.gats:
        return stream.project(x[:n_rows])
    return stream(blocks, x)


def layer_zero(model, ego_items: torch.Tensor, modal: Mapping[str, torch.Tensor]
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(e^(0) + c, OAT loss)`` for distinct item rows; ``modal[m]``: their content representations.
    Without OAT (``no_oat``) ``c`` is the learned-weight blend, and the loss is 0."""
    if model.oat is None:
        return ego_items + sum(model.gamma[m] * modal[m] for m in model.modalities), ego_items.new_zeros(())
    return model._transport(model.oat, dict(modal), ego_items, model.ego_landmarks())


def input_forward(model, blocks: Sequence[dgl.DGLGraph], input_nodes: Mapping[str, torch.Tensor],
                  item_feats: Mapping[str, torch.Tensor], user_feats, history):
    """:meth:`RecGOAT.forward` with ``content_entry=input`` (same arguments and result)."""
    from recgoat_dist.model.recgoat import Representations

    hops = model.content_hops
    content_blocks, id_blocks = blocks[:hops], blocks[hops:]
    if not id_blocks:
        raise ValueError(f"content_entry=input needs {hops} content graphs/blocks and >= 1 for the ID stream, "
                         f"got {len(blocks)}")
    ego_inputs = model.id.ego(input_nodes)
    n_in = id_blocks[0].num_src_nodes("item")
    modal = {m: stream_rows(s, content_blocks, item_feats[m], n_in) for m, s in model.item_streams.items()}
    z0, oat_loss = layer_zero(model, ego_inputs["item"][:n_in], modal)
    final, _ = model.id(id_blocks, input_nodes, history, {"user": ego_inputs["user"], "item": z0})
    if model.item_graph is not None:
        final["item"] = final["item"] + model.item_graph(id_blocks, z0)
    n_out = {nt: blocks[-1].num_dst_nodes(nt) for nt in ("user", "item")}
    # The L2 term regularises the parameters: the raw ego rows, not z^(0).
    reps = Representations(final["user"], final["item"], ego_inputs["user"][:n_out["user"]],
                           ego_inputs["item"][:n_out["item"]],
                           item_modal={m: x[:n_out["item"]] for m, x in modal.items()})
    if model.user_stream is not None:
        reps.user_lm = model.user_stream(blocks, user_feats)
    reps.content_oat = oat_loss
    return reps


@torch.no_grad()
def fill_layer_zero(model, tables, items: torch.Tensor, ego, batches) -> None:
    """Layer-wise inference's ``z^(0)`` table (``tables.id[0]["item"]``) for ``items``, from the
    streams' last tables (already filled) and the stored landmark potentials."""
    keys = model.modalities
    if model.oat is not None and len(model.landmark_idx) == 0:
        model.ego_landmarks()          # chooses them (first use)
    if model.oat is not None and not bool(model.oat.potentials_ready.all()):   # never trained: solve once
        model.oat.fit_potentials({m: tables.streams[m][-1][items] for m in keys}, ego("item", model.landmark_idx))
    landmarks = ego("item", model.landmark_idx) if model.oat is not None else None
    for b in batches(items):
        e0 = ego("item", b)
        modal = {m: tables.streams[m][-1][b] for m in keys}
        if model.oat is None:
            tables.id[0]["item"][b] = e0 + sum(model.gamma[m] * modal[m] for m in keys)
        else:
            gamma = model.oat.gamma()
            tables.id[0]["item"][b] = e0 + sum(gamma[m] * model.oat.transport(m, modal[m], landmarks) for m in keys)
