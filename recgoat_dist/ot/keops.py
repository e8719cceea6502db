"""KeOps backend: symbolic (LazyTensor) reductions, never materialising the kernel.

Same reductions as ``dense.py`` (see there for the formulas), written as KeOps ``logsumexp`` and
``sumsoftmaxweight`` reductions over ``h_j + <p_i, s q_j>``. Scaling ``q`` by ``s`` in torch keeps
the formula free of numeric constants, so every temperature of the annealing schedule and both
directions (rows, cols) reuse one compiled kernel per (dimension, dtype); the barycentric
reduction always uses ``d + 1`` weight columns so it is a second and last formula.

KeOps is optional: ``pykeops`` is imported on first use, with ``KEOPS_CACHE_FOLDER`` defaulting to
``~/.cache/recgoat_dist/keops`` (compiled formulas are reused across runs). It is the default on
CUDA; on CPU it works (and is tested) but is much slower than the chunked BLAS backend.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

import torch

from .dense import Reduced

logger = logging.getLogger(__name__)

_LAZY_TENSOR = None


def lazy_tensor_class():
    """``pykeops.torch.LazyTensor``, imported on first use; a clear error when KeOps is missing."""
    global _LAZY_TENSOR
    if _LAZY_TENSOR is None:
        os.environ.setdefault(
            "KEOPS_CACHE_FOLDER", os.path.join(os.path.expanduser("~"), ".cache", "recgoat_dist", "keops")
        )
        try:
            from pykeops.torch import LazyTensor
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(
                "backend='keops' needs pykeops (pip install pykeops) and a C++ compiler; "
                "use backend='chunked' or 'auto' instead"
            ) from err
        logger.info("KeOps cache folder: %s", os.environ["KEOPS_CACHE_FOLDER"])
        _LAZY_TENSOR = LazyTensor
    return _LAZY_TENSOR


def keops_available() -> bool:
    try:
        lazy_tensor_class()
    except ImportError:
        return False
    return True


def _reduce(p: torch.Tensor, q: torch.Tensor, h: torch.Tensor, s: float, v: Optional[torch.Tensor]) -> Reduced:
    LazyTensor = lazy_tensor_class()
    P = LazyTensor(p[:, None, :].contiguous())
    Q = LazyTensor((q * s)[None, :, :].contiguous())
    H = LazyTensor(h[None, :, None].contiguous())
    z = H + (P | Q)
    lse = z.logsumexp(dim=1).view(-1)
    if v is None:
        return lse, None
    return lse, z.sumsoftmaxweight(LazyTensor(v[None, :, :].contiguous()), dim=1)


class KeOpsReduction:
    """Reductions evaluated by KeOps; memory ``O((N + M) d)``."""

    name = "keops"

    def __init__(self, p: torch.Tensor, q: torch.Tensor):
        lazy_tensor_class()
        self.p, self.q = p.contiguous(), q.contiguous()

    def rows(self, h: torch.Tensor, s: float, v: Optional[torch.Tensor] = None) -> Reduced:
        return _reduce(self.p, self.q, h, s, v)

    def cols(self, h: torch.Tensor, s: float, v: Optional[torch.Tensor] = None) -> Reduced:
        return _reduce(self.q, self.p, h, s, v)
