"""``model.knn_refines``: the modality KNN graphs refining the item ID embeddings (FREEDOM's reading).

The layer-wise == full-forward and sampled-history checks of the option are in test_engines.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from recgoat_dist.config import ConfigError, load_config
from recgoat_dist.model import build_model
from recgoat_dist.train.engine import LocalEngine, model_meta
from recgoat_dist.train.inputs import load_inputs
from tests.test_engines import config_for, full_forward, synthetic_graph


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return synthetic_graph(tmp_path_factory.mktemp("item_graph"), 150, 120, seed=0, knn_k=5, user_knn_k=5)


def knn_mean(graph, etype: str, rows: np.ndarray) -> np.ndarray:
    """Mean of the in-neighbours' rows in one KNN relation, from its edge list."""
    src, dst = (t.numpy() for t in graph.edges(etype=etype))
    out = np.zeros_like(rows)
    np.add.at(out, dst, rows[src])
    return out / np.maximum(np.bincount(dst, minlength=len(rows)), 1)[:, None]


def test_the_item_graph_adds_the_weighted_neighbour_mean_of_the_ego_rows(small):
    """h = sum_m w_m mean_{N_m(i)} e^(0)_j with weights normalised to 1, added to LightGCN's items;
    two layers apply the same step twice; users and the LightGCN part are untouched."""
    base = config_for(small, "model.name=lightgcn")
    inputs = load_inputs(base)
    assert sorted(inputs.item_feature_dims) == ["text", "visual"]
    torch.manual_seed(0)
    plain = build_model(base.model, **model_meta(inputs)).eval()
    for layers in (1, 2):
        config = config_for(small, "model.name=lightgcn", "model.knn_refines=id", f"model.item_graph_layers={layers}",
                            "model.item_graph_weights={text: 3, visual: 1}")
        model = build_model(config.model, **model_meta(inputs)).eval()
        model.load_state_dict(plain.state_dict())
        with torch.no_grad():
            got, want = full_forward(model, inputs), full_forward(plain, inputs)
        h = model.id.item.detach().numpy()
        for _ in range(layers):
            h = 0.75 * knn_mean(inputs.graph, "knn_text", h) + 0.25 * knn_mean(inputs.graph, "knn_visual", h)
        np.testing.assert_allclose(got.item_id.numpy() - want.item_id.numpy(), h, atol=1e-5)
        assert torch.equal(got.user_id, want.user_id)


def test_what_the_knn_graphs_refine_decides_the_content_streams_gat(small):
    inputs = load_inputs(config_for(small))
    layers = {}
    for refines in ("content", "id", "both"):
        model = build_model(config_for(small, f"model.knn_refines={refines}").model, **model_meta(inputs))
        layers[refines] = ({m: len(s.gats) for m, s in model.item_streams.items()}, model.item_graph is not None)
    assert layers == {"content": ({"text": 1, "visual": 1}, False), "id": ({"text": 0, "visual": 0}, True),
                      "both": ({"text": 1, "visual": 1}, True)}
    # a modality the weights leave out is not propagated over
    model = build_model(config_for(small, "model.knn_refines=id", "model.item_graph_weights={text: 1}").model,
                        **model_meta(inputs))
    assert model.item_graph.weights == {"text": 1.0}
    with pytest.raises(ConfigError, match=r"model\.item_graph_weights.*audio"):
        build_model(config_for(small, "model.knn_refines=id", "model.item_graph_weights={audio: 1}").model,
                    **model_meta(inputs))


def test_distributed_item_graph_deeper_than_the_fanouts_loads():
    """Both engines draw one hop per item-graph layer (at least), so no depth is refused."""
    config = load_config(None, ["cluster.num_workers=2", "model.knn_refines=both", "model.item_graph_layers=2",
                                "train.fanouts=[10]"])
    assert config.model.item_graph_layers == 2


def test_a_sampled_epoch_draws_a_hop_per_item_graph_layer_and_trains_the_ego_rows(small, tmp_path):
    """Sampled propagation with a 2-layer item graph and 1 GAT layer: the sampler draws 2 hops and
    the step's loss reaches the item ID rows through the item graph (lightgcn: no other stream)."""
    from recgoat_dist.train.loop import train_epoch

    config = config_for(small, "model.name=lightgcn", "model.knn_refines=id", "model.item_graph_layers=2",
                        "model.n_layers=1", "train.propagation=sampled", "train.batch_size=64",
                        "train.max_steps_per_epoch=3")
    inputs = load_inputs(config)
    torch.manual_seed(0)
    model = build_model(config.model, **model_meta(inputs))
    engine = LocalEngine(config, inputs, model, str(tmp_path / "run"), np.random.default_rng(0))
    assert len(engine.sampler.fanouts) == 2
    before = model.id.item.detach().clone()
    losses, cost = train_epoch(engine, 0)
    assert cost["propagation"] == "sampled" and np.isfinite(losses["loss"])
    assert not torch.equal(before, model.id.item.detach())


@pytest.mark.parametrize("name, refines", [("default", "both"), ("office", "both"), ("lfm2k", "content")])
def test_the_shipped_configs_load_and_say_what_the_knn_graphs_refine(name, refines):
    from pathlib import Path

    config = load_config(str(Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml"))
    assert config.model.knn_refines == refines and config.model.name == "recgoat"


def test_default_config_runs_on_the_synthetic_default(small, tmp_path):
    """configs/default.yaml as a new user runs it (item graph and content streams): one epoch, metrics."""
    from pathlib import Path

    from recgoat_dist.train.single import train_single

    config = load_config(str(Path(__file__).resolve().parents[1] / "configs" / "default.yaml"),
                         [f"data.graph={small}", "data.dataset=null", "train.epochs=1", "train.progress=false",
                          "model.num_landmarks=32"])
    metrics = train_single(config, str(tmp_path / "run"))
    assert metrics["epochs_run"] == 1 and 0 <= metrics["valid"]["recall@20"] <= 1
