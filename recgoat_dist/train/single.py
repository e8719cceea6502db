"""Single-process training: ``train_single(config, out)``.

The one training loop (:mod:`.loop`) on the local engine (:class:`.engine.LocalEngine`): build the
inputs and the model, resume or warm-start, run the loop, publish the run.
"""
from __future__ import annotations

import logging
from typing import Callable, Optional

import numpy as np
import torch

from recgoat_dist.config import Config, ConfigError
from recgoat_dist.model import build_model
from recgoat_dist.storage import MANIFEST, StorageError, exists, filesystem, join
from recgoat_dist.train import checkpoint as ckpt
from recgoat_dist.train.engine import LAST, LocalEngine, model_meta
from recgoat_dist.train.inputs import load_inputs
from recgoat_dist.train.loop import Progress, fit, run_step_cost

logger = logging.getLogger(__name__)


def prepare_out(out: str, config: Config, overwrite: bool) -> None:
    """Refuse to clobber a published run unless overwriting; overwriting starts from scratch."""
    if not exists(join(out, MANIFEST)):
        return
    if config.train.resume:
        raise StorageError(f"{out}: this run is already complete (manifest present); nothing to resume")
    if not overwrite:
        raise StorageError(f"{out}: a run already exists here (pass --overwrite)")
    fs, path = filesystem(out)
    fs.rm(join(path, MANIFEST))
    fs.rm(path, recursive=True)


def resume_state(out: str, config: Config, engine: LocalEngine) -> Progress:
    """Restore model, optimisers, random generators and progress from ``out``'s last checkpoint."""
    url = join(out, LAST)
    if not config.train.resume:
        return Progress()
    if not exists(url):
        logger.info("no checkpoint at %s: starting from epoch 0", url)
        return Progress()
    state = ckpt.load(url)
    if state["config"]["model"] != config.to_dict()["model"]:
        raise ConfigError(f"{url}: the checkpoint's model section differs from the config; "
                          "resume with the same model settings")
    progress = engine.resume(state)
    logger.info("resumed from %s: continuing at epoch %d (best so far: epoch %s)", url, progress.next_epoch,
                progress.best_epoch)
    return progress


def train_single(config: Config, out: str, *, overwrite: bool = False, graph=None,
                 warm_start: Optional[dict] = None, on_epoch: Optional[Callable] = None) -> dict:
    """Train ``config.model.name`` in this process, publish the run at ``out``, return its metrics.

    ``warm_start``: ``{"model": state_dict}`` of a model built for *this* run's sizes (rows already
    remapped, e.g. by nightly retraining); loaded before the first epoch, ignored when resuming.
    ``on_epoch(epoch, valid)``: see :func:`recgoat_dist.train.loop.fit` (e.g. Ray Tune reports).
    """
    prepare_out(out, config, overwrite)
    # One Sinkhorn solve per batch: its per-call INFO line would drown the per-epoch log.
    logging.getLogger("recgoat_dist.ot.sinkhorn").setLevel(logging.WARNING)
    torch.manual_seed(config.train.seed)
    rng = np.random.default_rng(config.train.seed)
    inputs = load_inputs(config, graph)
    model = build_model(config.model, **model_meta(inputs))
    if warm_start is not None:
        model.load_state_dict(warm_start["model"])
    engine = LocalEngine(config, inputs, model, out, rng)
    progress = resume_state(out, config, engine)
    logger.info("training %s (%d parameters) for up to %d epochs on %s, %s propagation, %d steps per epoch",
                config.model.name, sum(p.numel() for p in model.parameters()), config.train.epochs,
                engine.device, engine.propagation, engine.steps_per_epoch)
    results = fit(engine, config, progress, on_epoch)
    seconds = [h["seconds"] for h in progress.history]
    metrics = {
        "model": config.model.name,
        "engine": "local",
        "propagation": engine.propagation,
        "device": str(engine.device),
        "best_epoch": progress.best_epoch,
        "epochs_run": len(progress.history),
        "seconds_per_epoch": float(np.mean(seconds)),
        "valid_metric": config.train.valid_metric,
        "seed": config.train.seed,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "dataset": inputs.dataset_url,
        "graph": inputs.graph_url,
        "step_cost": run_step_cost(progress.history),
        **results,
    }
    from recgoat_dist.storage import read_bytes
    from recgoat_dist.train.run import publish_run
    checkpoints = {name: read_bytes(join(out, name)) for name in ("checkpoints/best.pt", LAST)}
    publish_run(out, config, metrics, progress.history, checkpoints)
    return metrics
