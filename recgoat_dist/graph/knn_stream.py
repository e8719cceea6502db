"""The KNN graph of a large catalog in bounded memory: features streamed from storage, a FAISS IVF
index trained on a sample, edges spilled to disk as they are found and symmetrised bucket by bucket.

Steps (``n`` rows, ``d`` dimensions, ``k`` neighbours):

1. **Read** feature blocks from storage, normalise each row to unit L2 norm (zero rows stay zero)
   and append them to a local memory-mapped float32 file: the exact copy that rescoring and the
   recall measurement read. Its pages are file-backed, so the OS can evict them.
2. **Train** an IVF index on a random sample of rows, then **add** every row, block by block.
   Cells have a constant size (``nlist ~ n / CELL_ROWS``), so a query scans ``nprobe x CELL_ROWS``
   vectors whatever ``n`` is; finding the ``nprobe`` nearest cells is an HNSW search over the
   centroids (above :data:`HNSW_ABOVE` cells), ``O(log nlist)``; k-means training assigns its
   sample through an HNSW index too (FAISS's ``clustering_index``). Together: search costs
   ``O(n log n)``, where ``nlist ~ sqrt(n)`` cost ``O(n^1.5)``. PQ codes replace full vectors when
   the flat index would exceed ``index_memory_gb``.
3. **Tune** ``nprobe`` (1, 2, 3, 4, 6, 8, 12, ...) until recall@k on ``tune_sample`` rows, against the exact
   engine, reaches ``target_recall``.
4. **Search** block by block: ``k + MARGIN`` candidates per row, rescored exactly (float64 inner
   products of the stored unit vectors) and cut to ``k``. Both directions of every edge go to
   on-disk buckets by source range.
5. **Symmetrise** each bucket on its own (union of both directions, no self-loops, one weight per
   pair, the larger of its two computed cosines) and write it as Parquet parts: edges sorted by
   ``(src, dst)``, as :func:`recgoat_dist.graph.knn.symmetrise` sorts them.
6. **Measure** recall@k of the final lists against the exact engine on ``recall_sample`` other rows.

Peak memory: the index (``n x d x 4`` bytes flat, ``n x m`` with PQ) plus one block and one
bucket; the unit-vector file and the buckets live on local disk (``n x d x 4`` and about
``2 n k x 20`` bytes).
"""
from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from typing import Callable, Iterator

import numpy as np
from tqdm.auto import tqdm

from recgoat_dist.data.dataset import DataError
# The constant-cell index is graph.ivf's (shared with the export's item index); re-exported here.
from recgoat_dist.graph.ivf import CELL_ROWS, build_index, index_spec  # noqa: F401
from recgoat_dist.graph.ivf import HNSW_ABOVE as _HNSW_ABOVE
from recgoat_dist.graph.ivf import cell_nlist as stream_nlist

logger = logging.getLogger(__name__)

HNSW_ABOVE = _HNSW_ABOVE     # coarse quantizer: flat up to this many cells, HNSW above (read per call)
BUCKET_EDGES = 20_000_000    # directed edges per symmetrisation bucket (~400 MB in memory)
SEARCH_BLOCK = 65_536


def _unit_rows(blocks: Iterator[np.ndarray], n: int, d: int, path: str) -> np.memmap:
    x = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    start = 0
    for block in blocks:
        b = np.asarray(block, dtype=np.float64)
        if start + len(b) > n or b.shape[1] != d:
            raise DataError(f"feature blocks do not match the expected {n} x {d} rows")
        norms = np.sqrt((b * b).sum(axis=1))
        norms[norms == 0] = 1.0
        x[start:start + len(b)] = b / norms[:, None]
        start += len(b)
    if start != n:
        raise DataError(f"feature blocks hold {start} rows, expected {n}")
    x.flush()
    return x


def _rescore_unit(x: np.ndarray, rows: np.ndarray, cand: np.ndarray, k: int, budget: int = 1 << 24):
    """Exact float64 inner products of unit rows; keep the ``k`` best by (-cosine, index)."""
    from recgoat_dist.graph.knn import rescore

    return rescore(x, np.ones(len(x)), rows, cand, k, budget)


class _Buckets:
    """Directed edges spilled to disk by source range; read back one range at a time."""

    def __init__(self, n: int, num_buckets: int, root: str):
        self.n, self.num = n, num_buckets
        self.width = math.ceil(n / num_buckets)
        self.root = root
        self.files = [open(os.path.join(root, f"bucket-{b}.bin"), "wb") for b in range(num_buckets)]
        self.dtype = np.dtype([("src", np.int64), ("dst", np.int64), ("w", np.float32)])

    def add(self, src: np.ndarray, dst: np.ndarray, w: np.ndarray) -> None:
        rec = np.empty(len(src), dtype=self.dtype)
        rec["src"], rec["dst"], rec["w"] = src, dst, w
        bucket = src // self.width
        order = np.argsort(bucket, kind="stable")
        bounds = np.searchsorted(bucket[order], np.arange(self.num + 1))
        for b in range(self.num):
            if bounds[b + 1] > bounds[b]:
                self.files[b].write(rec[order[bounds[b]:bounds[b + 1]]].tobytes())

    def symmetrised(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        for fh in self.files:
            fh.close()
        for b in range(self.num):
            path = os.path.join(self.root, f"bucket-{b}.bin")
            rec = np.fromfile(path, dtype=self.dtype)
            os.remove(path)
            keep = rec["src"] != rec["dst"]
            rec = rec[keep]
            key = rec["src"] * self.n + rec["dst"]
            order = np.lexsort((-rec["w"], key))        # per pair, the larger cosine first
            key, w = key[order], rec["w"][order]
            first = np.ones(len(key), dtype=bool)
            first[1:] = key[1:] != key[:-1]
            yield key[first] // self.n, key[first] % self.n, w[first]


def stream_knn(read_blocks: Callable[[], Iterator[np.ndarray]], n: int, d: int, k: int,
               write_edges: Callable[[np.ndarray, np.ndarray, np.ndarray], None], *,
               target_recall: float = 0.95, recall_sample: int = 2000, tune_sample: int = 1000,
               index_memory_gb: float = 0.0, nlist: int | None = None, seed: int = 0,
               tmp_dir: str | None = None, bucket_edges: int = BUCKET_EDGES, pq_bits: int = 8) -> dict:
    """Top-``k`` cosine KNN graph of ``n`` rows read by ``read_blocks()``, symmetrised edges passed
    to ``write_edges(src, dst, weight)`` in ``(src, dst)`` order; returns the graph's info."""
    import faiss

    from recgoat_dist.graph.ivf import search, tune_nprobe
    from recgoat_dist.graph.knn import MARGIN, exact_topk, recall_at_k

    if n < 2 or k < 1:
        raise DataError(f"the streamed KNN needs at least 2 rows and k >= 1, got {n} rows, k={k}")
    k = min(int(k), n - 1)
    width = min(n - 1, k + MARGIN)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="recgoat-knn-", dir=tmp_dir) as tmp:
        x = _unit_rows(read_blocks(), n, d, os.path.join(tmp, "unit.npy"))
        t_read = time.perf_counter() - t0
        rng = np.random.default_rng(seed)
        nlist = nlist or stream_nlist(n)
        t1 = time.perf_counter()
        index, spec, index_bytes, train_rows = build_index(x, nlist, rng, index_memory_gb=index_memory_gb,
                                                           pq_bits=pq_bits, hnsw_above=HNSW_ABOVE)
        t_build = time.perf_counter() - t1
        ivf = faiss.extract_index_ivf(index)

        perm = rng.permutation(n)
        tune_rows = np.sort(perm[:tune_sample])
        eval_rows = np.sort(perm[tune_sample:tune_sample + recall_sample])
        if len(eval_rows) == 0:
            eval_rows = tune_rows
        t2 = time.perf_counter()
        nprobe, curve = tune_nprobe(ivf, index, x, tune_rows, k, nlist, target_recall)
        t_tune = time.perf_counter() - t2
        logger.info("knn index %s: nprobe=%d (tuning recall@%d %s)", spec, nprobe, k, curve)

        t3 = time.perf_counter()
        buckets = _Buckets(n, max(1, math.ceil(2 * n * k / bucket_edges)), tmp)
        eval_lists = {}
        completed = 0
        for s in tqdm(range(0, n, SEARCH_BLOCK), desc="knn search", unit="block", mininterval=2):
            rows = np.arange(s, min(n, s + SEARCH_BLOCK), dtype=np.int64)
            cand = search(index, x, rows, width)[0]
            short = np.nonzero((cand < 0).any(axis=1))[0]
            if len(short):
                cand[short] = exact_topk(x, width, rows[short])[0]
                completed += len(short)
            idx, val = _rescore_unit(x, rows, cand, k)
            hit = np.searchsorted(rows, eval_rows[(eval_rows >= rows[0]) & (eval_rows <= rows[-1])])
            for h in hit:
                eval_lists[int(rows[h])] = (idx[h], val[h])
            src = np.repeat(rows, k)
            dst, w = idx.ravel(), val.ravel()
            buckets.add(np.concatenate([src, dst]), np.concatenate([dst, src]), np.concatenate([w, w]))
        del index, ivf
        t_search = time.perf_counter() - t3

        t4 = time.perf_counter()
        edges = 0
        degree = np.zeros(n, dtype=np.int64)
        for src, dst, w in buckets.symmetrised():
            write_edges(src, dst, w)
            degree += np.bincount(src, minlength=n)
            edges += len(src)
        t_sym = time.perf_counter() - t4

        exact_c, _ = exact_topk(x, width, eval_rows)
        exact_i, exact_v = _rescore_unit(x, eval_rows, exact_c, k)
        got_i = np.stack([eval_lists[int(r)][0] for r in eval_rows])
        got_v = np.stack([eval_lists[int(r)][1] for r in eval_rows])
        recall = round(recall_at_k(got_i, got_v, exact_i, exact_v), 4)
        del x
    degree_min = int(degree.min()) if n else 0
    degree_max = int(degree.max()) if n else 0
    info = {
        "backend": "faiss-ivf-stream", "index": spec, "index_bytes": int(index_bytes), "nlist": int(nlist),
        "nprobe": int(nprobe), "target_recall": target_recall, "tuning_recall": curve,
        "tuning_sample": int(len(tune_rows)), "train_rows": int(train_rows), "cell_rows": round(n / nlist, 1),
        "rows_completed_exactly": int(completed), "k": k, "rows": n, "dim": d,
        "recall_vs_exact": recall, "recall_sample": int(len(eval_rows)), "recall_at": k,
        "edges": int(edges), "buckets": int(buckets.num), "min_degree": degree_min, "max_degree": degree_max,
        "seconds_read": round(t_read, 2), "seconds_build": round(t_build, 2), "seconds_tune": round(t_tune, 2),
        "seconds_search": round(t_search, 2), "seconds_symmetrise": round(t_sym, 2),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    logger.info("knn (streamed) %d rows x %d-d, k=%d: %d edges, recall@%d %.4f on %d rows in %.1f s",
                n, d, k, edges, k, recall, len(eval_rows), info["seconds"])
    return info
