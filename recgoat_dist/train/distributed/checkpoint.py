"""Checkpoints of a distributed run, through Ray Train (local or ``s3://`` storage).

One checkpoint directory per epoch, written by all ranks together (Ray Train merges the files the
ranks report under the same ``checkpoint_dir_name``):

* ``dense.pt`` (rank 0): dense model and optimiser state, epoch, the loop's progress (history,
  early-stopping state);
* ``rank<r>.pt`` (every rank): the rows of the user/item ``DistEmbedding`` tables that partition
  ``r`` owns, the sparse optimiser's state for those rows (moments and step counts,
  :mod:`.row_adam`), and the rank's RNG states. Everything is read back with ``weights_only=True``.
* ``summary.json`` (rank 0, last epoch only): what the driver publishes (history, final
  metrics, per-worker records, embedding files). It travels in the checkpoint rather than in the
  reported metrics, because Ray logs every reported metrics dict on every worker.

Resuming (after a worker failure, or by re-running with the same output URL) restores the ``.pt``
files and continues from the epoch after the saved one.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Optional

import numpy as np
import torch

DENSE = "dense.pt"
SUMMARY = "summary.json"


def _rank_file(rank: int) -> str:
    return f"rank{rank}.pt"


def save(directory: str, rank: int, partition_nodes: dict, tables, model, dense_optimizer, progress,
         rng: np.random.Generator) -> None:
    """Write this rank's share of the checkpoint into ``directory`` (a local temp dir).

    Plain containers and tensors only, so :func:`load` reads them with ``weights_only=True``."""
    shard = {
        "epoch": progress.next_epoch - 1,
        "tables": {nt: {"ids": ids, "rows": tables.tables[nt].weight[ids]}
                   for nt, ids in partition_nodes.items()},
        "row_adam": tables.optimizer.state_rows(partition_nodes),
        "rng": {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()},
    }
    torch.save(shard, os.path.join(directory, _rank_file(rank)))
    if rank == 0:
        torch.save({"epoch": progress.next_epoch - 1, "model": model.state_dict(),
                    "optimizer": dense_optimizer.state_dict() if dense_optimizer is not None else {},
                    "progress": progress.to_dict()}, os.path.join(directory, DENSE))


def save_summary(directory: str, summary: dict) -> None:
    """Rank 0's end-of-run summary, next to its last checkpoint files."""
    with open(os.path.join(directory, SUMMARY), "w") as f:
        json.dump(summary, f, default=_plain)


def read_summary(checkpoint) -> dict:
    """The summary saved with a run's last checkpoint (a Ray ``Checkpoint``; any filesystem)."""
    with _fetch(checkpoint, [SUMMARY]) as directory:
        with open(os.path.join(directory, SUMMARY)) as f:
            return json.load(f)


def _plain(value):
    if isinstance(value, (np.generic, np.ndarray, torch.Tensor)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def load(checkpoint, rank: int, tables, model, dense_optimizer, rng: np.random.Generator):
    """Restore from a Ray ``Checkpoint``; returns the :class:`~recgoat_dist.train.loop.Progress`."""
    from recgoat_dist.train.loop import Progress

    with _fetch(checkpoint, [DENSE, _rank_file(rank)]) as directory:
        state = torch.load(os.path.join(directory, DENSE), weights_only=True)
        shard = torch.load(os.path.join(directory, _rank_file(rank)), weights_only=True)
    model.load_state_dict(state["model"])
    if dense_optimizer is not None:
        dense_optimizer.load_state_dict(state["optimizer"])
    for nt, saved in shard["tables"].items():
        tables.tables[nt].weight[saved["ids"]] = saved["rows"]
    if "row_adam" not in shard:
        raise ValueError(f"checkpoint {checkpoint.path}: rank {rank}'s sparse optimiser state is in DGL's "
                         "SparseAdam layout (an older recgoat_dist); start the run again with --overwrite")
    tables.optimizer.load_state_rows({nt: saved["ids"] for nt, saved in shard["tables"].items()}, shard["row_adam"])
    rng.bit_generator.state = shard["rng"]["numpy"]
    torch.set_rng_state(shard["rng"]["torch"])
    return Progress(**state["progress"])


class _fetch:
    """Download only the named files of a checkpoint (not every rank's shard) to a temp dir."""

    def __init__(self, checkpoint, names: list[str]):
        self.checkpoint, self.names = checkpoint, names

    def __enter__(self) -> str:
        import pyarrow.fs as pafs

        self._tmp = tempfile.TemporaryDirectory(prefix="recgoat-ckpt-")
        fs, root = self.checkpoint.filesystem, self.checkpoint.path
        for name in self.names:
            pafs.copy_files(f"{root}/{name}", os.path.join(self._tmp.name, name),
                            source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        return self._tmp.name

    def __exit__(self, *exc) -> None:
        self._tmp.cleanup()


def report(metrics: dict, epoch: int, write: Optional[Any] = None) -> None:
    """``ray.train.report`` with this rank's checkpoint files (every rank calls it each epoch)."""
    import ray.train
    from ray.train import Checkpoint

    with tempfile.TemporaryDirectory(prefix="recgoat-ckpt-") as directory:
        if write is not None:
            write(directory)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(directory),
                         checkpoint_dir_name=f"epoch_{epoch:04d}")
