"""Envelope-theorem gradients of the entropic OT value match finite differences."""
import pytest
import torch

from recgoat_dist.ot import sinkhorn
from recgoat_dist.ot.keops import keops_available

SOLVE = dict(eps=0.5, tol=1e-13, max_iter=20000)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _clouds(n=5, m=4, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(m, d, generator=g, dtype=torch.float64, requires_grad=True)
    return x, y


@pytest.mark.parametrize("backend,cost", [("dense", "sqeuclidean"), ("chunked", "cosine")])
def test_gradcheck_value(backend, cost):
    x, y = _clouds()
    a = torch.tensor([0.1, 0.3, 0.2, 0.25, 0.15], dtype=torch.float64)

    def value(x, y):
        return sinkhorn(x, y, a, cost=cost, backend=backend, **SOLVE).value

    assert torch.autograd.gradcheck(value, (x, y), atol=1e-7, rtol=1e-5)


def test_cost_carries_the_envelope_gradient():
    x, y = _clouds(seed=1)
    res = sinkhorn(x, y, **SOLVE)
    g_cost = torch.autograd.grad(res.cost, (x, y), retain_graph=True)
    g_value = torch.autograd.grad(res.value, (x, y))
    for u, v in zip(g_cost, g_value):
        torch.testing.assert_close(u, v)
    # <T, C> itself: the plan is held fixed, the value is <T, C> + eps KL(T | a b^T) >= <T, C>.
    assert res.value.item() >= res.cost.item()


def test_weight_gradient_is_the_potential():
    """d value / d a along a mass-preserving direction e_0 - e_1 is f_0 - f_1."""
    x, y = _clouds(seed=2)
    a = torch.full((5,), 0.2, dtype=torch.float64, requires_grad=True)
    res = sinkhorn(x.detach(), y.detach(), a, **SOLVE)
    (grad_a,) = torch.autograd.grad(res.value, a)
    h = 1e-6
    delta = torch.zeros(5, dtype=torch.float64)
    delta[0], delta[1] = h, -h
    plus = sinkhorn(x.detach(), y.detach(), a.detach() + delta, **SOLVE).value
    minus = sinkhorn(x.detach(), y.detach(), a.detach() - delta, **SOLVE).value
    numeric = (plus - minus).item() / (2 * h)
    assert abs((grad_a[0] - grad_a[1]).item() - numeric) < 1e-6


def test_no_graph_without_requires_grad():
    x, y = _clouds()
    res = sinkhorn(x.detach(), y.detach(), eps=0.5)
    assert not res.cost.requires_grad and not res.value.requires_grad


@pytest.mark.slow
@pytest.mark.skipif(not keops_available(), reason="pykeops not installed")
def test_keops_gradient_equals_dense():
    # d = 32, float64: the formulas compiled for the POT agreement tests are reused.
    x, y = _clouds(n=40, m=30, d=32, seed=3)
    grads = {}
    for backend in ("dense", "keops"):
        res = sinkhorn(x, y, eps=0.5, tol=1e-12, max_iter=5000, backend=backend)
        grads[backend] = torch.autograd.grad(res.value, (x, y))
    for u, v in zip(grads["dense"], grads["keops"]):
        torch.testing.assert_close(u, v, rtol=1e-9, atol=1e-11)
