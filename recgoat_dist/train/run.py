"""The run artifact written by ``recgoat train`` and its reader.

Layout under the run URL (manifest last, :class:`~recgoat_dist.storage.ArtifactWriter`)::

    config.yaml              the resolved configuration
    metrics.json             model, best_epoch, epochs_run, seconds_per_epoch, valid, test (+ *_cold)
    history.json             per epoch: loss parts, validation metrics, seconds
    report.png               loss parts and validation Recall/NDCG per epoch
    checkpoints/best.pt      model state at the best validation epoch (+ config, model_meta)
    checkpoints/last.pt      full training state after the last epoch (resumable)
"""
from __future__ import annotations

import json
from typing import Optional

import yaml

from recgoat_dist.config import Config, config_from_dict
from recgoat_dist.storage import Artifact, ArtifactWriter, join, read_bytes
from recgoat_dist.train import checkpoint as ckpt


def publish_run(out: str, config: Config, metrics: dict, history: list, files: Optional[dict] = None,
                manifest: Optional[dict] = None) -> dict:
    """Write the run's files (``files``: extra ``{relative path: bytes}``, e.g. checkpoints), then
    the manifest. Both engines publish through here."""
    from recgoat_dist.train.report import plot_history

    title = f"{metrics['model']} (seed {config.train.seed})"
    if metrics.get("num_workers"):
        title = f"{metrics['model']} on {metrics['num_workers']} workers (seed {config.train.seed})"
    with ArtifactWriter(out, kind="run") as writer:
        writer.write_bytes("config.yaml", config.to_yaml().encode())
        writer.write_json("metrics.json", metrics)
        writer.write_json("history.json", history)
        writer.write_bytes("report.png", plot_history(history, metrics["best_epoch"], title))
        for name, data in (files or {}).items():
            writer.write_bytes(name, data)
        summary = {k: metrics.get(k) for k in ("best_epoch", "epochs_run", "seconds_per_epoch", "num_workers",
                                               "restarts", "propagation")}
        summary["test"] = {k: v for k, v in (metrics.get("test") or {}).items() if k in ("recall@20", "ndcg@20")}
        return writer.commit({"model": metrics["model"], "metrics": summary, **(manifest or {})})


class Run:
    """A published run: its config, metrics, history and checkpoints."""

    def __init__(self, url: str):
        self.artifact = Artifact(url, kind="run")
        self.url = self.artifact.url

    @property
    def config(self) -> Config:
        return config_from_dict(yaml.safe_load(self.artifact.read_bytes("config.yaml")))

    @property
    def metrics(self) -> dict:
        return self.artifact.read_json("metrics.json")

    @property
    def history(self) -> list:
        return json.loads(self.artifact.read_bytes("history.json"))

    def checkpoint(self, which: str = "best") -> dict:
        """``{"model": state_dict, "config": dict, "model_meta": dict, "epoch": int, ...}``."""
        return ckpt.from_bytes(self.artifact.read_bytes(f"checkpoints/{which}.pt"))

    def load_model(self, which: str = "best"):
        """The trained :class:`~recgoat_dist.model.RecGOAT` (eval mode) of this run."""
        from recgoat_dist.model import build_model

        state = self.checkpoint(which)
        model = build_model(config_from_dict(state["config"]).model, **state["model_meta"])
        model.load_state_dict(state["model"])
        return model.eval()
