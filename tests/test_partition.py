"""Heterograph assembly, DGL partitioning, the partitions artifact and its per-part loader."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from recgoat_dist.cli import main
from recgoat_dist.data.dataset import DataError, Dataset
from recgoat_dist.graph import (GraphArtifact, build_graph, build_heterograph, load_id_maps,
                                load_partition, partition_graph_artifact)
from recgoat_dist.storage import StorageError, filesystem
from test_graph import make_dataset


@pytest.fixture(scope="module")
def lfm2k_graph(lfm2k_dataset, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("lfm2k-graph") / "graph")
    build_graph(lfm2k_dataset, out, knn_k=10)
    return out


@pytest.fixture(scope="module")
def small_graph(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("small")
    make_dataset(str(root / "ds"), user_modalities={"text": 12})
    build_graph(str(root / "ds"), str(root / "g"), knn_k=4, user_knn_k=3)
    return str(root / "g")


def check_partitions(url: str, graph_url: str, cache_dir: str | None = None) -> None:
    """Inner nodes sum to the totals; each part opens with DGL; the id maps send every inner
    node's features back to the dataset row of its original id; the reported edge cut matches
    the cut computed from the node assignment."""
    import dgl

    from recgoat_dist.storage import Artifact

    art = Artifact(url, kind="partitions")
    m = art.manifest
    graph = GraphArtifact(graph_url)
    ds = Dataset(graph.dataset_url)
    totals = {"user": graph.num_users, "item": graph.num_items}
    assert {nt: sum(p["inner"][nt] for p in m["parts"]) for nt in totals} == totals
    id_maps = load_id_maps(url)
    assert {nt: sorted(ids.tolist()) for nt, ids in id_maps.items()} == \
        {nt: list(range(n)) for nt, n in totals.items()}
    part_of = {nt: np.full(n, -1) for nt, n in totals.items()}
    offset = {nt: 0 for nt in totals}
    for p in range(m["num_parts"]):
        loaded = load_partition(url, p, cache_dir=cache_dir)
        assert loaded.graph_name == m["graph_name"] and os.path.exists(loaded.config_path)
        if cache_dir is None:      # local artifact: DGL's own loader on the artifact's config
            dgl.distributed.load_partition(os.path.join(filesystem(url)[1], m["dgl_config"]), p)
        g = loaded.graph
        with open(loaded.config_path) as fh:
            ntype_ids = json.load(fh)["ntypes"]
        inner = g.ndata["inner_node"].bool()
        for nt in totals:
            ntype_id = ntype_ids[nt]
            assert int((inner & (g.ndata[dgl.NTYPE] == ntype_id)).sum()) == m["parts"][p]["inner"][nt]
            assert int((~inner & (g.ndata[dgl.NTYPE] == ntype_id)).sum()) == m["parts"][p]["halo"][nt]
            n_inner = m["parts"][p]["inner"][nt]
            orig = id_maps[nt][offset[nt]:offset[nt] + n_inner]     # per-type new ids of part p
            part_of[nt][orig] = p
            offset[nt] += n_inner
            modalities = ds.modalities if nt == "item" else ds.user_modalities
            for name in modalities:
                feats = loaded.node_feats[f"{nt}/{name}"].numpy()
                full = ds.item_features(name) if nt == "item" else ds.user_features(name)
                np.testing.assert_array_equal(feats, full[orig])
    cut = {}
    for etype in graph.edge_types + ["rated_by"]:
        src, dst, _ = graph.edges(etype)
        s_type, d_type = {"rates": ("user", "item"), "rated_by": ("item", "user"),
                          "uu": ("user", "user")}.get(etype, ("item", "item"))
        cut[etype] = int((part_of[s_type][src] != part_of[d_type][dst]).sum())
    assert m["edge_cut_by_etype"] == cut and m["edge_cut"] == sum(cut.values())


def test_build_heterograph(small_graph):
    g = build_heterograph(small_graph)
    graph = GraphArtifact(small_graph)
    assert set(g.ntypes) == {"user", "item"}
    assert set(g.canonical_etypes) == {("user", "rates", "item"), ("item", "rated_by", "user"),
                                       ("item", "knn_text", "item"), ("item", "knn_audio", "item"),
                                       ("user", "uu", "user")}
    for etype, count in graph.num_edges.items():
        assert g.num_edges(etype) == count
    src, dst = g.edges(etype="rates")
    rsrc, rdst = g.edges(etype="rated_by")
    assert (src == rdst).all() and (dst == rsrc).all()
    np.testing.assert_array_equal(g.edges["rated_by"].data["weight"].numpy(), graph.edges("rates")[2])
    assert g.nodes["item"].data["text"].shape == (80, 16)
    assert g.nodes["item"].data["audio"].shape == (80, 8)
    assert g.nodes["user"].data["text"].shape == (120, 12)
    assert g.idtype.is_signed and g.num_nodes("user") == 120


@pytest.mark.parametrize("method", ["metis", "random"])
def test_lfm2k_partition(lfm2k_graph, tmp_path, method, capsys):
    out = str(tmp_path / "parts")
    assert main(["partition", "--graph", lfm2k_graph, "--parts", "2", "--method", method,
                 "--out", out]) == 0
    capsys.readouterr()
    assert main(["inspect", out, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_parts"] == 2 and info["method"] == method
    assert info["dgl_config"] == "recgoat.json" and info["graph"] == lfm2k_graph
    assert [sorted(p) for p in info["parts"]] == [["halo", "inner", "inner_edges", "part_id"]] * 2
    assert info["edge_cut"] > 0
    check_partitions(out, lfm2k_graph)


def test_metis_cuts_fewer_edges_than_random(small_graph, tmp_path):
    metis = partition_graph_artifact(small_graph, str(tmp_path / "m"), 2, "metis")
    rand = partition_graph_artifact(small_graph, str(tmp_path / "r"), 2, "random")
    assert metis["edge_cut"] < rand["edge_cut"]
    check_partitions(str(tmp_path / "m"), small_graph)
    one = partition_graph_artifact(small_graph, str(tmp_path / "one"), 1)
    assert one["edge_cut"] == 0 and one["parts"][0]["halo"] == {"user": 0, "item": 0}
    check_partitions(str(tmp_path / "one"), small_graph)


def test_s3_round_trip(lfm2k_dataset, s3_url, tmp_path):
    graph_url, parts_url = f"{s3_url}/graph", f"{s3_url}/parts"
    build_graph(lfm2k_dataset, graph_url, knn_k=10)
    manifest = partition_graph_artifact(graph_url, parts_url, 2, "metis")
    assert manifest["graph"] == graph_url
    cache = str(tmp_path / "cache")
    check_partitions(parts_url, graph_url, cache_dir=cache)
    # only the requested part (plus the config) is downloaded
    fresh = str(tmp_path / "cache1")
    loaded = load_partition(parts_url, 1, cache_dir=fresh)
    local = os.path.dirname(loaded.config_path)
    assert sorted(os.listdir(local)) == ["part1", "recgoat.json"]
    # a corrupted cached file is fetched again, a good one is reused
    graph_file = os.path.join(local, "part1", "graph.dgl")
    with open(graph_file, "r+b") as fh:
        fh.seek(100)
        fh.write(b"\0garbage\0")
    config_mtime = os.stat(loaded.config_path).st_mtime_ns
    again = load_partition(parts_url, 1, cache_dir=fresh)
    assert again.graph.num_nodes() == loaded.graph.num_nodes()
    assert os.stat(loaded.config_path).st_mtime_ns == config_mtime


def test_partition_bad_input(small_graph, tmp_path, capsys):
    with pytest.raises(DataError, match="unknown partition method"):
        partition_graph_artifact(small_graph, str(tmp_path / "p"), 2, "kahip")
    with pytest.raises(DataError, match="--parts"):
        partition_graph_artifact(small_graph, str(tmp_path / "p"), 0)
    with pytest.raises(StorageError, match="no manifest"):
        partition_graph_artifact(str(tmp_path / "nothing"), str(tmp_path / "p"), 2)
    assert not (tmp_path / "p").exists()
    partition_graph_artifact(small_graph, str(tmp_path / "p"), 2)
    with pytest.raises(DataError, match="part 2 does not exist"):
        load_partition(str(tmp_path / "p"), 2)
    with pytest.raises(StorageError, match="expected a partitions artifact"):
        load_partition(small_graph, 0)
    capsys.readouterr()
    assert main(["partition", "--graph", str(tmp_path / "nothing"), "--parts", "2",
                 "--out", str(tmp_path / "q")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "no manifest" in err[0]
    assert main(["partition", "--graph", small_graph, "--parts", "2", "--out", str(tmp_path / "p")]) == 2
    assert "already exists" in capsys.readouterr().err
