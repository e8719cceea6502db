"""The end-to-end pipeline on the embedded default: ``recgoat demo`` and ``jobs/train.py``.

:func:`ensure_inputs` fills in whatever the configuration leaves unset, reusing artifacts that
already exist under a work directory: the synthetic dataset (``data.dataset``), then its graph
(``data.graph``). Partitions are the distributed trainer's business (it partitions ``data.graph``
on the fly when ``data.partitions`` is unset).
"""
from __future__ import annotations

import argparse
import copy
import logging
import time
from typing import Callable, Optional

from recgoat_dist.config import Config, load_config
from recgoat_dist.storage import absolute, join, published

logger = logging.getLogger(__name__)


def ensure_inputs(config: Config, workdir: str) -> Config:
    """A copy of ``config`` whose ``data.dataset`` and ``data.graph`` point at published artifacts."""
    config = copy.deepcopy(config)
    data = config.data
    if not data.dataset:
        data.dataset = join(workdir, "data")
        if published(data.dataset, "dataset"):
            logger.info("reusing dataset at %s", data.dataset)
        else:
            from recgoat_dist.data.synthetic import generate_synthetic
            start = time.perf_counter()
            generate_synthetic(data.dataset, users=data.synthetic_users, items=data.synthetic_items,
                               seed=data.synthetic_seed, overwrite=True)
            logger.info("synthetic dataset (%d users x %d items) in %.1f s", data.synthetic_users,
                        data.synthetic_items, time.perf_counter() - start)
    if not data.graph and not data.partitions:
        data.graph = join(workdir, "graph")
        if published(data.graph, "graph"):
            logger.info("reusing graph at %s", data.graph)
        else:
            from recgoat_dist.graph import build_graph
            start = time.perf_counter()
            build_graph(data.dataset, data.graph, knn_k=config.graph.knn_k,
                        user_knn_k=config.graph.user_knn_k, engine=config.graph.engine,
                        approx_above=config.graph.approx_above, overwrite=True)
            logger.info("graph built in %.1f s", time.perf_counter() - start)
    return config


def train(config: Config, out: str, *, overwrite: bool = False, warm_start: Optional[dict] = None,
          on_epoch: Optional[Callable[[int, Optional[dict]], None]] = None) -> dict:
    """Train single-process or on Ray, by ``cluster.num_workers``; returns the run's metrics.

    The trainer's public entry point: the same loop either way, on the local or the distributed
    engine. ``warm_start``: ``{"model": state_dict}`` of a model built for this run's dataset sizes
    (dataset ids; the distributed engine maps rows to its partitions). ``on_epoch(epoch, valid)``:
    called after each epoch (one process only: distributed epochs are reported through Ray Train).
    """
    if config.cluster.num_workers >= 1:
        if on_epoch is not None:
            raise ValueError("on_epoch runs in the training process: use it with cluster.num_workers=0 "
                             "(distributed runs report every epoch to Ray Train)")
        from recgoat_dist.train.distributed import run_distributed
        return run_distributed(config, out, overwrite=overwrite, warm_start=warm_start)
    from recgoat_dist.train.single import train_single
    return train_single(config, out, overwrite=overwrite, warm_start=warm_start, on_epoch=on_epoch)


def _demo(args: argparse.Namespace) -> int:
    if args.which == "nightly":
        from recgoat_dist.nightly.demo import demo_nightly
        return demo_nightly(args)
    from recgoat_dist.eval import print_metrics_table
    from recgoat_dist.inspect import summary

    args.out = absolute(args.out)       # artifacts record each other's locations
    config = ensure_inputs(load_config(args.config, args.set), join(args.out, "inputs"))
    info = summary(config.data.dataset)
    print(f"dataset: {info['num_users']} users, {info['num_items']} items, {info['num_interactions']} "
          f"interactions {info['splits']}, modalities {sorted(info['modalities'])}")
    run_url = join(args.out, "run")
    if published(run_url, "run"):
        raise ValueError(f"{run_url}: a finished demo run exists; remove {args.out} or pass another --out")
    metrics = train(config, run_url)
    print(print_metrics_table(metrics))
    print(f"run written to {run_url} (metrics.json, report.png, config.yaml)")
    from recgoat_dist.export.recommendations import export_run
    export_url = join(args.out, "export")       # derived from this run: replaces an older demo's
    manifest = export_run(run_url, export_url, top_k=20, overwrite=True)
    print(f"export written to {export_url}: embeddings of {manifest['num_users']} users and "
          f"{manifest['num_items']} items, top {manifest['top_k']} items per user")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="the whole pipeline on the embedded synthetic default")
    p.add_argument("which", nargs="?", choices=("pipeline", "nightly"), default="pipeline",
                   help="pipeline (default), or nightly: init, 3 nights, a bad day, a rollback")
    p.add_argument("--config", help="YAML config (e.g. configs/demo.yaml)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--out", required=True, help="work directory (inputs/ and run/ go below it)")
    p.set_defaults(func=_demo)
