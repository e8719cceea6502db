"""One DGL partition read in-process (DGL's standalone mode), for benchmarks that A/B client-side
code in one process. Import it before DGL: the mode is read when DGL's distributed package loads."""
from __future__ import annotations

import os
import tempfile

os.environ.setdefault("DGLBACKEND", "pytorch")
os.environ["DGL_DIST_MODE"] = "standalone"


def one_partition_graph(graph, prefix: str):
    """``(DistGraph of graph, its partition folder)``: ``graph`` partitioned into one part."""
    import dgl

    root = tempfile.mkdtemp(prefix=prefix)
    dgl.distributed.partition_graph(graph, "bench", 1, root, part_method="random")
    dgl.distributed.initialize(None)
    return dgl.distributed.DistGraph("bench", part_config=os.path.join(root, "bench.json")), root
