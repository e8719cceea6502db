"""The client-side frontier conversion (``train/distributed/frontier.py``) against DGL 2.1's own, on
real one-partition DistGraphs (DGL's standalone mode: the partition is read in-process), for DGL
partitions and their GraphBolt conversion, with the whole neighbourhood and with a fanout."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ["DGL_DIST_MODE"] = "standalone"
    import torch, dgl
    from dgl.distributed import graph_services
    from recgoat_dist.train.distributed import frontier

    out, bolt, tests = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
    sys.path.insert(0, tests)
    from test_distributed import tiny_heterograph
    g = tiny_heterograph()
    dgl.distributed.partition_graph(g, "tiny", 1, out, part_method="random")
    config = os.path.join(out, "tiny.json")
    if bolt:
        dgl.distributed.dgl_partition_to_graphbolt(config, store_eids=True)
    dgl.distributed.initialize(None, use_graphbolt=bolt)
    dg = dgl.distributed.DistGraph("tiny", part_config=config)
    seeds = {"user": torch.arange(0, 60), "item": torch.arange(10, 50)}

    def edges(fg):
        return {et[1]: sorted(zip(*(t.tolist() for t in fg.edges(etype=et)),
                                  fg.edges[et].data[dgl.EID].tolist()))
                for et in fg.canonical_etypes if fg.num_edges(et)}

    calls = []
    def counted(*args):
        calls.append(1)
        return frontier.frontier_to_heterograph(*args)

    result = {}
    for fanout in (-1, 3):
        dgl.seed(7)
        ours_off = edges(dg.sample_neighbors(seeds, fanout))
        installed = frontier.install()
        graph_services._frontier_to_heterogeneous_graph = counted
        dgl.seed(7)
        ours_on = edges(dg.sample_neighbors(seeds, fanout))
        graph_services._frontier_to_heterogeneous_graph = frontier._original
        frontier._original = None
        result[fanout] = {"installed": installed, "equal": ours_off == ours_on,
                          "edges": {k: len(v) for k, v in ours_off.items()}}
    result["calls"] = len(calls)
    print("RESULT " + json.dumps(result))
""")


@pytest.mark.parametrize("graphbolt", [False, True], ids=["dgl", "graphbolt"])
def test_frontier_conversion_matches_dgl(tmp_path, graphbolt):
    env = {**os.environ, "DGLBACKEND": "pytorch", "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), "1" if graphbolt else "0",
                           os.path.join(ROOT, "tests")],
                          capture_output=True, text=True, env=env, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["calls"] == 2                      # our conversion ran, once per sample
    for fanout in ("-1", "3"):
        assert result[fanout]["installed"]
        assert result[fanout]["equal"], result      # same edges, node ids and edge ids per type
        assert set(result[fanout]["edges"]) == {"rates", "rated_by", "knn_text", "uu"}
    assert result["-1"]["edges"]["rates"] > result["3"]["edges"]["rates"]
