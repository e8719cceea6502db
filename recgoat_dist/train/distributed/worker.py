"""``train_loop_per_worker``: what every Ray Train worker runs.

Connect to the graph servers, build the distributed engine, run the one training loop
(:func:`recgoat_dist.train.loop.fit`), then write this worker's share of the final embeddings and
report the last checkpoint with the run's summary.
"""
from __future__ import annotations

import logging
import os

import ray
import torch

from recgoat_dist.config import Config
from recgoat_dist.storage import join
from recgoat_dist.train.distributed import servers
from recgoat_dist.train.distributed.embeddings import EMBEDDINGS_DIR, clear_embeddings, write_partition_embeddings
from recgoat_dist.train.distributed.engine import DistEngine, WorkerSpec
from recgoat_dist.train.loop import Progress, fit

logger = logging.getLogger(__name__)


def train_loop_per_worker(job: dict) -> None:
    import ray.train

    config: Config = job["config"]
    spec: WorkerSpec = job["spec"]
    rank = ray.train.get_context().get_world_rank()
    # One Sinkhorn solve per batch: its per-call INFO line would drown the worker logs.
    logging.getLogger("recgoat_dist.ot.sinkhorn").setLevel(logging.WARNING)
    if rank == 0:
        ray.get(spec.state.start_attempt.remote())
    torch.manual_seed(config.train.seed + rank)
    torch.set_num_threads(max(1, spec.threads))
    service = servers.connect(spec.partitions, spec.graph_name, token=spec.token,
                              graphbolt=config.cluster.graphbolt)
    try:
        engine = DistEngine(config, spec, service)
        progress = Progress()
        if ray.train.get_checkpoint() is not None:
            progress = engine.resume(ray.train.get_checkpoint())
        elif spec.warm_start:
            warm_start(engine, spec)
        final = fit(engine, config, progress)
        summary = {"progress": progress.to_dict(), "final": final, "evaluated_epoch": engine.evaluated_epoch,
                   **final_checks(engine)}
        if spec.out and engine.last_vectors is not None:
            summary["embedding_files"] = write_embeddings(engine, spec, *engine.last_vectors)
        engine.restore_last()
        engine.report(progress, summary)
    finally:
        servers.disconnect(service)


def warm_start(engine: DistEngine, spec: WorkerSpec) -> None:
    """Rows of a single-process-shaped state (dataset ids) into this worker's partition."""
    from recgoat_dist.graph import load_id_maps
    from recgoat_dist.train import checkpoint as ckpt

    state = ckpt.load(spec.warm_start)["model"]
    engine.warm_start(state, load_id_maps(spec.id_maps))
    logger.info("rank %d: warm-started from %s", engine.rank, spec.warm_start)


def final_checks(engine: DistEngine) -> dict:
    """Dense parameters identical on all workers, and one record per worker (collective)."""
    import torch.distributed as dist

    flat = torch.cat([p.detach().cpu().flatten() for p in engine.model.parameters()] + [torch.zeros(1)])
    gathered = [torch.empty_like(flat) for _ in range(engine.world)]
    dist.all_gather(gathered, flat, group=engine.group)
    in_sync = all(torch.equal(gathered[0], x) for x in gathered[1:])
    record = {"rank": engine.rank, "partition": engine.service.partition, "inner_users": len(engine.own["user"]),
              "inner_items": len(engine.own["item"]), "training_edges": len(engine.eids),
              "steps": engine.steps_per_epoch, "device": str(engine.device),
              # DGL renumbers edges so each partition's are one contiguous range: disjoint ranges
              # whose lengths sum to the total mean every edge was trained by exactly one worker.
              "training_edge_range": [int(engine.eids.min()), int(engine.eids.max()) + 1],
              "shared_host_shim": engine.service.shared_host, "pid": os.getpid(),
              "peak_rss_mb": servers._peak_rss_mb(), "server": ray.get(engine.service.server.status.remote())}
    workers: list = [None] * engine.world
    dist.all_gather_object(workers, record, group=engine.group)
    return {"dense_params_in_sync": bool(in_sync), "workers": workers}


def write_embeddings(engine: DistEngine, spec: WorkerSpec, users: torch.Tensor, items: torch.Tensor) -> dict:
    """Every worker writes its rows of ``<out>/embeddings``; returns all workers' files (collective)."""
    import torch.distributed as dist

    if not spec.id_maps:
        return {}
    out = join(spec.out, EMBEDDINGS_DIR)
    if engine.rank == 0:
        clear_embeddings(out)
    engine.sync()
    files = write_partition_embeddings(engine, spec.id_maps, out, users, items)
    gathered: list = [None] * engine.world
    dist.all_gather_object(gathered, files, group=engine.group)
    return {rel: entry for part in gathered for rel, entry in part.items()}

