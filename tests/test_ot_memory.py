"""Acceptance: the chunked backend solves 50,000 x 50,000 x 64 with peak RSS < 1.5 GB.

The solve runs in a fresh interpreter, with one Sinkhorn iteration (memory does not grow with
iterations). Its peak RSS is ``VmHWM`` of that process: ``ru_maxrss`` is not used because Linux
carries the pre-exec high-water mark of the forking process (pytest, which may be large) into it.
"""
import json
import logging
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(
    """
    import json, resource, time
    import torch
    from recgoat_dist.ot import sinkhorn
    torch.set_num_threads(1)  # predictable on a shared CPU; memory does not depend on it
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50_000, 64, generator=g) / 8
    y = torch.randn(50_000, 64, generator=g) / 8 + 0.01
    start = time.perf_counter()
    res = sinkhorn(x, y, eps=0.05, backend="chunked", max_iter=1, scaling=None)
    seconds = time.perf_counter() - start
    try:
        with open("/proc/self/status") as status:
            peak_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    except OSError:
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({
        "peak_rss_mb": peak_kb / 1024,
        "seconds": seconds, "n_iter": res.n_iter, "cost": res.cost.item(),
        "finite": bool(torch.isfinite(res.f).all() and torch.isfinite(res.g).all()),
    }))
    """
)


@pytest.mark.slow
def test_chunked_50k_peak_rss_below_1_5_gb():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    logging.getLogger(__name__).info("50k x 50k x 64 chunked solve: %s", stats)  # --log-cli-level=INFO
    assert stats["n_iter"] == 1 and stats["finite"]
    assert stats["peak_rss_mb"] < 1536, stats
