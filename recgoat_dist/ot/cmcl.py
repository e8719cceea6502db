"""CMCL: instance-level cross-modal contrastive alignment (symmetric InfoNCE).

For views ``z^1 ... z^V`` (each (B, d), row ``i`` = item ``i``), L2-normalised, and a pair of views
``(u, v)`` with logits ``s_ik = <u_i, v_k> / tau``:

    InfoNCE(u -> v) = -1/B sum_i log softmax_k(s_ik)[k = i]

The pair loss is ``(InfoNCE(u -> v) + InfoNCE(v -> u)) / 2`` (in-batch negatives, both directions;
van den Oord et al. 2018, CLIP: Radford et al. 2021), and ``cmcl_loss`` is its mean over all
unordered pairs of views (ID-text, ID-visual, text-visual, ...). Minimising it pulls the views of
the same item together and pushes those of different items apart.
"""
from __future__ import annotations

from itertools import combinations
from typing import Sequence

import torch
import torch.nn.functional as F


def cmcl_loss(views: Sequence[torch.Tensor], temperature: float = 0.2) -> torch.Tensor:
    """Mean symmetric InfoNCE over all unordered pairs of ``views`` (each (B, d)); a 0-d tensor."""
    if len(views) < 2:
        raise ValueError(f"cmcl_loss needs at least two views, got {len(views)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    shape = views[0].shape
    if len(shape) != 2 or any(v.shape != shape for v in views):
        raise ValueError(f"all views must be (B, d) of one shape, got {[tuple(v.shape) for v in views]}")
    z = [F.normalize(v, dim=1) for v in views]
    labels = torch.arange(shape[0], device=views[0].device)
    pair_losses = []
    for u, v in combinations(z, 2):
        logits = u @ v.T / temperature
        pair_losses.append(0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)))
    return torch.stack(pair_losses).mean()
