"""Chunked backend: row blocks of the kernel are recomputed by BLAS at every reduction.

Same reductions as ``dense.py`` (see there for the formulas), but the (N, M) matrix is never
allocated: for a block of ``r`` query points the logits ``h_j + s <p_i, q_j>`` are one
``addmm`` into an (r, M) buffer, reduced in place and dropped. Memory is
``O((N + M) d + r M)``; the block holds about ``block_entries`` numbers (16 MiB in float32 by
default: large enough for an efficient matrix product and few parallel regions per reduction,
small next to the clouds for the sizes this backend is for).
This is the CPU default for problems that do not fit the dense backend.
"""
from __future__ import annotations

from typing import Optional

import torch

from .dense import Reduced, logsumexp_


def block_rows(n_cols: int, budget: int) -> int:
    """Rows per block so that one (rows, n_cols) block holds about ``budget`` entries."""
    return max(8, budget // max(n_cols, 1))


def reduce_blocks(
    p: torch.Tensor,
    q: torch.Tensor,
    h: torch.Tensor,
    s: float,
    v: Optional[torch.Tensor],
    block_entries: int,
) -> Reduced:
    """``log sum_j exp(h_j + s <p_i, q_j>)`` for every row ``i`` of ``p``, block by block."""
    n = p.shape[0]
    lse = torch.empty(n, dtype=p.dtype, device=p.device)
    avg = None if v is None else torch.empty(n, v.shape[1], dtype=p.dtype, device=p.device)
    qt = q.T
    hb = h[None, :]
    step = block_rows(q.shape[0], block_entries)
    for i in range(0, n, step):
        z = torch.addmm(hb, p[i : i + step], qt, alpha=s)
        lse[i : i + step], a = logsumexp_(z, v)
        if avg is not None:
            avg[i : i + step] = a
    return lse, avg


class ChunkedReduction:
    """Reductions that never materialise the (N, M) kernel."""

    name = "chunked"

    def __init__(self, p: torch.Tensor, q: torch.Tensor, block_entries: int = 1 << 22):
        self.p, self.q = p, q
        self.block_entries = block_entries

    def rows(self, h: torch.Tensor, s: float, v: Optional[torch.Tensor] = None) -> Reduced:
        return reduce_blocks(self.p, self.q, h, s, v, self.block_entries)

    def cols(self, h: torch.Tensor, s: float, v: Optional[torch.Tensor] = None) -> Reduced:
        return reduce_blocks(self.q, self.p, h, s, v, self.block_entries)
