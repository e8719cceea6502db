"""recgoat_dist: distributed training of RecGOAT, an LLM-enhanced multimodal recommender.

Stages (data flows one way): data -> graph -> ot/model -> train -> eval -> export.
"""
__version__ = "0.1.0"
