"""``recgoat graph`` and ``recgoat partition``.

Flags mirror the ``graph`` section of the configuration (``--config FILE``, ``--set graph.knn_k=20``);
an explicit flag wins over the configuration.
"""
from __future__ import annotations

import argparse
import json
import posixpath


def _config(args: argparse.Namespace):
    from recgoat_dist.config import load_config

    return load_config(args.config, args.set)


def _graph(args: argparse.Namespace) -> None:
    from recgoat_dist.graph.build import build_graph

    cfg = _config(args)
    data = args.data or cfg.data.dataset
    out = args.out or cfg.data.graph
    if not data or not out:
        raise ValueError("recgoat graph needs --data URL and --out URL (or data.dataset / data.graph)")
    manifest = build_graph(
        data, out,
        knn_k=cfg.graph.knn_k if args.knn_k is None else args.knn_k,
        user_knn_k=cfg.graph.user_knn_k if args.user_knn_k is None else args.user_knn_k,
        modalities=args.modality, user_modality=args.user_modality,
        engine=args.engine or cfg.graph.engine,
        approx_above=cfg.graph.approx_above if args.approx_above is None else args.approx_above,
        target_recall=args.target_recall, seed=args.seed, overwrite=args.overwrite,
        index_memory_gb=cfg.graph.knn_index_memory_gb)
    keys = ("num_edges", "knn_k", "user_knn_k", "engine", "recall_vs_exact")
    print(json.dumps({"graph": out, **{k: manifest[k] for k in keys if k in manifest}}, indent=2))


def _partition(args: argparse.Namespace) -> None:
    from recgoat_dist.graph.partition import partition_graph_artifact

    cfg = _config(args)
    graph = args.graph or cfg.data.graph
    if not graph:
        raise ValueError("recgoat partition needs --graph URL (or data.graph)")
    method = args.method or cfg.graph.partition_method
    out = args.out or cfg.data.partitions or posixpath.join(
        "partitions", f"{posixpath.basename(graph.rstrip('/')) or 'graph'}-{method}-{args.parts}")
    budget = cfg.graph.partition_memory_gb if args.memory_budget_gb is None else args.memory_budget_gb
    manifest = partition_graph_artifact(graph, out, args.parts, method, graph_name=args.graph_name,
                                        seed=args.seed, overwrite=args.overwrite, memory_budget_gb=budget)
    keys = ("num_parts", "method", "dgl_config", "edge_cut", "parts")
    print(json.dumps({"partitions": out, **{k: manifest[k] for k in keys}}, indent=2))


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML configuration (any URL)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing artifact at --out")


def register(subparsers) -> None:
    p = subparsers.add_parser("graph", help="build user-item, item-item KNN and user-user graphs")
    p.add_argument("--data", help="dataset URL")
    p.add_argument("--out", help="graph URL to write")
    p.add_argument("--knn-k", type=int, help="neighbours per item and modality (default 10)")
    p.add_argument("--user-knn-k", type=int, help="neighbours per user; 0 = no user graph (default 10)")
    p.add_argument("--modality", action="append", help="item modality to build (repeatable; default all)")
    p.add_argument("--user-modality", help="user modality for uu (default 'text' or the only one)")
    p.add_argument("--engine", choices=["auto", "exact", "faiss"], help="KNN engine (default auto)")
    p.add_argument("--approx-above", type=int, help="auto uses FAISS above this many rows (default 200000)")
    p.add_argument("--target-recall", type=float, default=0.95, help="FAISS nprobe tuning target")
    _common(p)
    p.set_defaults(func=_graph)

    p = subparsers.add_parser("partition", help="partition a graph for DistDGL")
    p.add_argument("--graph", help="graph URL")
    p.add_argument("--parts", type=int, required=True, help="number of parts")
    p.add_argument("--method", choices=["metis", "random"], help="default metis")
    p.add_argument("--out", help="partitions URL (default partitions/<graph>-<method>-<parts>)")
    p.add_argument("--graph-name", default="recgoat", help="DGL graph name (config <name>.json)")
    p.add_argument("--memory-budget-gb", type=float,
                   help="metis is refused when its estimated memory exceeds this (default 70%% of RAM)")
    _common(p)
    p.set_defaults(func=_partition)
