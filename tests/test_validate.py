"""One validation for `recgoat prepare parquet` and the nightly delta: same checks, same messages."""
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recgoat_dist.cli import main
from recgoat_dist.data.dataset import DataError, Dataset
from recgoat_dist.data.generic import prepare_parquet
from recgoat_dist.data.timeline import day_window
from recgoat_dist.nightly.config import NightlyConfig
from recgoat_dist.nightly.delta import read_delta

DATE = "2024-01-02"
LO, HI = day_window(DATE)
BASE = {"modalities": {"text": {"dim": 2}}, "user_modalities": {}}


def _delta(tmp_path, table: pa.Table, **files) -> NightlyConfig:
    root = tmp_path / f"date={DATE}"
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, root / "interactions.parquet")
    for rel, t in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(t, root / rel)
    return NightlyConfig(delta=str(tmp_path / "date={date}"))


def _good(n=6, **over):
    cols = {"user_id": [f"u{i % 3}" for i in range(n)], "item_id": [f"i{i}" for i in range(n)],
            "timestamp": pa.array([LO + 60 * i for i in range(n)], pa.int64()),
            "rating": pa.array([1.0] * n, pa.float32())}
    cols.update(over)
    return pa.table(cols)


def test_repeated_pairs_collapse_to_latest_and_are_counted(tmp_path):
    table = pa.table({"user_id": ["a", "a", "b", "a"], "item_id": ["x", "x", "y", "x"],
                      "timestamp": pa.array([LO + 10, LO + 30, LO + 5, LO + 20], pa.int64()),
                      "rating": pa.array([1.0, 3.0, 2.0, 5.0], pa.float32())})
    d = read_delta(DATE, _delta(tmp_path, table), BASE)
    assert d.duplicates == 2 and d.rows_read == 4 and len(d.users) == 2
    kept = {(u, i): (t, r) for u, i, t, r in zip(d.users, d.items, d.timestamps, d.ratings)}
    assert kept[("a", "x")] == (LO + 30, 3.0)          # the latest timestamp wins, with its rating


@pytest.mark.parametrize("case, pattern", [
    ("empty", r"interactions\.parquet: empty file \(no interactions\)"),
    ("nan_rating", r"interactions\.parquet: column rating: row 2: NaN \(ratings must be finite\)"),
    ("inf_rating", r"interactions\.parquet: column rating: row 1: inf \(ratings must be finite\)"),
    ("text_timestamp", r"interactions\.parquet: column timestamp: row 3: 'x' is not an integer \(unix seconds\)"),
    ("fraction_timestamp", r"interactions\.parquet: column timestamp: row 0: .*1\.5 is not an integer"),
    ("outside_date", r"interactions\.parquet: column timestamp: row 1: \d+ is outside the date 2024-01-02"),
    ("unknown_column", r"interactions\.parquet: column colour: unknown column"),
    ("missing_column", r"interactions\.parquet: missing column 'timestamp'"),
    ("empty_id", r"interactions\.parquet: column item_id: row 4: empty id"),
    ("duplicates", r"interactions\.parquet: columns user_id, item_id: 5 of 6 rows repeat a pair \(83%\), above "
                   r"nightly\.max_duplicate_fraction"),
    ("volume", r"interactions\.parquet: 6 interactions is 0\.06x the trailing mean \(100\)"),
    ("feature_dim", r"item_features/text\.parquet: column embedding: row 0: 3 values, expected 2"),
    ("feature_nan", r"item_features/text\.parquet: modality 'text' has NaN at row 1, column 0"),
    ("feature_modality", r"item_features/audio\.parquet: item modality 'audio' is not in the base dataset"),
    ("no_delta", r"interactions\.parquet: not found \(no interactions for this date\)"),
])
def test_bad_delta_names_file_column_problem(case, pattern, tmp_path):
    table, files, mean = _good(), {}, None
    ts = [LO + 60 * i for i in range(6)]
    if case == "empty":
        table = _good(0)
    elif case in ("nan_rating", "inf_rating"):
        r = [1.0] * 6
        r[2 if case == "nan_rating" else 1] = float("nan") if case == "nan_rating" else float("inf")
        table = _good(rating=pa.array(r, pa.float32()))
    elif case == "text_timestamp":
        table = _good(timestamp=pa.array([str(t) for t in ts[:3]] + ["x"] + [str(t) for t in ts[4:]]))
    elif case == "fraction_timestamp":
        table = _good(timestamp=pa.array([LO + 1.5] + ts[1:], pa.float64()))
    elif case == "outside_date":
        table = _good(timestamp=pa.array([ts[0], HI + 5] + ts[2:], pa.int64()))
    elif case == "unknown_column":
        table = _good().append_column("colour", pa.array(["red"] * 6))
    elif case == "missing_column":
        table = _good().drop_columns(["timestamp"])
    elif case == "empty_id":
        table = _good(item_id=pa.array(["a", "b", "c", "d", None, "f"]))
    elif case == "duplicates":
        table = _good(user_id=["u"] * 6, item_id=["i"] * 6)
    elif case == "volume":
        mean = 100.0
    elif case in ("feature_dim", "feature_nan", "feature_modality"):
        x = [[1.0, 2.0, 3.0]] if case == "feature_dim" else [[1.0, 2.0], [float("nan"), 0.0]]
        name = "audio" if case == "feature_modality" else "text"
        files[f"item_features/{name}.parquet"] = pa.table({"item_id": [f"n{i}" for i in range(len(x))],
                                                           "embedding": pa.array(x, pa.list_(pa.float32()))})
    config = _delta(tmp_path, table, **files)
    if case == "no_delta":
        config = NightlyConfig(delta=str(tmp_path / "missing" / "date={date}"))
    with pytest.raises(DataError, match=pattern):
        read_delta(DATE, config, BASE, trailing_mean=mean)


def test_prepare_parquet_shares_the_validation(tmp_path, capsys):
    """Repeated pairs collapse (latest kept, counted); NaN and non-integer timestamps fail the same way."""
    src = tmp_path / "inter.parquet"
    pq.write_table(pa.table({"user_id": ["a", "a", "b", "b", "a"], "item_id": ["x", "y", "x", "y", "x"],
                             "timestamp": pa.array([1, 2, 3, 4, 9], pa.int64()),
                             "rating": pa.array([1.0, 2.0, 3.0, 4.0, 5.0], pa.float32()),
                             "split": pa.array([0, 0, 0, 0, 0], pa.int8())}), src)
    prepare_parquet(str(src), {}, str(tmp_path / "ok"), k_core=0)
    ds = Dataset(str(tmp_path / "ok"))
    assert ds.num_interactions == 4 and ds.manifest["source"]["duplicates_collapsed"] == 1
    inter = pa.concat_tables(list(ds.iter_interactions()))
    users, items = ds.original_ids("user"), ds.original_ids("item")
    row = [k for k in range(4) if users[inter["user_id"][k].as_py()] == "a" and items[inter["item_id"][k].as_py()] == "x"]
    assert inter["timestamp"][row[0]].as_py() == 9 and inter["rating"][row[0]].as_py() == 5.0

    messages = {}
    for case, table in {
        "nan": pa.table({"user_id": ["a", "b"], "item_id": ["x", "y"], "rating": [1.0, float("nan")],
                         "timestamp": pa.array([LO, LO + 1], pa.int64())}),
        "ts": pa.table({"user_id": ["a", "b"], "item_id": ["x", "y"], "rating": [1.0, 2.0],
                        "timestamp": pa.array([str(LO), "x"])}),
    }.items():
        bad = tmp_path / case / f"date={DATE}" / "interactions.parquet"
        bad.parent.mkdir(parents=True)
        pq.write_table(table, bad)
        code = main(["prepare", "parquet", "--interactions", str(bad), "--k-core", "0", "--out", str(tmp_path / "o")])
        assert code == 2
        prepare_msg = capsys.readouterr().err.strip().splitlines()[-1]
        assert not (tmp_path / "o").exists()
        with pytest.raises(DataError) as info:
            read_delta(DATE, NightlyConfig(delta=str(tmp_path / case / "date={date}")), BASE)
        messages[case] = (prepare_msg, str(info.value))
    for case, (prepare_msg, delta_msg) in messages.items():
        assert prepare_msg == f"error: {delta_msg}", case
    assert re.search(r"column rating: row 1: NaN", messages["nan"][1])
    assert re.search(r"interactions\.parquet: column timestamp: row 1: 'x' is not an integer", messages["ts"][1])


@pytest.mark.parametrize("override, message", [
    ("nightly.holdout_fraction=1.5", "config key nightly.holdout_fraction: must be in (0, 1)"),
    ("nightly.gate.max_relative_drop=1", "config key nightly.gate.max_relative_drop: must be in [0, 1)"),
    ("nightly.delta=s3://b/events", "config key nightly.delta: must contain {date}"),
    ("nightly.gate.bogus=1", "unknown config key nightly.gate.bogus"),
    ("nightly.epochs=two", "config key nightly.epochs: expected int"),
])
def test_nightly_config_errors_name_the_key(override, message):
    from recgoat_dist.config import ConfigError, load_config

    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value)
