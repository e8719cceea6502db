"""Top-K items per user by inner product, exact or through a FAISS IVF index, training items excluded.

Engines, chosen by catalog size as ``recgoat graph`` chooses its KNN engine:

* ``exact``: every item scored for every user (:func:`recgoat_dist.eval.metrics.topk_items`,
  blockwise torch). ``num_users x num_items x d`` multiply-adds: fine at 10^5 items, ~10^16 at
  10M x 10M x 64, out of reach.
* ``ann``: an inverted-file index (IVF-Flat, inner product) over the item embeddings, built as
  the KNN graph builds its own (:func:`recgoat_dist.graph.ivf.build_index`): constant-size cells of
  ``CELL_ROWS`` items, k-means on a sample, an HNSW coarse quantizer above ``HNSW_ABOVE`` cells.
  A query scans the ``nprobe`` cells whose centroids have the largest inner product with it:
  ``nprobe x CELL_ROWS`` items whatever the catalog's size (an index of ``sqrt(N)`` cells scanned
  ``nprobe x sqrt(N)``, so its speed-up over brute force grew only like ``sqrt(N)``). ``nprobe``
  grows from 1 in the KNN's half steps (1, 2, 3, 4, 6, 8, 12, ...) until recall@K against the
  exact engine on ``tune_users`` reaches the target; recall is then *measured* on other users
  (``ann_recall@K`` in the export manifest), together with the per-user time of both engines.

Exclusion: a user's training items can occupy the first slots of the index's answer, so the
index is asked for ``k + degree`` items (degree capped per block; users it still leaves short,
e.g. when the probed cells held too few items, are ranked exactly). The index is written into the
export for serving-side retrieval (:func:`write_index`).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from recgoat_dist.eval.metrics import UserItems, topk_items
from recgoat_dist.graph.ivf import HNSW_ABOVE, build_index, cell_nlist, next_nprobe, search_deeper, set_nprobe

logger = logging.getLogger(__name__)

ENGINES = ("auto", "exact", "ann")
EXTRA_CAP = 256          # most extra candidates asked per block for excluded training items


def choose_engine(engine: str, num_items: int, ann_above: int) -> tuple[str, str]:
    """(engine, reason) for a catalog of ``num_items``; the reason is logged and recorded."""
    if engine not in ENGINES:
        raise ValueError(f"export ranking engine {engine!r}: choose from {', '.join(ENGINES)}")
    if engine != "auto":
        return engine, f"requested ({engine})"
    if num_items > ann_above:
        return "ann", f"{num_items} items > export.ann_above={ann_above}"
    return "exact", f"{num_items} items <= export.ann_above={ann_above}"


def build_ann_index(item_emb: np.ndarray, nlist: int | None = None, seed: int = 0,
                    hnsw_above: int = HNSW_ABOVE) -> tuple[object, str]:
    """IVF-Flat inner-product index over ``item_emb`` (float32, rows = item ids) with constant-size
    cells (``nlist`` = items / ``CELL_ROWS`` by default) and the FAISS factory string it has."""
    x = np.ascontiguousarray(item_emb, dtype=np.float32)
    index, spec, _, _ = build_index(x, nlist or cell_nlist(len(x)), np.random.default_rng(seed),
                                    hnsw_above=hnsw_above)
    return index, spec


def build_exact_index(item_emb: np.ndarray):
    """A flat inner-product index: what a small catalog's serving side needs."""
    import faiss

    index = faiss.IndexFlatIP(item_emb.shape[1])
    index.add(np.ascontiguousarray(item_emb, dtype=np.float32))
    return index


def write_index(writer, rel: str, index) -> int:
    """Write a FAISS index into an artifact through a local file (a 10M x 64 flat IVF is 2.5 GB:
    serialising it in memory would hold it twice more). Returns its size in bytes."""
    import os
    import tempfile

    import faiss

    with tempfile.TemporaryDirectory(prefix="recgoat-index-") as tmp:
        path = os.path.join(tmp, "items.faiss")
        faiss.write_index(index, path)
        writer.put_file(path, rel)
        return os.path.getsize(path)


def _first_valid(cand: np.ndarray, users: np.ndarray, train: UserItems, k: int) -> np.ndarray:
    """The first ``k`` candidates of each row that exist and are not training items (-1 pads)."""
    ok = (cand >= 0) & ~train.contains(users[:, None], np.maximum(cand, 0))
    rank = np.cumsum(ok, axis=1) - 1
    keep = ok & (rank < k)
    out = np.full((len(users), k), -1, dtype=np.int64)
    rows, cols = np.nonzero(keep)
    out[rows, rank[rows, cols]] = cand[rows, cols]
    return out


def ann_topk(index, user_emb: torch.Tensor, item_emb: torch.Tensor, users: np.ndarray, train: UserItems,
             k: int) -> np.ndarray:
    """Top-``k`` non-training items of ``users`` from the index; (len(users), k) int64.

    A user the index leaves with fewer than ``k`` (its answer was mostly training items, or its
    probed cells were small) is asked again with room for all its training items and through
    ``(k + degree) / k`` times as many cells: its wanted items are its top ``k + degree``, and the
    tuned ``nprobe`` finds a top ``k``; so it looks as deep past its training items as others
    look. A user still short is ranked exactly, so every user gets ``min(k, items it has not
    trained on)`` items.
    """
    import faiss

    n = index.ntotal
    users = np.asarray(users, dtype=np.int64)
    q = np.ascontiguousarray(user_emb[torch.from_numpy(users)].numpy(), dtype=np.float32)
    deg = train.degree()[users]
    width = int(min(n, k + min(int(deg.max()) if len(deg) else 0, EXTRA_CAP)))
    out = _first_valid(index.search(q, width)[1], users, train, k)
    reachable = np.minimum(k, n - deg)
    short = np.nonzero((out >= 0).sum(axis=1) < reachable)[0]
    if len(short):
        width = int(min(n, k + deg[short].max()))
        deeper = faiss.extract_index_ivf(index).nprobe * -(-width // max(k, 1))
        out[short] = _first_valid(search_deeper(index, q[short], width, deeper)[1], users[short], train, k)
        still = short[(out[short] >= 0).sum(axis=1) < reachable[short]]
        if len(still):
            exact = topk_items(user_emb, item_emb, users[still], train, k)
            out[still] = np.where(train.contains(users[still, None], exact), -1, exact)
    return out


def _scores(user_emb: torch.Tensor, item_emb: torch.Tensor, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    safe = torch.from_numpy(np.maximum(items, 0))
    return torch.einsum("ud,ukd->uk", user_emb[torch.from_numpy(users)], item_emb[safe]).numpy()


def recall_at_k(user_emb, item_emb, users, got: np.ndarray, exact: np.ndarray, tol: float = 1e-5) -> float:
    """Mean fraction of the exact top-K found; an item whose score ties the exact K-th score (within
    ``tol``) counts as found, since it is an equally correct answer."""
    if exact.size == 0:
        return 1.0
    hits = (got[:, :, None] == exact[:, None, :]).any(axis=2) & (got >= 0)
    kth = _scores(user_emb, item_emb, users, exact)[:, -1:]
    hits |= (got >= 0) & (_scores(user_emb, item_emb, users, got) >= kth - tol)
    return float(hits.sum() / exact.size)


@dataclass
class AnnRanker:
    """A tuned IVF index and what was measured about it."""

    index: object
    info: dict = field(default_factory=dict)

    def topk(self, user_emb, item_emb, users, train, k):
        return ann_topk(self.index, user_emb, item_emb, users, train, k)


def tune_ann(user_emb: torch.Tensor, item_emb: torch.Tensor, train: UserItems, *, k_recall: int = 20,
             target_recall: float = 0.97, tune_users: int = 1000, recall_users: int = 2000,
             nlist: int | None = None, seed: int = 0, hnsw_above: int = HNSW_ABOVE) -> AnnRanker:
    """Build the index, tune ``nprobe`` on ``tune_users`` and measure ``ann_recall@k_recall`` and
    the per-user times of both engines on ``recall_users`` other users (all users when too few).
    The tuned ``nprobe`` (and the HNSW quantizer's ``efSearch``) are set on the index, so the
    serialized index answers as the export ranked."""
    import faiss

    num_users, num_items = user_emb.shape[0], item_emb.shape[0]
    t0 = time.perf_counter()
    index, spec = build_ann_index(item_emb.numpy(), nlist=nlist, seed=seed, hnsw_above=hnsw_above)
    ivf = faiss.extract_index_ivf(index)
    t_build = time.perf_counter() - t0
    k = min(k_recall, num_items)
    perm = np.random.default_rng(seed).permutation(num_users)
    tune = np.sort(perm[:tune_users])
    sample = np.sort(perm[tune_users:tune_users + recall_users])
    if len(sample) == 0:
        sample = tune
    exact_tune = topk_items(user_emb, item_emb, tune, train, k)
    t_tune = time.perf_counter()
    curve, nprobe = {}, 1
    while True:
        set_nprobe(ivf, nprobe)
        got = ann_topk(index, user_emb, item_emb, tune, train, k)
        curve[str(nprobe)] = round(recall_at_k(user_emb, item_emb, tune, got, exact_tune), 4)
        if curve[str(nprobe)] >= target_recall or nprobe >= ivf.nlist:
            break
        nprobe = next_nprobe(nprobe, ivf.nlist)
    t_tune = time.perf_counter() - t_tune
    t1 = time.perf_counter()
    exact = topk_items(user_emb, item_emb, sample, train, k)
    t_exact = time.perf_counter() - t1
    t2 = time.perf_counter()
    got = ann_topk(index, user_emb, item_emb, sample, train, k)
    t_ann = time.perf_counter() - t2
    recall = round(recall_at_k(user_emb, item_emb, sample, got, exact), 4)
    info = {
        "index_type": f"{spec} (inner product)",
        "nlist": int(ivf.nlist),
        "cell_rows": round(num_items / ivf.nlist, 1),
        "nprobe": int(nprobe),
        "target_recall": target_recall,
        "tuning_recall": curve,
        "tuning_users": int(len(tune)),
        f"ann_recall@{k}": recall,
        "recall_users": int(len(sample)),
        "seconds_build": round(t_build, 2),
        "seconds_tune": round(t_tune, 2),
        "seconds_per_user_exact": t_exact / len(sample),
        "seconds_per_user_ann": t_ann / len(sample),
        "speedup_vs_exact": round(t_exact / max(t_ann, 1e-9), 2),
    }
    logger.info("ANN index %s: nprobe=%d (tuning %s), ann_recall@%d=%.4f on %d users, %.1fx faster than exact",
                spec, nprobe, curve, k, recall, len(sample), info["speedup_vs_exact"])
    return AnnRanker(index, info)
