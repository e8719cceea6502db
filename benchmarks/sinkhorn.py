"""Benchmark of ``recgoat_dist.ot.sinkhorn`` against POT's log-domain Sinkhorn.

Writes JSON (default ``benchmarks/out/sinkhorn.json``) with three sections:

* ``per_iteration``: seconds per Sinkhorn iteration of ``dense``, ``chunked``, ``keops`` and of
  POT ``ot.sinkhorn(..., method="sinkhorn_log")`` on numpy and on torch, for N = M in ``--sizes``.
  Per iteration = (T(k) - T(1)) / (k - 1): fixed costs (features, the cost matrix, the final
  pass) cancel. Every worker first solves a tiny problem (imports, POT set-up, KeOps compilation).
* ``ratio``: wall time to convergence of ``backend="auto"`` and of POT ``sinkhorn_log`` on torch
  float32 clouds of ``--ratio-size`` points (same eps, same tolerance, POT's time includes
  ``ot.dist``), their costs and marginal errors, and ``auto / POT``.
* ``large``: ``--large-iters`` iterations of ``auto`` at ``--large`` points (100k x 100k), and
  for every other method the reason it is not run (memory or predicted time over the limits).

Every measurement runs in its own subprocess (peak RSS of that process, ``--max-seconds``
timeout). Methods whose estimated memory exceeds ``--max-gb`` or whose predicted time exceeds
``--max-seconds`` are skipped with the reason recorded. Example (the full run takes a while):

    nice -n 10 python benchmarks/sinkhorn.py --sizes 1000,2000,5000 --max-seconds 120
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

logger = logging.getLogger("benchmarks.sinkhorn")

OURS = ("dense", "chunked", "keops")
METHODS = OURS + ("pot_numpy", "pot_torch")
BYTES = {"float32": 4, "float64": 8}


# ----------------------------------------------------------------------------- worker side
def _clouds(n, d, dtype, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    dt = getattr(torch, dtype)
    x = torch.randn(n, d, generator=g, dtype=dt) / d**0.5
    y = torch.randn(n, d, generator=g, dtype=dt) / d**0.5 + 0.3 / d**0.5
    return x, y


def _solve(method, x, y, eps, iters, tol, annealing):
    """Run one method; returns a dict with cost, iterations and marginal error."""
    if method in OURS or method == "auto":
        from recgoat_dist.ot import sinkhorn

        res = sinkhorn(x, y, eps=eps, backend=method, max_iter=iters, tol=tol,
                       scaling=0.5 if annealing else None)
        return {"cost": res.cost.item(), "n_iter": res.n_iter, "marginal_error": res.marginal_error,
                "backend": res.backend}
    import ot
    import torch

    if method == "pot_numpy":
        x, y = x.numpy(), y.numpy()
    n, m = x.shape[0], y.shape[0]
    a = torch.full((n,), 1.0 / n, dtype=x.dtype) if method == "pot_torch" else ot.unif(n).astype(x.dtype)
    b = torch.full((m,), 1.0 / m, dtype=x.dtype) if method == "pot_torch" else ot.unif(m).astype(x.dtype)
    M = ot.dist(x, y)
    G, log = ot.sinkhorn(a, b, M, eps, method="sinkhorn_log", numItermax=iters, stopThr=tol, log=True, warn=False)
    cost = float((G * M).sum())
    col = G.sum(0) - b
    err = float(abs(col).sum())
    return {"cost": cost, "n_iter": int(log["niter"]) + 1, "marginal_error": err, "backend": method}


def worker(spec):
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    x, y = _clouds(spec["n"], spec["d"], spec["dtype"])
    out = {}
    # Warm-up outside the timing: imports, POT backend set-up, KeOps compilation (cached).
    xs, ys = _clouds(64, spec["d"], spec["dtype"], seed=1)
    _solve(spec["method"], xs, ys, spec["eps"], 2, 0.0, spec["mode"] == "solve")
    if spec["mode"] == "per_iteration":
        start = time.perf_counter()
        _solve(spec["method"], x, y, spec["eps"], 1, 0.0, False)
        t1 = time.perf_counter() - start
        remaining = spec["max_seconds"] * 0.8 - 2 * t1
        k = int(max(2, min(spec["iters"], 1 + remaining / max(t1, 1e-9))))
        start = time.perf_counter()
        _solve(spec["method"], x, y, spec["eps"], k, 0.0, False)
        tk = time.perf_counter() - start
        out.update(seconds_one_iteration_run=t1, iters=k, seconds_k_iteration_run=tk,
                   seconds_per_iter=max(tk - t1, 0.0) / (k - 1))
    else:  # "solve": to convergence (or a fixed number of iterations when tol = 0)
        start = time.perf_counter()
        out.update(_solve(spec["method"], x, y, spec["eps"], spec["iters"], spec["tol"], True))
        out["seconds"] = time.perf_counter() - start
        if out["n_iter"]:
            out["seconds_per_iter"] = out["seconds"] / out["n_iter"]
    out["peak_rss_mb"] = _peak_rss_mb()
    print(json.dumps(out))


def _peak_rss_mb():
    """Peak RSS of this process (VmHWM; ru_maxrss would include the forking parent's)."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- driver side
def _run(spec, timeout):
    record = {k: spec[k] for k in ("method", "n", "d", "dtype")}
    try:
        proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**record, "status": "timeout", "reason": f"over --max-seconds={timeout}"}
    if proc.returncode != 0:
        return {**record, "status": "error", "reason": proc.stderr.strip().splitlines()[-1:] or ["?"]}
    return {**record, "status": "ok", **json.loads(proc.stdout.strip().splitlines()[-1])}


def _memory_gb(method, n, dtype):
    """Rough peak memory of the methods that hold N x N matrices (others: O(N d))."""
    factor = {"dense": 3, "pot_numpy": 4, "pot_torch": 4}.get(method, 0)
    return factor * n * n * BYTES[dtype if method != "pot_numpy" else "float64"] / 1e9 if factor else 0.0


def _skip_reason(method, n, args, last):
    need = _memory_gb(method, n, args.dtype)
    if need > args.max_gb:
        return f"needs ~{need:.1f} GB > --max-gb={args.max_gb}"
    if method in last:
        n0, t0 = last[method]
        predicted = t0 * (n / n0) ** 2
        if 3 * predicted > args.max_seconds:
            return f"predicted {predicted:.0f} s per iteration (x3 runs) > --max-seconds={args.max_seconds}"
    return None


def per_iteration(args, methods):
    rows, last = [], {}
    for n in args.sizes:
        for method in methods:
            reason = _skip_reason(method, n, args, last)
            if reason:
                rows.append({"method": method, "n": n, "d": args.dim, "dtype": args.dtype,
                             "status": "skipped", "reason": reason})
            else:
                spec = dict(mode="per_iteration", method=method, n=n, d=args.dim, dtype=args.dtype, eps=args.eps,
                            iters=args.iters, max_seconds=args.max_seconds, threads=args.threads)
                row = _run(spec, args.max_seconds)
                rows.append(row)
                if row["status"] == "ok":
                    last[method] = (n, row["seconds_per_iter"])
                elif row["status"] == "timeout":
                    last[method] = (n, args.max_seconds)
            logger.info("%s", rows[-1])
    return rows


def ratio(args):
    common = dict(mode="solve", n=args.ratio_size, d=args.dim, dtype="float32", eps=args.ratio_eps,
                  iters=args.ratio_max_iter, tol=args.ratio_tol, threads=args.threads)
    ours = _run({**common, "method": "auto"}, args.max_seconds)
    logger.info("%s", ours)
    pot = _run({**common, "method": "pot_torch"}, args.max_seconds)
    logger.info("%s", pot)
    out = {"auto": ours, "pot_torch_sinkhorn_log": pot, "eps": args.ratio_eps, "tol": args.ratio_tol}
    if ours["status"] == pot["status"] == "ok":
        out["time_ratio_auto_over_pot"] = ours["seconds"] / pot["seconds"]
        out["cost_relative_difference"] = abs(ours["cost"] - pot["cost"]) / abs(pot["cost"])
    return out


def large(args, per_iter_rows):
    n = args.large
    spec = dict(mode="solve", method="auto", n=n, d=args.dim, dtype=args.dtype, eps=args.eps,
                iters=args.large_iters, tol=0.0, threads=args.threads)
    rows = [_run(spec, args.large_max_seconds)]
    logger.info("%s", rows[-1])
    last = {}
    for row in per_iter_rows:
        if row["status"] == "ok":
            last[row["method"]] = (row["n"], row["seconds_per_iter"])
    for method in METHODS:
        if rows[0].get("backend") == method:
            reason = "this is the backend auto chose: see the auto row"
        else:
            reason = _skip_reason(method, n, args, last) or "not run at this size (only auto)"
        rows.append({"method": method, "n": n, "d": args.dim, "dtype": args.dtype,
                     "status": "skipped", "reason": reason})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(Path(__file__).parent / "out" / "sinkhorn.json"))
    p.add_argument("--sizes", default="1000,2000,5000,10000,20000", help="comma-separated N (= M)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--dtype", default="float32", choices=sorted(BYTES))
    p.add_argument("--eps", type=float, default=0.05)
    p.add_argument("--iters", type=int, default=10, help="iterations per timing run (fewer if slow)")
    p.add_argument("--max-seconds", type=float, default=300.0, help="time limit per method and size")
    p.add_argument("--max-gb", type=float, default=4.0, help="skip methods estimated to need more")
    p.add_argument("--threads", type=int, default=0, help="torch threads in workers (0: default)")
    p.add_argument("--ratio-size", type=int, default=5000, help="0 to skip the auto/POT ratio")
    p.add_argument("--ratio-eps", type=float, default=0.05)
    p.add_argument("--ratio-tol", type=float, default=1e-5)
    p.add_argument("--ratio-max-iter", type=int, default=5000)
    p.add_argument("--large", type=int, default=100_000, help="0 to skip the large run")
    p.add_argument("--large-iters", type=int, default=2)
    p.add_argument("--large-max-seconds", type=float, default=3600.0)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    methods = [m for m in args.methods.split(",") if m]

    import ot
    import torch

    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "pot": ot.__version__, "torch_threads": args.threads or torch.get_num_threads(),
                    "load_average_at_start": os.getloadavg()},
        "config": {k: v for k, v in vars(args).items() if k != "worker"},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save():
        out.write_text(json.dumps(result, indent=2))

    result["per_iteration"] = per_iteration(args, methods)
    save()
    if args.ratio_size:
        result["ratio"] = ratio(args)
        save()
    if args.large:
        result["large"] = large(args, result["per_iteration"])
    result["machine"]["load_average_at_end"] = os.getloadavg()
    save()
    logger.info("wrote %s", out)


if __name__ == "__main__":
    main()
