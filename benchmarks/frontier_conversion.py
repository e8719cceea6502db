"""DGL 2.1's frontier conversion against ``train/distributed/frontier.py``, one sampled hop of a
training step on the step-cost graph, in one process (A/B interleaved, so both see the same load).

The graph is ``benchmarks/step_cost.py``'s (users = 2 x items, 5 interactions per user, 10 item and
5 user neighbours per node), on one partition read in DGL's standalone mode. Each repetition draws a
step's seeds (2,048 users, 2,048 positives, 2,048 negatives, deduplicated) and samples their
neighbours as a step does (fanout 10 on ``rates``/``rated_by``, 10 on ``knn_text``, 5 on ``uu``),
once with DGL's conversion and once with ours, alternating which goes first.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/frontier_conversion.py --items 200000
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from benchmarks.standalone import one_partition_graph  # noqa: E402 - sets DGL's mode before DGL loads


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=200_000)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--out", default=os.path.join(HERE, "frontier_conversion.json"))
    args = p.parse_args()

    import dgl
    import numpy as np
    import torch
    from dgl.distributed import graph_services

    from benchmarks.step_cost import make_graph
    from recgoat_dist.train.distributed import frontier

    dg, _ = one_partition_graph(make_graph(args.items), "rg-frontier-")
    fanout = {et: (5 if et[1] == "uu" else 10) for et in dg.canonical_etypes}
    rng = np.random.default_rng(0)
    assert frontier.install()
    ours, theirs = frontier.frontier_to_heterograph, frontier._original
    times: dict = {"dgl": [], "ours": []}
    edges = []
    for rep in range(args.reps + 2):
        seeds = {"user": torch.from_numpy(np.unique(rng.integers(0, dg.num_nodes("user"), 2048))),
                 "item": torch.from_numpy(np.unique(rng.integers(0, dg.num_nodes("item"), 4096)))}
        order = (("dgl", theirs), ("ours", ours)) if rep % 2 else (("ours", ours), ("dgl", theirs))
        for name, fn in order:
            graph_services._frontier_to_heterogeneous_graph = fn
            dgl.seed(rep)
            start = time.perf_counter()
            sampled = dg.sample_neighbors(seeds, fanout)
            if rep >= 2:                      # two warm-up repetitions
                times[name].append(time.perf_counter() - start)
        edges.append(sampled.num_edges())
    result = {"items": args.items, "reps": args.reps, "threads": torch.get_num_threads(),
              "load_average": os.getloadavg()[0], "edges_per_sample": int(statistics.mean(edges)),
              "seconds_dgl": statistics.median(times["dgl"]), "seconds_ours": statistics.median(times["ours"])}
    result["ours_over_dgl"] = result["seconds_ours"] / result["seconds_dgl"]
    print(json.dumps(result, indent=1))
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
