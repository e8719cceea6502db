"""One Ray Tune trial: train one sampled config through the trainer's entry point, report each epoch.

ASHA cuts trials on their validation score *per epoch*, so a trial must report while it trains.
The trainer's entry point ``recgoat_dist.pipeline.train(config, out)`` has no epoch callback yet;
until it has one, the trial trains in a background thread and reads the run's own progress: the
trainer writes ``checkpoints/last.pt`` (atomically, by rename) after every epoch, holding the
history of validation metrics so far. :func:`train_with_epoch_reports` uses a real callback
instead as soon as ``train`` accepts ``on_epoch`` (signature: ``on_epoch(epoch: int,
valid: dict | None) -> None``, called after the epoch's checkpoint is saved), so nothing here
changes when the trainer grows one.

Only validation metrics leave a trial: the test split is never reported to Tune, so no selection
can use it.
"""
from __future__ import annotations

import inspect
import logging
import os
import shutil
import threading
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


def train_with_epoch_reports(config: Config, out: str, on_epoch: OnEpoch, poll_seconds: float = 0.5) -> dict:
    """``pipeline.train(config, out)``, calling ``on_epoch(epoch, valid_metrics)`` once per epoch, in order."""
    from recgoat_dist import pipeline

    if "on_epoch" in inspect.signature(pipeline.train).parameters:
        return pipeline.train(config, out, on_epoch=on_epoch)
    return _train_reading_progress(config, out, on_epoch, poll_seconds)


def _train_reading_progress(config: Config, out: str, on_epoch: OnEpoch, poll_seconds: float) -> dict:
    """Train in a thread; report epochs from the run's ``checkpoints/last.pt`` as they appear."""
    from recgoat_dist import pipeline
    from recgoat_dist.train.run import Run

    if "://" in out:
        raise ValueError(f"{out}: trial runs must be local paths (their progress is read from disk)")
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["metrics"] = pipeline.train(config, out)
        except BaseException as exc:  # re-raised in the trial's thread below
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="recgoat-trial-train", daemon=True)
    thread.start()
    reported, stamp = 0, None
    last = os.path.join(out, "checkpoints", "last.pt")
    while thread.is_alive():
        thread.join(poll_seconds)
        reported, stamp = _report_new_epochs(last, reported, stamp, on_epoch)
    if "error" in outcome:
        raise outcome["error"]
    for entry in Run(out).history[reported:]:     # the published history is complete
        on_epoch(entry["epoch"], entry["valid"])
    return outcome["metrics"]


def _report_new_epochs(path: str, reported: int, stamp, on_epoch: OnEpoch) -> tuple[int, object]:
    from recgoat_dist.train import checkpoint as ckpt

    try:
        info = os.stat(path)
    except FileNotFoundError:
        return reported, stamp
    new_stamp = (info.st_mtime_ns, info.st_size)
    if new_stamp == stamp:
        return reported, stamp
    try:
        history = ckpt.load(path)["progress"]["history"]
    except Exception:      # being rewritten by the run's publication: read it at the next poll
        return reported, stamp
    for entry in history[reported:]:
        on_epoch(entry["epoch"], entry["valid"])
    return max(reported, len(history)), new_stamp


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
