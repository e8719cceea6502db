"""Training: ``recgoat train`` (single process here; ``train.distributed`` for Ray + DistDGL).

Heavy imports are deferred: ``from recgoat_dist.train import train_single, Run`` loads torch/DGL
only when used.
"""
from __future__ import annotations

__all__ = ["Run", "train_single", "publish_run"]


def __getattr__(name):
    if name == "train_single":
        from recgoat_dist.train.single import train_single
        return train_single
    if name in ("Run", "publish_run"):
        from recgoat_dist.train import run
        return getattr(run, name)
    raise AttributeError(name)
