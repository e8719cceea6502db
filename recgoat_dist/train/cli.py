"""``recgoat train --config FILE [--set key=value ...] --out URL``."""
from __future__ import annotations

import argparse


def _train(args: argparse.Namespace) -> int:
    from recgoat_dist.config import load_config

    overrides = list(args.set or [])
    if args.resume:
        overrides.append("train.resume=true")
    config = load_config(args.config, overrides)
    from recgoat_dist.eval import print_metrics_table
    from recgoat_dist.pipeline import train

    metrics = train(config, args.out, overwrite=args.overwrite)
    print(print_metrics_table(metrics))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model (single process, or Ray with cluster.num_workers >= 1)")
    p.add_argument("--config", help="YAML config (any fsspec URL); defaults apply to missing keys")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=5 (repeatable)")
    p.add_argument("--out", required=True, help="run URL (local path, file://, s3://)")
    p.add_argument("--resume", action="store_true",
                   help="continue an unfinished run at --out (its last checkpoint; Ray Train's when distributed)")
    p.add_argument("--overwrite", action="store_true", help="replace a published run at --out")
    p.set_defaults(func=_train)
