"""Warm start of a night's candidate from the champion, remapped by original id.

The candidate's model is built for the new version's sizes (:func:`recgoat_dist.model.build_model`)
and its state dict filled from the champion's best checkpoint:

* **ID rows** (``id.user``, ``id.item``) are copied by *original* id through both versions' id maps
  (stable ids make this a prefix copy, but nothing here relies on it).
* **New items** with content start from their content transported into the ID space: a full-graph forward of the
  warm-started model on the new graph gives each new item's content-stream representation, and the
  champion's OAT maps it onto the landmark items' ID representations (with the landmark potentials
  the champion learnt): the same estimate the model ranks a cold item with. Without OAT the learned
  ``gamma``-weighted content sum; an ID-only model (``lightgcn``), or a new item the delta sent no
  content for, keeps its random initial row (trained on its ID alone).
* **New users** start from their LM features transported the same way onto the landmark users; a
  user whose LM features were missing from the delta (or a model without a user stream) starts from
  the mean of their training items' ID rows.
* **Dense weights** (content streams, GAT, OAT residuals and potentials, landmark indices, gammas)
  carry over unchanged: their shapes do not depend on the catalogue.
* **Optimiser state is reset** (see docs/nightly.md): the trainer's entry point takes model
  weights only, and Adam moments were accumulated for a graph whose normalisation has changed.

Approximation: the transported vector is an estimate of a *final* (layer-mean) LightGCN
representation; it is written into the layer-0 (ego) row, which then propagates.
"""
from __future__ import annotations

import logging
import time
from typing import Optional

import numpy as np
import torch

from recgoat_dist.config import Config, ConfigError
from recgoat_dist.data.dataset import Dataset
from recgoat_dist.train.inputs import pick_user_modality, standardise

logger = logging.getLogger(__name__)
ID_ROWS = {"id.user": "user", "id.item": "item"}


def _row_map(old_ids: np.ndarray, new_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(new rows, old rows) of the ids both versions know."""
    index = {str(v): i for i, v in enumerate(old_ids)}
    pairs = [(n, index[str(v)]) for n, v in enumerate(new_ids) if str(v) in index]
    if not pairs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    new_rows, old_rows = (np.array(p, np.int64) for p in zip(*pairs))
    return new_rows, old_rows


def warm_start_state(champion_run_url: str, config: Config, graph_url: str,
                     without_user_content: Optional[list[str]] = None,
                     without_item_content: Optional[list[str]] = None) -> tuple[dict, dict]:
    """``({"model": state_dict}, stats)`` for a model of ``config`` on the graph at ``graph_url``."""
    from recgoat_dist.graph import GraphArtifact, build_heterograph
    from recgoat_dist.model import build_model
    from recgoat_dist.train.run import Run

    start = time.perf_counter()
    champion = Run(champion_run_url)
    ckpt = champion.checkpoint("best")
    old_config = champion.config
    if old_config.model != config.model:
        raise ConfigError(f"{champion_run_url}: the champion's model section differs from the config; a warm "
                          "start needs the same model settings (run `recgoat nightly init` for a new model)")
    old_state = ckpt["model"]
    old_ds = Dataset(old_config.data.dataset or GraphArtifact(old_config.data.graph).dataset_url)
    new_ds = Dataset(GraphArtifact(graph_url).dataset_url)

    graph = build_heterograph(graph_url)
    knn = sorted(e[len("knn_"):] for e in graph.etypes if e.startswith("knn_"))
    modalities = config.model.modalities if config.model.modalities is not None else knn
    item_feats = {m: standardise(graph.nodes["item"].data[m]) for m in modalities}
    user_mod = pick_user_modality(graph, config.model.user_modality)   # the trainer's rule
    user_feats = standardise(graph.nodes["user"].data[user_mod]) if user_mod else None
    torch.manual_seed(config.train.seed)
    model = build_model(config.model, new_ds.num_users, new_ds.num_items, {m: int(x.shape[1]) for m, x in
                                                                           item_feats.items()},
                        None if user_feats is None else int(user_feats.shape[1]))
    state = model.state_dict()
    stats: dict = {}
    known = {}
    for key, kind in ID_ROWS.items():
        new_rows, old_rows = _row_map(old_ds.original_ids(kind), new_ds.original_ids(kind))
        state[key][torch.from_numpy(new_rows)] = old_state[key][torch.from_numpy(old_rows)]
        mask = np.zeros(len(state[key]), bool)
        mask[new_rows] = True
        known[kind] = mask
        stats[f"{kind}s_copied"] = int(len(new_rows))
    for key, value in old_state.items():
        if key in ID_ROWS:
            continue
        if key not in state:
            raise ConfigError(f"{champion_run_url}: checkpoint entry {key} has no place in the new model")
        if state[key].shape != value.shape and not key.endswith(("landmark_idx", "landmark_potentials")):
            raise ConfigError(f"{champion_run_url}: checkpoint entry {key} has shape {tuple(value.shape)}, the new "
                              f"model {tuple(state[key].shape)}")
        state[key] = value.clone()
    model.load_state_dict(state)
    new_items = np.nonzero(~known["item"])[0]
    if without_item_content:       # no content in the delta: their content row is a stand-in, keep the ID init
        blank = set(without_item_content)
        names = new_ds.original_ids("item")
        stats["new_items_without_content"] = int(sum(str(names[i]) in blank for i in new_items))
        new_items = np.array([i for i in new_items if str(names[i]) not in blank], np.int64)
    new_users = np.nonzero(~known["user"])[0]
    with torch.no_grad():
        _init_new_rows(model, graph, item_feats, user_feats, new_items, new_users, known, new_ds,
                       set(without_user_content or []), stats)
    stats["seconds"] = round(time.perf_counter() - start, 3)
    logger.info("warm start from %s: %s", champion.url, stats)
    return {"model": model.state_dict()}, stats


def _init_new_rows(model, graph, item_feats, user_feats, new_items, new_users, known, new_ds,
                   without_user_content: set, stats: dict) -> None:
    if not len(new_items) and not len(new_users):
        return
    model.eval()
    nodes = {"user": torch.arange(graph.num_nodes("user")), "item": torch.arange(graph.num_nodes("item"))}
    reps = model([graph] * model.num_graph_layers, nodes, item_feats, user_feats)
    reps.item_cold = torch.from_numpy(~known["item"])
    items_t = torch.from_numpy(new_items)
    content = None
    if len(new_items) and model.oat is not None and len(model.landmark_idx):
        landmarks = reps.item_id[model.landmark_idx]
        gamma = model.oat.gamma()
        content = sum(gamma[m] * model.oat.transport(m, reps.item_modal[m][items_t], landmarks)
                      for m in model.oat.modalities)
    elif len(new_items) and model.gamma is not None:
        content = sum(model.gamma[m] * reps.item_modal[m][items_t] for m in model.modalities)
    if content is not None:
        model.id.item.data[items_t] = content
    stats["new_items_from_content"] = int(len(new_items)) if content is not None else 0
    stats["new_items_random"] = (int(len(new_items)) - stats["new_items_from_content"]
                                 + stats.get("new_items_without_content", 0))

    names = new_ds.original_ids("user")
    lm_ok = np.array([str(names[u]) not in without_user_content for u in new_users], bool)
    from_lm = new_users[lm_ok] if reps.user_lm is not None else new_users[:0]
    if len(from_lm):
        lm = reps.user_lm[torch.from_numpy(from_lm)]
        if model.user_oat is not None and len(model.user_landmark_idx):
            lm = model.user_oat.transport("lm", lm, reps.user_id[model.user_landmark_idx])
        model.id.user.data[torch.from_numpy(from_lm)] = lm
    rest = np.setdiff1d(new_users, from_lm)
    if len(rest):
        src, dst = (t.numpy() for t in graph.edges(etype="rates"))
        for u in rest:
            items = dst[src == u]
            if len(items):
                model.id.user.data[int(u)] = model.id.item.data[torch.from_numpy(items)].mean(0)
    stats["new_users_from_lm"] = int(len(from_lm))
    stats["new_users_from_items"] = int(len(rest))
