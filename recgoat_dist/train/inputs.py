"""What single-process training reads: the graph, content features, and the evaluation splits.

The graph artifact's ``rates`` edges are the only interactions training sees; they are checked
against the dataset's splits so a graph carrying a validation or test interaction is refused.
Validation and test interactions are read only into :class:`UserItems` used by evaluation.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from recgoat_dist.config import Config, ConfigError
from recgoat_dist.data.dataset import DataError, Dataset
from recgoat_dist.eval import UserItems

logger = logging.getLogger(__name__)


@dataclass
class TrainingInputs:
    graph: "object"                        # dgl heterograph (user, item; rates, rated_by, knn_*, uu)
    num_users: int
    num_items: int
    train: UserItems                       # training interactions (= the graph's rates edges)
    valid: UserItems
    test: UserItems
    cold_items: np.ndarray                 # bool (num_items,): no training interaction
    item_feats: dict[str, torch.Tensor]    # modality -> (num_items, F), standardised
    user_feats: Optional[torch.Tensor]     # (num_users, F) standardised, or None
    dataset_url: str
    graph_url: str
    graph_meta: dict = field(default_factory=dict)     # the graph manifest (knn_k, user_knn_k, ...)

    @property
    def item_feature_dims(self) -> dict[str, int]:
        return {m: int(x.shape[1]) for m, x in self.item_feats.items()}

    @property
    def user_feature_dim(self) -> Optional[int]:
        return None if self.user_feats is None else int(self.user_feats.shape[1])


def standardise(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Column z-scores (content features only: no interaction enters these statistics)."""
    x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    return (x - x.mean(0)) / x.std(0).clamp(min=1e-6)


def load_graph(graph_url: str):
    """The heterograph of a graph artifact (``recgoat_dist.graph.build_heterograph``)."""
    from recgoat_dist.graph import build_heterograph
    return build_heterograph(graph_url)


def pick_user_modality(graph, requested: Optional[str]) -> Optional[str]:
    """The user LM modality a model trains with: the requested one (an error if the graph lacks it),
    else ``text``, else the only one; None when there is none or the choice is ambiguous."""
    names = sorted(k for k in graph.nodes["user"].data.keys() if not k.startswith("_"))
    if requested is not None:
        if requested not in names:
            raise ConfigError(f"config key model.user_modality: {requested!r} is not a user modality "
                              f"of the dataset ({names or 'none'})")
        return requested
    if "text" in names:
        return "text"
    return names[0] if len(names) == 1 else None


def eval_user_mask(num_users: int, eval_users: int, seed: int) -> Optional[np.ndarray]:
    """``train.eval_users``: which dataset users are evaluated (a seeded sample, the same for every
    engine and partitioning), or None when all are."""
    if eval_users <= 0 or eval_users >= num_users:
        return None
    mask = np.zeros(num_users, dtype=bool)
    mask[np.random.default_rng(seed).choice(num_users, size=eval_users, replace=False)] = True
    return mask


def load_inputs(config: Config, graph=None) -> TrainingInputs:
    """Read everything training needs; ``graph`` may be passed in (tests, already built)."""
    if not config.data.graph and graph is None:
        raise ConfigError("config key data.graph: a graph URL is required (build one with `recgoat graph`)")
    if graph is None:
        graph = load_graph(config.data.graph)
    dataset_url, graph_meta = config.data.dataset, {}
    if config.data.graph:
        from recgoat_dist.graph import GraphArtifact
        artifact = GraphArtifact(config.data.graph)
        dataset_url, graph_meta = dataset_url or artifact.dataset_url, dict(artifact.manifest)
    ds = Dataset(dataset_url)
    num_users, num_items = graph.num_nodes("user"), graph.num_nodes("item")
    if (ds.num_users, ds.num_items) != (num_users, num_items):
        raise DataError(f"graph has {num_users} users / {num_items} items but dataset {ds.url} has "
                        f"{ds.num_users} / {ds.num_items}")
    src, dst = (t.numpy() for t in graph.edges(etype="rates"))
    train = UserItems.from_pairs(src, dst, num_users, num_items)
    splits = {name: ds.interactions(name) for name in ("train", "valid", "test")}
    _check_no_leak(train, splits, ds.url)
    sample = eval_user_mask(num_users, config.train.eval_users, config.train.seed)
    heldout = {}
    for name in ("valid", "test"):
        users, items = splits[name]["user_id"], splits[name]["item_id"]
        if sample is not None:
            keep = sample[users]
            users, items = users[keep], items[keep]
        heldout[name] = UserItems.from_pairs(users, items, num_users, num_items)

    feats = {}
    knn = {e[len("knn_"):] for e in graph.etypes if e.startswith("knn_")}
    wanted = config.model.modalities if config.model.modalities is not None else sorted(knn)
    for m in wanted:
        if m not in knn or m not in graph.nodes["item"].data:
            raise ConfigError(f"config key model.modalities: {m!r} needs item features and a knn_{m} graph "
                              f"(graph has knn for {sorted(knn) or 'none'})")
        feats[m] = standardise(graph.nodes["item"].data[m])
    user_modality = pick_user_modality(graph, config.model.user_modality)
    user_feats = None
    if user_modality is not None:
        user_feats = standardise(graph.nodes["user"].data[user_modality])
    cold = np.bincount(dst, minlength=num_items) == 0
    logger.info("training on %d interactions (%d users, %d items, %d cold); item modalities %s; user LM %s",
                len(src), num_users, num_items, int(cold.sum()), list(feats) or "none", user_modality or "none")
    return TrainingInputs(graph, num_users, num_items, train, heldout["valid"], heldout["test"], cold, feats,
                          user_feats, ds.url, config.data.graph or "", graph_meta)


def _check_no_leak(train: UserItems, splits: dict, source: str) -> None:
    """Every training edge is a training interaction; none is a validation or test one."""
    real_train = UserItems.from_pairs(splits["train"]["user_id"], splits["train"]["item_id"],
                                      train.num_users, train.num_items)
    users = np.repeat(np.arange(train.num_users), train.degree())
    if not real_train.contains(users, train.indices).all():
        raise DataError(f"{source}: the graph's rates edges include pairs that are not training interactions")
    for name in ("valid", "test"):
        if train.contains(splits[name]["user_id"], splits[name]["item_id"]).any():
            raise DataError(f"{source}: the graph's rates edges include {name} interactions")
