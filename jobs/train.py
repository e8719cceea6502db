"""Ray job entrypoint: training (distributed when ``cluster.num_workers >= 1``).

    ray job submit --working-dir . -- python jobs/train.py --config configs/demo.yaml \
        [--set key=value ...] --out URL

Inside a Ray job ``RAY_ADDRESS`` is set, so training joins the cluster that runs the job. When the
configuration names no dataset, graph or partitions (the demo), they are created under
``<out>/inputs`` first (synthetic dataset -> graph) and the trainer partitions the graph on the fly;
artifacts that already exist there are reused.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jobs/train.py", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="YAML config (path relative to the working dir, or any URL)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--out", required=True, help="run URL (local path, file://, s3://)")
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("DGLBACKEND", "pytorch")
    args = build_parser().parse_args(argv)
    from recgoat_dist.cli import setup_logging
    from recgoat_dist.config import load_config
    from recgoat_dist.eval import print_metrics_table
    from recgoat_dist.pipeline import ensure_inputs, train
    from recgoat_dist.storage import join

    setup_logging()
    config = load_config(args.config, args.set)
    if not (config.data.partitions or config.data.graph or config.data.dataset):
        config = ensure_inputs(config, join(args.out, "inputs"))
    metrics = train(config, join(args.out, "run"))
    print(print_metrics_table(metrics))
    print(f"run written to {join(args.out, 'run')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
