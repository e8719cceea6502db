"""FAISS inverted-file (IVF) indexes: the constant-cell builder shared by the streamed KNN graph
and the export's item index, and approximate top-K cosine candidates for the in-memory KNN.

The catalog is clustered into ``nlist`` cells (k-means on a sample); a query scans only the
``nprobe`` cells nearest to it. ``nprobe`` grows from 1 in half steps (1, 2, 3, 4, 6, 8, ...)
until recall@K on a tuning sample, against the exact engine, reaches the target.

Constant-size cells (:func:`cell_nlist`, :func:`build_index`): ``nlist = n / CELL_ROWS``, so a
query scans ``nprobe x CELL_ROWS`` vectors whatever ``n`` is. Above ``hnsw_above`` cells the
coarse quantizer is an HNSW index over the centroids (``IVF<nlist>_HNSW32``), so finding a
query's cells costs ``O(log nlist)``, and k-means assigns its sample through HNSW too (with
``nlist ~ n`` a flat assignment would cost ``n^2``). Search then costs ``O(n log n)`` for ``n``
queries, where ``nlist ~ sqrt(n)`` cost ``O(n^1.5)``.

:func:`ivf_topk` (the in-memory KNN engine, :func:`knn.knn`) keeps ``~4 sqrt(n)`` cells: it
serves catalogs small enough that the difference does not matter; its caller re-ranks the
candidates in float64 and measures the recall of the final lists on a separate sample.
"""
from __future__ import annotations

import logging
import math
import time

import numpy as np

logger = logging.getLogger(__name__)

HNSW_ABOVE = 2048            # coarse quantizer: flat up to this many cells, HNSW above
CELL_ROWS = 128              # rows per IVF cell: constant, so a query's scan does not grow with n
TRAIN_PER_CELL = 40          # k-means sample per cell (FAISS warns below 39)
KMEANS_ITER = 10             # FAISS's IVF default is 25; 10 is enough when candidates are rescored or tuned


def cell_nlist(n: int, cell_rows: int = CELL_ROWS) -> int:
    """``n / cell_rows`` cells (at least one; at least 39 training rows per cell)."""
    return int(max(1, min(round(n / cell_rows), n // 39)))


def index_spec(n: int, d: int, nlist: int, index_memory_gb: float = 0.0, pq_bits: int = 8,
               hnsw_above: int = HNSW_ABOVE) -> tuple[str, int]:
    """FAISS factory string and the bytes its stored vectors take.

    Full float32 vectors unless they exceed ``index_memory_gb`` (> 0); then product-quantised
    codes, one ``pq_bits``-bit code per 4 dimensions (16 bytes for 64-d at 8 bits: 16x smaller).
    """
    from recgoat_dist.data.dataset import DataError

    quantizer = f"IVF{nlist}_HNSW32" if nlist > hnsw_above else f"IVF{nlist}"
    flat = n * d * 4
    if index_memory_gb <= 0 or flat <= index_memory_gb * 2 ** 30:
        return f"{quantizer},Flat", flat
    if d % 4:
        raise DataError(f"a flat IVF index of {n} x {d} needs {flat / 2 ** 30:.1f} GiB > "
                        f"graph.knn_index_memory_gb={index_memory_gb}, and PQ needs a dimension divisible by 4")
    m = d // 4
    return f"{quantizer},PQ{m}x{pq_bits}", n * math.ceil(m * pq_bits / 8)


def train_index(index, x: np.ndarray, nlist: int, rng, hnsw_above: int = HNSW_ABOVE) -> int:
    """k-means on ``TRAIN_PER_CELL`` rows per cell, drawn with ``rng``; assignment through HNSW
    above ``hnsw_above`` cells (an inner-product IVF runs spherical k-means, whose unit centroids
    make L2-nearest inner-product-nearest). Returns the number of training rows."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    ivf.cp.niter = KMEANS_ITER
    if nlist > hnsw_above:
        ivf.clustering_index = faiss.IndexHNSWFlat(x.shape[1], 32)
    rows = np.sort(rng.choice(len(x), size=min(len(x), TRAIN_PER_CELL * nlist), replace=False))
    index.train(np.ascontiguousarray(x[rows]))
    return len(rows)


def build_index(x: np.ndarray, nlist: int, rng, *, index_memory_gb: float = 0.0, pq_bits: int = 8,
                hnsw_above: int = HNSW_ABOVE, add_block: int = 1 << 20):
    """An inner-product IVF index over the rows of ``x`` (float32; may be memory-mapped), trained on
    a sample and filled block by block. Returns ``(index, factory string, bytes of stored vectors,
    training rows)``."""
    import faiss

    n, d = x.shape
    spec, index_bytes = index_spec(n, d, nlist, index_memory_gb, pq_bits, hnsw_above)
    index = faiss.index_factory(d, spec, faiss.METRIC_INNER_PRODUCT)
    train_rows = train_index(index, x, nlist, rng, hnsw_above)
    for s in range(0, n, add_block):
        index.add(np.ascontiguousarray(x[s:s + add_block], dtype=np.float32))
    return index, spec, index_bytes, train_rows


def next_nprobe(nprobe: int, nlist: int) -> int:
    """The step after ``nprobe`` in 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (powers of two and the steps
    half-way between them), capped at ``nlist``. The half steps matter: at a constant cell size
    the search costs ``nprobe``, and doubling past a recall target wastes up to 2x."""
    return min(nlist, nprobe + max(1, nprobe // 2) if nprobe & (nprobe - 1) == 0 else nprobe * 4 // 3)


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


def search_deeper(index, queries: np.ndarray, k: int, nprobe: int):
    """``index.search`` with ``nprobe`` cells for this call only (the index keeps its own setting);
    an HNSW coarse quantizer gets ``efSearch >= 2 nprobe`` as in :func:`set_nprobe`."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    params = faiss.SearchParametersIVF()
    params.nprobe = int(min(ivf.nlist, nprobe))
    beam = None      # held here: FAISS does not own the quantizer's parameters
    if isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW):
        beam = faiss.SearchParametersHNSW()
        beam.efSearch = max(64, 2 * params.nprobe)
        params.quantizer_params = beam
    out = index.search(queries, k, params=params)
    del beam
    return out


def tune_nprobe(ivf, index, x: np.ndarray, tune_rows: np.ndarray, k: int, nlist: int,
                target_recall: float) -> tuple[int, dict[str, float]]:
    """The smallest ``nprobe`` of :func:`next_nprobe`'s steps (set on ``ivf``, searched through
    ``index``) whose recall@k against exact search on ``tune_rows`` reaches ``target_recall``, and
    the curve."""
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
        nprobe = next_nprobe(nprobe, nlist)


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
