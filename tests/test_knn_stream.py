"""The streamed FAISS KNN graph: equal to the exact graph when every cell is probed, bucketing does
not change it, recall recorded in the graph manifest (items and users), PQ under a memory cap, s3://."""
from __future__ import annotations

import numpy as np

from recgoat_dist.graph import GraphArtifact, build_graph
from recgoat_dist.graph.knn_stream import index_spec, stream_knn
from test_graph import assert_equal_up_to_ties, edge_set


def clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(30, d)) * 2.0
    x = centres[rng.integers(0, 30, n)] + rng.normal(size=(n, d))
    x[5] = x[17]                               # duplicate rows tie exactly
    return x.astype(np.float32)


def run(x: np.ndarray, k: int, **kw):
    got = []
    info = stream_knn(lambda: iter(np.array_split(x, 7)), len(x), x.shape[1], k,
                      lambda s, d, w: got.append((s, d, w)), **kw)
    return info, tuple(np.concatenate(c) for c in zip(*got))


def test_probing_every_cell_gives_the_exact_graph_and_buckets_do_not_matter():
    x = clustered(2500, 16)
    info, (src, dst, w) = run(x, 6, target_recall=1.01, tune_sample=200, recall_sample=300)
    assert info["nprobe"] == info["nlist"] and info["recall_vs_exact"] == 1.0
    assert_equal_up_to_ties(edge_set(src, dst), x, 6, tol=1e-6)
    order = np.lexsort((dst, src))
    assert (order == np.arange(len(src))).all() and not (src == dst).any()
    pairs = dict(zip(zip(src.tolist(), dst.tolist()), w.tolist()))
    assert all(pairs[(b, a)] == wt for (a, b), wt in pairs.items())      # symmetric, one weight
    info3, again = run(x, 6, target_recall=1.01, tune_sample=200, recall_sample=300, bucket_edges=12_000)
    assert info3["buckets"] >= 2
    for a, b in zip((src, dst, w), again):
        np.testing.assert_array_equal(a, b)


def test_recall_target_and_pq_under_a_memory_cap():
    x = clustered(6000, 32, seed=1)
    info, _ = run(x, 10, target_recall=0.9, tune_sample=400, recall_sample=1000)
    assert info["index"].endswith(",Flat") and info["recall_vs_exact"] >= 0.85
    assert info["recall_sample"] == 1000 and info["nprobe"] < info["nlist"]
    spec, size = index_spec(10_000_000, 64, 12_649, index_memory_gb=1.0)
    assert spec == "IVF12649_HNSW32,PQ16x8" and size == 160_000_000
    assert index_spec(10_000_000, 64, 12_649, index_memory_gb=4.0)[0] == "IVF12649_HNSW32,Flat"
    # 4-bit codes: 256-centroid PQ training is slow on a shared 2-core machine, and not the point
    info_pq, _ = run(x, 10, target_recall=0.8, tune_sample=400, recall_sample=500, index_memory_gb=0.0005,
                     pq_bits=4)
    assert "PQ" in info_pq["index"] and 0 < info_pq["recall_vs_exact"] <= 1


def test_build_graph_streams_items_and_users_on_s3(s3_url):
    from recgoat_dist.data.synthetic import generate_synthetic

    data = f"{s3_url}/data"
    generate_synthetic(data, users=2500, items=3000, seed=2, topics=16, interactions_per_user=5,
                       modalities=("text",), chunk_users=1000, item_chunk=1024)
    manifest = build_graph(data, f"{s3_url}/graph", knn_k=10, user_knn_k=5, engine="auto",
                           approx_above=1000, target_recall=0.95, recall_sample=600)
    assert manifest["engine"] == {"knn_text": "faiss", "uu": "faiss"}
    assert manifest["recall_vs_exact"]["knn_text"] >= 0.9 and manifest["recall_vs_exact"]["uu"] >= 0.9
    assert manifest["knn"]["uu"]["recall_sample"] == 600 and manifest["knn"]["uu"]["k"] == 5
    graph = GraphArtifact(f"{s3_url}/graph")
    src, dst, _ = graph.edges("knn_text")
    assert len(src) == manifest["num_edges"]["knn_text"] and src.max() < 3000
    assert np.bincount(src, minlength=3000).min() >= 10


def test_cells_have_a_constant_size_and_the_hnsw_quantizer_keeps_recall(monkeypatch):
    """nlist grows with n (a query's scan does not); above HNSW_ABOVE cells the coarse quantizer
    and k-means assignment are HNSW, probed with efSearch >= 2 nprobe; nprobe steps 1, 2, 3, 4, 6, ..."""
    import faiss

    from recgoat_dist.graph import knn_stream
    from recgoat_dist.graph.ivf import set_nprobe

    assert knn_stream.stream_nlist(10_000_000) == 10_000_000 // knn_stream.CELL_ROWS
    assert knn_stream.stream_nlist(100 * knn_stream.CELL_ROWS) == 100
    monkeypatch.setattr(knn_stream, "HNSW_ABOVE", 16)
    x = clustered(6000, 32, seed=3)
    info, _ = run(x, 10, target_recall=0.9, tune_sample=400, recall_sample=800, nlist=60)
    assert info["index"] == "IVF60_HNSW32,Flat" and info["recall_vs_exact"] >= 0.88
    steps = [int(p) for p in info["tuning_recall"]]
    assert steps == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48][:len(steps)] and steps[-1] == info["nprobe"]
    index = faiss.index_factory(8, "IVF40_HNSW32,Flat", faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    set_nprobe(ivf, 48)
    assert ivf.nprobe == 48 and faiss.downcast_index(ivf.quantizer).hnsw.efSearch == 96
