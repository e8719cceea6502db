"""The distributed engine's final vectors, finished block by block from the layer tables
(:class:`FinalVectors`), equal the all-at-once ``final_embeddings`` of every table pulled whole,
for every variant, cold items included, with OAT potentials stored or still to be fitted. Equal
up to float rounding: a matmul over 7 rows and over all rows may round differently (1.5e-8
seen here); a wrong landmark or potential moves them by ~0.1."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from recgoat_dist.model import VARIANTS, full_representations
from recgoat_dist.train.distributed.inference import FinalVectors, UsersOnDemand
from recgoat_dist.train.engine import layerwise_tables, local_tables, training_degrees
from recgoat_dist.train.inputs import load_inputs
from test_engines import perturbed_model, synthetic_graph


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return synthetic_graph(tmp_path_factory.mktemp("final_vectors"), 150, 120, seed=0, knn_k=5, user_knn_k=5)


def filled_tables(small, name: str):
    """A perturbed model of variant ``name`` and its layer-wise inference in local tables."""
    from recgoat_dist.config import load_config

    config = load_config(None, [f"data.graph={small}", "model.dim=16", "model.n_layers=2", f"model.name={name}",
                                "model.num_landmarks=16", "model.gat_layers=2"])
    inputs = load_inputs(config)
    model = perturbed_model(config, inputs)
    tables = local_tables(model, inputs, config.model.dim, torch.device("cpu"))
    item_feats = dict(inputs.item_feats)
    layerwise_tables(model, inputs, tables, item_feats, inputs.user_feats, training_degrees(inputs))
    cold = torch.from_numpy(inputs.cold_items.copy())
    cold[::9] = True                         # cold rows in most blocks of 7, none in some
    return model, tables, cold, inputs


@pytest.mark.parametrize("name", sorted(VARIANTS))
@pytest.mark.parametrize("potentials", ["stored", "fitted here"])
def test_block_wise_final_vectors_equal_the_all_at_once_ones(small, name, potentials):
    model, tables, cold, inputs = filled_tables(small, name)
    whole = lambda fn, nt: fn(slice(None))      # noqa: E731  (every row: the all-at-once pull)
    reps = full_representations(tables, whole)
    reps.item_cold = cold
    if model.oat is not None or model.user_oat is not None:
        model.refresh_landmarks(reps)            # as an epoch start does
        if potentials == "stored":               # as training does
            model.final_embeddings(reps)
    elif potentials == "fitted here":
        pytest.skip("no OAT: no potentials")
    want_users, want_items = copy.deepcopy(model).final_embeddings(reps)

    final = FinalVectors(model, tables, cold, whole, block=7)
    users = torch.arange(inputs.num_users)
    got_users, got_items = final.users(users), final.items()
    torch.testing.assert_close(got_users, want_users, rtol=0, atol=1e-6)
    torch.testing.assert_close(got_items, want_items, rtol=0, atol=1e-6)
    assert got_users.shape == (inputs.num_users, 16) and got_items.shape == (inputs.num_items, 16)
    # a subset of users (the evaluated ones) in any order, and the writer's on-demand slices
    some = torch.from_numpy(np.random.default_rng(1).permutation(inputs.num_users)[:40])
    torch.testing.assert_close(final.users(some), want_users[some], rtol=0, atol=1e-6)
    lazy = UsersOnDemand(final, users)
    assert len(lazy) == inputs.num_users
    torch.testing.assert_close(lazy[10:31], want_users[10:31], rtol=0, atol=1e-6)
    assert final.users(users[:0]).shape == (0, 16)


def test_landmarks_are_picked_from_the_candidate_rows_alone(small, monkeypatch):
    """Rank 0's landmark pick (:func:`pick_landmarks`) reads only the rows k-means++ is seeded on:
    below ``LANDMARK_POOL`` it picks what the model picks from every row; above it, it reads at
    most ``LANDMARK_POOL`` rows per node type and picks warm items among them."""
    from recgoat_dist.model import recgoat
    from recgoat_dist.train.distributed.inference import pick_landmarks

    model, tables, cold, inputs = filled_tables(small, "recgoat")
    reps = full_representations(tables, lambda fn, nt: fn(slice(None)))
    reps.item_cold = cold
    torch.manual_seed(3)
    model.refresh_landmarks(reps)
    want = (model.landmark_idx.clone(), model.user_landmark_idx.clone())
    read = []

    def pull(fn, ids):
        read.append(len(ids))
        return fn(ids)

    torch.manual_seed(3)
    got = pick_landmarks(model, tables, pull, inputs.num_users, cold)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])

    monkeypatch.setattr(recgoat, "LANDMARK_POOL", 40)
    read.clear()
    items, users = pick_landmarks(model, tables, pull, inputs.num_users, cold)
    assert read and max(read) <= 40 < min(inputs.num_users, inputs.num_items)
    assert len(items) == len(users) == 16 and not bool(cold[items].any())
    assert len(torch.unique(items)) == 16 and int(users.max()) < inputs.num_users
