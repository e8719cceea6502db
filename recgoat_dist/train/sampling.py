"""BPR triples: every training interaction once per epoch, one uniform negative per positive."""
from __future__ import annotations

from typing import Iterator

import numpy as np

from recgoat_dist.eval import UserItems


def negative_candidates(train: UserItems, mode: str = "train_items") -> np.ndarray:
    """Items negatives are drawn from: those seen in training (MMRec) or the whole catalog."""
    if mode == "all":
        return np.arange(train.num_items, dtype=np.int64)
    return np.unique(train.indices)


def sample_negatives(users: np.ndarray, train, candidates: np.ndarray,
                     rng: np.random.Generator, max_rounds: int = 1000) -> np.ndarray:
    """One item per user, uniform over ``candidates`` minus the user's training items (rejection).

    ``train``: anything with ``contains(users, items)`` (:class:`UserItems`, or the distributed
    engine's per-batch adjacency)."""
    neg = candidates[rng.integers(0, len(candidates), len(users))]
    bad = train.contains(users, neg)
    for _ in range(max_rounds):
        if not bad.any():
            return neg
        redo = np.nonzero(bad)[0]
        neg[redo] = candidates[rng.integers(0, len(candidates), len(redo))]
        bad[redo] = train.contains(users[redo], neg[redo])
    raise ValueError(f"could not sample negatives for {int(bad.sum())} users: they interacted with (nearly) "
                     "every candidate item")


def bpr_batches(train: UserItems, candidates: np.ndarray, batch_size: int,
                rng: np.random.Generator) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Shuffled ``(users, positives, negatives)`` batches covering every training pair once."""
    users = np.repeat(np.arange(train.num_users, dtype=np.int64), train.degree())
    order = rng.permutation(len(users))
    users, pos = users[order], train.indices[order]
    neg = sample_negatives(users, train, candidates, rng)
    for start in range(0, len(users), batch_size):
        stop = start + batch_size
        yield users[start:stop], pos[start:stop], neg[start:stop]


def num_batches(train: UserItems, batch_size: int) -> int:
    return -(-len(train.indices) // batch_size)


def sampled_hops(fanouts: list[int], gat_layers: int) -> int:
    """How many neighbour hops a ``sampled`` step draws: ``len(train.fanouts)``, and at least as
    many as the GAT layers (each GAT layer needs one hop of its similarity graph)."""
    return max(len(fanouts), gat_layers, 1)


def block_fanouts(etypes, fanouts: list[int], hops: int, knn_fanout: int, user_knn_fanout: int,
                  content_hops: int = 0) -> list[dict]:
    """Per-hop ``{canonical etype: fanout}`` for DGL's ``NeighborSampler`` (outermost hop first).

    ``rates``/``rated_by`` take ``train.fanouts`` (the last value repeats for extra hops); the
    KNN item graphs take the graph's ``knn_k`` and the user-user graph its ``user_knn_k``: a KNN
    graph is symmetrised, so hubs have more than k in-edges, and k bounds what a seed pulls in.
    ``content_hops`` more hops go outermost, for the item streams' GAT alone
    (``model.content_entry=input``): they draw the KNN item graphs only, every other relation 0.
    """
    per_hop = (list(fanouts) + list(fanouts[-1:]) * hops)[:hops]
    out = []
    for f in reversed(per_hop):            # NeighborSampler lists the hop nearest the seeds last
        hop = {}
        for canonical in etypes:
            name = canonical[1]
            hop[canonical] = f if name in ("rates", "rated_by") else (
                user_knn_fanout if name == "uu" else knn_fanout)
        out.append(hop)
    content = {c: (knn_fanout if c[1].startswith("knn_") else 0) for c in etypes}
    return [dict(content) for _ in range(content_hops)] + out


def step_sampler(etypes, fanouts: list[int], gat_layers: int, model, knn_k: int, user_knn_k: int):
    """DGL's ``NeighborSampler`` of a ``sampled`` step, the same for both engines: one hop per
    ``train.fanouts`` entry, and at least one per GAT layer and per item-graph layer of ``model``
    (``model.knn_hops``); per-hop fanouts from :func:`block_fanouts`. With
    ``content_entry=input``, ``model.content_hops`` KNN-only hops more, outermost."""
    import dgl

    hops = sampled_hops(fanouts, max(gat_layers, model.knn_hops))
    content_hops = getattr(model, "content_hops", 0)
    fanouts = block_fanouts(etypes, fanouts, hops, knn_k, user_knn_k, content_hops)
    if content_hops:
        # DGL 2.1's fused CPU sampler drops a node type from a block's sources when none of its
        # edges was drawn (the content hops draw no user edges), though its destinations keep it;
        # the unfused path keeps them, as the ID hops need the users' rows.
        return dgl.dataloading.NeighborSampler(fanouts, fused=False)
    return dgl.dataloading.NeighborSampler(fanouts)


class SeedBatch:
    """The seeds of one BPR batch: its users and items (and the OAT landmarks), deduplicated, with
    each triple's positions among them (the order DGL keeps for a block's output nodes)."""

    def __init__(self, users, pos, neg, landmark_items=None, landmark_users=None):
        import torch

        as_t = (lambda a: torch.as_tensor(np.asarray(a), dtype=torch.int64))
        items = [as_t(pos), as_t(neg)] + ([landmark_items.cpu()] if landmark_items is not None else [])
        people = [as_t(users)] + ([landmark_users.cpu()] if landmark_users is not None else [])
        self.items, item_pos = torch.unique(torch.cat(items), return_inverse=True)
        self.users, user_pos = torch.unique(torch.cat(people), return_inverse=True)
        b = len(users)
        self.user_pos, self.pos_pos, self.neg_pos = user_pos[:b], item_pos[:b], item_pos[b:2 * b]
        self.landmark_pos = item_pos[2 * b:] if landmark_items is not None else None
        self.user_landmark_pos = user_pos[b:] if landmark_users is not None else None

    @property
    def seeds(self) -> dict:
        return {"user": self.users, "item": self.items}

    @property
    def num_seeds(self) -> int:
        return len(self.users) + len(self.items)
