"""The export of a distributed run, written by the workers: ``<run>/export`` (``recgoat export``'s layout).

Each worker ranks its own partition's users against every item, with the vectors of the layer-wise
full inference (``inference.final_vectors``), and writes its users' embeddings and top-K
recommendations; rank 0 also writes the item embeddings. No worker holds the graph, and no worker
holds more than its own users and the catalogue's item vectors. The workers only write data files;
the driver publishes the manifest (:func:`publish_export`) once every worker has finished, so a
reader never sees a partial export.

Ids are mapped back twice: partitioned id (DGL renumbers nodes) -> dataset id (the partitions'
id maps) -> original id (the dataset's id maps).
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch

from recgoat_dist.eval.metrics import UserItems
from recgoat_dist.storage import MANIFEST, ArtifactWriter, exists, filesystem, join

logger = logging.getLogger(__name__)
EXPORT_DIR = "export"
ROWS_PER_FILE = 262_144


def export_partition(s, loop: dict, out: str, top_k: int) -> dict:
    """Write this worker's part of the export under ``out``; returns the files it wrote (collective)."""
    from recgoat_dist.data.dataset import Dataset
    from recgoat_dist.export.recommendations import _embedding_table, recommendation_table
    from recgoat_dist.graph import load_id_maps
    from recgoat_dist.train.distributed.inference import final_vectors

    start = time.perf_counter()
    users, items = final_vectors(s.model, s.graph, s.own, s.store, s.inputs.degree["item"])
    new_to_dataset = load_id_maps(loop["id_maps"])
    dataset = Dataset(loop["dataset"])
    user_ids = dataset.original_ids("user")[new_to_dataset["user"][s.own["user"].numpy()]]
    item_ids = dataset.original_ids("item")[new_to_dataset["item"]]
    rows, train_items = s.eval_data["train"]
    train = UserItems.from_pairs(rows, train_items, len(user_ids), len(item_ids))
    writer = ArtifactWriter(out, kind="export")         # no commit here: the driver publishes
    tag = f"r{s.rank:04d}"
    for lo in range(0, len(user_ids), ROWS_PER_FILE):
        hi = min(lo + ROWS_PER_FILE, len(user_ids))
        writer.write_table(f"users/part-{tag}-{lo:012d}.parquet",
                           _embedding_table("user_id", user_ids[lo:hi], users[lo:hi].numpy()))
    if s.rank == 0:
        cold = (torch.cat([s.inputs.degree["item"][torch.arange(i, min(i + 65536, len(item_ids)))]
                           for i in range(0, len(item_ids), 65536)]) == 0).numpy()
        for lo in range(0, len(item_ids), ROWS_PER_FILE):
            hi = min(lo + ROWS_PER_FILE, len(item_ids))
            writer.write_table(f"items/part-{lo:012d}.parquet", _embedding_table(
                "item_id", item_ids[lo:hi], items[lo:hi].numpy(), cold=cold[lo:hi]))
    for lo in range(0, len(user_ids), 4096):
        block = np.arange(lo, min(lo + 4096, len(user_ids)))
        writer.write_table(f"recommendations/part-{tag}-{lo:012d}.parquet",
                           recommendation_table(users, items, block, train, min(top_k, len(item_ids)),
                                                user_ids, item_ids))
    logger.info("rank %d exported %d users in %.1f s", s.rank, len(user_ids), time.perf_counter() - start)
    return dict(writer.files)


def clear_export(out: str) -> None:
    """Remove an earlier attempt's export manifest, so a restarted run never shows a stale one."""
    if exists(join(out, MANIFEST)):
        fs, path = filesystem(out)
        fs.rm(join(path, MANIFEST))


def publish_export(out: str, files: dict, meta: dict) -> dict:
    """Write the manifest of the files the workers wrote: the export becomes visible."""
    writer = ArtifactWriter(out, kind="export")
    writer.files.update(files)
    return writer.commit(meta)
