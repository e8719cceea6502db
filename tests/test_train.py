"""Single-process training: learning happens, every variant runs, resume, no held-out leakage."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from recgoat_dist.config import load_config
from recgoat_dist.data.dataset import DataError, Dataset, DatasetWriter
from recgoat_dist.model import VARIANTS
from recgoat_dist.train import checkpoint as ckpt
from recgoat_dist.train.run import Run
from recgoat_dist.train.engine import evaluate_splits, infer_embeddings
from recgoat_dist.train.single import train_single


def make_data(root, users: int, items: int, seed: int = 0) -> tuple[str, str]:
    from recgoat_dist.data.synthetic import generate_synthetic
    from recgoat_dist.graph import build_graph

    data, graph = str(root / "data"), str(root / "graph")
    generate_synthetic(data, users=users, items=items, seed=seed)     # user modality text included
    build_graph(data, graph, knn_k=5, user_knn_k=5)
    return data, graph


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("small"), users=150, items=120)


def config_for(graph: str, *overrides: str):
    return load_config(None, [f"data.graph={graph}", "train.progress=false", "model.dim=16",
                              "model.num_landmarks=32", *overrides])


@pytest.fixture(scope="module")
def default_data(tmp_path_factory):
    """The synthetic default's size: 2000 users x 1500 items, 75 of them cold."""
    return make_data(tmp_path_factory.mktemp("default"), users=2000, items=1500)


def test_training_improves_over_untrained_model(default_data, tmp_path_factory):
    """On the synthetic default (2000 users x 1500 items), a few epochs beat the untrained model."""
    data, graph = default_data
    config = load_config(None, [f"data.graph={graph}", "model.name=recgoat", "train.epochs=3", "train.lr=0.01",
                                "train.batch_size=4096", "train.progress=false"])
    from recgoat_dist.model import build_model
    from recgoat_dist.train.inputs import load_inputs
    from recgoat_dist.train.engine import model_meta

    torch.manual_seed(config.train.seed)
    inputs = load_inputs(config)
    untrained_model = build_model(config.model, **model_meta(inputs))
    untrained = evaluate_splits(*infer_embeddings(untrained_model, inputs, config.model.dim), inputs, config,
                                ("valid",), cold=False)["valid"]
    metrics = train_single(config, str(tmp_path_factory.mktemp("run") / "run"))
    assert metrics["valid"]["recall@20"] > untrained["recall@20"] + 0.05, (untrained, metrics["valid"])
    assert metrics["test"]["recall@20"] > untrained["recall@20"] + 0.05
    # Cold items (never in training) are reported separately.
    assert metrics["test_cold"]["num_users"] > 0


def test_content_places_cold_items_that_ids_cannot(default_data, tmp_path):
    """Cold items (no training interaction) are ranked among all items on their content alone.

    LightGCN has only the random initial ID vectors of cold items; RecGOAT replaces them by their
    content transported into the ID space, so held-out cold items reach users' top 50."""
    _, graph = default_data
    cold = {}
    for name in ("lightgcn", "recgoat"):
        config = load_config(None, [f"data.graph={graph}", f"model.name={name}", "train.epochs=3",
                                    "train.lr=0.01", "train.batch_size=4096", "train.progress=false"])
        cold[name] = train_single(config, str(tmp_path / name))["test_cold"]["recall@50"]
    assert cold["recgoat"] > cold["lightgcn"] + 0.05, cold


def test_cold_item_vectors_ignore_their_untrained_id_rows(small):
    """A cold item's ranked vector comes from its content only: changing its ID row changes nothing,
    and no cold item is an OAT landmark."""
    from recgoat_dist.model import build_model
    from recgoat_dist.train.inputs import load_inputs
    from recgoat_dist.train.engine import model_meta

    _, graph = small
    config = config_for(graph, "model.name=recgoat")
    inputs = load_inputs(config)
    torch.manual_seed(0)
    model = build_model(config.model, **model_meta(inputs))
    cold = torch.from_numpy(inputs.cold_items)
    assert cold.any()

    def embeddings():
        return infer_embeddings(model, inputs, config.model.dim)
    users0, items0 = embeddings()
    assert not cold[model.landmark_idx].any()
    with torch.no_grad():
        model.id.item[cold] += 5.0
    users1, items1 = embeddings()
    assert torch.equal(items0, items1) and torch.equal(users0, users1)
    with torch.no_grad():
        model.id.item[~cold] += 5.0                  # warm items do rank with their ID rows
    assert not torch.equal(items0[~cold], embeddings()[1][~cold])


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_runs_one_epoch(small, tmp_path, name):
    _, graph = small
    metrics = train_single(config_for(graph, f"model.name={name}", "train.epochs=1"), str(tmp_path / "run"))
    assert metrics["model"] == name and metrics["epochs_run"] == 1 and metrics["best_epoch"] == 0
    for split in ("valid", "test"):
        for m in ("recall", "ndcg", "precision", "map"):
            for k in (5, 10, 20, 50):
                assert 0.0 <= metrics[split][f"{m}@{k}"] <= 1.0
    run = Run(str(tmp_path / "run"))
    assert run.metrics == json.loads(json.dumps(metrics))
    assert run.config.model.name == name
    assert set(run.artifact.files()) >= {"config.yaml", "metrics.json", "report.png", "checkpoints/best.pt"}
    assert run.load_model().name == name


@pytest.mark.parametrize("propagation", ["full", "sampled"])
def test_resume_continues_from_the_saved_epoch(small, tmp_path, monkeypatch, propagation):
    _, graph = small
    config = config_for(graph, "model.name=lightgcn", "train.epochs=4", "train.lr=0.01",
                        f"train.propagation={propagation}")
    reference = train_single(config, str(tmp_path / "reference"))

    import recgoat_dist.train.loop as loop
    real_log = loop.log_epoch

    def crash_after_epoch_1(epoch, *args, **kwargs):
        real_log(epoch, *args, **kwargs)
        if epoch == 1:
            raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(loop, "log_epoch", crash_after_epoch_1)
    out = str(tmp_path / "crashed")
    with pytest.raises(KeyboardInterrupt):
        train_single(config, out)
    assert ckpt.load(f"{out}/checkpoints/last.pt")["epoch"] == 1
    monkeypatch.setattr(loop, "log_epoch", real_log)

    seen = []
    real_train_epoch = loop.train_epoch

    def recording_train_epoch(engine, epoch):
        seen.append(epoch)
        return real_train_epoch(engine, epoch)

    monkeypatch.setattr(loop, "train_epoch", recording_train_epoch)
    resumed = train_single(config_for(graph, "model.name=lightgcn", "train.epochs=4", "train.lr=0.01",
                                      f"train.propagation={propagation}", "train.resume=true"), out)
    assert seen == [2, 3]                                 # only the epochs after the checkpoint
    assert resumed["epochs_run"] == 4 and resumed["best_epoch"] == reference["best_epoch"]
    for key in ("valid", "test"):
        assert resumed[key] == pytest.approx(reference[key])
    assert [h["epoch"] for h in Run(out).history] == [0, 1, 2, 3]


def _rewrite_heldout(src: str, dst: str, seed: int) -> None:
    """A copy of dataset ``src`` with the same training split but different valid/test interactions."""
    ds = Dataset(src)
    rng = np.random.default_rng(seed)
    train = ds.interactions("train")
    taken = set(zip(train["user_id"].tolist(), train["item_id"].tolist()))
    rows = {"user_id": list(train["user_id"]), "item_id": list(train["item_id"]), "split": [0] * len(train["user_id"])}
    for split in (1, 2):
        for u in rng.choice(ds.num_users, size=ds.num_users // 2, replace=False):
            i = int(rng.integers(ds.num_items))
            if (u, i) not in taken:
                taken.add((u, i))
                rows["user_id"].append(int(u)), rows["item_id"].append(i), rows["split"].append(split)
    n = len(rows["user_id"])
    with DatasetWriter(dst, ds.num_users, ds.num_items) as writer:
        writer.add_interactions(pa.table({"user_id": pa.array(rows["user_id"], pa.int64()),
                                          "item_id": pa.array(rows["item_id"], pa.int64()),
                                          "rating": pa.array(np.ones(n, np.float32)),
                                          "split": pa.array(rows["split"], pa.int8())}))
        for name in ds.modalities:
            writer.add_features("item", name, 0, ds.item_features(name))
        for name in ds.user_modalities:
            writer.add_features("user", name, 0, ds.user_features(name))
        writer.commit()


@pytest.mark.parametrize("name", ["lightgcn", "recgoat"])
def test_no_validation_or_test_interaction_reaches_training(small, tmp_path, name):
    """Same training split, different held-out interactions -> identical trained weights.

    Identical up to float re-association in threaded sparse reductions (seen: 1.5e-8); a held-out
    edge reaching the graph or the sampler changes degrees and gradients by orders more.
    """
    from recgoat_dist.graph import build_graph

    data, _ = small
    states = []
    for variant in (0, 1):
        other = str(tmp_path / f"data{variant}")
        _rewrite_heldout(data, other, seed=variant)
        build_graph(other, str(tmp_path / f"graph{variant}"), knn_k=5, user_knn_k=5)
        train_single(config_for(str(tmp_path / f"graph{variant}"), f"model.name={name}", "train.epochs=2"),
                     str(tmp_path / f"run{variant}"))
        states.append(Run(str(tmp_path / f"run{variant}")).checkpoint("last")["model"])
    assert Dataset(str(tmp_path / "data0")).interactions("test")["item_id"].tolist() != \
        Dataset(str(tmp_path / "data1")).interactions("test")["item_id"].tolist()
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        # Landmark potentials are Sinkhorn duals, solved to a marginal tolerance of 1e-5 rather than
        # trained: a 1e-8 difference upstream can move the stopping iteration and them by ~1e-6.
        atol = 1e-4 if key.endswith("landmark_potentials") else 1e-6
        torch.testing.assert_close(states[0][key], states[1][key], rtol=0, atol=atol, msg=key)


def test_graph_with_a_heldout_edge_is_refused(small):
    import dgl

    from recgoat_dist.train.inputs import load_graph, load_inputs

    data, graph_url = small
    g = load_graph(graph_url)
    test = Dataset(data).interactions("test")
    u, i = g.edges(etype="rates")
    leaked = dgl.heterograph({("user", "rates", "item"): (torch.cat([u, torch.tensor(test["user_id"][:1])]),
                                                          torch.cat([i, torch.tensor(test["item_id"][:1])]))},
                             num_nodes_dict={"user": g.num_nodes("user"), "item": g.num_nodes("item")})
    with pytest.raises(DataError, match="not training interactions"):
        load_inputs(config_for(graph_url, "model.name=lightgcn", f"data.dataset={data}"), graph=leaked)


def test_cli_trains_to_s3_saves_the_resolved_config_and_refuses_to_clobber(small, s3_url, capsys):
    from recgoat_dist.cli import main
    from recgoat_dist.config import config_from_dict
    import yaml

    _, graph = small
    demo = str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
    args = ["train", "--config", demo, "--set", f"data.graph={graph}", "--set", "model.name=lightgcn", "--set",
            "train.epochs=1", "--set", "model.dim=8", "--set", "train.progress=false", "--out", s3_url]
    assert main(args) == 0
    assert "recall" in capsys.readouterr().out
    run = Run(s3_url)
    saved = config_from_dict(yaml.safe_load(run.artifact.read_bytes("config.yaml")))
    assert saved.model.name == "lightgcn" and saved.model.dim == 8 and saved.data.graph == graph
    assert saved.train.lr == 0.005                      # from configs/demo.yaml
    assert main(args) == 2                              # exists: refused without --overwrite
    assert "already exists" in capsys.readouterr().err
    assert main(["train", "--set", "train.epochz=1", "--out", s3_url]) == 2
    assert "unknown config key train.epochz" in capsys.readouterr().err


def test_on_epoch_sees_every_epoch_after_its_checkpoint(small, tmp_path):
    from recgoat_dist.pipeline import train

    _, graph = small
    out, seen = str(tmp_path / "run"), []

    def record(epoch, valid):
        seen.append((epoch, valid["recall@20"]))
        assert ckpt.load(f"{out}/checkpoints/last.pt")["epoch"] == epoch

    metrics = train(config_for(graph, "model.name=lightgcn", "train.epochs=3"), out, on_epoch=record)
    assert [e for e, _ in seen] == [0, 1, 2]
    assert dict(seen)[metrics["best_epoch"]] == pytest.approx(metrics["valid"]["recall@20"])
