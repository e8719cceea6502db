"""Data stage: MMRec and generic ingestion, manifests, checksums, S3 round trip, bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recgoat_dist.cli import main
from recgoat_dist.data.dataset import Dataset
from recgoat_dist.data.generic import prepare_parquet
from recgoat_dist.data.mmrec import prepare_mmrec
from recgoat_dist.storage import StorageError, exists, join

LFM2K_EXPECTED = {"num_users": 1858, "num_items": 1425, "num_interactions": 56345,
                  "splits": {"train": 44327, "valid": 4799, "test": 7219}}


def inspect_json(url: str) -> dict:
    """Run the real CLI in a subprocess, as a user would."""
    out = subprocess.run([sys.executable, "-m", "recgoat_dist", "inspect", url, "--json"],
                         capture_output=True, text=True, check=True, env=os.environ.copy())
    return json.loads(out.stdout)


def check_lfm2k_summary(info: dict) -> None:
    for key, value in LFM2K_EXPECTED.items():
        assert info[key] == value, key
    assert info["modalities"]["text"]["dim"] == 384
    assert info["modalities"]["audio"]["dim"] == 128


def test_lfm2k_inspect_numbers(lfm2k_dataset):
    check_lfm2k_summary(inspect_json(lfm2k_dataset))


def test_lfm2k_original_ids_are_artist_ids(lfm2k_dataset, lfm2k_dir):
    ds = Dataset(lfm2k_dataset)
    ours = np.loadtxt(lfm2k_dir / "lfm2k.inter", skiprows=1, dtype=np.int64)
    theirs = np.loadtxt(lfm2k_dir / "lfm2k_og_ids.inter", skiprows=1, dtype=np.int64)
    items, users = ds.original_ids("item"), ds.original_ids("user")
    assert (items[ours[:, 1]] == theirs[:, 1].astype(str)).all()
    assert (users[ours[:, 0]] == theirs[:, 0].astype(str)).all()
    # Features are row-aligned with contiguous ids, as in MMRec.
    text = np.load(lfm2k_dir / "all-MiniLM-L6-v2.npy")
    np.testing.assert_array_equal(ds.item_features("text"), text)
    train = ds.interactions("train")
    assert len(train["user_id"]) == 44327 and (train["split"] == 0).all()


def test_lfm2k_on_s3(lfm2k_dir, s3_url):
    prepare_mmrec(str(lfm2k_dir / "lfm2k.inter"),
                  {"text": str(lfm2k_dir / "all-MiniLM-L6-v2.npy"), "audio": str(lfm2k_dir / "vggish.npy")},
                  s3_url, original_ids=str(lfm2k_dir / "lfm2k_og_ids.inter"))
    info = inspect_json(s3_url)
    check_lfm2k_summary(info)
    assert info["url"] == s3_url
    manifest = Dataset(s3_url).manifest
    assert "testing-secret-key" not in json.dumps(manifest)
    np.testing.assert_allclose(Dataset(s3_url).item_features("audio"),
                               np.load(lfm2k_dir / "vggish.npy").astype(np.float32))


def test_checksum_mismatch_and_missing_manifest_are_refused(lfm2k_dir, tmp_path):
    out = str(tmp_path / "ds")
    prepare_mmrec(str(lfm2k_dir / "lfm2k.inter"), {"audio": str(lfm2k_dir / "vggish.npy")}, out)
    ds = Dataset(out)
    part = sorted(ds.artifact.files("item_features/audio/"))[0]
    path = tmp_path / "ds" / part
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF                                    # same size, different bytes
    path.write_bytes(bytes(data))
    with pytest.raises(StorageError, match="checksum mismatch"):
        Dataset(out).item_features("audio")
    os.remove(tmp_path / "ds" / "manifest.json")
    with pytest.raises(StorageError, match="no manifest"):
        Dataset(out)


def test_existing_artifact_needs_overwrite(lfm2k_dir, tmp_path):
    out = str(tmp_path / "ds")
    args = ["prepare", "mmrec", "--inter", str(lfm2k_dir / "lfm2k.inter"), "--out", out]
    assert main(args) == 0
    assert main(args) == 2
    assert main(args + ["--overwrite"]) == 0
    assert Dataset(out).num_interactions == 56345


# ---------------------------------------------------------------- bad input
def write_inter(path, rows, header="userID\titemID\trating\tx_label"):
    path.write_text(header + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    return str(path)


GOOD_ROWS = [(0, 0, 1, 0), (0, 1, 1, 0), (1, 1, 1, 0), (1, 2, 1, 1), (2, 0, 1, 2), (2, 2, 1, 0)]


def run_bad(capsys, out, args) -> str:
    code = main(args + ["--out", out])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2
    assert len(errors) == 1 and "Traceback" not in err, err
    assert not exists(join(out, "manifest.json"))
    assert not os.path.exists(out) or not any(f for _, _, f in os.walk(out)), "partial files left behind"
    return errors[0]


def feature_file(path, array):
    np.save(path, array)
    return str(path)


@pytest.mark.parametrize("case, pattern", [
    ("missing_column", r"inter\.tsv: missing column 'x_label'"),
    ("nan", r"f\.npy: modality 'text' has NaN at row 1, column 2"),
    ("inf", r"f\.npy: modality 'text' has inf at row 2, column 0"),
    ("rows", r"g\.npy: modality 'visual' has 2 rows.*must equal the number of items"),
    ("item_range", r"inter\.tsv: row 5: column item_id = 3 is out of range \[0, 3\)"),
    ("user_range", r"inter\.tsv: row 1: column userID = -1 is out of range"),
    ("duplicate", r"inter\.tsv: duplicate \(user_id, item_id\) row: \(0, 1\)"),
    ("empty_train", r"inter\.tsv: column split: the train split \(0\) is empty"),
    ("modality", r"f\.npy: unknown modality name 'smell'"),
    ("unreadable", r"nowhere\.tsv: file not found"),
])
def test_bad_mmrec_input(case, pattern, tmp_path, capsys):
    rows = list(GOOD_ROWS)
    header = "userID\titemID\trating\tx_label"
    feats = {"text": np.ones((3, 4), np.float32)}
    if case == "missing_column":
        header = "userID\titemID\trating\tlabel"
    elif case == "nan":
        feats["text"][1, 2] = np.nan
    elif case == "inf":
        feats["text"][2, 0] = np.inf
    elif case == "rows":
        feats["visual"] = np.ones((2, 4), np.float32)
    elif case == "item_range":
        rows[5] = (2, 3, 1, 0)
    elif case == "user_range":
        rows[1] = (-1, 1, 1, 0)
    elif case == "duplicate":
        rows.append((0, 1, 1, 1))
    elif case == "empty_train":
        rows = [(u, i, r, 1) for u, i, r, _ in rows]
    elif case == "modality":
        feats = {"smell": feats["text"]}
    inter = write_inter(tmp_path / "inter.tsv", rows, header)
    if case == "unreadable":
        inter = str(tmp_path / "nowhere.tsv")
    args = ["prepare", "mmrec", "--inter", inter]
    names = {"text": "f", "smell": "f", "visual": "g"}
    for name, array in feats.items():
        args += ["--feature", f"{name}={feature_file(tmp_path / (names[name] + '.npy'), array)}"]
    message = run_bad(capsys, str(tmp_path / "out"), args)
    assert __import__("re").search(pattern, message), message


def test_bad_input_on_s3_leaves_nothing(tmp_path, s3_url, capsys):
    feats = np.ones((3, 4), np.float32)
    feats[2, 3] = np.nan                       # fails after the interactions were written
    inter = write_inter(tmp_path / "inter.tsv", GOOD_ROWS)
    run_bad(capsys, s3_url, ["prepare", "mmrec", "--inter", inter,
                             "--feature", f"text={feature_file(tmp_path / 'f.npy', feats)}"])
    from recgoat_dist.storage import filesystem
    fs, path = filesystem(s3_url)
    assert not fs.exists(path) or fs.find(path) == []


def test_unreadable_url(capsys, tmp_path, s3_server):  # loopback endpoint, never AWS
    message = run_bad(capsys, str(tmp_path / "out"), ["prepare", "mmrec", "--inter", "s3://no-such-bucket-xyz/a.inter"])
    assert "no-such-bucket-xyz/a.inter" in message


# ---------------------------------------------------------------- generic Parquet
def random_interactions(rng, users=60, items=40, n=900):
    u = rng.integers(0, users, n)
    i = (rng.zipf(1.5, n) - 1) % items
    pairs = np.unique(np.stack([u, i], 1), axis=0)
    rng.shuffle(pairs)
    return pairs


def brute_k_core(pairs, k):
    pairs = pairs.copy()
    while True:
        uu, cu = np.unique(pairs[:, 0], return_counts=True)
        ii, ci = np.unique(pairs[:, 1], return_counts=True)
        keep = np.isin(pairs[:, 0], uu[cu >= k]) & np.isin(pairs[:, 1], ii[ci >= k])
        if keep.all():
            return pairs
        pairs = pairs[keep]


def test_generic_parquet_k_core_and_split(tmp_path):
    rng = np.random.default_rng(3)
    pairs = random_interactions(rng)
    src = tmp_path / "inter.parquet"
    pq.write_table(pa.table({"user_id": [f"u{u}" for u in pairs[:, 0]],
                             "item_id": [f"i{i}" for i in pairs[:, 1]]}), src, row_group_size=100)
    emb = rng.normal(size=(40, 8)).astype(np.float32)
    feat = tmp_path / "text.parquet"
    pq.write_table(pa.table({"item_id": [f"i{i}" for i in range(40)],
                             "embedding": pa.array(list(emb), pa.list_(pa.float32()))}), feat)
    prepare_parquet(str(src), {"text": str(feat)}, str(tmp_path / "a"), k_core=5, seed=7)
    ds = Dataset(str(tmp_path / "a"))
    expected = brute_k_core(pairs, 5)
    assert ds.num_interactions == len(expected)
    assert ds.num_users == len(np.unique(expected[:, 0])) and ds.num_items == len(np.unique(expected[:, 1]))
    inter = ds.interactions()
    users, items = ds.original_ids("user"), ds.original_ids("item")
    got = {(users[u], items[i]) for u, i in zip(inter["user_id"], inter["item_id"])}
    assert got == {(f"u{u}", f"i{i}") for u, i in expected}
    # Features follow the item renumbering.
    feats = ds.item_features("text")
    for contiguous, original in enumerate(items):
        np.testing.assert_array_equal(feats[contiguous], emb[int(original[1:])])
    # MMRec's per-user split: n >= 10 -> n//10 valid and test; 3 <= n < 10 -> 1 and 1.
    for u in np.unique(inter["user_id"]):
        s = inter["split"][inter["user_id"] == u]
        n, held = len(s), (len(s) // 10 if len(s) >= 10 else 1)
        assert (s == 1).sum() == held and (s == 2).sum() == held and (s == 0).sum() == n - 2 * held
    # Seeded: same seed, same split; another seed, another split.
    prepare_parquet(str(src), {"text": str(feat)}, str(tmp_path / "b"), k_core=5, seed=7)
    prepare_parquet(str(src), {"text": str(feat)}, str(tmp_path / "c"), k_core=5, seed=8)
    assert (Dataset(str(tmp_path / "b")).interactions()["split"] == inter["split"]).all()
    assert (Dataset(str(tmp_path / "c")).interactions()["split"] != inter["split"]).any()


def test_generic_given_split_and_missing_feature_row(tmp_path, capsys):
    src = tmp_path / "inter.csv"
    src.write_text("user_id,item_id,rating,split\na,x,5,0\na,y,4,1\nb,x,3,0\nb,y,2,2\n")
    prepare_parquet(str(src), {}, str(tmp_path / "ok"), k_core=0)
    ds = Dataset(str(tmp_path / "ok"))
    assert ds.splits == {"train": 2, "valid": 1, "test": 1}
    feat = tmp_path / "text.parquet"
    pq.write_table(pa.table({"item_id": ["x"], "embedding": pa.array([[1.0, 2.0]], pa.list_(pa.float32()))}), feat)
    message = run_bad(capsys, str(tmp_path / "bad"), ["prepare", "parquet", "--interactions", str(src),
                                                      "--k-core", "0", "--item-feature", f"text={feat}"])
    assert "text.parquet: column item_id: no row for item 'y'" in message
