"""Hyper-parameter search on Ray Tune: ``recgoat tune --config FILE --space FILE --trials N --out URL``.

``space.py`` parses and checks the search space, ``trial.py`` trains one sampled config and reports
each epoch's validation score, ``runner.py`` runs the trials on Ray, ``publish.py`` writes the best
config, the trials table and plot. See docs/tune.md.
"""
from recgoat_dist.tune.space import SearchSpace, SpaceError, load_space, parse_space

__all__ = ["SearchSpace", "SpaceError", "load_space", "parse_space"]
