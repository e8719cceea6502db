"""Acceptance: the chunked backend solves 50,000 x 50,000 x 64 with peak RSS < 1.5 GB.

The solve runs in a fresh interpreter so that its peak RSS (``ru_maxrss`` of that process) is
the solver's own, with one Sinkhorn iteration (the memory does not grow with iterations).
"""
import json
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(
    """
    import json, resource, time
    import torch
    from recgoat_dist.ot import sinkhorn
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50_000, 64, generator=g) / 8
    y = torch.randn(50_000, 64, generator=g) / 8 + 0.01
    start = time.perf_counter()
    res = sinkhorn(x, y, eps=0.05, backend="chunked", max_iter=1, scaling=None)
    seconds = time.perf_counter() - start
    print(json.dumps({
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "seconds": seconds, "n_iter": res.n_iter, "cost": res.cost.item(),
        "finite": bool(torch.isfinite(res.f).all() and torch.isfinite(res.g).all()),
    }))
    """
)


@pytest.mark.slow
def test_chunked_50k_peak_rss_below_1_5_gb(record_property):
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    for key, value in stats.items():
        record_property(key, value)
    assert stats["n_iter"] == 1 and stats["finite"]
    assert stats["peak_rss_mb"] < 1536, stats
