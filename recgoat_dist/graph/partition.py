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


def partition_graph_artifact(graph_url: str, out_url: str, num_parts: int, method: str = "metis", *,
                             graph_name: str = GRAPH_NAME, num_hops: int = 1, seed: int = 0,
                             overwrite: bool = False, tmp_dir: str | None = None) -> dict:
    """Partition the graph artifact at ``graph_url`` into ``num_parts`` parts; returns the manifest.

    ``method``: ``metis`` (vertex weights balance node types and in-degrees, i.e. edges including
    the training edges ``rates``/``rated_by``) or ``random``. DGL renumbers nodes; the mapping it
    returns is stored as ``id_map/<ntype>.npy`` (new per-type id -> original contiguous id).
    """
    import dgl

    from recgoat_dist.graph.hetero import build_heterograph

    if method not in METHODS:
        raise DataError(f"unknown partition method {method!r}; choose from {', '.join(METHODS)}")
    if num_parts < 1:
        raise DataError(f"--parts must be >= 1, got {num_parts}")
    graph = GraphArtifact(graph_url)
    start = time.perf_counter()
    with ArtifactWriter(out_url, kind="partitions", overwrite=overwrite) as out, \
            tempfile.TemporaryDirectory(prefix="recgoat-partition-", dir=tmp_dir) as local:
        g = build_heterograph(graph_url)
        num_nodes = {nt: int(g.num_nodes(nt)) for nt in g.ntypes}
        num_edges = {et: int(g.num_edges(et)) for et in g.etypes}
        if num_parts > 1 and min(num_nodes.values()) < num_parts:
            raise DataError(f"{graph_url}: {num_nodes} nodes cannot fill {num_parts} parts")
        t_build = time.perf_counter() - start
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
        config_rel = f"{graph_name}.json"
        parts, cut = _part_stats(os.path.join(local, config_rel), num_parts)
        for root, _, files in os.walk(local):
            for name in sorted(files):
                path = os.path.join(root, name)
                out.put_file(path, os.path.relpath(path, local).replace(os.sep, "/"))
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
            "dgl_config": config_rel,
            "num_nodes": num_nodes,
            "num_edges": num_edges,
            "parts": parts,
            "edge_cut": int(sum(cut.values())),
            "edge_cut_by_etype": cut,
            "id_map": {nt: f"id_map/{nt}.npy" for nt in id_maps},
            "seconds": {"heterograph": round(t_build, 2), "partition": round(t_partition, 2),
                        "total": round(time.perf_counter() - start, 2)},
        }
        logger.info("partitioned %s into %d parts (%s): edge cut %d of %d edges", graph.url,
                    num_parts, method, meta["edge_cut"], sum(num_edges.values()))
        return out.commit(meta)


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
