"""The driver side: Ray, the ``TorchTrainer``, storage, fault tolerance, the run artifact."""
from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from typing import Optional
from urllib.parse import urlsplit

from recgoat_dist.config import Config
from recgoat_dist.storage import Artifact, StorageError, absolute, join

logger = logging.getLogger(__name__)
TRAIN_DIR = "ray_train"          # Ray Train's run directory (checkpoints) under the run URL


class RunState:
    """Driver-owned state that survives worker-group restarts (a Ray actor): attempt and fault
    counters, and rank 0's position in the epoch (the driver's progress bar reads it)."""

    def __init__(self):
        self.attempts = 0
        self.killed = False
        self.position = (0, 0, 0)

    def start_attempt(self) -> int:
        self.attempts += 1
        return self.attempts

    def claim_kill(self) -> bool:
        """True exactly once: the fault injection kills one worker once per run."""
        first, self.killed = not self.killed, True
        return first

    def step(self, epoch: int, step: int, total: int) -> None:
        self.position = (epoch, step, total)

    def where(self) -> tuple:
        return self.position

    def summary(self) -> dict:
        return {"attempts": self.attempts, "killed": self.killed}


class StepBar:
    """A progress bar of rank 0's steps within each epoch, drawn on the driver while Ray trains."""

    def __init__(self, state, enabled: bool):
        self.state, self.enabled, self._stop = state, enabled, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="recgoat-step-bar")

    def __enter__(self):
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        import ray
        from tqdm import tqdm

        bar, shown = None, None
        while not self._stop.wait(1.0):
            try:
                epoch, step, total = ray.get(self.state.where.remote(), timeout=5)
            except Exception:  # noqa: BLE001 - the bar is cosmetic: never fail the run for it
                continue
            if total and epoch != shown:
                if bar is not None:
                    bar.close()
                bar, shown = tqdm(total=total, desc=f"epoch {epoch} (rank 0)", leave=False, mininterval=1.0), epoch
            if bar is not None and step + 1 != bar.n:
                bar.n = step + 1
                bar.refresh()
        if bar is not None:
            bar.close()


def storage_for(url: str):
    """``(storage_path, pyarrow filesystem or None)`` for Ray Train's ``RunConfig``."""
    if url.startswith("s3://"):
        import pyarrow.fs as pafs
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        kwargs = {"region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
        if endpoint:
            parts = urlsplit(endpoint)
            kwargs.update(endpoint_override=parts.netloc, scheme=parts.scheme or "https")
        return url[len("s3://"):].rstrip("/"), pafs.S3FileSystem(**kwargs)
    if url.startswith("file://"):
        url = url[len("file://"):]
    return os.path.abspath(url), None


def ensure_ray(config: Config) -> bool:
    """Connect to ``cluster.address`` / ``RAY_ADDRESS``, or start a local Ray; True if started here."""
    import ray

    if ray.is_initialized():
        return False
    address = config.cluster.address or os.environ.get("RAY_ADDRESS")
    # Huge pages sped one process up (recgoat_dist/cli.py) but not the workers, whose peak RSS
    # they raised from 9.8 to 17.3 GB at 800k items (benchmarks/RESULTS.md, step cost): off there.
    env = {"DGLBACKEND": "pytorch", "THP_MEM_ALLOC_ENABLE": "0"}
    if address:
        ray.init(address=address, runtime_env={"env_vars": env})
        return True
    # The dashboard (loopback only) also serves Ray's state API, which Ray Train's placement-group
    # cleaner polls: without it, that actor logs a warning every second of the run. None: start it
    # when it can, but a dashboard that fails to start must not stop training.
    ray.init(num_cpus=config.cluster.num_workers + 1, include_dashboard=None, dashboard_host="127.0.0.1",
             _node_ip_address="127.0.0.1", runtime_env={"env_vars": env})
    return True


def fit(config: Config, partitions: str, out: str, *, graph_name: str, dataset: Optional[str] = None,
        id_maps: Optional[str] = None, name: str = TRAIN_DIR, knn_fanouts: Optional[tuple] = None,
        warm_start: Optional[str] = None) -> dict:
    """Run the Ray Train job on ``partitions`` (one per worker); returns the distributed summary.

    Checkpoints go to ``<out>/<name>``; a later call with the same ``out`` resumes from the latest
    (Ray Train V2: same ``RunConfig(name, storage_path)``).
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from recgoat_dist.train.distributed import shim
    from recgoat_dist.train.distributed.engine import WorkerSpec
    from recgoat_dist.train.distributed.worker import train_loop_per_worker

    # Workers and graph servers run in other directories: hand them absolute locations.
    partitions, out = absolute(partitions), absolute(out)
    dataset, id_maps = (absolute(u) if u else u for u in (dataset, id_maps))
    workers = config.cluster.num_workers
    started = ensure_ray(config)
    state = ray.remote(num_cpus=0)(RunState).remote()
    storage_path, filesystem = storage_for(out)
    k, user_k = knn_fanouts or (config.graph.knn_k, config.graph.user_knn_k)
    spec = WorkerSpec(partitions=partitions, graph_name=graph_name, dataset=dataset, id_maps=id_maps, out=out,
                      state=state, token=f"rg{uuid.uuid4().hex[:8]}",
                      threads=int(os.environ.get("OMP_NUM_THREADS", "1")), knn_fanout=int(k),
                      user_knn_fanout=int(user_k), warm_start=warm_start)
    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config={"config": config, "spec": spec},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=config.cluster.use_gpu),
        # gloo is the default group (CPU collectives, the sparse optimiser's row routing); with GPUs the engine gives
        # DDP its own NCCL group.
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(name=name, storage_path=storage_path, storage_filesystem=filesystem,
                             failure_config=FailureConfig(max_failures=config.cluster.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)))
    start = time.perf_counter()
    try:
        with StepBar(state, enabled=config.train.progress):
            result = trainer.fit()
        runs = ray.get(state.summary.remote())
    finally:
        shim.cleanup(spec.token)
        if started:
            ray.shutdown()
    if result.error is not None:
        raise RuntimeError(f"distributed training failed: {result.error}")
    if result.checkpoint is None:
        raise RuntimeError("distributed training ended without a checkpoint (train.epochs < 1?)")
    from recgoat_dist.train.distributed.checkpoint import read_summary
    summary = read_summary(result.checkpoint)
    progress = summary["progress"]
    return {
        "num_workers": workers,
        "num_partitions": workers,
        "restarts": max(0, runs["attempts"] - 1),
        "fault_injected": runs["killed"],
        "workers": summary.get("workers", []),
        "dense_params_in_sync": summary.get("dense_params_in_sync"),
        "progress": progress,
        "history": progress["history"],
        "final": summary.get("final"),
        "evaluated_epoch": summary.get("evaluated_epoch"),
        "embedding_files": summary.get("embedding_files"),
        "epochs_run": len(progress["history"]),
        "seconds": round(time.perf_counter() - start, 2),
        "checkpoint": result.checkpoint.path,
    }


def resolve_partitions(config: Config, out: str) -> str:
    """``data.partitions``, or partition ``data.graph`` on the fly into ``<out>/partitions``."""
    if config.data.partitions:
        return config.data.partitions
    if not config.data.graph:
        raise ValueError("distributed training needs data.partitions or data.graph")
    from recgoat_dist.graph import partition_graph_artifact
    url = join(out, "partitions")
    try:
        Artifact(url, kind="partitions")
        logger.info("reusing partitions at %s", url)
    except Exception:
        logger.info("partitioning %s into %d parts (%s)", config.data.graph, config.cluster.num_workers,
                    config.graph.partition_method)
        partition_graph_artifact(config.data.graph, url, config.cluster.num_workers,
                                 config.graph.partition_method, seed=config.train.seed, overwrite=True,
                                 memory_budget_gb=config.graph.partition_memory_gb)
    return url


def prepare_out(config: Config, out: str, overwrite: bool) -> None:
    """The single-process rules: a published run is refused unless overwriting; an unfinished one
    (Ray Train checkpoints, no manifest) continues only with ``train.resume``."""
    from recgoat_dist.storage import MANIFEST, exists, filesystem

    if exists(join(out, MANIFEST)):
        if config.train.resume:
            raise StorageError(f"{out}: this run is already complete (manifest present); nothing to resume")
        if not overwrite:
            raise StorageError(f"{out}: a run already exists here (pass --overwrite)")
    elif exists(join(out, TRAIN_DIR)) and not (config.train.resume or overwrite):
        raise StorageError(f"{out}: an unfinished distributed run is here ({TRAIN_DIR}/); pass --resume to "
                           "continue it or --overwrite to start over")
    if overwrite and exists(out):
        fs, path = filesystem(out)
        fs.rm(path, recursive=True)


def run_distributed(config: Config, out: str, *, overwrite: bool = False, warm_start: Optional[dict] = None) -> dict:
    """``recgoat train`` with ``cluster.num_workers >= 1``: train on Ray, publish the run artifact.

    ``warm_start``: ``{"model": state_dict}`` of a single-process-shaped model (dataset ids)."""
    from recgoat_dist.train import checkpoint as ckpt
    from recgoat_dist.train.loop import run_step_cost
    from recgoat_dist.train.run import publish_run

    if config.cluster.num_workers < 1:
        raise ValueError("cluster.num_workers must be >= 1 for distributed training")
    prepare_out(config, out, overwrite)
    partitions = resolve_partitions(config, out)
    art = Artifact(partitions, kind="partitions")
    if art["num_parts"] != config.cluster.num_workers:
        raise ValueError(f"{partitions} has {art['num_parts']} parts but cluster.num_workers = "
                         f"{config.cluster.num_workers}; one partition per worker is required")
    knn = (config.graph.knn_k, config.graph.user_knn_k)
    if art.get("graph"):
        from recgoat_dist.graph import GraphArtifact
        meta = GraphArtifact(art["graph"]).manifest
        knn = (meta.get("knn_k", knn[0]), meta.get("user_knn_k", knn[1]))
    warm_url = None
    if warm_start is not None:
        warm_url = join(absolute(out), "warm_start.pt")
        ckpt.save(warm_url, {"model": warm_start["model"]})
    summary = fit(config, partitions, out, graph_name=art.get("graph_name", "recgoat"),
                  dataset=art.get("dataset"), id_maps=partitions, knn_fanouts=knn, warm_start=warm_url)
    history = summary.pop("history")
    progress = summary.pop("progress")
    embedding_files = summary.pop("embedding_files", None)
    final = summary.pop("final", None) or {}
    step_cost = run_step_cost(history)
    if step_cost is not None:       # rank 0's figures; DDP keeps the workers in lockstep
        step_cost["edges_per_second"] *= summary["num_workers"]
        step_cost["scope"] = "all workers (rank 0's steps x num_workers)"
    metrics = {"model": config.model.name, "engine": "distributed", "propagation": "sampled",
               "partitions": partitions, **summary,
               "best_epoch": progress["best_epoch"], "valid_metric": config.train.valid_metric,
               "seed": config.train.seed,
               "seconds_per_epoch": (sum(h["seconds"] for h in history) / len(history)) if history else None,
               "step_cost": step_cost,
               # valid/test of evaluated_epoch: best_epoch, or the last one when a restart came after it
               **{split: final[split] for split in ("valid", "test", "valid_cold", "test_cold") if split in final}}
    if embedding_files:
        from recgoat_dist.train.distributed.embeddings import EMBEDDINGS_DIR, publish_embeddings
        publish_embeddings(join(out, EMBEDDINGS_DIR), embedding_files, {
            "run": out, "model": config.model.name, "dataset": art.get("dataset"),
            "checkpoint": "best" if metrics["evaluated_epoch"] == metrics["best_epoch"] else "last",
            "num_users": sum(w["inner_users"] for w in summary["workers"]),
            "num_items": sum(w["inner_items"] for w in summary["workers"]), "dim": config.model.dim})
        metrics["embeddings"] = join(out, EMBEDDINGS_DIR)
    publish_run(out, config, metrics, history, manifest={"distributed": True, "checkpoints": TRAIN_DIR})
    logger.info("distributed run written to %s (valid %s)", out, json.dumps(metrics.get("valid", {})))
    return metrics
