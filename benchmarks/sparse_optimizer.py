"""The distributed engine's row-wise Adam (``OwnerRowAdam``) against DGL 2.1's ``SparseAdam``, the
optimiser step alone, in one process (A/B interleaved, so both see the same load).

Tables of the step-cost graph's size (``--items`` items, 2x as many users, 64-d), on one partition
read in DGL's standalone mode. Each repetition looks up as many unique rows as a 1-worker step at
200k items does (``--users-per-step`` / ``--items-per-step``: benchmarks/RESULTS.md, step cost),
back-propagates a random gradient and times ``step()``, alternating which optimiser goes first.
Standalone mode reads the one partition in-process, so DGL's pulls and pushes skip the RPC layer
a real worker goes through: this measures the optimisers' own work, a lower bound on the saving.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/sparse_optimizer.py --items 200000
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from benchmarks.standalone import one_partition_graph  # noqa: E402 - sets DGL's mode before DGL loads


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=200_000)
    p.add_argument("--users-per-step", type=int, default=37_900)
    p.add_argument("--items-per-step", type=int, default=44_500)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--out", default=os.path.join(HERE, "sparse_optimizer.json"))
    args = p.parse_args()

    import dgl
    import torch
    from dgl.distributed import DistEmbedding
    from dgl.distributed.optim import SparseAdam

    from recgoat_dist.train.distributed.model import init_id_embedding
    from recgoat_dist.train.distributed.row_adam import OwnerRowAdam

    # Only the node counts matter here: a graph with one edge per type and the step-cost sizes.
    sizes = {"user": 2 * args.items, "item": args.items}
    g = dgl.heterograph({("user", "rates", "item"): ([0], [0]), ("item", "rated_by", "user"): ([0], [0])},
                        num_nodes_dict=sizes)
    dg, root = one_partition_graph(g, "rg-sparseopt-")
    # DGL's optimiser asks the process group for its backend: a group of one.
    torch.distributed.init_process_group("gloo", init_method=f"file://{root}/pg", rank=0, world_size=1)

    def tables(tag):
        return {nt: DistEmbedding(n, args.dim, name=f"{nt}_{tag}", init_func=init_id_embedding,
                                  part_policy=dg.get_node_partition_policy(nt)) for nt, n in sizes.items()}

    dgl_tables, our_tables = tables("dgl"), tables("ours")
    optimisers = {"dgl": (dgl_tables, SparseAdam(list(dgl_tables.values()), lr=1e-3)),
                  "ours": (our_tables, OwnerRowAdam(our_tables, lr=1e-3))}
    per_step = {"user": args.users_per_step, "item": args.items_per_step}
    gen = torch.Generator().manual_seed(0)
    times: dict = {"dgl": [], "ours": []}
    for rep in range(args.reps + 2):
        ids = {nt: torch.randperm(sizes[nt], generator=gen)[:per_step[nt]] for nt in sizes}
        grads = {nt: torch.randn(len(ids[nt]), args.dim, generator=gen) for nt in sizes}
        for name in (("dgl", "ours") if rep % 2 else ("ours", "dgl")):
            embs, opt = optimisers[name]
            sum((embs[nt](ids[nt]) * grads[nt]).sum() for nt in sizes).backward()
            start = time.perf_counter()
            if name == "dgl":
                opt.zero_grad()        # as the engine called it: clears the traces after step()
            opt.step()
            if rep >= 2:               # the first two warm the allocator
                times[name].append(time.perf_counter() - start)
    result = {"items": args.items, "users": sizes["user"], "dim": args.dim, "rows_per_step": per_step,
              "reps": args.reps, "threads": torch.get_num_threads(),
              "median_ms": {k: round(1e3 * statistics.median(v), 2) for k, v in times.items()},
              "load_average": os.getloadavg()[0]}
    result["ratio_ours_to_dgl"] = round(result["median_ms"]["ours"] / result["median_ms"]["dgl"], 3)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
