"""Distributed training: Ray Train workers as DistDGL clients of graph servers in Ray actors.

Public API: :func:`run_distributed` (what ``recgoat train`` calls when ``cluster.num_workers >= 1``)
and :func:`fit` (the Ray Train run on an explicit partition set, used by it and by tests).
"""
from __future__ import annotations

from recgoat_dist.train.distributed.driver import fit, run_distributed

__all__ = ["fit", "run_distributed"]
