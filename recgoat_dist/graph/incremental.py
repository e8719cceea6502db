"""The nightly graph: KNN rows updated for what a delta adds, checked against a full rebuild.

A graph artifact in the layout of :func:`recgoat_dist.graph.build_graph` (``edges/<etype>/``,
same manifest keys), plus ``knn_rows/<etype>.parquet``: the *directed* top-K lists (neighbours
and cosines, best first) the stored edges were symmetrised from, so the next night can update them.

Incremental update of one KNN relation when rows ``num_old ..`` are new (ids are stable, so old
rows keep their positions):

* a new row gets its exact top-K among all rows (the exact engine's search, then its float64
  rescoring, exactly as :func:`recgoat_dist.graph.knn.knn` does);
* an old row changes only if some new row scores at least its current K-th cosine; for those
  rows the old list plus the best new candidates are rescored in float64 and the K best kept;
* every other row keeps its list.

The true top-K of an old row lies inside (its old top-K) ∪ (new rows), and both paths end with the
same float64 rescoring and tie rule (-cosine, index), so the lists equal a full rebuild's on the
exact engine (``tests/test_nightly_graph.py``). A changed feature row of a known node, a smaller
K than requested last time, or a FAISS-sized catalogue falls back to a full rebuild of that relation.
"""
from __future__ import annotations

import logging
import time
from typing import Optional

import numpy as np
import pyarrow as pa

from recgoat_dist.data.dataset import DataError, Dataset
from recgoat_dist.graph.artifact import canonical_url
from recgoat_dist.graph.build import write_edges
from recgoat_dist.graph.knn import MARGIN, effective_k, exact_topk, knn, normalise, rescore, row_norms, symmetrise
from recgoat_dist.storage import Artifact, ArtifactWriter

logger = logging.getLogger(__name__)
TOLERANCE = 1e-5   # float32 screening of old rows: anything this close to the K-th cosine is rescored


def full_rows(features: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Directed exact top-``k`` lists of every row (:func:`knn` with the exact engine)."""
    nb = knn(features, k, engine="exact")
    return nb.indices, nb.scores


def incremental_rows(features: np.ndarray, k: int, old_indices: np.ndarray,
                     block: int = 4096) -> tuple[np.ndarray, np.ndarray, dict]:
    """Top-``k`` lists of every row given the lists of the first ``len(old_indices)`` rows."""
    feats = np.asarray(features)
    n, num_old = len(feats), len(old_indices)
    k_eff = effective_k(k, n)
    norms = row_norms(feats)
    x = normalise(feats, norms)
    new = np.arange(num_old, n, dtype=np.int64)
    indices = np.empty((n, k_eff), np.int64)
    scores = np.empty((n, k_eff), np.float32)
    # Old lists, rescored in float64 so they compare with new candidates on one scale.
    old = np.arange(num_old, dtype=np.int64)
    indices[:num_old], scores[:num_old] = rescore(feats, norms, old, old_indices, k_eff)
    if len(new):
        cand, _ = exact_topk(x, min(n - 1, k_eff + MARGIN), new)
        indices[num_old:], scores[num_old:] = rescore(feats, norms, new, cand, k_eff)
    touched = []
    width = min(len(new), k_eff + MARGIN)
    for s in range(0, num_old if len(new) else 0, block):
        rows = old[s:s + block]
        sims = x[rows] @ x[new].T                       # (rows, new) float32 screening
        entered = sims.max(axis=1) >= scores[rows, -1] - TOLERANCE
        if not entered.any():
            continue
        rows, sims = rows[entered], sims[entered]
        best_new = new[np.argsort(-sims, axis=1, kind="stable")[:, :width]]
        candidates = np.concatenate([indices[rows], best_new], axis=1)
        indices[rows], scores[rows] = rescore(feats, norms, rows, candidates, k_eff)
        touched.append(rows)
    changed = int(sum(len(t) for t in touched))
    return indices, scores, {"mode": "incremental", "new_rows": int(len(new)), "old_rows_updated": changed, "k": k_eff}


def _write_rows(out: ArtifactWriter, etype: str, indices: np.ndarray, scores: np.ndarray) -> None:
    k = indices.shape[1]
    out.write_table(f"knn_rows/{etype}.parquet", pa.table({
        "neighbours": pa.FixedSizeListArray.from_arrays(pa.array(indices.ravel(), pa.int64()), k),
        "cosines": pa.FixedSizeListArray.from_arrays(pa.array(scores.ravel(), pa.float32()), k)}))


def read_rows(graph: Artifact, etype: str) -> Optional[np.ndarray]:
    rel = f"knn_rows/{etype}.parquet"
    if rel not in graph.manifest["files"]:
        return None
    column = graph.read_table(rel, columns=["neighbours"])["neighbours"].combine_chunks()
    k = column.type.list_size
    return column.values.to_numpy().reshape(-1, k)


def _user_modality(ds: Dataset) -> Optional[str]:
    names = sorted(ds.user_modalities)
    return "text" if "text" in names else (names[0] if len(names) == 1 else None)


def build_nightly_graph(data_url: str, out_url: str, knn_k: int = 10, user_knn_k: int = 10, *,
                        previous: Optional[str] = None, changed: Optional[dict] = None,
                        approx_above: int = 200_000, overwrite: bool = True) -> dict:
    """Write the graph of ``data_url``; with ``previous`` (the parent version's nightly graph) the
    KNN rows are updated incrementally, otherwise (or when not possible) fully rebuilt."""
    ds = Dataset(data_url)
    prev = Artifact(previous, kind="graph") if previous else None
    changed = changed or {}
    relations = [(f"knn_{m}", "item", m, knn_k) for m in sorted(ds.modalities)]
    user_mod = _user_modality(ds) if user_knn_k > 0 else None
    if user_mod:
        relations.append(("uu", "user", user_mod, user_knn_k))
    num_edges, engines, details = {}, {}, {}
    with ArtifactWriter(out_url, kind="graph", overwrite=overwrite) as out:
        train = ds.interactions("train")
        if np.isnan(train["rating"]).any():
            raise DataError(f"{ds.url}: training interactions have NaN ratings")
        write_edges(out, "rates", train["user_id"], train["item_id"], train["rating"])
        num_edges["rates"] = int(len(train["user_id"]))
        for etype, kind, name, k in relations:
            start = time.perf_counter()
            x = ds.item_features(name) if kind == "item" else ds.user_features(name)
            old = read_rows(prev, etype) if prev is not None else None
            reason = None
            if old is None:
                reason = "no previous rows"
            elif changed.get(f"{kind}:{name}"):
                reason = f"{len(changed[f'{kind}:{name}'])} known {kind}s changed content"
            elif old.shape[1] < effective_k(k, len(x)) or len(x) > approx_above:
                reason = "k or catalogue size calls for a full rebuild"
            if reason is None:
                indices, scores, info = incremental_rows(x, k, old)
            else:
                indices, scores = full_rows(x, k)
                info = {"mode": "full", "reason": reason, "k": int(indices.shape[1])}
            _write_rows(out, etype, indices, scores)
            src, dst, w = symmetrise(indices, scores)
            write_edges(out, etype, src, dst, w)
            num_edges[etype], engines[etype] = int(len(src)), "exact"
            details[etype] = {**info, "modality": name, "seconds": round(time.perf_counter() - start, 3)}
            logger.info("%s: %s (%s) in %.2f s", etype, info["mode"],
                        info.get("reason") or f"{info['new_rows']} new rows, {info['old_rows_updated']} old rows "
                        "updated", time.perf_counter() - start)
        return out.commit({"dataset": canonical_url(ds.url), "num_users": ds.num_users, "num_items": ds.num_items,
                           "num_edges": num_edges, "knn_k": int(knn_k),
                           "user_knn_k": int(user_knn_k) if user_mod else 0, "engine": engines,
                           "item_modalities": sorted(ds.modalities), "user_modality": user_mod, "knn": details,
                           "previous": previous})
