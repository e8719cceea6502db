"""One validation of interaction tables, shared by ``recgoat prepare parquet`` and the nightly ingest.

Both read event logs keyed by original ids (``user_id``, ``item_id``, optional ``rating`` and
``timestamp``) and must refuse the same bad input with the same message: one line naming the file,
the column, the row and the problem. :func:`normalise_chunk` checks and converts one chunk;
:func:`collapse_duplicates` keeps one row per (user, item) pair, the latest by timestamp, and says
how many it dropped (repeated pairs are normal in event logs, so they are counted, not refused).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recgoat_dist.data.dataset import DataError

ID_COLUMNS = ("user_id", "item_id")


@dataclass(frozen=True)
class InteractionRules:
    """What a source may contain. ``allowed`` None: extra columns are ignored, not refused."""

    require_timestamp: bool = False
    allowed: Optional[tuple[str, ...]] = None
    window: Optional[tuple[int, int, str]] = None   # [start, stop) unix seconds, and its name (the date)


PREPARE_RULES = InteractionRules()
DELTA_RULES = InteractionRules(require_timestamp=True, allowed=("user_id", "item_id", "timestamp", "rating"))


def check_columns(names: list[str], source: str, rules: InteractionRules) -> None:
    required = list(ID_COLUMNS) + (["timestamp"] if rules.require_timestamp else [])
    missing = [c for c in required if c not in names]
    if missing:
        raise DataError(f"{source}: missing column {missing[0]!r} (found: {', '.join(names) or 'none'})")
    if rules.allowed is not None:
        unknown = [c for c in names if c not in rules.allowed]
        if unknown:
            raise DataError(f"{source}: column {unknown[0]}: unknown column (allowed: {', '.join(rules.allowed)})")


def _first(mask: np.ndarray) -> int:
    return int(np.nonzero(mask)[0][0])


def _timestamps(column: pa.ChunkedArray, source: str, first_row: int) -> pa.Array:
    """int64 unix seconds (nulls kept) or an error naming the first row that is not one."""
    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_timestamp(col.type):
        return pc.cast(col, pa.timestamp("s")).cast(pa.int64())
    if pa.types.is_integer(col.type):
        return col.cast(pa.int64())
    if pa.types.is_floating(col.type):
        values = col.to_numpy(zero_copy_only=False)
        bad = col.is_valid().to_numpy(zero_copy_only=False) & ~(np.isfinite(values) & (np.floor(values) == values))
        if bad.any():
            row = _first(bad)
            raise DataError(f"{source}: column timestamp: row {first_row + row}: {values[row]!r} is not an "
                            "integer (unix seconds)")
        return pa.array(np.where(np.isfinite(values), values, 0).astype(np.int64), mask=~col.is_valid().to_numpy(
            zero_copy_only=False))
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        texts = col.to_pylist()
        out = np.zeros(len(texts), np.int64)
        for row, text in enumerate(texts):
            if text is None:
                continue
            try:
                out[row] = int(text.strip())
            except ValueError:
                raise DataError(f"{source}: column timestamp: row {first_row + row}: {text!r} is not an "
                                "integer (unix seconds)") from None
        return pa.array(out, mask=~col.is_valid().to_numpy(zero_copy_only=False))
    raise DataError(f"{source}: column timestamp: type {col.type} is not integer unix seconds")


def _ratings(column, source: str, first_row: int) -> np.ndarray:
    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
        raise DataError(f"{source}: column rating: type {col.type} is not numeric")
    values = col.cast(pa.float64()).fill_null(1.0).to_numpy(zero_copy_only=False)
    bad = ~np.isfinite(values)
    if bad.any():
        row = _first(bad)
        problem = "NaN" if np.isnan(values[row]) else "inf"
        raise DataError(f"{source}: column rating: row {first_row + row}: {problem} (ratings must be finite)")
    return values.astype(np.float32)


def normalise_chunk(table: pa.Table, source: str, first_row: int, rules: InteractionRules) -> pa.Table:
    """Checked columns: user_id, item_id (string), rating float32 (missing -> 1), timestamp int64
    (nullable unless required), plus ``split`` when present. ``first_row``: row of the chunk in the file."""
    check_columns(table.column_names, source, rules)
    out = {}
    for column in ID_COLUMNS:
        col = table[column]
        if col.null_count:
            row = _first(col.is_null().to_numpy(zero_copy_only=False))
            raise DataError(f"{source}: column {column}: row {first_row + row}: empty id")
        out[column] = col.cast(pa.string())
    out["rating"] = (_ratings(table["rating"], source, first_row) if "rating" in table.column_names
                     else np.ones(table.num_rows, np.float32))
    if "timestamp" in table.column_names:
        ts = _timestamps(table["timestamp"], source, first_row)
        if rules.require_timestamp and ts.null_count:
            row = _first(ts.is_null().to_numpy(zero_copy_only=False))
            raise DataError(f"{source}: column timestamp: row {first_row + row}: empty timestamp")
        if rules.window is not None:
            lo, hi, name = rules.window
            values = ts.fill_null(lo).to_numpy()
            bad = (values < lo) | (values >= hi)
            if bad.any():
                row = _first(bad)
                raise DataError(f"{source}: column timestamp: row {first_row + row}: {int(values[row])} is "
                                f"outside the date {name} [{lo}, {hi})")
        out["timestamp"] = ts
    else:
        out["timestamp"] = pa.nulls(table.num_rows, pa.int64())
    if "split" in table.column_names:
        out["split"] = table["split"]
    return pa.table(out)


def collapse_duplicates(users: np.ndarray, items: np.ndarray, timestamps: np.ndarray) -> tuple[np.ndarray, int]:
    """Indices of the rows to keep, one per (user, item) pair, and how many rows were dropped.

    The kept row is the one with the latest timestamp (the last of equal timestamps in input
    order), so a re-played event log keeps the newest rating. Returned indices are in input order.
    """
    n = len(users)
    if n == 0:
        return np.zeros(0, np.int64), 0
    order = np.lexsort((np.arange(n), np.asarray(timestamps, np.int64), np.asarray(items), np.asarray(users)))
    u, i = np.asarray(users)[order], np.asarray(items)[order]
    last = np.ones(n, bool)
    last[:-1] = (u[1:] != u[:-1]) | (i[1:] != i[:-1])
    keep = np.sort(order[last])
    return keep, int(n - len(keep))
