"""Checkpoints: ``torch.save`` of plain containers, read back with ``weights_only=True``.

A checkpoint holds tensors, numbers, strings, lists and dicts only (no pickled objects), so
loading it cannot run code. Training state: model and optimiser state dicts, the epoch just
finished, the history, the early-stopping state and the random generators' states.
"""
from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch

from recgoat_dist.storage import StorageError, exists, filesystem, read_bytes


def to_bytes(state: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def from_bytes(data: bytes) -> dict[str, Any]:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def save(url: str, state: dict[str, Any]) -> None:
    """Write a checkpoint to ``url`` (any fsspec URL) via a temporary name, then rename when local."""
    data = to_bytes(state)
    fs, path = filesystem(url)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        tmp = f"{path}.tmp"
        with fs.open(tmp, "wb") as fh:
            fh.write(data)
        fs.mv(tmp, path)           # a crash mid-write leaves the previous checkpoint intact
    else:
        with fs.open(path, "wb") as fh:  # object stores publish a PUT atomically
            fh.write(data)


def load(url: str) -> dict[str, Any]:
    if not exists(url):
        raise StorageError(f"{url}: no checkpoint")
    return from_bytes(read_bytes(url))


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    return {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()}


def restore_rng(rng: np.random.Generator, state: dict[str, Any]) -> None:
    rng.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"])
