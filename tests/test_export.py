"""Export: embeddings and recommendations keyed by original ids, never a training item."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from recgoat_dist.cli import main
from recgoat_dist.data.dataset import Dataset
from recgoat_dist.storage import Artifact


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from recgoat_dist.config import load_config
    from recgoat_dist.pipeline import ensure_inputs, train

    work = tmp_path_factory.mktemp("export")
    config = load_config(None, ["data.synthetic_users=300", "data.synthetic_items=200", "model.name=recgoat",
                                "train.epochs=1", "train.batch_size=1024"])
    config = ensure_inputs(config, str(work / "inputs"))
    train(config, str(work / "run"))
    return config, str(work / "run")


def test_export_by_original_ids(trained_run, tmp_path):
    config, run = trained_run
    out = str(tmp_path / "export")
    assert main(["export", "--run", run, "--out", out, "--top-k", "15"]) == 0
    art = Artifact(out, kind="export")
    ds = Dataset(config.data.dataset)
    users = pa.concat_tables([art.read_table(f) for f in art.files("users/")])
    items = pa.concat_tables([art.read_table(f) for f in art.files("items/")])
    recs = pa.concat_tables([art.read_table(f) for f in art.files("recommendations/")]).to_pandas()
    assert users["user_id"].to_pylist() == list(ds.original_ids("user"))
    assert items["item_id"].to_pylist() == list(ds.original_ids("item"))
    assert items["cold"].to_numpy().sum() == ds.manifest["cold_items"]

    # Every user gets 15 distinct items, ranked by score, none of them a training item.
    assert (recs.groupby("user_id")["item_id"].nunique() == 15).all()
    assert len(recs) == 15 * ds.num_users
    train = ds.interactions("train")
    uid, iid = ds.original_ids("user"), ds.original_ids("item")
    train_pairs = set(zip(uid[train["user_id"]], iid[train["item_id"]]))
    assert not train_pairs & set(zip(recs["user_id"], recs["item_id"]))
    for _, group in recs.groupby("user_id"):
        assert (np.diff(group.sort_values("rank")["score"].to_numpy()) <= 1e-6).all()

    # Scores are the dot products of the exported embeddings.
    u_emb = dict(zip(users["user_id"].to_pylist(), users["embedding"].to_numpy(zero_copy_only=False)))
    i_emb = dict(zip(items["item_id"].to_pylist(), items["embedding"].to_numpy(zero_copy_only=False)))
    row = recs.iloc[7]
    assert np.dot(u_emb[row.user_id], i_emb[row.item_id]) == pytest.approx(row.score, rel=1e-4, abs=1e-5)


def test_demo_runs_the_whole_pipeline_in_one_process(tmp_path, capsys):
    """`recgoat demo` (as `make demo DEMO_WORKERS=0`, shortened): data, graph, training, the metrics
    table and an export; the test split's cold items are reported."""
    from pathlib import Path

    demo = str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
    out = tmp_path / "demo"
    assert main(["demo", "--config", demo, "--set", "cluster.num_workers=0", "--set", "train.epochs=1",
                 "--set", "train.progress=false", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "recall" in printed and "test_cold" in printed and "export written" in printed
    export = Artifact(str(out / "export"), kind="export")
    assert export["num_users"] == 2000 and export["num_items"] == 1500 and export["top_k"] == 20


def test_export_forced_ann_to_s3(trained_run, s3_url, caplog):
    """`--set export.ann_above=0` ranks through the FAISS index (logged with its reason); the
    export lands on s3:// with the index and ann_recall@20; the default stays exact."""
    import logging

    import faiss

    config, run = trained_run
    out = f"{s3_url}/export"
    with caplog.at_level(logging.INFO, logger="recgoat_dist.export.recommendations"):
        assert main(["export", "--run", run, "--out", out, "--top-k", "20", "--set", "export.ann_above=0"]) == 0
    assert "ranking engine ann: 200 items > export.ann_above=0" in caplog.text
    art = Artifact(out, kind="export")
    assert art["ranking"]["engine"] == "ann" and art["ann_recall@20"] >= 0.95
    index = faiss.deserialize_index(np.frombuffer(art.read_bytes("index/items.faiss"), dtype=np.uint8))
    assert index.ntotal == 200 and isinstance(index, faiss.IndexIVFFlat)
    recs = pa.concat_tables([art.read_table(f) for f in art.files("recommendations/")]).to_pandas()
    assert (recs.groupby("user_id")["item_id"].nunique() == 20).all() and recs["user_id"].nunique() == 300
    ds = Dataset(config.data.dataset)
    train = ds.interactions("train")
    uid, iid = ds.original_ids("user"), ds.original_ids("item")
    assert not set(zip(uid[train["user_id"]], iid[train["item_id"]])) & set(zip(recs["user_id"], recs["item_id"]))
    assert main(["export", "--run", run, "--out", f"{s3_url}/exact", "--top-k", "5"]) == 0
    assert Artifact(f"{s3_url}/exact", kind="export")["ranking"]["engine"] == "exact"
