"""A night's dataset version: the previous version plus the delta, with stable ids.

* **Stable ids.** Known original ids keep their contiguous ids; new users and items (sorted by
  original id, so the numbering is a function of the inputs) are appended. A version's id space
  therefore extends its parent's: the champion's rows are a prefix of the candidate's.
* **Splits.** The parent's validation split stays validation (early stopping); the parent's test
  split (the previous night's gate holdout) becomes training data; the date's new pairs are split
  per user by a seeded sample: ``holdout_fraction`` of them go to *test*, the gate holdout, which
  the candidate never trains on (a new user keeps at least one training pair).
* **Repeats.** A delta pair the parent already has updates its timestamp and rating in place.
* **Window.** With ``window_days`` N, training pairs older than N days before the date are dropped
  (their ids stay).
* **Content.** New items take their rows from the delta's feature files; a new item without one
  gets the mean row of its modality (a warning: it trains on its ID alone). A delta row for a
  known item replaces its row and is recorded as ``changed`` (the graph step then rebuilds).

The whole parent is read into memory: a night's version is bounded by the dataset size.
"""
from __future__ import annotations

import logging
import zlib

import numpy as np
import pyarrow as pa

from recgoat_dist.data.dataset import Dataset, DatasetWriter
from recgoat_dist.data.timeline import DAY, day_window
from recgoat_dist.nightly.config import NightlyConfig
from recgoat_dist.nightly.delta import Delta

logger = logging.getLogger(__name__)
TRAIN, VALID, TEST = 0, 1, 2


def _extend(known: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """``known`` followed by the sorted new ids of ``candidates``; and the id -> index map."""
    index = {str(v): i for i, v in enumerate(known)}
    new = sorted({str(c) for c in candidates} - index.keys())
    names = np.concatenate([known.astype(object), np.array(new, dtype=object)])
    for v in new:
        index[v] = len(index)
    return names, index


def holdout_mask(users: np.ndarray, fraction: float, seed: int, date: str, new_user: np.ndarray) -> np.ndarray:
    """Per user, a seeded sample of ``round(n * fraction)`` of the date's pairs (a new user keeps one)."""
    rng = np.random.default_rng([seed, zlib.crc32(date.encode())])
    order = np.lexsort((rng.random(len(users)), users))
    sorted_users = users[order]
    starts = np.r_[0, np.nonzero(np.diff(sorted_users))[0] + 1]
    counts = np.diff(np.r_[starts, len(users)])
    rank = np.arange(len(users)) - np.repeat(starts, counts)
    n = np.repeat(counts, counts)
    held = np.rint(n * fraction).astype(np.int64)
    held = np.where(new_user[sorted_users] & (held >= n), n - 1, held)
    mask = np.zeros(len(users), bool)
    mask[order] = rank < held
    return mask


def _features(parent: Dataset, kind: str, name: str, names: np.ndarray, given: tuple | None,
              num_old: int) -> tuple[np.ndarray, list[str], list[str]]:
    """(rows for every id, changed known ids, new ids without content)."""
    old = parent.item_features(name) if kind == "item" else parent.user_features(name)
    x = np.empty((len(names), old.shape[1]), np.float32)
    x[:num_old] = old
    have = np.zeros(len(names), bool)
    have[:num_old] = True
    changed: list[str] = []
    if given is not None:
        index = {str(v): i for i, v in enumerate(names)}
        ids, rows = given
        for original, row in zip(ids, rows):
            i = index.get(str(original))
            if i is None:
                continue                     # content for an id with no interaction and not new
            if i < num_old and not np.array_equal(x[i], row):
                changed.append(str(original))
            x[i], have[i] = row, True
    missing = [str(v) for v in names[~have]]
    if missing:
        x[~have] = old.mean(axis=0)
    return x, changed, missing


def build_version_dataset(parent_url: str, delta: Delta, out: str, config: NightlyConfig,
                          overwrite: bool = True) -> dict:
    """Write the date's dataset version at ``out``; returns its manifest (``nightly`` holds the counts)."""
    parent = Dataset(parent_url)
    table = pa.concat_tables(list(parent.iter_interactions(columns=["user_id", "item_id", "rating", "timestamp",
                                                                     "split"])))
    u_old, i_old = parent.original_ids("user"), parent.original_ids("item")
    user_names, user_index = _extend(u_old, delta.users)
    item_candidates = np.concatenate([delta.items] + [ids for ids, _ in delta.item_features.values()])
    item_names, item_index = _extend(i_old, item_candidates)
    nu, ni = len(user_names), len(item_names)

    p_user, p_item = table["user_id"].to_numpy(), table["item_id"].to_numpy()
    p_rating = table["rating"].to_numpy().copy()
    p_ts = table["timestamp"].fill_null(np.iinfo(np.int64).min).to_numpy().copy()
    p_split = table["split"].to_numpy().copy()
    p_split[p_split == TEST] = TRAIN              # yesterday's holdout is training data today

    d_user = np.array([user_index[str(u)] for u in delta.users], np.int64)
    d_item = np.array([item_index[str(i)] for i in delta.items], np.int64)
    parent_keys = p_user * ni + p_item
    order = np.argsort(parent_keys)
    d_keys = d_user * ni + d_item
    pos = np.minimum(np.searchsorted(parent_keys[order], d_keys), max(len(order) - 1, 0))
    repeat = (parent_keys[order][pos] == d_keys) if len(order) else np.zeros(len(d_keys), bool)
    where = order[pos[repeat]]
    p_ts[where] = np.maximum(p_ts[where], delta.timestamps[repeat])
    p_rating[where] = delta.ratings[repeat]

    fresh = ~repeat
    new_user = np.zeros(nu, bool)
    new_user[len(u_old):] = True
    d_split = np.where(holdout_mask(d_user[fresh], config.holdout_fraction, config.seed, delta.date, new_user),
                       TEST, TRAIN).astype(np.int8)

    users = np.concatenate([p_user, d_user[fresh]])
    items = np.concatenate([p_item, d_item[fresh]])
    ratings = np.concatenate([p_rating, delta.ratings[fresh]]).astype(np.float32)
    ts = np.concatenate([p_ts, delta.timestamps[fresh]])
    split = np.concatenate([p_split, d_split])
    dropped = 0
    if config.window_days:
        lo, _ = day_window(delta.date)
        stale = (split == TRAIN) & (ts != np.iinfo(np.int64).min) & (ts < lo - config.window_days * DAY)
        dropped = int(stale.sum())
        users, items, ratings, ts, split = (a[~stale] for a in (users, items, ratings, ts, split))

    changed: dict[str, list[str]] = {}
    missing: dict[str, list[str]] = {}
    with DatasetWriter(out, nu, ni, source=delta.url, overwrite=overwrite) as writer:
        writer.add_interactions(pa.table({
            "user_id": users, "item_id": items, "rating": ratings,
            "timestamp": pa.array(ts, mask=ts == np.iinfo(np.int64).min), "split": split}))
        for kind, registry, names, num_old, given in (
                ("item", parent.modalities, item_names, len(i_old), delta.item_features),
                ("user", parent.user_modalities, user_names, len(u_old), delta.user_features)):
            for name in sorted(registry):
                x, changed_ids, missing_ids = _features(parent, kind, name, names, given.get(name), num_old)
                writer.add_features(kind, name, 0, x, source=delta.url)
                if changed_ids:
                    changed[f"{kind}:{name}"] = changed_ids
                if missing_ids:
                    missing[f"{kind}:{name}"] = missing_ids
                    logger.warning("%s: %d new %ss have no %r content (e.g. %s): they train on their ID alone "
                                   "(their %s row is the modality's mean)", delta.url, len(missing_ids), kind, name,
                                   missing_ids[0], name)
        writer.add_id_map("user", user_names)
        writer.add_id_map("item", item_names)
        carried = {key: {m: {**parent.manifest[key][m], **writer.modalities.get(m, {})}
                         if key == "modalities" else {**parent.manifest[key][m], **writer.user_modalities.get(m, {})}
                         for m in parent.manifest[key]} for key in ("modalities", "user_modalities")}
        summary = {"date": delta.date, "parent": parent.url, "delta": delta.summary(),
                   "num_users_before": len(u_old), "num_items_before": len(i_old),
                   "new_users": nu - len(u_old), "new_items": ni - len(i_old),
                   "repeats_of_known_pairs": int(repeat.sum()), "holdout": int((d_split == TEST).sum()),
                   "dropped_by_window": dropped, "window_days": config.window_days,
                   "changed_content": changed,
                   "new_without_content": {k: len(v) for k, v in missing.items()}, "new_without_content_ids": missing}
        manifest = writer.commit({**carried, "source": {"format": "nightly"}, "nightly": summary})
    logger.info("dataset version %s: %d users (+%d), %d items (+%d), holdout %d", out, nu, nu - len(u_old), ni,
                ni - len(i_old), summary["holdout"])
    return manifest
