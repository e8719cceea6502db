"""Single-process training: ``train_single(config, out)``.

The loop: build inputs and model, then per epoch one pass of BPR mini-batches (a full-graph
forward per batch, as MMRec's LightGCN does), a validation evaluation, a checkpoint, and early
stopping on the validation metric. At the end the best epoch is restored, evaluated on
validation and test (and on cold items when the data has them), and the run is published.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from recgoat_dist.config import Config, ConfigError
from recgoat_dist.eval import evaluate_ranking
from recgoat_dist.model import RecGOAT, Representations, build_model
from recgoat_dist.storage import MANIFEST, StorageError, exists, filesystem, join
from recgoat_dist.train import checkpoint as ckpt
from recgoat_dist.train.inputs import TrainingInputs, load_inputs
from recgoat_dist.train.sampling import bpr_batches, negative_candidates, num_batches

logger = logging.getLogger(__name__)
LAST, BEST = "checkpoints/last.pt", "checkpoints/best.pt"


@dataclass
class Progress:
    """Everything that changes epoch to epoch and must survive a restart."""

    next_epoch: int = 0
    best_epoch: Optional[int] = None
    best_score: float = -1.0
    bad_epochs: int = 0
    history: list = field(default_factory=list)

    def record(self, epoch: int, train: dict, valid: Optional[dict], seconds: float, metric: str) -> bool:
        """Add an epoch; returns True when the validation score improved (MMRec: strictly)."""
        self.history.append({"epoch": epoch, "train": train, "valid": valid, "seconds": seconds})
        self.next_epoch = epoch + 1
        if valid is None:
            return False
        if valid[metric] > self.best_score:
            self.best_epoch, self.best_score, self.bad_epochs = epoch, valid[metric], 0
            return True
        self.bad_epochs += 1
        return False

    def should_stop(self, patience: int) -> bool:
        """MMRec's rule: stop once more than ``patience`` evaluations in a row did not improve."""
        return self.bad_epochs > patience

    def to_dict(self) -> dict:
        return {"next_epoch": self.next_epoch, "best_epoch": self.best_epoch, "best_score": self.best_score,
                "bad_epochs": self.bad_epochs, "history": self.history}


class FullGraph:
    """Runs a model on the whole graph: every layer sees the full heterograph."""

    def __init__(self, model: RecGOAT, inputs: TrainingInputs):
        self.model, self.inputs = model, inputs
        self.blocks = [inputs.graph] * model.num_graph_layers
        self.nodes = {"user": torch.arange(inputs.num_users), "item": torch.arange(inputs.num_items)}
        self.item_cold = torch.from_numpy(inputs.cold_items)

    def forward(self) -> Representations:
        reps = self.model(self.blocks, self.nodes, self.inputs.item_feats, self.inputs.user_feats)
        reps.item_cold = self.item_cold
        return reps

    @torch.no_grad()
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        was_training = self.model.training
        self.model.eval()
        try:
            return self.model.final_embeddings(self.forward())
        finally:
            self.model.train(was_training)


def train_epoch(runner: FullGraph, optimizer: torch.optim.Optimizer, candidates: np.ndarray, batch_size: int,
                rng: np.random.Generator, progress: bool, epoch: int) -> dict[str, float]:
    """One pass over the training interactions; returns the mean of each loss part per batch."""
    from tqdm import tqdm

    runner.model.train()
    if runner.model.oat is not None or runner.model.user_oat is not None:
        with torch.no_grad():
            runner.model.refresh_landmarks(runner.forward())
    sums: dict[str, float] = {}
    batches = bpr_batches(runner.inputs.train, candidates, batch_size, rng)
    total = num_batches(runner.inputs.train, batch_size)
    for users, pos, neg in tqdm(batches, total=total, desc=f"epoch {epoch}", leave=False, disable=not progress,
                                mininterval=1.0):
        optimizer.zero_grad()
        reps = runner.forward()
        out = runner.model.loss(reps, torch.from_numpy(users), torch.from_numpy(pos), torch.from_numpy(neg))
        out.total.backward()
        optimizer.step()
        for key, value in {"loss": float(out.total), **out.parts}.items():
            sums[key] = sums.get(key, 0.0) + value
    return {key: value / max(total, 1) for key, value in sums.items()}


def evaluate(runner: FullGraph, config: Config, splits: tuple[str, ...] = ("valid",),
             cold: bool = False) -> dict[str, dict]:
    """Metrics per split (``valid``, ``test``) and, with ``cold``, on cold held-out items only."""
    users, items = runner.embeddings()
    t, inputs = config.train, runner.inputs
    out = {}
    for split in splits:
        heldout = getattr(inputs, split)
        out[split] = evaluate_ranking(users, items, inputs.train, heldout, t.topk, t.eval_user_block, t.eval_item_block)
        if cold and inputs.cold_items.any():
            cold_heldout = heldout.restrict_items(inputs.cold_items)
            if cold_heldout.degree().any():
                out[f"{split}_cold"] = evaluate_ranking(users, items, inputs.train, cold_heldout, t.topk,
                                                        t.eval_user_block, t.eval_item_block)
    return out


def model_meta(inputs: TrainingInputs) -> dict:
    """What :func:`build_model` needs besides the config (stored in every checkpoint)."""
    return {"num_users": inputs.num_users, "num_items": inputs.num_items,
            "item_feature_dims": inputs.item_feature_dims, "user_feature_dim": inputs.user_feature_dim}


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


def resume_state(out: str, config: Config, model: RecGOAT, optimizer, rng) -> Progress:
    """Restore model, optimiser, random generators and progress from ``out``'s last checkpoint."""
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
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    ckpt.restore_rng(rng, state["rng"])
    progress = Progress(**state["progress"])
    logger.info("resumed from %s: continuing at epoch %d (best so far: epoch %s)", url, progress.next_epoch,
                progress.best_epoch)
    return progress


def train_single(config: Config, out: str, *, overwrite: bool = False, graph=None,
                 warm_start: Optional[dict] = None) -> dict:
    """Train ``config.model.name`` in this process, publish the run at ``out``, return its metrics.

    ``warm_start``: ``{"model": state_dict}`` of a model built for *this* run's sizes (rows already
    remapped, e.g. by nightly retraining); loaded before the first epoch, ignored when resuming.
    """
    prepare_out(out, config, overwrite)
    # One Sinkhorn solve per batch: its per-call INFO line would drown the per-epoch log.
    logging.getLogger("recgoat_dist.ot.sinkhorn").setLevel(logging.WARNING)
    torch.manual_seed(config.train.seed)
    rng = np.random.default_rng(config.train.seed)
    inputs = load_inputs(config, graph)
    model = build_model(config.model, **model_meta(inputs))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay)
    if warm_start is not None:
        model.load_state_dict(warm_start["model"])
    progress = resume_state(out, config, model, optimizer, rng)
    runner = FullGraph(model, inputs)
    candidates = negative_candidates(inputs.train, config.train.negatives)
    t = config.train
    logger.info("training %s (%d parameters) for up to %d epochs", config.model.name,
                sum(p.numel() for p in model.parameters()), t.epochs)
    for epoch in range(progress.next_epoch, t.epochs):
        start = time.perf_counter()
        losses = train_epoch(runner, optimizer, candidates, t.batch_size, rng, t.progress, epoch)
        seconds = time.perf_counter() - start
        valid = evaluate(runner, config)["valid"] if (epoch + 1) % t.eval_every == 0 else None
        improved = progress.record(epoch, losses, valid, seconds, t.valid_metric)
        save_checkpoints(out, config, inputs, model, optimizer, rng, progress, improved)
        log_epoch(epoch, losses, valid, seconds, time.perf_counter() - start - seconds, improved)
        if progress.should_stop(t.patience):
            logger.info("early stop: no %s improvement for %d evaluations", t.valid_metric, progress.bad_epochs)
            break
    return finish(out, config, inputs, runner, progress)


def save_checkpoints(out, config, inputs, model, optimizer, rng, progress: Progress, improved: bool) -> None:
    meta = {"config": config.to_dict(), "model_meta": model_meta(inputs), "epoch": progress.next_epoch - 1}
    if improved or progress.best_epoch is None:
        ckpt.save(join(out, BEST), {**meta, "model": model.state_dict()})
    ckpt.save(join(out, LAST), {**meta, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                "rng": ckpt.rng_state(rng), "progress": progress.to_dict()})


def log_epoch(epoch: int, losses: dict, valid: Optional[dict], seconds: float, eval_seconds: float,
              improved: bool) -> None:
    parts = " ".join(f"{k} {v:.4g}" for k, v in losses.items() if k != "loss")
    line = f"epoch {epoch}: loss {losses.get('loss', float('nan')):.4f} ({parts})"
    if valid is not None:
        line += (f" | valid recall@20 {valid.get('recall@20', float('nan')):.4f} "
                 f"ndcg@20 {valid.get('ndcg@20', float('nan')):.4f}{' *' if improved else ''}")
    logger.info("%s | %.2f s train, %.2f s eval", line, seconds, eval_seconds)


def finish(out: str, config: Config, inputs: TrainingInputs, runner: FullGraph, progress: Progress) -> dict:
    """Restore the best epoch, evaluate valid and test there, and publish the run."""
    if progress.best_epoch is None:
        raise ValueError("no epoch was evaluated (train.epochs < train.eval_every?)")
    best = ckpt.load(join(out, BEST))
    runner.model.load_state_dict(best["model"])
    results = evaluate(runner, config, ("valid", "test"), cold=True)
    seconds = [h["seconds"] for h in progress.history]
    metrics = {
        "model": config.model.name,
        "best_epoch": progress.best_epoch,
        "epochs_run": len(progress.history),
        "seconds_per_epoch": float(np.mean(seconds)),
        "valid_metric": config.train.valid_metric,
        "seed": config.train.seed,
        "num_parameters": sum(p.numel() for p in runner.model.parameters()),
        "dataset": inputs.dataset_url,
        "graph": inputs.graph_url,
        **results,
    }
    from recgoat_dist.train.run import publish_run
    publish_run(out, config, metrics, progress.history)
    return metrics
