"""Ray job entrypoint for `recgoat prepare`: same arguments as the command.

    ray job submit --working-dir . -- python jobs/prepare.py ARGS...   (see `recgoat prepare --help`)
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if __name__ == "__main__":
    os.environ.setdefault("DGLBACKEND", "pytorch")
    from recgoat_dist.cli import main

    sys.exit(main(["prepare", *sys.argv[1:]]))
