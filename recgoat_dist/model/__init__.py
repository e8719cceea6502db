"""RecGOAT and its variants as DGL modules that run on a full graph or on sampled blocks."""
from recgoat_dist.model.lightgcn import DEGREE_KEY, LightGCN, bpr_loss, embedding_l2, lightgcn_weights, propagate
from recgoat_dist.model.recgoat import KNN_REFINES, VARIANTS, LossParts, RecGOAT, Representations, build_model
from recgoat_dist.model.inference import (ITEM_GRAPH, USER_STREAM, LayerTables, content_streams,
                                          full_representations)
from recgoat_dist.model.streams import FeatureStream

__all__ = ["DEGREE_KEY", "ITEM_GRAPH", "USER_STREAM", "FeatureStream", "KNN_REFINES", "LayerTables", "content_streams",
           "full_representations", "LightGCN", "LossParts", "RecGOAT", "Representations", "VARIANTS",
           "bpr_loss", "build_model", "embedding_l2", "lightgcn_weights", "propagate"]
