"""Incremental KNN rows equal a full rebuild on the exact engine."""
import numpy as np

from recgoat_dist.graph import GraphArtifact
from recgoat_dist.graph.incremental import build_nightly_graph, full_rows, incremental_rows


def test_incremental_rows_equal_full_rebuild_with_ties():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    x[250:260] = x[10]                    # duplicates among new rows: exact ties with an old row
    x[290] = 0.0                          # a zero row (cosine 0 with everything)
    old, _ = full_rows(x[:240], 10)
    inc_i, inc_s, info = incremental_rows(x, 10, old)
    full_i, full_s = full_rows(x, 10)
    np.testing.assert_array_equal(inc_i, full_i)
    np.testing.assert_allclose(inc_s, full_s, atol=1e-6)
    assert info["new_rows"] == 60 and 0 < info["old_rows_updated"] < 240


def test_nightly_graph_incremental_equals_full(tmp_path):
    from recgoat_dist.data.dataset import Dataset
    from recgoat_dist.data.timeline import generate_timeline
    from recgoat_dist.nightly.config import NightlyConfig
    from recgoat_dist.nightly.delta import read_delta
    from recgoat_dist.nightly.versions import build_version_dataset

    tl = generate_timeline(str(tmp_path / "tl"), users=120, items=90, days=1, new_items_per_day=12,
                           new_users_per_day=10, active_users_per_day=60)
    config = NightlyConfig(delta=tl["delta"])
    g0 = str(tmp_path / "g0")
    build_nightly_graph(tl["base"], g0, 5, 5)
    delta = read_delta(tl["dates"][0], config, Dataset(tl["base"]).manifest)
    v1 = str(tmp_path / "v1")
    build_version_dataset(tl["base"], delta, v1, config)
    build_nightly_graph(v1, str(tmp_path / "inc"), 5, 5, previous=g0)
    build_nightly_graph(v1, str(tmp_path / "full"), 5, 5)
    inc, full = GraphArtifact(str(tmp_path / "inc")), GraphArtifact(str(tmp_path / "full"))
    assert inc.manifest["knn"]["knn_text"]["mode"] == "incremental"
    assert inc.manifest["knn"]["uu"]["mode"] == "incremental"
    assert full.manifest["knn"]["knn_text"]["mode"] == "full"
    for etype in ("rates", "knn_text", "knn_visual", "uu"):
        a, b = inc.edges(etype), full.edges(etype)
        for left, right in zip(a, b):
            np.testing.assert_allclose(left, right, atol=1e-6)
