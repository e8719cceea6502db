"""Row-wise Adam for the ``DistEmbedding`` ID tables: each row is updated by its owner, in place.

The rule is DGL's distributed ``SparseAdam``'s (and :class:`recgoat_dist.train.row_adam.RowAdam`'s,
which the single-process engine uses): a step count per row, bias correction with that count, and
rows the step did not touch left alone. As in DGL's, gradients of one row from several lookups
of a step (several workers, or several lookups in one worker) are averaged.

Why not DGL's ``SparseAdam``: it keeps the step count and both moments in three ``DistTensor``\\ s
and reaches them, and the weights, through the KV store: per table and step four pulls and four
pushes, and every push sorts its ids by partition. That was 22% of a 1-worker step (py-spy, 200k
items). Here

* the two moments and the step count of a row are one row of a ``(N, 2d + 1)`` table
  (``<table>_adam``) with the table's partitioning;
* each gradient row goes to the rank that owns it (one ``all_to_all`` over the gloo group, as
  DGL's routing does), and that rank updates its rows in its partition's shared memory
  (``DistTensor.local_partition``: the memory its server serves, which DGL's own local push writes)
  with the single-process engine's update (:func:`recgoat_dist.train.row_adam.adam_rows`).

So rank ``r`` must run on the machine that holds partition ``r``, the placement DGL's optimiser also
assumes and the driver makes (checked when the optimiser is built).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from recgoat_dist.train.row_adam import adam_rows, sorted_rows, state_width

STATE_SUFFIX = "_adam"


def init_state(shape, dtype):
    """``DistTensor`` initialiser (module level: DGL pickles it to the servers): no step taken."""
    return torch.zeros(shape, dtype=dtype)


class OwnerRowAdam:
    """Adam over ``tables`` (``{name: DistEmbedding}``), called after ``backward()``."""

    def __init__(self, tables: dict, lr: float, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
                 group: Optional[object] = None):
        from dgl.distributed import DistTensor

        self.tables, self.lr, self.betas, self.eps, self.group = tables, lr, betas, eps, group
        self.rank = dist.get_rank(group) if dist.is_initialized() else 0
        self.world = dist.get_world_size(group) if dist.is_initialized() else 1
        self.state = {}
        for key, emb in tables.items():
            if emb.part_policy.part_id != self.rank:
                raise RuntimeError(f"rank {self.rank} holds partition {emb.part_policy.part_id} of {emb.name}: "
                                   "the sparse optimiser needs rank r on partition r's machine")
            self.state[key] = DistTensor((emb.num_embeddings, state_width(emb.embedding_dim)), torch.float32,
                                         name=emb.name + STATE_SUFFIX, init_func=init_state,
                                         part_policy=emb.part_policy, is_gdata=False)

    @torch.no_grad()
    def step(self) -> None:
        """Apply the gradients the tables' lookups received since the last step, then forget them."""
        for key, emb in self.tables.items():
            ids, grads = traced_gradients(emb)
            emb.reset_trace()       # DGL's tables keep every traced lookup until told otherwise
            if self.world > 1:
                ids, grads = self._to_owners(emb, ids, grads)
            self._update(emb, self.state[key], ids, grads)
        if self.world > 1:
            # The next step's lookups read rows other ranks own: their updates must be in place.
            dist.barrier(group=self.group)

    def _to_owners(self, emb, ids: torch.Tensor, grads: torch.Tensor):
        owner = emb.part_policy.to_partid(ids)
        order = torch.argsort(owner)
        ids, grads = ids[order], grads.index_select(0, order)
        send = torch.bincount(owner, minlength=self.world)
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send, group=self.group)
        send_sizes, recv_sizes = send.tolist(), recv.tolist()
        own_ids = torch.empty(sum(recv_sizes), dtype=ids.dtype)
        own_grads = torch.empty(sum(recv_sizes), grads.shape[1], dtype=grads.dtype)
        dist.all_to_all_single(own_ids, ids, recv_sizes, send_sizes, group=self.group)
        dist.all_to_all_single(own_grads, grads, recv_sizes, send_sizes, group=self.group)
        return own_ids, own_grads

    def _update(self, emb, state_table, ids: torch.Tensor, grads: torch.Tensor) -> None:
        if len(ids) == 0:
            return
        rows, g = sorted_rows(emb.part_policy.to_local(ids), grads, average=True)
        adam_rows(state_table.local_partition, emb.weight.local_partition, rows, g, self.lr, self.betas, self.eps)

    # ---- checkpoints: the state rows of the nodes a rank owns, by global id -------------------
    def state_rows(self, ids: dict) -> dict:
        return {key: self.state[key][ids[key]] for key in self.tables}

    def load_state_rows(self, ids: dict, rows: dict) -> None:
        for key in self.tables:
            self.state[key][ids[key]] = rows[key]


def traced_gradients(emb) -> tuple[torch.Tensor, torch.Tensor]:
    """The ids a ``DistEmbedding`` looked up since its trace was reset, with their rows' gradients."""
    ids, grads = [], []
    for idx, rows in emb._trace:
        if rows.grad is not None:
            ids.append(idx)
            grads.append(rows.grad)
    if not ids:     # this rank's batch did not use the table; other ranks may still send it rows
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, emb.embedding_dim)
    return torch.cat(ids).cpu(), torch.cat(grads).cpu()
