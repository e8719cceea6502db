"""The distributed engine: what the one training loop runs on inside a Ray Train worker.

A ``DistGraph`` (the worker is a DGL client of every partition's server), the user and item ID
tables as ``DistEmbedding`` shards on the servers (row-wise Adam by each row's owner), the dense rest of
the model under DDP, and the historical layer tables of ``sampled`` propagation as ``DistTensor``s.
Each worker trains on its own partition's ``rates`` edges with ``train.batch_size / N`` of the global
batch per step; every worker takes the same number of steps (the collectives need it).

Collectives on CPU tensors (step counts, metrics, barriers, the sparse optimiser's row routing) run on
gloo; with ``cluster.use_gpu`` DDP gets its own NCCL group.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import signal
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from recgoat_dist.config import Config
from recgoat_dist.eval import UserItems
from recgoat_dist.model import LayerTables
from recgoat_dist.train.distributed import checkpoint
from recgoat_dist.train.distributed.inference import (FinalVectors, UsersOnDemand, evaluate_partition,
                                                      layerwise_inference, load_eval_data, own_nodes,
                                                      pull_landmarks)
from recgoat_dist.train.distributed.model import (NTYPES, RATES, NodeInputs, SparseTables, build_dist_model,
                                                  in_edges, modalities_of, pull_all)
from recgoat_dist.train.engine import resolve_propagation
from recgoat_dist.train.loop import Progress
from recgoat_dist.train.sampling import SeedBatch, sample_negatives, step_sampler
from recgoat_dist.train.steps import InputRows, SampledObjective, landmark_seeds, sampled_loss

logger = logging.getLogger(__name__)


@dataclass
class WorkerSpec:
    """What a worker needs besides the :class:`Config`: where things are, and run-level handles."""

    partitions: str                  # partitions artifact URL (or a local DGL partition JSON, tests)
    graph_name: str
    dataset: Optional[str]           # dataset URL: held-out splits for evaluation
    id_maps: Optional[str]           # partitions artifact holding partitioned -> dataset id maps
    out: Optional[str]               # run URL: workers write <out>/embeddings there
    state: Any                       # the driver's RunState actor
    token: str                       # names this run's shared-memory segments
    threads: int = 1
    knn_fanout: int = 10             # the item KNN graphs' k (sampled hops of the GAT streams)
    user_knn_fanout: int = 10
    warm_start: Optional[str] = None  # URL of a {"model": state_dict} in dataset ids


class PartitionUserItems:
    """The training items of every user with a training edge in this partition, fetched from the
    servers once (to exclude positives from the negatives): ``contains(users, items)`` like
    :class:`UserItems`. Fetched per batch it cost an in-edge request every step (3% of a step on
    the 200k-item step-cost graph); held, it is O(the partition's users' interactions)."""

    def __init__(self, graph, users: np.ndarray, block: int = 65536):
        self.users = np.unique(users)
        rows, items = [], []
        for start in range(0, len(self.users), block):
            chunk = self.users[start:start + block]
            frontier = in_edges(graph, {"user": torch.from_numpy(chunk)})
            got, owners = (t.numpy() for t in frontier.edges(etype="rated_by"))
            rows.append(np.searchsorted(self.users, owners))
            items.append(got)
        self.adjacency = UserItems.from_pairs(np.concatenate(rows), np.concatenate(items), len(self.users),
                                              graph.num_nodes("item"))

    def contains(self, users, items) -> np.ndarray:
        return self.adjacency.contains(np.searchsorted(self.users, users), items)


def worker_device(config: Config) -> torch.device:
    if config.cluster.use_gpu:
        import ray.train.torch
        return ray.train.torch.get_device()
    return torch.device("cpu")


class DistEngine:
    """One Ray Train worker's engine (collective: every worker builds and steps one)."""

    show_progress = False            # the driver draws the bar from the workers' step reports

    def __init__(self, config: Config, spec: WorkerSpec, service):
        import dgl
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        t, m = config.train, config.model
        g = self.graph = service.graph
        self.config, self.spec, self.service = config, spec, service
        self.rank, self.world, self.group = dist.get_rank(), dist.get_world_size(), service.group
        self.device = worker_device(config)
        self.propagation = resolve_propagation(config, g.num_edges(RATES), distributed=True)
        self.own = {nt: own_nodes(g, service.partition, nt) for nt in NTYPES}
        items, user = modalities_of(g, config.model)
        self.tables = SparseTables(g, m.dim, t.lr, self.group)
        self.model = build_dist_model(m, g, self.tables, items, user).to(self.device)
        objective = SampledObjective(self.model)
        dense = [p for p in objective.parameters() if p.requires_grad]
        self.objective, self.dense_optimizer = objective, None
        if dense:    # LightGCN alone has no dense parameter (its tables are sparse): nothing to sync
            cuda = self.device.type == "cuda"
            self.objective = DistributedDataParallel(
                objective, find_unused_parameters=True, device_ids=[self.device] if cuda else None,
                process_group=dist.new_group(backend="nccl") if cuda else None)
            self.dense_optimizer = torch.optim.Adam(dense, lr=t.lr)
        self.inputs = NodeInputs(g, self.own, items, user)
        self.layers = LayerTables.allocate(self.model, lambda name, nt: dgl.distributed.DistTensor(
            (g.num_nodes(nt), m.dim), torch.float32, name=f"layer_{name}",
            part_policy=g.get_node_partition_policy(nt), persistent=True))
        # A partition holds the edges into its own nodes: its rates edges are those into its items
        # (read as in-edges, which GraphBolt partitions serve; find_edges they do not).
        frontier = in_edges(g, {"item": self.own["item"]})
        users, pos = frontier.edges(etype="rates")
        eids = frontier.edges["rates"].data[dgl.EID]
        order = torch.argsort(eids)
        self.pairs, self.eids = (users[order].numpy(), pos[order].numpy()), eids[order]
        if len(self.eids) == 0:
            raise ValueError(f"partition {service.partition} holds no training edge; use fewer partitions")
        self.local_batch = max(1, t.batch_size // self.world)
        steps = torch.tensor([math.ceil(len(self.eids) / self.local_batch)])
        dist.all_reduce(steps, op=dist.ReduceOp.MAX, group=self.group)
        self.steps_per_epoch = int(min(steps, t.max_steps_per_epoch) if t.max_steps_per_epoch else steps)
        self.user_items = PartitionUserItems(g, self.pairs[0])
        cold = self.inputs.item_cold.numpy()
        self.candidates = (np.nonzero(~cold)[0] if t.negatives == "train_items"
                           else np.arange(g.num_nodes("item"))).astype(np.int64)
        self.sampler = step_sampler(g.canonical_etypes, t.fanouts, m.gat_layers, self.model, spec.knn_fanout,
                                    spec.user_knn_fanout)
        self.rng = np.random.default_rng(t.seed + self.rank)
        self.eval_data = load_eval_data(g, self.own["user"], spec.dataset, spec.id_maps, t.eval_users, t.seed)
        self.can_evaluate = self.eval_data is not None
        self.fresh = False               # the layer tables hold the current model's inference
        self.best: Optional[tuple] = None
        self.evaluated_epoch: Optional[int] = None
        self.last_vectors: Optional[tuple] = None
        self.pending: Optional[Progress] = None

    # ---- what the loop calls ------------------------------------------------------------------
    def start_epoch(self, epoch: int) -> None:
        self.model.train()
        if not self.fresh:
            self.refresh()
        if self.model.oat is not None or self.model.user_oat is not None:
            pull_landmarks(self.model, self.graph, self.layers, self.inputs.item_cold, self.group)
        self.fresh = False

    def batches(self, epoch: int):
        """Exactly ``steps_per_epoch`` batches of this partition's edges (wrapping around)."""
        import dgl

        dgl.seed(int(self.rng.integers(0, 2**31 - 1)))      # DGL's sampler RNG, derived from ours
        users, items = self.pairs
        order = self.rng.permutation(len(users))
        for step in range(self.steps_per_epoch):
            idx = order[np.arange(step * self.local_batch, (step + 1) * self.local_batch) % len(order)]
            u, p = users[idx], items[idx]
            yield u, p, sample_negatives(u, self.user_items, self.candidates, self.rng)

    def step(self, batch, global_step: int) -> tuple[dict, int, int, dict]:
        users, pos, neg = batch
        self._maybe_fail(global_step)
        t = self.config.train
        if t.refresh_every and global_step % t.refresh_every == 0 and global_step:
            self.refresh()
        seed = SeedBatch(users, pos, neg, *landmark_seeds(self.model))
        total, parts, inputs = sampled_loss(self.objective, self.graph, self.sampler, seed, self.batch_features,
                                            lambda nt, ids: self.inputs.degree[nt][ids], self.history, self.device)
        if self.dense_optimizer is not None:
            self.dense_optimizer.zero_grad()
        total.backward()
        if self.dense_optimizer is not None:
            self.dense_optimizer.step()
        self.tables.step()
        if self.rank == 0:          # fire and forget: the driver's bar polls it
            self.spec.state.step.remote(global_step // self.steps_per_epoch, global_step % self.steps_per_epoch,
                                        self.steps_per_epoch)
        return {"loss": float(total), **parts}, len(users), seed.num_seeds, inputs

    def evaluate(self, splits: tuple = ("valid",), cold: bool = False) -> dict:
        heldout = {split: self.eval_data[split] for split in splits}
        item_cold = self.inputs.item_cold.numpy()
        if cold and item_cold.any():        # the same on every worker: the collectives run everywhere
            for split in splits:
                rows, held = self.eval_data[split]
                heldout[f"{split}_cold"] = (rows[item_cold[held]], held[item_cold[held]])
        # Vectors of the users with held-out items only (train.eval_users samples them); the
        # pairs are renumbered to rows of that subset, in the same order, so the ranking is unchanged.
        evaluated = np.unique(np.concatenate([rows for rows, _ in heldout.values()]))
        users, items = self.vectors(evaluated)
        # Every user of the partition, for the final embeddings: computed block by block when written.
        self.last_vectors = (UsersOnDemand(self.final, self.own["user"]), items)
        position = np.full(len(self.own["user"]), -1, dtype=np.int64)
        position[evaluated] = np.arange(len(evaluated))

        def subset(pairs):
            rows, held = pairs
            keep = position[rows] >= 0
            return position[rows[keep]], held[keep]

        t = self.config.train
        out = evaluate_partition(users, items, subset(self.eval_data["train"]),
                                 {split: subset(pairs) for split, pairs in heldout.items()}, t.topk,
                                 t.eval_user_block, t.eval_item_block, self.group)
        # As single-process runs: no cold split without a held-out interaction on a cold item
        # (num_users is all-reduced, so every worker drops the same splits).
        return {k: v for k, v in out.items() if not (k.endswith("_cold") and v["num_users"] == 0)}

    def save_best(self, epoch: int) -> None:
        self.best = (epoch, self.snapshot())

    def checkpoint(self, progress: Progress, last: bool) -> None:
        if last:     # the final checkpoint also carries the summary: reported after the final evaluation
            self.pending = progress
            return
        self.report(progress)

    def restore_best(self, progress: Progress) -> None:
        """The best validation epoch's weights, when this (re)start saw it; else the last epoch's."""
        self.evaluated_epoch = progress.history[-1]["epoch"]
        self.last_state = None
        if self.best is not None and self.best[0] != self.evaluated_epoch:
            self.last_state = self.snapshot()
            self.restore(self.best[1])
            self.evaluated_epoch = self.best[0]
        elif self.best is None and progress.best_epoch is not None:
            logger.warning("rank %d: the best epoch (%d) was before a restart; evaluating the last epoch",
                           self.rank, progress.best_epoch)

    # ---- distributed-only steps ---------------------------------------------------------------
    def report(self, progress: Progress, summary: Optional[dict] = None) -> None:
        """``ray.train.report`` with this rank's checkpoint files (every rank, same count)."""
        def write(directory):
            checkpoint.save(directory, self.rank, self.own, self.tables, self.model, self.dense_optimizer,
                            progress, self.rng)
            if summary is not None and self.rank == 0:
                checkpoint.save_summary(directory, summary)
        epoch = progress.next_epoch - 1
        checkpoint.report({"epoch": epoch, **{f"valid_{k}": v for k, v in (progress.history[-1].get("valid") or {})
                                              .items() if k == self.config.train.valid_metric}}, epoch, write)

    def resume(self, ray_checkpoint) -> Progress:
        progress = checkpoint.load(ray_checkpoint, self.rank, self.tables, self.model, self.dense_optimizer,
                                   self.rng)
        self.sync()
        logger.info("rank %d resumed at epoch %d", self.rank, progress.next_epoch)
        return progress

    def restore_last(self) -> None:
        """Undo :meth:`restore_best` so the final checkpoint holds the last epoch (for resuming)."""
        if getattr(self, "last_state", None) is not None:
            self.restore(self.last_state)

    def warm_start(self, state: dict, to_dataset: dict) -> None:
        """Load a single-process-shaped state (dataset ids) into this worker's rows and the dense
        part. ``to_dataset[ntype]``: partitioned id -> dataset id."""
        for nt, key in (("user", "id.user"), ("item", "id.item")):
            own = self.own[nt]
            self.tables.tables[nt].weight[own] = state[key][torch.from_numpy(to_dataset[nt][own.numpy()])]
        dense = {k: v for k, v in state.items() if not k.startswith("id.")}
        inverse = {nt: np.argsort(to_dataset[nt]) for nt in NTYPES}
        for name, nt in (("landmark_idx", "item"), ("user_landmark_idx", "user")):
            if name in dense and len(dense[name]):
                dense[name] = torch.from_numpy(inverse[nt][dense[name].numpy()])
        self.model.load_state_dict(dense, strict=False)
        self.sync()

    def snapshot(self) -> dict:
        """A copy of this worker's share of the model: its partition's ID rows and the dense state."""
        return {"rows": {nt: self.tables.tables[nt].weight[self.own[nt]].clone() for nt in NTYPES},
                "dense": copy.deepcopy(self.model.state_dict())}

    def restore(self, saved: dict) -> None:
        """Put a :meth:`snapshot` back (collective: every worker restores its own rows)."""
        for nt in NTYPES:
            self.tables.tables[nt].weight[self.own[nt]] = saved["rows"][nt]
        self.model.load_state_dict(saved["dense"])
        self.sync()

    def sync(self) -> None:
        import torch.distributed as dist
        dist.barrier(group=self.group)
        self.graph.barrier()

    def sync_buffers(self) -> None:
        """Rank 0's buffers everywhere (OAT landmark potentials are updated per rank in training)."""
        import torch.distributed as dist
        for buffer in self.model.buffers():
            cpu = buffer.cpu()
            dist.broadcast(cpu, src=0, group=self.group)
            buffer.copy_(cpu)

    def refresh(self) -> None:
        """Layer-wise inference of this partition's nodes into the layer tables (collective)."""
        layerwise_inference(self.model, self.graph, self.own, self.tables, self.inputs, self.layers, self.device)
        self.fresh = True

    def vectors(self, user_rows: Optional[np.ndarray] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(vectors of this partition's users at rows user_rows of own["user"] (default: all),
        all item vectors)`` by layer-wise inference (collective), finished block by block
        (:class:`FinalVectors`, kept as ``self.final`` for the embeddings writer)."""
        self.sync_buffers()
        self.refresh()
        m = self.model
        if any(oat is not None and len(idx) == 0
               for oat, idx in ((m.oat, m.landmark_idx), (m.user_oat, m.user_landmark_idx))):
            # An epoch start (or a checkpoint) picks them; this covers a model that never started one.
            pull_landmarks(m, self.graph, self.layers, self.inputs.item_cold, self.group)
        self.final = FinalVectors(self.model, self.layers, self.inputs.item_cold,
                                  lambda fn, nt: pull_all(self.graph, nt, fn))
        own = self.own["user"]
        users = own if user_rows is None else own[torch.from_numpy(np.asarray(user_rows, dtype=np.int64))]
        return self.final.users(users), self.final.items()

    def history(self, layer: int, ntype: str, ids: torch.Tensor) -> torch.Tensor:
        return self.layers.history(layer, ntype, ids.cpu()).to(self.device)

    def batch_features(self, input_nodes: dict):
        """Content features of the input nodes, pulled for the streams the model has only, and
        only the rows they read (:class:`InputRows`)."""
        def rows(ntype, name):
            return InputRows(lambda ids: self.inputs.features(ntype, name, ids.cpu()).to(self.device),
                             input_nodes[ntype])

        item = {m: rows("item", m) for m in self.model.modalities}
        user = rows("user", self.inputs.user_modality) if self.model.user_stream is not None else None
        return item, user

    def _maybe_fail(self, global_step: int) -> None:
        import ray
        at = self.config.debug.kill_worker_at_step
        if at is not None and global_step == at and self.rank == self.service.num_partitions - 1:
            if ray.get(self.spec.state.claim_kill.remote()):
                logger.warning("fault injection: rank %d kills itself at step %d", self.rank, global_step)
                os.kill(os.getpid(), signal.SIGKILL)
