"""Full-ranking top-K evaluation with MMRec's protocol, blocked so memory stays bounded.

For each evaluated user: score every item, exclude the user's *training* items (and only those:
at test time MMRec does not mask validation items either), keep the top ``max(ks)``, and compare
with the held-out items. Per user, with ``hits_k`` the held-out items among the top ``k`` and
``n`` the number of held-out items (MMRec ``utils/metrics.py``):

* ``recall@k    = hits_k / n``
* ``precision@k = hits_k / k``
* ``ndcg@k      = sum_{r <= k, hit at r} 1/log2(r+1)  /  sum_{r <= min(n, k)} 1/log2(r+1)``
* ``map@k       = sum_{r <= k, hit at r} precision@r  /  min(n, k)``

and each metric is the mean over users. Users are evaluated in blocks of ``user_block`` and items
scored in blocks of ``item_block``, merging a running top-K, so the largest intermediate is
``user_block x (item_block + K)`` whatever the catalog size.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

METRICS = ("recall", "ndcg", "precision", "map")
DEFAULT_KS = (5, 10, 20, 50)


@dataclass
class UserItems:
    """Items per user in CSR form (``indices[indptr[u]:indptr[u+1]]`` sorted, no duplicates)."""

    indptr: np.ndarray   # (num_users + 1,) int64
    indices: np.ndarray  # (nnz,) int64
    num_items: int
    _keys: Optional[np.ndarray] = field(default=None, repr=False, compare=False)

    @classmethod
    def from_pairs(cls, users: np.ndarray, items: np.ndarray, num_users: int, num_items: int) -> "UserItems":
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        keys = np.unique(users * num_items + items)
        counts = np.bincount(keys // num_items, minlength=num_users)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(indptr, keys % num_items, int(num_items))

    @property
    def num_users(self) -> int:
        return len(self.indptr) - 1

    def degree(self) -> np.ndarray:
        return np.diff(self.indptr)

    def items_of(self, user: int) -> np.ndarray:
        return self.indices[self.indptr[user]:self.indptr[user + 1]]

    def rows(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(row, item)`` pairs of the given users, ``row`` indexing into ``users``."""
        starts, stops = self.indptr[users], self.indptr[users + 1]
        counts = stops - starts
        row = np.repeat(np.arange(len(users)), counts)
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        return row, self.indices[np.repeat(starts, counts) + offsets]

    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Elementwise: is ``items[i]`` one of ``users[i]``'s items (any broadcastable shapes)."""
        users, items = np.broadcast_arrays(np.asarray(users, np.int64), np.asarray(items, np.int64))
        keys = users.astype(np.int64) * self.num_items + items
        if self._keys is None:   # global keys are sorted: users ascending, items within a user
            self._keys = np.repeat(np.arange(self.num_users, dtype=np.int64), self.degree()) * self.num_items \
                + self.indices
        pos = np.minimum(np.searchsorted(self._keys, keys), max(len(self._keys) - 1, 0))
        return (self._keys[pos] == keys) if len(self._keys) else np.zeros(keys.shape, bool)

    def restrict_items(self, keep: np.ndarray) -> "UserItems":
        """Only the items with ``keep[item]`` True (e.g. the cold items)."""
        users = np.repeat(np.arange(self.num_users, dtype=np.int64), self.degree())
        mask = np.asarray(keep, bool)[self.indices]
        return UserItems.from_pairs(users[mask], self.indices[mask], self.num_users, self.num_items)


def ranking_metrics(hits: np.ndarray, num_relevant: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Mean recall/ndcg/precision/map@k over users from a (users, max_k) hit matrix."""
    hits = np.asarray(hits, dtype=np.float64)
    n = np.asarray(num_relevant, dtype=np.float64)[:, None]
    max_k = hits.shape[1]
    ranks = np.arange(1, max_k + 1, dtype=np.float64)
    cum_hits = np.cumsum(hits, axis=1)
    discount = 1.0 / np.log2(ranks + 1)
    dcg = np.cumsum(hits * discount, axis=1)
    ideal = np.cumsum(discount)
    ideal_len = np.minimum(n, ranks[None, :]).astype(np.int64)          # min(n, k) per user and k
    idcg = ideal[ideal_len - 1]
    ap = np.cumsum(hits * cum_hits / ranks, axis=1) / np.minimum(n, ranks[None, :])
    out: dict[str, float] = {}
    for k in ks:
        if k > max_k:
            raise ValueError(f"metric cut-off {k} exceeds the ranked list length {max_k}")
        c = k - 1
        out[f"recall@{k}"] = float(np.mean(cum_hits[:, c] / n[:, 0])) if len(hits) else 0.0
        out[f"ndcg@{k}"] = float(np.mean(dcg[:, c] / idcg[:, c])) if len(hits) else 0.0
        out[f"precision@{k}"] = float(np.mean(cum_hits[:, c] / k)) if len(hits) else 0.0
        out[f"map@{k}"] = float(np.mean(ap[:, c])) if len(hits) else 0.0
    return out


@torch.no_grad()
def topk_items(user_emb: torch.Tensor, item_emb: torch.Tensor, users: np.ndarray, exclude: UserItems,
               k: int, user_block: int = 1024, item_block: int = 65536) -> np.ndarray:
    """Top-``k`` items by dot product for each of ``users``, never returning an excluded item.

    ``user_emb`` (num_users, d) and ``item_emb`` (num_items, d). Returns (len(users), k) int64.
    """
    item_emb = item_emb.float()
    num_items = item_emb.shape[0]
    k_eff = min(k, num_items)
    out = np.empty((len(users), k_eff), dtype=np.int64)
    for u0 in range(0, len(users), user_block):
        block_users = np.asarray(users[u0:u0 + user_block], dtype=np.int64)
        q = user_emb[torch.from_numpy(block_users)].float()
        rows, masked = exclude.rows(block_users)
        best_v = torch.full((len(block_users), 0), -torch.inf)
        best_i = torch.zeros((len(block_users), 0), dtype=torch.long)
        for i0 in range(0, num_items, item_block):
            i1 = min(num_items, i0 + item_block)
            scores = q @ item_emb[i0:i1].T
            sel = (masked >= i0) & (masked < i1)
            scores[torch.from_numpy(rows[sel]), torch.from_numpy(masked[sel] - i0)] = -torch.inf
            vals = torch.cat([best_v, scores], dim=1)
            idx = torch.cat([best_i, torch.arange(i0, i1).expand(len(block_users), -1)], dim=1)
            best_v, pos = torch.topk(vals, min(k_eff, vals.shape[1]), dim=1)
            best_i = torch.gather(idx, 1, pos)
        out[u0:u0 + len(block_users)] = best_i.numpy()
    return out


def evaluate_ranking(user_emb: torch.Tensor, item_emb: torch.Tensor, train: UserItems, heldout: UserItems,
                     ks: Sequence[int] = DEFAULT_KS, user_block: int = 1024,
                     item_block: int = 65536) -> dict[str, float]:
    """MMRec protocol on one held-out split; ``num_users`` in the result counts evaluated users.

    Evaluated users: those with held-out items and at least one training item (MMRec drops the
    held-out interactions of users unseen in training, ``filter_out_cod_start_users``).
    """
    users = np.nonzero((heldout.degree() > 0) & (train.degree() > 0))[0]
    max_k = max(ks)
    if len(users) == 0:
        return {**{f"{m}@{k}": 0.0 for m in METRICS for k in ks}, "num_users": 0}
    top = topk_items(user_emb, item_emb, users, train, max_k, user_block, item_block)
    if top.shape[1] < max_k:      # tiny catalogs: pad with an impossible item id
        top = np.pad(top, ((0, 0), (0, max_k - top.shape[1])), constant_values=-1)
    hits = heldout.contains(users[:, None], np.maximum(top, 0)) & (top >= 0)
    result = ranking_metrics(hits, heldout.degree()[users], ks)
    result["num_users"] = int(len(users))
    return result


def print_metrics_table(metrics: dict) -> str:
    """A plain-text table of a run's ``metrics.json`` (rows split x metric, columns @K)."""
    splits = [s for s in ("valid", "test", "valid_cold", "test_cold") if isinstance(metrics.get(s), dict)]
    ks = sorted({int(key.split("@")[1]) for s in splits for key in metrics[s] if "@" in key})
    lines = []
    head = [f"model {metrics.get('model', '?')}"]
    if "best_epoch" in metrics:
        head.append(f"best epoch {metrics['best_epoch']} of {metrics.get('epochs_run', '?')}")
    if metrics.get("seconds_per_epoch") is not None:
        head.append(f"{metrics['seconds_per_epoch']:.2f} s/epoch")
    lines.append(", ".join(head))
    cost = metrics.get("step_cost")
    if cost:
        inputs = cost["input_nodes_per_step"]
        lines.append(f"step_cost ({cost['propagation']}): {cost['seconds_per_step']:.4f} s/step, "
                     f"{cost['edges_per_second']:.0f} training edges/s, {cost['seeds_per_step']:.0f} seeds/step, "
                     f"input nodes/step {inputs['user']:.0f} users + {inputs['item']:.0f} items "
                     f"(max {cost['input_nodes_max']['user']} + {cost['input_nodes_max']['item']})")
    header = f"{'split':<11}{'metric':<10}" + "".join(f"{'@' + str(k):>9}" for k in ks)
    lines.append(header)
    lines.append("-" * len(header))
    for split in splits:
        users = metrics[split].get("num_users")
        for m in METRICS:
            values = "".join(f"{metrics[split].get(f'{m}@{k}', float('nan')):>9.4f}" for k in ks)
            lines.append(f"{split:<11}{m:<10}{values}")
        if users is not None:
            lines.append(f"{'':<11}{'users':<10}{users:>9d}")
    return "\n".join(lines)
