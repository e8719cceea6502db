"""Ground costs written as a rank-(d+2) form that every backend reduces with one kernel.

Both supported costs can be written, for points ``x_i`` and ``y_j``, as

    C_ij = alpha_i + beta_j - kappa * <p_i, q_j>

with *cost features* ``p = phi(x)``, ``q = phi(y)``:

* ``"sqeuclidean"``: ``C_ij = |x_i - y_j|^2`` (POT's ``ot.dist`` default, no 1/2 factor);
  ``p = x - c``, ``q = y - c`` for a common centre ``c`` (the cost is translation invariant,
  and centring keeps ``|p|^2`` small, which limits float32 cancellation), ``alpha = |p|^2``,
  ``beta = |q|^2``, ``kappa = 2``.
* ``"cosine"``: ``C_ij = 1 - <x_i, y_j> / (|x_i| |y_j|)`` (POT's ``metric="cosine"``);
  ``p = x / |x|``, ``q = y / |y|``, ``alpha = beta = 1/2``, ``kappa = 1``.

Because ``alpha_i`` is constant along a row and ``beta_j`` along a column, a soft-min over ``j``
of ``h_j - C_ij / eps`` only needs ``log-sum-exp_j (h'_j + (kappa / eps) <p_i, q_j>)``: one matrix
product per block, which is what BLAS (and KeOps) do fastest.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

COSTS = ("sqeuclidean", "cosine")


@dataclass
class CostFeatures:
    """``C_ij = alpha[i] + beta[j] - kappa * p[i] @ q[j]``; ``max_cost`` bounds ``C`` from above."""

    p: torch.Tensor  # (N, d)
    q: torch.Tensor  # (M, d)
    alpha: torch.Tensor  # (N,)
    beta: torch.Tensor  # (M,)
    kappa: float
    max_cost: float

    def matrix(self) -> torch.Tensor:
        """The dense (N, M) cost matrix (small problems and tests only)."""
        return self.alpha[:, None] + self.beta[None, :] - self.kappa * self.p @ self.q.T


def cost_features(x: torch.Tensor, y: torch.Tensor, cost: str) -> CostFeatures:
    """Features of ``cost`` for clouds ``x`` (N, d) and ``y`` (M, d); differentiable in x and y."""
    if cost == "sqeuclidean":
        # A detached centre: C(x - c, y - c) == C(x, y) identically, so gradients are unchanged.
        centre = torch.cat([x, y]).detach().mean(0)
        p, q = x - centre, y - centre
        alpha, beta = (p * p).sum(1), (q * q).sum(1)
        with torch.no_grad():
            lo = torch.minimum(p.min(0).values, q.min(0).values)
            hi = torch.maximum(p.max(0).values, q.max(0).values)
            diameter_sq = float(((hi - lo) ** 2).sum())
        return CostFeatures(p, q, alpha, beta, 2.0, max(diameter_sq, 1e-12))
    if cost == "cosine":
        p, q = F.normalize(x, dim=1), F.normalize(y, dim=1)
        half = 0.5
        alpha = torch.full((x.shape[0],), half, dtype=x.dtype, device=x.device)
        beta = torch.full((y.shape[0],), half, dtype=y.dtype, device=y.device)
        return CostFeatures(p, q, alpha, beta, 1.0, 2.0)
    raise ValueError(f"cost must be one of {COSTS}, got {cost!r}")
