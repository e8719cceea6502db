"""Layer-wise inference and ranking evaluation over the distributed graph.

Inference is the model's own (:meth:`RecGOAT.inference`): here it gets the distributed callables.
Each worker computes hop ``k`` for its own partition's nodes from hop ``k-1`` of their neighbours
(pulled from the servers), writes it to the ``DistTensor`` layer tables, and waits for the others
before the next hop. No worker ever holds the graph; the largest things one holds are the final
vector tables pulled from the servers (users x dim and items x dim per stream) while it ranks its
own users.

Evaluation follows MMRec's full-ranking protocol (``recgoat_dist.eval``): every metric is a mean
over evaluated users, so each worker evaluates its own users and the sums are all-reduced.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from recgoat_dist.model import USER_STREAM, LayerTables, full_representations
from recgoat_dist.train.distributed.model import NTYPES, NodeInputs, in_edges, pull_all
from recgoat_dist.train.steps import attach_degrees


def own_nodes(graph, partition: int, ntype: str) -> torch.Tensor:
    """This partition's (inner) nodes of ``ntype``, in the partitioned id space."""
    return graph.get_partition_book().partid2nids(partition, ntype)


def _sync(graph, group=None) -> None:
    import torch.distributed as dist
    dist.barrier(group=group)
    graph.barrier()


@torch.no_grad()
def layerwise_inference(model, graph, own: dict, tables, inputs: NodeInputs, layers: LayerTables,
                        device: torch.device, batch_size: int = 4096) -> None:
    """Fill every hop of every stream for this partition's nodes (collective)."""
    import dgl

    def neighbours(nt, ids):
        block = dgl.to_block(in_edges(graph, {nt: ids}), {nt: ids})
        attach_degrees([block], lambda s, i: inputs.degree[s][i])
        return block.to(device)

    def ego(nt, ids):
        return tables.tables[nt].weight[ids].to(device)

    def features(nt, key, ids):
        name = inputs.user_modality if key == USER_STREAM else key
        return inputs.features(nt, name, ids).to(device)

    class _ToServers:
        """A DistTensor seen through the device: rows go to the device when read, to the CPU when written."""

        def __init__(self, table):
            self.table = table

        def __getitem__(self, ids):
            return self.table[ids.cpu()].to(device)

        def __setitem__(self, ids, rows):
            self.table[ids.cpu()] = rows.cpu()

    view = LayerTables(id=[{nt: _ToServers(t) for nt, t in hop.items()} for hop in layers.id],
                       streams={k: [_ToServers(t) for t in hops] for k, hops in layers.streams.items()})
    model.inference(view, own, neighbours, ego, features, sync=lambda: _sync(graph), batch_size=batch_size)


@torch.no_grad()
def pull_landmarks(model, graph, layers: LayerTables, item_cold=None, group=None) -> None:
    """Re-pick the OAT landmarks on rank 0 (k-means++ on full-graph ID representations, as the
    single-process engine does each epoch) and share them with every worker."""
    import torch.distributed as dist

    picked = [None]
    if dist.get_rank() == 0:
        reps = full_representations(layers, lambda fn, nt: pull_all(graph, nt, fn), with_streams=False)
        reps.item_cold = item_cold
        model.refresh_landmarks(reps)
        picked = [(model.landmark_idx.cpu(), model.user_landmark_idx.cpu())]
    dist.broadcast_object_list(picked, src=0, group=group)
    device = model.landmark_idx.device
    model.landmark_idx, model.user_landmark_idx = (t.to(device) for t in picked[0])


@torch.no_grad()
def evaluate_partition(user_vecs, item_vecs, train_pairs, heldout: dict, ks, user_block=1024,
                       item_block=65536, group=None) -> dict:
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
        dist.all_reduce(sums, group=group)
        total = max(1.0, float(sums[-1]))
        out[split] = {**{k: float(v) / total for k, v in zip(keys, sums[:-1])}, "num_users": int(sums[-1])}
    return out


def local_rows(graph, users: torch.Tensor, pair_users: np.ndarray) -> np.ndarray:
    """Global (partitioned) user ids -> rows of ``users``, -1 for users of other partitions."""
    local = np.full(graph.num_nodes("user"), -1, dtype=np.int64)
    local[users.numpy()] = np.arange(len(users))
    return local[pair_users]


def load_eval_data(g, users: torch.Tensor, dataset: Optional[str], id_maps: Optional[str],
                   eval_users: int = 0, seed: int = 0) -> Optional[dict]:
    """This partition's users' training items (from the graph) and held-out items (dataset),
    as ``(local user row, item)`` pairs in the partitioned id space; with ``eval_users``, held-out
    items of the sampled users only (:func:`recgoat_dist.train.inputs.eval_user_mask`)."""
    import dgl

    if not dataset or not id_maps:
        return None
    from recgoat_dist.data.dataset import Dataset
    from recgoat_dist.graph import load_id_maps

    frontier = in_edges(g, {"user": users})
    items, train_users = frontier.edges(etype="rated_by")
    out = {"train": (local_rows(g, users, train_users.numpy()), items.numpy())}
    inverse = {}
    for nt, new_to_orig in load_id_maps(id_maps).items():
        inverse[nt] = np.empty(len(new_to_orig), dtype=np.int64)
        inverse[nt][new_to_orig] = np.arange(len(new_to_orig))
    from recgoat_dist.train.inputs import eval_user_mask

    ds = Dataset(dataset)
    sample = eval_user_mask(ds.num_users, eval_users, seed)
    for split in ("valid", "test"):
        pairs = ds.interactions(split)
        rows = local_rows(g, users, inverse["user"][pairs["user_id"]])
        keep = rows >= 0
        if sample is not None:
            keep &= sample[pairs["user_id"]]
        out[split] = (rows[keep], inverse["item"][pairs["item_id"]][keep])
    return out
