"""``recgoat tune --config FILE --space FILE --trials N --out URL``."""
from __future__ import annotations

import argparse


def _tune(args: argparse.Namespace) -> int:
    from recgoat_dist.config import load_config
    from recgoat_dist.storage import Artifact, absolute, join
    from recgoat_dist.tune.runner import run_tune
    from recgoat_dist.tune.space import load_space, set_scheduler

    config = load_config(args.config, args.set)
    space = load_space(args.space, config)
    if args.scheduler:
        space.scheduler = set_scheduler(args.scheduler, "--scheduler")
    out = absolute(args.out)
    manifest = run_tune(config, space, args.trials, out, num_cpus=args.num_cpus,
                        cpus_per_trial=args.cpus_per_trial, max_concurrent=args.max_concurrent,
                        seed=args.seed, overwrite=args.overwrite)
    best = manifest["best"]
    print(Artifact(out, kind="tune").read_bytes("trials.md").decode())
    print(f"best: trial {best['trial']}, valid {config.train.valid_metric} {best['valid_score']:.4f}, "
          f"{best['params']}")
    print(f"best config: {join(out, 'best.yaml')} (recgoat train --config {join(out, 'best.yaml')} --out RUN)")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("tune", help="hyper-parameter search on Ray Tune (validation only)")
    p.add_argument("--config", help="base YAML config (needs data.graph); defaults apply to missing keys")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a base config key")
    p.add_argument("--space", required=True, help="YAML search space (see docs/tune.md)")
    p.add_argument("--trials", type=int, required=True, help="number of trials (a multiple of the grid size)")
    p.add_argument("--out", required=True, help="output URL: best.yaml, trials.parquet/.md/.png, manifest")
    p.add_argument("--scheduler", choices=("asha", "random"), help="overrides the space file's scheduler.name")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray started here (default: all)")
    p.add_argument("--cpus-per-trial", type=int, default=1, help="Ray CPUs (and torch threads) per trial")
    p.add_argument("--max-concurrent", type=int, help="at most this many trials at once")
    p.add_argument("--seed", type=int, default=0, help="seed of the parameter sampling")
    p.add_argument("--overwrite", action="store_true", help="replace a published tune result at --out")
    p.set_defaults(func=_tune)
