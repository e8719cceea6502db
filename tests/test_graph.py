"""Graph construction: KNN engines, symmetrisation, the graph artifact, the CLI, lfm2k acceptance."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from recgoat_dist.cli import main
from recgoat_dist.data.dataset import SPLITS, DataError, Dataset, DatasetWriter
from recgoat_dist.graph import GraphArtifact, build_graph, knn, symmetrise
from recgoat_dist.graph.knn import exact_topk
from recgoat_dist.storage import StorageError


def make_dataset(url: str, num_users: int = 120, num_items: int = 80, seed: int = 0,
                 user_modalities: dict[str, int] | None = None) -> dict:
    """A small canonical dataset: random interactions in 3 splits, two item modalities (one with
    duplicate rows and a zero row), optional user modalities. Returns the raw arrays."""
    rng = np.random.default_rng(seed)
    pairs = rng.choice(num_users * num_items, size=num_users * num_items // 6, replace=False)
    users, items = pairs // num_items, pairs % num_items
    split = rng.choice(3, size=len(pairs), p=[0.7, 0.15, 0.15]).astype(np.int8)
    rating = rng.integers(1, 6, size=len(pairs)).astype(np.float32)
    text = rng.normal(size=(num_items, 16)).astype(np.float32)
    text[3] = text[11] = text[40]          # duplicate rows tie exactly
    text[7] = 0.0                          # a zero row has cosine 0 with everything
    audio = rng.normal(size=(num_items, 8)).astype(np.float32)
    out = {"user_id": users, "item_id": items, "split": split, "rating": rating,
           "text": text, "audio": audio}
    with DatasetWriter(url, num_users, num_items) as w:
        half = len(pairs) // 2                     # two interaction parts
        for sl in (slice(0, half), slice(half, None)):
            w.add_interactions(pa.table({"user_id": users[sl], "item_id": items[sl],
                                         "rating": rating[sl], "split": split[sl]}))
        w.add_features("item", "text", 0, text[:50])
        w.add_features("item", "text", 50, text[50:])
        w.add_features("item", "audio", 0, audio)
        for name, dim in (user_modalities or {}).items():
            out[f"user_{name}"] = rng.normal(size=(num_users, dim)).astype(np.float32)
            w.add_features("user", name, 0, out[f"user_{name}"])
        w.commit()
    return out


def brute_force(features: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 numpy top-K cosine, self excluded, ties by lower index."""
    x = features.astype(np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms == 0, 1, norms)
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    cols = np.arange(len(x))
    idx = np.stack([np.lexsort((cols, -row))[:k] for row in s])
    return idx, np.take_along_axis(s, idx, 1)


def edge_set(src, dst) -> set:
    return set(zip(np.asarray(src).tolist(), np.asarray(dst).tolist()))


def sym_edges(idx: np.ndarray) -> set:
    src = np.repeat(np.arange(len(idx)), idx.shape[1])
    return edge_set(src, idx.ravel()) | edge_set(idx.ravel(), src)


def assert_equal_up_to_ties(got: set, features: np.ndarray, k: int, tol: float = 1e-9) -> None:
    """The symmetrised graph equals the brute force, except for edges explained by a tie at the
    k-th cosine (either end)."""
    idx, scores = brute_force(features, k)
    expected = sym_edges(idx)
    if got == expected:
        return
    x = features.astype(np.float64)
    x /= np.where(np.linalg.norm(x, axis=1, keepdims=True) == 0, 1, np.linalg.norm(x, axis=1, keepdims=True))
    kth = scores[:, -1]
    for a, b in got ^ expected:
        cos = float(x[a] @ x[b])
        assert abs(cos - kth[a]) < tol or abs(cos - kth[b]) < tol, (a, b, cos, kth[a], kth[b])


# --- engines ----------------------------------------------------------------------------------

def test_exact_blockwise_breaks_ties_by_lower_index():
    # Small integer features: every dot product is exact in float32, so there are many exact
    # ties; tiny blocks exercise the block merge and the tie overflow path.
    rng = np.random.default_rng(1)
    x = rng.integers(-1, 2, size=(60, 3)).astype(np.float32)
    x[5] = 0
    s = x.astype(np.float64) @ x.T.astype(np.float64)
    np.fill_diagonal(s, -np.inf)
    cols = np.arange(len(x))
    for k in (1, 4, 9):
        expected = np.stack([np.lexsort((cols, -row))[:k] for row in s])
        for rows, blk in ((7, 5), (1024, 32768), (13, 4)):
            idx, val = exact_topk(x, k, block_rows=rows, block_cols=blk)
            np.testing.assert_array_equal(idx, expected, err_msg=f"k={k} blocks={rows}x{blk}")
            np.testing.assert_array_equal(val, np.take_along_axis(s, expected, 1).astype(np.float32))
    q = np.array([59, 0, 5])
    idx, _ = exact_topk(x, 4, q, block_rows=2, block_cols=9)
    np.testing.assert_array_equal(idx, np.stack([np.lexsort((cols, -s[i]))[:4] for i in q]))


def test_knn_exact_equals_float64_brute_force_with_duplicates():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 24)).astype(np.float32)
    x[10] = x[20] = x[250] = x[299]          # four identical rows
    x[[30, 31]] = 0
    nb = knn(x, 6, engine="exact", block_rows=64, block_cols=100)
    idx, scores = brute_force(x, 6)
    np.testing.assert_array_equal(nb.indices, idx)
    np.testing.assert_allclose(nb.scores, scores, atol=1e-6)
    assert nb.engine == "exact" and nb.info["zero_rows"] == 2
    # duplicates: row 10's best neighbours are its three copies, lower index first
    assert nb.indices[10, :3].tolist() == [20, 250, 299]


def test_knn_faiss_recall_and_auto_switch():
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(40, 32))
    x = (centres[rng.integers(0, 40, 6000)] + 0.6 * rng.normal(size=(6000, 32))).astype(np.float32)
    nb = knn(x, 10, engine="auto", approx_above=5000, recall_sample=500, tune_sample=300)
    assert nb.engine == "faiss"
    assert nb.info["recall_vs_exact"] >= 0.9
    assert nb.info["nprobe"] >= 1 and nb.info["nlist"] > 1
    # the reported recall is honest: recompute it on other rows
    full_idx, _ = exact_topk(np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True)), 10,
                             np.arange(0, 6000, 17))
    hits = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(nb.indices[::17], full_idx)])
    assert abs(hits - nb.info["recall_vs_exact"]) < 0.05
    assert knn(x[:3000], 10, engine="auto", approx_above=5000).engine == "exact"


@pytest.mark.slow
def test_keops_backend_matches_torch():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(400, 16)).astype(np.float32)
    a = knn(x, 5, engine="exact", backend="keops")
    b = knn(x, 5, engine="exact", backend="torch")
    assert a.info["backend"] == "keops"
    np.testing.assert_array_equal(a.indices, b.indices)   # float64 re-ranking removes tie noise


def test_symmetrise_union_without_self_loops_or_duplicates():
    idx = np.array([[1, 2], [0, 2], [0, 1], [0, 3]])       # row 3 lists itself (dropped)
    val = np.array([[0.9, 0.5], [0.9, 0.4], [0.5, 0.4], [0.1, 1.0]], dtype=np.float32)
    src, dst, w = symmetrise(idx, val)
    pairs = list(zip(src.tolist(), dst.tolist()))
    assert pairs == sorted(set(pairs)) and all(a != b for a, b in pairs)
    assert set(pairs) == {(0, 1), (1, 0), (0, 2), (2, 0), (1, 2), (2, 1), (0, 3), (3, 0)}
    weight = dict(zip(pairs, w.tolist()))
    assert all(weight[(a, b)] == weight[(b, a)] for a, b in pairs)
    assert weight[(0, 3)] == pytest.approx(0.1)


def test_fewer_rows_than_k():
    nb = knn(np.eye(4, dtype=np.float32) + 0.1, 10)
    assert nb.indices.shape == (4, 3) and nb.info["k"] == 3
    assert all(sorted(row) == [j for j in range(4) if j != i] for i, row in enumerate(nb.indices.tolist()))


# --- graph artifact ---------------------------------------------------------------------------

def test_build_graph_small(tmp_path):
    raw = make_dataset(str(tmp_path / "ds"), user_modalities={"text": 12})
    manifest = build_graph(str(tmp_path / "ds"), str(tmp_path / "g"), knn_k=5, user_knn_k=4)
    g = GraphArtifact(str(tmp_path / "g"))
    assert set(g.edge_types) == {"rates", "knn_text", "knn_audio", "uu"}
    assert g.dataset_url == str(tmp_path / "ds")
    assert (g.num_users, g.num_items) == (120, 80)
    assert manifest["knn_k"] == 5 and manifest["user_knn_k"] == 4
    assert manifest["engine"] == {"knn_text": "exact", "knn_audio": "exact", "uu": "exact"}
    assert "recall_vs_exact" not in manifest
    # rates: exactly the training interactions, rating as weight
    train = raw["split"] == SPLITS["train"]
    src, dst, w = g.edges("rates")
    assert src.dtype == np.int64 and w.dtype == np.float32
    expected = dict(zip(zip(raw["user_id"][train].tolist(), raw["item_id"][train].tolist()),
                        raw["rating"][train].tolist()))
    assert dict(zip(zip(src.tolist(), dst.tolist()), w.tolist())) == expected
    rsrc, rdst, rw = g.edges("rated_by")
    np.testing.assert_array_equal(rsrc, dst)
    np.testing.assert_array_equal(rdst, src)
    # knn and uu equal the brute force
    for etype, feats, k in (("knn_text", raw["text"], 5), ("knn_audio", raw["audio"], 5),
                            ("uu", raw["user_text"], 4)):
        s, d, w = g.edges(etype)
        assert manifest["num_edges"][etype] == len(s)
        assert not (s == d).any()
        assert len(edge_set(s, d)) == len(s)
        assert edge_set(s, d) == edge_set(d, s)
        assert np.bincount(s, minlength=len(feats)).min() >= k
        assert_equal_up_to_ties(edge_set(s, d), feats, k)
    # a duplicate row's copies are mutual neighbours with cosine 1
    s, d, w = g.edges("knn_text")
    assert {(3, 11), (3, 40), (11, 40)} <= edge_set(s, d)
    assert w[(s == 3) & (d == 11)][0] == pytest.approx(1.0)


def test_user_modality_selection(tmp_path):
    make_dataset(str(tmp_path / "ds"), user_modalities={"text_profile": 6, "text_clicks": 4})
    with pytest.raises(DataError, match="several user modalities"):
        build_graph(str(tmp_path / "ds"), str(tmp_path / "g1"), knn_k=3)
    m = build_graph(str(tmp_path / "ds"), str(tmp_path / "g2"), knn_k=3, user_modality="text_clicks",
                    modalities=["audio"])
    assert set(m["num_edges"]) == {"rates", "knn_audio", "uu"} and m["user_modality"] == "text_clicks"
    m = build_graph(str(tmp_path / "ds"), str(tmp_path / "g3"), knn_k=3, user_knn_k=0)
    assert "uu" not in m["num_edges"] and m["user_knn_k"] == 0


def test_bad_input(tmp_path, capsys):
    make_dataset(str(tmp_path / "ds"))
    with pytest.raises(DataError, match="unknown item modality 'image'"):
        build_graph(str(tmp_path / "ds"), str(tmp_path / "g"), modalities=["image"])
    with pytest.raises(DataError, match="unknown user modality"):
        build_graph(str(tmp_path / "ds"), str(tmp_path / "g"), user_modality="text")
    with pytest.raises(StorageError, match="no manifest"):
        build_graph(str(tmp_path / "missing"), str(tmp_path / "g"))
    with pytest.raises(DataError, match="engine"):
        build_graph(str(tmp_path / "ds"), str(tmp_path / "g"), engine="annoy")
    assert not (tmp_path / "g" / "manifest.json").exists()
    build_graph(str(tmp_path / "ds"), str(tmp_path / "g"), knn_k=3)
    with pytest.raises(StorageError, match="already exists"):
        build_graph(str(tmp_path / "ds"), str(tmp_path / "g"), knn_k=3)
    capsys.readouterr()
    assert main(["graph", "--data", str(tmp_path / "ds"), "--out", str(tmp_path / "g2"),
                 "--modality", "image"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "'image'" in err[0]
    assert main(["graph", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "g2")]) == 2
    assert "no manifest" in capsys.readouterr().err


# --- lfm2k acceptance -------------------------------------------------------------------------

def test_lfm2k_graph(lfm2k_dataset, tmp_path, capsys):
    out = str(tmp_path / "graph")
    assert main(["graph", "--data", lfm2k_dataset, "--out", out, "--knn-k", "10"]) == 0
    capsys.readouterr()
    assert main(["inspect", out, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["knn_k"] == 10 and set(info["num_edges"]) == {"rates", "knn_text", "knn_audio"}
    assert info["engine"] == {"knn_text": "exact", "knn_audio": "exact"}
    ds, g = Dataset(lfm2k_dataset), GraphArtifact(out)
    for name in ("text", "audio"):
        feats = ds.item_features(name)
        s, d, _ = g.edges(f"knn_{name}")
        assert info["num_edges"][f"knn_{name}"] == len(s)
        assert np.bincount(s, minlength=ds.num_items).min() >= 10
        assert_equal_up_to_ties(edge_set(s, d), feats, 10)
    # rates = the training split; no validation or test interaction enters the graph
    src, dst, _ = g.edges("rates")
    got = edge_set(src, dst)
    assert len(got) == len(src) == ds.splits["train"]
    train = ds.interactions("train")
    assert got == edge_set(train["user_id"], train["item_id"])
    for split in ("valid", "test"):
        held_out = ds.interactions(split)
        assert not got & edge_set(held_out["user_id"], held_out["item_id"])
