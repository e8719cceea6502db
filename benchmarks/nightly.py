"""Nightly warm start against a full retrain from scratch, night by night, in one process.

On the synthetic timeline (:mod:`recgoat_dist.data.timeline`): the base version is trained from
scratch (``train.epochs``) and promoted; then for each night the registry's warm-started run
(``nightly.epochs`` epochs from the champion, :func:`recgoat_dist.nightly.night.run_night`) is
compared with a run trained from scratch for ``train.epochs`` on the *same* version dataset and
graph. Reported per night and model:

* time: the training call (wall and this process's CPU seconds; the warm start is timed on its
  own), and the whole night (ingest, graph, warm start, training, export, gate) against the full
  retrain's training call. On a shared machine the CPU-second ratio is the one to read;
* next-day Recall@20: the next day's interactions of known users and items, every item of the
  version ranked, everything the version holds for the user excluded;
* on the date's gate holdout: new-item Recall@20 (items released that day) vs warm-item Recall@20.

With ``--lightgcn`` the first night is repeated with ``model.name=lightgcn`` (ID only: a new item's
row is never trained from content, so its new-item recall shows what content buys).
Writes ``benchmarks/out/nightly.json``.

    nice -n 10 .venv/bin/python benchmarks/nightly.py            # 3 nights, 400 users x 300 items
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
os.environ.setdefault("DGLBACKEND", "pytorch")


def next_day_recall(export_url: str, dataset_url: str, next_delta: str) -> dict:
    """Recall@20 on the next day's (known user, known item) pairs; the version's pairs excluded."""
    import numpy as np
    import pyarrow.parquet as pq

    from recgoat_dist.data.dataset import Dataset
    from recgoat_dist.eval import UserItems, evaluate_ranking
    from recgoat_dist.nightly.gate import _align, export_vectors
    from recgoat_dist.storage import filesystem, join

    ds = Dataset(dataset_url)
    index = {k: {str(v): i for i, v in enumerate(ds.original_ids(k))} for k in ("user", "item")}
    everything = ds.interactions()
    seen = UserItems.from_pairs(everything["user_id"], everything["item_id"], ds.num_users, ds.num_items)
    fs, path = filesystem(join(next_delta, "interactions.parquet"))
    with fs.open(path, "rb") as fh:
        table = pq.read_table(fh, columns=["user_id", "item_id"])
    u = np.array([index["user"].get(x, -1) for x in table["user_id"].to_pylist()])
    i = np.array([index["item"].get(x, -1) for x in table["item_id"].to_pylist()])
    keep = (u >= 0) & (i >= 0)
    keep &= ~seen.contains(np.maximum(u, 0), np.maximum(i, 0))
    heldout = UserItems.from_pairs(u[keep], i[keep], ds.num_users, ds.num_items)
    vectors = export_vectors(export_url)
    users, _ = _align(*vectors["user"], index["user"], ds.num_users)
    items, _ = _align(*vectors["item"], index["item"], ds.num_items)
    result = evaluate_ranking(users, items, seen, heldout, [20])
    return {"recall@20": round(result["recall@20"], 4), "num_users": result["num_users"], "pairs": int(keep.sum())}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=os.path.join(os.path.dirname(HERE), "configs", "nightly.yaml"))
    p.add_argument("--nights", type=int, default=3)
    p.add_argument("--users", type=int, default=400)
    p.add_argument("--items", type=int, default=300)
    p.add_argument("--lightgcn", action="store_true", help="also night 1 with model.name=lightgcn")
    p.add_argument("--work", default=None, help="work directory (default: a temporary one)")
    p.add_argument("--out", default=os.path.join(HERE, "out", "nightly.json"))
    args = p.parse_args()

    from recgoat_dist.cli import setup_logging
    from recgoat_dist.config import load_config
    from recgoat_dist.data.timeline import generate_timeline
    from recgoat_dist.export.recommendations import export_run
    from recgoat_dist.nightly.gate import score
    from recgoat_dist.nightly.night import _train_config, init_registry, run_night
    from recgoat_dist.nightly.registry import Registry
    from recgoat_dist.pipeline import train
    from recgoat_dist.storage import join

    setup_logging()
    logging.getLogger("recgoat_dist.train.single").setLevel(logging.WARNING)
    work = args.work or tempfile.mkdtemp(prefix="recgoat-nightly-bench-")
    tl = generate_timeline(join(work, "timeline"), users=args.users, items=args.items, days=args.nights + 1)
    results = {"config": args.config, "users": args.users, "items": args.items, "nights": [], "lightgcn": None}

    def one_model(name: str, nights: int) -> list[dict]:
        registry = join(work, f"registry-{name}")
        config = load_config(args.config, [f"nightly.registry={registry}", f"nightly.delta={tl['delta']}",
                                           f"model.name={name}", "nightly.gate.min_recall=0"])
        start = time.perf_counter()
        init_registry(config, tl["base"], "2024-01-01")
        base_seconds = time.perf_counter() - start
        rows = []
        for night, date in enumerate(tl["dates"][:nights]):
            start, cpu = time.perf_counter(), time.process_time()
            outcome = run_night(config, date)
            night_seconds, night_cpu = time.perf_counter() - start, time.process_time() - cpu
            version = Registry(registry).version(date)
            parts = version["parts"]
            warm_gate = version["metrics"]
            next_delta = tl["delta"].replace("{date}", tl["dates"][night + 1])
            full_run, full_export = join(work, f"full-{name}-{date}", "run"), join(work, f"full-{name}-{date}", "export")
            cfg = _train_config(config, parts["dataset"], parts["graph"], config.train.epochs)
            start, cpu = time.perf_counter(), time.process_time()
            train(cfg, full_run)
            full_seconds, full_cpu = time.perf_counter() - start, time.process_time() - cpu
            export_run(full_run, full_export, top_k=20, overwrite=True)
            full_gate = score(parts["dataset"], full_export, None)["candidate"]
            row = {
                "model": name, "date": date, "decision": outcome.decision,
                "nightly_epochs": config.nightly.epochs, "full_epochs": config.train.epochs,
                "nightly_train_seconds": version["train_seconds"],
                "nightly_warm_start_seconds": version["warm_start"].get("seconds"),
                "nightly_total_seconds": round(night_seconds, 2),
                "full_train_seconds": round(full_seconds, 2),
                "nightly_train_cpu_seconds": version["train_cpu_seconds"],
                "nightly_total_cpu_seconds": round(night_cpu, 2),
                "full_train_cpu_seconds": round(full_cpu, 2),
                "nightly_next_day": next_day_recall(parts["export"], parts["dataset"], next_delta),
                "full_next_day": next_day_recall(full_export, parts["dataset"], next_delta),
                "nightly_new_items_recall@20": warm_gate.get("new_items_recall@20"),
                "nightly_warm_items_recall@20": warm_gate.get("warm_items_recall@20"),
                "full_new_items_recall@20": (full_gate.get("new_items") or {}).get("recall@20"),
                "full_warm_items_recall@20": (full_gate.get("warm_items") or {}).get("recall@20"),
                "new_items": version["new_items"], "new_users": version["new_users"],
            }
            row["time_ratio"] = round((row["nightly_train_seconds"] + (row["nightly_warm_start_seconds"] or 0))
                                      / row["full_train_seconds"], 3)
            # CPU seconds of this process: wall time on a machine shared with other jobs is noise.
            row["cpu_ratio"] = round(row["nightly_train_cpu_seconds"] / row["full_train_cpu_seconds"], 3)
            row["night_cpu_ratio"] = round(row["nightly_total_cpu_seconds"] / row["full_train_cpu_seconds"], 3)
            row["next_day_ratio"] = (round(row["nightly_next_day"]["recall@20"] / row["full_next_day"]["recall@20"], 3)
                                     if row["full_next_day"]["recall@20"] else None)
            warm = row["nightly_warm_items_recall@20"]
            row["new_over_warm"] = (round(row["nightly_new_items_recall@20"] / warm, 3)
                                    if warm and row["nightly_new_items_recall@20"] is not None else None)
            print(json.dumps(row), flush=True)
            rows.append(row)
        return rows, base_seconds

    results["nights"], results["base_seconds"] = one_model("recgoat", args.nights)
    if args.lightgcn:
        results["lightgcn"], _ = one_model("lightgcn", 1)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
