"""Acceptance: every backend agrees with POT's log-domain Sinkhorn on 2,000 x 2,000 x 32 clouds.

POT reference: ``ot.sinkhorn(a, b, ot.dist(x, y), reg=eps, method="sinkhorn_log")`` in float64
with a tight stopping threshold; each (eps, weights) reference is solved once per module.
Criteria: relative difference of the cost <T, C> <= 1e-4, marginals <= 1e-5 (max abs), and the
plans themselves close in L1.
"""
import numpy as np
import pytest
import torch

from recgoat_dist.ot import sinkhorn
from recgoat_dist.ot.keops import keops_available

ot = pytest.importorskip("ot")

N, M, D = 2000, 2000, 32
keops = pytest.mark.skipif(not keops_available(), reason="pykeops not installed")

# Each backend sees two temperatures and both kinds of weights; KeOps on CPU is slow (about
# 0.3 s per iteration here), so it gets the two cheaper temperatures.
CASES = [
    pytest.param("dense", 0.5, False, id="dense-eps0.5-uniform"),
    pytest.param("dense", 0.1, True, id="dense-eps0.1-weighted"),
    pytest.param("chunked", 0.5, True, id="chunked-eps0.5-weighted"),
    pytest.param("chunked", 0.1, False, id="chunked-eps0.1-uniform"),
    pytest.param("keops", 0.5, True, id="keops-eps0.5-weighted", marks=[keops, pytest.mark.slow]),
    pytest.param("keops", 0.25, False, id="keops-eps0.25-uniform", marks=[keops, pytest.mark.slow]),
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def clouds():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D)) / np.sqrt(D)
    y = rng.normal(size=(M, D)) / np.sqrt(D) + 0.3 / np.sqrt(D)
    a = rng.uniform(0.5, 1.5, N)
    b = rng.uniform(0.5, 1.5, M)
    return x, y, a / a.sum(), b / b.sum()


@pytest.fixture(scope="module")
def pot_reference(clouds):
    x, y, a, b = clouds
    C = torch.from_numpy(ot.dist(x, y))
    cache = {}

    def solve(eps, weighted):
        if (eps, weighted) not in cache:
            wa = torch.from_numpy(a if weighted else np.full(N, 1.0 / N))
            wb = torch.from_numpy(b if weighted else np.full(M, 1.0 / M))
            G = ot.sinkhorn(wa, wb, C, eps, method="sinkhorn_log", numItermax=5000, stopThr=1e-10)
            cache[eps, weighted] = (G.numpy(), float((G * C).sum()), wa.numpy(), wb.numpy())
        return cache[eps, weighted]

    return solve


@pytest.mark.parametrize("backend,eps,weighted", CASES)
def test_agrees_with_pot(clouds, pot_reference, backend, eps, weighted):
    x, y, a, b = clouds
    G, pot_cost, wa, wb = pot_reference(eps, weighted)
    res = sinkhorn(
        torch.from_numpy(x), torch.from_numpy(y), wa if weighted else None, wb if weighted else None,
        eps=eps, backend=backend, tol=1e-9, max_iter=5000, return_plan=True,
    )
    assert res.backend == backend and res.converged
    T = res.plan.numpy()
    assert abs(res.cost.item() - pot_cost) / pot_cost <= 1e-4
    assert np.abs(T.sum(1) - wa).max() <= 1e-5
    assert np.abs(T.sum(0) - wb).max() <= 1e-5
    assert res.marginal_error <= 1e-9
    assert np.abs(T - G).sum() <= 1e-6
    assert res.f.shape == (N,) and res.g.shape == (M,) and res.cost.dim() == 0


def test_small_eps_is_stable_and_matches_pot():
    """eps = 0.005 with costs up to ~50: exp(-C/eps) underflows float64, the log domain does not."""
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(100, 2)), rng.normal(size=(120, 2)) + 0.5
    C = ot.dist(x, y)
    assert C.max() / 0.005 > 1000
    G = ot.sinkhorn(np.full(100, 0.01), np.full(120, 1 / 120), C, 0.005, method="sinkhorn_log",
                    numItermax=20000, stopThr=1e-11)
    res = sinkhorn(x, y, eps=0.005, tol=1e-10, max_iter=20000, return_plan=True)
    assert res.converged and torch.isfinite(res.f).all() and torch.isfinite(res.g).all()
    assert abs(res.cost.item() - (G * C).sum()) / (G * C).sum() <= 1e-4
    assert np.abs(res.plan.numpy() - G).sum() <= 1e-5


def test_cosine_cost_matches_pot():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(300, 16)), rng.normal(size=(250, 16)) + 0.2
    C = ot.dist(x, y, metric="cosine")
    G = ot.sinkhorn(np.full(300, 1 / 300), np.full(250, 1 / 250), C, 0.05, method="sinkhorn_log",
                    numItermax=20000, stopThr=1e-11)
    for backend in ("dense", "chunked"):
        res = sinkhorn(x, y, eps=0.05, cost="cosine", backend=backend, tol=1e-10, max_iter=20000, return_plan=True)
        assert abs(res.cost.item() - (G * C).sum()) / (G * C).sum() <= 1e-4
        assert np.abs(res.plan.numpy() - G).sum() <= 1e-6


def test_float32_converges_to_default_tol():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(1500, 64, generator=g) / 8, torch.randn(1000, 64, generator=g) / 8
    dense = sinkhorn(x, y, eps=0.05, backend="dense")
    chunked = sinkhorn(x, y, eps=0.05, backend="chunked", block_entries=1 << 16)
    for res in (dense, chunked):
        assert res.converged and res.marginal_error < 1e-5 and res.f.dtype == torch.float32
    assert abs(dense.cost.item() - chunked.cost.item()) <= 1e-5 * abs(dense.cost.item())


def test_warm_start_reaches_the_same_solution_in_fewer_iterations():
    """``init_g`` (a previous solve's potentials on nearby clouds, as OAT's steps have) changes the
    path, not the answer: the same potentials and cost as the annealed solve, to ``tol``."""
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(256, 64, generator=g, dtype=torch.float64), torch.randn(256, 64, generator=g, dtype=torch.float64)
    previous = sinkhorn(x, y, eps=0.1, cost="cosine", tol=1e-9, max_iter=2000)
    moved = x + 0.05 * torch.randn(256, 64, generator=g, dtype=torch.float64)
    cold = sinkhorn(moved, y, eps=0.1, cost="cosine", tol=1e-9, max_iter=2000)
    warm = sinkhorn(moved, y, eps=0.1, cost="cosine", tol=1e-9, max_iter=2000, init_g=previous.g)
    assert cold.converged and warm.converged and warm.n_iter < cold.n_iter
    assert abs(warm.cost.item() - cold.cost.item()) <= 1e-8 * abs(cold.cost.item())
    # potentials are defined up to a constant shift between f and g
    shift = (warm.g - cold.g).mean()
    torch.testing.assert_close(warm.g - shift, cold.g, rtol=0, atol=1e-7)
    torch.testing.assert_close(warm.f + shift, cold.f, rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="init_g must have shape"):
        sinkhorn(moved, y, eps=0.1, cost="cosine", init_g=previous.g[:10])
