"""Three exact rewrites of a RecGOAT step tried in stop 22, each timed against the form before it in
one process, rounds alternating, on the shapes of a 200k-item step at global batch 2,048:

* ``stream``: the item stream's forward + backward on one sampled KNN hop (4,600 destinations, 10
  neighbours, the sub-block it uses). Before: the first GAT layer's ``fc_src`` folded into the
  projection (stop 20; the code). Candidate: the attention logits ``el`` as two extra output rows
  of the same product. Slower (slicing the product's output costs its backward a full zero fill
  and the GAT a copy): not adopted.
* ``transport``: OAT's adapted transport of 4,096 batch items onto 256 landmarks, forward +
  backward. Before: cosine cost and residual as two products (the code). Candidate: one product
  against ``[that; that R^T]``. Slower for the same reason: not adopted.
* ``sinkhorn``: the OAT loss's solve on a 256-row sample against 256 landmarks (``ot_eps`` 0.1),
  forward + backward. Before: annealed from zero potentials. Candidate (the code now): started from
  the previous step's potentials, the landmarks moved a little in between as after one optimiser
  step (``init_g``). Adopted.

Each pair is checked equal first. Results: ``benchmarks/step_rewrites.json``.

    OMP_NUM_THREADS=2 THP_MEM_ALLOC_ENABLE=1 .venv/bin/python benchmarks/step_rewrites.py
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)          # stream_fold's hop and timer
os.environ.setdefault("DGLBACKEND", "pytorch")


def stream_case():
    import dgl
    import dgl.nn.functional  # noqa: F401  (edge_softmax)
    import torch
    import torch.nn.functional as F

    from recgoat_dist.model.streams import attend
    from stream_fold import sampled_hop

    block, x, stream, rel, used = sampled_hop()
    n_dst = rel.num_dst_nodes()
    first, last = stream.gats[0], stream.project[2]

    def before():       # the code: stop 20's fold (FeatureStream.forward on the sub-block it builds)
        hidden = stream.project[1](stream.project[0](x[used]))
        h_dst = last(hidden[:n_dst])
        folded = F.linear(hidden, first.fc_src.weight @ last.weight, first.fc_src.weight @ last.bias)
        return h_dst + attend(first, rel, folded, first.fc_dst(h_dst))

    assert torch.allclose(before(), stream([block], x), atol=1e-5)     # the same as the module's forward

    def now():          # candidate: el as two more output rows of the folded product
        hidden = stream.project[1](stream.project[0](x[used]))
        h_dst = last(hidden[:n_dst])
        weight, bias = first.fc_src.weight @ last.weight, first.fc_src.weight @ last.bias
        heads, out = first.attn_l.shape[1:]
        eye = torch.eye(heads)
        logit_map = (eye[:, :, None] * first.attn_l.view(1, heads, out)).reshape(heads, heads * out)
        both = F.linear(hidden, torch.cat([weight, logit_map @ weight]), torch.cat([bias, logit_map @ bias]))
        feat_src, el = both[:, :heads * out].reshape(-1, heads, out), both[:, heads * out:]
        feat_dst = first.fc_dst(h_dst).view(-1, heads, out)
        with rel.local_scope():
            rel.srcdata.update({"ft": feat_src, "el": el.reshape(-1, heads, 1)})
            rel.dstdata["er"] = (feat_dst * first.attn_r).sum(-1, keepdim=True)
            rel.apply_edges(dgl.function.u_add_v("el", "er", "e"))
            rel.edata["a"] = dgl.nn.functional.edge_softmax(rel, first.leaky_relu(rel.edata.pop("e")))
            rel.update_all(dgl.function.u_mul_e("ft", "a", "m"), dgl.function.sum("m", "ft"))
            return h_dst + (rel.dstdata["ft"] + first.bias.view(1, heads, out)).flatten(1)

    return before, now, {"destinations": n_dst, "used_sources": len(used), "edges": int(rel.num_edges())}


def transport_case():
    import torch
    import torch.nn.functional as F

    from recgoat_dist.ot import OAT

    torch.manual_seed(1)
    oat = OAT(["text"], 64, eps=0.1, num_landmarks=256)
    with torch.no_grad():
        oat.residual["text"].normal_(0, 0.1)
    x = torch.randn(4096, 64, requires_grad=True)
    targets = torch.randn(256, 64, requires_grad=True)
    g = torch.randn(256) * 0.01

    def before():       # the code: cost and residual as two products
        return oat.adapted_transport("text", x, targets, g)[0]

    def now():          # candidate: one product gives both score blocks
        xhat, that = F.normalize(x, dim=1), F.normalize(targets, dim=1)
        scores = xhat @ torch.cat([that, that @ oat.residual["text"].T]).T
        logits = (scores[:, :256] + g) / oat.eps + oat.residual_scale * torch.tanh(scores[:, 256:])
        return torch.softmax(logits, 1) @ targets

    return before, now, {"items": 4096, "landmarks": 256, "dim": 64}


def sinkhorn_case():
    import torch

    from recgoat_dist.ot import sinkhorn

    gen = torch.Generator().manual_seed(2)
    sample = torch.randn(256, 64, generator=gen)
    landmarks = torch.randn(256, 64, generator=gen)
    moved = landmarks + 0.01 * torch.randn(256, 64, generator=gen)
    previous = sinkhorn(sample, landmarks, eps=0.1, cost="cosine", max_iter=200, tol=1e-5).g
    solves = {"before": sinkhorn(sample, moved, eps=0.1, cost="cosine", max_iter=200, tol=1e-5),
              "now": sinkhorn(sample, moved, eps=0.1, cost="cosine", max_iter=200, tol=1e-5, init_g=previous)}
    x = sample.clone().requires_grad_(True)

    def before():
        return sinkhorn(x, moved, eps=0.1, cost="cosine", max_iter=200, tol=1e-5).cost.reshape(1, 1)

    def now():
        return sinkhorn(x, moved, eps=0.1, cost="cosine", max_iter=200, tol=1e-5, init_g=previous).cost.reshape(1, 1)

    return before, now, {"rows": 256, "landmarks": 256, "iterations": {k: v.n_iter for k, v in solves.items()}}


def main(rounds: int = 5, reps: int = 20) -> dict:
    import torch

    from stream_fold import forward_backward_ms

    torch.manual_seed(0)
    result = {}
    for name, case in (("stream", stream_case), ("transport", transport_case), ("sinkhorn", sinkhorn_case)):
        before, now, shape = case()
        assert torch.allclose(before(), now(), rtol=1e-4, atol=1e-5), name

        times = {"before": [], "now": []}
        for _ in range(rounds):
            for label, fn in (("before", before), ("now", now)):
                times[label].append(round(forward_backward_ms(fn, reps), 3))
        med = {k: statistics.median(v) for k, v in times.items()}
        result[name] = {"shape": shape, "ms_forward_backward": times, "median_ms": med,
                        "now_over_before": round(med["now"] / med["before"], 3),
                        "saved_ms": round(med["before"] - med["now"], 3)}
        print(name, json.dumps(med), "ratio", result[name]["now_over_before"], flush=True)
    result["threads"] = torch.get_num_threads()
    result["machine"] = platform.processor() or platform.machine()
    result["thp"] = os.environ.get("THP_MEM_ALLOC_ENABLE", "0")
    return result


if __name__ == "__main__":
    out = main()
    with open(os.path.join(HERE, "step_rewrites.json"), "w") as f:
        json.dump(out, f, indent=1)
