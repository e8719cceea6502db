"""``recgoat export --run URL --out URL [--top-k 100]``."""
from __future__ import annotations

import argparse


def _export(args: argparse.Namespace) -> None:
    from recgoat_dist.export.recommendations import export_run

    export_run(args.run, args.out, top_k=args.top_k, checkpoint=args.checkpoint, overwrite=args.overwrite)


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="embeddings and top-K recommendations by original ids")
    p.add_argument("--run", required=True, help="run URL written by recgoat train")
    p.add_argument("--out", required=True, help="export URL")
    p.add_argument("--top-k", type=int, default=100)
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_export)
