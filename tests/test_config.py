"""The one config schema: YAML + --set, clear errors, shipped configs load, resolved config saved."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from recgoat_dist.config import ConfigError, config_from_dict, load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["lfm2k.yaml", "demo.yaml"])
def test_shipped_configs_load(name):
    config = load_config(str(REPO / "configs" / name))
    assert config.model.name == "recgoat"
    moved = load_config(str(REPO / "configs" / name), ["data.dataset=s3://b/d", "data.graph=s3://b/g"])
    assert (moved.data.dataset, moved.data.graph) == ("s3://b/d", "s3://b/g")


def test_overrides_parse_yaml_scalars_and_win_over_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {epochs: 3, lr: 0.1}\nmodel: {name: lightgcn}\n")
    config = load_config(str(path), ["train.epochs=7", "train.topk=[5, 20]", "train.valid_metric=ndcg@5",
                                     "cluster.num_workers=2", "debug.kill_worker_at_step=3", "train.lr=1"])
    assert config.train.epochs == 7 and config.train.lr == 1.0 and isinstance(config.train.lr, float)
    assert config.train.topk == [5, 20] and config.model.name == "lightgcn"
    assert config.cluster.num_workers == 2 and config.debug.kill_worker_at_step == 3
    assert config_from_dict(yaml.safe_load(config.to_yaml())) == config


@pytest.mark.parametrize("override, message", [
    ("train.epochz=3", "unknown config key train.epochz"),
    ("nosuch.key=1", "unknown config key nosuch"),
    ("train.epochs=three", "train.epochs: expected int"),
    ("train.epochs=true", "train.epochs: expected int"),
    ("train.lr=fast", "train.lr: expected float"),
    ("model.name=transformer", "model.name: 'transformer' is not one of"),
    ("train.epochs=0", "train.epochs: must be >= 1"),
    ("train.valid_metric=recall@30", "train.valid_metric"),
    ("train.topk=5", "train.topk: expected list"),
    ("train", "expected key=value"),
])
def test_bad_keys_and_types_are_clear_errors(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(None, [override])


def test_a_section_given_a_scalar_is_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: 5\n")
    with pytest.raises(ConfigError, match="train: expected a mapping"):
        load_config(str(path))


def test_float_keys_take_exponent_notation():
    from recgoat_dist.config import load_config
    assert load_config(None, ["train.lr=1e-3", "model.ot_eps=5e-1"]).train.lr == 0.001
    with pytest.raises(ConfigError, match="train.lr"):
        load_config(None, ["train.lr=fast"])
