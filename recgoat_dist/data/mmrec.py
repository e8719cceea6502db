"""Ingest MMRec's format: ``userID itemID rating [timestamp] x_label`` plus one ``.npy`` per modality.

MMRec ids are already contiguous (row ``i`` of every feature file is item ``i``), so ingestion is
a streaming copy with validation. Two passes over the ``.inter`` file: the first finds the id
ranges, the second writes chunks. Original ids come from a row-aligned copy of the ``.inter`` file
(``--original-ids``), from MMRec's ``u_id_mapping.csv``/``i_id_mapping.csv``, or are the integer ids.
"""
from __future__ import annotations

import logging
import time
from typing import Iterator

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from recgoat_dist.data.dataset import DataError, DatasetWriter, chunk_ranges
from recgoat_dist.data.inputs import iter_delimited, iter_table, open_npy

logger = logging.getLogger(__name__)

INTER_TYPES = {"userID": pa.int64(), "itemID": pa.int64(), "rating": pa.float32(),
               "timestamp": pa.int64(), "x_label": pa.int8()}
FEATURE_CHUNK_ROWS = 65_536


def _inter_chunks(inter: str) -> Iterator[tuple[int, pa.Table]]:
    required = ["userID", "itemID", "x_label"]
    first_row = 0
    for table in iter_delimited(inter, required, INTER_TYPES):
        yield first_row, table
        first_row += table.num_rows


def _scan(inter: str) -> tuple[int, int, int]:
    """First pass: (max user id, max item id, rows), rejecting negative ids."""
    max_user = max_item = -1
    rows = 0
    for first_row, table in _inter_chunks(inter):
        for column in ("userID", "itemID"):
            values = table[column].to_numpy(zero_copy_only=False)
            if table[column].null_count:
                bad = int(np.nonzero(table[column].is_null().to_numpy(zero_copy_only=False))[0][0])
                raise DataError(f"{inter}: row {first_row + bad}: column {column} is empty")
            if values.size and values.min() < 0:
                bad = int(np.argmax(values < 0))
                raise DataError(f"{inter}: row {first_row + bad}: column {column} = {values[bad]} "
                                "is out of range (negative)")
        if table.num_rows:
            max_user = max(max_user, int(table["userID"].to_numpy().max()))
            max_item = max(max_item, int(table["itemID"].to_numpy().max()))
        rows += table.num_rows
    if rows == 0:
        raise DataError(f"{inter}: no interactions")
    return max_user, max_item, rows


def _original_ids_from_aligned(inter: str, aligned: str, num_users: int, num_items: int):
    """Zip the .inter with its row-aligned original-id copy into id -> original id maps."""
    users = np.full(num_users, None, dtype=object)
    items = np.full(num_items, None, dtype=object)
    types = {"userID": pa.string(), "itemID": pa.string()}
    ours = _inter_chunks(inter)
    theirs = iter_delimited(aligned, ["userID", "itemID"], types)
    buffered = pa.table({"userID": pa.array([], pa.string()), "itemID": pa.array([], pa.string())})
    for first_row, table in ours:
        while buffered.num_rows < table.num_rows:
            try:
                buffered = pa.concat_tables([buffered, next(theirs).select(["userID", "itemID"])])
            except StopIteration:
                raise DataError(f"{aligned}: has fewer rows than {inter}") from None
        head, buffered = buffered.slice(0, table.num_rows), buffered.slice(table.num_rows)
        for column, mapping in (("userID", users), ("itemID", items)):
            ids = table[column].to_numpy()
            originals = head[column].to_numpy(zero_copy_only=False)
            known = mapping[ids]
            clash = np.nonzero((known != None) & (known != originals))[0]  # noqa: E711
            if clash.size:
                row = first_row + int(clash[0])
                raise DataError(f"{aligned}: row {row}: column {column}: id {ids[clash[0]]} maps to both "
                                f"{known[clash[0]]!r} and {originals[clash[0]]!r}")
            mapping[ids] = originals
    if buffered.num_rows or next(theirs, None) is not None:
        raise DataError(f"{aligned}: has more rows than {inter}")
    return users, items


def _original_ids_from_map(path: str, id_column: str, size: int) -> np.ndarray:
    """MMRec's ``u_id_mapping.csv``/``i_id_mapping.csv``: a contiguous-id column plus the original."""
    mapping = np.full(size, None, dtype=object)
    for table in iter_table(path, [id_column]):
        others = [c for c in table.column_names if c != id_column]
        if len(others) != 1:
            raise DataError(f"{path}: expected two columns ({id_column} and the original id), "
                            f"found {table.column_names}")
        ids = table[id_column].cast(pa.int64()).to_numpy()
        if ids.size and (ids.min() < 0 or ids.max() >= size):
            bad = int(np.argmax((ids < 0) | (ids >= size)))
            raise DataError(f"{path}: column {id_column} = {ids[bad]} is out of range [0, {size})")
        mapping[ids] = table[others[0]].cast(pa.string()).to_numpy(zero_copy_only=False)
    return mapping


def _fill_unknown(mapping: np.ndarray, kind: str) -> np.ndarray:
    missing = np.nonzero(mapping == None)[0]  # noqa: E711
    if missing.size:
        logger.warning("%d %ss have no original id (no interaction); using the integer id", missing.size, kind)
        mapping[missing] = [str(i) for i in missing]
    return mapping


def prepare_mmrec(inter: str, features: dict[str, str], out: str, original_ids: str | None = None,
                  user_map: str | None = None, item_map: str | None = None,
                  overwrite: bool = False) -> dict:
    """Write a canonical dataset from MMRec files; returns the manifest."""
    t0 = time.perf_counter()
    arrays = {name: open_npy(path) for name, path in features.items()}
    max_user, max_item, rows = _scan(inter)
    num_users = max_user + 1
    if arrays:
        first = next(iter(features))
        num_items = arrays[first].shape[0]
        for name, array in arrays.items():
            if array.shape[0] != num_items:
                raise DataError(f"{features[name]}: modality {name!r} has {array.shape[0]} rows, but "
                                f"{features[first]} has {num_items}: feature rows must equal the number of items")
    else:
        num_items = max_item + 1
    logger.info("scanned %s: %d interactions, %d users, %d items (%.1f s)",
                inter, rows, num_users, num_items, time.perf_counter() - t0)

    if original_ids:
        users, items = _original_ids_from_aligned(inter, original_ids, num_users, max(num_items, max_item + 1))
        items = items[:num_items]
    else:
        users = (_original_ids_from_map(user_map, "userID", num_users) if user_map
                 else np.array([str(i) for i in range(num_users)], dtype=object))
        items = (_original_ids_from_map(item_map, "itemID", num_items) if item_map
                 else np.array([str(i) for i in range(num_items)], dtype=object))

    with DatasetWriter(out, num_users, num_items, source=inter, overwrite=overwrite) as writer:
        with tqdm(total=rows, desc="interactions", unit="rows", mininterval=2) as bar:
            for first_row, table in _inter_chunks(inter):
                writer.add_interactions(pa.table({
                    "user_id": table["userID"], "item_id": table["itemID"],
                    "rating": table["rating"] if "rating" in table.column_names
                    else pa.array(np.ones(table.num_rows, np.float32)),
                    "timestamp": table["timestamp"] if "timestamp" in table.column_names
                    else pa.nulls(table.num_rows, pa.int64()),
                    "split": table["x_label"]}), first_row=first_row)
                bar.update(table.num_rows)
        for name, array in arrays.items():
            for start, stop in chunk_ranges(num_items, FEATURE_CHUNK_ROWS):
                writer.add_features("item", name, start, np.asarray(array[start:stop]), source=features[name])
        writer.add_id_map("user", _fill_unknown(users, "user"))
        writer.add_id_map("item", _fill_unknown(items, "item"))
        manifest = writer.commit({"source": {"format": "mmrec", "inter": inter,
                                             "features": dict(features)}})
    logger.info("prepared %s in %.1f s", out, time.perf_counter() - t0)
    return manifest
