"""``recgoat export``: what a serving system needs from a run, keyed by *original* ids.

Layout of the export artifact (manifest last)::

    users/part-<start>.parquet            user_id string, embedding fixed_size_list<float32>[d]
    items/part-<start>.parquet            item_id string, embedding fixed_size_list<float32>[d], cold bool
    recommendations/part-<start>.parquet  user_id string, rank int16, item_id string, score float32

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
from recgoat_dist.storage import Artifact, ArtifactWriter, join

logger = logging.getLogger(__name__)
ROWS_PER_FILE = 262_144


def embedding_table(id_name: str, ids: np.ndarray, emb: np.ndarray, **extra) -> pa.Table:
    values = pa.FixedSizeListArray.from_arrays(pa.array(emb.astype(np.float32).ravel()), emb.shape[1])
    return pa.table({id_name: pa.array(ids, pa.string()), "embedding": values,
                     **{k: pa.array(v) for k, v in extra.items()}})


def recommendation_table(user_emb: torch.Tensor, item_emb: torch.Tensor, users: np.ndarray, train,
                         k: int, user_ids: np.ndarray, item_ids: np.ndarray) -> pa.Table:
    """Top-``k`` items of ``users`` (rows of ``user_emb`` and ``train``), never a training item."""
    top = topk_items(user_emb, item_emb, users, train, k)
    # A user who has trained on almost the whole catalog gets fewer than k items.
    valid = ~train.contains(users[:, None], top)
    scores = torch.einsum("ud,ukd->uk", user_emb[users], item_emb[torch.from_numpy(top)]).numpy()
    rows, cols = np.nonzero(valid)
    return pa.table({"user_id": pa.array(user_ids[users[rows]], pa.string()),
                     "rank": pa.array(cols.astype(np.int16)),
                     "item_id": pa.array(item_ids[top[rows, cols]], pa.string()),
                     "score": pa.array(scores[rows, cols].astype(np.float32))})


def export_run(run_url: str, out: str, top_k: int = 100, checkpoint: str = "best",
               user_block: int = 4096, overwrite: bool = False) -> dict:
    """Write embeddings and top-``top_k`` recommendations of the run at ``run_url`` to ``out``.

    A single-process run is re-inferred from its ``checkpoint``; a distributed run is exported from
    the final embeddings its workers wrote (``<run>/embeddings``), so no process needs the graph.
    """
    from recgoat_dist.train.run import Run

    start = time.perf_counter()
    run = Run(run_url)
    if run.artifact.get("distributed"):
        if checkpoint != "best":
            raise ValueError(f"{run_url} is a distributed run: only its evaluated epoch's embeddings "
                             f"(<run>/embeddings) can be exported, not checkpoint {checkpoint!r}")
        v = _distributed_vectors(run)
    else:
        v = _single_process_vectors(run, checkpoint)
    logger.info("embeddings of %d users and %d items ready in %.1f s", len(v.user), len(v.item),
                time.perf_counter() - start)
    dataset = Dataset(v.dataset_url)
    user_ids, item_ids = dataset.original_ids("user"), dataset.original_ids("item")
    users_np, items_np = v.user.numpy(), v.item.numpy()
    num_users, num_items = len(users_np), len(items_np)

    with ArtifactWriter(out, kind="export", overwrite=overwrite) as writer:
        for lo, hi in chunk_ranges(num_users, ROWS_PER_FILE):
            writer.write_table(f"users/part-{lo:012d}.parquet", embedding_table("user_id", user_ids[lo:hi], users_np[lo:hi]))
        for lo, hi in chunk_ranges(num_items, ROWS_PER_FILE):
            writer.write_table(f"items/part-{lo:012d}.parquet", embedding_table(
                "item_id", item_ids[lo:hi], items_np[lo:hi], cold=v.cold[lo:hi]))
        k = min(top_k, num_items)
        for lo, hi in tqdm(list(chunk_ranges(num_users, user_block)), desc="recommendations",
                           unit="block", mininterval=2):
            writer.write_table(f"recommendations/part-{lo:012d}.parquet", recommendation_table(
                v.user, v.item, np.arange(lo, hi), v.train, k, user_ids, item_ids))
        manifest = writer.commit({"run": run.url, "model": run.config.model.name, "checkpoint": v.checkpoint,
                                  "dataset": v.dataset_url, "num_users": num_users, "num_items": num_items,
                                  "dim": int(users_np.shape[1]), "top_k": k})
    logger.info("exported %s to %s in %.1f s", run.url, out, time.perf_counter() - start)
    return manifest


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
