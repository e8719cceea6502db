"""Distributed training (Ray Train + DistDGL) on loopback: graph servers in Ray actors, the one-host
shim, edge ownership, dense-parameter sync, checkpoints on S3, fault injection, lfm2k accuracy.

One local Ray (127.0.0.1, own temp dir, dashboard on loopback for the state API) is shared by the
module.
"""
from __future__ import annotations

import glob
import os
import shutil
import tempfile

import numpy as np
import pytest

os.environ.setdefault("DGLBACKEND", "pytorch")


@pytest.fixture(scope="module")
def local_ray(s3_server):
    """Started after the loopback S3 server so Ray's processes inherit its AWS_* variables."""
    import ray

    tmp = tempfile.mkdtemp(prefix="rgray-", dir="/tmp")
    ray.init(num_cpus=3, include_dashboard=None, dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1",
             _temp_dir=tmp, runtime_env={"env_vars": {"DGLBACKEND": "pytorch", "OMP_NUM_THREADS": "1"}})
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def tiny_partitions(out: str, parts: int, seed: int = 0) -> tuple[str, int]:
    """:func:`tiny_heterograph` split by DGL; returns its config and number of training edges."""
    import dgl

    g = tiny_heterograph(seed)
    dgl.distributed.partition_graph(g, "tiny", parts, out, part_method="random")
    return os.path.join(out, "tiny.json"), g.num_edges("rates")


def tiny_heterograph(seed: int = 0):
    """A hand-made user/item heterograph: every edge type, item and user features."""
    import dgl
    import torch

    rng = np.random.default_rng(seed)
    nu, ni, ne = 120, 80, 900
    u, i = rng.integers(0, nu, ne), rng.integers(0, ni, ne)
    a, b = rng.integers(0, ni, 300), rng.integers(0, ni, 300)
    g = dgl.heterograph({("user", "rates", "item"): (u, i), ("item", "rated_by", "user"): (i, u),
                         ("item", "knn_text", "item"): (a, b), ("user", "uu", "user"): (u[:200], u[200:400])},
                        num_nodes_dict={"user": nu, "item": ni})
    g.nodes["item"].data["text"] = torch.randn(ni, 8)
    g.nodes["user"].data["text"] = torch.randn(nu, 6)
    return g


def tiny_config(**overrides):
    from recgoat_dist.config import load_config
    sets = {"cluster.num_workers": 2, "train.fanouts": "[5, 5]", "train.epochs": 3, "train.batch_size": 128,
            "model.dim": 16, "model.n_layers": 2, "model.name": "recgoat", "model.num_landmarks": 16,
            **overrides}
    return load_config(None, [f"{k}={v}" for k, v in sets.items()])


@pytest.fixture(scope="module")
def tiny(local_ray, tmp_path_factory):
    """An uninterrupted 2 x 2 run on the tiny graph (the reference for the fault test)."""
    from recgoat_dist.train.distributed import fit

    root = tmp_path_factory.mktemp("tiny")
    part_config, total = tiny_partitions(str(root / "parts"), 2)
    summary = fit(tiny_config(), part_config, str(root / "run"), graph_name="tiny")
    return part_config, total, summary


def test_each_worker_trains_its_own_partition_and_dense_params_stay_in_sync(tiny):
    _, total, summary = tiny
    workers = sorted(summary["workers"], key=lambda w: w["rank"])
    assert [w["partition"] for w in workers] == [0, 1]
    assert sum(w["training_edges"] for w in workers) == total
    # DGL numbers each partition's edges contiguously: disjoint ranges of the right lengths.
    ranges = sorted((w["training_edge_range"], w["training_edges"]) for w in workers)
    assert all(hi - lo == n for (lo, hi), n in ranges)
    assert ranges[0][0][1] <= ranges[1][0][0], "two workers trained the same edge"
    assert len({w["steps"] for w in workers}) == 1, "unequal steps per epoch would hang a worker"
    assert summary["dense_params_in_sync"] is True
    assert summary["restarts"] == 0 and summary["epochs_run"] == 3
    assert all(w["shared_host_shim"] for w in workers), "2 partitions on one host need the shim"
    assert np.isfinite([h["train"]["loss"] for h in summary["history"]]).all()
    assert not glob.glob("/dev/shm/rg*-m*"), "shared-memory segments left behind"


def test_graphbolt_servers_train_every_edge_once(local_ray, tmp_path):
    """``cluster.graphbolt``: the servers convert their partitions and sample with GraphBolt; the
    workers still train each partition's own edges (read as its items' in-edges) and nothing else."""
    from recgoat_dist.train.distributed import fit

    part_config, total = tiny_partitions(str(tmp_path / "parts"), 2)
    summary = fit(tiny_config(**{"cluster.graphbolt": "true", "train.epochs": 2}), part_config,
                  str(tmp_path / "run"), graph_name="tiny")
    workers = sorted(summary["workers"], key=lambda w: w["rank"])
    assert sum(w["training_edges"] for w in workers) == total
    ranges = sorted(w["training_edge_range"] for w in workers)
    assert ranges[0][1] <= ranges[1][0], "two workers trained the same edge"
    assert summary["epochs_run"] == 2 and summary["dense_params_in_sync"] is True
    assert np.isfinite([h["train"]["loss"] for h in summary["history"]]).all()
    assert all(w["server"]["graphbolt"] for w in workers), "the servers did not serve GraphBolt partitions"


def test_killed_worker_restarts_from_s3_checkpoint_and_finishes(tiny, s3_url):
    """SIGKILL one worker mid-epoch 1: the group restarts from epoch 0's checkpoint (on S3)."""
    import fsspec

    from recgoat_dist.storage import filesystem
    from recgoat_dist.train.distributed import fit

    part_config, _, reference = tiny
    steps = reference["workers"][0]["steps"]
    config = tiny_config(**{"debug.kill_worker_at_step": steps + 2, "cluster.max_failures": 1})
    summary = fit(config, part_config, s3_url, graph_name="tiny")
    assert summary["fault_injected"] is True and summary["restarts"] == 1
    assert summary["epochs_run"] == 3 and summary["dense_params_in_sync"] is True
    ref_loss, loss = reference["history"][-1]["train"]["loss"], summary["history"][-1]["train"]["loss"]
    assert abs(loss - ref_loss) <= 0.05 * abs(ref_loss), (loss, ref_loss)
    fs, path = filesystem(s3_url)
    names = [p.rsplit("/", 1)[-1] for p in fs.ls(f"{path}/ray_train")]
    assert "epoch_0002" in names
    assert {"dense.pt", "rank0.pt", "rank1.pt"} <= {p.rsplit("/", 1)[-1] for p in fs.ls(f"{path}/ray_train/epoch_0002")}
    assert not glob.glob("/dev/shm/rg*-m*")


@pytest.fixture(scope="module")
def lfm2k_graph(lfm2k_dataset, tmp_path_factory):
    from recgoat_dist.graph import build_graph
    out = str(tmp_path_factory.mktemp("lfm2k-graph") / "graph")
    build_graph(lfm2k_dataset, out)
    return out


def test_lfm2k_two_workers_match_one_worker(local_ray, lfm2k_graph, lfm2k_dataset, tmp_path):
    """2 partitions x 2 workers vs 1 x 1 on lfm2k, same epochs: validation R@20 within 10%."""
    import json

    from recgoat_dist.config import load_config
    from recgoat_dist.graph import partition_graph_artifact
    from recgoat_dist.train.distributed import run_distributed

    results = {}
    for n in (2, 1):
        parts = str(tmp_path / f"parts{n}")
        partition_graph_artifact(lfm2k_graph, parts, n, "metis")
        # lr 1e-2: after 2 epochs at the default 1e-3 recall is still climbing steeply, and one
        # run's noise alone once put 1 and 2 workers 12% apart in CI (0.214 vs 0.240).
        config = load_config(None, [f"cluster.num_workers={n}", f"data.partitions={parts}", "train.epochs=2",
                                    "train.lr=0.01", "train.batch_size=2048", "train.fanouts=[10, 10, 10]"])
        run_distributed(config, str(tmp_path / f"run{n}"))
        results[n] = json.loads((tmp_path / f"run{n}" / "metrics.json").read_text())
    two, one = results[2], results[1]
    print("R@20 2 workers", two["valid"]["recall@20"], "1 worker", one["valid"]["recall@20"])
    assert two["num_workers"] == 2 and two["num_partitions"] == 2 and two["restarts"] == 0
    assert two["dense_params_in_sync"] is True
    edges = [w["training_edges"] for w in two["workers"]]
    assert sum(edges) == one["workers"][0]["training_edges"] and min(edges) > 0
    assert {tuple(sorted(w)) for w in two["workers"]} == {tuple(sorted(two["workers"][0]))}
    for key in ("rank", "partition", "inner_users", "inner_items", "training_edges", "steps"):
        assert all(key in w for w in two["workers"])
    assert two["epochs_run"] == one["epochs_run"] == 2
    gap = abs(two["valid"]["recall@20"] - one["valid"]["recall@20"])
    assert gap <= 0.10 * one["valid"]["recall@20"], f"2-vs-1-worker gap {gap:.4f} exceeds 10%"
    # valid/test are those of the best validation epoch, as in single-process runs
    assert two["evaluated_epoch"] == two["best_epoch"]
    history = json.loads((tmp_path / "run2" / "history.json").read_text())
    logged = [h["valid"]["recall@20"] for h in history]
    assert two["valid"]["recall@20"] == pytest.approx(logged[two["best_epoch"]], abs=1e-9), \
        f"final valid R@20 {two['valid']['recall@20']!r} is not the logged best epoch's: {logged}"
    check_export(str(tmp_path / "run2"), lfm2k_dataset, top_k=100, test_recall_at_20=two["test"]["recall@20"])


def test_best_validation_epoch_is_restored_before_the_final_evaluation(local_ray, lfm2k_graph, tmp_path):
    """The final valid/test and the embeddings are those of the best validation epoch (restored),
    not of the last one. Patience 0 stops at the first epoch that does not improve, so the best
    epoch comes before the last unless validation rises for all 12 epochs (at lr 0.2 it is noisy;
    with 4 fixed epochs it once rose in every one, and there was nothing to restore)."""
    import json

    from recgoat_dist.config import load_config
    from recgoat_dist.graph import partition_graph_artifact
    from recgoat_dist.train.distributed import run_distributed

    parts = str(tmp_path / "parts")
    partition_graph_artifact(lfm2k_graph, parts, 1, "metis")
    config = load_config(None, ["cluster.num_workers=1", f"data.partitions={parts}", "train.epochs=12",
                                "train.patience=0", "train.lr=0.2", "train.batch_size=2048"])
    metrics = run_distributed(config, str(tmp_path / "run"))
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    scores = [h["valid"]["recall@20"] for h in history]
    assert metrics["best_epoch"] == int(np.argmax(scores)) < len(history) - 1, scores   # else nothing to restore
    assert metrics["evaluated_epoch"] == metrics["best_epoch"]
    assert metrics["valid"]["recall@20"] == pytest.approx(max(scores), abs=1e-9)


def check_export(run: str, dataset_url: str, top_k: int, test_recall_at_20: float) -> None:
    """``recgoat export`` of a distributed run, from the embeddings its workers wrote: every user and
    item once, by original id; top-k never holds a training item; scores are the dot products of
    the exported embeddings."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute  # noqa: F401  (pa.compute)

    from recgoat_dist.data.dataset import Dataset
    from recgoat_dist.export.recommendations import export_run
    from recgoat_dist.storage import Artifact

    embeddings = Artifact(run + "/embeddings", kind="embeddings")
    written = pa.concat_tables([embeddings.read_table(f) for f in embeddings.files("users/")])
    assert sorted(written["user_id"].to_pylist()) == list(range(1858))    # each user once, by dataset id
    manifest = export_run(run, run + "-export", top_k=top_k)
    assert manifest["checkpoint"] == "best"
    art = Artifact(run + "-export", kind="export")        # manifest + checksums of every file read
    table = lambda prefix: pa.concat_tables([art.read_table(f) for f in art.files(prefix)])  # noqa: E731
    users, items, recs = table("users/"), table("items/"), table("recommendations/")
    ds = Dataset(dataset_url)
    user_ids, item_ids = ds.original_ids("user"), ds.original_ids("item")
    assert users["user_id"].to_pylist() == user_ids.tolist()
    assert items["item_id"].to_pylist() == item_ids.tolist()
    per_user = np.bincount(np.unique(recs["user_id"].to_numpy(zero_copy_only=False), return_inverse=True)[1])
    assert len(per_user) == len(user_ids) and per_user.min() == per_user.max() == top_k
    train = ds.interactions("train")
    seen = set(zip(user_ids[train["user_id"]].tolist(), item_ids[train["item_id"]].tolist()))
    assert not seen & set(zip(recs["user_id"].to_pylist(), recs["item_id"].to_pylist()))
    u = dict(zip(users["user_id"].to_pylist(), np.stack(users["embedding"].to_numpy(zero_copy_only=False))))
    i = dict(zip(items["item_id"].to_pylist(), np.stack(items["embedding"].to_numpy(zero_copy_only=False))))
    # The exported top 20 reproduce the run's own test Recall@20: the partitioned -> dataset ->
    # original id mapping and the vectors are those the workers evaluated.
    test = ds.interactions("test")
    held: dict = {}
    for user, item in zip(user_ids[test["user_id"]].tolist(), item_ids[test["item_id"]].tolist()):
        held.setdefault(user, set()).add(item)
    top20: dict = {}
    for row in recs.filter(pa.compute.less(recs["rank"], 20)).to_pylist():
        top20.setdefault(row["user_id"], set()).add(row["item_id"])
    recall = np.mean([len(items & top20.get(user, set())) / len(items) for user, items in held.items()])
    assert recall == pytest.approx(test_recall_at_20, abs=2e-3), (recall, test_recall_at_20)
    for row in recs.slice(0, 500).to_pylist():
        assert abs(float(u[row["user_id"]] @ i[row["item_id"]]) - row["score"]) <= 1e-4 * max(1.0, abs(row["score"]))


@pytest.fixture(scope="module")
def demo_graph(tmp_path_factory):
    """The embedded default (make demo's synthetic dataset and graph)."""
    from recgoat_dist.config import load_config
    from recgoat_dist.pipeline import ensure_inputs

    config = ensure_inputs(load_config("configs/demo.yaml"), str(tmp_path_factory.mktemp("demo") / "inputs"))
    return config.data.graph


def test_one_worker_and_one_process_agree_on_the_demo_config(local_ray, demo_graph, tmp_path):
    """The same loop on both engines, both sampled, the demo config's epochs: validation R@20
    within 3%, as the mean of two seeds. One seed's runs are not repeatable (DGL samples in
    parallel threads): seed 0 gave one process 0.4100-0.4128 and one worker 0.3998-0.4083 over
    three tries each, so a single pair can land 3.1% apart."""
    from recgoat_dist.config import load_config
    from recgoat_dist.pipeline import train

    recall = {0: [], 1: []}
    for seed in (0, 1):
        runs = {}
        for workers in (0, 1):
            config = load_config("configs/demo.yaml", [f"data.graph={demo_graph}", f"cluster.num_workers={workers}",
                                                       "train.propagation=sampled", "train.progress=false",
                                                       f"train.seed={seed}", *DEMO_AGREEMENT_SETS])
            runs[workers] = train(config, str(tmp_path / f"run{workers}-seed{seed}"))
        one_process, one_worker = runs[0], runs[1]
        assert one_process["engine"] == "local" and one_worker["engine"] == "distributed"
        assert one_process["propagation"] == one_worker["propagation"] == "sampled"
        assert one_process["epochs_run"] == one_worker["epochs_run"]
        for workers, m in runs.items():
            recall[workers].append(m["valid"]["recall@20"])
            cost = m["step_cost"]
            assert sum(cost["input_nodes_per_step"].values()) <= 30 * cost["seeds_per_step"]
    a, b = np.mean(recall[0]), np.mean(recall[1])
    print("valid R@20 per seed: one process", recall[0], "one worker", recall[1])
    assert abs(a - b) <= 0.03 * a, (recall[0], recall[1])


# Demo config, run to the plateau, where one seed's noise is smaller than the 3% asked for.
DEMO_AGREEMENT_SETS = ["train.epochs=20", "train.patience=20"]


@pytest.mark.parametrize("model", [["model.name=lightgcn"],
                                   ["model.name=lightgcn", "model.knn_refines=id", "model.item_graph_layers=2"]],
                         ids=["lightgcn", "lightgcn+item_graph"])
def test_warm_start_puts_dataset_rows_on_their_partitions(local_ray, demo_graph, tmp_path, model):
    """A single-process model's state (dataset ids) warm-starts a 1-worker run: with a learning
    rate too small to move anything, the worker's final vectors are the single-process ones. With
    the item graph (``model.knn_refines=id``, 2 layers: deeper than ``train.fanouts``), this also
    checks the distributed layer-wise inference of it against the local one."""
    import pyarrow as pa
    import torch

    from recgoat_dist.config import load_config
    from recgoat_dist.pipeline import train
    from recgoat_dist.train.engine import infer_embeddings
    from recgoat_dist.train.inputs import load_inputs
    from recgoat_dist.train.run import Run
    from recgoat_dist.storage import Artifact

    sets = [f"data.graph={demo_graph}", *model, "train.progress=false", "train.epochs=1"]
    single = str(tmp_path / "single")
    train(load_config("configs/demo.yaml", sets), single)
    state = Run(single).checkpoint("best")["model"]
    config = load_config("configs/demo.yaml", sets + ["cluster.num_workers=1", "train.lr=1e-12"])
    train(config, str(tmp_path / "warm"), warm_start={"model": state})
    art = Artifact(str(tmp_path / "warm" / "embeddings"), kind="embeddings")
    rows = pa.concat_tables([art.read_table(f) for f in art.files("items/")])
    ids = torch.from_numpy(rows["item_id"].to_numpy())
    got = torch.from_numpy(np.stack(rows["embedding"].to_numpy(zero_copy_only=False)))
    _, want = infer_embeddings(Run(single).load_model(), load_inputs(Run(single).config), config.model.dim)
    assert torch.allclose(got, want[ids], atol=1e-4), (got - want[ids]).abs().max()
