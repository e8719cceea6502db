"""A streaming random (hash) partitioner that writes DGL 2.1's partition format part by part.

DGL's in-memory ``partition_graph`` holds the whole graph several times over (about 230 bytes per
edge, measured); at 10M items that is more than this machine has. A random partition needs only
one partition id per node, so the rest is a streaming group-by on partition id:

1. **Assignment.** A uniform part id per homogeneous node id (node types in DGL's order, each
   type's ids contiguous), drawn with numpy from ``seed`` (DGL's own draw is not reproducible
   across processes, see :func:`random_assignment`), or given.
2. **Renumbering** (as DGL's ``reshuffle_graph``, with the same ``torch.sort``): new homogeneous
   ids sorted by ``(part, node type)``, so each part's nodes of one type are one contiguous range
   (``node_map``). Node-sized arrays only (~40 bytes per node).
3. **Edges, pass 1**: count edges per (part of the destination, edge type). An edge belongs to its
   destination's part (DGL's rule); new edge ids are sorted by (part, edge type), so each part's
   edges of one type are one contiguous range (``edge_map``).
4. **Edges, pass 2**: stream every edge-list part once; each edge is appended to an on-disk spill
   of its destination's part (an *inner* edge there) and, when its source lies elsewhere, to the
   source's part as well (an outgoing cut edge: DGL's 1-hop halo holds both in- and out-
   neighbours of a part's nodes).
5. **Per part**: read its spill, number halo nodes after the inner ones, and write
   ``part<i>/graph.dgl`` (the homogeneous part graph with ``_ID``, ``inner_node``, ``part_id``,
   ``_TYPE`` / ``_ID``, ``inner_edge``, ``_TYPE``), ``node_feat.dgl`` (features of inner nodes,
   read from the dataset block by block) and ``edge_feat.dgl`` (``weight`` of inner edges).

Peak memory: node-sized arrays plus one part's edges, each column scattered into place as it is
read (:class:`PartEdges`); more parts means less memory per part. Disk: the spill, ~29 bytes per edge plus cut edges once more.

What differs from DGL's output, on purpose or because DGL leaves it unspecified: halo nodes are
numbered in increasing global id (DGL: in discovery order), and edges of one (part, type) keep
the stored edge-list order (DGL sorts them with an unstable ``std::sort``). Given the same node
assignment, the inner/halo node sets, new node ids, node and edge maps, and the edges and weights
of every part are the same (tests/test_partition_stream.py compares them).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time

import numpy as np
from tqdm.auto import tqdm

from recgoat_dist.data.dataset import DataError
from recgoat_dist.graph.artifact import GraphArtifact, edge_ntypes

logger = logging.getLogger(__name__)

_SPILL = {"src": np.int64, "dst": np.int64, "eid": np.int64, "etype": np.int32, "weight": np.float32,
          "inner": np.uint8}
REVERSE_OF = {"rated_by": "rates"}        # derived edge types, counted by their stored type


def dgl_types(graph: GraphArtifact) -> tuple[list[str], list[tuple[str, str, str]]]:
    """Node types and canonical edge types in the order DGL numbers them for this graph.

    Asked of DGL itself (a one-node graph with the same relations), so the ids cannot drift from
    what ``partition_graph`` would assign. Edge types without edges are left out, as in
    :func:`recgoat_dist.graph.hetero.build_heterograph`.
    """
    import dgl
    import torch

    relations = {}
    for etype in graph.edge_types:
        if graph.num_edges[etype] == 0:
            continue
        s_type, d_type = edge_ntypes(etype)
        relations[(s_type, etype, d_type)] = (torch.zeros(0, dtype=torch.int64),) * 2
        if etype == "rates":
            relations[("item", "rated_by", "user")] = (torch.zeros(0, dtype=torch.int64),) * 2
    tiny = dgl.heterograph(relations, num_nodes_dict={"user": 1, "item": 1}, idtype=torch.int64)
    return list(tiny.ntypes), list(tiny.canonical_etypes)


def random_assignment(num_parts: int, num_nodes: int, seed: int) -> np.ndarray:
    """A uniform part id per homogeneous node id (int16), reproducible from ``seed``.

    Drawn with numpy, not with DGL's ``dgl.random.choice`` (which ``partition_graph`` uses):
    after ``dgl.seed(0)``, ``dgl.random.choice(2, 400000)`` gave different draws in separate
    processes on this machine (1 run in 4), so DGL's own random partition is not reproducible.
    """
    return np.random.default_rng([seed, 14]).integers(0, num_parts, num_nodes, dtype=np.int16)


def _dgl_order(key: np.ndarray) -> np.ndarray:
    """The permutation DGL's ``reshuffle_graph`` takes: ``torch.sort`` of the same int64 key.

    ``torch.sort`` is not stable, so ids inside one (part, type) range follow its order, not the
    original one; calling the same sort on the same key reproduces DGL's ids exactly. (Any order
    inside a range would be a valid partition; this one makes the equivalence test exact.)
    """
    import torch

    return torch.sort(torch.from_numpy(key)).indices.numpy()


class NodeNumbering:
    """Homogeneous ids before and after DGL's renumbering by (part, node type)."""

    def __init__(self, ntypes: list[str], counts: dict[str, int], node_part: np.ndarray, num_parts: int):
        self.ntypes, self.num_parts = ntypes, num_parts
        self.offset = dict(zip(ntypes, np.concatenate([[0], np.cumsum([counts[t] for t in ntypes])[:-1]])))
        ntype = np.repeat(np.arange(len(ntypes), dtype=np.int16), [counts[t] for t in ntypes])
        key = node_part.astype(np.int64) * len(ntypes) + ntype
        del ntype
        # DGL does not renumber a single part: its ids stay in homogeneous (type-major) order.
        self.new_to_old = _dgl_order(key) if num_parts > 1 else np.arange(len(key), dtype=np.int64)
        self.old_to_new = np.empty_like(self.new_to_old)
        self.old_to_new[self.new_to_old] = np.arange(len(key), dtype=np.int64)
        self.part = node_part
        sizes = np.bincount(key, minlength=num_parts * len(ntypes)).reshape(num_parts, len(ntypes))
        self.sizes = sizes                                       # (part, ntype) node counts
        self.starts = np.concatenate([[0], np.cumsum(sizes.ravel())[:-1]]).reshape(sizes.shape)

    def node_map(self) -> dict[str, list[list[int]]]:
        return {t: [[int(self.starts[p, i]), int(self.starts[p, i] + self.sizes[p, i])]
                    for p in range(self.num_parts)] for i, t in enumerate(self.ntypes)}

    def part_range(self, p: int) -> tuple[int, int]:
        return int(self.starts[p, 0]), int(self.starts[p, -1] + self.sizes[p, -1])

    def inner_typed_ids(self, p: int, i: int) -> np.ndarray:
        """Original per-type ids of part ``p``'s inner nodes of type ``i``, in new-id order."""
        lo = self.starts[p, i]
        return self.new_to_old[lo:lo + self.sizes[p, i]] - self.offset[self.ntypes[i]]

    def id_map(self, i: int) -> np.ndarray:
        """New per-type id -> original per-type id (what ``partition_graph`` returns)."""
        return np.concatenate([self.inner_typed_ids(p, i) for p in range(self.num_parts)])


def _typed_edges(graph: GraphArtifact, etypes):
    """Yield ``(etype index, src, dst, weight)`` chunks of every edge type, in DGL's order."""
    for e, (_, name, _) in enumerate(etypes):
        for src, dst, w in graph.iter_edges(name):
            yield e, src, dst, w


def _homogeneous(numbering: NodeNumbering, etype, src, dst):
    s_type, _, d_type = etype
    return src + numbering.offset[s_type], dst + numbering.offset[d_type]


def count_edges(graph: GraphArtifact, numbering: NodeNumbering, etypes) -> np.ndarray:
    """Pass 1: edges per (part of the destination, edge type)."""
    counts = np.zeros((numbering.num_parts, len(etypes)), dtype=np.int64)
    for e, src, dst, _ in _typed_edges(graph, etypes):
        _, hd = _homogeneous(numbering, etypes[e], src, dst)
        counts[:, e] += np.bincount(numbering.part[hd], minlength=numbering.num_parts)
    return counts


def spill_edges(graph: GraphArtifact, numbering: NodeNumbering, etypes, edge_starts: np.ndarray,
                spill_dir: str) -> np.ndarray:
    """Pass 2: append every edge to its parts' spill files; returns cut edges per edge type."""
    num_parts = numbering.num_parts
    handles = {(p, c): open(os.path.join(spill_dir, f"{p}.{c}"), "wb") for p in range(num_parts) for c in _SPILL}
    next_eid = edge_starts.copy()
    cut = np.zeros(len(etypes), dtype=np.int64)
    try:
        total = sum(graph.num_edges[REVERSE_OF.get(t[1], t[1])] for t in etypes)
        with tqdm(total=total, desc="partition: spill edges", unit="edge", unit_scale=True, mininterval=2) as bar:
            for e, src, dst, w in _typed_edges(graph, etypes):
                hs, hd = _homogeneous(numbering, etypes[e], src, dst)
                ps, pd = numbering.part[hs], numbering.part[hd]
                order = np.argsort(pd, kind="stable")          # keeps stored order within a part
                bounds = np.searchsorted(pd[order], np.arange(num_parts + 1))
                eid = np.empty(len(pd), dtype=np.int64)
                for p in range(num_parts):
                    rows = order[bounds[p]:bounds[p + 1]]
                    eid[rows] = next_eid[p, e] + np.arange(len(rows))
                    next_eid[p, e] += len(rows)
                ns, nd = numbering.old_to_new[hs], numbering.old_to_new[hd]
                crossing = ps != pd
                cut[e] += int(crossing.sum())
                for p in range(num_parts):
                    inner = pd == p
                    outer = crossing & (ps == p)
                    for mask, flag in ((inner, 1), (outer, 0)):
                        n = int(mask.sum())
                        if not n:
                            continue
                        cols = {"src": ns[mask], "dst": nd[mask], "eid": eid[mask],
                                "etype": np.full(n, e, np.int32), "weight": w[mask].astype(np.float32),
                                "inner": np.full(n, flag, np.uint8)}
                        for c, values in cols.items():
                            handles[(p, c)].write(np.ascontiguousarray(values, dtype=_SPILL[c]).tobytes())
                bar.update(len(src))
    finally:
        for fh in handles.values():
            fh.close()
    return cut



def _spill_column(spill_dir: str, p: int, column: str) -> np.ndarray:
    path = os.path.join(spill_dir, f"{p}.{column}")
    values = np.fromfile(path, dtype=_SPILL[column])
    os.remove(path)
    return values


class PartEdges:
    """One part's spilled edges, read one column at a time and scattered straight into the part's
    edge order (inner edges by edge id, then outgoing cut edges by edge id), so that the peak is
    the final columns plus one spilled column, not two copies of everything.

    Inner edge ids of part ``p`` are the contiguous range ``[edge_lo, edge_lo + n_inner)``, so an
    inner edge's position is its id minus ``edge_lo``; only the cut edges need sorting.
    """

    def __init__(self, spill_dir: str, p: int, edge_lo: int):
        self.spill_dir, self.p = spill_dir, p
        inner = _spill_column(spill_dir, p, "inner").astype(bool)
        eid = _spill_column(spill_dir, p, "eid")
        self.m, self.n_inner = len(inner), int(inner.sum())
        self.pos = np.empty(self.m, dtype=np.int64)
        self.pos[inner] = eid[inner] - edge_lo
        outer = np.nonzero(~inner)[0]
        self.pos[outer[np.argsort(eid[outer], kind="stable")]] = self.n_inner + np.arange(len(outer))
        self.eid = self._place(eid)
        del eid
        self.inner = np.zeros(self.m, dtype=np.uint8)
        self.inner[:self.n_inner] = 1
        self.inner_rows = inner                  # spill order, for the weights of inner edges

    def _place(self, values: np.ndarray) -> np.ndarray:
        out = np.empty(self.m, dtype=values.dtype)
        out[self.pos] = values
        return out

    def column(self, name: str) -> np.ndarray:
        return self._place(_spill_column(self.spill_dir, self.p, name))

    def inner_weights(self) -> np.ndarray:
        """Weights of the inner edges, in edge-id order."""
        w = _spill_column(self.spill_dir, self.p, "weight")
        out = np.empty(self.n_inner, dtype=np.float32)
        out[self.pos[self.inner_rows]] = w[self.inner_rows]
        return out


def _to_local(x: np.ndarray, lo: int, hi: int, halo: np.ndarray, block: int = 1 << 22) -> np.ndarray:
    """Global new ids -> the part's local ids, in place: inner nodes first, then halo by global id."""
    for s in range(0, len(x), block):
        c = x[s:s + block]
        outside = (c < lo) | (c >= hi)
        c[~outside] -= lo
        c[outside] = (hi - lo) + np.searchsorted(halo, c[outside])
    return x


def _halo(columns, lo: int, hi: int, block: int = 1 << 22) -> np.ndarray:
    found = []
    for x in columns:
        for s in range(0, len(x), block):
            c = x[s:s + block]
            found.append(np.unique(c[(c < lo) | (c >= hi)]))
    return np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)


def write_part(p: int, numbering: NodeNumbering, etypes, edge_starts: np.ndarray, edge_counts: np.ndarray,
               spill_dir: str, part_dir: str, node_features) -> dict:
    """Write ``graph.dgl``, ``node_feat.dgl`` and ``edge_feat.dgl`` of part ``p``; returns its stats.

    ``node_features(ntype, typed_ids)`` yields ``(name, rows)`` for the given sorted original ids.
    """
    import dgl
    import torch
    from dgl.data.utils import save_tensors

    lo, hi = numbering.part_range(p)
    n_inner = hi - lo
    edges = PartEdges(spill_dir, p, int(edge_starts[p, 0]))
    src, dst = edges.column("src"), edges.column("dst")
    halo = _halo((src, dst), lo, hi)
    g = dgl.graph((torch.from_numpy(_to_local(src, lo, hi, halo)), torch.from_numpy(_to_local(dst, lo, hi, halo))),
                  num_nodes=n_inner + len(halo), idtype=torch.int64)
    del src, dst
    global_ids = np.concatenate([np.arange(lo, hi, dtype=np.int64), halo])
    g.ndata[dgl.NID] = torch.from_numpy(global_ids)
    g.ndata["inner_node"] = torch.from_numpy((np.arange(len(global_ids)) < n_inner).astype(np.uint8))
    if numbering.num_parts > 1:               # DGL's single-part output has no part_id either
        g.ndata["part_id"] = torch.from_numpy(numbering.part[numbering.new_to_old[global_ids]].astype(np.int64))
    g.ndata[dgl.NTYPE] = torch.from_numpy(_ntype_of(numbering, global_ids).astype(np.int16))
    g.edata[dgl.EID] = torch.from_numpy(edges.eid)
    g.edata["inner_edge"] = torch.from_numpy(edges.inner)
    g.edata[dgl.ETYPE] = torch.from_numpy(edges.column("etype"))
    os.makedirs(part_dir, exist_ok=True)
    dgl.save_graphs(os.path.join(part_dir, "graph.dgl"), [g])
    del g

    weights = edges.inner_weights()
    del edges
    edge_feats, inner_edges, start = {}, {}, 0
    for e, etype in enumerate(etypes):                  # inner edges of a type: one id range each
        n = int(edge_counts[p, e])
        edge_feats[f"{':'.join(etype)}/weight"] = torch.from_numpy(weights[start:start + n])
        inner_edges[etype[1]] = n
        start += n
    save_tensors(os.path.join(part_dir, "edge_feat.dgl"), edge_feats)
    del edge_feats, weights

    node_feats, inner, halo_counts = {}, {}, {}
    halo_types = _ntype_of(numbering, halo)
    for i, ntype in enumerate(numbering.ntypes):
        ids = numbering.inner_typed_ids(p, i)
        inner[ntype] = int(len(ids))
        halo_counts[ntype] = int((halo_types == i).sum())
        order = np.argsort(ids, kind="stable")          # features are read in id order
        for name, rows in node_features(ntype, ids[order]):
            out = np.empty_like(rows)
            out[order] = rows
            node_feats[f"{ntype}/{name}"] = torch.from_numpy(out)
    save_tensors(os.path.join(part_dir, "node_feat.dgl"), node_feats)
    return {"part_id": p, "inner": inner, "halo": halo_counts, "inner_edges": inner_edges}


def _ntype_of(numbering: NodeNumbering, global_ids: np.ndarray) -> np.ndarray:
    """Node type index of new homogeneous ids (via the (part, ntype) ranges)."""
    starts, sizes = numbering.starts.ravel(), numbering.sizes.ravel()
    nonempty = np.nonzero(sizes)[0]
    slot = nonempty[np.searchsorted(starts[nonempty], global_ids, side="right") - 1]
    return (slot % len(numbering.ntypes)).astype(np.int64)


def stream_random_partition(graph: GraphArtifact, local_dir: str, num_parts: int, graph_name: str,
                            seed: int, node_features, upload_part, assignment: np.ndarray | None = None) -> dict:
    """Partition ``graph`` into ``local_dir`` part by part; ``upload_part(rel_dir)`` is called after
    each part is written (it may upload and delete it). Returns what the manifest needs.

    ``assignment``: a part id per homogeneous node id (node types in DGL's order) instead of the
    seeded random draw, e.g. to reproduce another partitioner's assignment.
    """
    t0 = time.perf_counter()
    ntypes, etypes = dgl_types(graph)
    counts = {"user": graph.num_users, "item": graph.num_items}
    if num_parts > 1 and min(counts.values()) < num_parts:
        raise DataError(f"{graph.url}: {counts} nodes cannot fill {num_parts} parts")
    num_nodes = sum(counts.values())
    if assignment is None:
        node_part = random_assignment(num_parts, num_nodes, seed)
    else:
        node_part = np.asarray(assignment).astype(np.int16)
        if node_part.shape != (num_nodes,) or node_part.min() < 0 or node_part.max() >= num_parts:
            raise DataError(f"assignment must hold one part id in [0, {num_parts}) per node ({num_nodes})")
    numbering = NodeNumbering(ntypes, counts, node_part, num_parts)
    t_assign = time.perf_counter() - t0

    t1 = time.perf_counter()
    edge_counts = count_edges(graph, numbering, etypes)
    edge_starts = np.concatenate([[0], np.cumsum(edge_counts.ravel())[:-1]]).reshape(edge_counts.shape)
    spill_dir = os.path.join(local_dir, ".spill")
    os.makedirs(spill_dir, exist_ok=True)
    cut = spill_edges(graph, numbering, etypes, edge_starts, spill_dir)
    t_spill = time.perf_counter() - t1

    t2 = time.perf_counter()
    parts = []
    for p in tqdm(range(num_parts), desc="partition: write parts", unit="part"):
        parts.append(write_part(p, numbering, etypes, edge_starts, edge_counts, spill_dir,
                                os.path.join(local_dir, f"part{p}"), node_features))
        upload_part(f"part{p}")
    shutil.rmtree(spill_dir, ignore_errors=True)
    t_write = time.perf_counter() - t2

    config = {
        "graph_name": graph_name,
        "num_nodes": int(num_nodes),
        "num_edges": int(edge_counts.sum()),
        "part_method": "random",
        "num_parts": int(num_parts),
        "halo_hops": 1,
        "node_map": numbering.node_map(),
        "edge_map": {":".join(et): [[int(edge_starts[p, e]), int(edge_starts[p, e] + edge_counts[p, e])]
                                    for p in range(num_parts)] for e, et in enumerate(etypes)},
        "ntypes": {t: i for i, t in enumerate(ntypes)},
        "etypes": {":".join(et): e for e, et in enumerate(etypes)},
    }
    for p in range(num_parts):
        config[f"part-{p}"] = {"node_feats": f"part{p}/node_feat.dgl", "edge_feats": f"part{p}/edge_feat.dgl",
                               "part_graph": f"part{p}/graph.dgl"}
    with open(os.path.join(local_dir, f"{graph_name}.json"), "w") as fh:
        json.dump(config, fh, indent=4)
    return {
        "parts": parts,
        "cut": {et[1]: int(cut[e]) for e, et in enumerate(etypes)},
        "id_maps": {t: numbering.id_map(i) for i, t in enumerate(ntypes)},
        "num_nodes": {t: counts[t] for t in ntypes},
        "num_edges": {et[1]: int(edge_counts[:, e].sum()) for e, et in enumerate(etypes)},
        "seconds": {"assign": round(t_assign, 2), "spill": round(t_spill, 2), "write": round(t_write, 2)},
    }
