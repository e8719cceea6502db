"""``recgoat export --run URL --out URL [--top-k 100]``; ranking keys in the ``export`` config
section (``--set export.ann_above=0`` forces the ANN index)."""
from __future__ import annotations

import argparse


def _export(args: argparse.Namespace) -> None:
    from recgoat_dist.config import load_config
    from recgoat_dist.export.recommendations import export_run

    cfg = load_config(args.config, args.set).export
    export_run(args.run, args.out, top_k=args.top_k, checkpoint=args.checkpoint, overwrite=args.overwrite,
               engine=args.engine or cfg.ranking, ann_above=cfg.ann_above,
               target_recall=cfg.ann_target_recall, recall_users=cfg.ann_recall_users)


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="embeddings and top-K recommendations by original ids")
    p.add_argument("--run", required=True, help="run URL written by recgoat train")
    p.add_argument("--out", required=True, help="export URL")
    p.add_argument("--top-k", type=int, default=100)
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--engine", choices=["auto", "exact", "ann"], help="ranking engine (default export.ranking)")
    p.add_argument("--config", help="YAML configuration (any URL)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_export)
