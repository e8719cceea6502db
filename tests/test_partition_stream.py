"""The streaming random partitioner against DGL's own ``partition_graph(part_method="random")``,
DGL's loaders (``load_partition``, ``DistGraphServer``, GraphBolt conversion) on its output, and
the METIS memory refusal."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from recgoat_dist.cli import main
from recgoat_dist.data.dataset import DataError
from recgoat_dist.graph import build_graph, build_heterograph, load_id_maps, partition_graph_artifact
from recgoat_dist.graph.partition import metis_memory_estimate
from recgoat_dist.graph.artifact import GraphArtifact
from test_graph import make_dataset


@pytest.fixture(scope="module")
def graph_url(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("stream")
    make_dataset(str(root / "ds"), num_users=150, num_items=110, user_modalities={"text": 12})
    build_graph(str(root / "ds"), str(root / "g"), knn_k=4, user_knn_k=3)
    return str(root / "g")


def dgl_reference(graph_url: str, out: str, num_parts: int, seed: int):
    """DGL's in-memory random partition of the same heterograph, and the node assignment it drew
    (a part id per homogeneous node id: items, then users), read back from its output."""
    import contextlib
    import io

    import dgl

    g = build_heterograph(graph_url)
    dgl.seed(seed)
    with contextlib.redirect_stdout(io.StringIO()):
        orig_nids, _ = dgl.distributed.partition_graph(g, "recgoat", num_parts, out, num_hops=1,
                                                       part_method="random", return_mapping=True)
    orig = {nt: ids.numpy() for nt, ids in orig_nids.items()}
    with open(os.path.join(out, "recgoat.json")) as fh:
        node_map = json.load(fh)["node_map"]
    assignment, offset = [], 0
    for nt in g.ntypes:                                   # DGL's homogeneous order
        part_of, typed = np.empty(g.num_nodes(nt), dtype=np.int64), 0
        for p, (lo, hi) in enumerate(node_map[nt]):
            part_of[orig[nt][typed:typed + hi - lo]] = p
            typed += hi - lo
        assignment.append(part_of)
    return orig, np.concatenate(assignment)


def part_view(config: str, p: int) -> dict:
    """What a part holds, in global (renumbered homogeneous) ids, independent of local numbering."""
    import dgl

    g, node_feats, edge_feats, gpb, _, _, etypes = dgl.distributed.load_partition(config, p)
    nid = g.ndata[dgl.NID].numpy()
    inner = g.ndata["inner_node"].numpy().astype(bool)
    src, dst = (x.numpy() for x in g.edges())
    eid, etype = g.edata[dgl.EID].numpy(), g.edata[dgl.ETYPE].numpy()
    inner_edge = g.edata["inner_edge"].numpy().astype(bool)
    with open(config) as fh:
        etype_names = {i: name for name, i in json.load(fh)["etypes"].items()}
    # weight of each inner edge, keyed by its endpoints (edge features are in edge-id order)
    weights = {}
    for e, name in etype_names.items():
        mask = inner_edge & (etype == e)
        order = np.argsort(eid[mask])
        w = edge_feats[f"{name}/weight"].numpy()
        for s, d, wt in zip(nid[src[mask][order]], nid[dst[mask][order]], w):
            weights[(name, int(s), int(d))] = float(wt)
    return {
        "inner": sorted(nid[inner].tolist()),
        "halo": sorted(nid[~inner].tolist()),
        "part_id": dict(zip(nid.tolist(), g.ndata["part_id"].numpy().tolist())) if "part_id" in g.ndata else None,
        "ntype": dict(zip(nid.tolist(), g.ndata[dgl.NTYPE].numpy().tolist())),
        "edges": sorted(zip(etype.tolist(), nid[src].tolist(), nid[dst].tolist(), inner_edge.tolist())),
        "inner_eids": {etype_names[e]: sorted(eid[inner_edge & (etype == e)].tolist()) for e in etype_names},
        "weights": weights,
        "node_feats": {k: v.numpy() for k, v in node_feats.items()},
        "book": (gpb.num_partitions(), gpb.partid),
    }


@pytest.mark.parametrize("num_parts,seed", [(1, 0), (2, 0), (3, 7)])
def test_equivalent_to_dgl_random_partition(graph_url, tmp_path, num_parts, seed):
    """Given DGL's node assignment (read back from its output: DGL's own random draw is not
    reproducible across processes), compared: the config (node_map, edge_map, ntypes, etypes,
    counts), the id maps (new -> original per type), and per part the inner and halo node sets
    with their part ids and types, every edge (type, global endpoints, inner flag), the set of
    inner edge ids per type, the edge weights and the node features row by row. Not compared:
    the local numbering of halo nodes and the order of edges inside one (part, type) block,
    which DGL leaves to an unstable sort."""
    ref_dir = str(tmp_path / "dgl")
    ref_ids, assignment = dgl_reference(graph_url, ref_dir, num_parts, seed)
    ours = str(tmp_path / "ours")
    manifest = partition_graph_artifact(graph_url, ours, num_parts, "random", assignment=assignment)
    assert manifest["streaming"] is True

    with open(os.path.join(ours, "recgoat.json")) as fh:
        cfg = json.load(fh)
    with open(os.path.join(ref_dir, "recgoat.json")) as fh:
        ref = json.load(fh)
    for key in ("graph_name", "num_nodes", "num_edges", "num_parts", "halo_hops", "node_map", "edge_map",
                "ntypes", "etypes", "part-0"):
        assert cfg[key] == ref[key], key
    id_maps = load_id_maps(ours)
    assert set(id_maps) == set(ref_ids)
    for nt in ref_ids:
        np.testing.assert_array_equal(id_maps[nt], ref_ids[nt])

    for p in range(num_parts):
        a = part_view(os.path.join(ours, "recgoat.json"), p)
        b = part_view(os.path.join(ref_dir, "recgoat.json"), p)
        for key in ("inner", "halo", "part_id", "ntype", "edges", "inner_eids", "weights", "book"):
            assert a[key] == b[key], (p, key)
        assert a["node_feats"].keys() == b["node_feats"].keys()
        for name in a["node_feats"]:
            np.testing.assert_array_equal(a["node_feats"][name], b["node_feats"][name])
        assert manifest["parts"][p]["inner"] == {nt: sum(1 for n in a["inner"] if a["ntype"][n] == cfg["ntypes"][nt])
                                                 for nt in cfg["ntypes"]}
    cut = sum(1 for p in range(num_parts) for e in part_view(os.path.join(ours, "recgoat.json"), p)["edges"]
              if not e[3])
    assert manifest["edge_cut"] == cut       # every cut edge appears once as a non-inner edge


def test_seeded_draw_is_reproducible(graph_url, tmp_path):
    a = partition_graph_artifact(graph_url, str(tmp_path / "a"), 2, "random", seed=5)
    b = partition_graph_artifact(graph_url, str(tmp_path / "b"), 2, "random", seed=5)
    c = partition_graph_artifact(graph_url, str(tmp_path / "c"), 2, "random", seed=6)
    assert a["parts"] == b["parts"] and a["edge_cut"] == b["edge_cut"]
    # DGL's graph.dgl serialisation is not byte-stable; every other file is, and the graphs are equal
    same = {k for k, v in a["files"].items() if b["files"][k]["sha256"] == v["sha256"]}
    assert set(a["files"]) - same == {"part0/graph.dgl", "part1/graph.dgl"} or set(a["files"]) == same
    for p in (0, 1):
        ga, gb = (part_view(str(tmp_path / x / "recgoat.json"), p) for x in "ab")
        assert all(ga[key] == gb[key] for key in ("inner", "halo", "part_id", "ntype", "edges", "inner_eids"))
    assert a["parts"] != c["parts"]
    with pytest.raises(DataError, match="assignment"):
        partition_graph_artifact(graph_url, str(tmp_path / "d"), 2, "random", assignment=np.zeros(3))


def test_dgl_loaders_accept_the_stream(graph_url, tmp_path):
    """DistGraphServer loads each part (graph, partition book, features into its KV store) and
    GraphBolt converts the partitions; each server in its own process, as in a cluster."""
    import dgl

    out = str(tmp_path / "parts")
    partition_graph_artifact(graph_url, out, 2, "random", seed=3)
    ip_config = tmp_path / "ip.txt"
    ip_config.write_text("127.0.0.1 30050\n127.0.0.2 30051\n")
    config = os.path.join(out, "recgoat.json")
    server = textwrap.dedent(f"""
        import os, sys, dgl
        os.environ["DGL_DIST_MODE"] = "distributed"
        os.environ["DGL_ROLE"] = "server"
        part = int(sys.argv[1])
        dgl.distributed.rpc.reset()
        server = dgl.distributed.DistGraphServer(part, {str(ip_config)!r}, 1, 1, {config!r},
                                                 disable_shared_mem=True)
        assert server.gpb.partid == part and server.gpb.num_partitions() == 2
        print(part, server.client_g.num_nodes(), len(server.orig_data))
    """)
    graphbolt = textwrap.dedent(f"""
        import dgl
        dgl.distributed.dgl_partition_to_graphbolt({config!r})
        for part in (0, 1):
            g = dgl.distributed.load_partition({config!r}, part, use_graphbolt=True)[0]
            print(part, g.total_num_nodes, g.total_num_edges)
    """)
    env = {**os.environ, "DGLBACKEND": "pytorch"}

    def run(code: str, *args: str) -> list[list[str]]:
        done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                              env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return [line.split() for line in done.stdout.splitlines() if line[:1].isdigit()]

    manifest = json.loads(open(os.path.join(out, "manifest.json")).read())
    bolt = run(graphbolt)
    for p in (0, 1):
        part = manifest["parts"][p]
        nodes = sum(part["inner"].values()) + sum(part["halo"].values())
        # a server keeps one KV tensor per node feature (item text/audio, user text) and edge weight
        assert run(server, str(p)) == [[str(p), str(nodes), str(3 + 5)]]
        dgl_format = dgl.distributed.load_partition(config, p, load_feats=False)[0]
        assert bolt[p] == [str(p), str(nodes), str(dgl_format.num_edges())]


def test_metis_refuses_over_budget(graph_url, tmp_path, capsys):
    graph = GraphArtifact(graph_url)
    need = metis_memory_estimate(graph)
    edges = sum(graph.num_edges.values()) + graph.num_edges["rates"]
    assert need >= 230 * edges
    budget_gb = need / 2 ** 30 / 2
    with pytest.raises(DataError, match=r"METIS partitioning needs about .* GiB.*--method random"):
        partition_graph_artifact(graph_url, str(tmp_path / "p"), 2, "metis", memory_budget_gb=budget_gb)
    assert not (tmp_path / "p").exists()
    # the same through the CLI, with the budget as a config key; random is not limited by it
    assert main(["partition", "--graph", graph_url, "--parts", "2", "--method", "metis",
                 "--out", str(tmp_path / "q"), "--set", f"graph.partition_memory_gb={budget_gb}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "over the budget" in err[0] and "--method random" in err[0]
    assert main(["partition", "--graph", graph_url, "--parts", "2", "--method", "random",
                 "--out", str(tmp_path / "r"), "--set", f"graph.partition_memory_gb={budget_gb}"]) == 0
    manifest = partition_graph_artifact(graph_url, str(tmp_path / "m"), 2, "metis", memory_budget_gb=2 * budget_gb)
    assert manifest["metis_memory_estimate_bytes"] == need


def test_stream_s3_round_trip(graph_url, s3_url, tmp_path):
    """Graph read from s3://, parts uploaded part by part, manifest last; the per-part loader and
    the generic partition checks (features by id map, edge cut) pass on the downloaded copy."""
    from recgoat_dist.graph import load_partition
    from test_partition import check_partitions

    dataset = GraphArtifact(graph_url).dataset_url
    graph_s3, parts_s3 = f"{s3_url}/graph", f"{s3_url}/parts"
    build_graph(dataset, graph_s3, knn_k=4, user_knn_k=3)
    manifest = partition_graph_artifact(graph_s3, parts_s3, 2, "random", seed=1)
    assert manifest["graph"] == graph_s3 and manifest["streaming"]
    check_partitions(parts_s3, graph_s3, cache_dir=str(tmp_path / "cache"))
    loaded = load_partition(parts_s3, 1, cache_dir=str(tmp_path / "one"))
    assert sorted(os.listdir(os.path.dirname(loaded.config_path))) == ["part1", "recgoat.json"]
