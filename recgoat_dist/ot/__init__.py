"""Optimal transport for RecGOAT: entropic OT (Sinkhorn), OAT and CMCL alignment losses.

``sinkhorn``: log-domain Sinkhorn with eps-scaling and dense / chunked / KeOps reductions.
``OAT``: distribution-level alignment (mini-batch OT with a learnable plan residual, landmarks for
inference). ``cmcl_loss``: instance-level symmetric InfoNCE over all pairs of an item's views.
"""
from .cmcl import cmcl_loss
from .oat import OAT, OATOutput, select_landmarks
from .schedule import eps_schedule
from .sinkhorn import SinkhornResult, sinkhorn

__all__ = ["sinkhorn", "SinkhornResult", "OAT", "OATOutput", "select_landmarks", "cmcl_loss", "eps_schedule"]
