"""``recgoat graph``: a canonical dataset -> a graph artifact (edge lists + manifest).

* ``rates``: user -> item from the *training* split only (validation and test interactions never
  enter a graph), weight = rating; streamed chunk by chunk.
* ``knn_<modality>``: per item modality, top-K cosine neighbours (:func:`knn.knn`), symmetrised.
* ``uu``: the same on the user LM modality (``text``, or the only one) when the dataset has one.
"""
from __future__ import annotations

import logging
import re

import numpy as np
import pyarrow as pa

from recgoat_dist.data.dataset import DataError, Dataset
from recgoat_dist.graph.artifact import canonical_url
from recgoat_dist.graph.knn import ENGINES, knn, symmetrise
from recgoat_dist.storage import ArtifactWriter

logger = logging.getLogger(__name__)

EDGE_SCHEMA = pa.schema([("src", pa.int64()), ("dst", pa.int64()), ("weight", pa.float32())])
PART_ROWS = 4_000_000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def write_edges(out: ArtifactWriter, etype: str, src: np.ndarray, dst: np.ndarray,
                 weight: np.ndarray, first_part: int = 0) -> int:
    """Write one edge list as Parquet parts of at most PART_ROWS rows; returns parts written."""
    parts = 0
    for start in range(0, len(src), PART_ROWS):
        stop = start + PART_ROWS
        table = pa.table([pa.array(src[start:stop]), pa.array(dst[start:stop]),
                          pa.array(weight[start:stop].astype(np.float32, copy=False))], schema=EDGE_SCHEMA)
        out.write_table(f"edges/{etype}/part-{first_part + parts:05d}.parquet", table)
        parts += 1
    return parts


def _write_rates(out: ArtifactWriter, ds: Dataset) -> int:
    count = parts = 0
    for chunk in ds.iter_interactions(["train"], ["user_id", "item_id", "rating"]):
        if chunk.num_rows == 0:
            continue
        if chunk["rating"].null_count:
            raise DataError(f"{ds.url}: training interactions have {chunk['rating'].null_count} "
                            "empty ratings; the rates edge weight needs one per interaction")
        parts += write_edges(out, "rates", chunk["user_id"].to_numpy(), chunk["item_id"].to_numpy(),
                              chunk["rating"].to_numpy(), first_part=parts)
        count += chunk.num_rows
    return count


def _pick_user_modality(ds: Dataset, requested: str | None) -> str | None:
    names = sorted(ds.user_modalities)
    if requested is not None:
        if requested not in ds.user_modalities:
            raise DataError(f"{ds.url}: unknown user modality {requested!r}; available: {names or 'none'}")
        return requested
    if not names:
        return None
    if "text" in names:
        return "text"
    if len(names) == 1:
        return names[0]
    raise DataError(f"{ds.url}: several user modalities {names} and none named 'text'; "
                    "choose one with --user-modality")


def _knn_edges(out: ArtifactWriter, etype: str, features: np.ndarray, k: int, knn_args: dict):
    nb = knn(features, k, **knn_args)
    src, dst, weight = symmetrise(nb.indices, nb.scores)
    write_edges(out, etype, src, dst, weight)
    degree = np.bincount(src, minlength=len(features))
    details = {**nb.info, "engine": nb.engine, "min_degree": int(degree.min()) if len(degree) else 0,
               "max_degree": int(degree.max()) if len(degree) else 0}
    return len(src), nb.engine, details


def _knn_edges_streamed(out: ArtifactWriter, etype: str, ds: Dataset, kind: str, name: str, k: int,
                        stream_args: dict):
    """The FAISS engine on features read block by block, edges written part by part as found."""
    from recgoat_dist.graph.knn_stream import stream_knn

    registry = ds.modalities if kind == "item" else ds.user_modalities
    n = ds.num_items if kind == "item" else ds.num_users
    parts = [0]

    def write(src, dst, weight):
        parts[0] += write_edges(out, etype, src, dst, weight, first_part=parts[0])

    info = stream_knn(lambda: ds.iter_features(kind, name), n, registry[name]["dim"], k, write, **stream_args)
    return info["edges"], "faiss", {**info, "engine": "faiss"}


def _resolve_engine(engine: str, rows: int, approx_above: int) -> str:
    return ("faiss" if rows > approx_above else "exact") if engine == "auto" else engine


def build_graph(data_url: str, out_url: str, knn_k: int = 10, user_knn_k: int = 10, *,
                modalities: list[str] | None = None, user_modality: str | None = None,
                engine: str = "auto", approx_above: int = 200_000, target_recall: float = 0.95,
                seed: int = 0, overwrite: bool = False, index_memory_gb: float = 0.0,
                recall_sample: int = 2000) -> dict:
    """Build the graph artifact of the dataset at ``data_url`` under ``out_url``; returns the manifest.

    ``modalities``: item modalities to build ``knn_<m>`` for (default: all). ``user_knn_k=0`` skips
    the user-user graph. ``engine``: ``auto`` (exact up to ``approx_above`` rows, FAISS IVF
    above), ``exact`` or ``faiss``. The FAISS engine streams (:mod:`recgoat_dist.graph.knn_stream`):
    features are read block by block and edges written as found; its recall@k against the exact
    engine on ``recall_sample`` rows is recorded per edge type. ``index_memory_gb`` > 0 switches
    the index to PQ codes when full vectors would not fit in it.
    """
    if engine not in ENGINES:
        raise DataError(f"unknown knn engine {engine!r}; choose from {', '.join(ENGINES)}")
    if knn_k < 1:
        raise DataError(f"--knn-k must be >= 1, got {knn_k}")
    if user_knn_k < 0:
        raise DataError(f"--user-knn-k must be >= 0, got {user_knn_k}")
    ds = Dataset(data_url)
    if modalities is None:
        modalities = sorted(ds.modalities)
    for name in modalities:
        if name not in ds.modalities:
            raise DataError(f"{ds.url}: unknown item modality {name!r}; "
                            f"available: {sorted(ds.modalities) or 'none'}")
        if not _NAME.match(name):
            raise DataError(f"{ds.url}: item modality name {name!r} cannot name an edge type")
    user_mod = _pick_user_modality(ds, user_modality) if user_knn_k > 0 else None
    knn_args = dict(engine=engine, approx_above=approx_above, target_recall=target_recall, seed=seed)
    stream_args = dict(target_recall=target_recall, seed=seed, index_memory_gb=index_memory_gb,
                       recall_sample=recall_sample)

    def knn_edges(out, etype, kind, name, k):
        rows = ds.num_items if kind == "item" else ds.num_users
        chosen = _resolve_engine(engine, rows, approx_above)
        logger.info("%s: %d rows, engine %s (%s)", etype, rows, chosen,
                    f"auto, approx_above={approx_above}" if engine == "auto" else "requested")
        if chosen == "faiss":
            return _knn_edges_streamed(out, etype, ds, kind, name, k, stream_args)
        feats = ds.item_features(name) if kind == "item" else ds.user_features(name)
        return _knn_edges(out, etype, feats, k, {**knn_args, "engine": "exact"})

    num_edges: dict[str, int] = {}
    engines: dict[str, str] = {}
    details: dict[str, dict] = {}
    with ArtifactWriter(out_url, kind="graph", overwrite=overwrite) as out:
        num_edges["rates"] = _write_rates(out, ds)
        logger.info("rates: %d training interactions", num_edges["rates"])
        for name in modalities:
            etype = f"knn_{name}"
            num_edges[etype], engines[etype], details[etype] = knn_edges(out, etype, "item", name, knn_k)
            details[etype]["modality"] = name
            logger.info("%s: %d edges (%s)", etype, num_edges[etype], engines[etype])
        if user_mod is not None:
            num_edges["uu"], engines["uu"], details["uu"] = knn_edges(out, "uu", "user", user_mod, user_knn_k)
            details["uu"]["modality"] = user_mod
            logger.info("uu: %d edges on user modality %r (%s)", num_edges["uu"], user_mod, engines["uu"])
        meta = {
            "dataset": canonical_url(ds.url),
            "num_users": ds.num_users,
            "num_items": ds.num_items,
            "num_edges": num_edges,
            "knn_k": int(knn_k),
            "user_knn_k": int(user_knn_k) if user_mod is not None else 0,
            "engine": engines,
            "item_modalities": list(modalities),
            "user_modality": user_mod,
            "knn": details,
        }
        recall = {et: d["recall_vs_exact"] for et, d in details.items() if "recall_vs_exact" in d}
        if recall:
            meta["recall_vs_exact"] = recall
        return out.commit(meta)
