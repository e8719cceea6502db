"""Layer-wise full inference over the distributed graph, and the distributed ranking evaluation.

Inference computes every node's representation with *all* its neighbours, one hop at a time: each
worker computes hop ``k`` for its own partition's nodes from hop ``k-1`` of their neighbours
(pulled from the servers), writes it to a ``DistTensor``, and waits for the others before the next
hop. This is done for every stream of ``RecGOAT``: LightGCN on ``rates``/``rated_by`` (all layers
kept, they are averaged), and each content stream's projection followed by its GAT layers on its
similarity graph. No worker ever holds the graph; the largest things one holds are the final
vector tables pulled from the servers (users x dim and items x dim per stream) while it ranks its
own users.

Evaluation follows MMRec's full-ranking protocol (``recgoat_dist.eval``): every metric is a mean
over evaluated users, so each worker evaluates its own users and the sums are all-reduced.
"""
from __future__ import annotations

import numpy as np
import torch

from recgoat_dist.model import Representations, propagate
from recgoat_dist.train.distributed.model import NTYPES, RATED_BY, RATES, NodeInputs, pull_all

USER_STREAM = "__user"


def own_nodes(graph, partition: int, ntype: str) -> torch.Tensor:
    """This partition's (inner) nodes of ``ntype``, in the partitioned id space."""
    return graph.get_partition_book().partid2nids(partition, ntype)


def streams_of(model) -> dict:
    out = dict(model.item_streams.items())
    if model.user_stream is not None:
        out[USER_STREAM] = model.user_stream
    return out


class InferenceStore:
    """Persistent ``DistTensor``s for every hop of every stream, created once and reused."""

    def __init__(self, graph, dim: int, model):
        from dgl.distributed import DistTensor

        def table(name, ntype):
            return DistTensor((graph.num_nodes(ntype), dim), torch.float32, name=f"infer_{name}",
                              part_policy=graph.get_node_partition_policy(ntype), persistent=True)
        self.id = [{nt: table(f"id{k}_{nt}", nt) for nt in NTYPES} for k in range(model.id.n_layers + 1)]
        self.streams = {key: [table(f"{key}{k}", s.ntype) for k in range(len(s.gats) + 1)]
                        for key, s in streams_of(model).items()}


def _batches(nodes: torch.Tensor, size: int):
    for i in range(0, len(nodes), size):
        yield nodes[i:i + size]


def _sync(graph) -> None:
    import torch.distributed as dist
    dist.barrier()
    graph.barrier()


@torch.no_grad()
def layerwise_inference(model, graph, own: dict, tables, inputs: NodeInputs, store: InferenceStore,
                        batch_size: int = 4096) -> None:
    """Fill every hop of every stream for this partition's nodes (collective)."""
    import dgl

    was_training = model.training
    model.eval()
    streams = streams_of(model)
    for nt in NTYPES:
        for b in _batches(own[nt], batch_size):
            store.id[0][nt][b] = tables.tables[nt].weight[b]
    for key, s in streams.items():
        name = inputs.user_modality if key == USER_STREAM else key
        for b in _batches(own[s.ntype], batch_size):
            store.streams[key][0][b] = s.project(inputs.features(s.ntype, name, b))
    depth = max([len(store.id) - 1] + [len(s.gats) for s in streams.values()])
    for k in range(1, depth + 1):
        _sync(graph)
        for nt in NTYPES:
            for b in _batches(own[nt], batch_size):
                block = dgl.to_block(dgl.distributed.sample_neighbors(graph, {nt: b}, -1), {nt: b})
                inputs.attach_degrees([block])
                src_ids = {s: block.srcnodes[s].data[dgl.NID] for s in NTYPES}
                if k < len(store.id):
                    etype = RATED_BY if nt == "user" else RATES
                    store.id[k][nt][b] = propagate(block[etype], store.id[k - 1][etype[0]][src_ids[etype[0]]])
                for key, s in streams.items():
                    if s.ntype == nt and k <= len(s.gats):
                        h_src = store.streams[key][k - 1][src_ids[nt]]
                        h_dst = h_src[:len(b)]
                        store.streams[key][k][b] = s.hop(k - 1, block[s.etype], h_src, h_dst)
    _sync(graph)
    model.train(was_training)


@torch.no_grad()
def full_representations(graph, store: InferenceStore, with_streams: bool = True) -> Representations:
    """Every node's full-graph representation per stream, pulled from the servers.

    Users x dim and items x dim per stream: tables, not the graph.
    """
    def mean_id(nt):
        return lambda b: sum(layer[nt][b] for layer in store.id) / len(store.id)

    user_id, item_id = pull_all(graph, "user", mean_id("user")), pull_all(graph, "item", mean_id("item"))
    reps = Representations(user_id, item_id, user_id, item_id)
    if with_streams:
        for key, tables in store.streams.items():
            if key == USER_STREAM:
                reps.user_lm = pull_all(graph, "user", lambda b, t=tables[-1]: t[b])
            else:
                reps.item_modal[key] = pull_all(graph, "item", lambda b, t=tables[-1]: t[b])
    return reps


@torch.no_grad()
def final_vectors(model, graph, own: dict, store: InferenceStore, item_cold=None):
    """``(this partition's users (U_p, d), all items (I, d))`` as ``RecGOAT.final_embeddings`` ranks them.

    ``item_cold``: (num_items,) bool, the items without training interactions."""
    reps = full_representations(graph, store)
    reps.item_cold = item_cold
    users, items = model.final_embeddings(reps)
    return users[own["user"]], items


@torch.no_grad()
def refresh_landmarks(model, graph, store: InferenceStore, item_cold=None) -> dict:
    """Re-pick the OAT landmarks on rank 0 (k-means++ on full-graph ID representations, as the
    single-process trainer does each epoch), share them, and return their (detached) ID rows."""
    import torch.distributed as dist

    reps = full_representations(graph, store, with_streams=False)
    reps.item_cold = item_cold
    picked = [None]
    if dist.get_rank() == 0:
        model.refresh_landmarks(reps)
        picked = [(model.landmark_idx.clone(), model.user_landmark_idx.clone())]
    dist.broadcast_object_list(picked, src=0)
    model.landmark_idx, model.user_landmark_idx = picked[0]
    return {"item": reps.item_id[model.landmark_idx] if model.oat is not None else None,
            "user": reps.user_id[model.user_landmark_idx] if model.user_oat is not None else None}


@torch.no_grad()
def evaluate_partition(user_vecs, item_vecs, train_pairs, heldout: dict, ks, user_block=1024,
                       item_block=65536) -> dict:
    """MMRec metrics over this partition's users for each held-out split, combined by all-reduce.

    ``train_pairs`` and ``heldout[split]``: ``(local user row, item)`` arrays.
    """
    import torch.distributed as dist

    from recgoat_dist.eval import UserItems, evaluate_ranking

    n_users, n_items = user_vecs.shape[0], item_vecs.shape[0]
    train = UserItems.from_pairs(*train_pairs, n_users, n_items)
    out = {}
    for split, pairs in heldout.items():
        result = evaluate_ranking(user_vecs, item_vecs, train, UserItems.from_pairs(*pairs, n_users, n_items),
                                  ks, user_block, item_block)
        n = result.pop("num_users")
        keys = sorted(result)
        sums = torch.tensor([result[k] * n for k in keys] + [n], dtype=torch.float64)
        dist.all_reduce(sums)
        total = max(1.0, float(sums[-1]))
        out[split] = {**{k: float(v) / total for k, v in zip(keys, sums[:-1])}, "num_users": int(sums[-1])}
    return out


def local_rows(graph, users: torch.Tensor, pair_users: np.ndarray) -> np.ndarray:
    """Global (partitioned) user ids -> rows of ``users``, -1 for users of other partitions."""
    local = np.full(graph.num_nodes("user"), -1, dtype=np.int64)
    local[users.numpy()] = np.arange(len(users))
    return local[pair_users]
