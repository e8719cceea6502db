"""Ingest generic interactions with original (string) ids: k-core filter, then a seeded split.

Memory is bounded by the number of users and items (id vocabularies, degree counters), never by
the number of interactions: encoded interactions are spilled to a local scratch directory, the
k-core filter streams over them until no node is removed, and the per-user split groups users
through on-disk buckets. Each chunk goes through the validation shared with the nightly ingest
(:mod:`recgoat_dist.data.validate`: NaN/inf ratings, non-integer timestamps, empty ids), and a
repeated (user, item) pair is collapsed to its latest row inside its user bucket and counted in
the manifest (``source.duplicates_collapsed``).

Split, when the input has no ``split`` column (MMRec's per-user random split, seeded): a user
with n >= 10 interactions gets floor(n/10) validation, floor(n/10) test and the rest train; a
user with 3 <= n < 10 gets n-2 / 1 / 1; a user with fewer keeps everything in train.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from recgoat_dist.data.dataset import DataError, DatasetWriter, chunk_ranges
from recgoat_dist.data.inputs import iter_table
from recgoat_dist.data.validate import PREPARE_RULES, collapse_duplicates, normalise_chunk

logger = logging.getLogger(__name__)

NUM_BUCKETS = 64
FEATURE_CHUNK_ROWS = 65_536
_FIELDS = [("user", np.int64), ("item", np.int64), ("rating", np.float32), ("timestamp", np.int64),
           ("has_ts", np.bool_), ("split", np.int8)]


class _Vocabulary:
    """Original id (string) -> int in order of first appearance."""

    def __init__(self):
        self.index: dict[str, int] = {}
        self.names: list[str] = []

    def encode(self, values: list[str]) -> np.ndarray:
        out = np.empty(len(values), dtype=np.int64)
        index, names = self.index, self.names
        for k, value in enumerate(values):
            code = index.get(value)
            if code is None:
                code = index[value] = len(names)
                names.append(value)
            out[k] = code
        return out


def _spill(url: str, scratch: str, users: _Vocabulary, items: _Vocabulary) -> tuple[list[str], bool]:
    """Encode the input into record chunks on disk; returns (chunk paths, input had a split)."""
    paths, has_split, row = [], None, 0
    for table in tqdm(iter_table(url, ["user_id", "item_id"]), desc="reading", unit="chunk", mininterval=2):
        table = normalise_chunk(table, url, row, PREPARE_RULES)     # shared with the nightly ingest
        n = table.num_rows
        chunk = np.zeros(n, dtype=_FIELDS)
        chunk["user"] = users.encode(table["user_id"].to_pylist())
        chunk["item"] = items.encode(table["item_id"].to_pylist())
        chunk["rating"] = table["rating"].to_numpy()
        ts = table["timestamp"]
        chunk["has_ts"] = ts.is_valid().to_numpy(zero_copy_only=False)
        chunk["timestamp"] = ts.fill_null(0).to_numpy()
        if has_split is None:
            has_split = "split" in table.column_names
        if has_split:
            split = table["split"].cast(pa.int8()).to_numpy(zero_copy_only=False)
            bad = np.nonzero((split < 0) | (split > 2))[0]
            if bad.size:
                raise DataError(f"{url}: row {row + bad[0]}: column split = {split[bad[0]]} is not 0, 1 or 2")
            chunk["split"] = split
        path = os.path.join(scratch, f"raw-{len(paths):05d}.npy")
        np.save(path, chunk)
        paths.append(path)
        row += n
    if row == 0:
        raise DataError(f"{url}: no interactions")
    return paths, bool(has_split)


def _bucket_by_user(paths: list[str], scratch: str) -> tuple[list[str], int]:
    """Group the spilled chunks into per-user buckets, one repeated (user, item) pair collapsed to its
    latest row (:func:`collapse_duplicates`); returns the bucket files and the rows dropped."""
    parts = [[] for _ in range(NUM_BUCKETS)]
    for p, path in enumerate(paths):
        chunk = np.load(path)
        bucket_of = chunk["user"] % NUM_BUCKETS
        for b in np.unique(bucket_of):
            part = os.path.join(scratch, f"part-{b:03d}-{p:05d}.npy")
            np.save(part, chunk[bucket_of == b])
            parts[b].append(part)
        os.remove(path)
    buckets, dropped = [], 0
    for b, files in enumerate(parts):
        if not files:
            continue
        chunk = np.concatenate([np.load(f) for f in files])
        ts = np.where(chunk["has_ts"], chunk["timestamp"], np.iinfo(np.int64).min)
        keep, dups = collapse_duplicates(chunk["user"], chunk["item"], ts)
        dropped += dups
        path = os.path.join(scratch, f"bucket-{b:03d}.npy")
        np.save(path, chunk[keep])
        buckets.append(path)
        for f in files:
            os.remove(f)
    return buckets, dropped


def _k_core(paths: list[str], num_users: int, num_items: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks of the users and items that survive the iterated k-core filter."""
    keep_u, keep_i = np.ones(num_users, bool), np.ones(num_items, bool)
    if k <= 1:
        return keep_u, keep_i
    for rounds in range(1, 1000):
        deg_u, deg_i = np.zeros(num_users, np.int64), np.zeros(num_items, np.int64)
        for path in paths:
            chunk = np.load(path)
            alive = keep_u[chunk["user"]] & keep_i[chunk["item"]]
            deg_u += np.bincount(chunk["user"][alive], minlength=num_users)
            deg_i += np.bincount(chunk["item"][alive], minlength=num_items)
        new_u, new_i = keep_u & (deg_u >= k), keep_i & (deg_i >= k)
        if (new_u == keep_u).all() and (new_i == keep_i).all():
            logger.info("%d-core: %d rounds, kept %d/%d users, %d/%d items", k, rounds,
                        keep_u.sum(), num_users, keep_i.sum(), num_items)
            return keep_u, keep_i
        keep_u, keep_i = new_u, new_i
    raise RuntimeError("k-core filter did not converge")


def _user_split(chunk: np.ndarray, seed: int) -> np.ndarray:
    """Per-user random split of a bucket holding *all* interactions of its users."""
    rng = np.random.default_rng([seed, int(chunk["user"].min()) if len(chunk) else 0])
    order = np.lexsort((rng.random(len(chunk)), chunk["user"]))
    users = chunk["user"][order]
    starts = np.r_[0, np.nonzero(np.diff(users))[0] + 1]
    counts = np.diff(np.r_[starts, len(users)])
    rank = np.arange(len(users)) - np.repeat(starts, counts)
    n = np.repeat(counts, counts)
    held = np.where(n >= 10, n // 10, np.where(n >= 3, 1, 0))
    split = np.zeros(len(users), np.int8)
    split[rank >= n - 2 * held] = 1
    split[rank >= n - held] = 2
    out = np.empty_like(split)
    out[order] = split
    return out


def _write_features(writer: DatasetWriter, name: str, url: str, items: _Vocabulary,
                    new_item: np.ndarray, num_items: int, scratch: str) -> None:
    """Scatter a feature table keyed by original item id into a disk-backed (num_items, dim) array."""
    features = None
    seen = np.zeros(num_items, bool)
    for table in iter_table(url, ["item_id", "embedding"]):
        emb = table["embedding"].combine_chunks()
        if not (pa.types.is_list(emb.type) or pa.types.is_fixed_size_list(emb.type) or
                pa.types.is_large_list(emb.type)):
            raise DataError(f"{url}: column embedding must be a list of floats, got {emb.type}")
        lengths = pc.list_value_length(emb).to_numpy(zero_copy_only=False)
        dim = int(lengths[0]) if len(lengths) else 0
        if len(lengths) and (lengths != dim).any():
            bad = int(np.argmax(lengths != dim))
            raise DataError(f"{url}: row {bad}: column embedding has {lengths[bad]} values, expected {dim}")
        block = pc.list_flatten(emb).cast(pa.float32()).to_numpy(zero_copy_only=False).reshape(-1, dim)
        if features is None:
            features = np.lib.format.open_memmap(os.path.join(scratch, f"feat-{name}.npy"), mode="w+",
                                                 dtype=np.float32, shape=(num_items, dim))
        codes = np.array([items.index.get(v, -1) for v in table["item_id"].cast(pa.string()).to_pylist()])
        known = codes >= 0
        target = new_item[codes[known]]
        kept = target >= 0
        features[target[kept]] = block[known][kept]
        seen[target[kept]] = True
    if features is None or not seen.all():
        missing = int(np.argmin(seen)) if features is not None else 0
        original = items.names[int(np.nonzero(new_item == missing)[0][0])]
        raise DataError(f"{url}: column item_id: no row for item {original!r} (one row per item required)")
    for start, stop in chunk_ranges(num_items, FEATURE_CHUNK_ROWS):
        writer.add_features("item", name, start, np.asarray(features[start:stop]), source=url)


def prepare_parquet(interactions: str, item_features: dict[str, str], out: str, k_core: int = 5,
                    seed: int = 0, overwrite: bool = False) -> dict:
    """Canonical dataset from generic interactions (columns user_id, item_id [, rating, timestamp,
    split]) and per-modality item feature tables (item_id, embedding)."""
    t0 = time.perf_counter()
    scratch = tempfile.mkdtemp(prefix="recgoat-prepare-")
    try:
        users, items = _Vocabulary(), _Vocabulary()
        paths, has_split = _spill(interactions, scratch, users, items)
        paths, duplicates = _bucket_by_user(paths, scratch)
        if duplicates:
            logger.info("%s: %d repeated (user, item) rows collapsed to their latest", interactions, duplicates)
        keep_u, keep_i = _k_core(paths, len(users.names), len(items.names), k_core)
        new_user = np.where(keep_u, np.cumsum(keep_u) - 1, -1)
        new_item = np.where(keep_i, np.cumsum(keep_i) - 1, -1)
        num_users, num_items = int(keep_u.sum()), int(keep_i.sum())
        if num_users == 0 or num_items == 0:
            raise DataError(f"{interactions}: nothing left after the {k_core}-core filter")

        with DatasetWriter(out, num_users, num_items, source=interactions, overwrite=overwrite) as writer:
            for path in tqdm(paths, desc="splitting", unit="bucket", mininterval=2):
                chunk = np.load(path)
                chunk = chunk[keep_u[chunk["user"]] & keep_i[chunk["item"]]]
                if not len(chunk):
                    continue
                chunk["user"], chunk["item"] = new_user[chunk["user"]], new_item[chunk["item"]]
                split = chunk["split"] if has_split else _user_split(chunk, seed)
                writer.add_interactions(pa.table({
                    "user_id": chunk["user"], "item_id": chunk["item"], "rating": chunk["rating"],
                    "timestamp": pa.array(chunk["timestamp"], mask=~chunk["has_ts"]), "split": split}))
            for name, url in item_features.items():
                _write_features(writer, name, url, items, new_item, num_items, scratch)
            writer.add_id_map("user", np.asarray(users.names, dtype=object)[keep_u])
            writer.add_id_map("item", np.asarray(items.names, dtype=object)[keep_i])
            manifest = writer.commit({"source": {"format": "parquet", "interactions": interactions,
                                                 "features": dict(item_features), "k_core": k_core,
                                                 "split": "given" if has_split else f"per-user 80/10/10, seed {seed}",
                                                 "duplicates_collapsed": duplicates}})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    logger.info("prepared %s in %.1f s", out, time.perf_counter() - t0)
    return manifest
