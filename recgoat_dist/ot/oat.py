r"""OAT: distribution-level alignment of modality embeddings to ID embeddings by optimal transport.

For a modality ``m`` with source embeddings ``x`` (B, d) (weights ``a = 1/B``) and targets ``t``
(L, d) (weights ``b = 1/L``: the batch's ID embeddings, or a fixed set of *landmarks*):

1. Sinkhorn (``sinkhorn.py``) gives the entropic plan ``T0 = a_i b_j exp((f_i + g_j - C_ij)/eps)``
   and the Wasserstein term ``W_m = <T0, C>`` (the loss, differentiable in ``x`` and ``t``).
2. The *adapted plan* adds a learnable residual to the log-plan and re-projects every row onto the
   source weight (rows of a valid coupling sum to ``a_i``):

       T_ij = a_i softmax_j( log b_j + (g_j - C_ij) / eps + Delta_ij ),
       Delta_ij = residual_scale * tanh( xhat_i^T R_m that_j )       (hats: L2-normalised),

   with ``R_m`` (d, d) initialised at zero, so training starts from ``T = T0`` (the row-wise
   softmax of ``log T0`` is ``T0 / a`` because ``f`` makes the rows of ``T0`` exact) and the
   correction to each log-ratio stays within ``+-2 residual_scale``.
3. The transported source is the barycentric projection ``xt_i = (1/a_i) sum_j T_ij t_j``, and
   ``fused = id_emb + sum_m gamma_m xt^m`` with ``gamma = softmax(gamma_logits)`` (``fusion="simplex"``,
   the content's total weight is 1) or ``gamma = gamma_logits`` (``"free"``: one weight per modality,
   starting at 1/M, so the content's total weight is learned too).

Row ``i`` of step 2 depends only on ``x_i``, the targets and their potentials ``g`` (Pooladian &
Niles-Weed 2021, "entropic maps"), which is what makes inference possible for *every* catalog
item, cold-start ones included, in memory independent of the catalog size. With landmarks
(``select_landmarks``) the module keeps the landmark potentials ``g`` per modality as a buffer:
in training it is refreshed from each batch's Sinkhorn solution (exponential average with
``momentum``; 1 = the latest batch, i.e. exactly the mini-batch plan) *before* it is used, and
``transport`` uses the stored buffer. Training forward and ``transport`` therefore share one
definition and, for the same items and landmarks, give the same result. ``fit_potentials`` sets
the buffer from a larger sample before export (cf. semi-discrete OT, Genevay et al. 2016).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .sinkhorn import sinkhorn


FUSIONS = ("simplex", "free")   # how the modality weights gamma_m are parametrised


@dataclass
class OATOutput:
    fused: torch.Tensor  # (B, d)
    transported: Dict[str, torch.Tensor]  # name -> (B, d)
    loss: torch.Tensor  # 0-d: sum over modalities of <T0, C>
    gamma: Dict[str, torch.Tensor]  # name -> 0-d, sums to 1
    plans: Dict[str, torch.Tensor]  # name -> adapted plan (B, L), rows sum to 1/B


def select_landmarks(
    id_emb: torch.Tensor, num_landmarks: int, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Indices (L,) of ``min(num_landmarks, N)`` distinct rows of ``id_emb`` (N, d), by k-means++
    seeding (D^2 sampling, Arthur & Vassilvitskii 2007) so landmarks cover the ID space.
    ``generator`` must live on ``id_emb``'s device. Use ``landmarks = id_emb[idx]`` for both
    training and ``transport``. Time ``O(N L d)``, memory ``O(N)``.
    """
    x = id_emb.detach()
    n = x.shape[0]
    count = min(int(num_landmarks), n)
    chosen = torch.empty(count, dtype=torch.long, device=x.device)
    chosen[0] = torch.randint(n, (1,), generator=generator, device=x.device)
    d2 = torch.full((n,), float("inf"), dtype=x.dtype, device=x.device)
    for k in range(1, count):
        d2 = torch.minimum(d2, ((x - x[chosen[k - 1]]) ** 2).sum(1))
        d2[chosen[:k]] = 0.0
        weights = d2 if float(d2.sum()) > 0 else (d2 == d2).to(x.dtype).index_fill_(0, chosen[:k], 0.0)
        chosen[k] = torch.multinomial(weights, 1, generator=generator)
    return chosen


class OAT(nn.Module):
    """Optimal Adaptive Transport of modality embeddings onto ID embeddings (module docstring)."""

    def __init__(
        self,
        modalities: Sequence[str],
        dim: int,
        eps: float = 0.1,
        num_landmarks: int = 256,
        residual_scale: float = 1.0,
        *,
        cost: str = "cosine",
        momentum: float = 1.0,
        max_iter: int = 200,
        tol: float = 1e-5,
        fusion: str = "simplex",
    ):
        super().__init__()
        if not modalities:
            raise ValueError("OAT needs at least one modality")
        self.modalities = list(modalities)
        self.dim, self.eps, self.num_landmarks = dim, eps, num_landmarks
        self.residual_scale, self.cost, self.momentum = residual_scale, cost, momentum
        self.max_iter, self.tol = max_iter, tol
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; choose one of {FUSIONS}")
        self.fusion = fusion
        # simplex: gamma = softmax(logits), the content's total weight is 1; free: each modality's
        # weight is its own parameter (starting at the simplex's 1/M), so the total can grow or shrink.
        start = 0.0 if fusion == "simplex" else 1.0 / len(self.modalities)
        self.gamma_logits = nn.Parameter(torch.full((len(self.modalities),), start))
        self.residual = nn.ParameterDict({m: nn.Parameter(torch.zeros(dim, dim)) for m in self.modalities})
        self.register_buffer("landmark_potentials", torch.zeros(len(self.modalities), num_landmarks))
        self.register_buffer("potentials_ready", torch.zeros(len(self.modalities), dtype=torch.bool))

    def gamma(self) -> Dict[str, torch.Tensor]:
        weights = torch.softmax(self.gamma_logits, 0) if self.fusion == "simplex" else self.gamma_logits
        return {m: weights[k] for k, m in enumerate(self.modalities)}

    def forward(
        self, modality_emb: Mapping[str, torch.Tensor], id_emb: torch.Tensor, landmarks: Optional[torch.Tensor] = None
    ) -> OATOutput:
        targets = id_emb if landmarks is None else landmarks
        gamma = self.gamma()
        loss, potentials = self.align(modality_emb, targets, store=landmarks is not None)
        transported, plans = {}, {}
        for k, m in enumerate(self.modalities):
            g = self.landmark_potentials[k].clone() if landmarks is not None else potentials[m]
            transported[m], plans[m] = self.adapted_transport(m, modality_emb[m], targets, g)
        fused = self.fuse(id_emb, transported, gamma)
        return OATOutput(fused, transported, loss, gamma, plans)

    def align(self, modality_emb: Mapping[str, torch.Tensor], targets: torch.Tensor, store: bool = True
              ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Step 1 only: ``(sum_m W_m, {m: g_m})`` from one Sinkhorn solve per modality.

        With ``store`` (``targets`` are the landmarks) the potentials ``g`` also refresh the stored
        landmark potentials that :meth:`transport` uses (in training, or when none are stored yet).
        """
        loss, potentials = targets.new_zeros(()), {}
        for k, m in enumerate(self.modalities):
            # In training the landmarks barely move between steps, so the stored potentials are a
            # warm start close to this batch's solution (the answer is the same, to ``tol``).
            warm = store and self.training and bool(self.potentials_ready[k]) \
                and self.landmark_potentials.shape[1] == targets.shape[0]
            solved = sinkhorn(modality_emb[m], targets, eps=self.eps, cost=self.cost, max_iter=self.max_iter,
                              tol=self.tol, init_g=self.landmark_potentials[k] if warm else None)
            loss = loss + solved.cost
            potentials[m] = solved.g.detach()
            if store and (self.training or not bool(self.potentials_ready[k])):
                self._store_potentials(k, potentials[m])
        return loss, potentials

    def fuse(self, id_emb: torch.Tensor, transported: Mapping[str, torch.Tensor], gamma=None) -> torch.Tensor:
        """``id_emb + sum_m gamma_m transported_m``."""
        gamma = self.gamma() if gamma is None else gamma
        return id_emb + sum(gamma[m] * transported[m] for m in self.modalities)

    def adapted_transport(
        self, name: str, x: torch.Tensor, targets: torch.Tensor, g: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(xt, T)``: barycentric projection (B, d) and adapted plan (B, L) of step 2-3."""
        logits = g.to(x.dtype) / self.eps - _row_cost(x, targets, self.cost) / self.eps
        xhat, that = F.normalize(x, dim=1), F.normalize(targets, dim=1)
        logits = logits + self.residual_scale * torch.tanh(xhat @ self.residual[name].to(x.dtype) @ that.T)
        weights = torch.softmax(logits, 1)  # log b_j = -log L is constant along a row
        return weights @ targets, weights / x.shape[0]

    @torch.no_grad()
    def fit_potentials(self, modality_emb: Mapping[str, torch.Tensor], landmarks: torch.Tensor) -> None:
        """Set the landmark potentials of each modality from a (large) sample of its embeddings."""
        self.potentials_ready.zero_()
        for k, m in enumerate(self.modalities):
            solved = sinkhorn(
                modality_emb[m], landmarks, eps=self.eps, cost=self.cost, max_iter=self.max_iter, tol=self.tol
            )
            self._store_potentials(k, solved.g)

    def transport(self, name: str, x: torch.Tensor, landmarks: torch.Tensor, batch_size: int = 65536) -> torch.Tensor:
        """Transported embeddings (N, d) of any items ``x`` (N, d) onto ``landmarks`` (L, d), in
        blocks of ``batch_size`` rows: memory ``O(batch_size L)`` besides the output."""
        k = self.modalities.index(name)
        if not bool(self.potentials_ready[k]):
            raise RuntimeError(
                f"no landmark potentials for {name!r}: run forward(..., landmarks=...) or fit_potentials()"
            )
        if landmarks.shape[0] != self.landmark_potentials.shape[1]:
            raise ValueError(f"expected {self.landmark_potentials.shape[1]} landmarks, got {landmarks.shape[0]}")
        g = self.landmark_potentials[k].clone()
        blocks = [
            self.adapted_transport(name, x[i : i + batch_size], landmarks, g)[0]
            for i in range(0, x.shape[0], batch_size)
        ]
        return torch.cat(blocks) if blocks else x.new_zeros(0, landmarks.shape[1])

    def _store_potentials(self, k: int, g: torch.Tensor) -> None:
        g = g.detach().to(self.landmark_potentials.dtype)
        if g.shape[0] != self.landmark_potentials.shape[1]:
            if bool(self.potentials_ready.any()):
                raise ValueError(f"expected {self.landmark_potentials.shape[1]} landmarks, got {g.shape[0]}")
            self.landmark_potentials = self.landmark_potentials.new_zeros(len(self.modalities), g.shape[0])
        if bool(self.potentials_ready[k]) and self.momentum < 1.0:
            g = (1.0 - self.momentum) * self.landmark_potentials[k] + self.momentum * g
        self.landmark_potentials[k] = g
        self.potentials_ready[k] = True


def _row_cost(x: torch.Tensor, t: torch.Tensor, cost: str) -> torch.Tensor:
    """``C_ij`` up to terms constant along row ``i`` (which a row softmax ignores)."""
    if cost == "cosine":
        return -F.normalize(x, dim=1) @ F.normalize(t, dim=1).T
    if cost == "sqeuclidean":
        return (t * t).sum(1)[None, :] - 2.0 * x @ t.T
    raise ValueError(f"unknown cost {cost!r}")
