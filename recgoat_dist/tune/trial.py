"""One Ray Tune trial: train one sampled config through the trainer's entry point, report each epoch.

ASHA cuts trials on their validation score *per epoch*, so a trial must report while it trains:
it passes ``on_epoch(epoch, valid)`` to the trainer's entry point ``recgoat_dist.pipeline.train``
(called in the training process after each epoch's checkpoint; ``valid`` is None on epochs
without evaluation) and turns each call into one ``tune.report``.

Only validation metrics leave a trial: the test split is never reported to Tune, so no selection
can use it.
"""
from __future__ import annotations

import logging
import os
import shutil
from typing import Callable, Optional

from recgoat_dist.config import Config

logger = logging.getLogger(__name__)

OnEpoch = Callable[[int, Optional[dict]], None]


class EpochTracker:
    """Turns per-epoch validation metrics into Tune reports, replaying the trainer's stopping rule.

    Each report carries the epoch count (ASHA's time axis), the epoch's score, the best score so far
    (what trials are compared on: a trial's final result is its best validation epoch, as the
    trainer restores it), and whether the trainer ends after this epoch (its own early stopping or
    the last epoch), so a trial cut by the scheduler can be told from one that completed.
    """

    def __init__(self, metric: str, patience: int, epochs: int):
        self.metric, self.patience, self.epochs = metric, patience, epochs
        self.best_score: Optional[float] = None
        self.best_epoch: Optional[int] = None
        self.bad_epochs = 0

    def update(self, epoch: int, valid: Optional[dict]) -> Optional[dict]:
        if valid is None:          # not an evaluation epoch (train.eval_every > 1)
            return None
        score = float(valid[self.metric])
        if self.best_score is None or score > self.best_score:     # the trainer's rule: strictly better
            self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
        else:
            self.bad_epochs += 1
        done = self.bad_epochs > self.patience or epoch + 1 >= self.epochs
        return {"epoch": epoch + 1, "score": score, "best_score": self.best_score, "best_epoch": self.best_epoch,
                "trainer_done": bool(done)}


def train_with_epoch_reports(config: Config, out: str, on_epoch: OnEpoch) -> dict:
    """``pipeline.train(config, out)``, calling ``on_epoch(epoch, valid_metrics)`` after each epoch."""
    from recgoat_dist import pipeline

    return pipeline.train(config, out, on_epoch=on_epoch)


def run_trial(params: dict, *, base: dict, keys: list, workdir: str, threads: int) -> None:
    """The Ray Tune function trainable: ``params`` maps dotted config keys to sampled values."""
    import torch
    from ray import tune

    from recgoat_dist.tune.space import apply_params

    torch.set_num_threads(max(1, threads))
    values = {k: (params[k].item() if hasattr(params[k], "item") else params[k]) for k in keys}
    config = apply_params(base, values)
    out = os.path.join(workdir, "runs", tune.get_context().get_trial_id())
    tracker = EpochTracker(config.train.valid_metric, config.train.patience, config.train.epochs)

    def on_epoch(epoch: int, valid: Optional[dict]) -> None:
        report = tracker.update(epoch, valid)
        if report is not None:
            tune.report(report)

    try:
        train_with_epoch_reports(config, out, on_epoch)
    finally:
        shutil.rmtree(out, ignore_errors=True)     # the best config is the product, not the runs
