"""Read side of a graph artifact (``recgoat graph``).

Layout under the graph URL::

    edges/<etype>/part-NNNNN.parquet   src int64, dst int64, weight float32
    manifest.json                      dataset, num_users, num_items, num_edges, knn_k, ...

Stored edge types: ``rates`` (user -> item, training interactions, weight = rating),
``knn_<modality>`` (item -> item, weight = cosine) and ``uu`` (user -> user, weight = cosine).
``rated_by`` (item -> user) is the reverse of ``rates``: derived on read, never stored.
"""
from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from recgoat_dist.data.dataset import DataError
from recgoat_dist.storage import Artifact

EDGE_COLUMNS = ["src", "dst", "weight"]
REVERSE = {"rated_by": "rates"}


def canonical_url(url: str) -> str:
    """A plain local path made absolute (manifests are read from other working directories)."""
    url = str(url).rstrip("/")
    return url if "://" in url else os.path.abspath(url)


def edge_ntypes(etype: str) -> tuple[str, str]:
    """(source node type, destination node type) of an edge type."""
    if etype == "rates":
        return "user", "item"
    if etype == "rated_by":
        return "item", "user"
    if etype == "uu":
        return "user", "user"
    if etype.startswith("knn_"):
        return "item", "item"
    raise DataError(f"unknown edge type {etype!r}")


class GraphArtifact:
    """A published graph: edge lists by type plus the URL of the dataset it was built from."""

    def __init__(self, url: str):
        self.artifact = Artifact(url, kind="graph")
        self.url = self.artifact.url
        m = self.artifact.manifest
        self.num_users: int = m["num_users"]
        self.num_items: int = m["num_items"]
        self.dataset_url: str = m["dataset"]
        self.num_edges: dict[str, int] = m["num_edges"]
        self.knn_k: int = m["knn_k"]

    @property
    def manifest(self) -> dict:
        return self.artifact.manifest

    @property
    def edge_types(self) -> list[str]:
        """Stored edge types (``rated_by`` is derived from ``rates`` and not listed)."""
        return list(self.num_edges)

    def _parts(self, etype: str) -> list[str]:
        if etype not in self.num_edges:
            raise DataError(f"{self.url}: no edge type {etype!r}; available: {self.edge_types}")
        return sorted(self.artifact.files(f"edges/{etype}/"))

    def iter_edges(self, etype: str) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``(src, dst, weight)`` chunks, one per part file, in stored order."""
        stored = REVERSE.get(etype, etype)
        for rel in self._parts(stored):
            table = self.artifact.read_table(rel, columns=EDGE_COLUMNS)
            src, dst, w = (table[c].to_numpy() for c in EDGE_COLUMNS)
            yield (dst, src, w) if etype in REVERSE else (src, dst, w)

    def edges(self, etype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All edges of one type as numpy arrays ``(src int64, dst int64, weight float32)``."""
        chunks = list(self.iter_edges(etype))
        if not chunks:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        return tuple(np.concatenate(c) for c in zip(*chunks))  # type: ignore[return-value]
