"""``recgoat partition``: a graph artifact -> DGL partitions on any URL, and the per-part loader.

Layout under the partitions URL (DGL's own, plus the id maps and the manifest)::

    <graph_name>.json                DGL's partition config (paths inside are relative)
    part<i>/graph.dgl, node_feat.dgl, edge_feat.dgl
    id_map/<ntype>.npy               int64, new (shuffled, per-type) id -> original contiguous id
    manifest.json                    num_parts, method, dgl_config, parts, edge_cut, graph, ...

DGL writes to a local directory; for a remote URL it is built in a local temporary directory and
uploaded file by file, manifest last. :func:`load_partition` downloads one part (plus the config)
into a local cache keyed by the artifact, so a worker fetches only what it serves.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tempfile
import time
from typing import Any, NamedTuple

import numpy as np

from recgoat_dist.data.dataset import DataError
from recgoat_dist.graph.artifact import GraphArtifact, canonical_url
from recgoat_dist.storage import Artifact, ArtifactWriter

logger = logging.getLogger(__name__)

METHODS = ("metis", "random")
GRAPH_NAME = "recgoat"


class LoadedPartition(NamedTuple):
    """What ``dgl.distributed.load_partition`` returns, plus the local config path."""

    graph: Any            # homogeneous DGLGraph of the part (inner + halo nodes)
    node_feats: dict
    edge_feats: dict
    gpb: Any              # GraphPartitionBook
    graph_name: str
    ntypes: list
    etypes: list
    config_path: str      # local path of DGL's partition config JSON


def _part_stats(config_path: str, num_parts: int) -> tuple[list[dict], dict[str, int]]:
    """Per part: inner/halo node counts per node type, inner edges per type; cut edges per type.

    An edge is cut when its endpoints lie in different parts; DGL stores every edge once, as an
    inner edge of one part, so cut edges are the inner edges touching a halo node.
    """
    import dgl

    with open(config_path) as fh:
        cfg = json.load(fh)
    ntype_names = {i: name for name, i in cfg["ntypes"].items()}
    etype_names = {i: name.split(":")[1] for name, i in cfg["etypes"].items()}
    parts, cut = [], {name: 0 for name in etype_names.values()}
    for p in range(num_parts):
        g = dgl.distributed.load_partition(config_path, p, load_feats=False)[0]
        inner = g.ndata["inner_node"].bool()
        ntype = g.ndata[dgl.NTYPE].long()
        entry = {"part_id": p, "inner": {}, "halo": {}, "inner_edges": {}}
        for i, name in ntype_names.items():
            entry["inner"][name] = int((inner & (ntype == i)).sum())
            entry["halo"][name] = int((~inner & (ntype == i)).sum())
        src, dst = g.edges()
        inner_edge = g.edata["inner_edge"].bool()
        crossing = inner_edge & ~(inner[src] & inner[dst])
        etype = g.edata[dgl.ETYPE].long()
        for i, name in etype_names.items():
            entry["inner_edges"][name] = int((inner_edge & (etype == i)).sum())
            cut[name] += int((crossing & (etype == i)).sum())
        parts.append(entry)
        del g, src, dst, inner_edge, crossing, etype
    return parts, cut


METIS_BYTES_PER_EDGE = 230      # DGL's in-memory partition_graph, measured: 11.35 GB / 49M edges
METIS_BASE_BYTES = 3 * 2 ** 28  # 0.75 GiB: the interpreter, torch and DGL before any graph


def metis_memory_estimate(graph: GraphArtifact) -> int:
    """Bytes DGL's in-memory ``partition_graph`` is expected to peak at for ``graph``.

    ~230 bytes per directed edge of the heterograph (``rated_by`` doubles ``rates``), measured at
    1M items and again at 200k (docs/scale.md: 2.58 GB measured, 2.67 GB estimated), plus the
    node features twice (the heterograph and the part being gathered) and a fixed base.
    """
    from recgoat_dist.data.dataset import Dataset

    edges = sum(graph.num_edges.values()) + graph.num_edges.get("rates", 0)
    ds = Dataset(graph.dataset_url)
    feature_bytes = 4 * (graph.num_items * sum(m["dim"] for m in ds.modalities.values())
                         + graph.num_users * sum(m["dim"] for m in ds.user_modalities.values()))
    return METIS_BASE_BYTES + METIS_BYTES_PER_EDGE * edges + 2 * feature_bytes


def memory_budget(budget_gb: float) -> int:
    """``budget_gb`` in bytes; 0 means 70% of this machine's physical memory."""
    if budget_gb > 0:
        return int(budget_gb * 2 ** 30)
    return int(0.7 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def check_metis_fits(graph: GraphArtifact, budget_gb: float) -> int:
    """Refuse METIS (before it is killed by the OOM killer) when its estimate exceeds the budget."""
    need, budget = metis_memory_estimate(graph), memory_budget(budget_gb)
    if need > budget:
        raise DataError(
            f"{graph.url}: METIS partitioning needs about {need / 2 ** 30:.1f} GiB "
            f"({METIS_BYTES_PER_EDGE} bytes per edge x {sum(graph.num_edges.values()) + graph.num_edges.get('rates', 0)} "
            f"edges, plus features), over the budget of {budget / 2 ** 30:.1f} GiB "
            "(graph.partition_memory_gb); use --method random (streams part by part) or partition "
            "on a larger machine (docs/scale.md)")
    return need


def partition_graph_artifact(graph_url: str, out_url: str, num_parts: int, method: str = "metis", *,
                             graph_name: str = GRAPH_NAME, num_hops: int = 1, seed: int = 0,
                             overwrite: bool = False, tmp_dir: str | None = None,
                             memory_budget_gb: float = 0.0, assignment: np.ndarray | None = None) -> dict:
    """Partition the graph artifact at ``graph_url`` into ``num_parts`` parts; returns the manifest.

    ``method``: ``metis`` (DGL's in-memory ``partition_graph``; vertex weights balance node types
    and in-degrees, i.e. edges including the training edges ``rates``/``rated_by``; refused when
    its estimated memory exceeds ``memory_budget_gb``, 0 = 70% of RAM) or ``random`` (the
    streaming partitioner of :mod:`recgoat_dist.graph.random_partition`, same format, bounded
    memory). DGL renumbers nodes; the mapping is stored as ``id_map/<ntype>.npy`` (new per-type
    id -> original contiguous id). ``assignment`` (``random`` only): a part id per homogeneous
    node id (items then users) instead of the seeded draw.
    """
    if method not in METHODS:
        raise DataError(f"unknown partition method {method!r}; choose from {', '.join(METHODS)}")
    if num_parts < 1:
        raise DataError(f"--parts must be >= 1, got {num_parts}")
    graph = GraphArtifact(graph_url)
    start = time.perf_counter()
    with ArtifactWriter(out_url, kind="partitions", overwrite=overwrite) as out, \
            tempfile.TemporaryDirectory(prefix="recgoat-partition-", dir=tmp_dir) as local:
        if method == "random":
            if num_hops != 1:
                raise DataError(f"the streaming random partitioner writes 1-hop halos, got num_hops={num_hops}")
            meta, id_maps = _stream_random(graph, out, local, num_parts, graph_name, seed, assignment)
            estimate = None
        else:
            estimate = check_metis_fits(graph, memory_budget_gb)
            meta, id_maps = _dgl_in_memory(graph, out, local, num_parts, method, graph_name, num_hops, seed)
        for nt, ids in id_maps.items():
            buf = io.BytesIO()
            np.save(buf, ids)
            out.write_bytes(f"id_map/{nt}.npy", buf.getvalue())
        meta = {
            "graph": canonical_url(graph.url),
            "dataset": graph.dataset_url,
            "graph_name": graph_name,
            "num_parts": int(num_parts),
            "method": method,
            "num_hops": int(num_hops),
            "dgl_config": f"{graph_name}.json",
            **meta,
            "edge_cut": int(sum(meta["edge_cut_by_etype"].values())),
            "id_map": {nt: f"id_map/{nt}.npy" for nt in id_maps},
        }
        if estimate is not None:
            meta["metis_memory_estimate_bytes"] = int(estimate)
        meta["seconds"]["total"] = round(time.perf_counter() - start, 2)
        logger.info("partitioned %s into %d parts (%s): edge cut %d of %d edges in %.1f s", graph.url,
                    num_parts, method, meta["edge_cut"], sum(meta["num_edges"].values()),
                    meta["seconds"]["total"])
        return out.commit(meta)


def _upload_tree(out: ArtifactWriter, local: str, sub: str = "") -> None:
    """Upload every file under ``local/sub`` (relative names kept), then delete them locally."""
    top = os.path.join(local, sub)
    for root, dirs, files in os.walk(top):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = os.path.join(root, name)
            out.put_file(path, os.path.relpath(path, local).replace(os.sep, "/"))
            os.remove(path)


def _stream_random(graph: GraphArtifact, out: ArtifactWriter, local: str, num_parts: int,
                   graph_name: str, seed: int, assignment):
    from recgoat_dist.data.dataset import Dataset
    from recgoat_dist.graph.random_partition import stream_random_partition

    ds = Dataset(graph.dataset_url)
    if (ds.num_users, ds.num_items) != (graph.num_users, graph.num_items):
        raise DataError(f"{graph.url}: built for {graph.num_users} users / {graph.num_items} items "
                        f"but its dataset {ds.url} now has {ds.num_users} / {ds.num_items}")

    def node_features(ntype: str, ids: np.ndarray):
        """Rows ``ids`` (sorted) of every modality of ``ntype``, read block by block."""
        registry = ds.modalities if ntype == "item" else ds.user_modalities
        for name in sorted(registry):
            rows, start = [], 0
            for block in ds.iter_features(ntype, name):
                lo, hi = np.searchsorted(ids, [start, start + len(block)])
                rows.append(block[ids[lo:hi] - start])
                start += len(block)
            yield name, (np.concatenate(rows) if rows else np.zeros((0, registry[name]["dim"]), np.float32))

    result = stream_random_partition(graph, local, num_parts, graph_name, seed, node_features,
                                     upload_part=lambda rel: _upload_tree(out, local, rel), assignment=assignment)
    _upload_tree(out, local)                     # the DGL config, written after the parts
    meta = {"num_nodes": result["num_nodes"], "num_edges": result["num_edges"], "parts": result["parts"],
            "edge_cut_by_etype": result["cut"], "seconds": result["seconds"], "streaming": True}
    return meta, result["id_maps"]


def _dgl_in_memory(graph: GraphArtifact, out: ArtifactWriter, local: str, num_parts: int, method: str,
                   graph_name: str, num_hops: int, seed: int):
    import dgl

    from recgoat_dist.graph.hetero import build_heterograph

    t0 = time.perf_counter()
    g = build_heterograph(graph.url)
    num_nodes = {nt: int(g.num_nodes(nt)) for nt in g.ntypes}
    num_edges = {et: int(g.num_edges(et)) for et in g.etypes}
    if num_parts > 1 and min(num_nodes.values()) < num_parts:
        raise DataError(f"{graph.url}: {num_nodes} nodes cannot fill {num_parts} parts")
    t_build = time.perf_counter() - t0
    dgl.seed(seed)
    log = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(log):      # DGL reports progress with print()
        orig_nids, _ = dgl.distributed.partition_graph(
            g, graph_name, num_parts, local, num_hops=num_hops, part_method=method,
            balance_edges=True, return_mapping=True)
    t_partition = time.perf_counter() - t0
    logger.debug("dgl partition_graph output:\n%s", log.getvalue())
    id_maps = {nt: orig_nids[nt].numpy().astype(np.int64) for nt in g.ntypes}
    del g, orig_nids
    parts, cut = _part_stats(os.path.join(local, f"{graph_name}.json"), num_parts)
    _upload_tree(out, local)
    meta = {"num_nodes": num_nodes, "num_edges": num_edges, "parts": parts, "edge_cut_by_etype": cut,
            "seconds": {"heterograph": round(t_build, 2), "partition": round(t_partition, 2)}}
    return meta, id_maps


def _local_dir(art: Artifact) -> str | None:
    """The artifact's directory when it is on the local filesystem (no copy needed)."""
    protocol = art.fs.protocol if isinstance(art.fs.protocol, tuple) else (art.fs.protocol,)
    return art.root if ("file" in protocol or "local" in protocol) else None


def _cached(art: Artifact, rel: str, cache: str) -> str:
    path = os.path.join(cache, *rel.split("/"))
    info = art.manifest["files"][rel]
    if os.path.exists(path) and os.path.getsize(path) == info["bytes"]:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
        if digest.hexdigest() == info["sha256"]:
            return path
    return art.fetch(rel, path)


def load_partition(url: str, part_id: int, cache_dir: str | None = None) -> LoadedPartition:
    """Open part ``part_id`` of the partitions artifact at ``url`` with DGL.

    A remote artifact's config JSON and ``part<part_id>/`` files are downloaded (checksums
    verified) into ``cache_dir`` (default ``$RECGOAT_CACHE`` or ``~/.cache/recgoat``), under a
    directory keyed by the URL and the config's checksum; a verified cached copy is reused.
    """
    import dgl

    art = Artifact(url, kind="partitions")
    num_parts = art["num_parts"]
    if not isinstance(part_id, int) or not 0 <= part_id < num_parts:
        raise DataError(f"{art.url}: part {part_id!r} does not exist (num_parts = {num_parts})")
    config_rel = art["dgl_config"]
    local = _local_dir(art)
    if local is not None:
        config_path = os.path.join(local, config_rel)
    else:
        root = cache_dir or os.environ.get("RECGOAT_CACHE") or os.path.expanduser("~/.cache/recgoat")
        key = hashlib.sha256(f"{art.url}\n{art.manifest['files'][config_rel]['sha256']}".encode())
        cache = os.path.join(root, "partitions", key.hexdigest()[:16])
        config_path = _cached(art, config_rel, cache)
        for rel in art.files(f"part{part_id}/"):
            _cached(art, rel, cache)
        logger.info("part %d of %s cached in %s", part_id, art.url, cache)
    return LoadedPartition(*dgl.distributed.load_partition(config_path, part_id), config_path=config_path)


def load_id_maps(url: str) -> dict[str, np.ndarray]:
    """``{ntype: new -> original contiguous id}`` of a partitions artifact."""
    art = Artifact(url, kind="partitions")
    return {nt: np.load(io.BytesIO(art.read_bytes(rel))) for nt, rel in art["id_map"].items()}
