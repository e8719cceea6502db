"""The model modules: LightGCN against a dense reference, and full graph == full-neighbour blocks."""
from __future__ import annotations

import dgl
import pytest
import torch

from recgoat_dist.model import VARIANTS, RecGOAT, propagate
from recgoat_dist.model.lightgcn import LightGCN

NUM_USERS, NUM_ITEMS = 12, 9


def tiny_graph(seed: int = 0) -> dgl.DGLGraph:
    """A random heterograph with the artifact's edge types and content features."""
    gen = torch.Generator().manual_seed(seed)
    pairs = torch.unique(torch.stack([torch.randint(0, NUM_USERS, (40,), generator=gen),
                                      torch.randint(0, NUM_ITEMS, (40,), generator=gen)]), dim=1)
    u, i = pairs
    def knn(n):
        s, d = torch.randint(0, n, (30,), generator=gen), torch.randint(0, n, (30,), generator=gen)
        keep = s != d
        return torch.cat([s[keep], d[keep]]), torch.cat([d[keep], s[keep]])
    g = dgl.heterograph({("user", "rates", "item"): (u, i), ("item", "rated_by", "user"): (i, u),
                         ("item", "knn_text", "item"): knn(NUM_ITEMS), ("item", "knn_visual", "item"): knn(NUM_ITEMS),
                         ("user", "uu", "user"): knn(NUM_USERS)},
                        num_nodes_dict={"user": NUM_USERS, "item": NUM_ITEMS}, idtype=torch.int64)
    g.nodes["item"].data["text"] = torch.randn(NUM_ITEMS, 7, generator=gen)
    g.nodes["item"].data["visual"] = torch.randn(NUM_ITEMS, 5, generator=gen)
    g.nodes["user"].data["text"] = torch.randn(NUM_USERS, 6, generator=gen)
    return g


def dense_lightgcn(g, user, item, n_layers):
    u, i = g.edges(etype="rates")
    n = NUM_USERS + NUM_ITEMS
    A = torch.zeros(n, n)
    A[u, NUM_USERS + i] = 1
    A[NUM_USERS + i, u] = 1
    d = A.sum(1).clamp(min=1).rsqrt()
    A_hat = d[:, None] * A * d[None, :]
    e = torch.cat([user, item])
    layers = [e]
    for _ in range(n_layers):
        layers.append(A_hat @ layers[-1])
    out = torch.stack(layers).mean(0)
    return out[:NUM_USERS], out[NUM_USERS:]


def full_inputs(g):
    return {"user": torch.arange(NUM_USERS), "item": torch.arange(NUM_ITEMS)}


def test_lightgcn_matches_dense_symmetric_normalisation():
    g = tiny_graph()
    model = LightGCN(NUM_USERS, NUM_ITEMS, dim=4, n_layers=3)
    final, ego = model([g] * 3, full_inputs(g))
    ref_u, ref_i = dense_lightgcn(g, model.user.detach(), model.item.detach(), 3)
    assert torch.allclose(final["user"], ref_u, atol=1e-6)
    assert torch.allclose(final["item"], ref_i, atol=1e-6)
    assert torch.equal(ego["user"], model.user)


def blocks_for(g, seeds, n_layers):
    sampler = dgl.dataloading.MultiLayerFullNeighborSampler(n_layers)
    input_nodes, output_nodes, blocks = sampler.sample_blocks(g, seeds)
    return input_nodes, blocks


def test_lightgcn_on_full_neighbour_blocks_equals_full_graph():
    g = tiny_graph()
    model = LightGCN(NUM_USERS, NUM_ITEMS, dim=4, n_layers=2)
    full, _ = model([g] * 2, full_inputs(g))
    seeds = {"user": torch.tensor([0, 3, 5]), "item": torch.tensor([1, 2])}
    # Blocks need the full-graph training degrees; in-block degrees only see sampled edges.
    g.nodes["user"].data["deg"] = g.out_degrees(etype="rates").float()
    g.nodes["item"].data["deg"] = g.in_degrees(etype="rates").float()
    input_nodes, blocks = blocks_for(g, seeds, 2)
    out, _ = model(blocks, input_nodes)
    assert torch.allclose(out["user"], full["user"][seeds["user"]], atol=1e-6)
    assert torch.allclose(out["item"], full["item"][seeds["item"]], atol=1e-6)


def test_sampled_neighbours_are_rescaled_to_the_full_degree():
    # A star: item 0 rated by every user with equal embeddings; sampling 2 of them keeps the sum.
    u = torch.arange(6)
    g = dgl.heterograph({("user", "rates", "item"): (u, torch.zeros(6, dtype=torch.long)),
                         ("item", "rated_by", "user"): (torch.zeros(6, dtype=torch.long), u)},
                        num_nodes_dict={"user": 6, "item": 1})
    g.nodes["user"].data["deg"] = torch.ones(6)
    g.nodes["item"].data["deg"] = torch.full((1,), 6.0)
    h = torch.ones(6, 3)
    full = propagate(g["rates"], h)
    sub = dgl.sampling.sample_neighbors(g, {"item": torch.tensor([0])}, {"rates": 2, "rated_by": 0})
    block = dgl.to_block(sub, {"item": torch.tensor([0])})
    sampled = propagate(block["rates"], h[block.srcnodes["user"].data[dgl.NID]])
    assert torch.allclose(sampled, full)


def make_model(name: str, **kwargs) -> RecGOAT:
    torch.manual_seed(0)
    return RecGOAT(NUM_USERS, NUM_ITEMS, {"text": 7, "visual": 5}, 6, name=name, dim=8, n_layers=2,
                   gat_layers=1, num_landmarks=4, **kwargs)


def feats(g, nodes):
    item = {m: g.nodes["item"].data[m][nodes["item"]] for m in ("text", "visual")}
    return item, g.nodes["user"].data["text"][nodes["user"]]


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variants_forward_loss_backward(name):
    g = tiny_graph()
    model = make_model(name)
    nodes = full_inputs(g)
    reps = model([g] * model.num_graph_layers, nodes, *feats(g, nodes))
    out = model.loss(reps, torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5]))
    out.total.backward()
    assert torch.isfinite(out.total)
    assert model.id.user.grad is not None
    assert set(out.parts) == {"bpr", "reg", "cmcl", "oat"}
    if name == "lightgcn":
        assert not model.item_streams and model.user_stream is None
    if name in ("no_oat", "lightgcn"):
        assert model.oat is None and model.user_oat is None and out.parts["oat"] == 0
    if name == "no_cmcl":
        assert out.parts["cmcl"] == 0
    if name == "no_gat":
        assert all(len(s.gats) == 0 for s in model.item_streams.values()) and len(model.user_stream.gats) == 0
    if name == "no_user_graph":
        assert len(model.user_stream.gats) == 0 and all(len(s.gats) == 1 for s in model.item_streams.values())
    users, items = model.final_embeddings(reps)
    assert users.shape == (NUM_USERS, 8) and items.shape == (NUM_ITEMS, 8)


@pytest.mark.parametrize("name", ["no_oat", "recgoat"])
def test_streams_on_full_neighbour_blocks_equal_full_graph(name):
    g = tiny_graph()
    g.nodes["user"].data["deg"] = g.out_degrees(etype="rates").float()
    g.nodes["item"].data["deg"] = g.in_degrees(etype="rates").float()
    model = make_model(name).eval()
    nodes = full_inputs(g)
    full = model([g] * model.num_graph_layers, nodes, *feats(g, nodes))
    seeds = {"user": torch.tensor([1, 4]), "item": torch.tensor([0, 3, 8])}
    input_nodes, blocks = blocks_for(g, seeds, model.num_graph_layers)
    part = model(blocks, input_nodes, *feats(g, input_nodes))
    assert torch.allclose(part.user_id, full.user_id[seeds["user"]], atol=1e-5)
    assert torch.allclose(part.item_id, full.item_id[seeds["item"]], atol=1e-5)
    for m in ("text", "visual"):
        assert torch.allclose(part.item_modal[m], full.item_modal[m][seeds["item"]], atol=1e-5)
    assert torch.allclose(part.user_lm, full.user_lm[seeds["user"]], atol=1e-5)


def test_checkpoint_round_trip_with_fewer_items_than_landmarks():
    g = tiny_graph()
    model = RecGOAT(NUM_USERS, NUM_ITEMS, {"text": 7, "visual": 5}, 6, dim=8, n_layers=2, num_landmarks=64)
    nodes = full_inputs(g)
    reps = model([g] * model.num_graph_layers, nodes, *feats(g, nodes))
    model.loss(reps, torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([2, 3])).total.backward()
    assert len(model.landmark_idx) == NUM_ITEMS          # at most one landmark per item
    assert len(model.user_landmark_idx) == NUM_USERS
    fresh = RecGOAT(NUM_USERS, NUM_ITEMS, {"text": 7, "visual": 5}, 6, dim=8, n_layers=2, num_landmarks=64)
    fresh.load_state_dict(model.state_dict())
    model.eval(), fresh.eval()
    with torch.no_grad():
        a = model.final_embeddings(model([g] * 2, nodes, *feats(g, nodes)))
        b = fresh.final_embeddings(fresh([g] * 2, nodes, *feats(g, nodes)))
    assert torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1])
