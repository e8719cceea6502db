"""Evaluation metrics against hand-computed values, and MMRec's masking protocol."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recgoat_dist.eval import UserItems, evaluate_ranking, print_metrics_table, ranking_metrics, topk_items


def test_ranking_metrics_hand_computed():
    hits = np.array([[1, 0, 1, 0, 0],      # 2 held-out items, hits at ranks 1 and 3
                     [0, 1, 0, 0, 1],      # 7 held-out items (more than K), hits at ranks 2 and 5
                     [0, 0, 0, 0, 0]])     # 1 held-out item, no hit
    n = np.array([2, 7, 1])
    m = ranking_metrics(hits, n, ks=[1, 5])
    l2 = math.log2
    ndcg_a = (1 + 1 / l2(4)) / (1 + 1 / l2(3))
    ndcg_b = (1 / l2(3) + 1 / l2(6)) / sum(1 / l2(r + 1) for r in range(1, 6))
    assert m["recall@5"] == pytest.approx((1 + 2 / 7 + 0) / 3)
    assert m["recall@1"] == pytest.approx((0.5 + 0 + 0) / 3)
    assert m["precision@5"] == pytest.approx((2 / 5 + 2 / 5 + 0) / 3)
    assert m["ndcg@5"] == pytest.approx((ndcg_a + ndcg_b + 0) / 3)
    assert m["ndcg@1"] == pytest.approx((1 + 0 + 0) / 3)
    assert m["map@5"] == pytest.approx(((1 + 2 / 3) / 2 + (1 / 2 + 2 / 5) / 5 + 0) / 3)


def test_evaluate_masks_train_items_only_and_skips_users_without_train():
    # One-dimensional embeddings: user 0 ranks items by descending score 5,4,3,2,1,0 -> ids 0..5.
    item_emb = torch.tensor([[5.0], [4.0], [3.0], [2.0], [1.0], [0.0]])
    user_emb = torch.tensor([[1.0], [1.0], [1.0]])
    train = UserItems.from_pairs(np.array([0, 1]), np.array([0, 3]), num_users=3, num_items=6)
    # Validation item 1 of user 0 is *not* masked at test time (MMRec masks train items only).
    test = UserItems.from_pairs(np.array([0, 0, 1, 2]), np.array([2, 5, 0, 1]), num_users=3, num_items=6)
    m = evaluate_ranking(user_emb, item_emb, train, test, ks=[1, 2, 5])
    assert m["num_users"] == 2           # user 2 has no training item: not evaluated
    # user 0: ranking 1,2,3,4,5 (0 masked) -> hits at ranks 2 and 5; user 1: ranking 0,1,2,.. -> hit at 1
    l2 = math.log2
    assert m["recall@1"] == pytest.approx((0 + 1) / 2)
    assert m["recall@2"] == pytest.approx((0.5 + 1) / 2)
    assert m["recall@5"] == pytest.approx((1 + 1) / 2)
    assert m["ndcg@5"] == pytest.approx(((1 / l2(3) + 1 / l2(6)) / (1 + 1 / l2(3)) + 1) / 2)
    assert m["precision@5"] == pytest.approx((2 / 5 + 1 / 5) / 2)
    assert m["map@5"] == pytest.approx(((1 / 2 + 2 / 5) / 2 + 1) / 2)


def test_topk_is_independent_of_blocking():
    gen = torch.Generator().manual_seed(0)
    user_emb, item_emb = torch.randn(37, 8, generator=gen), torch.randn(101, 8, generator=gen)
    rng = np.random.default_rng(0)
    train = UserItems.from_pairs(rng.integers(0, 37, 400), rng.integers(0, 101, 400), 37, 101)
    users = np.arange(37)
    whole = topk_items(user_emb, item_emb, users, train, k=20)
    blocked = topk_items(user_emb, item_emb, users, train, k=20, user_block=5, item_block=7)
    assert np.array_equal(whole, blocked)
    assert not train.contains(users[:, None], whole).any()
    # Reference: dense scores with train items at -inf.
    scores = (user_emb @ item_emb.T).numpy()
    rows, cols = train.rows(users)
    scores[rows, cols] = -np.inf
    assert np.array_equal(whole, np.argsort(-scores, axis=1, kind="stable")[:, :20])


def test_user_items_contains_and_restrict():
    ui = UserItems.from_pairs(np.array([2, 0, 2, 2]), np.array([4, 1, 0, 4]), num_users=3, num_items=5)
    assert ui.degree().tolist() == [1, 0, 2]
    assert ui.contains(np.array([0, 0, 2, 2, 1]), np.array([1, 0, 0, 4, 1])).tolist() == [True, False, True, True, False]
    cold = ui.restrict_items(np.array([True, False, False, False, False]))
    assert cold.degree().tolist() == [0, 0, 1]


def test_print_metrics_table():
    metrics = {"model": "lightgcn", "best_epoch": 3, "epochs_run": 5, "seconds_per_epoch": 0.5,
               "valid": {"recall@20": 0.1, "ndcg@20": 0.05, "precision@20": 0.01, "map@20": 0.02, "num_users": 9},
               "test": {"recall@20": 0.2, "ndcg@20": 0.06, "precision@20": 0.02, "map@20": 0.03, "num_users": 9}}
    text = print_metrics_table(metrics)
    assert "lightgcn" in text and "@20" in text and "0.2000" in text
    assert len(text.splitlines()) == 3 + 2 * 5
