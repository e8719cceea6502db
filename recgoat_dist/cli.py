"""The ``recgoat`` command. Each stage registers its own sub-commands.

A stage contributes ``register(subparsers)`` in ``recgoat_dist/<stage>/cli.py``; its parsers set
``func`` to a callable taking the parsed arguments. Stage CLI modules import heavy libraries
(torch, dgl, ray) inside their functions, so ``recgoat --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time

from recgoat_dist.config import ConfigError
from recgoat_dist.storage import StorageError

STAGE_CLIS = (
    "recgoat_dist.data.cli",
    "recgoat_dist.inspect",
    "recgoat_dist.graph.cli",
    "recgoat_dist.train.cli",
    "recgoat_dist.export.cli",
    "recgoat_dist.tune.cli",
    "recgoat_dist.pipeline",
    "recgoat_dist.nightly.cli",
)

logger = logging.getLogger("recgoat_dist")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recgoat", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in STAGE_CLIS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:       # stage not built yet
                continue
            raise
        module.register(sub)
    return parser


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # Third-party chatter (botocore, urllib3, numba, ...) stays quiet unless debugging.
    for noisy in ("botocore", "s3fs", "aiobotocore", "urllib3", "fsspec", "filelock", "h5py",
                  "sentence_transformers", "numba", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    # PyTorch's CPU allocator then asks for huge pages for large tensors: the ID, history and
    # feature tables that sampled steps gather rows from at random. Measured at 800k items, one
    # process: 0.301 -> 0.218 s per step, same peak RSS (benchmarks/RESULTS.md, step cost). Ray
    # workers turn it off (driver.ensure_ray). Read once, before torch's first allocation.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    start = time.perf_counter()
    try:
        code = args.func(args) or 0
    except (ValueError, StorageError, ConfigError, FileNotFoundError) as exc:
        # Bad input: one clear line, no traceback (use -v for one).
        if args.verbose:
            logger.exception("failed")
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logger.info("%s finished in %.1f s", args.command, time.perf_counter() - start)
    return code


if __name__ == "__main__":
    sys.exit(main())
