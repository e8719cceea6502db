"""Graph stage at scale: time and peak RSS of the KNN graph (approximate engine) and of partitioning.

Default scale (the issue's): 1M items x 64-d clustered features, 2M users, 20M power-law
interactions, K = 10, 4 METIS parts. Each stage runs in its own child process, which reports its
own peak RSS (``getrusage``), so the figures are per stage. Writes ``benchmarks/out/graph_scale.json``.

    nice -n 10 .venv/bin/python benchmarks/graph_scale.py                 # full scale
    .venv/bin/python benchmarks/graph_scale.py --scale 0.01 --out /tmp/x.json   # smoke run

The synthetic dataset is generated here with ``DatasetWriter`` (random clustered item features,
Zipf item popularity, log-normal user activity, random 80/10/10 split), not with the product's
generator.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20      # KiB on Linux


def make_dataset(url: str, items: int, users: int, interactions: int, dim: int, seed: int) -> dict:
    import numpy as np
    import pyarrow as pa

    from recgoat_dist.data.dataset import DatasetWriter

    rng = np.random.default_rng(seed)
    # Power-law interactions: Zipf(1.1)-like item popularity, log-normal user activity.
    item_w = 1.0 / np.arange(1, items + 1) ** 0.9
    item_w = item_w[rng.permutation(items)]
    item_cdf = np.cumsum(item_w / item_w.sum())
    user_w = rng.lognormal(0.0, 1.0, users)
    user_cdf = np.cumsum(user_w / user_w.sum())
    keys = np.zeros(0, np.int64)
    while len(keys) < interactions:
        m = int((interactions - len(keys)) * 1.1) + 1000
        u = np.searchsorted(user_cdf, rng.random(m), side="right").clip(0, users - 1)
        i = np.searchsorted(item_cdf, rng.random(m), side="right").clip(0, items - 1)
        keys = np.unique(np.concatenate([keys, u.astype(np.int64) * items + i]))
    keys = rng.permutation(keys)[:interactions]
    chunk = 2_000_000
    centres = rng.normal(size=(max(1, items // 1000), dim)) * 2.0
    with DatasetWriter(url, users, items, source="graph_scale synthetic") as w:
        for s in range(0, interactions, chunk):
            k = keys[s:s + chunk]
            w.add_interactions(pa.table({
                "user_id": k // items, "item_id": k % items,
                "rating": np.ones(len(k), np.float32),
                "split": rng.choice(3, size=len(k), p=[0.8, 0.1, 0.1]).astype(np.int8)}))
        del keys
        for s in range(0, items, 1 << 18):
            n = min(items, s + (1 << 18)) - s
            cluster = rng.integers(0, len(centres), n)
            w.add_features("item", "text", s, (centres[cluster] + rng.normal(size=(n, dim))).astype(np.float32))
        manifest = w.commit({"generator": "benchmarks/graph_scale.py"})
    return {"splits": manifest["splits"], "num_interactions": manifest["num_interactions"]}


class RssMonitor:
    """Samples this process's RSS: a coarse timeline for the report, and an optional guard that
    stops the process before it endangers a shared machine (exit code 3)."""

    def __init__(self, limit_gb: float | None, every: float = 0.25):
        import threading

        import psutil
        self.proc, self.limit, self.every = psutil.Process(), limit_gb, every
        self.start, self.trace = time.perf_counter(), []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        last = -1e9
        while True:
            rss = self.proc.memory_info().rss / 2**30
            now = time.perf_counter() - self.start
            if now - last >= 5:
                self.trace.append((round(now, 1), round(rss, 2)))
                last = now
            if self.limit and rss > self.limit:
                print(f"[graph_scale] RSS {rss:.1f} GB exceeds --rss-limit-gb {self.limit}; stopping",
                      file=sys.stderr, flush=True)
                os._exit(3)
            time.sleep(self.every)


def stage(args) -> dict:
    """Run one stage in this process and return its figures."""
    os.environ.setdefault("DGLBACKEND", "pytorch")
    import logging
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("recgoat_dist.graph.partition").setLevel(logging.DEBUG)   # DGL's step timings
    monitor = RssMonitor(args.rss_limit_gb)
    start = time.perf_counter()
    if args.stage == "data":
        out = make_dataset(args.dataset, args.items, args.users, args.interactions, args.dim, args.seed)
    elif args.stage == "graph":
        from recgoat_dist.graph import build_graph
        m = build_graph(args.dataset, args.graph, knn_k=args.k, user_knn_k=0, engine="faiss",
                        target_recall=args.target_recall)
        knn = m["knn"]["knn_text"]
        out = {"num_edges": m["num_edges"], "engine": m["engine"], "recall_vs_exact": m["recall_vs_exact"],
               "knn_seconds": knn["seconds"], "knn": knn}
    else:
        from recgoat_dist.graph import partition_graph_artifact
        m = partition_graph_artifact(args.graph, args.partitions, args.parts, args.method,
                                     tmp_dir=args.workdir)
        out = {"edge_cut": m["edge_cut"], "edge_cut_by_etype": m["edge_cut_by_etype"], "parts": m["parts"],
               "num_edges": m["num_edges"], "stage_seconds": m["seconds"]}
    out["seconds"] = round(time.perf_counter() - start, 1)
    out["peak_rss_gb"] = round(_peak_rss_gb(), 3)
    out["rss_timeline_gb"] = monitor.trace
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=float, default=1.0, help="multiplies items, users, interactions")
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=2_000_000)
    p.add_argument("--interactions", type=int, default=20_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--parts", type=int, default=4)
    p.add_argument("--method", default="metis")
    p.add_argument("--target-recall", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", help="where the artifacts go (default: a temporary directory, removed)")
    p.add_argument("--keep", action="store_true", help="keep the workdir")
    p.add_argument("--stages", default="data,graph,partition")
    p.add_argument("--out", default=os.path.join(HERE, "out", "graph_scale.json"))
    p.add_argument("--rss-limit-gb", type=float, help="stop a stage whose RSS exceeds this (shared machines)")
    p.add_argument("--stage", help=argparse.SUPPRESS)          # internal: run one stage, print JSON
    p.add_argument("--dataset", help=argparse.SUPPRESS)
    p.add_argument("--graph", help=argparse.SUPPRESS)
    p.add_argument("--partitions", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.stage:
        print(json.dumps(stage(args)))
        return 0

    items, users = int(args.items * args.scale), int(args.users * args.scale)
    interactions = int(args.interactions * args.scale)
    workdir = args.workdir or tempfile.mkdtemp(prefix="recgoat-graph-scale-")
    paths = {"dataset": os.path.join(workdir, "dataset"), "graph": os.path.join(workdir, "graph"),
             "partitions": os.path.join(workdir, "partitions")}
    result = {
        "config": {"items": items, "users": users, "interactions": interactions, "dim": args.dim,
                   "k": args.k, "parts": args.parts, "method": args.method,
                   "target_recall": args.target_recall},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_avg_at_start": os.getloadavg(),
                    "mem_total_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
        "stages": {},
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    try:
        for name in args.stages.split(","):
            cmd = [sys.executable, os.path.abspath(__file__), "--stage", name, "--items", str(items),
                   "--users", str(users), "--interactions", str(interactions), "--dim", str(args.dim),
                   "--k", str(args.k), "--parts", str(args.parts), "--method", args.method,
                   "--target-recall", str(args.target_recall), "--seed", str(args.seed),
                   "--workdir", workdir, "--dataset", paths["dataset"], "--graph", paths["graph"],
                   "--partitions", paths["partitions"]]
            if args.rss_limit_gb:
                cmd += ["--rss-limit-gb", str(args.rss_limit_gb)]
            print(f"[graph_scale] stage {name} ...", file=sys.stderr, flush=True)
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
            if proc.returncode != 0:
                result["stages"][name] = {"error": f"exit code {proc.returncode}"
                                          + (" (RSS limit)" if proc.returncode == 3 else "")}
                break
            result["stages"][name] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"[graph_scale] {name}: {result['stages'][name]['seconds']} s, peak RSS "
                  f"{result['stages'][name]['peak_rss_gb']} GB", file=sys.stderr, flush=True)
            with open(args.out, "w") as fh:                   # partial results survive a crash
                json.dump(result, fh, indent=2)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    g, part = result["stages"].get("graph", {}), result["stages"].get("partition", {})
    result["goals"] = {
        "knn_under_20_min": g.get("knn_seconds", 1e9) < 1200 if g else None,
        "graph_stage_under_20_min": g.get("seconds", 1e9) < 1200 if g else None,
        "recall_at_least_0.9": g.get("recall_vs_exact", {}).get("knn_text", 0) >= 0.9 if g else None,
        "partition_peak_rss_under_16_gb": part.get("peak_rss_gb", 1e9) < 16 if part else None,
    }
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(json.dumps(result["goals"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
