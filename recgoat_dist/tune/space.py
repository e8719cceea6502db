"""The search space file of ``recgoat tune``: distributions over dotted config keys, checked up front.

Format (YAML)::

    scheduler:                 # optional; --scheduler overrides name
      name: asha               # asha (successive halving on validation, per epoch) | random
      grace_period: 1          # epochs every trial runs before ASHA's first cut
      reduction_factor: 3      # ASHA keeps the best 1/reduction_factor at each rung
    params:                    # any key of recgoat_dist/config.py, dotted
      model.lambda_cmcl: {loguniform: [0.001, 0.1]}
      model.ot_eps:      {uniform: [0.1, 1.0]}
      model.gat_layers:  {randint: [0, 2]}          # inclusive bounds: 0, 1 or 2
      model.name:        {choice: [recgoat, no_oat]}
      train.lr:          {grid: [0.005, 0.02]}      # every value, crossed with the other grids

Every key is resolved against the config schema and every value (each choice / grid value, both
bounds of a range) is validated by it before any trial starts, so a typo or an out-of-range value
is one error naming the file and the key, not a crashed trial an hour later.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from recgoat_dist.config import Config, ConfigError, config_from_dict

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")
SCHEDULERS = ("asha", "random")

# Keys a trial cannot meaningfully vary, with the reason given to the user.
REFUSED = {
    "cluster": "trials are single-process runs; parallelism comes from running trials side by side",
    "debug": "fault injection is not a hyper-parameter",
    "export": "export settings do not change training or its validation score",
    "graph": "the graph is built before training (`recgoat graph`); tune data.graph over prebuilt graphs instead",
    "data.partitions": "trials train single-process on data.graph",
    "data.synthetic_users": "only used when no dataset is given; tune needs data.graph",
    "data.synthetic_items": "only used when no dataset is given; tune needs data.graph",
    "data.synthetic_seed": "only used when no dataset is given; tune needs data.graph",
    "train.resume": "every trial starts from scratch",
    "train.progress": "progress bars are off in trials",
    "train.valid_metric": "trials must be compared on one metric; set it in --config or --set",
}


class SpaceError(ConfigError):
    """The search space file is malformed: unknown key, bad distribution, value the schema refuses."""


@dataclass
class Param:
    key: str                 # dotted config key, e.g. model.lambda_cmcl
    kind: str                # one of DISTRIBUTIONS
    values: list             # choice / grid values, or [low, high] of a range

    def to_ray(self):
        """The Ray Tune sampler (or grid) for this parameter."""
        from ray import tune
        if self.kind == "choice":
            return tune.choice(self.values)
        if self.kind == "grid":
            return tune.grid_search(self.values)
        if self.kind == "uniform":
            return tune.uniform(*self.values)
        if self.kind == "loguniform":
            return tune.loguniform(*self.values)
        return tune.randint(self.values[0], self.values[1] + 1)     # Ray's upper bound is exclusive

    @property
    def largest(self) -> Any:
        """The largest value this parameter can take (ASHA's max_t when tuning train.epochs)."""
        return max(self.values)


@dataclass
class SearchSpace:
    source: str
    params: list[Param]
    scheduler: str = "asha"
    grace_period: int = 1
    reduction_factor: float = 3.0
    raw: dict = field(default_factory=dict)

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def ray_space(self) -> dict:
        return {p.key: p.to_ray() for p in self.params}

    def grid_size(self) -> int:
        size = 1
        for p in self.params:
            if p.kind == "grid":
                size *= len(p.values)
        return size

    def max_epochs(self, base: Config) -> int:
        tuned = [p for p in self.params if p.key == "train.epochs"]
        return int(tuned[0].largest) if tuned else base.train.epochs


def nested(key: str, value: Any) -> dict:
    """``"a.b", v`` -> ``{"a": {"b": v}}``."""
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def deep_update(target: dict, updates: dict) -> dict:
    for k, v in updates.items():
        if isinstance(v, dict) and isinstance(target.get(k), dict):
            deep_update(target[k], v)
        else:
            target[k] = v
    return target


def apply_params(base: dict, params: dict) -> Config:
    """The :class:`Config` of ``base`` (a config dict) with dotted ``params`` set; validated."""
    merged = yaml.safe_load(yaml.safe_dump(base))       # a deep copy through plain containers
    for key, value in params.items():
        deep_update(merged, nested(key, value))
    return config_from_dict(merged)


def _schema_type(key: str, source: str) -> Any:
    """The annotation of a leaf config key; errors for unknown keys, sections and refused keys."""
    parts = key.split(".")
    for prefix, reason in REFUSED.items():
        if key == prefix or key.startswith(prefix + "."):
            raise SpaceError(f"{source}: params.{key}: cannot be tuned ({reason})")
    obj: Any = Config()
    for depth, part in enumerate(parts):
        hints = typing.get_type_hints(type(obj))
        if part not in hints:
            known = ", ".join(".".join(parts[:depth] + [k]) for k in hints)
            raise SpaceError(f"{source}: params.{key}: unknown config key (known here: {known})")
        obj = getattr(obj, part)
        if depth == len(parts) - 1:
            if dataclasses.is_dataclass(obj):
                raise SpaceError(f"{source}: params.{key}: is a config section; name a key inside it")
            return hints[part]
    raise SpaceError(f"{source}: params.{key}: not a config key")  # unreachable for non-empty keys


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _parse_param(key: str, spec: Any, base: dict, source: str) -> Param:
    where = f"{source}: params.{key}"
    annotation = _schema_type(key, source)
    if not isinstance(spec, dict) or len(spec) != 1:
        raise SpaceError(f"{where}: expected one distribution as a mapping, e.g. {{choice: [a, b]}} "
                         f"(one of {', '.join(DISTRIBUTIONS)}), got {spec!r}")
    (kind, values), = spec.items()
    if kind not in DISTRIBUTIONS:
        raise SpaceError(f"{where}: unknown distribution {kind!r} (one of {', '.join(DISTRIBUTIONS)})")
    if not isinstance(values, list) or not values:
        raise SpaceError(f"{where}: {kind} expects a non-empty list, got {values!r}")
    if kind in ("uniform", "loguniform", "randint"):
        if len(values) != 2 or not all(_is_number(v) for v in values):
            raise SpaceError(f"{where}: {kind} expects [low, high] numbers, got {values!r}")
        low, high = values
        if not low < high:
            raise SpaceError(f"{where}: {kind} needs low < high, got {values!r}")
        if kind == "loguniform" and low <= 0:
            raise SpaceError(f"{where}: loguniform needs low > 0, got {values!r}")
        if kind == "randint" and not all(isinstance(v, int) for v in values):
            raise SpaceError(f"{where}: randint expects integer bounds, got {values!r}")
        leaf = typing.get_args(annotation) or (annotation,)
        if kind != "randint" and int in leaf and float not in leaf:
            raise SpaceError(f"{where}: {kind} draws floats but {key} is an integer key; use randint or choice")
    for value in values:       # each candidate (or both bounds) must pass the schema
        try:
            apply_params(base, {key: value})
        except ConfigError as exc:
            raise SpaceError(f"{where}: value {value!r} is refused by the config schema: {exc}") from None
    return Param(key, kind, list(values))


def parse_space(text: str, base: Config, source: str = "<space>") -> SearchSpace:
    """Parse and check a space file's text against the base ``Config``."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpaceError(f"{source}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise SpaceError(f"{source}: expected a mapping with a 'params' section")
    unknown = set(raw) - {"params", "scheduler"}
    if unknown:
        raise SpaceError(f"{source}: unknown top-level key(s) {sorted(unknown)} (known: params, scheduler)")
    params = raw.get("params")
    if not isinstance(params, dict) or not params:
        raise SpaceError(f"{source}: 'params' must map at least one dotted config key to a distribution")
    base_dict = base.to_dict()
    space = SearchSpace(source, [_parse_param(str(k), v, base_dict, source) for k, v in params.items()], raw=raw)
    sched = raw.get("scheduler") or {}
    if not isinstance(sched, dict):
        raise SpaceError(f"{source}: scheduler must be a mapping (name, grace_period, reduction_factor)")
    extra = set(sched) - {"name", "grace_period", "reduction_factor"}
    if extra:
        raise SpaceError(f"{source}: scheduler: unknown key(s) {sorted(extra)} "
                         "(known: name, grace_period, reduction_factor)")
    space.scheduler = set_scheduler(sched.get("name", "asha"), source)
    space.grace_period = sched.get("grace_period", 1)
    space.reduction_factor = sched.get("reduction_factor", 3)
    if not isinstance(space.grace_period, int) or isinstance(space.grace_period, bool) or space.grace_period < 1:
        raise SpaceError(f"{source}: scheduler.grace_period: expected an integer >= 1 (epochs)")
    if not _is_number(space.reduction_factor) or space.reduction_factor <= 1:
        raise SpaceError(f"{source}: scheduler.reduction_factor: expected a number > 1")
    return space


def set_scheduler(name: Any, source: str) -> str:
    if name not in SCHEDULERS:
        raise SpaceError(f"{source}: scheduler.name: {name!r} is not one of {', '.join(SCHEDULERS)}")
    return name


def load_space(url: str, base: Config) -> SearchSpace:
    from recgoat_dist.storage import read_bytes
    return parse_space(read_bytes(url).decode(), base, source=url)


def sample_values(space: SearchSpace, params: dict) -> dict:
    """Plain Python values for a trial's params (numpy scalars from Ray made YAML-safe)."""
    out: dict[str, Any] = {}
    for key in space.keys:
        value = params[key]
        out[key] = value.item() if hasattr(value, "item") else value
    return out


def describe(space: SearchSpace) -> str:
    return ", ".join(f"{p.key} ~ {p.kind}{p.values}" for p in space.params)


__all__ = ["SearchSpace", "Param", "SpaceError", "parse_space", "load_space", "apply_params",
           "DISTRIBUTIONS", "SCHEDULERS", "describe", "sample_values", "set_scheduler"]
