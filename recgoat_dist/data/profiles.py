"""The paper's LLM-enhanced user features: a behaviour prompt per user, encoded as user modality ``text``.

A user's prompt lists the texts of the items of their *training* interactions, most recent first
(by timestamp; rows without a timestamp count as older than any timestamped row, and ties keep file
order), at most ``max_items`` of them. Validation and test interactions are never read, so the
prompt cannot leak the items the user is evaluated on.

Bounded memory: one streaming pass over the training interactions spills ``(user, timestamp,
row, item)`` records into on-disk buckets of consecutive users; each bucket is then sorted on its
own, its users' prompts are built and encoded batch by batch, and the vectors are appended in user
order. Memory is the item text table plus one bucket, not the interaction count.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from typing import Iterator

import numpy as np
import pyarrow as pa

from recgoat_dist.data.dataset import MODALITY_NAME, DataError, Dataset, add_modality
from recgoat_dist.data.text import encode_blocks, get_encoder, item_texts

logger = logging.getLogger(__name__)

_RECORD = np.dtype([("user", np.int64), ("time", np.int64), ("row", np.int64), ("item", np.int64)])
USERS_PER_BUCKET = 65_536
MAX_BUCKETS = 256
_NO_TIME = np.iinfo(np.int64).min + 1   # negated in the sort, so not min itself


@dataclass(frozen=True)
class PromptTemplate:
    """How a user's item texts become one prompt; character budgets keep prompts near the encoder's
    window (MiniLM reads 256 word pieces, about 1,000 characters of English)."""

    intro: str
    separator: str
    end: str
    empty: str
    item_chars: int
    prompt_chars: int

    def render(self, texts: list[str]) -> str:
        parts, used = [], len(self.intro) + len(self.end)
        for text in texts:
            text = _clip(" ".join(text.split()), self.item_chars)
            if not text:
                continue
            cost = len(text) + (len(self.separator) if parts else 0)
            if parts and used + cost > self.prompt_chars:
                break
            parts.append(text)
            used += cost
        if not parts:
            return self.empty
        return _clip(self.intro + self.separator.join(parts), self.prompt_chars - len(self.end)) + self.end


def _clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters at the last tag or word boundary, when there is one."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    boundary = max(cut.rfind(","), cut.rfind(";"), cut.rfind(" "))
    return (cut[:boundary] if boundary > limit // 2 else cut).rstrip(" ,;")


# Up to 160 characters of each item: about six items reach the encoder's window.
_INTERACTED_WITH = PromptTemplate(
    intro="The user interacted with these items, most recent first: ", separator="; ", end=".",
    empty="The user has no recorded interactions.", item_chars=160, prompt_chars=1000)
PROMPT_TEMPLATES = {
    "interacted_with_v1": _INTERACTED_WITH,
    # The head of each item's text only (a title, or its first tags): the same window then holds
    # about fifteen items, so the prompt covers more of a long history and less of each item.
    "interacted_with_short_v2": replace(_INTERACTED_WITH, item_chars=60),
}
DEFAULT_TEMPLATE = "interacted_with_v1"


def _bucket_layout(num_users: int) -> tuple[int, int]:
    per_bucket = max(USERS_PER_BUCKET, math.ceil(num_users / MAX_BUCKETS))
    return per_bucket, max(1, math.ceil(num_users / per_bucket))


def iter_train_histories(dataset: Dataset, max_items: int) -> Iterator[tuple[int, list[np.ndarray]]]:
    """Yield ``(first user, [item ids of each user, most recent first])`` for consecutive user ranges.

    Reads only the train split; every user of the dataset appears once (an empty array if the user
    has no training interaction).
    """
    per_bucket, buckets = _bucket_layout(dataset.num_users)
    scratch = tempfile.mkdtemp(prefix="recgoat-histories-")
    try:
        handles = [open(os.path.join(scratch, f"{b}.bin"), "wb") for b in range(buckets)]
        row = 0
        for table in dataset.iter_interactions(["train"], ["user_id", "item_id", "timestamp"]):
            records = np.empty(table.num_rows, dtype=_RECORD)
            records["user"] = table["user_id"].to_numpy()
            records["item"] = table["item_id"].to_numpy()
            records["time"] = table["timestamp"].fill_null(_NO_TIME).to_numpy()
            records["row"] = np.arange(row, row + table.num_rows)
            row += table.num_rows
            bucket = records["user"] // per_bucket
            order = np.argsort(bucket, kind="stable")
            bounds = np.searchsorted(bucket[order], np.arange(buckets + 1))
            for b in range(buckets):
                if bounds[b + 1] > bounds[b]:
                    handles[b].write(records[order[bounds[b]:bounds[b + 1]]].tobytes())
        for fh in handles:
            fh.close()
        for b in range(buckets):
            first, last = b * per_bucket, min(dataset.num_users, (b + 1) * per_bucket)
            records = np.fromfile(os.path.join(scratch, f"{b}.bin"), dtype=_RECORD)
            os.remove(os.path.join(scratch, f"{b}.bin"))
            # Most recent first within each user: sort by user, then time and row descending.
            records = records[np.lexsort((-records["row"], -records["time"], records["user"]))] \
                if records.size else records
            starts = np.searchsorted(records["user"], np.arange(first, last + 1))
            yield first, [records["item"][starts[k]:min(starts[k + 1], starts[k] + max_items)]
                          for k in range(last - first)]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def iter_user_prompts(dataset: Dataset, texts: pa.Array, max_items: int = 50,
                      template: str = DEFAULT_TEMPLATE, batch_size: int = 128) -> Iterator[list[str]]:
    """Prompts of users ``0..num_users-1`` in order, in lists of at most ``batch_size``.

    ``texts[i]`` is the text of item ``i`` (see :func:`recgoat_dist.data.text.item_texts`).
    """
    form = PROMPT_TEMPLATES[template]
    for _, histories in iter_train_histories(dataset, max_items):
        for start in range(0, len(histories), batch_size):
            batch = histories[start:start + batch_size]
            flat = np.concatenate(batch) if batch else np.zeros(0, np.int64)
            words = texts.take(pa.array(flat, pa.int64())).to_pylist()
            offsets = np.concatenate([[0], np.cumsum([len(h) for h in batch])])
            yield [form.render(words[offsets[k]:offsets[k + 1]]) for k in range(len(batch))]


def build_user_profiles(data: str, text: str, encoder: str = "minilm", name: str = "text",
                        max_items: int = 50, batch_size: int = 128, template: str = DEFAULT_TEMPLATE) -> dict:
    """Encode each user's behaviour prompt (``template``, a key of :data:`PROMPT_TEMPLATES`) with
    ``encoder``; add it as user modality ``name``. Returns the dataset's new manifest.
    """
    t0 = time.perf_counter()
    dataset = Dataset(data)
    if not MODALITY_NAME.match(name):
        raise DataError(f"{data}: unknown modality name {name!r}: expected text, visual or audio, "
                        "optionally with a suffix such as text_minilm")
    if name in dataset.user_modalities:
        raise DataError(f"{data}: user modality {name!r} already exists")
    if template not in PROMPT_TEMPLATES:
        raise ValueError(f"unknown prompt template {template!r}; choose one of {', '.join(PROMPT_TEMPLATES)}")
    if max_items < 1 or batch_size < 1:
        raise ValueError(f"max_items and batch_size must be >= 1, got {max_items}, {batch_size}")
    aligned = item_texts(dataset, text)
    model = get_encoder(encoder)
    prompts = iter_user_prompts(dataset, aligned.texts, max_items, template, batch_size)
    manifest = add_modality(data, "user", name, encode_blocks(model, prompts, dataset.num_users, "user prompts"),
                            source=text, extra={
        "encoder": encoder,
        "encoder_model": getattr(model, "model_id", type(model).__name__),
        "prompt_template": template,
        "max_items": max_items,
        "history": "train split only, most recent first",
        "text_source": text,
        "missing_text": aligned.missing,
        "users_without_history": int(dataset.manifest.get("users_without_train", 0)),
    })
    logger.info("encoded %d user prompts as user modality %r in %.1f s", dataset.num_users, name,
                time.perf_counter() - t0)
    return manifest
