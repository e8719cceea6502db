"""Ray job entrypoint for `recgoat partition`: same arguments as the command.

    ray job submit --working-dir . -- python jobs/partition.py ARGS...   (see `recgoat partition --help`)
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if __name__ == "__main__":
    os.environ.setdefault("DGLBACKEND", "pytorch")
    from recgoat_dist.cli import main

    sys.exit(main(["partition", *sys.argv[1:]]))
