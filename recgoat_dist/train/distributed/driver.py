"""The driver side: Ray, the ``TorchTrainer``, storage, fault tolerance, the run artifact."""
from __future__ import annotations

import json
import logging
import os
import time
import uuid
from typing import Optional
from urllib.parse import urlsplit

from recgoat_dist.config import Config
from recgoat_dist.storage import Artifact, ArtifactWriter, absolute, join

logger = logging.getLogger(__name__)
TRAIN_DIR = "ray_train"          # Ray Train's run directory (checkpoints) under the run URL


class RunState:
    """Driver-owned counters that survive worker-group restarts (a Ray actor)."""

    def __init__(self):
        self.attempts = 0
        self.killed = False

    def start_attempt(self) -> int:
        self.attempts += 1
        return self.attempts

    def claim_kill(self) -> bool:
        """True exactly once: the fault injection kills one worker once per run."""
        first, self.killed = not self.killed, True
        return first

    def summary(self) -> dict:
        return {"attempts": self.attempts, "killed": self.killed}


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
    env = {"DGLBACKEND": "pytorch"}
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
        id_maps: Optional[str] = None, name: str = TRAIN_DIR, max_steps: Optional[int] = None) -> dict:
    """Run the Ray Train job on ``partitions`` (one per worker); returns the distributed summary.

    Checkpoints go to ``<out>/<name>``; re-running with the same ``out`` resumes from the latest.
    ``max_steps`` caps the steps per epoch (benchmarks).
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from recgoat_dist.train.distributed import shim
    from recgoat_dist.train.distributed.worker import train_loop_per_worker

    # Workers and graph servers run in other directories: hand them absolute locations.
    partitions, out = absolute(partitions), absolute(out)
    dataset, id_maps = (absolute(u) if u else u for u in (dataset, id_maps))
    workers = config.cluster.num_workers
    started = ensure_ray(config)
    state = ray.remote(num_cpus=0)(RunState).remote()
    storage_path, filesystem = storage_for(out)
    loop = {"config": config.to_dict(), "partitions": partitions, "graph_name": graph_name,
            "dataset": dataset, "id_maps": id_maps, "state": state, "token": f"rg{uuid.uuid4().hex[:8]}",
            "threads": int(os.environ.get("OMP_NUM_THREADS", "1")), "max_steps": max_steps, "out": out}
    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config=loop,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=config.cluster.use_gpu),
        torch_config=TorchConfig(backend="nccl" if config.cluster.use_gpu else "gloo"),
        run_config=RunConfig(name=name, storage_path=storage_path, storage_filesystem=filesystem,
                             failure_config=FailureConfig(max_failures=config.cluster.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)))
    start = time.perf_counter()
    try:
        result = trainer.fit()
        runs = ray.get(state.summary.remote())
    finally:
        shim.cleanup(loop["token"])
        if started:
            ray.shutdown()
    if result.error is not None:
        raise RuntimeError(f"distributed training failed: {result.error}")
    if result.checkpoint is None:
        raise RuntimeError("distributed training ended without a checkpoint (train.epochs < 1?)")
    from recgoat_dist.train.distributed.checkpoint import read_summary
    metrics = read_summary(result.checkpoint)
    history = metrics.get("history", [])
    return {
        "num_workers": workers,
        "num_partitions": workers,
        "restarts": max(0, runs["attempts"] - 1),
        "fault_injected": runs["killed"],
        "workers": metrics.get("workers", []),
        "dense_params_in_sync": metrics.get("dense_params_in_sync"),
        "history": history,
        "final": metrics.get("final"),
        "evaluated_epoch": metrics.get("evaluated_epoch"),
        "embedding_files": metrics.get("embedding_files"),
        "epochs_run": len(history),
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
                                 config.graph.partition_method, seed=config.train.seed, overwrite=True)
    return url


def run_distributed(config: Config, out: str) -> dict:
    """``recgoat train`` with ``cluster.num_workers >= 1``: train on Ray, write the run artifact."""
    if config.cluster.num_workers < 1:
        raise ValueError("cluster.num_workers must be >= 1 for distributed training")
    if _published(out):
        raise ValueError(f"{out}: a finished run already exists here")
    partitions = resolve_partitions(config, out)
    art = Artifact(partitions, kind="partitions")
    if art["num_parts"] != config.cluster.num_workers:
        raise ValueError(f"{partitions} has {art['num_parts']} parts but cluster.num_workers = "
                         f"{config.cluster.num_workers}; one partition per worker is required")
    summary = fit(config, partitions, out, graph_name=art.get("graph_name", "recgoat"),
                  dataset=art.get("dataset"), id_maps=partitions)
    history = [_as_single_history(h) for h in summary.pop("history")]
    embedding_files = summary.pop("embedding_files", None)
    final = summary.pop("final", None) or {}
    scored = [h for h in history if h["valid"]]
    metric = config.train.valid_metric
    best = max(scored, key=lambda h: h["valid"].get(metric, -1.0)) if scored else None
    metrics = {"model": config.model.name, "partitions": partitions, **summary,
               "best_epoch": best["epoch"] if best else None,
               "valid_metric": metric, "seed": config.train.seed,
               "seconds_per_epoch": (sum(h["seconds"] for h in history) / len(history)) if history else None,
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
    from recgoat_dist.train.report import plot_history
    with ArtifactWriter(out, kind="run") as writer:
        writer.write_bytes("config.yaml", config.to_yaml().encode())
        writer.write_json("metrics.json", metrics)
        writer.write_json("history.json", history)
        writer.write_bytes("report.png", plot_history(history, metrics["best_epoch"],
                                                      f"{config.model.name} on {summary['num_workers']} "
                                                      f"workers (seed {config.train.seed})"))
        writer.commit({"model": config.model.name, "distributed": True, "checkpoints": TRAIN_DIR,
                       "metrics": {k: metrics.get(k) for k in ("best_epoch", "epochs_run", "num_workers",
                                                               "restarts", "seconds_per_epoch")}})
    logger.info("distributed run written to %s (valid %s)", out, json.dumps(metrics.get("valid", {})))
    return metrics


def _as_single_history(record: dict) -> dict:
    """A worker's epoch record in the single-process trainer's ``history.json`` shape."""
    valid = {k[len("valid_"):]: v for k, v in record.items() if k.startswith("valid_")}
    train = {k: v for k, v in record.items() if k in ("loss", "bpr", "reg", "cmcl", "oat")}
    extra = {k: v for k, v in record.items() if k in ("steps", "edges", "edges_per_second")}
    return {"epoch": record["epoch"], "train": train, "valid": valid or None,
            "seconds": record.get("train_seconds", 0.0), **extra}


def _published(url: str) -> bool:
    try:
        Artifact(url)
        return True
    except Exception:
        return False
