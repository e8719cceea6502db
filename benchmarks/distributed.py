"""Distributed training throughput and memory: 1 vs 2 Ray Train workers (DistDGL) on one host.

A synthetic heterograph at the issue's scale (default 400k users x 200k items; 5 interactions per
user, 10 random item-item and 5 user-user neighbours, 64-d item and user features) is split by
DGL (random method) into 1 and 2 partitions; RecGOAT trains a fixed number of steps per worker
(global batch ``--batch``) with 1 worker on 1 partition and 2 workers on 2 partitions, on a local
Ray started here (127.0.0.1, own temp dir). Reported per run: training edges/s per worker and in
total, seconds per step, and the peak RSS of every process (trainers and graph servers).

This measures the distributed machinery (sampling through the servers, sparse updates, DDP), not
accuracy: the neighbour lists are random, not KNN. Writes ``benchmarks/out/distributed.json``.

    .venv/bin/python benchmarks/distributed.py                          # issue scale
    .venv/bin/python benchmarks/distributed.py --scale 0.05 --steps 10  # smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
os.environ.setdefault("DGLBACKEND", "pytorch")


def make_partitions(root: str, users: int, items: int, per_user: int, parts_list, seed: int = 0) -> dict:
    import dgl
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    n = users * per_user
    u = np.repeat(np.arange(users), per_user)
    i = np.minimum((rng.pareto(1.2, n) * items / 50).astype(np.int64), items - 1)   # popular head
    a, b = np.repeat(np.arange(items), 10), rng.integers(0, items, items * 10)
    c, d = np.repeat(np.arange(users), 5), rng.integers(0, users, users * 5)
    g = dgl.heterograph({("user", "rates", "item"): (u, i), ("item", "rated_by", "user"): (i, u),
                         ("item", "knn_text", "item"): (a, b), ("user", "uu", "user"): (c, d)},
                        num_nodes_dict={"user": users, "item": items})
    g.nodes["item"].data["text"] = torch.from_numpy(rng.standard_normal((items, 64), dtype=np.float32))
    g.nodes["user"].data["text"] = torch.from_numpy(rng.standard_normal((users, 64), dtype=np.float32))
    out = {}
    for parts in parts_list:
        start = time.perf_counter()
        directory = os.path.join(root, f"parts{parts}")
        dgl.distributed.partition_graph(g, "bench", parts, directory, part_method="random")
        out[parts] = {"config": os.path.join(directory, "bench.json"),
                      "seconds": round(time.perf_counter() - start, 1)}
    out["edges"] = {et: int(g.num_edges(et)) for et in g.etypes}
    return out


def run(parts: dict, workers: int, steps: int, batch: int, root: str) -> dict:
    from recgoat_dist.config import load_config
    from recgoat_dist.train.distributed import fit

    config = load_config(None, [f"cluster.num_workers={workers}", "train.epochs=1", f"train.batch_size={batch}",
                                "cluster.fanouts=[10, 10, 10]", "model.name=recgoat", "cluster.max_failures=0"])
    start = time.perf_counter()
    summary = fit(config, parts[workers]["config"], os.path.join(root, f"run{workers}"), graph_name="bench",
                  max_steps=steps)
    wall = time.perf_counter() - start
    epoch = summary["history"][-1]
    per_worker = [w for w in summary["workers"]]
    train_seconds = epoch["train_seconds"]
    return {
        "workers": workers, "steps_per_worker": epoch["steps"], "global_batch": batch,
        "edges_per_worker": epoch["edges"], "train_seconds": round(train_seconds, 2),
        "seconds_per_step": round(train_seconds / max(1, epoch["steps"]), 3),
        "edges_per_second_per_worker": round(epoch["edges"] / train_seconds, 1),
        # every worker trains the same number of steps of the same size in lock-step (DDP)
        "edges_per_second_total": round(workers * epoch["edges"] / train_seconds, 1),
        "peak_rss_mb": {f"trainer{w['rank']}": round(w["peak_rss_mb"]) for w in per_worker}
        | {f"server{w['partition']}": round(w["server"]["peak_rss_mb"]) for w in per_worker},
        "dense_params_in_sync": summary["dense_params_in_sync"],
        "wall_seconds_incl_startup": round(wall, 1),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=float, default=1.0, help="fraction of 400k users x 200k items")
    p.add_argument("--steps", type=int, default=30, help="training steps per worker")
    p.add_argument("--batch", type=int, default=2048, help="global batch (split over the workers)")
    p.add_argument("--out", default=os.path.join(HERE, "out", "distributed.json"))
    args = p.parse_args()
    import ray

    users, items = int(400_000 * args.scale), int(200_000 * args.scale)
    root = tempfile.mkdtemp(prefix="rgbench-", dir="/tmp")
    try:
        t0 = time.perf_counter()
        parts = make_partitions(root, users, items, 5, (1, 2))
        build = time.perf_counter() - t0
        ray.init(num_cpus=3, include_dashboard=None, dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1",
                 _temp_dir=os.path.join(root, "ray"), runtime_env={"env_vars": {"DGLBACKEND": "pytorch"}})
        try:
            runs = [run(parts, w, args.steps, args.batch, root) for w in (1, 2)]
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = {"users": users, "items": items, "edges": parts["edges"], "graph_and_partition_seconds": round(build, 1),
              "partition_seconds": {k: v["seconds"] for k, v in parts.items() if k != "edges"},
              "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
              "cpus": os.cpu_count(), "platform": platform.platform(), "runs": runs}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
