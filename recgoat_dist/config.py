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
    knn_index_memory_gb: float = 0.0   # faiss index stores PQ codes when full vectors exceed this (0: never)
    partition_method: str = "metis"    # metis | random
    partition_memory_gb: float = 0.0   # metis is refused above this estimate (0: 70% of RAM)


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
    # What the modality KNN graphs refine: content (GAT of the content streams), id (a frozen
    # mixed-mean item graph propagated over the item ID embeddings, added to LightGCN's items,
    # as MMRec's FREEDOM does; content streams are then projections only) or both.
    knn_refines: str = "content"       # content | id | both
    item_graph_layers: int = 1         # id / both: propagations over the item graph
    item_graph_weights: Optional[dict] = None   # id / both: {modality: weight} (default: equal; absent = 0)
    # Where the item's fused content (OAT-transported modality features) joins the ID stream:
    # output (added to LightGCN's output, the paper's fusion) or input (added to the item's layer-0
    # ego embedding, so LightGCN propagates it to users and neighbours). Single-process only.
    content_entry: str = "output"      # output | input
    fusion: str = "simplex"            # simplex (gammas softmax, sum 1) | free (one unconstrained weight per modality)


@dataclass
class TrainConfig:
    seed: int = 0
    epochs: int = 100
    patience: int = 20                 # early stopping on validation Recall@20
    batch_size: int = 2048             # the global batch: N workers take batch_size / N each per step
    lr: float = 1e-3
    weight_decay: float = 0.0          # Adam weight decay (MMRec default 0)
    eval_every: int = 1
    device: str = "auto"               # auto | cpu | cuda
    topk: list = field(default_factory=lambda: [5, 10, 20, 50])
    valid_metric: str = "recall@20"    # early stopping and best-epoch selection
    negatives: str = "train_items"     # train_items (MMRec: items seen in training) | all
    eval_user_block: int = 1024        # users scored at once in evaluation
    eval_item_block: int = 65536       # items scored at once in evaluation
    resume: bool = False               # continue from the run's last checkpoint at --out
    progress: bool = True              # per-step progress bar within each epoch
    # How a step propagates: full (every stream on the whole graph, per batch: small graphs, the
    # MMRec protocol), sampled (the batch's neighbourhood only; cost set by the batch), or auto.
    propagation: str = "auto"          # auto | full | sampled
    fanouts: list = field(default_factory=lambda: [10])   # sampled: user-item neighbours per hop
    refresh_every: int = 0             # sampled: historical layers re-inferred every N steps (0: each epoch)
    full_max_edges: int = 2_000_000    # auto: full propagation up to this many training edges (one process)
    max_steps_per_epoch: int = 0       # cap on steps per epoch (benchmarks, smoke runs); 0 = no cap
    # Evaluate on a fixed seeded sample of this many users (0: all). Full ranking costs users x
    # items: at 10^6 users and items it is hours; a sample of 10^4 estimates the same means.
    eval_users: int = 0


@dataclass
class ClusterConfig:
    num_workers: int = 0               # 0 = single process; N >= 1 = Ray Train with N DGL clients
    address: Optional[str] = None      # Ray address; RAY_ADDRESS is honoured when unset
    use_gpu: bool = False              # one GPU per worker: model, blocks and features on it (NCCL + gloo)
    max_failures: int = 1              # worker-group restarts Ray Train may make (-1: unlimited)
    graphbolt: bool = False            # graph servers sample with GraphBolt (DGL 2.1) instead of DGL's graph


@dataclass
class ExportConfig:
    ranking: str = "auto"              # auto | exact | ann (FAISS IVF inner-product index)
    ann_above: int = 200_000           # auto ranks through the ANN index above this many items
    ann_target_recall: float = 0.97    # nprobe tuning target (recall@20 vs exact, tuning users)
    ann_recall_users: int = 2000       # users on which ann_recall@20 is measured


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
    export: ExportConfig = field(default_factory=ExportConfig)
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
    if annotation is float and isinstance(value, str):
        # YAML 1.1 reads "1e-3" (no dot) as a string; a float key takes it as the number it is.
        try:
            return float(value)
        except ValueError:
            pass
    expected = typing.get_origin(annotation) or annotation
    if expected is Any or (isinstance(value, expected) and not (expected is int and isinstance(value, bool))):
        return value
    raise ConfigError(f"config key {key}: expected {getattr(expected, '__name__', expected)}, "
                      f"got {type(value).__name__} {value!r}")


# Keys that were renamed or removed, with what to use instead.
MOVED = {
    "cluster.fanouts": "train.fanouts (sampled propagation, one entry per hop)",
    "cluster.num_samplers": "nothing: workers sample in their own process (DGL sampler processes hang in "
                            "dgl#3887 and #7753); remove the key",
}


def _merge(obj: Any, updates: dict, prefix: str = "") -> None:
    if not isinstance(updates, dict):
        raise ConfigError(f"config key {prefix.rstrip('.') or '<root>'}: expected a mapping")
    hints = typing.get_type_hints(type(obj))
    for key, value in updates.items():
        full = f"{prefix}{key}"
        if full in MOVED:
            raise ConfigError(f"config key {full} is gone: use {MOVED[full]}")
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
    ("model", "knn_refines"): ("content", "id", "both"),
    ("model", "content_entry"): ("output", "input"),
    ("model", "fusion"): ("simplex", "free"),
    ("train", "device"): ("auto", "cpu", "cuda"),
    ("train", "negatives"): ("train_items", "all"),
    ("train", "propagation"): ("auto", "full", "sampled"),
    ("graph", "engine"): ("auto", "exact", "faiss"),
    ("graph", "partition_method"): ("metis", "random"),
    ("export", "ranking"): ("auto", "exact", "ann"),
}
# (section, key): (lowest allowed, whether the lowest is excluded); checked for every number.
RANGES = {
    ("data", "synthetic_users"): (1, False), ("data", "synthetic_items"): (1, False),
    ("data", "synthetic_seed"): (0, False),
    ("graph", "knn_k"): (1, False), ("graph", "user_knn_k"): (0, False), ("graph", "approx_above"): (0, False),
    ("model", "dim"): (1, False), ("model", "n_layers"): (0, False), ("model", "gat_layers"): (0, False),
    ("model", "gat_heads"): (1, False), ("model", "dropout"): (0.0, False), ("model", "reg_weight"): (0.0, False),
    ("model", "lambda_cmcl"): (0.0, False), ("model", "lambda_oat"): (0.0, False),
    ("model", "temperature"): (0.0, True), ("model", "ot_eps"): (0.0, True),
    ("model", "num_landmarks"): (1, False), ("model", "user_lm_weight"): (0.0, False),
    ("model", "cmcl_batch"): (0, False), ("model", "ot_batch"): (0, False),
    ("model", "item_graph_layers"): (1, False),
    ("train", "seed"): (0, False), ("train", "epochs"): (1, False), ("train", "patience"): (0, False),
    ("train", "batch_size"): (1, False), ("train", "lr"): (0.0, True), ("train", "weight_decay"): (0.0, False),
    ("train", "eval_every"): (1, False), ("train", "eval_user_block"): (1, False),
    ("train", "eval_item_block"): (1, False), ("train", "refresh_every"): (0, False),
    ("train", "full_max_edges"): (0, False), ("train", "max_steps_per_epoch"): (0, False),
    ("train", "eval_users"): (0, False),
    ("cluster", "num_workers"): (0, False), ("cluster", "max_failures"): (-1, False),
    ("graph", "partition_memory_gb"): (0.0, False), ("graph", "knn_index_memory_gb"): (0.0, False),
    ("export", "ann_above"): (0, False), ("export", "ann_target_recall"): (0.0, True),
    ("export", "ann_recall_users"): (1, False),
}


def _int_list(key: str, values, allow_all: bool = False) -> None:
    ok = isinstance(values, list) and values and all(
        isinstance(v, int) and not isinstance(v, bool) and (v >= 1 or (allow_all and v == -1)) for v in values)
    if not ok:
        extra = " (or -1 for every neighbour)" if allow_all else ""
        raise ConfigError(f"config key {key}: expected a non-empty list of positive integers{extra}, got {values!r}")


def _check_item_graph(config: Config) -> None:
    m = config.model
    weights = m.item_graph_weights
    if weights is not None and (not isinstance(weights, dict) or not weights or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
            for k, v in weights.items()) or not sum(weights.values()) > 0):
        raise ConfigError(f"config key model.item_graph_weights: expected {{modality: weight >= 0}} with a "
                          f"positive sum, got {weights!r}")


def validate(config: Config) -> Config:
    """Values outside their allowed set or range are errors naming the key, raised when the
    configuration loads (not once training has started)."""
    for (section, key), allowed in CHOICES.items():
        value = getattr(getattr(config, section), key)
        if value not in allowed:
            raise ConfigError(f"config key {section}.{key}: {value!r} is not one of {', '.join(allowed)}")
    for (section, key), (low, strict) in RANGES.items():
        value = getattr(getattr(config, section), key)
        if value < low or (strict and value == low):
            raise ConfigError(f"config key {section}.{key}: must be {'>' if strict else '>='} {low}, got {value!r}")
    if config.model.dropout >= 1:
        raise ConfigError(f"config key model.dropout: must be < 1, got {config.model.dropout!r}")
    if config.model.dim % config.model.gat_heads:
        raise ConfigError(f"config key model.gat_heads: must divide model.dim ({config.model.dim})")
    modalities = config.model.modalities
    if modalities is not None and (not modalities or not all(isinstance(m, str) and m for m in modalities)):
        raise ConfigError(f"config key model.modalities: expected a non-empty list of modality names, got "
                          f"{modalities!r}")
    _int_list("train.topk", config.train.topk)
    _int_list("train.fanouts", config.train.fanouts, allow_all=True)
    _check_item_graph(config)
    topk = config.train.topk
    metric, _, k = config.train.valid_metric.partition("@")
    if metric not in ("recall", "ndcg", "precision", "map") or not k.isdigit() or int(k) not in topk:
        raise ConfigError(f"config key train.valid_metric: {config.train.valid_metric!r} must be "
                          f"recall|ndcg|precision|map@K with K in train.topk {topk}")
    if config.cluster.num_workers == 0 and config.cluster.use_gpu:
        raise ConfigError("config key cluster.use_gpu: it places Ray workers on GPUs (cluster.num_workers >= 1); "
                          "a single-process run uses train.device")
    if config.cluster.num_workers >= 1 and config.train.propagation == "full":
        raise ConfigError("config key train.propagation: 'full' runs every stream on the whole graph in one "
                          "process; distributed workers (cluster.num_workers >= 1) need 'sampled' or 'auto'")
    if config.cluster.num_workers >= 1 and config.model.content_entry == "input":
        raise ConfigError("config key model.content_entry: 'input' is supported by the single-process engine "
                          "only (cluster.num_workers = 0); the distributed engine's tables and landmarks "
                          "implement content_entry=output")
    if config.cluster.num_workers >= 1 and config.train.device == "cuda" and not config.cluster.use_gpu:
        raise ConfigError("config key train.device: distributed workers run on GPUs only with cluster.use_gpu=true")
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
