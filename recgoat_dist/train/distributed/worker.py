"""``train_loop_per_worker``: what every Ray Train worker runs.

Set up (graph server + DGL client, model, this partition's training edges), then per epoch:
train a fixed number of steps, evaluate by layer-wise inference, report a checkpoint. Everything
else is a named function below or in a sibling module.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import signal
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import ray
import torch

from recgoat_dist.train.distributed import checkpoint, servers
from recgoat_dist.storage import join
from recgoat_dist.train.distributed.embeddings import (EMBEDDINGS_DIR, clear_embeddings,
                                                       write_partition_embeddings)
from recgoat_dist.train.distributed.inference import (InferenceStore, evaluate_partition, final_vectors,
                                                      layerwise_inference, local_rows, own_nodes,
                                                      refresh_landmarks)
from recgoat_dist.train.distributed.model import (NTYPES, RATES, NodeInputs, SparseTables, batch_loss,
                                                  build_dist_model, edge_loader, modalities_of)

logger = logging.getLogger(__name__)


def train_loop_per_worker(loop: dict) -> None:
    import ray.train

    cfg = loop["config"]
    rank = ray.train.get_context().get_world_rank()
    # One Sinkhorn solve per batch: its per-call INFO line would drown the worker logs.
    logging.getLogger("recgoat_dist.ot.sinkhorn").setLevel(logging.WARNING)
    if rank == 0:
        ray.get(loop["state"].start_attempt.remote())
    torch.manual_seed(cfg["train"]["seed"] + rank)
    np.random.seed(cfg["train"]["seed"] + rank)
    torch.set_num_threads(max(1, int(loop.get("threads", 1))))
    service = servers.connect(loop["partitions"], loop["graph_name"], cfg["cluster"]["num_samplers"],
                              loop.get("token"))
    try:
        s = build(service, cfg, loop)
        start_epoch, history = 0, []
        if ray.train.get_checkpoint() is not None:
            start_epoch, history = checkpoint.load(ray.train.get_checkpoint(), rank, s.tables,
                                                   s.objective.module, s.dense_optimizer)
            _sync(service)
            logger.info("rank %d resumed at epoch %d", rank, start_epoch)
        metric, patience = "valid_" + cfg["train"]["valid_metric"], cfg["train"]["patience"]
        best = None         # (epoch, snapshot) of the best validation epoch since this (re)start
        for epoch in range(start_epoch, cfg["train"]["epochs"]):
            record = {"epoch": epoch, **train_epoch(s, epoch, loop["state"])}
            if s.eval_data is not None and (epoch + 1) % cfg["train"]["eval_every"] == 0:
                record.update({f"valid_{k}": v for k, v in evaluate(s, ("valid",))["valid"].items()})
            history.append(record)
            if metric in record and epochs_without_improvement(history, metric) == 0:
                best = (epoch, snapshot(s))
            last = epoch + 1 == cfg["train"]["epochs"] or epochs_without_improvement(history, metric) > patience
            metrics = {"epoch": epoch, **{k: v for k, v in record.items() if k in ("loss", metric)}}
            sync_buffers(s.model)
            summary = None
            if last:
                summary = {"history": history, **final_checks(s)}
                if s.eval_data is not None:
                    # As the single-process trainer: valid and test of the best validation epoch.
                    # Its weights are lost when a restart came after it; then the last epoch is used.
                    last_state = None
                    if best is not None and best[0] != epoch:
                        last_state = snapshot(s)
                        restore(s, best[1])
                    summary["evaluated_epoch"] = best[0] if best is not None else epoch
                    users, items = infer(s)
                    summary["final"] = score(s, ("valid", "test"), users, items)
                    if loop.get("out"):
                        summary["embedding_files"] = write_embeddings(s, loop, users, items)
                    if last_state is not None:     # the checkpoint below is the last epoch's
                        restore(s, last_state)

            def write(directory):
                checkpoint.save(directory, rank, s.own, s.tables, s.objective.module, s.dense_optimizer, epoch,
                                history)
                if summary is not None and rank == 0:
                    checkpoint.save_summary(directory, summary)
            checkpoint.report(metrics, epoch, write)
            if last:
                break
    finally:
        servers.disconnect(service)


def snapshot(s: "Setup") -> dict:
    """A copy of this worker's share of the model: its partition's ID rows and the dense state."""
    return {"rows": {nt: s.tables.tables[nt].weight[s.own[nt]].clone() for nt in NTYPES},
            "dense": copy.deepcopy(s.objective.module.state_dict())}


def restore(s: "Setup", saved: dict) -> None:
    """Put a :func:`snapshot` back (collective: every worker restores its own rows)."""
    for nt in NTYPES:
        s.tables.tables[nt].weight[s.own[nt]] = saved["rows"][nt]
    s.objective.module.load_state_dict(saved["dense"])
    _sync(s.service)


def epochs_without_improvement(history: list, metric: str) -> int:
    """MMRec's early-stopping count: evaluations since the best (strictly improving) one."""
    best, stale = -1.0, 0
    for h in history:
        if metric not in h:
            continue
        best, stale = (h[metric], 0) if h[metric] > best else (best, stale + 1)
    return stale


class BatchObjective(torch.nn.Module):
    """Forward *and* loss in one module, so DDP sees every dense parameter the loss touches."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, blocks, input_nodes, pos_graph, neg_graph, inputs, landmarks):
        out = batch_loss(self.model, blocks, input_nodes, pos_graph, neg_graph, inputs, landmarks)
        return out.total, out.parts


class _Local(torch.nn.Module):
    """DDP's interface (``.module``) for a model without dense parameters."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *args):
        return self.module(*args)


@dataclass
class Setup:
    service: Any
    graph: Any
    rank: int
    own: dict                   # {ntype: this partition's node ids}
    inputs: NodeInputs
    tables: SparseTables
    objective: Any              # DDP(BatchObjective(RecGOAT))
    dense_optimizer: Any
    eids: torch.Tensor          # this partition's training edges (rates)
    steps: int                  # steps per epoch, equal on every worker
    loader: Any
    store: InferenceStore
    eval_data: Optional[dict]
    ks: tuple
    kill_at_step: Optional[int]
    landmarks: Optional[dict] = None   # OAT targets: detached ID rows of the landmark items/users
    inference_fresh: bool = False      # the store holds the current model's full-graph inference

    @property
    def model(self):
        return self.objective.module.model


def build(service, cfg: dict, loop: dict) -> Setup:
    """Model, sparse tables, this partition's edges, the loader, the evaluation data."""
    import dgl
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    g = service.graph
    model_cfg, train_cfg = cfg["model"], cfg["train"]
    own = {nt: own_nodes(g, service.partition, nt) for nt in NTYPES}
    items, user = modalities_of(g, model_cfg)
    tables = SparseTables(g, model_cfg["dim"], train_cfg["lr"])
    model = build_dist_model(model_cfg, g, tables, items, user)
    objective = BatchObjective(model)
    # LightGCN alone has no dense parameter (its tables are sparse): nothing for DDP to sync.
    objective = (DistributedDataParallel(objective, find_unused_parameters=True)
                 if any(p.requires_grad for p in objective.parameters()) else _Local(objective))
    fanouts = list(cfg["cluster"]["fanouts"])
    fanouts = (fanouts + fanouts[-1:] * model.num_graph_layers)[:model.num_graph_layers]
    mask = torch.ones(g.num_edges(RATES), dtype=torch.bool)
    eids = dgl.distributed.edge_split(mask, g.get_partition_book(), etype=RATES, force_even=False)
    # train.batch_size is the global batch: each of the N workers takes 1/N of it per step, so
    # N workers make as many updates per epoch as one worker would.
    batch_size = max(1, train_cfg["batch_size"] // dist.get_world_size())
    steps = torch.tensor([math.ceil(len(eids) / batch_size)])
    dist.all_reduce(steps, op=dist.ReduceOp.MAX)
    if loop.get("max_steps"):                     # benchmarks: a fixed number of steps per epoch
        steps = torch.clamp(steps, max=int(loop["max_steps"]))
    return Setup(
        service=service, graph=g, rank=dist.get_rank(), own=own, inputs=NodeInputs(g, own, items, user),
        tables=tables, objective=objective,
        dense_optimizer=torch.optim.Adam(list(objective.parameters()) or [torch.zeros(1, requires_grad=True)],
                                         lr=train_cfg["lr"], weight_decay=train_cfg.get("weight_decay", 0.0)),
        eids=eids, steps=int(steps), loader=edge_loader(g, eids, fanouts, batch_size),
        store=InferenceStore(g, model_cfg["dim"], model),
        eval_data=load_eval_data(g, own["user"], loop), ks=tuple(train_cfg["topk"]),
        kill_at_step=cfg["debug"]["kill_worker_at_step"])


def batches(loader, steps: int):
    """Exactly ``steps`` batches: wrap around (pad) or stop early (truncate)."""
    it = iter(loader)
    for _ in range(steps):
        try:
            yield next(it)
        except StopIteration:
            it = iter(loader)
            yield next(it)


def train_epoch(s: Setup, epoch: int, state) -> dict:
    import dgl

    dgl.seed(int(torch.randint(0, 2**31 - 1, ())))   # DGL's sampler RNG, derived from torch's
    if s.model.oat is not None or s.model.user_oat is not None:
        if not s.inference_fresh:
            layerwise_inference(s.model, s.graph, s.own, s.tables, s.inputs, s.store)
        s.landmarks = refresh_landmarks(s.model, s.graph, s.store, s.inputs.item_cold)
    s.inference_fresh = False
    start, sums, edges = time.perf_counter(), {}, 0
    for step, (input_nodes, pos_graph, neg_graph, blocks) in enumerate(batches(s.loader, s.steps)):
        global_step = epoch * s.steps + step
        if s.kill_at_step is not None and global_step == s.kill_at_step and s.rank == s.service.num_partitions - 1:
            if ray.get(state.claim_kill.remote()):
                logger.warning("fault injection: rank %d kills itself at step %d", s.rank, global_step)
                os.kill(os.getpid(), signal.SIGKILL)
        loss, parts = s.objective(blocks, input_nodes, pos_graph, neg_graph, s.inputs, s.landmarks)
        s.dense_optimizer.zero_grad()
        loss.backward()
        s.dense_optimizer.step()
        s.tables.step()
        for key, value in {"loss": float(loss), **parts}.items():
            sums[key] = sums.get(key, 0.0) + value
        edges += pos_graph.num_edges(RATES)
    seconds = time.perf_counter() - start
    return {**{k: v / max(1, s.steps) for k, v in sums.items()}, "steps": s.steps, "edges": edges,
            "train_seconds": seconds, "edges_per_second": edges / max(seconds, 1e-9)}


def sync_buffers(model) -> None:
    """Rank 0's buffers everywhere (OAT landmark potentials are updated per rank in training)."""
    import torch.distributed as dist
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def evaluate(s: Setup, splits: tuple) -> dict:
    return score(s, splits, *infer(s))


def infer(s: Setup) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer-wise full inference, then ``(this partition's user vectors, all item vectors)``."""
    sync_buffers(s.model)
    layerwise_inference(s.model, s.graph, s.own, s.tables, s.inputs, s.store)
    s.inference_fresh = True
    return final_vectors(s.model, s.graph, s.own, s.store, s.inputs.item_cold)


def score(s: Setup, splits: tuple, users: torch.Tensor, items: torch.Tensor) -> dict:
    """MMRec metrics of ``splits`` for these vectors (collective)."""
    heldout = {split: s.eval_data[split] for split in splits}
    if "test" in splits:            # the final evaluation also reports cold items, as single-process runs do
        cold = s.inputs.item_cold.numpy()
        if cold.any():              # the same on every worker: the collective below runs everywhere
            for split in splits:
                rows, held = s.eval_data[split]
                heldout[f"{split}_cold"] = (rows[cold[held]], held[cold[held]])
    out = evaluate_partition(users, items, s.eval_data["train"], heldout, s.ks)
    # As single-process runs: no cold split when no held-out interaction is on a cold item
    # (num_users is all-reduced, so every worker drops the same splits).
    return {k: v for k, v in out.items() if not (k.endswith("_cold") and v["num_users"] == 0)}


def load_eval_data(g, users: torch.Tensor, loop: dict) -> Optional[dict]:
    """This partition's users' training items (from the graph) and held-out items (dataset),
    as ``(local user row, item)`` pairs in the partitioned id space."""
    import dgl

    if not loop.get("dataset") or not loop.get("id_maps"):
        return None
    from recgoat_dist.data.dataset import Dataset
    from recgoat_dist.graph import load_id_maps

    frontier = dgl.distributed.sample_neighbors(g, {"user": users}, -1)
    items, train_users = frontier.edges(etype="rated_by")
    out = {"train": (local_rows(g, users, train_users.numpy()), items.numpy())}
    inverse = {}
    for nt, new_to_orig in load_id_maps(loop["id_maps"]).items():
        inverse[nt] = np.empty(len(new_to_orig), dtype=np.int64)
        inverse[nt][new_to_orig] = np.arange(len(new_to_orig))
    ds = Dataset(loop["dataset"])
    for split in ("valid", "test"):
        pairs = ds.interactions(split)
        rows = local_rows(g, users, inverse["user"][pairs["user_id"]])
        keep = rows >= 0
        out[split] = (rows[keep], inverse["item"][pairs["item_id"]][keep])
    return out


def final_checks(s: Setup) -> dict:
    """Dense parameters identical on all workers, and one record per worker (collective)."""
    import torch.distributed as dist

    flat = torch.cat([p.detach().flatten() for p in s.objective.parameters()] + [torch.zeros(1)])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    in_sync = all(torch.equal(gathered[0], x) for x in gathered[1:])
    record = {"rank": s.rank, "partition": s.service.partition, "inner_users": len(s.own["user"]),
              "inner_items": len(s.own["item"]), "training_edges": len(s.eids), "steps": s.steps,
              # DGL renumbers edges so each partition's are one contiguous range: disjoint ranges
              # whose lengths sum to the total mean every edge was trained by exactly one worker.
              "training_edge_range": [int(s.eids.min()), int(s.eids.max()) + 1] if len(s.eids) else [0, 0],
              "shared_host_shim": s.service.shared_host, "pid": os.getpid(),
              "peak_rss_mb": servers._peak_rss_mb(), "server": ray.get(s.service.server.status.remote())}
    workers: list = [None] * dist.get_world_size()
    dist.all_gather_object(workers, record, group=s.service.group)
    return {"dense_params_in_sync": bool(in_sync), "workers": workers}


def write_embeddings(s: Setup, loop: dict, users: torch.Tensor, items: torch.Tensor) -> dict:
    """Every worker writes its rows of ``<out>/embeddings``; returns all workers' files (collective)."""
    import torch.distributed as dist

    out = join(loop["out"], EMBEDDINGS_DIR)
    if s.rank == 0:
        clear_embeddings(out)
    _sync(s.service)
    files = write_partition_embeddings(s, loop, out, users, items)
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, files, group=s.service.group)
    return {rel: entry for part in gathered for rel, entry in part.items()}


def _sync(service) -> None:
    import torch.distributed as dist
    dist.barrier()
    service.graph.barrier()
