"""A catalog end to end at growing sizes: generation, KNN graph, partitioning, training, ANN export.

For each size N (items = users = N, 5 interactions per user, one 64-d text modality plus user LM
features) the stages run one after another, each in its own child process, on a storage root
(local path, ``file://`` or ``s3://``):

* ``generate``  ``recgoat prepare synthetic`` (:func:`generate_synthetic`, streaming);
* ``graph``     ``recgoat graph`` with the streaming FAISS engine forced (knn_text and uu, k = 10);
* ``partition`` ``recgoat partition --method random`` (streaming), 2 parts;
* ``train``     30 steps of RecGOAT in ``sampled`` mode, one Ray worker per partition
  (:func:`train_sampled`), evaluation on a 10,000-user sample (``train.eval_users``);
* ``export``    ANN ranking (top-20, the constant-cell FAISS IVF of :mod:`recgoat_dist.graph.ivf`,
  nprobe tuned to recall 0.95 on 1,000 users, ann_recall@20 measured on 2,000 others) of the
  trained run's embeddings; without a published run, of stand-in embeddings: the users' LM
  features against the items' text features, which the generator places in one space;
* ``export_lm`` the stand-in export always (a model trained for 30 steps is near its
  initialisation: its rankings say little about the ANN index on real embeddings).

Per stage: wall time, peak RSS of the stage process and of its children (``getrusage``), bytes
on storage (the artifact's manifest). Results go to ``--json`` after every stage, so a rerun with
the same arguments skips what is done (resumable stage by stage; ``--redo STAGE`` forces one).
From the sizes, the growth exponent ``b`` of ``time ~ N^b`` is fitted per stage (least squares in
log-log); ``--report`` writes the table and the plot.

    nice -n 10 .venv/bin/python benchmarks/catalog_scale.py                       # 1M, 3M, 10M
    nice -n 10 .venv/bin/python benchmarks/catalog_scale.py --sizes 50000 100000 200000 \\
        --root /tmp/catalog --json benchmarks/out/catalog_scale_small.json --report
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
STAGES = ("generate", "graph", "partition", "train", "export", "export_lm")
TRAIN_STEPS = 30             # steps of the training stage (one epoch capped by train.max_steps_per_epoch)
EVAL_USERS = 10_000          # train.eval_users: full ranking of every user is N x N (hours at 10^6)
ANN_TARGET_RECALL = 0.95     # the ann_recall@20 goal; nprobe's half steps overshoot it (0.97 at 1M)


def urls(root: str, n: int) -> dict:
    base = f"{root.rstrip('/')}/n{n}"
    return {s: f"{base}/{s}" for s in ("data", "graph", "partitions", "run", "export", "export_lm")}


def artifact_bytes(url: str) -> int:
    from recgoat_dist.storage import Artifact

    art = Artifact(url)
    return int(sum(f["bytes"] for f in art.manifest["files"].values()))


def train_config(partitions_url: str, parts: int, steps: int, eval_users: int):
    """RecGOAT, sampled, one epoch of ``steps`` steps at global batch 2,048 (fanout 10, as
    ``benchmarks/step_cost.py``), one worker per partition; evaluation on ``eval_users`` users."""
    from recgoat_dist.config import load_config

    return load_config(None, ["model.name=recgoat", "train.propagation=sampled", "train.batch_size=2048",
                              "train.fanouts=[10]", f"train.max_steps_per_epoch={steps}", "train.epochs=1",
                              "train.progress=false", f"train.eval_users={eval_users}",
                              f"cluster.num_workers={parts}", "cluster.max_failures=0",
                              f"data.partitions={partitions_url}"])


def train_sampled(partitions_url: str, out_url: str, parts: int, steps: int, eval_users: int,
                  ray_dir: str) -> dict:
    """``steps`` steps of RecGOAT in ``sampled`` mode with one Ray worker per partition (a local
    Ray on 127.0.0.1 started here), through ``recgoat train``'s own path (:func:`pipeline.train`):
    step time, training edges/s, input nodes per step, the epoch (which includes the epoch-start
    history refresh and the evaluation on ``eval_users`` users) and the peak RSS of every trainer
    and graph server. The run, with its final embeddings, is published at ``out_url``."""
    import ray

    from recgoat_dist.pipeline import train

    config = train_config(partitions_url, parts, steps, eval_users)
    ray.init(num_cpus=parts + 1, include_dashboard=None, dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1",
             _temp_dir=ray_dir, runtime_env={"env_vars": {"DGLBACKEND": "pytorch", "THP_MEM_ALLOC_ENABLE": "0",
                                                          "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}})
    try:
        start = time.perf_counter()
        m = train(config, out_url, overwrite=True)
        seconds = time.perf_counter() - start
    finally:
        ray.shutdown()
    rss = {f"trainer{w['rank']}": round(w["peak_rss_mb"]) for w in m["workers"]}
    rss |= {f"server{w['partition']}": round(w["server"]["peak_rss_mb"]) for w in m["workers"]}
    return {"url": out_url, "step_cost": m["step_cost"], "seconds_train_call": round(seconds, 2),
            "epoch_seconds": m["seconds_per_epoch"], "valid": m.get("valid"), "test": m.get("test"),
            "eval_users": eval_users, "peak_rss_mb": rss,
            "peak_rss_workers_gb": round(max(rss.values()) / 1024, 3)}


def run_stage(stage: str, n: int, root: str, parts: int, seed: int, local_dir: str,
              knn_recall: float = 0.95) -> dict:
    """One stage, in this (child) process; returns its own figures."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    u = urls(root, n)
    out: dict = {}
    if stage == "generate":
        from recgoat_dist.data.synthetic import generate_synthetic

        m = generate_synthetic(u["data"], users=n, items=n, seed=seed, interactions_per_user=5,
                               topics=max(32, n // 20_000), modalities=("text",), overwrite=True)
        out = {"num_interactions": m["num_interactions"], "splits": m["splits"], "url": u["data"]}
    elif stage == "graph":
        from recgoat_dist.graph import build_graph

        m = build_graph(u["data"], u["graph"], knn_k=10, user_knn_k=10, engine="faiss", seed=seed,
                        target_recall=knn_recall, recall_sample=2000, overwrite=True)
        out = {"num_edges": m["num_edges"], "recall_vs_exact": m["recall_vs_exact"], "target_recall": knn_recall,
               "knn": {et: {k: v for k, v in d.items() if k != "tuning_recall"} for et, d in m["knn"].items()}}
    elif stage == "partition":
        from recgoat_dist.graph import partition_graph_artifact

        m = partition_graph_artifact(u["graph"], u["partitions"], parts, "random", seed=seed, overwrite=True)
        out = {"edge_cut": m["edge_cut"], "num_edges": m["num_edges"], "parts": m["parts"],
               "stage_seconds": m["seconds"]}
    elif stage == "train":
        out = train_sampled(u["partitions"], u["run"], parts, TRAIN_STEPS, EVAL_USERS,
                            os.path.join(local_dir, f"ray-n{n}"))
    elif stage == "export":
        from recgoat_dist.storage import published

        out = trained_export(u["run"], u["export"], seed) if published(u["run"], "run") else \
            stand_in_export(u["data"], u["export"], seed)
    elif stage == "export_lm":
        out = stand_in_export(u["data"], u["export_lm"], seed)
    if "url" not in out:
        out["url"] = u[{"generate": "data", "graph": "graph", "partition": "partitions", "export": "export",
                        "export_lm": "export_lm"}[stage]]
    return out


def trained_export(run_url: str, out_url: str, seed: int) -> dict:
    """ANN export (top-20) of the trained run's own embeddings (``<run>/embeddings``)."""
    from recgoat_dist.data.dataset import Dataset
    from recgoat_dist.export.recommendations import export_run

    m = export_run(run_url, out_url, top_k=20, overwrite=True, engine="ann", recall_users=2000,
                   target_recall=ANN_TARGET_RECALL)
    ranking = m["ranking"]
    return {"model": "trained run", "run": run_url, "ranking": ranking, "ann_recall@20": ranking["ann_recall@20"],
            "projected_exact_seconds": ranking["seconds_per_user_exact"] * Dataset(m["dataset"]).num_users}


def stand_in_export(data_url: str, out_url: str, seed: int) -> dict:
    """ANN export of the users' LM features against the items' text features (see module doc)."""
    import numpy as np
    import torch

    from recgoat_dist.data.dataset import Dataset
    from recgoat_dist.eval.metrics import UserItems
    from recgoat_dist.export.recommendations import write_embeddings, write_recommendations
    from recgoat_dist.storage import ArtifactWriter

    ds = Dataset(data_url)
    user = torch.from_numpy(ds.user_features("text"))
    item = torch.from_numpy(ds.item_features("text"))
    train = ds.interactions("train")
    pairs = UserItems.from_pairs(train["user_id"], train["item_id"], ds.num_users, ds.num_items)
    del train
    user_ids, item_ids = ds.original_ids("user"), ds.original_ids("item")
    with ArtifactWriter(out_url, kind="export", overwrite=True) as writer:
        write_embeddings(writer, user_ids, item_ids, user.numpy(), item.numpy(), np.zeros(ds.num_items, bool))
        ranking = write_recommendations(writer, user, item, pairs, user_ids, item_ids, 20, engine="ann",
                                        recall_users=2000, seed=seed, target_recall=ANN_TARGET_RECALL)
        writer.commit({"dataset": data_url, "model": "stand-in (LM features)", "num_users": ds.num_users,
                       "num_items": ds.num_items, "top_k": 20, "ranking": ranking,
                       "ann_recall@20": ranking["ann_recall@20"]})
    return {"model": "stand-in (LM features)", "ranking": ranking, "ann_recall@20": ranking["ann_recall@20"],
            "projected_exact_seconds": ranking["seconds_per_user_exact"] * ds.num_users}


def child_main(args) -> int:
    start = time.perf_counter()
    out = run_stage(args.child, args.size, args.root, args.parts, args.seed, args.local_dir, args.knn_recall)
    out["seconds_in_process"] = round(time.perf_counter() - start, 2)
    me = resource.getrusage(resource.RUSAGE_SELF)
    # CPU time of this process (user + system): on a shared machine less noisy than wall time
    out["cpu_seconds"] = round(me.ru_utime + me.ru_stime, 2)
    out["peak_rss_gb"] = round(me.ru_maxrss / 2 ** 20, 3)
    out["peak_rss_children_gb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2 ** 20, 3)
    print("RESULT " + json.dumps(out), flush=True)
    return 0


def spawn(stage: str, n: int, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", stage, "--size", str(n), "--root", args.root,
           "--parts", str(args.parts), "--seed", str(args.seed), "--local-dir", args.local_dir,
           "--knn-recall", str(args.knn_recall)]
    start = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": REPO})
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"stage {stage} at {n} failed (exit {done.returncode}); see its log above")
    result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
    result["wall_seconds"] = round(wall, 2)
    if "url" in result:
        result["storage_bytes"] = artifact_bytes(result["url"])
    return result


def fit_exponent(sizes, values) -> float | None:
    """Least-squares slope of log(value) against log(size)."""
    pts = [(math.log(s), math.log(v)) for s, v in zip(sizes, values) if v and v > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return round(sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx, 3) if sxx else None


def summarise(results: dict) -> dict:
    sizes = sorted(int(n) for n in results["runs"])
    fits = {}
    for stage in STAGES:
        have = [n for n in sizes if stage in results["runs"][str(n)] and "skipped" not in results["runs"][str(n)][stage]]
        if len(have) >= 2:
            runs = [results["runs"][str(n)][stage] for n in have]
            fits[stage] = {"sizes": have,
                           "time_exponent": fit_exponent(have, [r["wall_seconds"] for r in runs]),
                           "rss_exponent": fit_exponent(have, [r["peak_rss_gb"] for r in runs]),
                           "bytes_exponent": fit_exponent(have, [r.get("storage_bytes", 0) for r in runs])}
            if stage == "train":        # the bounded step: its own exponent, and the workers' RSS
                fits[stage]["step_exponent"] = fit_exponent(have, [r["step_cost"]["seconds_per_step"] for r in runs])
                fits[stage]["rss_exponent"] = fit_exponent(have, [r["peak_rss_workers_gb"] for r in runs])
    results["growth"] = fits
    return results


def report(results: dict, json_path: str) -> str:
    """Markdown table (returned) and a log-log plot next to the JSON."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = ["| items = users | stage | wall s | peak RSS GB (stage / children; train: largest worker) | storage MB | "
             "notes (load: 5-min load average after the stage) |",
             "|---|---|---|---|---|---|"]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for stage in STAGES:
        xs, ts, rs = [], [], []
        for n in sorted(int(k) for k in results["runs"]):
            r = results["runs"][str(n)].get(stage)
            if r is None:
                continue
            if "skipped" in r:
                lines.append(f"| {n:,} | {stage} | – | – | – | skipped: {r['skipped']} |")
                continue
            note = ""
            if stage == "graph":
                note = "recall@10 vs exact " + ", ".join(f"{k} {v}" for k, v in r["recall_vs_exact"].items())
            elif stage == "partition":
                note = f"edge cut {r['edge_cut']:,} of {sum(r['num_edges'].values()):,}"
            elif stage in ("export", "export_lm"):
                rk = r["ranking"]
                note = (f"ann_recall@20 {r['ann_recall@20']}, nprobe {rk['nprobe']}/{rk['nlist']} "
                        f"({rk.get('index_type', 'IVF').split(' ')[0]}), {rk['speedup_vs_exact']}x exact per user")
                note += f" ({r.get('model', 'stand-in')})"
            elif stage == "generate":
                note = f"{r['num_interactions']:,} interactions"
            elif stage == "train":
                c = r["step_cost"]
                rss_mb = ", ".join(f"{k} {v}" for k, v in r["peak_rss_mb"].items())
                note = (f"{c['steps']} steps: {c['seconds_per_step']:.3f} s/step, {c['edges_per_second']:,.0f} "
                        f"edges/s; epoch {r['epoch_seconds']:.0f} s; RSS MB {rss_mb}")
            load = r.get("load_average_after")
            note += f"; load {load[1]:.1f}" if load else ""
            rss = r["peak_rss_workers_gb"] if stage == "train" else r["peak_rss_children_gb"]
            lines.append(f"| {n:,} | {stage} | {r['wall_seconds']:.1f} | {r['peak_rss_gb']:.2f} / "
                         f"{rss:.2f} | {r.get('storage_bytes', 0) / 1e6:.1f} | {note} |")
            xs.append(n), ts.append(r["wall_seconds"]), rs.append(max(r["peak_rss_gb"], rss))
        if xs:
            ax[0].loglog(xs, ts, "o-", label=stage)
            ax[1].loglog(xs, rs, "o-", label=stage)
    ax[0].set(xlabel="items (= users)", ylabel="wall time (s)", title="time per stage")
    ax[1].set(xlabel="items (= users)", ylabel="peak RSS (GB)", title="peak RSS per stage")
    ax[0].legend(fontsize=8)
    fig.tight_layout()
    png = os.path.splitext(json_path)[0] + ".png"
    fig.savefig(png, dpi=110)
    growth = ["", "| stage | sizes | time exponent | RSS exponent | storage exponent |", "|---|---|---|---|---|"]
    for stage, g in results.get("growth", {}).items():
        step = f" (s/step: {g['step_exponent']})" if "step_exponent" in g else ""
        growth.append(f"| {stage} | {', '.join(f'{s:,}' for s in g['sizes'])} | {g['time_exponent']}{step} | "
                      f"{g['rss_exponent']} | {g['bytes_exponent']} |")
    return "\n".join(lines + growth) + f"\n\nPlot: `{os.path.relpath(png, REPO)}`\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 3_000_000, 10_000_000])
    p.add_argument("--root", default=os.path.join(HERE, "out", "catalog_scale"), help="storage root URL")
    p.add_argument("--json", default=os.path.join(HERE, "out", "catalog_scale.json"))
    p.add_argument("--parts", type=int, default=2)
    p.add_argument("--local-dir", default="/tmp/catalog_scale", help="local scratch (Ray's temp dir)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--knn-recall", type=float, default=0.95,
                   help="the KNN stage's nprobe target (recgoat graph --target-recall); the issue's goal is 0.9")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument("--redo", nargs="*", default=[], choices=STAGES, help="run these stages again")
    p.add_argument("--report", action="store_true", help="print the markdown table, write the plot")
    p.add_argument("--child", choices=STAGES, help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child_main(args)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    results = {"runs": {}}
    if os.path.exists(args.json):
        with open(args.json) as fh:
            results = json.load(fh)
    results.update({"root": args.root, "parts": args.parts, "seed": args.seed,
                    "machine": {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()}})
    for n in args.sizes:
        run = results["runs"].setdefault(str(n), {})
        for stage in args.stages:
            if stage in run and stage not in args.redo:
                print(f"[catalog_scale] {n:,}: {stage} done before, skipped", file=sys.stderr)
                continue
            print(f"[catalog_scale] {n:,}: {stage} ...", file=sys.stderr, flush=True)
            run[stage] = spawn(stage, n, args)
            run[stage]["load_average_after"] = os.getloadavg()
            with open(args.json, "w") as fh:
                json.dump(summarise(results), fh, indent=2)
            print(f"[catalog_scale] {n:,}: {stage} {run[stage]['wall_seconds']:.1f} s, peak RSS "
                  f"{run[stage]['peak_rss_gb']:.2f} GB", file=sys.stderr, flush=True)
    results = summarise(results)
    with open(args.json, "w") as fh:
        json.dump(results, fh, indent=2)
    if args.report:
        print(report(results, args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
