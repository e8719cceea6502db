"""Top-K cosine neighbours of every row of a feature matrix, exact or approximate.

The neighbour list of row ``i`` is the ``k`` rows ``j != i`` with the largest cosine
``<x_i, x_j> / (|x_i| |x_j|)``, ordered by decreasing cosine and, among equal cosines, by
increasing ``j``. That tie rule makes the exact engine a function of the features alone, so it can
be compared with a brute-force top-K (duplicate feature rows are common in real catalogs, and
their cosines tie exactly). Rows of zeros have cosine 0 with everything.

Engines (one entry point, :func:`knn`):

* ``exact``: blockwise over rows *and* columns, so memory is ``block_rows x block_cols`` scores
  plus the running top-K, never ``N x N``. Torch on CPU; KeOps ``argKmin`` when CUDA is present.
* ``faiss``: an IVF index (:mod:`recgoat_dist.graph.ivf`) for large catalogs, chosen by ``auto``
  above ``approx_above`` rows. Its recall@K against the exact engine is measured on a sample.

:func:`symmetrise` turns the directed lists into the stored edge list: union of both directions,
no self-loops, no duplicates, weight = cosine.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from recgoat_dist.data.dataset import DataError

logger = logging.getLogger(__name__)

ENGINES = ("auto", "exact", "faiss")
BACKENDS = ("auto", "torch", "keops")
MARGIN = 5    # extra float32 candidates per row, re-ranked in float64 (see rescore)


@dataclass
class Neighbours:
    """Directed top-K lists: ``indices[i]`` are row ``i``'s neighbours, best first."""

    indices: np.ndarray          # (n, k) int64
    scores: np.ndarray           # (n, k) float32 cosine
    engine: str                  # "exact" | "faiss"
    info: dict = field(default_factory=dict)   # backend, timings, IVF parameters, recall


def row_norms(features: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """float64 L2 norm of every row; zero rows get norm 1 (they stay zero when scaled)."""
    x = np.asarray(features)
    if x.ndim != 2:
        raise DataError(f"features must be a 2-D array, got shape {x.shape}")
    norms = np.empty(len(x), dtype=np.float64)
    for start in range(0, len(x), chunk):
        block = x[start:start + chunk].astype(np.float64)
        norms[start:start + chunk] = np.sqrt((block * block).sum(axis=1))
    norms[norms == 0] = 1.0
    return norms


def normalise(features: np.ndarray, norms: np.ndarray | None = None, chunk: int = 1 << 16) -> np.ndarray:
    """Rows scaled to unit L2 norm, as float32 (zero rows stay zero)."""
    x = np.asarray(features)
    norms = row_norms(x) if norms is None else norms
    out = np.empty(x.shape, dtype=np.float32)
    for start in range(0, len(x), chunk):
        out[start:start + chunk] = x[start:start + chunk] / norms[start:start + chunk, None]
    return out


def rescore(features: np.ndarray, norms: np.ndarray, queries: np.ndarray, candidates: np.ndarray,
            k: int, budget: int = 1 << 24) -> tuple[np.ndarray, np.ndarray]:
    """Exact float64 cosines of each query's candidates; keep the ``k`` best by (-cosine, index).

    The float32 search ranks candidates with errors of ~1e-7; rescoring a few extra candidates
    in float64 makes the final lists (and the weights) agree with a float64 brute force, and
    makes duplicate feature rows tie exactly, so ties go to the lower index. Each cosine is a
    function of the two rows alone, so both directions of a pair get the same weight.
    """
    m, c = candidates.shape
    out_i = np.empty((m, k), dtype=np.int64)
    out_v = np.empty((m, k), dtype=np.float32)
    rows = max(1, budget // max(1, c * features.shape[1]))
    for s in range(0, m, rows):
        q, cand = queries[s:s + rows], candidates[s:s + rows]
        xq = features[q].astype(np.float64) / norms[q, None]
        xc = features[cand].astype(np.float64) / norms[cand][..., None]
        cos = np.einsum("md,mcd->mc", xq, xc)
        row = np.repeat(np.arange(len(q)), c)
        order = np.lexsort((cand.ravel(), -cos.ravel(), row)).reshape(len(q), c)[:, :k] % c
        out_i[s:s + len(q)] = np.take_along_axis(cand, order, 1)
        out_v[s:s + len(q)] = np.take_along_axis(cos, order, 1)
    return out_i, out_v


def effective_k(k: int, n: int) -> int:
    if k < 1:
        raise DataError(f"knn k must be >= 1, got {k}")
    return max(0, min(int(k), n - 1))


# --- exact, torch -----------------------------------------------------------------------------

def _block_topk(scores, k: int):
    """Top-``k`` columns of each row of a score block, ties at the k-th value to lower columns."""
    import torch

    kk = min(k, scores.shape[1])
    vals, cols = scores.topk(kk, dim=1)
    kth = vals[:, -1:]
    over = ((scores >= kth).sum(dim=1) > kk).nonzero().flatten()
    if over.numel():                      # more columns tie at the k-th value than fit
        sub, sub_kth = scores[over], kth[over]
        greater = sub > sub_kth
        room = kk - greater.sum(dim=1, keepdim=True)
        equal = sub == sub_kth
        chosen = greater | (equal & (equal.cumsum(dim=1) <= room))
        sub_cols = chosen.nonzero()[:, 1].reshape(len(over), kk)
        cols[over] = sub_cols
        vals[over] = sub.gather(1, sub_cols)
    return vals, cols.to(torch.int64)


def _merge(best_v, best_i, vals, idx, k: int):
    """Keep the ``k`` best of two candidate sets per row, ordered by (-score, index)."""
    import torch

    v = torch.cat([best_v, vals], dim=1)
    i = torch.cat([best_i, idx], dim=1)
    order = torch.sort(i, dim=1, stable=True).indices
    v, i = v.gather(1, order), i.gather(1, order)
    order = torch.sort(v, dim=1, descending=True, stable=True).indices[:, :k]
    return v.gather(1, order), i.gather(1, order)


def _exact_torch(x: np.ndarray, k: int, queries: np.ndarray, block_rows: int, block_cols: int):
    import torch

    n = len(x)
    xt = torch.from_numpy(x)
    out_i = np.empty((len(queries), k), dtype=np.int64)
    out_v = np.empty((len(queries), k), dtype=np.float32)
    for r0 in range(0, len(queries), block_rows):
        q = torch.from_numpy(queries[r0:r0 + block_rows])
        xq = xt[q]
        best_v = torch.full((len(q), k), -float("inf"))
        best_i = torch.full((len(q), k), np.iinfo(np.int64).max, dtype=torch.int64)
        for c0 in range(0, n, block_cols):
            s = xq @ xt[c0:c0 + block_cols].T
            rows = ((q >= c0) & (q < c0 + s.shape[1])).nonzero().flatten()
            s[rows, q[rows] - c0] = -float("inf")          # no self-loops
            vals, cols = _block_topk(s, k)
            best_v, best_i = _merge(best_v, best_i, vals, cols + c0, k)
        out_v[r0:r0 + len(q)] = best_v.numpy()
        out_i[r0:r0 + len(q)] = best_i.numpy()
    return out_i, out_v


# --- exact, KeOps (GPU) -----------------------------------------------------------------------

def _exact_keops(x: np.ndarray, k: int, queries: np.ndarray, block: int = 1 << 14):
    """KeOps ``argKmin`` of ``-<x_i, x_j>``: one fused pass per query block, no score matrix.

    KeOps breaks ties in its own order; results are re-sorted by (-score, index), but a tie at
    the k-th value may keep a different (equally good) column than the torch backend.
    """
    import torch
    from pykeops.torch import LazyTensor

    device = "cuda" if torch.cuda.is_available() else "cpu"
    xt = torch.from_numpy(x).to(device)
    xj = LazyTensor(xt[None, :, :])
    out_i = np.empty((len(queries), k), dtype=np.int64)
    out_v = np.empty((len(queries), k), dtype=np.float32)
    for s in range(0, len(queries), block):
        q = torch.from_numpy(queries[s:s + block]).to(device)
        xq = xt[q]
        cand = (-(LazyTensor(xq[:, None, :]) * xj).sum(-1)).argKmin(k + 1, dim=1).long()  # (m, k+1)
        is_self = cand == q[:, None]
        # Drop self; when self is not among the candidates (ties with duplicates), drop the last.
        drop = torch.where(is_self.any(1), is_self.float().argmax(1), torch.full_like(q, k))
        keep = torch.ones_like(cand, dtype=torch.bool)
        keep[torch.arange(len(q), device=device), drop] = False
        cols = cand[keep].reshape(len(q), k)
        vals = (xq[:, None, :] * xt[cols]).sum(-1)
        vals, cols = _merge(vals[:, :0], cols[:, :0], vals, cols, k)
        out_i[s:s + len(q)] = cols.cpu().numpy()
        out_v[s:s + len(q)] = vals.cpu().numpy()
    return out_i, out_v


def exact_topk(x: np.ndarray, k: int, queries: np.ndarray | None = None, *, backend: str = "auto",
               block_rows: int = 1024, block_cols: int = 32768) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` cosine neighbours of rows ``queries`` (default all) among all rows of ``x``.

    ``x`` must already be row-normalised (:func:`normalise`), so cosine = inner product. Returns
    ``(indices, scores)`` of shape ``(len(queries), k)``, ordered by (-score, index); the query
    row itself is excluded. ``k`` must be at most ``len(x) - 1``. The torch backend holds at
    most ``block_rows x block_cols`` scores at a time.
    """
    import torch

    if backend not in BACKENDS:
        raise DataError(f"unknown exact backend {backend!r}; choose from {', '.join(BACKENDS)}")
    queries = np.arange(len(x), dtype=np.int64) if queries is None else np.asarray(queries, np.int64)
    if k > len(x) - 1:
        raise DataError(f"k={k} neighbours requested but there are only {len(x)} rows")
    if k == 0 or len(queries) == 0:
        return np.empty((len(queries), k), np.int64), np.empty((len(queries), k), np.float32)
    if backend == "auto":
        backend = "keops" if torch.cuda.is_available() and _has_keops() else "torch"
    if backend == "keops":
        return _exact_keops(x, k, queries)
    return _exact_torch(np.ascontiguousarray(x, dtype=np.float32), k, queries, block_rows, block_cols)


def _has_keops() -> bool:
    try:
        import pykeops  # noqa: F401
    except ImportError:
        return False
    return True


# --- entry point ------------------------------------------------------------------------------

def recall_at_k(approx: np.ndarray, approx_scores: np.ndarray, exact: np.ndarray,
                exact_scores: np.ndarray, tol: float = 1e-5) -> float:
    """Mean fraction of the exact top-K found. An approximate neighbour whose cosine ties the
    exact k-th cosine (within ``tol``) counts as found: it is an equally correct answer."""
    if exact.size == 0:
        return 1.0
    hits = (approx[:, :, None] == exact[:, None, :]).any(axis=2)
    hits |= (approx_scores >= exact_scores[:, -1:] - tol) & (approx >= 0)
    return float(hits.sum() / exact.size)


def knn(features: np.ndarray, k: int, *, engine: str = "auto", approx_above: int = 200_000,
        backend: str = "auto", target_recall: float = 0.95, recall_sample: int = 2000,
        tune_sample: int = 1000, seed: int = 0, block_rows: int = 1024,
        block_cols: int = 32768) -> Neighbours:
    """Top-``k`` cosine neighbours of every row of ``features`` (self excluded).

    Both engines first rank ``k + MARGIN`` candidates in float32 and then :func:`rescore` them in
    float64. ``engine="auto"`` is exact up to ``approx_above`` rows and FAISS IVF above; IVF tunes
    ``nprobe`` on ``tune_sample`` rows until recall@K reaches ``target_recall``, and the recall of
    the final lists against the exact engine is measured on ``recall_sample`` other rows
    (``info["recall_vs_exact"]``). With fewer than ``k + 1`` rows every row gets all the others
    (``info["k"] < k``).
    """
    if engine not in ENGINES:
        raise DataError(f"unknown knn engine {engine!r}; choose from {', '.join(ENGINES)}")
    start = time.perf_counter()
    feats = np.asarray(features)
    norms = row_norms(feats)
    x = normalise(feats, norms)
    n = len(x)
    k_eff = effective_k(k, n)
    if k_eff < k:
        logger.warning("only %d rows: each gets %d neighbours instead of %d", n, k_eff, k)
    k_search = min(n - 1, k_eff + MARGIN)
    if engine == "auto":
        engine = "faiss" if n > approx_above else "exact"
    if backend == "auto":
        import torch
        backend = "keops" if torch.cuda.is_available() and _has_keops() else "torch"
    info: dict = {"k": k_eff, "rows": n, "dim": int(x.shape[1]), "zero_rows": int((~x.any(axis=1)).sum())}
    rows = np.arange(n, dtype=np.int64)
    if engine == "exact":
        candidates, _ = exact_topk(x, k_search, backend=backend, block_rows=block_rows,
                                   block_cols=block_cols)
        info["backend"] = backend
    else:
        from recgoat_dist.graph.ivf import ivf_topk
        perm = np.random.default_rng(seed).permutation(n)
        tune_rows = np.sort(perm[:tune_sample])
        eval_rows = np.sort(perm[tune_sample:tune_sample + recall_sample])
        if len(eval_rows) == 0:
            eval_rows = tune_rows
        candidates, ivf_info = ivf_topk(x, k_eff, k_search - k_eff, tune_rows=tune_rows,
                                        target_recall=target_recall, seed=seed)
        info.update(ivf_info)
    indices, scores = rescore(feats, norms, rows, candidates, k_eff)
    del candidates
    if engine == "faiss" and k_eff:
        exact_c, _ = exact_topk(x, k_search, eval_rows, backend=backend)
        exact_i, exact_v = rescore(feats, norms, eval_rows, exact_c, k_eff)
        info["recall_vs_exact"] = round(recall_at_k(indices[eval_rows], scores[eval_rows],
                                                    exact_i, exact_v), 4)
        info["recall_sample"] = int(len(eval_rows))
    info["seconds"] = round(time.perf_counter() - start, 3)
    logger.info("knn %s: %d rows x %d-d, k=%d in %.1f s%s", engine, n, x.shape[1], k_eff,
                info["seconds"], f", recall@k {info['recall_vs_exact']}" if "recall_vs_exact" in info else "")
    return Neighbours(indices, scores, engine, info)


def symmetrise(indices: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Directed top-K lists -> undirected edge list ``(src, dst, weight)`` sorted by (src, dst).

    Both directions of every pair are emitted once; self-loops and ``-1`` (missing) entries are
    dropped. A pair found from both ends keeps the larger of its two computed cosines, so the
    weight is the same in both directions.
    """
    n, k = indices.shape
    src = np.repeat(np.arange(n, dtype=np.int64), k)
    dst = indices.ravel().astype(np.int64)
    w = scores.ravel().astype(np.float32)
    keep = (dst >= 0) & (dst != src)
    src, dst, w = src[keep], dst[keep], w[keep]
    key = np.minimum(src, dst) * n + np.maximum(src, dst)
    del src, dst
    order = np.lexsort((-w, key))                      # per pair, the largest cosine first
    key, w = key[order], w[order]
    first = np.ones(len(key), dtype=bool)
    first[1:] = key[1:] != key[:-1]
    key, w = key[first], w[first]
    lo, hi = key // n, key % n
    src = np.concatenate([lo, hi])
    dst = np.concatenate([hi, lo])
    w = np.concatenate([w, w])
    order = np.lexsort((dst, src))
    return src[order], dst[order], w[order]
