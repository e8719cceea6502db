"""Approximate top-K cosine candidates with a FAISS inverted-file index (IVF-Flat, inner product).

The catalog is clustered into ``nlist`` cells (k-means on a sample); a query scans only the
``nprobe`` cells nearest to it. ``nprobe`` grows from 1 in half steps (1, 2, 3, 4, 6, 8, ...)
until recall@K on a tuning sample, against the exact engine, reaches the target. The caller
(:func:`knn.knn`) re-ranks the candidates in float64 and measures the recall of the final lists
on a separate sample.
"""
from __future__ import annotations

import logging
import math
import time

import numpy as np

logger = logging.getLogger(__name__)


def default_nlist(n: int) -> int:
    """~4 sqrt(n) cells, with at least 39 training points per cell (FAISS's minimum)."""
    return int(max(1, min(round(4 * math.sqrt(n)), n // 39)))


def _row_order(vals: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Per-row order by (-score, index), missing (-1) entries last."""
    big = np.where(idx < 0, np.iinfo(np.int64).max, idx)
    by_index = np.argsort(big, axis=1, kind="stable")
    by_score = np.argsort(-np.take_along_axis(vals, by_index, 1), axis=1, kind="stable")
    return np.take_along_axis(by_index, by_score, 1)


def search(index, x: np.ndarray, queries: np.ndarray, k: int, block: int = 1 << 15):
    """Top-``k`` of each query row, self removed; ``-1`` where fewer than ``k`` were found."""
    out_i = np.empty((len(queries), k), dtype=np.int64)
    out_v = np.empty((len(queries), k), dtype=np.float32)
    for s in range(0, len(queries), block):
        q = queries[s:s + block]
        vals, idx = index.search(np.ascontiguousarray(x[q]), k + 1)
        is_self = idx == q[:, None]
        # Drop self; if self is absent (duplicates tie with it, or it was not probed), drop the last.
        drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), k)
        keep = np.ones_like(idx, dtype=bool)
        keep[np.arange(len(q)), drop] = False
        idx, vals = idx[keep].reshape(len(q), k), vals[keep].reshape(len(q), k)
        vals = np.where(idx < 0, -np.inf, vals).astype(np.float32)
        order = _row_order(vals, idx)
        out_i[s:s + len(q)] = np.take_along_axis(idx, order, 1)
        out_v[s:s + len(q)] = np.take_along_axis(vals, order, 1)
    return out_i, out_v


def set_nprobe(ivf, nprobe: int) -> None:
    """Probe ``nprobe`` cells; an HNSW coarse quantizer searches with ``efSearch >= 2 nprobe`` so
    that the cells it returns are the nearest ones (a smaller beam would miss some)."""
    import faiss

    ivf.nprobe = nprobe
    quantizer = faiss.downcast_index(ivf.quantizer)
    if isinstance(quantizer, faiss.IndexHNSW):
        quantizer.hnsw.efSearch = max(64, 2 * nprobe)


def tune_nprobe(ivf, index, x: np.ndarray, tune_rows: np.ndarray, k: int, nlist: int,
                target_recall: float) -> tuple[int, dict[str, float]]:
    """The smallest ``nprobe`` of 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (powers of two and the steps
    half-way between them; set on ``ivf``, searched through ``index``) whose recall@k against exact
    search on ``tune_rows`` reaches ``target_recall``, and the curve. The half steps matter: at a
    constant cell size the search costs ``nprobe``, and doubling past the target wastes up to 2x."""
    from recgoat_dist.graph.knn import exact_topk, recall_at_k

    exact_i, exact_v = exact_topk(x, k, tune_rows)
    curve: dict[str, float] = {}
    nprobe = 1
    while True:
        set_nprobe(ivf, nprobe)
        approx_i, approx_v = search(index, x, tune_rows, k)
        curve[str(nprobe)] = round(recall_at_k(approx_i, approx_v, exact_i, exact_v), 4)
        if curve[str(nprobe)] >= target_recall or nprobe >= nlist:
            return nprobe, curve
        nprobe = min(nlist, nprobe + max(1, nprobe // 2) if nprobe & (nprobe - 1) == 0 else nprobe * 4 // 3)


def ivf_topk(x: np.ndarray, k: int, extra: int, *, tune_rows: np.ndarray, target_recall: float = 0.95,
             nlist: int | None = None, max_train: int = 100, seed: int = 0) -> tuple[np.ndarray, dict]:
    """``k + extra`` approximate neighbour candidates (self excluded) of every row of ``x``.

    ``x`` is row-normalised float32. ``nprobe`` is tuned so that recall@``k`` on ``tune_rows``
    reaches ``target_recall`` (or every cell is probed). Rows for which the probed cells held
    fewer than ``k + extra`` candidates are completed by the exact engine. Returns
    ``(candidates, info)``; ``info`` holds ``nlist``, ``nprobe``, the tuning curve and timings.
    """
    import faiss

    from recgoat_dist.graph.knn import exact_topk

    n, d = x.shape
    width = k + extra
    x = np.ascontiguousarray(x, dtype=np.float32)
    t0 = time.perf_counter()
    nlist = nlist or default_nlist(n)
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    train_rows = np.sort(rng.choice(n, size=min(n, nlist * max_train), replace=False))
    index.train(x[train_rows])
    index.add(x)
    t_build = time.perf_counter() - t0

    t0 = time.perf_counter()
    nprobe, curve = tune_nprobe(index, index, x, tune_rows, k, nlist, target_recall)
    t_tune = time.perf_counter() - t0
    logger.info("faiss IVF: %d rows, nlist=%d, nprobe=%d (tuning recall@%d %s)", n, nlist, nprobe, k, curve)

    t0 = time.perf_counter()
    candidates = np.empty((n, width), dtype=np.int64)
    step = 1 << 17
    for s in range(0, n, step):
        candidates[s:s + step] = search(index, x, np.arange(s, min(n, s + step), dtype=np.int64), width)[0]
        logger.debug("faiss search %d / %d rows", min(n, s + step), n)
    t_search = time.perf_counter() - t0
    del index
    incomplete = np.nonzero((candidates < 0).any(axis=1))[0]
    if len(incomplete):
        candidates[incomplete] = exact_topk(x, width, incomplete)[0]
    info = {
        "backend": "faiss-ivf-flat",
        "nlist": int(nlist),
        "nprobe": int(nprobe),
        "target_recall": target_recall,
        "tuning_recall": curve,
        "tuning_sample": int(len(tune_rows)),
        "rows_completed_exactly": int(len(incomplete)),
        "seconds_build": round(t_build, 2),
        "seconds_tune": round(t_tune, 2),
        "seconds_search": round(t_search, 2),
    }
    return candidates, info
