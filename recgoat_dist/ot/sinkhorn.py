r"""Log-domain Sinkhorn with epsilon-scaling, one loop for every backend.

Problem (Cuturi 2013; Peyre & Cuturi 2019, Sec. 4): for clouds ``x`` (N, d), ``y`` (M, d) with
weights ``a`` (N,), ``b`` (M,) of equal mass and a cost ``C_ij = c(x_i, y_j)``,

    OT_eps(a, b) = min_{T >= 0, T 1 = a, T^T 1 = b}  <T, C> + eps KL(T | a b^T).

Its plan is ``T_ij = a_i b_j exp((f_i + g_j - C_ij) / eps)`` for the dual potentials ``f`` (N,),
``g`` (M,), and ``OT_eps = <a, f> + <b, g>`` at the optimum. The KL term differs from POT's
entropy ``sum T log T`` by a constant on couplings, so the plan is the one of
``ot.sinkhorn(a, b, ot.dist(x, y), reg=eps, method="sinkhorn_log")``.

Iteration (Sinkhorn in log domain, Peyre & Cuturi 2019, Remark 4.23; same order as POT):

    g_j <- -eps log sum_i a_i exp((f_i - C_ij) / eps)
    f_i <- -eps log sum_j b_j exp((g_j - C_ij) / eps)

after which rows are exact (``T 1 = a``). The column error ``||T^T 1 - b||_1`` of the current
``(f, g)`` is ``sum_j b_j |exp((g_j - g'_j) / eps) - 1|`` where ``g'`` is the next ``g``, so the
stopping rule costs nothing; we stop when it is below ``tol``. ``eps`` is annealed first
(``schedule.py``) with one iteration per temperature; the final iterations run at the target
``eps`` until the stopping rule holds, so the answer is that of plain Sinkhorn at ``eps``.

Gradients (Feydy et al. 2019, Sec. 3.3, the envelope theorem): at the optimum
``d OT_eps / d x_i = sum_j T_ij d C_ij / d x_i`` and ``d OT_eps / d a_i = f_i`` (``b``: ``g``).
We never backpropagate through iterations: after the loop, one barycentric pass per side gives
``T q`` and ``T^T p`` and a surrogate with exactly these gradients is attached to the outputs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch

from .chunked import ChunkedReduction
from .costs import CostFeatures, cost_features
from .dense import DenseReduction
from .inputs import prepare
from .schedule import eps_schedule

logger = logging.getLogger(__name__)


@dataclass
class SinkhornResult:
    """Solution of the entropic OT problem (see the module docstring for the conventions).

    ``cost`` is ``<T, C>`` and ``value`` is ``OT_eps = <a, f> + <b, g>``; both are 0-d tensors and,
    when the inputs require gradients, both carry the envelope-theorem gradient
    ``sum_j T_ij dC_ij/dx_i`` (the plan held fixed), which is the exact gradient of ``value``.
    ``marginal_error`` is ``||T^T 1 - b||_1`` (as POT's stopping rule, but L1): the last update is
    the one of ``f``, which makes the rows exact (``T 1 = a`` up to rounding). ``plan`` is the (N, M) plan, only
    when requested.
    """

    f: torch.Tensor
    g: torch.Tensor
    cost: torch.Tensor
    value: torch.Tensor
    n_iter: int
    marginal_error: float
    converged: bool
    eps: float
    backend: str
    plan: Optional[torch.Tensor] = None


def choose_backend(backend: str, n: int, m: int, device: torch.device, dense_max_elements: int) -> str:
    """``auto``: KeOps on CUDA when installed; else dense when ``n m`` is small, else chunked."""
    if backend != "auto":
        return backend
    if device.type == "cuda":
        from .keops import keops_available

        if keops_available():
            return "keops"
    return "dense" if n * m <= dense_max_elements else "chunked"


def make_reduction(name: str, p: torch.Tensor, q: torch.Tensor, block_entries: Optional[int]):
    if name == "dense":
        return DenseReduction(p, q)
    if name == "chunked":
        return ChunkedReduction(p, q) if block_entries is None else ChunkedReduction(p, q, block_entries)
    from .keops import KeOpsReduction

    return KeOpsReduction(p, q)


def sinkhorn(
    x,
    y,
    a=None,
    b=None,
    eps: float = 0.05,
    cost: str = "sqeuclidean",
    backend: str = "auto",
    max_iter: int = 1000,
    tol: float = 1e-5,
    *,
    scaling: Optional[float] = 0.5,
    return_plan: bool = False,
    max_plan_elements: int = 1 << 26,
    dense_max_elements: int = 1 << 25,
    block_entries: Optional[int] = None,
    init_g: Optional[torch.Tensor] = None,
) -> SinkhornResult:
    """Entropic OT between weighted clouds ``x`` (N, d) and ``y`` (M, d); see the module docstring.

    ``a``, ``b``: weights (default uniform ``1/N``, ``1/M``); equal total mass. ``eps``: entropic
    regularisation in cost units (POT's ``reg``). ``cost``: ``"sqeuclidean"`` (``|x - y|^2``) or
    ``"cosine"`` (``1 - cos``). ``backend``: ``"dense"``, ``"chunked"``, ``"keops"`` or ``"auto"``.
    ``max_iter`` bounds all iterations (annealing included; the schedule is shortened from the top
    when needed). ``tol`` bounds the L1 marginal error. ``scaling``: eps ratio between annealing
    steps, ``None`` for none. ``return_plan``: also return the dense plan, refused above
    ``max_plan_elements`` entries. ``auto`` picks dense up to ``dense_max_elements`` = N M (it
    stores 3 N M numbers); ``block_entries`` sets the chunked block size. ``init_g``: potentials
    ``g`` (M,) to start from (e.g. a previous solve's on nearby clouds) instead of annealing; the
    solution is the same fixed point, to ``tol``. Accepts torch tensors
    (any device) and numpy arrays; returns tensors on the device and in the dtype of ``x``
    (float32 unless float64 is given). Logs a warning when ``tol > 0`` is not reached.
    """
    x, y, a, b = prepare(x, y, a, b, eps, cost, backend)
    n, m = x.shape[0], y.shape[0]
    if return_plan and n * m > max_plan_elements:
        raise ValueError(f"a {n} x {m} plan exceeds max_plan_elements={max_plan_elements}")
    if max_iter < 1:
        raise ValueError("max_iter must be at least 1")
    name = choose_backend(backend, n, m, x.device, dense_max_elements)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, y, a, b))

    feats = cost_features(x, y, cost)
    with torch.no_grad():
        p, q = feats.p.detach(), feats.q.detach()
        alpha, beta = feats.alpha.detach(), feats.beta.detach()
        log_a, log_b = a.detach().log(), b.detach().log()
        red = make_reduction(name, p, q, block_entries)
        schedule = eps_schedule(feats.max_cost, eps, scaling)[-max_iter:] if init_g is None else []
        start = None if init_g is None else init_g.detach().to(device=x.device, dtype=x.dtype)
        if start is not None and start.shape != (m,):
            raise ValueError(f"init_g must have shape ({m},), got {tuple(start.shape)}")
        f, g, n_iter, converged = _iterate(red, feats.kappa, alpha, beta, log_a, log_b, eps, schedule, max_iter, tol,
                                           start)

        # One barycentric pass over columns: column sums c (the marginal error), T^T p and
        # T^T alpha give <T, C>; rows are exact after the last f-update, up to rounding.
        s = feats.kappa / eps
        ha = log_a + (f - alpha) / eps
        hb = log_b + (g - beta) / eps
        lse_c, avg_c = red.cols(ha, s, torch.cat([p, alpha[:, None]], 1))
        c = (hb + lse_c).exp()
        Tp = c[:, None] * avg_c[:, :-1]
        cost_value = (c * beta).sum() + (c * avg_c[:, -1]).sum() - feats.kappa * (q * Tp).sum()
        value = (a.detach() * f).sum() + (b.detach() * g).sum()
        marginal_error = float((c - b.detach()).abs().sum())
        converged = converged or marginal_error < tol
        plan = None
        if return_plan:
            plan = (ha[:, None] + hb[None, :] + s * (p @ q.T)).exp()
        if needs_grad:  # the other side, for the gradient in p
            lse_r, avg_r = red.rows(hb, s, torch.cat([q, beta[:, None]], 1))
            r = (ha + lse_r).exp()
            Tq = r[:, None] * avg_r[:, :-1]

    if needs_grad:
        surrogate = _envelope_surrogate(feats, a, b, f, g, r, c, Tq, Tp)
        cost_value = cost_value + surrogate
        value = value + surrogate

    level = logging.WARNING if tol > 0 and not converged else logging.INFO
    logger.log(level, "sinkhorn %s %dx%d eps=%g: %d iterations, marginal error %.3g%s",
               name, n, m, eps, n_iter, marginal_error, "" if converged else " (not converged)")
    return SinkhornResult(f, g, cost_value, value, n_iter, marginal_error, converged, eps, name, plan)


def _iterate(red, kappa, alpha, beta, log_a, log_b, eps, schedule, max_iter, tol, init_g=None):
    """The Sinkhorn loop; returns ``(f, g, n_iter, converged)``, rows exact. From ``init_g`` the
    loop starts with the ``f`` it prices at the target ``eps`` (no annealing)."""
    f = torch.zeros_like(alpha)
    g = torch.zeros_like(beta)
    temps = schedule + [eps] * (max_iter - len(schedule))
    b = log_b.exp()
    n_iter, prev = 0, None
    if init_g is not None:
        g = init_g
        f = alpha - eps * red.rows(log_b + (g - beta) / eps, kappa / eps)[0]
        prev = eps
    for t in temps:
        g_next = beta - t * red.cols(log_a + (f - alpha) / t, kappa / t)[0]
        if t == prev == eps:  # (f, g) is a target-eps state: g_next prices its column marginal
            if float((b * ((g - g_next) / eps).expm1().abs()).sum()) < tol:
                return f, g, n_iter, True
        g = g_next
        f = alpha - t * red.rows(log_b + (g - beta) / t, kappa / t)[0]
        n_iter, prev = n_iter + 1, t
    return f, g, n_iter, False


def _envelope_surrogate(feats: CostFeatures, a, b, f, g, r, c, Tq, Tp) -> torch.Tensor:
    """A zero-valued scalar whose gradient is the envelope gradient of ``OT_eps``.

    With ``C_ij = alpha_i + beta_j - kappa <p_i, q_j>`` and the plan ``T`` held fixed,
    ``d/dp_i = r_i d alpha_i/dp_i - kappa (T q)_i``, ``d/dq_j = c_j d beta_j/dq_j - kappa (T^T p)_j``
    (``r``, ``c``: row and column sums of ``T``); ``d/da = f``, ``d/db = g``. Autograd carries these
    through the features back to ``x`` and ``y`` (centring, normalisation).
    """
    s = (
        (r * feats.alpha).sum()
        + (c * feats.beta).sum()
        - feats.kappa * ((feats.p * Tq).sum() + (feats.q * Tp).sum())
        + (a * f).sum()
        + (b * g).sum()
    )
    return s - s.detach()
