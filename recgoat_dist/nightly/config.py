"""The ``nightly`` configuration section (pure dataclasses: importing this stays cheap).

``nightly.gate``: a candidate is promoted iff its holdout Recall@20 is at least
``champion * (1 - max_relative_drop)`` and at least ``min_recall`` (on the first night, only the
floor). Validation bounds refuse a bad delta before anything is written.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class GateConfig:
    max_relative_drop: float = 0.05    # candidate Recall@20 >= champion * (1 - this)
    min_recall: float = 0.0            # absolute floor, also the only check on the first night
    metric: str = "recall@20"


@dataclass
class NightlyConfig:
    registry: Optional[str] = None     # model home (local path or s3://...)
    delta: Optional[str] = None        # daily delta URL template with {date}, e.g. s3://b/events/date={date}
    epochs: int = 5                    # epochs of a warm-started night (init uses train.epochs)
    window_days: int = 0               # 0: keep every interaction; N: train on the last N days
    holdout_fraction: float = 0.2      # per-user seeded share of the date's interactions held out for the gate
    full_rebuild_every: int = 7        # KNN graph: full rebuild every N nights, incremental otherwise
    text_modality: str = "text"        # item modality item_text.parquet is encoded into
    export_top_k: int = 20             # recommendations per user in the version's export
    seed: int = 0                      # holdout sampling
    # Delta validation bounds.
    max_duplicate_fraction: float = 0.5   # repeated (user, item) rows above this share fail the night
    min_volume_ratio: float = 0.2      # interactions vs the trailing mean of decided nights
    max_volume_ratio: float = 5.0
    volume_nights: int = 7             # trailing nights in that mean
    lock_stale_seconds: int = 6 * 3600  # a lock older than this is taken over (crashed run)
    fault: Optional[str] = None        # testing: raise after this step (dataset|graph|train|version|pointer)
    gate: GateConfig = field(default_factory=GateConfig)


FAULT_STEPS = ("dataset", "graph", "train", "version", "pointer")


def validate_nightly(config: NightlyConfig, error) -> None:
    """Range checks; ``error(message)`` builds the caller's ConfigError."""
    n, g = config, config.gate
    checks = [
        (n.epochs >= 1, "nightly.epochs", "must be >= 1"),
        (n.window_days >= 0, "nightly.window_days", "must be >= 0"),
        (0.0 < n.holdout_fraction < 1.0, "nightly.holdout_fraction", "must be in (0, 1)"),
        (n.full_rebuild_every >= 1, "nightly.full_rebuild_every", "must be >= 1"),
        (n.export_top_k >= 1, "nightly.export_top_k", "must be >= 1"),
        (0.0 <= n.max_duplicate_fraction <= 1.0, "nightly.max_duplicate_fraction", "must be in [0, 1]"),
        (0.0 <= n.min_volume_ratio <= n.max_volume_ratio, "nightly.min_volume_ratio",
         "must be in [0, nightly.max_volume_ratio]"),
        (n.volume_nights >= 1, "nightly.volume_nights", "must be >= 1"),
        (n.lock_stale_seconds >= 0, "nightly.lock_stale_seconds", "must be >= 0"),
        (n.fault is None or n.fault in FAULT_STEPS, "nightly.fault", f"must be one of {', '.join(FAULT_STEPS)}"),
        (n.delta is None or "{date}" in n.delta, "nightly.delta", "must contain {date}"),
        (0.0 <= g.max_relative_drop < 1.0, "nightly.gate.max_relative_drop", "must be in [0, 1)"),
        (0.0 <= g.min_recall <= 1.0, "nightly.gate.min_recall", "must be in [0, 1]"),
        (g.metric == "recall@20", "nightly.gate.metric", "only recall@20 is supported"),
    ]
    for ok, key, message in checks:
        if not ok:
            raise error(f"config key {key}: {message}")
