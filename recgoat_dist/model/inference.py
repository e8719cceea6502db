"""Layer-wise (per-hop) inference: every node's representation in every stream, with *all* its
neighbours, one hop at a time (DGL's ``SAGE.inference`` pattern).

Hop ``k`` of a batch of nodes is computed from hop ``k-1`` of their in-neighbours with the model's
own steps (:meth:`LightGCN.hop`, :meth:`FeatureStream.project`, :meth:`FeatureStream.hop`), so a
change to a layer cannot make training and inference disagree. The results go to one table per
hop and stream (:class:`LayerTables`). The same code serves

* the single-process engine: a DGL graph, plain tensors, all nodes computed here;
* the distributed engine: a ``DistGraph``, ``DistTensor`` tables on the graph servers, each worker
  computing its own partition's nodes, with a barrier between hops;

through four small callables (``neighbours``, ``ego``, ``features``, ``sync``). The tables are also
the *history* of sampled propagation: LightGCN layers beyond the sampled hops read them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import torch

NTYPES = ("user", "item")
USER_STREAM = "__user"          # stream key of the user LM stream (item streams use the modality)
ITEM_GRAPH = "__item_graph"     # key of the item-graph layers 1..L over the ID embeddings (layer 0: id[0])


def content_streams(model) -> dict:
    """``{key: FeatureStream}``: item modalities by name, the user LM stream as ``USER_STREAM``."""
    out = dict(model.item_streams.items())
    if model.user_stream is not None:
        out[USER_STREAM] = model.user_stream
    return out


@dataclass
class LayerTables:
    """Per-hop representation tables: anything indexable as ``t[ids]`` / ``t[ids] = rows``."""

    id: list          # id[k][ntype]: LightGCN layer k, k = 0..n_layers
    streams: dict     # key -> [projection, GAT layer 1, ...] (rows of the stream's node type);
                      # ITEM_GRAPH -> [item-graph layer 1, ..., L] (item rows), when the model has one

    @classmethod
    def allocate(cls, model, make: Callable[[str, str], Any]) -> "LayerTables":
        """``make(name, ntype)`` creates one (num_nodes(ntype), dim) table."""
        streams = {key: [make(f"{key}{k}", s.ntype) for k in range(len(s.gats) + 1)]
                   for key, s in content_streams(model).items()}
        if model.item_graph is not None:
            streams[ITEM_GRAPH] = [make(f"{ITEM_GRAPH}{k}", "item") for k in range(1, model.item_graph.layers + 1)]
        return cls(id=[{nt: make(f"id{k}_{nt}", nt) for nt in NTYPES} for k in range(model.id.n_layers + 1)],
                   streams=streams)

    def history(self, layer: int, ntype: str, ids: torch.Tensor) -> torch.Tensor:
        """LightGCN layer ``layer`` of nodes ``ids``: what sampled propagation reads."""
        table = self.id[layer][ntype]
        # index_select gathers rows ~2x faster than indexing; a DistTensor pulls on indexing
        return table.index_select(0, ids) if isinstance(table, torch.Tensor) else table[ids]


def _batches(nodes: torch.Tensor, size: int):
    for i in range(0, len(nodes), size):
        yield nodes[i:i + size]


@torch.no_grad()
def layerwise_inference(model, tables: LayerTables, nodes: Mapping[str, torch.Tensor],
                        neighbours: Callable, ego: Callable, features: Callable,
                        sync: Optional[Callable[[], None]] = None, batch_size: int = 4096) -> None:
    """Fill every hop of every stream of ``model`` for ``nodes`` (``{ntype: ids}``).

    ``neighbours(ntype, ids)``: a block whose destination nodes are ``ids`` with all their in-edges
    (``srcdata[dgl.NID]`` = node ids, training degrees attached as ``"deg"``).
    ``ego(ntype, ids)``: layer-0 ID rows. ``features(ntype, key, ids)``: a stream's standardised
    content features. ``sync()``: a barrier between hops, when other processes fill other nodes.
    """
    sync = sync or (lambda: None)
    was_training = model.training
    model.eval()
    streams = content_streams(model)
    batches = lambda ids: _batches(ids, batch_size)    # noqa: E731
    for nt in NTYPES:
        if nt == "item" and model.content_input:
            continue                   # layer 0 of items waits for their content (below)
        for b in batches(nodes[nt]):
            tables.id[0][nt][b] = ego(nt, b)
    for key, s in streams.items():
        for b in batches(nodes[s.ntype]):
            tables.streams[key][0][b] = s.project(features(s.ntype, key, b))
    id_depth = max(model.id.n_layers, model.item_graph.layers if model.item_graph is not None else 0)
    stream_depth = max([model.knn_hops] + [len(s.gats) for s in streams.values()])
    if model.content_input:
        # content_entry=input: the streams' hops, then z^(0) = e^(0) + content, then the ID hops
        from recgoat_dist.model.content_entry import fill_layer_zero
        _hops(model, tables, nodes, neighbours, sync, batches, stream_depth, ids=False, streams=streams)
        sync()
        fill_layer_zero(model, tables, nodes["item"], ego, batches)
        _hops(model, tables, nodes, neighbours, sync, batches, id_depth, ids=True, streams={})
    else:                              # one pass: each hop's block serves every stream
        _hops(model, tables, nodes, neighbours, sync, batches, max(id_depth, stream_depth), ids=True,
              streams=streams)
    sync()
    model.train(was_training)


def _hops(model, tables: LayerTables, nodes, neighbours, sync, batches, depth: int, ids: bool, streams: dict
          ) -> None:
    """Hops ``1..depth`` of the ID stream and item graph (``ids``) and of ``streams``, each from the
    previous hop's tables of the nodes' in-neighbours."""
    import dgl

    item_graph = model.item_graph if ids else None
    for k in range(1, depth + 1):
        sync()
        for nt in NTYPES:
            if not ids and not any(s.ntype == nt and k <= len(s.gats) for s in streams.values()):
                continue               # a streams-only hop with nothing to do for this node type
            for b in batches(nodes[nt]):
                block = neighbours(nt, b)
                src = {s: block.srcnodes[s].data[dgl.NID] for s in NTYPES}
                if ids and k <= model.id.n_layers:
                    h = model.id.hop(block, {s: tables.id[k - 1][s][src[s]] for s in NTYPES})
                    tables.id[k][nt][b] = h[nt]
                for key, s in streams.items():
                    if s.ntype == nt and k <= len(s.gats):
                        h_src = tables.streams[key][k - 1][src[nt]]
                        tables.streams[key][k][b] = s.hop(k - 1, block[s.etype], h_src, h_src[:len(b)])
                if nt == "item" and item_graph is not None and k <= item_graph.layers:
                    previous = tables.id[0]["item"] if k == 1 else tables.streams[ITEM_GRAPH][k - 2]
                    tables.streams[ITEM_GRAPH][k - 1][b] = item_graph.hop(block, previous[src["item"]])


@torch.no_grad()
def full_representations(tables: LayerTables, pull: Callable, with_streams: bool = True):
    """Every node's full-graph :class:`Representations` from the tables.

    ``pull(table_fn, ntype)``: all rows of ``ntype`` from ``table_fn(ids)`` (identity locally,
    block-wise pulls from the servers when distributed)."""
    from recgoat_dist.model.recgoat import Representations

    def mean_id(nt):
        return lambda ids: sum(layer[nt][ids] for layer in tables.id) / len(tables.id)

    def item_rows(ids):
        rows = mean_id("item")(ids)
        if ITEM_GRAPH in tables.streams:       # the ID representation includes the item graph's h^(L)
            rows = rows + tables.streams[ITEM_GRAPH][-1][ids]
        return rows

    user_id, item_id = pull(mean_id("user"), "user"), pull(item_rows, "item")
    reps = Representations(user_id, item_id, user_id, item_id)
    if with_streams:
        for key, hops in tables.streams.items():
            if key == ITEM_GRAPH:
                continue
            rows = pull(lambda ids, t=hops[-1]: t[ids], "user" if key == USER_STREAM else "item")
            if key == USER_STREAM:
                reps.user_lm = rows
            else:
                reps.item_modal[key] = rows
    return reps
