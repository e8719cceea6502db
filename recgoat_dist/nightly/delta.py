"""Read and validate one date's delta before anything is written.

Layout under ``nightly.delta`` with ``{date}`` filled in (Hive style, e.g. ``.../date=2024-01-02``)::

    interactions.parquet            user_id, item_id (original ids), timestamp (int64 unix s), [rating]
                                    (or a directory of Parquet parts)
    item_text.parquet               optional: item_id, text  (encoded with the base dataset's encoder
                                    of ``nightly.text_modality``)
    item_features/<modality>.parquet  optional: item_id, embedding
    user_text.parquet               optional: user_id, text  (encoded like item text, into the user
                                    modality of the same name)
    user_features/<modality>.parquet  optional: user_id, embedding

Interaction chunks go through :mod:`recgoat_dist.data.validate`, the checks ``recgoat prepare
parquet`` uses, plus the nightly ones: a timestamp inside the date, no unknown column, a
duplicate share and a volume (against the trailing mean of decided nights) inside the bounds.
"""
from __future__ import annotations

import logging
import posixpath
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recgoat_dist.data.dataset import DataError, check_finite
from recgoat_dist.data.inputs import iter_table
from recgoat_dist.data.timeline import day_window
from recgoat_dist.data.validate import DELTA_RULES, InteractionRules, collapse_duplicates, normalise_chunk
from recgoat_dist.nightly.config import NightlyConfig
from recgoat_dist.storage import StorageError, filesystem, join

logger = logging.getLogger(__name__)


@dataclass
class Delta:
    date: str
    url: str
    users: np.ndarray                 # original ids (object), one row per (user, item) pair
    items: np.ndarray
    timestamps: np.ndarray            # int64
    ratings: np.ndarray               # float32
    rows_read: int
    duplicates: int
    item_features: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # m -> (ids, x)
    user_features: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def summary(self) -> dict:
        return {"date": self.date, "url": self.url, "rows_read": self.rows_read, "interactions": len(self.users),
                "duplicates_collapsed": self.duplicates,
                "item_features": {m: len(v[0]) for m, v in self.item_features.items()},
                "user_features": {m: len(v[0]) for m, v in self.user_features.items()}}


def delta_url(template: str, date: str) -> str:
    return template.replace("{date}", date)


def _parts(url: str) -> list[str]:
    fs, path = filesystem(url)
    try:
        if fs.isdir(path):
            parts = sorted(p for p in fs.ls(path, detail=False) if p.endswith(".parquet"))
            prefix = url.split("://")[0] + "://" if "://" in url else ""
            return [prefix + p if prefix else p for p in parts]
        if fs.exists(path):
            return [url]
    except Exception as exc:  # network, permissions
        raise StorageError(f"{url}: cannot be read ({type(exc).__name__}: {exc})") from exc
    return []


def _interactions(url: str, rules: InteractionRules) -> tuple[pa.Table, int]:
    parts = _parts(url)
    if not parts:
        raise DataError(f"{url}: not found (no interactions for this date)")
    tables, rows = [], 0
    for part in parts:
        part_rows = 0
        for chunk in iter_table(part, ["user_id", "item_id", "timestamp"]):
            tables.append(normalise_chunk(chunk, part, part_rows, rules))
            part_rows += chunk.num_rows
        rows += part_rows
    if rows == 0:
        raise DataError(f"{url}: empty file (no interactions)")
    return pa.concat_tables(tables), rows


def _feature_file(url: str, kind: str, known_dims: dict[str, dict], name: str) -> tuple[np.ndarray, np.ndarray]:
    column = f"{kind}_id"
    if name not in known_dims:
        raise DataError(f"{url}: {kind} modality {name!r} is not in the base dataset "
                        f"(has {sorted(known_dims) or 'none'})")
    tables = list(iter_table(url, [column, "embedding"]))
    table = pa.concat_tables(tables)
    unknown = [c for c in table.column_names if c not in (column, "embedding")]
    if unknown:
        raise DataError(f"{url}: column {unknown[0]}: unknown column (allowed: {column}, embedding)")
    emb = table["embedding"].combine_chunks()
    if not (pa.types.is_list(emb.type) or pa.types.is_fixed_size_list(emb.type) or pa.types.is_large_list(emb.type)):
        raise DataError(f"{url}: column embedding must be a list of floats, got {emb.type}")
    dim = known_dims[name]["dim"]
    lengths = pc.list_value_length(emb).to_numpy(zero_copy_only=False)
    if (lengths != dim).any():
        row = int(np.argmax(lengths != dim))
        raise DataError(f"{url}: column embedding: row {row}: {lengths[row]} values, expected {dim}")
    x = pc.list_flatten(emb).cast(pa.float32()).to_numpy(zero_copy_only=False).reshape(-1, dim)
    check_finite(name, url, 0, x)
    ids = table[column].cast(pa.string()).to_numpy(zero_copy_only=False)
    return ids, x


def _encode_texts(url: str, kind: str, modalities: dict[str, dict], name: str):
    from recgoat_dist.data.text import get_encoder, read_item_texts

    if name not in modalities or not modalities[name].get("encoder"):
        raise DataError(f"{url}: the base dataset records no text encoder for {kind} modality {name!r} "
                        "(nightly.text_modality); encode the text yourself into "
                        f"{kind}_features/{name}.parquet")
    ids, texts = read_item_texts(url) if kind == "item" else _user_texts(url)
    encoder = get_encoder(modalities[name]["encoder"])
    x = encoder.encode([t or "" for t in texts.to_pylist()]).astype(np.float32)
    return ids.cast(pa.string()).to_numpy(zero_copy_only=False), x


def _user_texts(url: str):
    table = pa.concat_tables(list(iter_table(url, ["user_id", "text"])))
    return table["user_id"].combine_chunks(), table["text"].combine_chunks()


def read_delta(date: str, config: NightlyConfig, base_manifest: dict,
               trailing_mean: Optional[float] = None) -> Delta:
    """The validated delta of ``date``; any problem is a :class:`DataError` naming file and column."""
    if not config.delta:
        raise DataError("config key nightly.delta: a URL template with {date} is required")
    url = delta_url(config.delta, date)
    lo, hi = day_window(date)
    rules = InteractionRules(require_timestamp=True, allowed=DELTA_RULES.allowed, window=(lo, hi, date))
    inter_url = join(url, "interactions.parquet")
    table, rows = _interactions(inter_url, rules)
    users = table["user_id"].to_numpy(zero_copy_only=False)
    items = table["item_id"].to_numpy(zero_copy_only=False)
    ts = table["timestamp"].to_numpy()
    keep, dups = collapse_duplicates(users, items, ts)
    if dups / rows > config.max_duplicate_fraction:
        raise DataError(f"{inter_url}: columns user_id, item_id: {dups} of {rows} rows repeat a pair "
                        f"({dups / rows:.0%}), above nightly.max_duplicate_fraction "
                        f"{config.max_duplicate_fraction:.0%}")
    n = len(keep)
    if trailing_mean:
        ratio = n / trailing_mean
        if not config.min_volume_ratio <= ratio <= config.max_volume_ratio:
            raise DataError(f"{inter_url}: {n} interactions is {ratio:.2f}x the trailing mean "
                            f"({trailing_mean:.0f}) of recent nights, outside [{config.min_volume_ratio}, "
                            f"{config.max_volume_ratio}] (nightly.min_volume_ratio / max_volume_ratio)")
    delta = Delta(date, url, users[keep], items[keep], ts[keep], table["rating"].to_numpy()[keep], rows, dups)
    fs, root = filesystem(url)
    for kind, key in (("item", "modalities"), ("user", "user_modalities")):
        known = base_manifest.get(key, {})
        target = delta.item_features if kind == "item" else delta.user_features
        folder = join(url, f"{kind}_features")
        for part in _parts(folder):
            name = posixpath.basename(part)[:-len(".parquet")]
            target[name] = _feature_file(part, kind, known, name)
        text_url = join(url, f"{kind}_text.parquet")
        if fs.exists(posixpath.join(root, f"{kind}_text.parquet")):
            if config.text_modality in target:
                raise DataError(f"{text_url}: {kind}_features/{config.text_modality}.parquet is also given; "
                                "send one of the two")
            target[config.text_modality] = _encode_texts(text_url, kind, known, config.text_modality)
    for kind, feats in (("item", delta.item_features), ("user", delta.user_features)):
        for name, (ids, _) in feats.items():
            uniq, counts = np.unique(ids, return_counts=True)
            if (counts > 1).any():
                raise DataError(f"{url}/{kind}_features/{name}: column {kind}_id: {uniq[counts > 1][0]!r} "
                                "appears twice")
    logger.info("delta %s: %d rows, %d pairs (%d repeated rows collapsed), item features %s, user features %s",
                date, rows, n, dups, {m: len(v[0]) for m, v in delta.item_features.items()},
                {m: len(v[0]) for m, v in delta.user_features.items()})
    return delta
