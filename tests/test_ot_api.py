"""Boundary behaviour of ``sinkhorn``: inputs, backend choice, schedule, plan, devices."""
import os

import numpy as np
import pytest
import torch

from recgoat_dist.ot import SinkhornResult, eps_schedule, sinkhorn
from recgoat_dist.ot.keops import keops_available


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _xy(n=30, m=20, d=4, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randn(m, d, generator=g, dtype=dtype)


def test_numpy_and_torch_inputs_agree():
    x, y = _xy()
    a = np.random.default_rng(0).uniform(1, 2, 30)
    a /= a.sum()
    from_torch = sinkhorn(x, y, torch.from_numpy(a), eps=0.2, tol=1e-10)
    from_numpy = sinkhorn(x.numpy(), y.numpy(), a, eps=0.2, tol=1e-10)
    assert isinstance(from_numpy, SinkhornResult)
    assert from_numpy.f.dtype == torch.float64
    torch.testing.assert_close(from_numpy.f, from_torch.f)
    torch.testing.assert_close(from_numpy.cost, from_torch.cost)


def test_integer_input_becomes_float32():
    x = np.arange(12).reshape(6, 2)
    res = sinkhorn(x, x + 1, eps=50.0)
    assert res.f.dtype == torch.float32 and res.converged


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(eps=0.0), "eps"),
        (dict(cost="l1"), "cost"),
        (dict(backend="gpu"), "backend"),
        (dict(a=np.full(30, 1 / 31)), "same total mass"),
        (dict(a=-np.full(30, 1 / 30)), "non-negative"),
        (dict(b=np.ones(3)), "shape"),
        (dict(max_iter=0), "max_iter"),
    ],
)
def test_invalid_inputs_raise(kwargs, match):
    x, y = _xy()
    with pytest.raises(ValueError, match=match):
        sinkhorn(x, y, **kwargs)


def test_shape_and_finiteness_checks():
    x, y = _xy()
    with pytest.raises(ValueError):
        sinkhorn(x, y[:, :3])
    x[0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        sinkhorn(x, y)


def test_plan_only_on_request_and_when_it_fits():
    x, y = _xy()
    assert sinkhorn(x, y, eps=0.5).plan is None
    plan = sinkhorn(x, y, eps=0.5, return_plan=True, tol=1e-10).plan
    assert plan.shape == (30, 20)
    torch.testing.assert_close(plan.sum(0), torch.full((20,), 1 / 20, dtype=torch.float64))
    with pytest.raises(ValueError, match="max_plan_elements"):
        sinkhorn(x, y, return_plan=True, max_plan_elements=100)


def test_auto_backend_choice():
    x, y = _xy()
    assert sinkhorn(x, y, eps=0.5).backend == "dense"
    assert sinkhorn(x, y, eps=0.5, dense_max_elements=100).backend == "chunked"


def test_chunked_blocks_do_not_change_the_answer():
    x, y = _xy(n=300, m=200)
    ref = sinkhorn(x, y, eps=0.1, backend="dense", tol=0.0, max_iter=30)
    res = sinkhorn(x, y, eps=0.1, backend="chunked", tol=0.0, max_iter=30, block_entries=1000)
    torch.testing.assert_close(res.f, ref.f)
    torch.testing.assert_close(res.cost, ref.cost)


def test_eps_schedule():
    temps = eps_schedule(max_cost=16.0, eps=0.01, scaling=0.5)
    assert temps[0] == 16.0 and temps[-1] == 0.01
    assert all(u > v for u, v in zip(temps, temps[1:]))
    assert len(temps) == 12  # 16 * 0.5**10 = 0.0156 > 0.01 > 16 * 0.5**11
    assert eps_schedule(1.0, 2.0) == [2.0] and eps_schedule(16.0, 0.01, None) == [0.01]


def test_annealing_changes_the_path_not_the_answer():
    x, y = _xy(n=80, m=60)
    x, y = x / 3, y / 3
    annealed = sinkhorn(x, y, eps=0.05, tol=1e-10, max_iter=20000)
    plain = sinkhorn(x, y, eps=0.05, tol=1e-10, max_iter=20000, scaling=None)
    assert annealed.converged and plain.converged
    torch.testing.assert_close(annealed.cost, plain.cost, rtol=1e-7, atol=0)
    # max_iter bounds every iteration, annealing included
    assert sinkhorn(x, y, eps=0.02, max_iter=3).n_iter == 3


def test_keops_cache_folder_default():
    if not keops_available():
        pytest.skip("pykeops not installed")
    assert os.environ.get("KEOPS_CACHE_FOLDER")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_tensors_stay_on_device():
    x, y = _xy()
    res = sinkhorn(x.cuda(), y.cuda(), eps=0.5, backend="chunked")
    assert res.f.is_cuda and res.cost.is_cuda
