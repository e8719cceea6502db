"""``train.eval_users``: evaluation on a fixed seeded sample of users bounds the ranking cost at
large catalogs (full ranking is users x items)."""
from __future__ import annotations

import numpy as np
import pytest

from recgoat_dist.config import ConfigError, load_config
from recgoat_dist.train.inputs import eval_user_mask, load_inputs
from test_engines import synthetic_graph


def test_the_sample_is_seeded_sized_and_none_means_everyone():
    a, b = eval_user_mask(1000, 50, seed=3), eval_user_mask(1000, 50, seed=3)
    assert a.sum() == 50 and (a == b).all() and not (a == eval_user_mask(1000, 50, seed=4)).all()
    assert eval_user_mask(1000, 0, seed=3) is None and eval_user_mask(1000, 1000, seed=3) is None
    with pytest.raises(ConfigError, match="eval_users"):
        load_config(None, ["train.eval_users=-1"])


def test_held_out_splits_keep_exactly_the_sampled_users(tmp_path):
    graph = synthetic_graph(tmp_path, 150, 120, seed=0, knn_k=5, user_knn_k=5)
    everyone = load_inputs(load_config(None, [f"data.graph={graph}"]))
    sampled = load_inputs(load_config(None, [f"data.graph={graph}", "train.eval_users=40", "train.seed=7"]))
    mask = eval_user_mask(everyone.num_users, 40, seed=7)
    for split in ("valid", "test"):
        full, kept = getattr(everyone, split).degree(), getattr(sampled, split).degree()
        np.testing.assert_array_equal(kept, np.where(mask, full, 0))
        assert 0 < (kept > 0).sum() <= 40
    assert (sampled.train.degree() == everyone.train.degree()).all()       # exclusion is unchanged
