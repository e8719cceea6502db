"""Step cost of ``sampled`` propagation as the catalog grows: single process, 1 and 2 Ray workers.

Synthetic power-law graphs (users = 2 x items, 5 interactions per user with a popular head, 10
random item neighbours and 5 user neighbours per node, 64-d item and user features) at each size;
RecGOAT (and LightGCN, for the cost of the content streams) trains ``--steps`` steps at global
batch ``--batch``. Every configuration runs in its own process, so each peak RSS is its own:

* ``single``: the local engine on the in-memory heterograph;
* ``dist1`` / ``dist2``: the distributed engine, 1 worker on 1 partition / 2 workers on 2
  partitions (DGL's random partitioner), on a local Ray (127.0.0.1) started here;
* ``dist1gb`` / ``dist2gb``: the same with the graph servers sampling through GraphBolt.

One process runs with PyTorch's huge pages (``THP_MEM_ALLOC_ENABLE=1``) and Ray workers without,
as ``recgoat`` runs them; ``RECGOAT_WORKER_THP=1`` turns them on in the workers.

Reported per run: seconds per step, training edges/s, seeds and input nodes per step (and as a
fraction of each node type), the epoch-start layer-wise inference time (history refresh; not part
of a step), and peak RSS of every process. Results: ``benchmarks/out/step_cost.json``;
``--report`` turns them into the table and plot of ``benchmarks/RESULTS.md``.

    .venv/bin/python benchmarks/step_cost.py                               # 100k..800k items
    .venv/bin/python benchmarks/step_cost.py --items 20000 --steps 10      # smoke run
    .venv/bin/python benchmarks/step_cost.py --report                      # table + plot
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
os.environ.setdefault("DGLBACKEND", "pytorch")
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")        # as `recgoat` sets it (recgoat_dist/cli.py)
OUT = os.path.join(HERE, "step_cost.json")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_graph(items: int, seed: int = 0):
    """The benchmark heterograph (int64 ids, features on the nodes)."""
    import dgl
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    users, per_user = 2 * items, 5
    n = users * per_user
    u = np.repeat(np.arange(users), per_user)
    i = np.minimum((rng.pareto(1.2, n) * items / 50).astype(np.int64), items - 1)    # popular head
    a, b = np.repeat(np.arange(items), 10), rng.integers(0, items, items * 10)
    c, d = np.repeat(np.arange(users), 5), rng.integers(0, users, users * 5)
    g = dgl.heterograph({("user", "rates", "item"): (u, i), ("item", "rated_by", "user"): (i, u),
                         ("item", "knn_text", "item"): (b, a), ("user", "uu", "user"): (d, c)},
                        num_nodes_dict={"user": users, "item": items}, idtype=torch.int64)
    g.nodes["item"].data["text"] = torch.from_numpy(rng.standard_normal((items, 64), dtype=np.float32))
    g.nodes["user"].data["text"] = torch.from_numpy(rng.standard_normal((users, 64), dtype=np.float32))
    return g


def bench_config(model: str, batch: int, steps: int, workers: int, graphbolt: bool = False):
    from recgoat_dist.config import load_config
    return load_config(None, [f"model.name={model}", "train.propagation=sampled", f"train.batch_size={batch}",
                              "train.fanouts=[10]", f"train.max_steps_per_epoch={steps}", "train.epochs=1",
                              "train.progress=false", f"cluster.num_workers={workers}", "cluster.max_failures=0",
                              "graph.knn_k=10", "graph.user_knn_k=5", f"cluster.graphbolt={str(graphbolt).lower()}"])


def run_single(root: str, items: int, model: str, batch: int, steps: int) -> dict:
    import dgl
    import numpy as np
    import torch

    from recgoat_dist.eval import UserItems
    from recgoat_dist.model import build_model
    from recgoat_dist.train.engine import LocalEngine, model_meta
    from recgoat_dist.train.inputs import TrainingInputs, standardise
    from recgoat_dist.train.loop import train_epoch

    (g,), _ = dgl.load_graphs(os.path.join(root, f"graph{items}.bin"))
    u, i = (t.numpy() for t in g.edges(etype="rates"))
    nu, ni = g.num_nodes("user"), g.num_nodes("item")
    train = UserItems.from_pairs(u, i, nu, ni)
    empty = UserItems.from_pairs(np.zeros(0, np.int64), np.zeros(0, np.int64), nu, ni)
    inputs = TrainingInputs(g, nu, ni, train, empty, empty, np.bincount(i, minlength=ni) == 0,
                            {"text": standardise(g.nodes["item"].data["text"])},
                            standardise(g.nodes["user"].data["text"]), "synthetic", "synthetic",
                            {"knn_k": 10, "user_knn_k": 5})
    config = bench_config(model, batch, steps, 0)
    torch.manual_seed(0)
    engine = LocalEngine(config, inputs, build_model(config.model, **model_meta(inputs)),
                         os.path.join(root, "run-single"), np.random.default_rng(0))
    start = time.perf_counter()
    engine.refresh()
    refresh = time.perf_counter() - start
    _, cost = train_epoch(engine, 0)
    return {"step_cost": cost, "refresh_seconds": round(refresh, 2),
            "peak_rss_mb": {"trainer": round(peak_rss_mb())}}


def run_dist(root: str, items: int, model: str, batch: int, steps: int, workers: int, graphbolt: bool) -> dict:
    import ray

    from recgoat_dist.train.distributed import fit

    config = bench_config(model, batch, steps, workers, graphbolt)
    ray.init(num_cpus=workers + 1, include_dashboard=None, dashboard_host="127.0.0.1",
             _node_ip_address="127.0.0.1", _temp_dir=os.path.join(root, f"ray{workers}"),
             runtime_env={"env_vars": {"DGLBACKEND": "pytorch",
                                       # as recgoat runs its workers (driver.ensure_ray): off, unless
                                       # a sweep asks (RESULTS measured both)
                                       "THP_MEM_ALLOC_ENABLE": os.environ.get("RECGOAT_WORKER_THP", "0")}})
    try:
        summary = fit(config, os.path.join(root, f"parts{items}-{workers}", "bench.json"),
                      # one run directory per size: Ray Train resumes from any checkpoint already there
                      os.path.join(root, f"run{items}-dist{workers}-{model}-gb{int(graphbolt)}"), graph_name="bench",
                      knn_fanouts=(10, 5))
    finally:
        ray.shutdown()
    epoch = summary["history"][-1]
    cost = dict(epoch["step_cost"])
    cost["edges_per_second"] *= workers            # DDP keeps the workers in lock-step
    rss = {f"trainer{w['rank']}": round(w["peak_rss_mb"]) for w in summary["workers"]}
    rss |= {f"server{w['partition']}": round(w["server"]["peak_rss_mb"]) for w in summary["workers"]}
    rss["driver"] = round(peak_rss_mb())
    return {"step_cost": cost, "epoch_seconds_incl_refresh": round(epoch["seconds"], 2), "peak_rss_mb": rss}


def child(args) -> int:
    root, items = args.root, args.items[0]
    if args.child == "graph":
        import dgl
        start = time.perf_counter()
        g = make_graph(items)
        dgl.save_graphs(os.path.join(root, f"graph{items}.bin"), [g])
        out = {"build_seconds": round(time.perf_counter() - start, 1),
               "edges": {et: int(g.num_edges(et)) for et in g.etypes}}
        for parts in args.parts:
            start = time.perf_counter()
            dgl.distributed.partition_graph(g, "bench", parts, os.path.join(root, f"parts{items}-{parts}"),
                                            part_method="random")
            out[f"partition{parts}_seconds"] = round(time.perf_counter() - start, 1)
        out["peak_rss_mb"] = round(peak_rss_mb())
    elif args.child == "single":
        out = run_single(root, items, args.model, args.batch, args.steps)
    else:
        # dist1, dist2: DGL's sampler on the servers; dist1gb, dist2gb: GraphBolt's
        out = run_dist(root, items, args.model, args.batch, args.steps, int(args.child[4]),
                       args.child.endswith("gb"))
    print("RESULT " + json.dumps(out), flush=True)
    return 0


def spawn(kind: str, items: int, args, model: str = "recgoat") -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--items", str(items), "--root", args.root,
           "--model", model, "--batch", str(args.batch), "--steps", str(args.steps),
           "--parts", *map(str, args.parts)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{kind} at {items} items failed:\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    print(f"{kind:>6} {model:>8} {items:>8} items: {json.dumps(result)}", flush=True)
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, nargs="+", default=[100_000, 200_000, 400_000, 800_000])
    p.add_argument("--configs", nargs="+", default=["single", "dist1", "dist2", "dist1gb"])
    p.add_argument("--lightgcn-at", type=int, default=200_000, help="also time LightGCN here (single process)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--parts", type=int, nargs="+", default=[1, 2])
    p.add_argument("--out", default=OUT)
    p.add_argument("--report", action="store_true", help="write the table and plot from --out")
    p.add_argument("--append", action="store_true", help="add these runs to those already in --out")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat every (size, config) this many times, interleaved: sizes and configs alternate "
                        "within each round, so drift of the machine's speed hits all of them alike")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("--model", default="recgoat", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    if args.report:
        return report(args.out)
    args.root = tempfile.mkdtemp(prefix="rg-stepcost-", dir="/tmp")
    runs = []
    try:
        if args.rounds == 1:
            for items in args.items:
                graph = spawn("graph", items, args)
                runs += run_round(items, graph, args, None)
                remove_size(args.root, items)       # keep the disk small: each size has its own
        else:
            graphs = {items: spawn("graph", items, args) for items in args.items}
            for round_ in range(args.rounds):
                for items in args.items:
                    runs += run_round(items, graphs[items], args, round_)
    finally:
        shutil.rmtree(args.root, ignore_errors=True)
    if args.append and os.path.exists(args.out):
        with open(args.out) as fh:
            runs = json.load(fh)["runs"] + runs
    result = {"batch": args.batch, "steps": args.steps, "rounds": args.rounds, "fanouts": [10], "cpus": os.cpu_count(),
              "thp_mem_alloc": os.environ.get("THP_MEM_ALLOC_ENABLE"),
              "thp_mem_alloc_workers": os.environ.get("RECGOAT_WORKER_THP", "0"),
              "omp_threads": os.environ.get("OMP_NUM_THREADS"), "platform": platform.platform(), "runs": runs}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    return report(args.out)


def run_round(items: int, graph: dict, args, round_) -> list:
    """Every config of ``args`` once at ``items`` (and LightGCN where asked), each its own process."""
    runs = []
    tag = {} if round_ is None else {"round": round_}
    for kind in args.configs:
        runs.append({"items": items, "users": 2 * items, "config": kind, "model": "recgoat", **tag,
                     "graph": graph, **spawn(kind, items, args)})
    if items == args.lightgcn_at:
        runs.append({"items": items, "users": 2 * items, "config": "single", "model": "lightgcn", **tag,
                     "graph": graph, **spawn("single", items, args, model="lightgcn")})
    for name in os.listdir(args.root):       # a run directory would resume from its checkpoint
        if name.startswith(f"run{items}-"):
            shutil.rmtree(os.path.join(args.root, name))
    return runs


def remove_size(root: str, items: int) -> None:
    for name in os.listdir(root):
        path = os.path.join(root, name)
        if name == f"graph{items}.bin":
            os.remove(path)
        elif name.startswith(f"parts{items}-"):
            shutil.rmtree(path)


def runs_by_setting(runs: list) -> dict:
    """Runs grouped by (items, config, model), for the medians over interleaved rounds."""
    groups = {}
    for r in runs:
        groups.setdefault((r["items"], r["config"], r["model"]), []).append(r)
    return groups


def report(path: str) -> int:
    """Markdown table, and the plot of seconds per step against catalog size beside ``path`` (.png)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(path) as fh:
        data = json.load(fh)
    rows = ["| items | users | config | model | s/step | CPU s/step | edges/s | seeds/step | input users/step (frac) | "
            "input items/step (frac) | refresh s | peak RSS MB |", "|" + "---|" * 12]
    for r in data["runs"]:
        c = r["step_cost"]
        inputs = c["input_nodes_per_step"]
        rss = ", ".join(f"{k} {v}" for k, v in r["peak_rss_mb"].items())
        rows.append(f"| {r['items']:,} | {r['users']:,} | {r['config']} | {r['model']} | {c['seconds_per_step']:.3f} | "
                    f"{c.get('cpu_seconds_per_step', float('nan')):.3f} | "
                    f"{c['edges_per_second']:,.0f} | {c['seeds_per_step']:,.0f} | {inputs['user']:,.0f} "
                    f"({inputs['user'] / r['users']:.3%}) | {inputs['item']:,.0f} ({inputs['item'] / r['items']:.3%}) | "
                    f"{r.get('refresh_seconds', r.get('epoch_seconds_incl_refresh', ''))} | {rss} |")
    medians = runs_by_setting(data["runs"])
    if any(len(v) > 1 for v in medians.values()):
        rows += ["", "| items | config | model | rounds | median s/step | median edges/s | s/step of each round |",
                 "|" + "---|" * 7]
        for (items, kind, model), group in sorted(medians.items()):
            secs = [r["step_cost"]["seconds_per_step"] for r in group]
            rate = statistics.median(r["step_cost"]["edges_per_second"] for r in group)
            rows.append(f"| {items:,} | {kind} | {model} | {len(group)} | {statistics.median(secs):.3f} | "
                        f"{rate:,.0f} | {', '.join(f'{x:.3f}' for x in secs)} |")
    print("\n".join(rows))
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind in sorted({r["config"] for r in data["runs"]}):
        pts = sorted((items, statistics.median(r["step_cost"]["seconds_per_step"] for r in group))
                     for (items, k, model), group in medians.items() if k == kind and model == "recgoat")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=kind)
    ax.set_xscale("log")
    ax.set_xlabel("items (users = 2x)")
    ax.set_ylabel("seconds per step (batch %d)" % data["batch"])
    ax.set_ylim(bottom=0)
    ax.legend()
    ax.set_title("RecGOAT sampled step cost vs catalog size")
    fig.tight_layout()
    fig.savefig(os.path.splitext(path)[0] + ".png", dpi=120)      # step_cost.json -> step_cost.png
    return 0


if __name__ == "__main__":
    sys.exit(main())
