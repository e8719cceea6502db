"""The embedded synthetic dataset: determinism, shapes, split rules, cold items, planted signal."""
from __future__ import annotations

import numpy as np
import pytest

from recgoat_dist.cli import main
from recgoat_dist.data.dataset import Dataset
from recgoat_dist.data.synthetic import PlantedModel, generate_synthetic

SMALL = dict(users=300, items=400, topics=8, chunk_users=128)   # 3 interaction parts


def checksums(manifest: dict) -> dict:
    return {rel: info["sha256"] for rel, info in manifest["files"].items()}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[str, dict]:
    out = str(tmp_path_factory.mktemp("synthetic") / "seed0")
    return out, generate_synthetic(out, seed=0, **SMALL)


def planted(manifest: dict) -> PlantedModel:
    src = manifest["source"]
    return PlantedModel.create(src["seed"], manifest["num_items"], src["topics"], manifest["cold_items"],
                               {"text": src["text_dim"], "visual": src["visual_dim"]})


def test_same_seed_same_files_other_seed_differs(small, tmp_path):
    _, first = small
    again = generate_synthetic(str(tmp_path / "again"), seed=0, **SMALL)
    other = generate_synthetic(str(tmp_path / "other"), seed=1, **SMALL)
    assert checksums(again) == checksums(first)
    assert set(checksums(other)) == set(checksums(first))
    differing = {rel for rel, sha in checksums(other).items() if checksums(first)[rel] != sha}
    assert differing == {rel for rel in checksums(first) if not rel.startswith("id_maps/")}


def test_shapes_ids_and_manifest(small):
    url, manifest = small
    ds = Dataset(url)
    assert (ds.num_users, ds.num_items) == (300, 400)
    assert set(ds.modalities) == {"text", "visual"}
    for name in ("text", "visual"):
        features = ds.item_features(name)
        assert features.shape == (400, 64) and features.dtype == np.float32
        assert np.isfinite(features).all()
    assert len(ds.artifact.files("interactions/")) == 3
    assert ds.original_ids("user")[123] == "u000123"
    assert ds.original_ids("item")[45] == "i000045"
    assert manifest["cold_items"] == 20 and "item_id >= num_items - cold_items" in manifest["cold_item_rule"]
    assert manifest["users_without_train"] == 0
    assert manifest["source"]["seed"] == 0 and manifest["source"]["format"] == "synthetic"


def test_split_rules_no_duplicates_cold_items_only_in_eval(small):
    url, manifest = small
    ds = Dataset(url)
    rows = ds.interactions()
    users, items, split = rows["user_id"], rows["item_id"], rows["split"]
    keys = users * ds.num_items + items
    assert np.unique(keys).size == keys.size
    cold = items >= ds.num_items - manifest["cold_items"]
    assert not cold[split == 0].any()
    assert cold[split > 0].any()                   # cold items do show up for evaluation
    per_user = np.zeros((ds.num_users, 3), dtype=int)
    np.add.at(per_user, (users, split), 1)
    assert (per_user[:, 0] >= 1).all()
    n = per_user.sum(1)
    expected_eval = np.where(n >= 10, n // 10, np.where(n >= 3, 1, 0))
    np.testing.assert_array_equal(per_user[:, 1], expected_eval)
    np.testing.assert_array_equal(per_user[:, 2], expected_eval)
    assert 10 < n.mean() < 30
    assert manifest["splits"]["train"] == int((split == 0).sum())


def test_topic_map_is_a_bijection():
    model = PlantedModel.create(3, 1000, 7, 50, {"text": 4, "visual": 4})
    topic, rank = model.topic_and_rank(np.arange(1000))
    np.testing.assert_array_equal(model.item_at(topic, rank), np.arange(1000))
    np.testing.assert_array_equal(np.bincount(topic), model.topic_size(np.arange(7)))
    assert (rank < model.topic_size(topic)).all()


def test_modalities_carry_the_planted_topics(tmp_path):
    manifest = generate_synthetic(str(tmp_path / "d"), users=200, items=3000, topics=10, seed=5)
    ds = Dataset(str(tmp_path / "d"))
    topic, _ = planted(manifest).topic_and_rank(np.arange(ds.num_items))
    rng = np.random.default_rng(0)
    left = rng.integers(0, ds.num_items, 3000)
    same = np.array([rng.choice(np.nonzero(topic == topic[i])[0]) for i in left])
    other = rng.integers(0, ds.num_items, 3000)
    for name in ("text", "visual"):
        x = ds.item_features(name)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        same_cos = (x[left] * x[same]).sum(1).mean()
        random_cos = (x[left] * x[other]).sum(1).mean()
        assert same_cos > random_cos + 0.2, (name, same_cos, random_cos)


def test_content_beats_popularity_and_reaches_cold_items(tmp_path):
    """The point of the generator: modalities help, and they are the only way to cold items."""
    manifest = generate_synthetic(str(tmp_path / "d"), users=800, items=1500, topics=32, seed=2)
    ds = Dataset(str(tmp_path / "d"))
    train, test = ds.interactions("train"), ds.interactions("test")
    popularity = np.bincount(train["item_id"], minlength=ds.num_items).astype(float)
    x = ds.item_features("text") + 0.0
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    profile = np.zeros((ds.num_users, x.shape[1]))
    np.add.at(profile, train["user_id"], x[train["item_id"]])
    cold = np.arange(ds.num_items) >= ds.num_items - manifest["cold_items"]
    hits = {"popularity": 0, "content": 0, "content_cold": 0}
    for user in range(ds.num_users):
        seen = train["item_id"][train["user_id"] == user]
        truth = test["item_id"][test["user_id"] == user]
        for model, scores in (("popularity", popularity.copy()), ("content", x @ profile[user])):
            scores[seen] = -np.inf
            top = np.argpartition(-scores, 20)[:20]
            hits[model] += np.isin(truth, top).sum()
            if model == "content":
                hits["content_cold"] += np.isin(truth[cold[truth]], top).sum()
    assert hits["content"] > 1.3 * hits["popularity"], hits
    assert hits["content_cold"] > 0, hits     # popularity (any ID-only model) scores no cold item


def test_cli_and_bad_arguments(tmp_path, capsys):
    out = str(tmp_path / "cli")
    assert main(["prepare", "synthetic", "--users", "50", "--items", "80", "--seed", "3", "--out", out]) == 0
    assert Dataset(out).num_users == 50
    assert main(["prepare", "synthetic", "--users", "50", "--items", "80", "--out", out]) == 2
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(ValueError, match="topics"):
        generate_synthetic(str(tmp_path / "bad"), users=10, items=5, topics=8)
    with pytest.raises(ValueError, match="cold_item_fraction"):
        generate_synthetic(str(tmp_path / "bad"), users=10, items=50, cold_item_fraction=0.9)


def test_tiny_catalogue_still_gives_every_user_train(tmp_path):
    manifest = generate_synthetic(str(tmp_path / "t"), users=60, items=6, topics=2,
                                  cold_item_fraction=0.5, seed=4)
    assert manifest["users_without_train"] == 0
    rows = Dataset(str(tmp_path / "t")).interactions()
    assert not (rows["item_id"][rows["split"] == 0] >= 3).any()


def test_user_text_features_point_at_the_users_items(tmp_path):
    """User LM features share the item text space: a user is closer to items they interacted with."""
    from recgoat_dist.data.dataset import Dataset
    from recgoat_dist.data.synthetic import generate_synthetic

    generate_synthetic(str(tmp_path / "d"), users=400, items=600, seed=5)
    ds = Dataset(str(tmp_path / "d"))
    assert ds.user_modalities["text"]["dim"] == 64
    users, items = ds.user_features("text"), ds.item_features("text")
    users /= np.linalg.norm(users, axis=1, keepdims=True)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    train = ds.interactions("train")
    own = np.einsum("nd,nd->n", users[train["user_id"]], items[train["item_id"]]).mean()
    rng = np.random.default_rng(0)
    other = np.einsum("nd,nd->n", users[train["user_id"]], items[rng.permutation(train["item_id"])]).mean()
    assert own > other + 0.1, (own, other)
    generate_synthetic(str(tmp_path / "e"), users=400, items=600, seed=5, user_text=False)
    assert Dataset(str(tmp_path / "e")).user_modalities == {}


def test_streaming_equals_in_memory_generation(tmp_path, s3_url):
    """The dataset streamed to storage block by block (several item and user blocks, on s3://)
    reads back equal to the in-memory generation of the same seed; leaving out the visual view
    keeps the text view, and the CLI exposes the scale options."""
    from recgoat_dist.data.synthetic import synthetic_arrays

    opts = dict(users=700, items=900, topics=12, chunk_users=256, item_chunk=300, interactions_per_user=5)
    memory = synthetic_arrays(seed=4, modalities=("text",), **opts)
    out = f"{s3_url}/streamed"
    manifest = generate_synthetic(out, seed=4, modalities=("text",), **opts)
    ds = Dataset(out)
    assert sorted(ds.modalities) == ["text"] and sorted(ds.user_modalities) == ["text"]
    assert len(ds.artifact.files("interactions/")) == 3 and len(ds.artifact.files("item_features/text/")) == 3
    np.testing.assert_array_equal(ds.item_features("text"), memory["item_text"])
    np.testing.assert_array_equal(ds.user_features("text"), memory["user_text"])
    table = {c: np.concatenate([t[c].to_numpy() for t in ds.iter_interactions()])
             for c in ("user_id", "item_id", "rating", "timestamp", "split")}
    for column, values in table.items():
        np.testing.assert_array_equal(values, memory[column])
    assert manifest["num_interactions"] == len(memory["user_id"])
    both = synthetic_arrays(seed=4, **opts)
    np.testing.assert_array_equal(both["item_text"], memory["item_text"])
    assert both["item_visual"].shape == (900, 64)
    local = str(tmp_path / "cli")
    assert main(["prepare", "synthetic", "--users", "700", "--items", "900", "--topics", "12", "--seed", "4",
                 "--interactions-per-user", "5", "--modalities", "text", "--chunk-users", "256",
                 "--out", local]) == 0
    np.testing.assert_array_equal(Dataset(local).user_features("text"), memory["user_text"])
