"""``model.content_entry: input``: the item's fused content enters LightGCN's layer 0
(recgoat_dist/model/content_entry.py). The layer-wise == full forward check for it is in
tests/test_engines.py::test_layerwise_inference_equals_the_full_forward (the ``input`` cases)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from recgoat_dist.config import ConfigError, load_config
from recgoat_dist.model import build_model
from recgoat_dist.train.engine import (LocalEngine, layerwise_tables, local_tables, model_meta,
                                       training_degrees)
from recgoat_dist.train.inputs import load_inputs
from test_engines import assert_sampled_equals_full, config_for, full_forward, perturbed_model, synthetic_graph


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return synthetic_graph(tmp_path_factory.mktemp("content_entry"), 150, 120, seed=0, knn_k=5, user_knn_k=5)


def test_content_entry_is_range_checked_and_refused_by_the_distributed_engine():
    assert load_config(None, []).model.content_entry == "output"
    with pytest.raises(ConfigError, match=r"model\.content_entry.*'middle' is not one of output, input"):
        load_config(None, ["model.content_entry=middle"])
    with pytest.raises(ConfigError, match=r"model\.content_entry.*single-process engine only"):
        load_config(None, ["cluster.num_workers=1", "model.content_entry=input"])
    assert load_config(None, ["cluster.num_workers=1"]).model.content_entry == "output"


@pytest.mark.parametrize("entry", ["output", "input"])
def test_only_input_carries_item_content_to_the_users(small, entry):
    """With ``output`` a user's vector (user LM stream off) ignores the item features; with
    ``input`` they reach it through LightGCN's propagation."""
    config = config_for(small, "model.user_lm_weight=0", f"model.content_entry={entry}")
    inputs = load_inputs(config)
    model = perturbed_model(config, inputs)
    with torch.no_grad():
        users, items = model.final_embeddings(full_forward(model, inputs))
        inputs.item_feats["text"] = inputs.item_feats["text"] + torch.randn_like(inputs.item_feats["text"])
        users2, items2 = model.final_embeddings(full_forward(model, inputs))
    assert (items2 - items).abs().max() > 1e-3
    moved = float((users2 - users).abs().max())
    assert (moved == 0.0) if entry == "output" else (moved > 1e-3), moved


def test_input_transports_onto_landmark_ego_rows(small):
    """No cycle: the OAT targets are the landmark items' ego rows, chosen (and re-chosen) on them,
    and the OAT loss of the layer-0 transport reaches the objective and the ego rows."""
    config = config_for(small, "model.content_entry=input", "model.user_lm_weight=0")   # item OAT only
    inputs = load_inputs(config)
    model = perturbed_model(config, inputs).train()
    reps = full_forward(model, inputs)
    assert torch.equal(model.landmarks(reps), model.id.item[model.landmark_idx])
    assert reps.content_oat is not None and float(reps.content_oat) > 0
    parts = model.loss(reps, torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4, 5])).parts
    assert parts["oat"] == pytest.approx(model.lambda_oat * float(reps.content_oat), rel=1e-5)
    reps.content_oat.backward()
    assert model.id.item.grad[model.landmark_idx].abs().sum() > 0
    with torch.no_grad():
        model.id.item[model.landmark_idx] = 0.0         # all landmark ego rows at one point
        model.refresh_landmarks(reps)                   # k-means++ on the ego rows: at most one of them
    assert (model.id.item[model.landmark_idx].abs().sum(1) == 0).sum() <= 1


@pytest.mark.parametrize("refines", ["content", "both"])
def test_sampled_input_with_every_neighbour_reproduces_the_full_forward(small, refines):
    """Sampled ``input``: one KNN hop for the content (GAT), one exact ID hop, LightGCN layers 2-3
    from the history of a fresh layer-wise inference == the full forward (every neighbour)."""
    config = config_for(small, f"model.knn_refines={refines}", "model.content_entry=input")
    inputs = load_inputs(config)
    model = perturbed_model(config, inputs)
    assert model.content_hops == 1
    tables, degree = local_tables(model, inputs, config.model.dim, torch.device("cpu")), training_degrees(inputs)
    with torch.no_grad():
        full = full_forward(model, inputs)
        layerwise_tables(model, inputs, tables, inputs.item_feats, inputs.user_feats, degree)
    assert_sampled_equals_full(model, inputs, tables, degree, full, [-1, -1])


def test_sampled_training_with_input_draws_knn_only_content_hops(small, tmp_path):
    from recgoat_dist.train.loop import train_epoch
    from recgoat_dist.train.sampling import block_fanouts

    config = config_for(small, "model.content_entry=input", "train.propagation=sampled", "train.batch_size=64",
                        "train.fanouts=[5]", "train.max_steps_per_epoch=4")
    inputs = load_inputs(config)
    etypes = inputs.graph.canonical_etypes
    hops = block_fanouts(etypes, [5], 1, 7, 3, content_hops=1)
    assert len(hops) == 2
    assert all(f == (7 if c[1].startswith("knn_") else 0) for c, f in hops[0].items())   # content hop, outermost
    assert {c[1]: f for c, f in hops[1].items()}["rates"] == 5
    torch.manual_seed(0)
    model = build_model(config.model, **model_meta(inputs))
    engine = LocalEngine(config, inputs, model, str(tmp_path / "run"), np.random.default_rng(0))
    before = model.id.item.detach().clone()
    losses, cost = train_epoch(engine, 0)
    assert cost["propagation"] == "sampled" and cost["steps"] == 4 and np.isfinite(losses["loss"]) and losses["oat"] > 0
    assert not torch.equal(before, model.id.item.detach())
    metrics = engine.evaluate(("valid",))["valid"]
    assert 0 <= metrics["recall@20"] <= 1
