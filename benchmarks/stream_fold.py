"""A content stream's forward + backward on one sampled KNN hop, with and without the fold of the
GAT's source transform into the projection (``recgoat_dist/model/streams.py``).

The hop has the shape of a 200k-item ``step_cost.py`` step: 4,600 destination items (a batch's
positives, negatives and landmarks), 10 neighbours each, 40,000 source rows, 64-d features.
``unfolded`` projects every source the stream uses (``used_relations``) and runs DGL's ``GATConv``; ``folded`` is ``FeatureStream``
as trained. Rounds alternate the two; results: ``benchmarks/stream_fold.json``.

    OMP_NUM_THREADS=2 THP_MEM_ALLOC_ENABLE=1 .venv/bin/python benchmarks/stream_fold.py
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
os.environ.setdefault("DGLBACKEND", "pytorch")


def sampled_hop(n_dst: int = 4600, k: int = 10, n_src: int = 40000):
    """``(block, x, stream, rel, used)``: one sampled KNN hop of a 200k-item step's shape, its
    features, an item stream, and the sub-block (and its source positions) the stream runs on."""
    import dgl
    import torch

    from recgoat_dist.model.streams import FeatureStream, used_relations

    src = torch.cat([torch.arange(n_dst), torch.randint(n_dst, n_src, (n_dst * (k - 1),))])
    dst = torch.cat([torch.arange(n_dst), torch.arange(n_dst).repeat(k - 1)])
    block = dgl.create_block({("item", "knn_text", "item"): (src[torch.randperm(len(src))], dst)},
                             num_src_nodes={"item": n_src}, num_dst_nodes={"item": n_dst})
    x = torch.randn(n_src, 64)
    stream = FeatureStream(64, 64, "knn_text", "item", gat_layers=1, heads=2)
    (rel,), used = used_relations([block["knn_text"]])      # the stream's own sub-block, as it runs
    return block, x, stream, rel, used


def forward_backward_ms(fn, reps: int) -> float:
    """Milliseconds of ``fn()`` forward plus the backward of a scalar of it, after 3 warm-ups."""
    for _ in range(3):
        fn().square().sum().backward()
    start = time.perf_counter()
    for _ in range(reps):
        fn().square().sum().backward()
    return (time.perf_counter() - start) / reps * 1e3


def main(rounds: int = 5, reps: int = 20) -> dict:
    import torch

    torch.manual_seed(0)
    block, x, stream, rel, used = sampled_hop()
    n_dst = rel.num_dst_nodes()

    def unfolded():
        h = stream.project(x[used])
        return h[:n_dst] + stream.gats[0](rel, (h, h[:n_dst])).flatten(1)

    def folded():
        return stream([block], x)

    assert torch.allclose(unfolded(), folded(), atol=1e-4)

    times = {"unfolded": [], "folded": []}
    for r in range(rounds):
        for name, fn in (("unfolded", unfolded), ("folded", folded)):
            times[name].append(round(forward_backward_ms(fn, reps), 2))
        print(r, {n: t[-1] for n, t in times.items()}, flush=True)
    med = {n: statistics.median(t) for n, t in times.items()}
    return {"used_sources": len(used), "ms_forward_backward": times, "median_ms": med, "folded_over_unfolded": round(med["folded"] / med["unfolded"], 3),
            "shape": {"destinations": n_dst, "block_sources": block.num_src_nodes(), "edges": int(block.num_edges()), "dim": 64},
            "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
            "thp": os.environ.get("THP_MEM_ALLOC_ENABLE", "0")}


if __name__ == "__main__":
    result = main()
    print(json.dumps(result["median_ms"]), "ratio", result["folded_over_unfolded"])
    with open(os.path.join(HERE, "stream_fold.json"), "w") as f:
        json.dump(result, f, indent=1)
