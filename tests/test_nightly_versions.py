"""Dataset versions: stable ids, the seeded holdout, repeats of known pairs, the window, missing content."""
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recgoat_dist.data.dataset import Dataset
from recgoat_dist.data.timeline import DAY, day_window, generate_timeline
from recgoat_dist.nightly.config import NightlyConfig
from recgoat_dist.nightly.delta import read_delta
from recgoat_dist.nightly.versions import build_version_dataset, holdout_mask


@pytest.fixture(scope="module")
def tl(tmp_path_factory):
    return generate_timeline(str(tmp_path_factory.mktemp("tl")), users=60, items=50, days=1, new_items_per_day=6,
                             new_users_per_day=5, active_users_per_day=30)


def _version(tl, tmp_path, name="v", **config):
    config = NightlyConfig(delta=tl["delta"], **config)
    delta = read_delta(tl["dates"][0], config, Dataset(tl["base"]).manifest)
    build_version_dataset(tl["base"], delta, str(tmp_path / name), config)
    return Dataset(str(tmp_path / name)), delta


def test_holdout_is_seeded_per_user_and_new_users_keep_a_training_pair():
    users = np.repeat(np.arange(6), [1, 2, 5, 10, 1, 3])
    new = np.array([False, False, False, False, True, True])
    a = holdout_mask(users, 0.4, 0, "2024-01-02", new)
    assert (a == holdout_mask(users, 0.4, 0, "2024-01-02", new)).all()
    assert (a != holdout_mask(users, 0.4, 0, "2024-01-03", new)).any() or (a != holdout_mask(users, 0.4, 1, "2024-01-02", new)).any()
    per_user = np.bincount(users[a], minlength=6)
    assert per_user.tolist() == [0, 1, 2, 4, 0, 1]        # round(n * 0.4); the new one-pair user keeps it
    assert per_user[5] < 3


def test_version_appends_ids_and_splits_the_date(tl, tmp_path):
    v, delta = _version(tl, tmp_path)
    base = Dataset(tl["base"])
    inter = v.interactions()
    lo, _ = day_window(tl["dates"][0])
    ts = pa.concat_tables(list(v.iter_interactions(columns=["timestamp"])))["timestamp"].to_numpy()
    today = ts >= lo
    assert (inter["split"][today] != 1).all() and (inter["split"][today] == 2).any()   # holdout = test
    assert (inter["split"][~today] != 2).all()        # the base's test split is training data now
    assert v.manifest["nightly"]["holdout"] == int((inter["split"] == 2).sum())
    assert v.num_items == base.num_items + 6 and v.num_users == base.num_users + 5
    assert v.manifest["nightly"]["delta"]["duplicates_collapsed"] == delta.duplicates


def test_repeat_of_known_pair_updates_in_place_and_window_drops_old_training(tl, tmp_path):
    base = Dataset(tl["base"])
    pairs = base.interactions("train")
    u, i = base.original_ids("user")[pairs["user_id"][0]], base.original_ids("item")[pairs["item_id"][0]]
    lo, _ = day_window(tl["dates"][0])
    root = tmp_path / "events" / f"date={tl['dates'][0]}"
    root.mkdir(parents=True)
    pq.write_table(pa.table({"user_id": [u, "u_new"], "item_id": [i, "i_new"],
                             "timestamp": pa.array([lo + 5, lo + 6], pa.int64())}), root / "interactions.parquet")
    local = {**tl, "delta": str(tmp_path / "events" / "date={date}")}
    v, _ = _version(local, tmp_path, window_days=30)
    assert v.manifest["nightly"]["repeats_of_known_pairs"] == 1
    assert v.manifest["nightly"]["dropped_by_window"] > 0      # the base spans 60 days before the date
    ts = pa.concat_tables(list(v.iter_interactions(columns=["timestamp", "split"])))
    train_ts = ts["timestamp"].to_numpy()[ts["split"].to_numpy() == 0]
    assert (train_ts >= lo - 30 * DAY).all()
    assert v.num_items == base.num_items + 1 and v.num_users == base.num_users + 1


def test_new_item_without_content_warns_and_is_counted(tl, tmp_path, caplog):
    lo, _ = day_window(tl["dates"][0])
    root = tmp_path / "events" / f"date={tl['dates'][0]}"
    root.mkdir(parents=True)
    pq.write_table(pa.table({"user_id": ["u000001"], "item_id": ["i_plain"],
                             "timestamp": pa.array([lo + 5], pa.int64())}), root / "interactions.parquet")
    local = {**tl, "delta": str(tmp_path / "events" / "date={date}")}
    with caplog.at_level(logging.WARNING):
        v, _ = _version(local, tmp_path)
    assert "have no 'text' content (e.g. i_plain): they train on their ID alone" in caplog.text
    assert v.manifest["nightly"]["new_without_content"]["item:text"] == 1
    assert v.manifest["nightly"]["new_without_content_ids"]["item:visual"] == ["i_plain"]
    base = Dataset(tl["base"])
    np.testing.assert_allclose(v.item_features("text")[-1], base.item_features("text").mean(0), rtol=1e-5)


def test_item_text_is_encoded_with_the_base_datasets_encoder(tl, tmp_path):
    """item_text.parquet in a delta goes through the encoder the base manifest records (real MiniLM)."""
    import shutil

    from recgoat_dist.data.text import encode_items, get_encoder

    base = str(tmp_path / "base")
    shutil.copytree(tl["base"], base)
    ids = Dataset(base).original_ids("item")
    texts = tmp_path / "texts.parquet"
    pq.write_table(pa.table({"item_id": list(ids), "text": [f"song {i} of a quiet album" for i in ids]}), texts)
    encode_items(base, str(texts), name="text_minilm")
    lo, _ = day_window(tl["dates"][0])
    root = tmp_path / "events" / f"date={tl['dates'][0]}"
    root.mkdir(parents=True)
    pq.write_table(pa.table({"user_id": ["u000001", "u000002"], "item_id": ["i_new1", "i_new2"],
                             "timestamp": pa.array([lo + 5, lo + 9], pa.int64())}), root / "interactions.parquet")
    new_texts = ["a loud guitar anthem", "a slow piano piece"]
    pq.write_table(pa.table({"item_id": ["i_new1", "i_new2"], "text": new_texts}), root / "item_text.parquet")
    config = NightlyConfig(delta=str(tmp_path / "events" / "date={date}"), text_modality="text_minilm")
    delta = read_delta(tl["dates"][0], config, Dataset(base).manifest)
    got_ids, x = delta.item_features["text_minilm"]
    np.testing.assert_allclose(x, get_encoder("minilm").encode(new_texts), atol=1e-5)
    build_version_dataset(base, delta, str(tmp_path / "v"), config)
    v = Dataset(str(tmp_path / "v"))
    index = {k: i for i, k in enumerate(v.original_ids("item"))}
    np.testing.assert_allclose(v.item_features("text_minilm")[index["i_new2"]], x[list(got_ids).index("i_new2")])
    assert v.manifest["modalities"]["text_minilm"]["encoder"] == "minilm"      # recorded for the next night
    assert v.manifest["nightly"]["new_without_content"] == {"item:text": 2, "item:visual": 2}
