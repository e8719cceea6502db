"""A synthetic timeline for nightly retraining: a bootstrap history plus N daily deltas.

The generative model is :class:`recgoat_dist.data.synthetic.PlantedModel` (topics, latents, the
``text`` / ``visual`` views, Zipf popularity inside a topic), sized for the *final* catalogue:

* **Bootstrap** (a canonical dataset): the first ``items`` items and ``users`` users, each user
  drawing distinct items by preference x popularity; split per user with the generator's rule.
* **Day d** (``events/date=YYYY-MM-DD/``): ``new_items_per_day`` items are released (with both
  content views) and ``new_users_per_day`` users arrive (with user LM features). Active users (a
  seeded sample of the known ones, plus every new user) draw ``interactions_per_active`` items
  among the released ones; with probability ``NEW_ITEM_SHARE`` a draw goes to an item released
  that day in the chosen topic, so new items are clicked on day one. A few rows repeat an
  earlier pair of the same day later that day (event logs do), which the ingest collapses.
* **Drift:** every day each user's topic weights move ``drift`` of the way toward a fresh
  Dirichlet draw, so interests change slowly.

Everything is a function of ``seed`` (one ``default_rng([seed, stream, day])`` per stream and day).
"""
from __future__ import annotations

import datetime as dt
import logging
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recgoat_dist.data.dataset import DatasetWriter
from recgoat_dist.data.synthetic import EXPLORE, FAVOURITE_TOPICS, PlantedModel, eval_size
from recgoat_dist.storage import filesystem, join

logger = logging.getLogger(__name__)

NEW_ITEM_SHARE = 0.25
REPEAT_SHARE = 0.03
DAY = 86_400
_BOOT, _DAY, _USERS_NEW, _DRIFT = 10, 11, 12, 13


def day_window(date: str) -> tuple[int, int]:
    """[start, stop) unix seconds (UTC) of an ISO date."""
    start = int(dt.datetime.fromisoformat(date).replace(tzinfo=dt.timezone.utc).timestamp())
    return start, start + DAY


def item_ids(ids) -> list[str]:
    return [f"i{int(i):06d}" for i in ids]


def user_ids(ids) -> list[str]:
    return [f"u{int(u):06d}" for u in ids]


class _World:
    """The state the days share: the planted model, users' topic weights, released items."""

    def __init__(self, seed: int, users: int, items: int, total_items: int, topics: int, dims: dict):
        self.seed = seed
        self.model = PlantedModel.create(seed, total_items, topics, 0, dims)
        self.views = self.model.item_views(0, 0, total_items)
        self.topic, self.rank = self.model.topic_and_rank(np.arange(total_items))
        self.released = items
        self.favourites = np.zeros((0, FAVOURITE_TOPICS), np.int64)
        self.weights = np.zeros((0, FAVOURITE_TOPICS))
        self.seen: list[set] = []
        self.add_users(users, np.random.default_rng([seed, _BOOT]))

    def add_users(self, n: int, rng: np.random.Generator) -> np.ndarray:
        fav = rng.integers(0, self.model.topics, (n, FAVOURITE_TOPICS))
        w = rng.dirichlet(np.ones(FAVOURITE_TOPICS), n)
        self.favourites = np.concatenate([self.favourites, fav])
        self.weights = np.concatenate([self.weights, w])
        self.seen += [set() for _ in range(n)]
        latent = np.einsum("uf,ufl->ul", w, self.model.centres[fav]).astype(np.float32)
        return self.model.user_text(int(rng.integers(1 << 30)), latent).astype(np.float32)

    def draw(self, user: int, count: int, rng: np.random.Generator, new_items: np.ndarray) -> list[int]:
        """``count`` distinct items the user has not seen, by preference x popularity."""
        out = []
        for _ in range(count * 8):
            if len(out) == count:
                break
            f = rng.choice(FAVOURITE_TOPICS, p=self.weights[user])
            topic = self.favourites[user, f] if rng.random() >= EXPLORE else rng.integers(self.model.topics)
            fresh = new_items[self.topic[new_items] == topic] if len(new_items) else new_items
            if len(fresh) and rng.random() < NEW_ITEM_SHARE:
                item = int(rng.choice(fresh))
            else:
                pool = np.nonzero(self.topic[:self.released] == topic)[0]
                if not len(pool):
                    continue
                pool = pool[np.argsort(self.rank[pool])]
                r = self.model.zipf_rank(np.array([rng.random()]), np.array([len(pool)]))[0]
                item = int(pool[r])
            if item not in self.seen[user]:
                self.seen[user].add(item)
                out.append(item)
        return out


def _write_parquet(url: str, table: pa.Table) -> None:
    fs, path = filesystem(url)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as fh:
        pq.write_table(table, fh)


def _features_table(kind: str, ids: list[str], x: np.ndarray) -> pa.Table:
    return pa.table({f"{kind}_id": pa.array(ids, pa.string()),
                     "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.astype(np.float32).ravel()),
                                                                    x.shape[1])})


def generate_timeline(out: str, *, users: int = 400, items: int = 300, days: int = 4,
                      new_items_per_day: int = 15, new_users_per_day: int = 20, active_users_per_day: int = 150,
                      interactions_per_user: float = 15.0, interactions_per_active: int = 3,
                      topics: int = 12, dims: dict | None = None, drift: float = 0.05,
                      start_date: str = "2024-01-01", seed: int = 0) -> dict:
    """Write ``out/base`` (a canonical dataset) and ``out/events/date=<day>/`` for ``days`` days
    starting the day after ``start_date``. Returns ``{"base", "delta", "dates"}`` (``delta`` is
    the ``{date}`` URL template of ``nightly.delta``)."""
    dims = dims or {"text": 32, "visual": 32}
    total_items = items + days * new_items_per_day
    world = _World(seed, users, items, total_items, topics, dims)
    rng = np.random.default_rng([seed, _BOOT, 1])
    base_lo, _ = day_window(start_date)
    latent = np.einsum("uf,ufl->ul", world.weights, world.model.centres[world.favourites]).astype(np.float32)
    user_text = world.model.user_text(0, latent).astype(np.float32)

    mu = math.log(interactions_per_user) - 0.5 * 0.6 ** 2
    counts = np.clip(np.rint(rng.lognormal(mu, 0.6, users)), 5, items // 2).astype(int)
    rows_u, rows_i, rows_s = [], [], []
    no_new = np.zeros(0, np.int64)
    for u in range(users):
        got = world.draw(u, int(counts[u]), rng, no_new)
        n_eval = int(eval_size(np.array([len(got)]))[0])
        split = np.zeros(len(got), np.int8)
        split[:n_eval], split[n_eval:2 * n_eval] = 1, 2
        rows_u += [u] * len(got)
        rows_i += got
        rows_s += list(rng.permutation(split))
    timestamps = base_lo - 1 - rng.integers(0, 60 * DAY, len(rows_u))
    base = join(out, "base")
    with DatasetWriter(base, users, items, source=f"timeline(seed={seed})", overwrite=True) as writer:
        for name, x in world.views.items():
            writer.add_features("item", name, 0, x[:items])
        writer.add_features("user", "text", 0, user_text)
        writer.add_interactions(pa.table({"user_id": np.array(rows_u, np.int64), "item_id": np.array(rows_i, np.int64),
                                          "rating": np.ones(len(rows_u), np.float32), "timestamp": timestamps,
                                          "split": np.array(rows_s, np.int8)}))
        writer.add_id_map("user", user_ids(range(users)))
        writer.add_id_map("item", item_ids(range(items)))
        writer.commit({"source": {"format": "timeline", "seed": seed, "topics": topics, "start_date": start_date}})

    dates = []
    template = join(out, "events", "date={date}")
    for d in range(1, days + 1):
        date = (dt.date.fromisoformat(start_date) + dt.timedelta(days=d)).isoformat()
        dates.append(date)
        day_rng = np.random.default_rng([seed, _DAY, d])
        drift_rng = np.random.default_rng([seed, _DRIFT, d])
        world.weights = (1 - drift) * world.weights + drift * drift_rng.dirichlet(
            np.ones(FAVOURITE_TOPICS), len(world.weights))
        new_items = np.arange(world.released, world.released + new_items_per_day)
        world.released += new_items_per_day
        first_new_user = len(world.weights)
        new_user_text = world.add_users(new_users_per_day, np.random.default_rng([seed, _USERS_NEW, d]))
        known = day_rng.choice(first_new_user, min(active_users_per_day, first_new_user), replace=False)
        active = np.concatenate([np.sort(known), np.arange(first_new_user, len(world.weights))])
        du, di = [], []
        for u in active:
            count = interactions_per_active + (3 if u >= first_new_user else 0)
            got = world.draw(int(u), count, day_rng, new_items)
            du += [int(u)] * len(got)
            di += got
        lo, _ = day_window(date)
        ts = lo + day_rng.integers(0, DAY - 3600, len(du))
        repeat = np.nonzero(day_rng.random(len(du)) < REPEAT_SHARE)[0]
        du += [du[r] for r in repeat]
        di += [di[r] for r in repeat]
        ts = np.concatenate([ts, ts[repeat] + 1800])
        url = template.format(date=date)
        _write_parquet(join(url, "interactions.parquet"), pa.table({
            "user_id": pa.array(user_ids(du)), "item_id": pa.array(item_ids(di)),
            "timestamp": pa.array(ts.astype(np.int64)), "rating": pa.array(np.ones(len(du), np.float32))}))
        for name, x in world.views.items():
            _write_parquet(join(url, "item_features", f"{name}.parquet"),
                           _features_table("item", item_ids(new_items), x[new_items]))
        _write_parquet(join(url, "user_features", "text.parquet"),
                       _features_table("user", user_ids(range(first_new_user, len(world.weights))), new_user_text))
        logger.info("timeline day %s: %d interactions, %d new items, %d new users", date, len(du),
                    len(new_items), new_users_per_day)
    return {"base": base, "delta": template, "dates": dates}
