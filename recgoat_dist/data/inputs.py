"""Reading user-supplied input files (local paths or fsspec URLs) in bounded-memory chunks."""
from __future__ import annotations

import io
import os
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from recgoat_dist.data.dataset import DataError
from recgoat_dist.storage import StorageError, filesystem

CSV_BLOCK_BYTES = 16 << 20


def _open(url: str):
    fs, path = filesystem(url)
    try:
        return fs.open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{url}: file not found") from None
    except Exception as exc:
        raise StorageError(f"{url}: cannot be read ({type(exc).__name__}: {exc})") from exc


def iter_delimited(url: str, required: list[str], types: dict[str, pa.DataType],
                   delimiter: str | None = None) -> Iterator[pa.Table]:
    """Stream a header-ed TSV/CSV in record batches, checking the ``required`` columns.

    The delimiter is a tab for ``.tsv``/``.inter`` files and a comma otherwise, unless given.
    """
    if delimiter is None:
        delimiter = "," if url.endswith(".csv") else "\t"
    fh = _open(url)
    try:
        reader = pacsv.open_csv(
            fh,
            read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char=False
                                             if delimiter == "\t" else '"'),
            convert_options=pacsv.ConvertOptions(column_types=types))
    except pa.ArrowInvalid as exc:
        fh.close()
        raise DataError(f"{url}: cannot be parsed ({exc})") from None
    missing = [c for c in required if c not in reader.schema.names]
    if missing:
        fh.close()
        raise DataError(f"{url}: missing column {missing[0]!r} (found: {', '.join(reader.schema.names)})")
    try:
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except pa.ArrowInvalid as exc:
                raise DataError(f"{url}: {exc}") from None
            yield pa.Table.from_batches([batch])
    finally:
        fh.close()


def iter_table(url: str, required: list[str]) -> Iterator[pa.Table]:
    """Stream a Parquet file (row group by row group) or a TSV/CSV file."""
    if not url.endswith(".parquet"):
        yield from iter_delimited(url, required, {})
        return
    fh = _open(url)
    try:
        try:
            parquet = pq.ParquetFile(fh)
        except pa.ArrowInvalid as exc:
            raise DataError(f"{url}: not a readable Parquet file ({exc})") from None
        missing = [c for c in required if c not in parquet.schema_arrow.names]
        if missing:
            raise DataError(f"{url}: missing column {missing[0]!r} "
                            f"(found: {', '.join(parquet.schema_arrow.names)})")
        for i in range(parquet.num_row_groups):
            yield parquet.read_row_group(i)
    finally:
        fh.close()


def open_npy(url: str) -> np.ndarray:
    """A 2-D ``.npy`` array, memory-mapped when local (so rows can be streamed)."""
    fs, path = filesystem(url)
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    try:
        if "file" in protocols or "local" in protocols:
            if not os.path.exists(path):
                raise DataError(f"{url}: file not found")
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        else:
            with _open(url) as fh:
                array = np.load(io.BytesIO(fh.read()), allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"{url}: not a readable .npy array ({exc})") from None
    if array.ndim != 2:
        raise DataError(f"{url}: expected a 2-D array (rows = items), got shape {array.shape}")
    return array
