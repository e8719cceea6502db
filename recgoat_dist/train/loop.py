"""The one training loop, shared by the single-process run and every Ray Train worker.

    for each epoch:  engine.start_epoch  ->  steps of engine.step  ->  evaluation (every eval_every)
                     -> early-stopping record -> checkpoint
    then:            restore the best validation epoch -> valid / test (and cold-item) metrics

What differs between one process and many is the *engine* underneath (:mod:`.engine` for a local
DGL graph and dense tables; :mod:`.distributed.engine` for a DistGraph with sharded tables and
DDP): how a batch is sampled and stepped, how the model is evaluated, and where checkpoints go.
The loop, its early-stopping rule, its history records and its step-cost figures are the same.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

import numpy as np

logger = logging.getLogger(__name__)


@dataclass
class Progress:
    """Everything that changes epoch to epoch and must survive a restart."""

    next_epoch: int = 0
    best_epoch: Optional[int] = None
    best_score: float = -1.0
    bad_epochs: int = 0
    history: list = field(default_factory=list)

    def record(self, epoch: int, train: dict, valid: Optional[dict], seconds: float, metric: str,
               step_cost: Optional[dict] = None) -> bool:
        """Add an epoch; returns True when the validation score improved (MMRec: strictly)."""
        entry = {"epoch": epoch, "train": train, "valid": valid, "seconds": seconds}
        if step_cost is not None:
            entry["step_cost"] = step_cost
        self.history.append(entry)
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


class StepCost:
    """What a training step costs: seeds, input nodes (per node type), seconds, training edges."""

    def __init__(self, propagation: str):
        self.propagation = propagation
        self.steps, self.seconds, self.cpu_seconds, self.edges, self.seeds = 0, 0.0, 0.0, 0, 0
        self.inputs = {"user": 0, "item": 0}
        self.inputs_max = {"user": 0, "item": 0}

    def add(self, seconds: float, cpu_seconds: float, edges: int, seeds: int, inputs: dict) -> None:
        self.steps += 1
        self.seconds += seconds
        self.cpu_seconds += cpu_seconds
        self.edges += edges
        self.seeds += seeds
        for nt, n in inputs.items():
            self.inputs[nt] += int(n)
            self.inputs_max[nt] = max(self.inputs_max[nt], int(n))

    def summary(self) -> dict:
        n = max(self.steps, 1)
        return {"propagation": self.propagation, "steps": self.steps,
                "seeds_per_step": self.seeds / n,
                "input_nodes_per_step": {nt: v / n for nt, v in self.inputs.items()},
                "input_nodes_max": dict(self.inputs_max),
                "seconds_per_step": self.seconds / n,
                # this process's CPU time: what a step costs here when other processes share the cores
                "cpu_seconds_per_step": self.cpu_seconds / n,
                "edges_per_second": self.edges / max(self.seconds, 1e-9)}


class Engine(Protocol):
    """What the loop needs underneath it (see :class:`recgoat_dist.train.engine.LocalEngine`)."""

    propagation: str
    steps_per_epoch: int
    show_progress: bool                 # this process draws the per-step progress bar
    can_evaluate: bool                  # held-out data is there (raw test partitions have none)

    def start_epoch(self, epoch: int) -> None: ...
    def batches(self, epoch: int): ...                       # exactly steps_per_epoch batches
    def step(self, batch, global_step: int) -> tuple[dict, int, int, dict]: ...
    # ^ (loss parts incl. "loss", training edges, seeds, {ntype: input nodes}); may refresh history
    def evaluate(self, splits: tuple, cold: bool = False) -> dict: ...
    def save_best(self, epoch: int) -> None: ...
    def checkpoint(self, progress: Progress, last: bool) -> None: ...
    def restore_best(self, progress: Progress) -> None: ...


def train_epoch(engine: Engine, epoch: int) -> tuple[dict, dict]:
    """One epoch of steps; returns (mean loss parts per step, step-cost summary)."""
    from tqdm import tqdm

    engine.start_epoch(epoch)
    cost, sums = StepCost(engine.propagation), {}
    bar = tqdm(total=engine.steps_per_epoch, desc=f"epoch {epoch}", leave=False, mininterval=1.0,
               disable=not engine.show_progress)
    for step, batch in enumerate(engine.batches(epoch)):
        start, cpu = time.perf_counter(), time.process_time()
        parts, edges, seeds, inputs = engine.step(batch, epoch * engine.steps_per_epoch + step)
        cost.add(time.perf_counter() - start, time.process_time() - cpu, edges, seeds, inputs)
        for key, value in parts.items():
            sums[key] = sums.get(key, 0.0) + value
        bar.update()
    bar.close()
    return {k: v / max(cost.steps, 1) for k, v in sums.items()}, cost.summary()


def fit(engine: Engine, config, progress: Progress, on_epoch: Optional[Callable] = None) -> dict:
    """Train from ``progress`` to the end (epochs or early stop); returns the final metrics of the
    best validation epoch: ``{"valid": ..., "test": ..., ["valid_cold", "test_cold"]}``.

    ``on_epoch(epoch, valid)``: called after each epoch's checkpoint (``valid`` is None on epochs
    that were not evaluated); an exception it raises stops training and propagates.
    """
    t = config.train
    for epoch in range(progress.next_epoch, t.epochs):
        start = time.perf_counter()
        losses, cost = train_epoch(engine, epoch)
        seconds = time.perf_counter() - start
        scheduled = engine.can_evaluate and (epoch + 1) % t.eval_every == 0
        valid = engine.evaluate(("valid",))["valid"] if scheduled else None
        improved = progress.record(epoch, losses, valid, seconds, t.valid_metric, cost)
        if improved or progress.best_epoch is None:
            engine.save_best(epoch)
        stop = progress.should_stop(t.patience) or epoch + 1 == t.epochs
        engine.checkpoint(progress, last=stop)
        log_epoch(epoch, losses, valid, cost, seconds, time.perf_counter() - start - seconds, improved)
        if on_epoch is not None:
            on_epoch(epoch, valid)
        if progress.should_stop(t.patience):
            logger.info("early stop: no %s improvement for %d evaluations", t.valid_metric, progress.bad_epochs)
            break
    if not engine.can_evaluate:         # nothing to select on: the last epoch is the result
        engine.restore_best(progress)
        return {}
    if progress.best_epoch is None:
        raise ValueError("no epoch was evaluated (train.epochs < train.eval_every?)")
    engine.restore_best(progress)
    return engine.evaluate(("valid", "test"), cold=True)


def run_step_cost(history: list) -> Optional[dict]:
    """The run's ``step_cost``: the epochs' figures weighted by their steps."""
    costs = [h["step_cost"] for h in history if h.get("step_cost")]
    if not costs:
        return None
    steps = np.array([c["steps"] for c in costs], dtype=float)
    w = steps / max(steps.sum(), 1.0)
    seconds = sum(c["seconds_per_step"] * c["steps"] for c in costs)
    edges = sum(c["edges_per_second"] * c["seconds_per_step"] * c["steps"] for c in costs)
    return {"propagation": costs[-1]["propagation"], "steps": int(steps.sum()),
            "seeds_per_step": float(sum(wi * c["seeds_per_step"] for wi, c in zip(w, costs))),
            "input_nodes_per_step": {nt: float(sum(wi * c["input_nodes_per_step"][nt] for wi, c in zip(w, costs)))
                                     for nt in ("user", "item")},
            "input_nodes_max": {nt: max(c["input_nodes_max"][nt] for c in costs) for nt in ("user", "item")},
            "seconds_per_step": seconds / max(steps.sum(), 1.0),
            "cpu_seconds_per_step": sum(c.get("cpu_seconds_per_step", 0.0) * c["steps"] for c in costs)
            / max(steps.sum(), 1.0),
            "edges_per_second": edges / max(seconds, 1e-9)}


def log_epoch(epoch: int, losses: dict, valid: Optional[dict], cost: dict, seconds: float, eval_seconds: float,
              improved: bool) -> None:
    parts = " ".join(f"{k} {v:.4g}" for k, v in losses.items() if k != "loss")
    line = f"epoch {epoch}: loss {losses.get('loss', float('nan')):.4f} ({parts})"
    if valid is not None:
        line += (f" | valid recall@20 {valid.get('recall@20', float('nan')):.4f} "
                 f"ndcg@20 {valid.get('ndcg@20', float('nan')):.4f}{' *' if improved else ''}")
    inputs = cost["input_nodes_per_step"]
    logger.info("%s | %.2f s train, %.2f s eval | step_cost %s: %d steps, %.0f seeds, inputs %.0f users / "
                "%.0f items per step, %.4f s/step, %.0f edges/s", line, seconds, eval_seconds,
                cost["propagation"], cost["steps"], cost["seeds_per_step"], inputs["user"], inputs["item"],
                cost["seconds_per_step"], cost["edges_per_second"])
