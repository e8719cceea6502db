"""Export a trained run: user and item embeddings and top-K recommendations, keyed by original ids.

``from recgoat_dist.export.recommendations import export_run`` (kept out of this ``__init__`` so
that the CLI does not import torch to print its help).
"""
