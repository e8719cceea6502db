"""Layer-wise inference and ranking evaluation over the distributed graph.

Inference is the model's own (:meth:`RecGOAT.inference`): here it gets the distributed callables.
Each worker computes hop ``k`` for its own partition's nodes from hop ``k-1`` of their neighbours
(pulled from the servers), writes it to the ``DistTensor`` layer tables, and waits for the others
before the next hop. No worker ever holds the graph or a whole layer table: the final vectors are
finished a block of rows at a time (:class:`FinalVectors`), so the largest things one holds are
the d-dim final vectors of every item and of the users it evaluates.

Evaluation follows MMRec's full-ranking protocol (``recgoat_dist.eval``): every metric is a mean
over evaluated users, so each worker evaluates its own users and the sums are all-reduced.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from recgoat_dist.model import USER_STREAM, LayerTables, full_representations
from recgoat_dist.train.distributed.model import NTYPES, NodeInputs, in_edges, pull_rows
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


class FinalVectors:
    """The vectors a run ranks and exports, finished from the layer tables a block of rows at a
    time: a block's user and item representations are pulled (:func:`full_representations` on
    those rows), :meth:`RecGOAT.final_embeddings` finishes them given the OAT landmark vectors
    (pulled once), and only the d-dim result is kept. Every row's vectors depend only on its own
    representations and the landmarks, so the result is the all-at-once one; pulling every table
    whole held ``(streams + 1) x (users + items) x d`` floats on each worker, several GB at 10^6.

    ``tables`` must hold the current model's layer-wise inference. ``pull(table_fn, ntype)``: all
    rows of ``ntype`` (used only to fit OAT potentials of a model that never trained, on every row
    as ``final_embeddings`` fits them). The model's landmarks must be picked (:func:`pull_landmarks`).
    """

    def __init__(self, model, tables: LayerTables, item_cold: torch.Tensor, pull, block: int = 65536):
        self.model, self.tables, self.item_cold, self.block = model, tables, item_cold, block
        self.num = {nt: tables.id[0][nt].shape[0] for nt in NTYPES}
        self.dim = tables.id[0]["user"].shape[1]
        self.one = torch.zeros(1, dtype=torch.int64)       # the other node type's side of a block
        self.landmarks = self.user_landmarks = None
        if model.oat is not None or model.user_oat is not None:
            ids = [model.landmark_idx, model.user_landmark_idx]
            if any(oat is not None and len(i) == 0 for oat, i in zip((model.oat, model.user_oat), ids)):
                raise ValueError("no OAT landmarks picked yet: call pull_landmarks first")
            item_ids, user_ids = (i.cpu() if len(i) else self.one for i in ids)
            reps = self._reps(user_ids, item_ids, with_streams=False)
            self.landmarks = reps.item_id if model.oat is not None else None
            self.user_landmarks = reps.user_id if model.user_oat is not None else None
        self._fit_untrained_potentials(pull)

    def _reps(self, users: torch.Tensor, items: torch.Tensor, with_streams: bool = True):
        ids = {"user": users, "item": items}
        reps = full_representations(self.tables, lambda fn, nt: fn(ids[nt]), with_streams=with_streams)
        reps.item_cold = None if self.item_cold is None else self.item_cold[items]
        return reps

    def _fit_untrained_potentials(self, pull) -> None:
        """What ``final_embeddings`` does for OAT potentials never stored: fit them on every row."""
        m = self.model
        item_fit = m.oat is not None and not bool(m.oat.potentials_ready.all())
        user_fit = (m.user_oat is not None and m.user_lm_weight != 0 and USER_STREAM in self.tables.streams
                    and not bool(m.user_oat.potentials_ready.all()))
        if not (item_fit or user_fit):
            return
        reps = full_representations(self.tables, pull)
        if user_fit:
            m.user_oat.fit_potentials({"lm": reps.user_lm}, self.user_landmarks)
        if item_fit:
            m.oat.fit_potentials(reps.item_modal, self.landmarks)

    def rows(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Final vectors of ``users`` and ``items`` (non-empty id tensors), on the CPU."""
        u, i = self.model.final_embeddings(self._reps(users, items), landmarks=self.landmarks,
                                           user_landmarks=self.user_landmarks)
        return u.cpu(), i.cpu()

    def users(self, ids: torch.Tensor) -> torch.Tensor:
        out = torch.empty(len(ids), self.dim)
        for lo in range(0, len(ids), self.block):
            out[lo:lo + self.block] = self.rows(ids[lo:lo + self.block], self.one)[0]
        return out

    def items(self, ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        ids = torch.arange(self.num["item"]) if ids is None else ids
        out = torch.empty(len(ids), self.dim)
        for lo in range(0, len(ids), self.block):
            out[lo:lo + self.block] = self.rows(self.one, ids[lo:lo + self.block])[1]
        return out


class UsersOnDemand:
    """``vectors[lo:hi]``: the final vectors of ``ids[lo:hi]``, computed when asked, so that the
    embeddings writer can write every user of a partition one file at a time."""

    def __init__(self, final: FinalVectors, ids: torch.Tensor):
        self.final, self.ids = final, ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, rows: slice) -> torch.Tensor:
        return self.final.users(self.ids[rows])


@torch.no_grad()
def pull_landmarks(model, graph, layers: LayerTables, item_cold: torch.Tensor, group=None) -> None:
    """Re-pick the OAT landmarks on rank 0 (k-means++ on full-graph ID representations, as the
    single-process engine does each epoch) and share them with every worker."""
    import torch.distributed as dist

    picked = [None]
    if dist.get_rank() == 0:
        picked = [pick_landmarks(model, layers, pull_rows, graph.num_nodes("user"), item_cold)]
    dist.broadcast_object_list(picked, src=0, group=group)
    device = model.landmark_idx.device
    model.landmark_idx, model.user_landmark_idx = (t.to(device) for t in picked[0])


def pick_landmarks(model, layers: LayerTables, pull, num_users: int, item_cold: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(item, user)`` landmark ids by the model's own choice (:meth:`RecGOAT.refresh_landmarks`),
    reading the representations of its candidate rows only, instead of every node's: at most
    ``LANDMARK_POOL`` per node type, drawn as the model draws them (warm items, when there are
    any). ``pull(table_fn, ids)``: the rows ``ids`` of ``table_fn``."""
    from recgoat_dist.model.recgoat import item_landmark_candidates, landmark_pool

    pools = {"item": item_landmark_candidates(len(item_cold), item_cold.cpu()),
             "user": landmark_pool(torch.arange(num_users))}
    reps = full_representations(layers, lambda fn, nt: pull(fn, pools[nt]), with_streams=False)
    reps.item_cold = None                    # the pool already left the cold items out
    model.refresh_landmarks(reps)
    return pools["item"][model.landmark_idx.cpu()], pools["user"][model.user_landmark_idx.cpu()]


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
