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


def sample_negatives(users: np.ndarray, train: UserItems, candidates: np.ndarray,
                     rng: np.random.Generator, max_rounds: int = 1000) -> np.ndarray:
    """One item per user, uniform over ``candidates`` minus the user's training items (rejection)."""
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
