"""The embedded default dataset: interactions and two item modalities from a planted generative model.

The model (all of it determined by ``seed``):

* **Topics.** Item ``i`` sits at position ``p(i) = (a*i + b) mod N`` of a seeded affine bijection of
  ``0..N-1``; its topic is ``p mod K`` and its popularity rank inside the topic is ``p div K``. The
  inverse ``i = a^-1 (r*K + t - b) mod N`` gives the item of rank ``r`` in topic ``t`` in O(1), so
  sampling never builds per-topic item lists.
* **Latents.** ``z_i = c_topic(i) + LATENT_NOISE * e_i`` with ``c_t ~ N(0, I_L)``, ``e_i ~ N(0, I_L)``.
* **Modalities.** Each modality ``m`` (``text``, ``visual``) is its own noisy non-linear view of the
  latent, a random one-hidden-layer network: ``x_m = tanh(z W1_m + b1_m) W2_m + s_m * n``.
  ``visual`` is noisier than ``text``, so the two views carry the same information unequally.
* **Users.** User ``u`` prefers ``FAVOURITE_TOPICS`` topics with Dirichlet(1) weights and explores
  a uniformly random topic with probability ``EXPLORE``. An interaction draws a topic from that
  preference, then a rank from a truncated Zipf law ``P(r) ~ (r+1)^-POPULARITY_EXPONENT``: the
  probability of an item is preference(topic) x power-law popularity(rank). The number of
  interactions of a user is log-normal with mean ``interactions_per_user`` (at least 3, at most
  half the warm catalogue); repeated draws of an item count once.
* **User LM features** (user modality ``text``): the ``text`` view network applied to the user's
  preference latent ``sum_f w_f c_f`` plus noise, standing in for an LM encoding of the user's
  behaviour prompt.
* **Split.** Per user and seeded, the rule of :mod:`recgoat_dist.data.generic`: ``n >= 10`` gives
  ``n//10`` valid, ``n//10`` test, the rest train; ``3 <= n < 10`` gives ``n-2 / 1 / 1``.
* **Cold items** are ``item_id >= num_items - cold_items`` (recorded in the manifest as
  ``cold_items`` and ``cold_item_rule``). They are drawn like any item, but a cold item that
  lands in a user's *train* slot is replaced by the user's next warm draw: cold items occur in
  valid/test at their natural rate and never in train. (In a small catalogue a user may run out of
  warm draws; that user is re-split with the cold items in valid/test, so the rule still holds.)
  A model that reads the modalities can place cold items; an ID-only model cannot, since their ID
  embeddings never receive a gradient.
* **Timestamps** are uniform over two years from 2020-01-01, independent of the split.

The ground truth is recoverable for diagnostics: ``PlantedModel.create(seed, num_items, topics,
cold_items, dims).topic_and_rank(item_ids)`` with the values in the manifest's ``source``.

Memory is bounded by the chunk sizes, not by the catalogue: item features are generated in blocks of
``ITEM_CHUNK`` items from ``default_rng([seed, 1, block])``, interactions in blocks of
``chunk_users`` users from ``default_rng([seed, 2, block])``. The output is therefore a function of
the seed *and* of ``chunk_users`` (recorded in the manifest); the item-side output does not depend
on ``chunk_users``.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from recgoat_dist.data.dataset import DatasetWriter, chunk_ranges

logger = logging.getLogger(__name__)

MODALITIES = ("text", "visual")
LATENT_DIM = 16
HIDDEN_DIM = 64
LATENT_NOISE = 0.8
VIEW_NOISE = {"text": 0.3, "visual": 0.5}
ITEM_CHUNK = 65_536
FAVOURITE_TOPICS = 3
EXPLORE = 0.1
POPULARITY_EXPONENT = 1.0
COUNT_SIGMA = 0.8                 # log-normal spread of interactions per user
MIN_INTERACTIONS = 3
POOL_FACTOR, POOL_EXTRA = 2.0, 8  # draws per user: enough distinct warm items after de-duplication
T0, TIME_SPAN = 1_577_836_800, 2 * 365 * 86_400   # timestamps: 2020-01-01 + up to two years
USER_TEXT_NOISE = 0.3
_MODEL, _ITEMS, _USERS, _USER_TEXT = 0, 1, 2, 3  # RNG streams


@dataclass(frozen=True)
class PlantedModel:
    """The generative model's global parameters; everything per item or user is drawn per chunk."""

    seed: int
    num_items: int
    topics: int
    cold_items: int
    dims: dict[str, int]
    a: int
    b: int
    a_inv: int
    centres: np.ndarray                                  # (topics, LATENT_DIM)
    views: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]   # W1, b1, W2 per modality

    @classmethod
    def create(cls, seed: int, num_items: int, topics: int, cold_items: int,
               dims: dict[str, int]) -> "PlantedModel":
        rng = np.random.default_rng([seed, _MODEL])
        a = 1
        if num_items > 2:
            while True:
                a = int(rng.integers(2, num_items))
                if math.gcd(a, num_items) == 1:
                    break
        b = int(rng.integers(0, num_items))
        centres = rng.standard_normal((topics, LATENT_DIM)).astype(np.float32)
        views = {}
        for name in MODALITIES:
            w1 = (rng.standard_normal((LATENT_DIM, HIDDEN_DIM)) / math.sqrt(LATENT_DIM)).astype(np.float32)
            b1 = (0.5 * rng.standard_normal(HIDDEN_DIM)).astype(np.float32)
            w2 = (rng.standard_normal((HIDDEN_DIM, dims[name])) / math.sqrt(HIDDEN_DIM)).astype(np.float32)
            views[name] = (w1, b1, w2)
        return cls(seed, num_items, topics, cold_items, dims, a, b, pow(a, -1, num_items) if num_items > 1 else 0,
                   centres, views)

    # -- items ------------------------------------------------------------------------------------
    def topic_and_rank(self, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Topic and in-topic popularity rank (0 = most popular) of each item id."""
        p = (self.a * np.asarray(items, dtype=np.int64) + self.b) % self.num_items
        return p % self.topics, p // self.topics

    def item_at(self, topic: np.ndarray, rank: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`topic_and_rank`."""
        p = np.asarray(rank, dtype=np.int64) * self.topics + topic
        return (self.a_inv * ((p - self.b) % self.num_items)) % self.num_items

    def topic_size(self, topic: np.ndarray) -> np.ndarray:
        return (self.num_items - np.asarray(topic, dtype=np.int64) + self.topics - 1) // self.topics

    def is_cold(self, items: np.ndarray) -> np.ndarray:
        return np.asarray(items) >= self.num_items - self.cold_items

    def item_views(self, block: int, start: int, stop: int,
                   modalities: tuple[str, ...] = MODALITIES) -> dict[str, np.ndarray]:
        """Features of items ``start..stop`` (item block ``block``), one float32 array per modality.

        Views are drawn in :data:`MODALITIES` order from one stream, so leaving out a later view
        (``modalities=("text",)``) leaves the earlier ones unchanged.
        """
        rng = np.random.default_rng([self.seed, _ITEMS, block])
        topic, _ = self.topic_and_rank(np.arange(start, stop))
        z = self.centres[topic] + LATENT_NOISE * rng.standard_normal((stop - start, LATENT_DIM), dtype=np.float32)
        out = {}
        last = max(MODALITIES.index(m) for m in modalities)
        for name in MODALITIES[:last + 1]:
            w1, b1, w2 = self.views[name]
            x = np.tanh(z @ w1 + b1) @ w2
            x += VIEW_NOISE[name] * rng.standard_normal(x.shape, dtype=np.float32)
            if name in modalities:
                out[name] = x
        return out

    # -- users ------------------------------------------------------------------------------------
    def zipf_rank(self, u: np.ndarray, size: np.ndarray) -> np.ndarray:
        """Inverse-CDF draw of a rank in ``[0, size)`` with density ~ (r+1)^-s (continuous approx.)."""
        s = POPULARITY_EXPONENT
        top = size.astype(np.float64) + 1.0
        if abs(s - 1.0) < 1e-9:
            x = np.exp(u * np.log(top))
        else:
            x = (1.0 + u * (top ** (1.0 - s) - 1.0)) ** (1.0 / (1.0 - s))
        return np.clip(np.floor(x).astype(np.int64) - 1, 0, size - 1)

    def user_text(self, block: int, latent: np.ndarray) -> np.ndarray:
        """User LM features: the *text* view network applied to the user's preference latent.

        Item and user text then live in one space, as when one language model encodes item
        descriptions and user behaviour prompts alike. Own RNG stream: adding user features does
        not change items or interactions.
        """
        rng = np.random.default_rng([self.seed, _USER_TEXT, block])
        w1, b1, w2 = self.views["text"]
        x = np.tanh(latent @ w1 + b1) @ w2
        return x + USER_TEXT_NOISE * rng.standard_normal(x.shape, dtype=np.float32)

    def user_interactions(self, block: int, start: int, stop: int, mean_count: float) -> tuple[pa.Table, np.ndarray]:
        """Interactions of users ``start..stop`` (user block ``block``), sorted by user and time,
        and the users' preference latents (m, LATENT_DIM): the preference-weighted topic centres."""
        rng = np.random.default_rng([self.seed, _USERS, block])
        m = stop - start
        warm = self.num_items - self.cold_items
        mu = math.log(mean_count) - COUNT_SIGMA ** 2 / 2
        counts = np.clip(np.rint(rng.lognormal(mu, COUNT_SIGMA, m)), MIN_INTERACTIONS,
                         max(MIN_INTERACTIONS, warm // 2)).astype(np.int64)
        favourites = rng.integers(0, self.topics, (m, FAVOURITE_TOPICS))
        weights = rng.dirichlet(np.ones(FAVOURITE_TOPICS), m)
        latent = np.einsum("uf,ufl->ul", weights, self.centres[favourites]).astype(np.float32)

        # Draw a pool per user: topic ~ preference, rank ~ Zipf within the topic.
        pool = np.ceil(POOL_FACTOR * counts).astype(np.int64) + POOL_EXTRA
        owner = np.repeat(np.arange(m), pool)
        u = rng.random(owner.size)
        pick = np.zeros(owner.size, dtype=np.int64)
        acc = np.zeros(owner.size)
        for f in range(FAVOURITE_TOPICS - 1):
            acc += weights[owner, f]
            pick += u > acc
        topic = favourites[owner, pick]
        explore = rng.random(owner.size) < EXPLORE
        topic[explore] = rng.integers(0, self.topics, int(explore.sum()))
        item = self.item_at(topic, self.zipf_rank(rng.random(owner.size), self.topic_size(topic)))

        # Keep each user's first draw of an item, in draw order.
        key = owner * self.num_items + item
        order = np.argsort(key, kind="stable")
        first = np.ones(key.size, dtype=bool)
        first[order[1:]] = key[order[1:]] != key[order[:-1]]
        owner, item = owner[first], item[first]
        have = np.bincount(owner, minlength=m)
        offsets = np.concatenate([[0], np.cumsum(have)[:-1]])
        ordinal = np.arange(owner.size) - offsets[owner]

        # The user's items are the first n distinct draws; a random permutation of them takes the
        # valid and test slots, the rest is train.
        n = np.minimum(counts, have)
        n_eval = eval_size(n)
        chosen = ordinal < n[owner]
        split = np.zeros(owner.size, dtype=np.int8)
        idx = np.nonzero(chosen)[0]
        idx = idx[np.lexsort((rng.random(idx.size), owner[idx]))]
        slot = np.arange(idx.size) - np.concatenate([[0], np.cumsum(n)[:-1]])[owner[idx]]
        split[idx] = np.where(slot < n_eval[owner[idx]], 1, np.where(slot < 2 * n_eval[owner[idx]], 2, 0))

        # Cold items in train slots give way to the user's next warm draws.
        cold = self.is_cold(item)
        dropped = chosen & (split == 0) & cold
        deficit = np.bincount(owner[dropped], minlength=m)
        spare = ~chosen & ~cold
        spare_rank = np.cumsum(spare) - 1
        spare_first = np.concatenate([[0], np.cumsum(np.bincount(owner[spare], minlength=m))[:-1]])
        refill = spare & ((spare_rank - spare_first[owner]) < deficit[owner])
        keep = (chosen & ~dropped) | refill
        owner, item, split = owner[keep], item[keep], split[keep]

        counts = np.zeros((m, 3), dtype=np.int64)
        np.add.at(counts, (owner, split), 1)
        expected = eval_size(counts.sum(1))
        broken = np.nonzero((counts[:, 0] == 0) | (counts[:, 1] != expected) | (counts[:, 2] != expected))[0]
        if broken.size:
            fixed = ~np.isin(owner, broken)
            parts = [(owner[fixed], item[fixed], split[fixed])]
            for user in broken:
                items, splits = self._repair(item[owner == user], int(favourites[user, 0]), rng)
                parts.append((np.full(items.size, user), items, splits))
            owner, item, split = (np.concatenate(p) for p in zip(*parts))

        timestamp = T0 + rng.integers(0, TIME_SPAN, owner.size)
        order = np.lexsort((timestamp, owner))
        return pa.table({
            "user_id": pa.array(start + owner[order]),
            "item_id": pa.array(item[order]),
            "rating": pa.array(np.ones(owner.size, dtype=np.float32)),
            "timestamp": pa.array(timestamp[order]),
            "split": pa.array(split[order]),
        }), latent

    def _repair(self, items: np.ndarray, favourite: int, rng: np.random.Generator):
        """Re-split one user whose cold draws could not all be replaced by warm ones.

        Only small catalogues (or very heavy users) get here. Cold items go to valid/test (dropping the last-drawn ones
        while there are more than valid/test slots), warm items fill the rest; the split rule and
        "at least one train interaction" then hold exactly.
        """
        cold = self.is_cold(items)
        warm_items, cold_items = items[~cold], items[cold]
        if not warm_items.size:               # the most popular warm item of the favourite topic
            ranks = np.arange(int(self.topic_size(favourite)))
            candidates = self.item_at(np.full(ranks.size, favourite), ranks)
            candidates = candidates[~self.is_cold(candidates)]
            warm_items = candidates[:1] if candidates.size else np.zeros(1, dtype=np.int64)
        while cold_items.size > 2 * eval_size(warm_items.size + cold_items.size):
            cold_items = cold_items[:-1]
        n_eval = int(eval_size(warm_items.size + cold_items.size))
        warm_items = rng.permutation(warm_items)
        fill = 2 * n_eval - cold_items.size
        evaluated = rng.permutation(np.concatenate([cold_items, warm_items[:fill]]))
        items = np.concatenate([evaluated, warm_items[fill:]])
        split = np.zeros(items.size, dtype=np.int8)
        split[:n_eval], split[n_eval:2 * n_eval] = 1, 2
        return items, split


def eval_size(n):
    """Validation (= test) interactions of a user with ``n``: n//10 from 10 on, 1 from 3, else 0."""
    return np.where(n >= 10, n // 10, np.where(n >= 3, 1, 0))


def _validate(users: int, items: int, topics: int, text_dim: int, visual_dim: int,
              interactions_per_user: float, cold_item_fraction: float, chunk_users: int,
              item_chunk: int = ITEM_CHUNK, modalities: tuple[str, ...] = MODALITIES) -> None:
    checks = [
        (users >= 1, f"users must be >= 1, got {users}"),
        (items >= 2, f"items must be >= 2, got {items}"),
        (1 <= topics <= items, f"topics must be in [1, items={items}], got {topics}"),
        (text_dim >= 1 and visual_dim >= 1, f"text_dim and visual_dim must be >= 1, got {text_dim}, {visual_dim}"),
        (interactions_per_user >= 1, f"interactions_per_user must be >= 1, got {interactions_per_user}"),
        (0 <= cold_item_fraction <= 0.5, f"cold_item_fraction must be in [0, 0.5], got {cold_item_fraction}"),
        (chunk_users >= 1, f"chunk_users must be >= 1, got {chunk_users}"),
        (item_chunk >= 1, f"item_chunk must be >= 1, got {item_chunk}"),
        (len(modalities) >= 1 and set(modalities) <= set(MODALITIES) and len(set(modalities)) == len(modalities),
         f"modalities must be distinct names from {MODALITIES}, got {modalities}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(f"synthetic: {message}")


def _original_ids(prefix: str, n: int):
    width = max(6, len(str(n - 1)))
    return (f"{prefix}{i:0{width}d}" for i in range(n))


def synthetic_blocks(model: PlantedModel, users: int, interactions_per_user: float, chunk_users: int,
                     item_chunk: int = ITEM_CHUNK, modalities: tuple[str, ...] = MODALITIES,
                     user_text: bool = True) -> Iterator[tuple]:
    """The dataset as a stream of blocks, in the order they are written.

    Yields ``("item", name, start, features)`` for every item block and modality, then per user
    block ``("interactions", table)`` and (with ``user_text``) ``("user", "text", start, features)``.
    Memory is one block: ``item_chunk`` items or ``chunk_users`` users.
    """
    blocks = list(chunk_ranges(model.num_items, item_chunk))
    for block, (start, stop) in enumerate(tqdm(blocks, desc="item features", unit="chunk", mininterval=2)):
        for name, values in model.item_views(block, start, stop, modalities).items():
            yield "item", name, start, values
    blocks = list(chunk_ranges(users, chunk_users))
    for block, (start, stop) in enumerate(tqdm(blocks, desc="interactions", unit="chunk", mininterval=2)):
        table, latent = model.user_interactions(block, start, stop, interactions_per_user)
        yield ("interactions", table)
        if user_text:
            yield "user", "text", start, model.user_text(block, latent)


def synthetic_arrays(users: int, items: int, seed: int = 0, *, text_dim: int = 64, visual_dim: int = 64,
                     topics: int = 32, interactions_per_user: float = 20.0, cold_item_fraction: float = 0.05,
                     chunk_users: int = 50_000, item_chunk: int = ITEM_CHUNK,
                     modalities: tuple[str, ...] = MODALITIES, user_text: bool = True) -> dict[str, np.ndarray]:
    """The same dataset as :func:`generate_synthetic`, held in memory (for tests and small runs):
    interaction columns, ``item_<modality>`` and ``user_text`` feature matrices."""
    _validate(users, items, topics, text_dim, visual_dim, interactions_per_user, cold_item_fraction,
              chunk_users, item_chunk, modalities)
    model = PlantedModel.create(seed, items, topics, int(round(cold_item_fraction * items)),
                                {"text": text_dim, "visual": visual_dim})
    parts: dict[str, list] = {}
    for record in synthetic_blocks(model, users, interactions_per_user, chunk_users, item_chunk,
                                   tuple(modalities), user_text):
        if record[0] == "interactions":
            for column in record[1].column_names:
                parts.setdefault(column, []).append(record[1][column].to_numpy())
        else:
            parts.setdefault(f"{record[0]}_{record[1]}", []).append(record[3])
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def generate_synthetic(out: str, users: int, items: int, seed: int = 0, *, text_dim: int = 64,
                       visual_dim: int = 64, topics: int = 32, interactions_per_user: float = 20.0,
                       cold_item_fraction: float = 0.05, chunk_users: int = 50_000,
                       user_text: bool = True, overwrite: bool = False, item_chunk: int = ITEM_CHUNK,
                       modalities: tuple[str, ...] = MODALITIES) -> dict:
    """Write a synthetic dataset (item modalities ``modalities``, default ``text`` and ``visual``;
    user modality ``text`` unless ``user_text=False``) to ``out``; returns the manifest.

    See the module docstring for the generative model. Original ids are ``u000123`` / ``i000045``.
    Streams: every block is written as soon as it is drawn (:func:`synthetic_blocks`), so memory
    is bounded by ``chunk_users`` and ``item_chunk``, not by the catalogue.
    """
    modalities = tuple(modalities)
    _validate(users, items, topics, text_dim, visual_dim, interactions_per_user, cold_item_fraction,
              chunk_users, item_chunk, modalities)
    t0 = time.perf_counter()
    cold = int(round(cold_item_fraction * items))
    model = PlantedModel.create(seed, items, topics, cold, {"text": text_dim, "visual": visual_dim})
    params = {"format": "synthetic", "seed": seed, "users": users, "items": items, "topics": topics,
              "text_dim": text_dim, "visual_dim": visual_dim, "interactions_per_user": interactions_per_user,
              "cold_item_fraction": cold_item_fraction, "chunk_users": chunk_users,
              "item_chunk": item_chunk, "favourite_topics": FAVOURITE_TOPICS, "explore": EXPLORE,
              "popularity_exponent": POPULARITY_EXPONENT, "latent_dim": LATENT_DIM,
              "latent_noise": LATENT_NOISE, "view_noise": dict(VIEW_NOISE),
              "user_text": user_text, "user_text_noise": USER_TEXT_NOISE}
    if modalities != MODALITIES:
        params["modalities"] = list(modalities)
    with DatasetWriter(out, users, items, source=f"synthetic(seed={seed})", overwrite=overwrite) as writer:
        rows = 0
        for record in synthetic_blocks(model, users, interactions_per_user, chunk_users, item_chunk,
                                       modalities, user_text):
            if record[0] == "interactions":
                writer.add_interactions(record[1], first_row=rows)
                rows += record[1].num_rows
            else:
                writer.add_features(*record)
        t1 = time.perf_counter()
        logger.info("wrote %d items x %s and %d interactions of %d users in %.1f s", items,
                    list(modalities), rows, users, t1 - t0)

        writer.add_id_map("user", _original_ids("u", users))
        writer.add_id_map("item", _original_ids("i", items))
        manifest = writer.commit({
            "source": params,
            "cold_items": cold,
            "cold_item_rule": "item_id >= num_items - cold_items (never in train)",
        })
    logger.info("id maps and validation in %.1f s; synthetic dataset at %s in %.1f s",
                time.perf_counter() - t1, out, time.perf_counter() - t0)
    return manifest
