"""The one loop's engines: layer-wise inference == full forward, sampled steps bounded by the batch,
historical layers, devices, and configuration keys an engine cannot honour."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from recgoat_dist.config import ConfigError, load_config
from recgoat_dist.model import VARIANTS, build_model
from recgoat_dist.train.engine import LocalEngine, infer_embeddings, local_tables, model_meta, training_degrees
from recgoat_dist.train.inputs import load_inputs


def synthetic_graph(root, users: int, items: int, seed: int, knn_k: int, user_knn_k: int) -> str:
    from recgoat_dist.data.synthetic import generate_synthetic
    from recgoat_dist.graph import build_graph

    data, graph = str(root / "data"), str(root / "graph")
    generate_synthetic(data, users=users, items=items, seed=seed)
    build_graph(data, graph, knn_k=knn_k, user_knn_k=user_knn_k)
    return graph


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return synthetic_graph(tmp_path_factory.mktemp("engines"), 150, 120, seed=0, knn_k=5, user_knn_k=5)


def config_for(graph: str, *overrides: str):
    return load_config(None, [f"data.graph={graph}", "train.progress=false", "model.dim=16", "model.n_layers=3",
                              "model.num_landmarks=32", *overrides])


def perturbed_model(config, inputs):
    """The model of ``config`` with every parameter moved, so that no stream is near its initial value."""
    torch.manual_seed(0)
    model = build_model(config.model, **model_meta(inputs)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def assert_sampled_equals_full(model, inputs, tables, degree, full, fanouts: list) -> None:
    """Blocks of a few seeds with ``fanouts`` (every neighbour: -1) and the historical ``tables``
    give the full forward's rows of those seeds, for every stream."""
    import dgl

    from recgoat_dist.train.steps import attach_degrees

    seeds = {"user": torch.tensor([0, 3, 7, 20]), "item": torch.tensor([1, 2, 50, 99])}
    with torch.no_grad():
        input_nodes, _, blocks = dgl.dataloading.NeighborSampler(fanouts).sample_blocks(inputs.graph, seeds)
        attach_degrees(blocks, lambda nt, ids: degree[nt][ids])
        feats = {m: x[input_nodes["item"]] for m, x in inputs.item_feats.items()}
        reps = model(blocks, input_nodes, feats, inputs.user_feats[input_nodes["user"]], tables.history)
    for got, want in ((reps.user_id, full.user_id[seeds["user"]]), (reps.item_id, full.item_id[seeds["item"]]),
                      (reps.item_modal["text"], full.item_modal["text"][seeds["item"]]),
                      (reps.user_lm, full.user_lm[seeds["user"]])):
        assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def full_forward(model, inputs):
    nodes = {"user": torch.arange(inputs.num_users), "item": torch.arange(inputs.num_items)}
    reps = model([inputs.graph] * model.num_graph_layers, nodes, inputs.item_feats, inputs.user_feats)
    reps.item_cold = torch.from_numpy(inputs.cold_items)
    return reps


@pytest.mark.parametrize("name, refines, entry", [(n, "content", "output") for n in sorted(VARIANTS)]
                         + [("recgoat", "id", "output"), ("recgoat", "both", "output"),
                            ("lightgcn", "id", "output"), ("no_oat", "both", "output")]
                         + [(n, "content", "input") for n in sorted(VARIANTS)]
                         + [("recgoat", "id", "input"), ("recgoat", "both", "input"), ("no_oat", "both", "input")])
def test_layerwise_inference_equals_the_full_forward(small, name, refines, entry):
    """The model's per-hop inference (evaluation, distributed evaluation and export all use it)
    gives the full-graph forward's vectors within 1e-5, for every variant, for each thing the
    KNN graphs may refine (the item graph over the ID embeddings with 2 layers: hops beyond 1) and
    for both places the content may join the ID stream (``model.content_entry``)."""
    config = config_for(small, f"model.name={name}", "model.gat_layers=2", f"model.knn_refines={refines}",
                        "model.item_graph_layers=2", f"model.content_entry={entry}")
    inputs = load_inputs(config)
    model = perturbed_model(config, inputs)
    with torch.no_grad():
        users_full, items_full = model.final_embeddings(full_forward(model, inputs))
    users, items = infer_embeddings(model, inputs, config.model.dim)
    assert torch.allclose(users, users_full, atol=1e-5), (users - users_full).abs().max()
    assert torch.allclose(items, items_full, atol=1e-5), (items - items_full).abs().max()


@pytest.mark.parametrize("refines, gat_layers", [("content", 1), ("both", 1), ("content", 2)])
def test_history_with_every_neighbour_reproduces_the_full_forward(small, refines, gat_layers):
    """Sampled propagation: exact hops with every neighbour (1, or 2 for 2 GAT layers), the
    LightGCN layers beyond them from the historical tables of a fresh layer-wise inference == the
    full forward, for any seeds (with ``both``, the item graph's one layer runs on the sampled KNN
    edges of that hop). The content streams run on the sub-blocks of the nodes they use."""
    from recgoat_dist.train.engine import layerwise_tables

    config = config_for(small, "model.name=recgoat", f"model.knn_refines={refines}",
                        f"model.gat_layers={gat_layers}")
    inputs = load_inputs(config)
    torch.manual_seed(0)
    model = build_model(config.model, **model_meta(inputs)).eval()
    tables = local_tables(model, inputs, config.model.dim, torch.device("cpu"))
    degree = training_degrees(inputs)
    with torch.no_grad():
        full = full_forward(model, inputs)
        layerwise_tables(model, inputs, tables, inputs.item_feats, inputs.user_feats, degree)
    assert_sampled_equals_full(model, inputs, tables, degree, full, [-1] * gat_layers)


def test_content_streams_use_only_the_nodes_behind_their_outputs(small):
    """A sampled block's user sources are mostly the raters of the batch's items; the user
    stream's sub-block keeps its seeds and their user-user neighbours, and nothing else."""
    import dgl

    from recgoat_dist.model.streams import used_relations

    inputs = load_inputs(config_for(small))
    seeds = {"user": torch.tensor([0, 3, 7]), "item": torch.arange(40)}
    _, _, (block,) = dgl.dataloading.NeighborSampler([-1]).sample_blocks(inputs.graph, seeds)
    rel = block["uu"]
    (sub,), inputs_used = used_relations([rel])
    src, _ = rel.in_edges(torch.arange(rel.num_dst_nodes()))
    want = torch.unique(torch.cat([torch.arange(rel.num_dst_nodes()), src]))
    assert sorted(inputs_used.tolist()) == want.tolist() and len(want) < rel.num_src_nodes()
    assert inputs_used[:sub.num_dst_nodes()].tolist() == list(range(rel.num_dst_nodes()))
    assert sub.num_edges() == rel.num_edges()


def test_stream_gat_layer_is_dgls_gatconv_and_the_fold_changes_nothing():
    """:func:`attend` computes DGL's ``GATConv`` from the stream's own transforms, and folding the
    first layer's ``fc_src`` into the projection gives the same outputs and parameter gradients as
    projecting every source (the path taken with feature dropout)."""
    import dgl

    from recgoat_dist.model.streams import FeatureStream

    torch.manual_seed(0)
    n_src, n_dst = 60, 15
    src = torch.randint(0, n_src, (80,))
    dst = torch.randint(0, n_dst - 2, (80,))          # the last two destinations have no in-edge
    # a block: its first n_dst sources are its destinations (DGL's convention)
    block = dgl.create_block({("item", "knn_text", "item"): (src, dst)}, num_src_nodes={"item": n_src},
                             num_dst_nodes={"item": n_dst})
    stream = FeatureStream(12, 8, "knn_text", "item", gat_layers=1, heads=2)
    with torch.no_grad():
        stream.gats[0].bias.normal_()                 # DGL starts it at zero
    x = torch.randn(n_src, 12)
    rel = block["knn_text"]

    h = stream.project(x)
    want = h[:n_dst] + stream.gats[0](rel, (h, h[:n_dst])).flatten(1)
    assert torch.allclose(stream.hop(0, rel, h, h[:n_dst]), want, atol=1e-6)

    def outputs_and_grads(drop: float):
        stream.zero_grad()
        stream.gats[0].feat_drop.p = drop             # > 0: the unfolded path (p=1e-9 keeps every row)
        out = stream([block], x)
        (out * torch.arange(out.numel()).view_as(out)).sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in stream.named_parameters()}

    folded, folded_grads = outputs_and_grads(0.0)
    torch.manual_seed(1)
    unfolded, unfolded_grads = outputs_and_grads(1e-9)
    assert torch.allclose(folded, want, atol=1e-5) and torch.allclose(unfolded, want, atol=1e-5)
    for name, grad in folded_grads.items():
        assert torch.allclose(grad, unfolded_grads[name], rtol=1e-4, atol=1e-5), name


@pytest.fixture(scope="module")
def dense_graph(tmp_path_factory):
    """2000 users x 600 items: 3 hops at fanout 10 reach nearly every node."""
    return synthetic_graph(tmp_path_factory.mktemp("dense"), 2000, 600, seed=1, knn_k=10, user_knn_k=5)


def test_sampled_steps_stay_bounded_where_three_hops_reach_the_whole_graph(dense_graph, tmp_path):
    import dgl

    from recgoat_dist.train.loop import train_epoch
    from recgoat_dist.train.sampling import SeedBatch, block_fanouts

    config = config_for(dense_graph, "train.propagation=sampled", "train.batch_size=16", "train.fanouts=[10]",
                        "train.max_steps_per_epoch=8", "model.num_landmarks=8")
    inputs = load_inputs(config)
    meta = inputs.graph_meta
    users, pos = np.repeat(np.arange(inputs.num_users), inputs.train.degree())[:16], inputs.train.indices[:16]
    batch = SeedBatch(users, pos, pos[::-1].copy())
    three_hops = dgl.dataloading.NeighborSampler(block_fanouts(
        inputs.graph.canonical_etypes, [10, 10, 10], 3, meta["knn_k"], meta["user_knn_k"]))
    reached, _, _ = three_hops.sample_blocks(inputs.graph, batch.seeds)
    total = inputs.num_users + inputs.num_items
    assert (len(reached["user"]) + len(reached["item"])) > 0.9 * total      # 3 hops: nearly every node

    torch.manual_seed(0)
    model = build_model(config.model, **model_meta(inputs))
    engine = LocalEngine(config, inputs, model, str(tmp_path / "run"), np.random.default_rng(0))
    losses, cost = train_epoch(engine, 0)
    assert cost["propagation"] == "sampled" and cost["steps"] == 8 and np.isfinite(losses["loss"])
    inputs_per_step = sum(cost["input_nodes_per_step"].values())
    assert inputs_per_step <= 30 * cost["seeds_per_step"], cost
    assert sum(cost["input_nodes_max"].values()) < 0.4 * total, cost


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_a_one_line_error(small, tmp_path, capsys):
    from recgoat_dist.cli import main

    code = main(["train", "--set", f"data.graph={small}", "--set", "train.device=cuda", "--set", "train.epochs=1",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "train.device" in err[0] and "no CUDA device" in err[0]
    assert not (tmp_path / "run" / "manifest.json").exists()


def test_auto_device_and_propagation_resolve_and_say_so(small, tmp_path, caplog):
    from recgoat_dist.train.single import train_single

    caplog.set_level("INFO")
    metrics = train_single(config_for(small, "train.epochs=1"), str(tmp_path / "run"))
    assert metrics["device"] == "cpu" and metrics["propagation"] == "full"
    assert "train.propagation auto -> full" in caplog.text
    sampled = train_single(config_for(small, "train.epochs=1", "train.full_max_edges=10"), str(tmp_path / "s"))
    assert sampled["propagation"] == "sampled" and sampled["step_cost"]["propagation"] == "sampled"
    assert set(sampled["step_cost"]) >= {"seeds_per_step", "input_nodes_per_step", "input_nodes_max",
                                         "seconds_per_step", "edges_per_second"}


@pytest.mark.parametrize("overrides, message", [
    (["cluster.num_workers=2", "train.propagation=full"], "train.propagation"),
    (["cluster.use_gpu=true"], "cluster.use_gpu"),
    (["cluster.num_workers=1", "train.device=cuda"], "train.device"),
    (["cluster.fanouts=[5, 5]"], "train.fanouts"),
    (["cluster.num_samplers=2"], "cluster.num_samplers"),
    (["model.num_landmarks=0"], "model.num_landmarks"),
    (["model.ot_eps=-1"], "model.ot_eps"),
    (["model.temperature=0"], "model.temperature"),
    (["model.dropout=1.0"], "model.dropout"),
    (["train.lr=0"], "train.lr"),
    (["train.fanouts=[]"], "train.fanouts"),
    (["train.propagation=layered"], "train.propagation"),
    (["model.modalities=[]"], "model.modalities"),
    (["model.knn_refines=ids"], "model.knn_refines"),
    (["model.item_graph_layers=0"], "model.item_graph_layers"),
    (["model.item_graph_weights={text: -1}"], "model.item_graph_weights"),
    (["model.item_graph_weights={text: 0}"], "model.item_graph_weights"),
])
def test_keys_that_cannot_be_honoured_fail_when_the_config_loads(overrides, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(None, overrides)


def test_keys_an_engine_cannot_honour_fail_before_training(small, tmp_path):
    from recgoat_dist.train.distributed.model import modalities_of
    from recgoat_dist.train.single import train_single

    with pytest.raises(ConfigError, match="train.weight_decay"):
        train_single(config_for(small, "train.propagation=sampled", "train.weight_decay=0.01"), str(tmp_path / "a"))
    # the distributed engine applies the single-process rules to model.modalities
    inputs = load_inputs(config_for(small))
    with pytest.raises(ConfigError, match="model.modalities"):
        modalities_of(inputs.graph, config_for(small, "model.modalities=[audio]").model)
    with pytest.raises(ConfigError, match="model.modalities"):
        train_single(config_for(small, "model.modalities=[audio]"), str(tmp_path / "b"))


def test_distributed_runs_follow_the_resume_and_overwrite_rules(tmp_path):
    """--resume / --overwrite mean the same for a distributed run as for one process."""
    from recgoat_dist.storage import StorageError
    from recgoat_dist.train.distributed.driver import TRAIN_DIR, prepare_out

    out = tmp_path / "run"
    (out / TRAIN_DIR / "epoch_0000").mkdir(parents=True)
    with pytest.raises(StorageError, match="unfinished distributed run"):
        prepare_out(load_config(None, ["cluster.num_workers=1"]), str(out), overwrite=False)
    prepare_out(load_config(None, ["cluster.num_workers=1", "train.resume=true"]), str(out), overwrite=False)
    assert (out / TRAIN_DIR).exists()                      # resuming keeps the checkpoints
    (out / "manifest.json").write_text("{}")
    with pytest.raises(StorageError, match="already complete"):
        prepare_out(load_config(None, ["cluster.num_workers=1", "train.resume=true"]), str(out), overwrite=False)
    with pytest.raises(StorageError, match="--overwrite"):
        prepare_out(load_config(None, ["cluster.num_workers=1"]), str(out), overwrite=False)
    prepare_out(load_config(None, ["cluster.num_workers=1"]), str(out), overwrite=True)
    assert not out.exists()
