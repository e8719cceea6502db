"""Single-process epoch time of RecGOAT against LightGCN as the catalog grows (synthetic data).

The lfm2k table compares RecGOAT's epoch with LightGCN's on a tiny graph. This asks how the
ratio moves at catalog scale: for each size, the synthetic generator (text + visual item
features, user LM features, 20 interactions per user) and the graph step build the inputs, then
one process times interleaved epochs, with one torch thread, of `lightgcn_mmrec` (MMRec's
setting: batch 2048), `lightgcn_tuned` (LightGCN with configs/lfm2k.yaml's training setting) and
`recgoat` (configs/lfm2k.yaml). ``recgoat_over_lightgcn_tuned`` is the cost of the content streams
and transport at equal batch size.
Writes ``benchmarks/out/epoch_time.json``.

    .venv/bin/python benchmarks/epoch_time.py                      # sizes 2k, 20k, 100k users
    .venv/bin/python benchmarks/epoch_time.py --users 2000 --epochs 2
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
os.environ.setdefault("DGLBACKEND", "pytorch")


def time_epochs(data: str, graph: str, epochs: int) -> dict[str, float]:
    """Median seconds per training epoch of LightGCN (MMRec's setting and lfm2k.yaml's) and RecGOAT."""
    from recgoat_dist.config import load_config

    settings = {"lightgcn_mmrec": ["model.name=lightgcn", "train.batch_size=2048", "train.lr=0.001"],
                "lightgcn_tuned": ["model.name=lightgcn"], "recgoat": ["model.name=recgoat"]}
    config_file = os.path.join(os.path.dirname(HERE), "configs", "lfm2k.yaml")
    return time_interleaved({name: load_config(config_file, [f"data.graph={graph}", f"data.dataset={data}", *sets])
                             for name, sets in settings.items()}, epochs)


def time_interleaved(configs: dict, epochs: int) -> dict[str, float]:
    """Median seconds of one training epoch per named config, measured in this process.

    Epochs alternate between the configs (after one warm-up round), so machine load affects all of
    them alike.
    """
    import numpy as np
    import torch

    from recgoat_dist.model import build_model
    from recgoat_dist.train.engine import LocalEngine, model_meta
    from recgoat_dist.train.inputs import load_inputs
    from recgoat_dist.train.loop import train_epoch

    setups, times = {}, {}
    for name, config in configs.items():
        torch.manual_seed(0)
        inputs = load_inputs(config)
        model = build_model(config.model, **model_meta(inputs))
        setups[name] = LocalEngine(config, inputs, model, tempfile.mkdtemp(prefix="rg-epoch-run-"),
                                   np.random.default_rng(0))
        setups[name].show_progress = False
        times[name] = []
    for r in range(epochs + 1):                     # round 0 warms up
        for name, engine in setups.items():
            start = time.perf_counter()
            train_epoch(engine, r)
            if r:
                times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, nargs="+", default=[2000, 20000, 100000])
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per setting (after one warm-up)")
    p.add_argument("--out", default=os.path.join(HERE, "out", "epoch_time.json"))
    args = p.parse_args()
    import torch

    from recgoat_dist.data.synthetic import generate_synthetic
    from recgoat_dist.graph import build_graph

    torch.set_num_threads(1)
    logging.getLogger("recgoat_dist.ot.sinkhorn").setLevel(logging.WARNING)
    results = []
    for users in args.users:
        items = max(1500, users * 3 // 4)
        root = tempfile.mkdtemp(prefix="rg-epoch-", dir="/tmp")
        try:
            data, graph = os.path.join(root, "data"), os.path.join(root, "graph")
            generate_synthetic(data, users=users, items=items, seed=0)
            manifest = build_graph(data, graph)
            t = time_epochs(data, graph, args.epochs)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        row = {"users": users, "items": items, "train_interactions": manifest["num_edges"]["rates"],
               "seconds_per_epoch": {k: round(v, 3) for k, v in t.items()},
               "recgoat_over_lightgcn_mmrec": round(t["recgoat"] / t["lightgcn_mmrec"], 2),
               "recgoat_over_lightgcn_tuned": round(t["recgoat"] / t["lightgcn_tuned"], 2)}
        print(json.dumps(row), flush=True)
        results.append(row)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"threads": 1, "epochs": args.epochs, "runs": results}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
