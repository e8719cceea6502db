"""The canonical dataset: Parquet files plus a manifest, on any fsspec URL.

Layout under the dataset URL (ids are contiguous integers; original ids live in the id maps)::

    interactions/part-00000.parquet   user_id int64, item_id int64, rating float32,
                                      timestamp int64 (nullable), split int8 (0 train, 1 valid, 2 test)
    item_features/<name>/part-00000.parquet   item_id int64, embedding fixed_size_list<float32>[dim]
    user_features/<name>/part-00000.parquet   user_id int64, embedding fixed_size_list<float32>[dim]
    id_maps/users.parquet, id_maps/items.parquet   <kind>_id int64, original_id string
    manifest.json                     written last (see :mod:`recgoat_dist.storage`)

Writers stream: interactions and features arrive in chunks and are checked chunk by chunk, so
memory is bounded by the chunk size, not by the number of interactions.
"""
from __future__ import annotations

import itertools
import logging
import math
import re
import os
import shutil
import tempfile
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa

from recgoat_dist.storage import Artifact, ArtifactWriter

logger = logging.getLogger(__name__)

SPLITS = {"train": 0, "valid": 1, "test": 2}
INTERACTION_SCHEMA = pa.schema([
    ("user_id", pa.int64()),
    ("item_id", pa.int64()),
    ("rating", pa.float32()),
    ("timestamp", pa.int64()),
    ("split", pa.int8()),
])
ID_MAP_KINDS = ("user", "item")
# Modalities the model knows how to use; a suffix names the extractor (e.g. audio_whisper).
MODALITY_NAME = re.compile(r"^(text|visual|audio)(_[a-z0-9]+)?$")


class DataError(ValueError):
    """Bad input: the message names the file, the column or row, and the problem."""


def feature_schema(kind: str, dim: int) -> pa.Schema:
    return pa.schema([(f"{kind}_id", pa.int64()), ("embedding", pa.list_(pa.float32(), dim))])


def check_finite(name: str, source: str, start: int, block: np.ndarray) -> None:
    bad = ~np.isfinite(block)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(f"{source}: modality {name!r} has {'NaN' if np.isnan(block[row, col]) else 'inf'} "
                        f"at row {start + row}, column {col}")


class _DuplicateFinder:
    """Finds a repeated (user, item) pair with memory bounded by the bucket size.

    Keys are hashed into on-disk buckets while chunks stream past; each bucket is then checked
    on its own. This is what lets a 100M-interaction file be validated in bounded memory.
    """

    def __init__(self, num_items: int, num_buckets: int = 64):
        self.num_items = num_items
        self.num_buckets = num_buckets
        self.dir = tempfile.mkdtemp(prefix="recgoat-dups-")
        self.handles = [open(os.path.join(self.dir, f"{b}.bin"), "wb") for b in range(num_buckets)]

    def add(self, users: np.ndarray, items: np.ndarray) -> None:
        keys = users.astype(np.int64) * self.num_items + items.astype(np.int64)
        buckets = (keys * 0x9E3779B1) % self.num_buckets  # spread sequential ids over buckets
        order = np.argsort(buckets, kind="stable")
        keys, buckets = keys[order], buckets[order]
        bounds = np.searchsorted(buckets, np.arange(self.num_buckets + 1))
        for b in range(self.num_buckets):
            if bounds[b + 1] > bounds[b]:
                self.handles[b].write(keys[bounds[b]:bounds[b + 1]].tobytes())

    def close(self) -> None:
        for fh in self.handles:
            fh.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def first_duplicate(self) -> tuple[int, int] | None:
        for fh in self.handles:
            fh.close()
        try:
            for b in range(self.num_buckets):
                keys = np.fromfile(os.path.join(self.dir, f"{b}.bin"), dtype=np.int64)
                keys.sort()
                dup = np.nonzero(keys[1:] == keys[:-1])[0]
                if dup.size:
                    key = int(keys[dup[0]])
                    return key // self.num_items, key % self.num_items
            return None
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


class DatasetWriter:
    """Streams a canonical dataset to ``url``; :meth:`commit` validates and publishes it.

    ``source`` names the input in error messages (e.g. the .inter file).
    """

    def __init__(self, url: str, num_users: int, num_items: int, source: str = "input",
                 overwrite: bool = False):
        self.out = ArtifactWriter(url, kind="dataset", overwrite=overwrite)
        self.url = self.out.url
        self.num_users, self.num_items, self.source = int(num_users), int(num_items), source
        self.split_counts = np.zeros(3, dtype=np.int64)
        self.train_users = np.zeros(self.num_users, dtype=bool)
        self.modalities: dict[str, dict] = {}
        self.user_modalities: dict[str, dict] = {}
        self._feature_rows: dict[tuple[str, str], int] = {}
        self._parts = 0
        self._dups = _DuplicateFinder(max(self.num_items, 1))

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._dups.close()
        self.out.__exit__(exc_type, exc, tb)

    def add_interactions(self, table: pa.Table, first_row: int = 0) -> None:
        """Append a chunk (columns of :data:`INTERACTION_SCHEMA`; timestamp may be absent)."""
        if "timestamp" not in table.column_names:
            table = table.append_column("timestamp", pa.nulls(table.num_rows, pa.int64()))
        table = table.select(INTERACTION_SCHEMA.names).cast(INTERACTION_SCHEMA)
        for column, limit in (("user_id", self.num_users), ("item_id", self.num_items)):
            values = table[column].to_numpy()
            bad = np.nonzero((values < 0) | (values >= limit))[0]
            if bad.size:
                raise DataError(f"{self.source}: row {first_row + bad[0]}: column {column} = "
                                f"{values[bad[0]]} is out of range [0, {limit})")
        split = table["split"].to_numpy()
        bad = np.nonzero((split < 0) | (split > 2))[0]
        if bad.size:
            raise DataError(f"{self.source}: row {first_row + bad[0]}: column split = {split[bad[0]]} "
                            "is not 0 (train), 1 (valid) or 2 (test)")
        self.split_counts += np.bincount(split, minlength=3)[:3]
        self.train_users[table["user_id"].to_numpy()[split == 0]] = True
        self._dups.add(table["user_id"].to_numpy(), table["item_id"].to_numpy())
        self.out.write_table(f"interactions/part-{self._parts:05d}.parquet", table)
        self._parts += 1

    def add_features(self, kind: str, name: str, start: int, block: np.ndarray,
                     source: str | None = None) -> None:
        """Append rows ``start .. start+len(block)`` of a ``kind`` ('item'|'user') modality."""
        block = np.asarray(block)
        source = source or self.source
        if not MODALITY_NAME.match(name):
            raise DataError(f"{source}: unknown modality name {name!r}: expected text, visual or audio, "
                            "optionally with a suffix such as audio_whisper")
        if block.ndim != 2 or block.shape[1] == 0:
            raise DataError(f"{source}: modality {name!r} must be a 2-D array, got shape {block.shape}")
        check_finite(name, source, start, block)
        registry = self.modalities if kind == "item" else self.user_modalities
        info = registry.setdefault(name, {"dim": int(block.shape[1]), "dtype": "float32",
                                          "source_dtype": str(block.dtype), "source": os.path.basename(source)})
        if info["dim"] != block.shape[1]:
            raise DataError(f"{source}: modality {name!r} has {block.shape[1]} columns, expected {info['dim']}")
        expected = self._feature_rows.get((kind, name), 0)
        if start != expected:
            raise DataError(f"{source}: modality {name!r} chunk starts at row {start}, expected {expected}")
        ids = np.arange(start, start + len(block), dtype=np.int64)
        values = pa.FixedSizeListArray.from_arrays(pa.array(block.astype(np.float32, copy=False).ravel()),
                                                   block.shape[1])
        limit = self.num_items if kind == "item" else self.num_users
        if start + len(block) > limit:
            raise DataError(f"{source}: modality {name!r} has more than {limit} rows "
                            f"(one per {kind} expected)")
        self.out.write_table(f"{kind}_features/{name}/part-{start:012d}.parquet",
                             pa.table([pa.array(ids), values], schema=feature_schema(kind, block.shape[1])))
        self._feature_rows[(kind, name)] = start + len(block)

    def add_id_map(self, kind: str, original_ids: Iterable, slice_rows: int = 1 << 20) -> None:
        """Original ids by contiguous id; consumed in slices so a 10M-id generator stays small."""
        iterator, chunks = iter(original_ids), []
        while True:
            block = [str(x) for x in itertools.islice(iterator, slice_rows)]
            if not block:
                break
            chunks.append(pa.array(block, pa.string()))
        original = pa.chunked_array(chunks, pa.string())
        expected = self.num_users if kind == "user" else self.num_items
        if len(original) != expected:
            raise DataError(f"{self.source}: {kind} id map has {len(original)} rows, expected {expected}")
        ids = pa.array(np.arange(expected, dtype=np.int64))
        self.out.write_table(f"id_maps/{kind}s.parquet",
                             pa.table({f"{kind}_id": ids, "original_id": original}))

    def commit(self, extra: dict | None = None) -> dict:
        dup = self._dups.first_duplicate()
        if dup is not None:
            raise DataError(f"{self.source}: duplicate (user_id, item_id) row: ({dup[0]}, {dup[1]})")
        if self.split_counts[0] == 0:
            raise DataError(f"{self.source}: column split: the train split (0) is empty")
        for (kind, name), rows in self._feature_rows.items():
            expected = self.num_items if kind == "item" else self.num_users
            if rows != expected:
                source = (self.modalities if kind == "item" else self.user_modalities)[name]["source"]
                raise DataError(f"{source}: modality {name!r} has {rows} rows, expected one per {kind} "
                                f"({expected})")
        for kind in ID_MAP_KINDS:
            if f"id_maps/{kind}s.parquet" not in self.out.files:
                self.add_id_map(kind, range(self.num_users if kind == "user" else self.num_items))
        meta = {
            "num_users": self.num_users,
            "num_items": self.num_items,
            "num_interactions": int(self.split_counts.sum()),
            "splits": {name: int(self.split_counts[i]) for name, i in SPLITS.items()},
            "modalities": self.modalities,
            "user_modalities": self.user_modalities,
            "users_without_train": int((~self.train_users).sum()),
            **(extra or {}),
        }
        return self.out.commit(meta)


class Dataset:
    """Read side of a canonical dataset (checksums verified on every read)."""

    def __init__(self, url: str):
        self.artifact = Artifact(url, kind="dataset")
        self.url = self.artifact.url
        m = self.artifact.manifest
        self.num_users: int = m["num_users"]
        self.num_items: int = m["num_items"]
        self.num_interactions: int = m["num_interactions"]
        self.splits: dict[str, int] = m["splits"]
        self.modalities: dict[str, dict] = m["modalities"]
        self.user_modalities: dict[str, dict] = m["user_modalities"]

    @property
    def manifest(self) -> dict:
        return self.artifact.manifest

    def iter_interactions(self, splits: Iterable[str] | None = None,
                          columns: list[str] | None = None) -> Iterator[pa.Table]:
        """Yield interaction chunks (one per part file), optionally restricted to some splits."""
        wanted = None if splits is None else np.array([SPLITS[s] for s in splits], dtype=np.int8)
        read_cols = None if columns is None else sorted(set(columns) | {"split"})
        for rel in sorted(self.artifact.files("interactions/")):
            table = self.artifact.read_table(rel, columns=read_cols)
            if wanted is not None:
                mask = np.isin(table["split"].to_numpy(), wanted)
                table = table.filter(pa.array(mask))
            yield table if columns is None else table.select(columns)

    def interactions(self, split: str | None = None) -> dict[str, np.ndarray]:
        """All interactions of one split (or all) as numpy arrays: user_id, item_id, rating, split."""
        cols = ["user_id", "item_id", "rating", "split"]
        chunks = list(self.iter_interactions(None if split is None else [split], cols))
        if not chunks:
            return {c: np.zeros(0, dtype=np.int64) for c in cols}
        table = pa.concat_tables(chunks)
        return {c: table[c].to_numpy() for c in cols}

    def _features(self, kind: str, name: str) -> Iterator[np.ndarray]:
        registry = self.modalities if kind == "item" else self.user_modalities
        if name not in registry:
            raise DataError(f"{self.url}: unknown {kind} modality {name!r}; "
                            f"available: {sorted(registry) or 'none'}")
        dim = registry[name]["dim"]
        for rel in sorted(self.artifact.files(f"{kind}_features/{name}/")):
            column = self.artifact.read_table(rel, columns=["embedding"])["embedding"].combine_chunks()
            yield column.values.to_numpy(zero_copy_only=False).reshape(-1, dim)

    def iter_features(self, kind: str, name: str) -> Iterator[np.ndarray]:
        """Features of one ``kind`` ('item' | 'user') modality in row blocks (in id order)."""
        return self._features(kind, name)

    def iter_item_features(self, name: str) -> Iterator[np.ndarray]:
        """Item features of one modality in row blocks (in item id order)."""
        return self._features("item", name)

    def item_features(self, name: str) -> np.ndarray:
        """(num_items, dim) float32 features of one item modality."""
        return np.concatenate(list(self._features("item", name)), axis=0)

    def user_features(self, name: str) -> np.ndarray:
        """(num_users, dim) float32 features of one user modality."""
        return np.concatenate(list(self._features("user", name)), axis=0)

    def original_ids(self, kind: str) -> np.ndarray:
        """Original ids (strings), indexed by contiguous id, for kind 'user' or 'item'."""
        table = self.artifact.read_table(f"id_maps/{kind}s.parquet")
        return table["original_id"].to_numpy(zero_copy_only=False)


def chunk_ranges(n: int, chunk: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` pairs covering ``range(n)`` in blocks of ``chunk``."""
    for i in range(max(math.ceil(n / chunk), 0)):
        yield i * chunk, min(n, (i + 1) * chunk)


def add_modality(url: str, kind: str, name: str, blocks: Iterable[np.ndarray], source: str,
                 extra: dict | None = None) -> dict:
    """Add an item or user modality to a published dataset.

    The new feature files are written first (invisible to readers, since the old manifest does
    not list them); the manifest is then rewritten with the modality added. On any error the new
    files are deleted and the dataset stays as it was.
    """
    import json
    import posixpath

    dataset = Dataset(url)
    registry_key = "modalities" if kind == "item" else "user_modalities"
    if name in dataset.manifest[registry_key]:
        raise DataError(f"{url}: {kind} modality {name!r} already exists; choose another --name")
    writer = DatasetWriter.__new__(DatasetWriter)     # reuse the chunk checks, not the artifact
    writer.num_users, writer.num_items, writer.source = dataset.num_users, dataset.num_items, source
    writer.modalities, writer.user_modalities, writer._feature_rows = {}, {}, {}
    writer.out = _AppendingWriter(dataset)
    try:
        start = 0
        for block in blocks:
            writer.add_features(kind, name, start, block, source=source)
            start += len(block)
        expected = dataset.num_items if kind == "item" else dataset.num_users
        if start != expected:
            raise DataError(f"{source}: modality {name!r} has {start} rows, expected one per {kind} ({expected})")
        manifest = dict(dataset.manifest)
        manifest["files"] = dict(sorted({**manifest["files"], **writer.out.files}.items()))
        info = (writer.modalities if kind == "item" else writer.user_modalities)[name]
        manifest[registry_key] = {**manifest[registry_key], name: {**info, **(extra or {})}}
    except BaseException:
        writer.out.abort()
        raise
    fs, root = dataset.artifact.fs, dataset.artifact.root
    with fs.open(posixpath.join(root, "manifest.json"), "wb") as fh:
        fh.write(json.dumps(manifest, indent=2, sort_keys=True).encode())
    logger.info("added %s modality %r (%d-d) to %s", kind, name, info["dim"], url)
    return manifest


class _AppendingWriter(ArtifactWriter):
    """Writes new files into an existing artifact without touching its manifest."""

    def __init__(self, dataset: Dataset):
        self.url, self.kind = dataset.url, "dataset"
        self.fs, self.root = dataset.artifact.fs, dataset.artifact.root
        self.files, self._committed = {}, False
