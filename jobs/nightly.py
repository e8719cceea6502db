"""Ray job entrypoint: nightly retraining (``recgoat nightly ...`` / ``recgoat registry ...``).

    ray job submit --working-dir . -- python jobs/nightly.py run --config configs/nightly.yaml \
        --set nightly.registry=s3://BUCKET/registry --set nightly.delta='s3://BUCKET/events/date={date}' \
        --date 2024-01-02            # or --dates FROM..TO (decided dates are skipped)
    ray job submit ... -- python jobs/nightly.py init --config ... --dataset URL
    ray job submit ... -- python jobs/nightly.py show --registry URL [--json]

Same flags and exit codes as the CLI (0 promoted / nothing to do, 3 rejected by the gate, 2 bad
input, 4 registry locked): ``ray job submit`` waits for the job and exits non-zero when it fails,
so a scheduler sees a gate rejection as a failed job and alerts.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("DGLBACKEND", "pytorch")
    from recgoat_dist.cli import main as recgoat

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("show", "rollback"):
        return recgoat(["registry", *argv])
    return recgoat(["nightly", *argv])


if __name__ == "__main__":
    sys.exit(main())
