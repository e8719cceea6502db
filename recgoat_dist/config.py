"""One configuration schema for every command: YAML files plus ``--set section.key=value``.

The schema is a tree of dataclasses. Loading merges, in order: the defaults below, the YAML file,
then each ``--set`` override (values parsed as YAML scalars, so ``--set train.epochs=5`` is an int).
An unknown key or a value of the wrong type is an error naming the key. The resolved configuration
is saved with every run (``config.yaml``).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from recgoat_dist.nightly.config import NightlyConfig, validate_nightly


class ConfigError(ValueError):
    """A configuration key is unknown or has a value of the wrong type."""


@dataclass
class DataConfig:
    dataset: Optional[str] = None      # URL of a canonical dataset (recgoat prepare ...)
    graph: Optional[str] = None        # URL of a graph artifact (recgoat graph ...)
    partitions: Optional[str] = None   # URL of a partition artifact (recgoat partition ...)
    # When dataset is absent, the demo creates the embedded synthetic default with these sizes.
    synthetic_users: int = 2000
    synthetic_items: int = 1500
    synthetic_seed: int = 0


@dataclass
class GraphConfig:
    knn_k: int = 10
    user_knn_k: int = 10
    engine: str = "auto"               # auto | exact | faiss
    approx_above: int = 200_000        # auto switches to faiss above this many items
    partition_method: str = "metis"    # metis | random


@dataclass
class ModelConfig:
    name: str = "recgoat"              # recgoat | lightgcn | no_oat | no_cmcl | no_gat | no_user_graph
    dim: int = 64
    n_layers: int = 3                  # LightGCN layers
    gat_layers: int = 1
    gat_heads: int = 2
    dropout: float = 0.0
    reg_weight: float = 1e-4           # L2 on the batch's ego embeddings (MMRec's EmbLoss)
    lambda_cmcl: float = 0.01
    lambda_oat: float = 0.01
    temperature: float = 0.2           # CMCL InfoNCE temperature
    ot_eps: float = 0.1                # Sinkhorn entropic regularisation
    num_landmarks: int = 256           # OAT landmark ID embeddings for full-catalog inference
    user_lm_weight: float = 0.5        # blend of the user LM stream into the user representation
    modalities: Optional[list] = None  # item modalities to use (default: every one with a knn graph)
    user_modality: Optional[str] = None  # user LM modality (default: "text", else the only one)
    cmcl_batch: int = 256              # CMCL on at most this many of a batch's items / users (0: all)
    ot_batch: int = 256                # Sinkhorn (OAT loss, potentials) on at most this many batch items


@dataclass
class TrainConfig:
    seed: int = 0
    epochs: int = 100
    patience: int = 20                 # early stopping on validation Recall@20
    batch_size: int = 2048
    lr: float = 1e-3
    weight_decay: float = 0.0          # Adam weight decay (MMRec default 0)
    eval_every: int = 1
    device: str = "auto"               # auto | cpu | cuda
    topk: list = field(default_factory=lambda: [5, 10, 20, 50])
    valid_metric: str = "recall@20"    # early stopping and best-epoch selection
    negatives: str = "train_items"     # train_items (MMRec: items seen in training) | all
    eval_user_block: int = 1024        # users scored at once in evaluation
    eval_item_block: int = 65536       # items scored at once in evaluation
    resume: bool = False               # continue from <out>/checkpoints/last.pt
    progress: bool = True              # per-epoch progress bar


@dataclass
class ClusterConfig:
    num_workers: int = 0               # 0 = single process; N >= 1 = Ray Train with N DGL clients
    address: Optional[str] = None      # Ray address; RAY_ADDRESS is honoured when unset
    use_gpu: bool = False
    max_failures: int = 1
    num_samplers: int = 0
    fanouts: list = field(default_factory=lambda: [10, 10, 10])


@dataclass
class DebugConfig:
    kill_worker_at_step: Optional[int] = None   # fault injection: kill one worker once at this step


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)
    nightly: NightlyConfig = field(default_factory=NightlyConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    hint = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if hint is typing.Union and type(None) in args:          # Optional[X]
        if value is None:
            return None
        annotation = next(a for a in args if a is not type(None))
    if isinstance(annotation, str):
        annotation = eval(annotation, vars(typing))  # noqa: S307 - our own annotations only
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    expected = typing.get_origin(annotation) or annotation
    if expected is Any or (isinstance(value, expected) and not (expected is int and isinstance(value, bool))):
        return value
    raise ConfigError(f"config key {key}: expected {getattr(expected, '__name__', expected)}, "
                      f"got {type(value).__name__} {value!r}")


def _merge(obj: Any, updates: dict, prefix: str = "") -> None:
    if not isinstance(updates, dict):
        raise ConfigError(f"config key {prefix.rstrip('.') or '<root>'}: expected a mapping")
    hints = typing.get_type_hints(type(obj))
    for key, value in updates.items():
        full = f"{prefix}{key}"
        if key not in hints:
            known = ", ".join(f"{prefix}{k}" for k in hints)
            raise ConfigError(f"unknown config key {full} (known: {known})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value, f"{full}.")
        else:
            setattr(obj, key, _coerce(full, value, hints[key]))


def parse_override(text: str) -> dict:
    """``a.b=value`` -> ``{"a": {"b": value}}`` with ``value`` parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else None
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


CHOICES = {
    ("model", "name"): ("recgoat", "lightgcn", "no_oat", "no_cmcl", "no_gat", "no_user_graph"),
    ("train", "device"): ("auto", "cpu", "cuda"),
    ("train", "negatives"): ("train_items", "all"),
}
POSITIVE = [("model", "dim"), ("train", "epochs"), ("train", "batch_size"), ("train", "eval_every"),
            ("train", "eval_user_block"), ("train", "eval_item_block"), ("model", "gat_heads")]


def validate(config: Config) -> Config:
    """Values outside their allowed set or range are errors naming the key."""
    for (section, key), allowed in CHOICES.items():
        value = getattr(getattr(config, section), key)
        if value not in allowed:
            raise ConfigError(f"config key {section}.{key}: {value!r} is not one of {', '.join(allowed)}")
    for section, key in POSITIVE:
        if getattr(getattr(config, section), key) < 1:
            raise ConfigError(f"config key {section}.{key}: must be >= 1")
    for key in ("n_layers", "gat_layers"):
        if getattr(config.model, key) < 0:
            raise ConfigError(f"config key model.{key}: must be >= 0")
    if config.model.dim % config.model.gat_heads:
        raise ConfigError(f"config key model.gat_heads: must divide model.dim ({config.model.dim})")
    if config.train.patience < 0:
        raise ConfigError("config key train.patience: must be >= 0")
    topk = config.train.topk
    if not topk or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in topk):
        raise ConfigError(f"config key train.topk: expected a list of positive integers, got {topk!r}")
    metric, _, k = config.train.valid_metric.partition("@")
    if metric not in ("recall", "ndcg", "precision", "map") or not k.isdigit() or int(k) not in topk:
        raise ConfigError(f"config key train.valid_metric: {config.train.valid_metric!r} must be "
                          f"recall|ndcg|precision|map@K with K in train.topk {topk}")
    validate_nightly(config.nightly, ConfigError)
    return config


def config_from_dict(values: dict) -> Config:
    """A :class:`Config` from a (possibly partial) nested dict, e.g. a run's saved ``config.yaml``."""
    config = Config()
    _merge(config, values or {})
    return validate(config)


def load_config(path: Optional[str] = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file at ``path`` (any fsspec URL), then ``--set`` overrides."""
    config = Config()
    if path:
        from recgoat_dist.storage import read_bytes
        loaded = yaml.safe_load(read_bytes(path)) or {}
        _merge(config, loaded)
    for text in overrides or []:
        _merge(config, parse_override(text))
    return validate(config)
