"""``recgoat export``: what a serving system needs from a run, keyed by *original* ids.

Layout of the export artifact (manifest last)::

    users/part-<start>.parquet            user_id string, embedding fixed_size_list<float32>[d]
    items/part-<start>.parquet            item_id string, embedding fixed_size_list<float32>[d], cold bool
    recommendations/part-<start>.parquet  user_id string, rank int16, item_id string, score float32
    index/items.faiss                     FAISS index over the item embeddings (row = item id),
                                          IVF-Flat (constant-size cells, nprobe tuned and
                                          set) above export.ann_above items, flat below

Scores are dot products of the exported embeddings, so ``score = <user, item>`` can be checked
or recomputed downstream. Recommendations never contain a user's training items; cold items (no
training interaction) are ranked like any other item through their modality representation.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from recgoat_dist.data.dataset import Dataset, chunk_ranges
from recgoat_dist.eval.metrics import UserItems, topk_items
from recgoat_dist.export.ranking import build_exact_index, choose_engine, tune_ann, write_index
from recgoat_dist.storage import Artifact, ArtifactWriter, join

logger = logging.getLogger(__name__)
ROWS_PER_FILE = 262_144


def embedding_table(id_name: str, ids: np.ndarray, emb: np.ndarray, **extra) -> pa.Table:
    values = pa.FixedSizeListArray.from_arrays(pa.array(emb.astype(np.float32).ravel()), emb.shape[1])
    return pa.table({id_name: pa.array(ids, pa.string()), "embedding": values,
                     **{k: pa.array(v) for k, v in extra.items()}})


def recommendation_table(user_emb: torch.Tensor, item_emb: torch.Tensor, users: np.ndarray, top: np.ndarray,
                         train: UserItems, user_ids: np.ndarray, item_ids: np.ndarray) -> pa.Table:
    """Rows for the ranked items ``top`` (len(users), k) of ``users``; -1 and training items dropped."""
    # A user who has trained on almost the whole catalog gets fewer than k items.
    valid = (top >= 0) & ~train.contains(users[:, None], np.maximum(top, 0))
    scores = torch.einsum("ud,ukd->uk", user_emb[torch.from_numpy(users)],
                          item_emb[torch.from_numpy(np.maximum(top, 0))]).numpy()
    rows, cols = np.nonzero(valid)
    return pa.table({"user_id": pa.array(user_ids[users[rows]], pa.string()),
                     "rank": pa.array(cols.astype(np.int16)),
                     "item_id": pa.array(item_ids[top[rows, cols]], pa.string()),
                     "score": pa.array(scores[rows, cols].astype(np.float32))})


def write_embeddings(writer: ArtifactWriter, user_ids: np.ndarray, item_ids: np.ndarray, users_np: np.ndarray,
                     items_np: np.ndarray, cold: np.ndarray) -> None:
    """``users/`` and ``items/`` embedding parts, keyed by original ids."""
    for lo, hi in chunk_ranges(len(users_np), ROWS_PER_FILE):
        writer.write_table(f"users/part-{lo:012d}.parquet", embedding_table("user_id", user_ids[lo:hi], users_np[lo:hi]))
    for lo, hi in chunk_ranges(len(items_np), ROWS_PER_FILE):
        writer.write_table(f"items/part-{lo:012d}.parquet", embedding_table(
            "item_id", item_ids[lo:hi], items_np[lo:hi], cold=cold[lo:hi]))


def write_recommendations(writer: ArtifactWriter, user_emb: torch.Tensor, item_emb: torch.Tensor,
                          train: UserItems, user_ids: np.ndarray, item_ids: np.ndarray, top_k: int, *,
                          user_block: int = 4096, engine: str = "auto", ann_above: int = 200_000,
                          target_recall: float = 0.97, recall_users: int = 2000, seed: int = 0,
                          hnsw_above: int | None = None) -> dict:
    """Rank the catalog for every user, block by block, and write ``recommendations/`` and
    ``index/items.faiss``; returns the manifest's ``ranking`` section.

    ``engine``: ``auto`` (exact up to ``ann_above`` items, the FAISS IVF index above), ``exact``
    or ``ann`` (see :mod:`recgoat_dist.export.ranking`). ``hnsw_above``: cells above which the
    index's coarse quantizer is HNSW (default ``graph.ivf.HNSW_ABOVE``; tests lower it).
    """
    num_users, num_items = user_emb.shape[0], item_emb.shape[0]
    engine, reason = choose_engine(engine, num_items, ann_above)
    logger.info("ranking engine %s: %s", engine, reason)
    k = min(top_k, num_items)
    t0 = time.perf_counter()
    if engine == "ann":
        extra = {} if hnsw_above is None else {"hnsw_above": hnsw_above}
        ranker = tune_ann(user_emb, item_emb, train, target_recall=target_recall,
                          recall_users=recall_users, seed=seed, **extra)
        info, index = dict(ranker.info), ranker.index
        rank = ranker.topk
    else:
        info, index = {"index_type": "Flat (inner product)"}, build_exact_index(item_emb.numpy())
        rank = lambda u_emb, i_emb, users, pairs, kk: topk_items(u_emb, i_emb, users, pairs, kk)  # noqa: E731
    t1 = time.perf_counter()
    for lo, hi in tqdm(list(chunk_ranges(num_users, user_block)), desc=f"recommendations ({engine})",
                       unit="block", mininterval=2):
        users = np.arange(lo, hi)
        top = rank(user_emb, item_emb, users, train, k)
        writer.write_table(f"recommendations/part-{lo:012d}.parquet", recommendation_table(
            user_emb, item_emb, users, top, train, user_ids, item_ids))
    t2 = time.perf_counter()
    index_size = write_index(writer, "index/items.faiss", index)
    logger.info("ranked %d users x %d items (%s) in %.1f s", num_users, num_items, engine, t2 - t1)
    return {"engine": engine, "reason": reason, "index": "index/items.faiss",
            "index_rows": "item id order (the rows of items/)", "index_bytes": int(index_size), **info,
            "seconds_prepare": round(t1 - t0, 2), "seconds_rank": round(t2 - t1, 2)}


def export_run(run_url: str, out: str, top_k: int = 100, checkpoint: str = "best",
               user_block: int = 4096, overwrite: bool = False, *, engine: str = "auto",
               ann_above: int = 200_000, target_recall: float = 0.97, recall_users: int = 2000) -> dict:
    """Write embeddings and top-``top_k`` recommendations of the run at ``run_url`` to ``out``.

    Embeddings come from :func:`run_embeddings`; ranking from :func:`write_recommendations`
    (``engine``/``ann_above``: exact scoring for small catalogs, a FAISS IVF index above).
    """
    from recgoat_dist.train.run import Run

    start = time.perf_counter()
    run = Run(run_url)
    v = run_embeddings(run, checkpoint)
    logger.info("embeddings of %d users and %d items ready in %.1f s", len(v.user), len(v.item),
                time.perf_counter() - start)
    dataset = Dataset(v.dataset_url)
    user_ids, item_ids = dataset.original_ids("user"), dataset.original_ids("item")
    users_np, items_np = v.user.numpy(), v.item.numpy()
    num_users, num_items = len(users_np), len(items_np)

    with ArtifactWriter(out, kind="export", overwrite=overwrite) as writer:
        write_embeddings(writer, user_ids, item_ids, users_np, items_np, v.cold)
        ranking = write_recommendations(writer, v.user, v.item, v.train, user_ids, item_ids, top_k,
                                        user_block=user_block, engine=engine, ann_above=ann_above,
                                        target_recall=target_recall, recall_users=recall_users)
        meta = {"run": run.url, "model": run.config.model.name, "checkpoint": v.checkpoint,
                "dataset": v.dataset_url, "num_users": num_users, "num_items": num_items,
                "dim": int(users_np.shape[1]), "top_k": min(top_k, num_items), "ranking": ranking}
        if "ann_recall@20" in ranking:
            meta["ann_recall@20"] = ranking["ann_recall@20"]
        manifest = writer.commit(meta)
    logger.info("exported %s to %s in %.1f s", run.url, out, time.perf_counter() - start)
    return manifest


def run_embeddings(run, checkpoint: str = "best") -> "RunVectors":
    """User and item embeddings of a run (the one place that asks a model for them).

    A single-process run is re-inferred from its ``checkpoint``; a distributed run is read from
    the final embeddings its workers wrote (``<run>/embeddings``), so no process needs the graph.
    """
    if run.artifact.get("distributed"):
        if checkpoint != "best":
            raise ValueError(f"{run.url} is a distributed run: only its evaluated epoch's embeddings "
                             f"(<run>/embeddings) can be exported, not checkpoint {checkpoint!r}")
        return _distributed_vectors(run)
    return _single_process_vectors(run, checkpoint)


@dataclass
class RunVectors:
    user: torch.Tensor          # (num_users, d), rows = dataset user ids
    item: torch.Tensor          # (num_items, d)
    cold: np.ndarray            # (num_items,) bool: no training interaction
    train: UserItems            # never recommended
    dataset_url: str
    checkpoint: str


def _single_process_vectors(run, checkpoint: str) -> RunVectors:
    from recgoat_dist.train.engine import infer_embeddings
    from recgoat_dist.train.inputs import load_inputs

    inputs = load_inputs(run.config)
    user, item = infer_embeddings(run.load_model(checkpoint), inputs, run.config.model.dim)
    return RunVectors(user, item, inputs.cold_items, inputs.train, inputs.dataset_url, checkpoint)


def _distributed_vectors(run) -> RunVectors:
    from recgoat_dist.train.distributed.embeddings import EMBEDDINGS_DIR

    art = Artifact(join(run.url, EMBEDDINGS_DIR), kind="embeddings")
    user = torch.empty(art["num_users"], art["dim"])
    item = torch.empty(art["num_items"], art["dim"])
    cold = np.zeros(art["num_items"], dtype=bool)
    for name, table in (("user", user), ("item", item)):
        seen = np.zeros(len(table), dtype=np.int64)
        for rel in art.files(f"{name}s/"):
            rows = art.read_table(rel)
            ids = torch.from_numpy(rows[f"{name}_id"].to_numpy().copy())   # Arrow buffers are read-only
            table[ids] = torch.from_numpy(np.stack(rows["embedding"].to_numpy(zero_copy_only=False)))
            np.add.at(seen, ids.numpy(), 1)
            if name == "item":
                cold[ids.numpy()] = rows["cold"].to_numpy(zero_copy_only=False)
        if (seen != 1).any():
            raise ValueError(f"{art.url}/{name}s/: {int((seen == 0).sum())} {name}s missing and "
                             f"{int((seen > 1).sum())} written more than once; the embeddings are incomplete")
    train = Dataset(art["dataset"]).interactions("train")
    pairs = UserItems.from_pairs(train["user_id"], train["item_id"], len(user), len(item))
    return RunVectors(user, item, cold, pairs, art["dataset"], art.get("checkpoint", "final"))
