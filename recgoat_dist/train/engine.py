"""The single-process engine: a local DGL heterograph and the model's own tables, on one device.

``full`` propagation keeps dense ID tables and one Adam (MMRec's LightGCN setting). ``sampled``
keeps the ID tables as sparse-gradient embeddings updated row-wise (:class:`.row_adam.RowAdam`,
the rule of DGL's ``SparseAdam``, as the distributed engine's ``OwnerRowAdam``), so neither the
forward pass nor the optimiser step touches rows outside the batch's neighbourhood, and LightGCN's deeper
layers read the historical tables of the last layer-wise inference (refreshed every
``train.refresh_every`` steps and at each epoch).
"""
from __future__ import annotations

import logging
import time
from functools import partial
from typing import Optional

import numpy as np
import torch

from recgoat_dist.config import Config, ConfigError
from recgoat_dist.eval import evaluate_ranking
from recgoat_dist.model import LayerTables, RecGOAT, USER_STREAM, full_representations
from recgoat_dist.storage import join
from recgoat_dist.train import checkpoint as ckpt
from recgoat_dist.train.inputs import TrainingInputs
from recgoat_dist.train.loop import Progress
from recgoat_dist.train.row_adam import RowAdam
from recgoat_dist.train.sampling import (SeedBatch, bpr_batches, negative_candidates, num_batches,
                                         step_sampler)
from recgoat_dist.train.steps import InputRows, SampledObjective, attach_degrees, landmark_seeds, sampled_loss

logger = logging.getLogger(__name__)
LAST, BEST = "checkpoints/last.pt", "checkpoints/best.pt"


def resolve_device(name: str) -> torch.device:
    """``train.device``: ``auto`` is CUDA when available; ``cuda`` without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key train.device: 'cuda' was asked for but no CUDA device is available "
                          "(torch.cuda.is_available() is False); use train.device=cpu or auto")
    return torch.device(name)


def resolve_propagation(config: Config, num_edges: int, distributed: bool) -> str:
    """``train.propagation``: ``auto`` is ``full`` up to ``train.full_max_edges`` training edges
    in one process, else ``sampled``; distributed workers always sample."""
    mode = config.train.propagation
    if mode == "full" and distributed:
        raise ConfigError("config key train.propagation: 'full' runs every stream on the whole graph in one "
                          "process; distributed workers (cluster.num_workers >= 1) need 'sampled' or 'auto'")
    if mode == "auto":
        mode = "sampled" if distributed or num_edges > config.train.full_max_edges else "full"
        logger.info("train.propagation auto -> %s (%d training edges, full up to %d%s)", mode, num_edges,
                    config.train.full_max_edges, ", distributed" if distributed else "")
    if mode == "sampled" and config.train.weight_decay:
        raise ConfigError("config key train.weight_decay: sampled propagation updates ID rows sparsely "
                          "(row-wise Adam), which has no weight decay; set it to 0 or use propagation=full")
    return mode


def model_meta(inputs: TrainingInputs) -> dict:
    """What :func:`build_model` needs besides the config (stored in every checkpoint)."""
    return {"num_users": inputs.num_users, "num_items": inputs.num_items,
            "item_feature_dims": inputs.item_feature_dims, "user_feature_dim": inputs.user_feature_dim}


class LocalEngine:
    """One process: a local heterograph, dense tensors, any device."""

    show_progress: bool
    can_evaluate = True

    def __init__(self, config: Config, inputs: TrainingInputs, model: RecGOAT, out: str,
                 rng: np.random.Generator, device: Optional[torch.device] = None):
        t = config.train
        self.config, self.inputs, self.out, self.rng = config, inputs, out, rng
        self.device = device or resolve_device(t.device)
        self.propagation = resolve_propagation(config, len(inputs.train.indices), distributed=False)
        self.model = model.to(self.device)
        self.item_feats = {m: x.to(self.device) for m, x in inputs.item_feats.items()}
        self.user_feats = inputs.user_feats.to(self.device) if inputs.user_feats is not None else None
        self.item_cold = torch.from_numpy(inputs.cold_items).to(self.device)
        self.candidates = negative_candidates(inputs.train, t.negatives)
        total = num_batches(inputs.train, t.batch_size)
        self.steps_per_epoch = min(total, t.max_steps_per_epoch) if t.max_steps_per_epoch else total
        self.show_progress = t.progress
        self.degree = training_degrees(inputs)
        self.tables = local_tables(model, inputs, config.model.dim, self.device)
        self.fresh = False          # the tables hold the current model's layer-wise inference
        if self.propagation == "full":
            self.graph = inputs.graph.to(self.device) if self.device.type != "cpu" else inputs.graph
            self.optimizers = {"dense": torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)}
        else:
            self.graph = inputs.graph
            model.id.sparse_grad = True
            ids = [model.id.user, model.id.item]
            dense = [p for p in model.parameters() if all(p is not q for q in ids)]
            self.optimizers = {"sparse": RowAdam(ids, lr=t.lr)}
            if dense:
                self.optimizers["dense"] = torch.optim.Adam(dense, lr=t.lr)
            self.objective = SampledObjective(model)
            meta = inputs.graph_meta
            self.sampler = step_sampler(inputs.graph.canonical_etypes, t.fanouts, config.model.gat_layers, model,
                                        meta.get("knn_k", 10), meta.get("user_knn_k", 10))
        self.refresh_every = t.refresh_every

    # ---- what the loop calls ------------------------------------------------------------------
    def start_epoch(self, epoch: int) -> None:
        self.model.train()
        if self.propagation == "sampled" and not self.fresh:
            self.refresh()
        if self.model.oat is not None or self.model.user_oat is not None:
            with torch.no_grad():
                reps = self.full_forward() if self.propagation == "full" else self.representations()
                self.model.refresh_landmarks(reps)
        self.fresh = False

    def batches(self, epoch: int):
        t = self.config.train
        if self.propagation == "sampled":
            import dgl
            dgl.seed(int(self.rng.integers(0, 2**31 - 1)))   # DGL's sampler RNG, from ours (checkpointed)
        for step, batch in enumerate(bpr_batches(self.inputs.train, self.candidates, t.batch_size, self.rng)):
            if step == self.steps_per_epoch:
                return
            yield batch

    def step(self, batch, global_step: int) -> tuple[dict, int, int, dict]:
        users, pos, neg = batch
        for opt in self.optimizers.values():
            opt.zero_grad()
        if self.propagation == "full":
            batch = (torch.from_numpy(a).to(self.device) for a in (users, pos, neg))
            out = self.model.loss(self.full_forward(), *batch)
            total, parts = out.total, out.parts
            inputs = {"user": self.inputs.num_users, "item": self.inputs.num_items}
            seeds = inputs["user"] + inputs["item"]
        else:
            if self.refresh_every and global_step % self.refresh_every == 0 and global_step:
                self.refresh()
            seed = SeedBatch(users, pos, neg, *landmark_seeds(self.model))
            total, parts, inputs = sampled_loss(self.objective, self.graph, self.sampler, seed, self.batch_features,
                                                lambda nt, ids: self.degree[nt][ids], self.tables.history,
                                                self.device)
            seeds = seed.num_seeds
        total.backward()
        for opt in self.optimizers.values():
            opt.step()
        return {"loss": float(total), **parts}, len(users), seeds, inputs

    def evaluate(self, splits: tuple = ("valid",), cold: bool = False) -> dict:
        users, items = self.embeddings()
        self.fresh = True
        return evaluate_splits(users, items, self.inputs, self.config, splits, cold)

    def save_best(self, epoch: int) -> None:
        ckpt.save(join(self.out, BEST), {**self._meta(epoch), "model": self.model.state_dict()})

    def checkpoint(self, progress: Progress, last: bool) -> None:
        ckpt.save(join(self.out, LAST), {**self._meta(progress.next_epoch - 1), "model": self.model.state_dict(),
                                         "optimizer": {k: o.state_dict() for k, o in self.optimizers.items()},
                                         "rng": ckpt.rng_state(self.rng), "progress": progress.to_dict()})

    def restore_best(self, progress: Progress) -> None:
        self.model.load_state_dict(ckpt.load(join(self.out, BEST))["model"])
        self.fresh = False

    def resume(self, state: dict) -> Progress:
        """Continue from a ``LAST`` checkpoint (model, optimisers, generators, progress)."""
        self.model.load_state_dict(state["model"])
        for key, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizer"][key])
        ckpt.restore_rng(self.rng, state["rng"])
        return Progress(**state["progress"])

    def _meta(self, epoch: int) -> dict:
        return {"config": self.config.to_dict(), "model_meta": model_meta(self.inputs), "epoch": epoch}

    # ---- forward passes -----------------------------------------------------------------------
    def full_forward(self):
        """Every stream on the whole graph (``full`` propagation's training forward)."""
        nodes = {"user": torch.arange(self.inputs.num_users, device=self.device),
                 "item": torch.arange(self.inputs.num_items, device=self.device)}
        reps = self.model([self.graph] * self.model.num_graph_layers, nodes, self.item_feats, self.user_feats)
        reps.item_cold = self.item_cold
        return reps

    def batch_features(self, input_nodes: dict):
        """Content features of the input nodes, for the streams the model has (none for LightGCN)."""
        items = {m: InputRows(partial(self.item_feats[m].index_select, 0), input_nodes["item"])
                 for m in self.model.modalities}
        users = (InputRows(partial(self.user_feats.index_select, 0), input_nodes["user"])
                 if self.user_feats is not None and self.model.user_stream is not None else None)
        return items, users

    def refresh(self) -> None:
        """Layer-wise inference of every node into the tables (the history sampled steps read)."""
        start = time.perf_counter()
        layerwise_tables(self.model, self.inputs, self.tables, self.item_feats, self.user_feats, self.degree)
        self.fresh = True
        logger.debug("layer-wise inference in %.2f s", time.perf_counter() - start)

    def representations(self):
        reps = full_representations(self.tables, lambda fn, nt: fn(slice(None)))
        reps.item_cold = self.item_cold
        return reps

    @torch.no_grad()
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(users, items)`` vectors to rank, by layer-wise inference of the current model."""
        self.refresh()
        users, items = self.model.final_embeddings(self.representations())
        return users.cpu(), items.cpu()


def training_degrees(inputs: TrainingInputs) -> dict[str, torch.Tensor]:
    """Each node's number of training interactions (LightGCN's normalisation), on the CPU."""
    return {"user": torch.from_numpy(inputs.train.degree()).float(),
            "item": torch.from_numpy(np.bincount(inputs.train.indices, minlength=inputs.num_items)).float()}


def local_tables(model: RecGOAT, inputs: TrainingInputs, dim: int, device: torch.device) -> LayerTables:
    sizes = {"user": inputs.num_users, "item": inputs.num_items}
    return LayerTables.allocate(model, lambda name, nt: torch.zeros(sizes[nt], dim, device=device))


def layerwise_tables(model: RecGOAT, inputs: TrainingInputs, tables: LayerTables, item_feats: dict,
                     user_feats, degree: dict, batch_size: int = 4096) -> None:
    """:meth:`RecGOAT.inference` on a local heterograph: all nodes, all their in-edges."""
    import dgl

    graph, device = inputs.graph, tables.id[0]["user"].device

    def neighbours(nt, ids):
        block = dgl.to_block(dgl.in_subgraph(graph, {nt: ids.cpu()}), {nt: ids.cpu()})
        attach_degrees([block], lambda s, i: degree[s][i])
        return block.to(device)

    def ego(nt, ids):
        return (model.id.user if nt == "user" else model.id.item)[ids]

    def features(nt, key, ids):
        return user_feats[ids] if key == USER_STREAM else item_feats[key][ids]

    nodes = {"user": torch.arange(inputs.num_users, device=device),
             "item": torch.arange(inputs.num_items, device=device)}
    model.inference(tables, nodes, neighbours, ego, features, batch_size=batch_size)


def infer_embeddings(model: RecGOAT, inputs: TrainingInputs, dim: int, device: Optional[torch.device] = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(users, items)`` vectors of a trained model on ``inputs`` (export, tests): layer-wise."""
    device = device or torch.device("cpu")
    model = model.to(device)
    tables, degree = local_tables(model, inputs, dim, device), training_degrees(inputs)
    item_feats = {m: x.to(device) for m, x in inputs.item_feats.items()}
    user_feats = inputs.user_feats.to(device) if inputs.user_feats is not None else None
    layerwise_tables(model, inputs, tables, item_feats, user_feats, degree)
    reps = full_representations(tables, lambda fn, nt: fn(slice(None)))
    reps.item_cold = torch.from_numpy(inputs.cold_items).to(device)
    users, items = model.final_embeddings(reps)
    return users.cpu(), items.cpu()


def evaluate_splits(users: torch.Tensor, items: torch.Tensor, inputs: TrainingInputs, config: Config,
                    splits: tuple, cold: bool) -> dict:
    """Metrics per split (``valid``, ``test``) and, with ``cold``, on cold held-out items only."""
    t, out = config.train, {}
    for split in splits:
        heldout = getattr(inputs, split)
        out[split] = evaluate_ranking(users, items, inputs.train, heldout, t.topk, t.eval_user_block,
                                      t.eval_item_block)
        if cold and inputs.cold_items.any():
            cold_heldout = heldout.restrict_items(inputs.cold_items)
            if cold_heldout.degree().any():
                out[f"{split}_cold"] = evaluate_ranking(users, items, inputs.train, cold_heldout, t.topk,
                                                        t.eval_user_block, t.eval_item_block)
    return out
