"""Validation and conversion of user inputs: the only place where arrays become tensors.

The math modules (``costs``, ``schedule``, the backends, the solver loop) assume what this module
guarantees: ``x`` (N, d) and ``y`` (M, d) are floating tensors of one dtype (float32 or float64)
on one device, ``a`` (N,) and ``b`` (M,) are non-negative weights of equal, positive total mass.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

from .costs import COSTS

BACKENDS = ("auto", "dense", "chunked", "keops")


def as_tensor(value, name: str, dtype: Optional[torch.dtype] = None, device=None) -> torch.Tensor:
    """A torch tensor from a tensor, numpy array or sequence; floating point (float32/float64)."""
    if isinstance(value, torch.Tensor):
        t = value
    elif isinstance(value, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(value))
    else:
        try:
            t = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{name} must be a torch tensor or a numpy array, got {type(value).__name__}") from err
    if dtype is None:
        dtype = t.dtype if t.dtype in (torch.float32, torch.float64) else torch.float32
    return t.to(dtype=dtype, device=device if device is not None else t.device)


def _weights(w, n: int, name: str, like: torch.Tensor) -> torch.Tensor:
    if w is None:
        return torch.full((n,), 1.0 / n, dtype=like.dtype, device=like.device)
    w = as_tensor(w, name, dtype=like.dtype, device=like.device)
    if w.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(w.shape)}")
    with torch.no_grad():
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
            raise ValueError(f"{name} must be finite and non-negative")
        if float(w.sum()) <= 0:
            raise ValueError(f"{name} must have a positive total mass")
    return w


def prepare(x, y, a, b, eps: float, cost: str, backend: str) -> Tuple[torch.Tensor, ...]:
    """Checked ``(x, y, a, b)`` tensors for ``sinkhorn``; raises ``ValueError``/``TypeError``."""
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {COSTS}, got {cost!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if not (np.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a positive number, got {eps}")
    x, y = as_tensor(x, "x"), as_tensor(y, "y")
    if x.device != y.device:
        raise ValueError(f"x and y must be on the same device, got {x.device} and {y.device}")
    if x.dtype != y.dtype:
        dtype = torch.promote_types(x.dtype, y.dtype)
        x, y = x.to(dtype), y.to(dtype)
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must be (N, d) and (M, d), got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] == 0 or y.shape[0] == 0:
        raise ValueError("x and y must be non-empty")
    with torch.no_grad():
        if not (bool(torch.isfinite(x).all()) and bool(torch.isfinite(y).all())):
            raise ValueError("x and y must be finite")
    a = _weights(a, x.shape[0], "a", x)
    b = _weights(b, y.shape[0], "b", x)
    mass_a, mass_b = float(a.detach().sum()), float(b.detach().sum())
    if abs(mass_a - mass_b) > 1e-5 * max(mass_a, mass_b):
        raise ValueError(f"a and b must have the same total mass, got {mass_a} and {mass_b}")
    return x, y, a, b
