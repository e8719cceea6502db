"""Final embeddings of a distributed run, written by the workers: ``<run>/embeddings``.

Each worker writes its own partition's users, with the vectors of the layer-wise full inference
(``DistEngine.vectors``); rank 0 also writes every item. No worker holds the graph or a layer
table: a file's users are finished from the servers' layer tables when that file is written
(:class:`~recgoat_dist.train.distributed.inference.UsersOnDemand`), so a worker holds one file's
users and the item vectors (items x dim). Rows are keyed by *dataset* ids (DGL
renumbers nodes when it partitions; the partitions' id maps undo that), so the artifact does not
depend on the partitioning. The workers only write data files; the driver publishes the manifest
(:func:`publish_embeddings`) once every worker has finished, so a reader never sees a partial set.
``recgoat export`` turns it into top-K recommendations by original id.

Layout (manifest last)::

    users/part-r<rank>-<start>.parquet   user_id int64, embedding fixed_size_list<float32>[d]
    items/part-<start>.parquet           item_id int64, embedding fixed_size_list<float32>[d], cold bool
"""
from __future__ import annotations

import logging
import time

import numpy as np
import pyarrow as pa
import torch

from recgoat_dist.data.dataset import chunk_ranges
from recgoat_dist.storage import MANIFEST, ArtifactWriter, exists, filesystem, join

logger = logging.getLogger(__name__)
EMBEDDINGS_DIR = "embeddings"
ROWS_PER_FILE = 262_144


def embedding_rows(id_name: str, ids: np.ndarray, emb: torch.Tensor, **extra) -> pa.Table:
    values = pa.FixedSizeListArray.from_arrays(pa.array(emb.numpy().astype(np.float32).ravel()), emb.shape[1])
    return pa.table({id_name: pa.array(ids, pa.int64()), "embedding": values,
                     **{k: pa.array(v) for k, v in extra.items()}})


def write_partition_embeddings(s, id_maps: str, out: str, users, items: torch.Tensor) -> dict:
    """Write this worker's rows under ``out``: ``users`` (its partition's, in ``own["user"]``
    order: a tensor, or :class:`UsersOnDemand`, sliced one file of rows at a time) and, on rank 0,
    ``items`` (all). Returns the files (no manifest)."""
    from recgoat_dist.graph import load_id_maps

    start = time.perf_counter()
    to_dataset = load_id_maps(id_maps)
    writer = ArtifactWriter(out, kind="embeddings")     # no commit here: the driver publishes
    user_ids = to_dataset["user"][s.own["user"].numpy()]
    for lo, hi in chunk_ranges(len(user_ids), ROWS_PER_FILE):
        writer.write_table(f"users/part-r{s.rank:04d}-{lo:012d}.parquet",
                           embedding_rows("user_id", user_ids[lo:hi], users[lo:hi]))
    if s.rank == 0:
        cold = s.inputs.item_cold.numpy()
        for lo, hi in chunk_ranges(len(items), ROWS_PER_FILE):
            writer.write_table(f"items/part-{lo:012d}.parquet", embedding_rows(
                "item_id", to_dataset["item"][lo:hi], items[lo:hi], cold=cold[lo:hi]))
    logger.info("rank %d wrote %d user embeddings in %.1f s", s.rank, len(user_ids), time.perf_counter() - start)
    return dict(writer.files)


def clear_embeddings(out: str) -> None:
    """Remove an earlier attempt's manifest, so a restarted run never shows a stale set."""
    if exists(join(out, MANIFEST)):
        fs, path = filesystem(out)
        fs.rm(join(path, MANIFEST))


def publish_embeddings(out: str, files: dict, meta: dict) -> dict:
    """Write the manifest of the files the workers wrote: the embeddings become visible."""
    writer = ArtifactWriter(out, kind="embeddings")
    writer.files.update(files)
    return writer.commit(meta)
