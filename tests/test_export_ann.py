"""ANN ranking for export: recall against exact top-20, training items excluded, the index itself."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from recgoat_dist.eval.metrics import UserItems
from recgoat_dist.export.ranking import ann_topk, choose_engine, tune_ann
from recgoat_dist.export.recommendations import write_recommendations
from recgoat_dist.storage import Artifact, ArtifactWriter


def clustered(n: int, d: int, centres: np.ndarray, rng) -> np.ndarray:
    """Points around random centres: the structure real embeddings have and IVF relies on."""
    return (centres[rng.integers(0, len(centres), n)] + 0.6 * rng.standard_normal((n, d))).astype(np.float32)


@pytest.fixture(scope="module")
def catalog():
    rng = np.random.default_rng(0)
    d = 32
    centres = rng.standard_normal((40, d)) * 1.5
    items = torch.from_numpy(clustered(30_000, d, centres, rng))
    users = torch.from_numpy(clustered(3_500, d, centres, rng))
    # 5-60 training items per user, drawn from the items they would score highest among a pool
    pool = rng.integers(0, len(items), (len(users), 400))
    scores = torch.einsum("ud,upd->up", users, items[torch.from_numpy(pool)]).numpy()
    ranked = np.take_along_axis(pool, np.argsort(-scores, axis=1), 1)
    counts = rng.integers(5, 60, len(users))
    keep = np.arange(400)[None, :] < counts[:, None]
    pairs_u, pairs_i = [np.nonzero(keep)[0]], [ranked[keep]]
    train = UserItems.from_pairs(np.concatenate(pairs_u), np.concatenate(pairs_i), len(users), len(items))
    return users, items, train


def exact_top(users: torch.Tensor, items: torch.Tensor, train: UserItems, k: int) -> np.ndarray:
    """float64 numpy brute force, training items removed."""
    s = users.double().numpy() @ items.double().numpy().T
    rows, cols = train.rows(np.arange(len(users)))
    s[rows, cols] = -np.inf
    return np.argsort(-s, axis=1)[:, :k]


def test_engine_is_chosen_by_size():
    assert choose_engine("auto", 1000, 200_000) == ("exact", "1000 items <= export.ann_above=200000")
    assert choose_engine("auto", 300_000, 200_000)[0] == "ann"
    assert choose_engine("exact", 10**8, 0)[0] == "exact"
    with pytest.raises(ValueError, match="hnsw"):
        choose_engine("hnsw", 10, 0)


def test_ann_export_recall_and_exclusion(catalog, tmp_path):
    import faiss

    users, items, train = catalog
    uid = np.array([f"u{i}" for i in range(len(users))], dtype=object)
    iid = np.array([f"i{i}" for i in range(len(items))], dtype=object)
    with ArtifactWriter(str(tmp_path / "x"), kind="export") as w:
        ranking = write_recommendations(w, users, items, train, uid, iid, 20, user_block=1000,
                                        engine="auto", ann_above=10_000, recall_users=2000)
        w.commit({"ranking": ranking})
    assert ranking["engine"] == "ann" and "30000 items > export.ann_above=10000" in ranking["reason"]
    assert ranking["recall_users"] == 2000 and ranking["ann_recall@20"] >= 0.95
    assert 1 <= ranking["nprobe"] < ranking["nlist"]        # it did not fall back to probing everything

    art = Artifact(str(tmp_path / "x"), kind="export")
    recs = pa.concat_tables([art.read_table(f) for f in art.files("recommendations/")]).to_pandas()
    got = np.full((len(users), 20), -1)
    u = recs["user_id"].str[1:].astype(int).to_numpy()
    got[u, recs["rank"].to_numpy()] = recs["item_id"].str[1:].astype(int).to_numpy()
    assert (got >= 0).all()                                   # every user has 20 items
    assert not train.contains(np.arange(len(users))[:, None], got).any()
    # recall over *all* users against an independent float64 brute force
    exact = exact_top(users, items, train, 20)
    recall = (got[:, :, None] == exact[:, None, :]).any(axis=2).mean()
    assert recall >= 0.95
    assert abs(recall - ranking["ann_recall@20"]) < 0.02      # the sample estimate is honest
    # scores are dot products, in decreasing order within a user
    row = recs.iloc[123]
    assert float(users[int(row.user_id[1:])] @ items[int(row.item_id[1:])]) == pytest.approx(row.score, rel=1e-4)
    assert (recs.groupby("user_id")["score"].apply(lambda s: (np.diff(s.to_numpy()) <= 1e-5).all())).all()

    # the serialized index is the one that ranked: same answers for a few users
    index = faiss.deserialize_index(np.frombuffer(art.read_bytes("index/items.faiss"), dtype=np.uint8))
    assert index.ntotal == len(items)
    index.nprobe = ranking["nprobe"]
    probe = np.arange(0, len(users), 97)
    np.testing.assert_array_equal(ann_topk(index, users, items, probe, train, 20), got[probe])


def test_heavy_users_are_completed(catalog):
    """A user whose training items fill the index's whole answer still gets k items."""
    users, items, _ = catalog
    heavy = UserItems.from_pairs(np.zeros(600, np.int64),
                                 np.argsort(-(items @ users[0]).numpy())[:600], len(users), len(items))
    ranker = tune_ann(users, items, heavy, tune_users=200, recall_users=200)
    top = ranker.topk(users, items, np.array([0, 1]), heavy, 20)
    assert (top >= 0).all() and not heavy.contains(np.zeros((1, 20), np.int64), top[:1]).any()
    np.testing.assert_array_equal(np.sort(top[0]), np.sort(exact_top(users[:1], items, heavy, 20)[0]))


def test_item_index_is_the_knn_constant_cell_index_with_hnsw_quantizer(catalog, tmp_path):
    """Above ``export.ann_above`` the item index is the KNN graph's constant-cell IVF (items /
    CELL_ROWS cells); with more cells than ``hnsw_above`` (lowered here: 234 cells > 64) its coarse
    quantizer is HNSW. nprobe takes the KNN's half steps up to the recall target, recall is met,
    and the written index carries the tuned nprobe and efSearch: it answers as the export ranked."""
    import faiss

    from recgoat_dist.graph.ivf import CELL_ROWS

    users, items, train = catalog
    uid = np.array([f"u{i}" for i in range(len(users))], dtype=object)
    iid = np.array([f"i{i}" for i in range(len(items))], dtype=object)
    with ArtifactWriter(str(tmp_path / "x"), kind="export") as w:
        ranking = write_recommendations(w, users, items, train, uid, iid, 20, user_block=1000, engine="auto",
                                        ann_above=10_000, recall_users=1000, hnsw_above=64)
        w.commit({"ranking": ranking})
    nlist = round(len(items) / CELL_ROWS)
    assert ranking["engine"] == "ann" and ranking["nlist"] == nlist
    assert ranking["index_type"] == f"IVF{nlist}_HNSW32,Flat (inner product)"
    steps = [int(p) for p in ranking["tuning_recall"]]
    assert steps == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64][:len(steps)] and steps[-1] == ranking["nprobe"]
    assert ranking["tuning_recall"][str(ranking["nprobe"])] >= 0.97 > ranking["tuning_recall"][str(steps[-2])]
    assert ranking["ann_recall@20"] >= 0.95 and ranking["nprobe"] * CELL_ROWS < len(items) / 4

    art = Artifact(str(tmp_path / "x"), kind="export")
    index = faiss.deserialize_index(np.frombuffer(art.read_bytes("index/items.faiss"), dtype=np.uint8))
    ivf = faiss.extract_index_ivf(index)
    assert ivf.nprobe == ranking["nprobe"]
    assert faiss.downcast_index(ivf.quantizer).hnsw.efSearch == max(64, 2 * ranking["nprobe"])
    recs = pa.concat_tables([art.read_table(f) for f in art.files("recommendations/")]).to_pandas()
    got = np.full((len(users), 20), -1)
    got[recs["user_id"].str[1:].astype(int).to_numpy(), recs["rank"].to_numpy()] = \
        recs["item_id"].str[1:].astype(int).to_numpy()
    probe = np.arange(0, len(users), 89)
    np.testing.assert_array_equal(ann_topk(index, users, items, probe, train, 20), got[probe])
