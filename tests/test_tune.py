"""``recgoat tune``: search space checks, per-epoch reports, real Ray Tune runs on a tiny synthetic default."""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from recgoat_dist.config import ConfigError, load_config
from recgoat_dist.storage import Artifact, exists
from recgoat_dist.tune.space import SpaceError, parse_space

BASE = ["train.progress=false", "model.dim=16", "model.num_landmarks=32", "train.epochs=2",
        "train.batch_size=1024", "train.lr=0.01"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The synthetic default at 300 users x 200 items, with its graph."""
    from recgoat_dist.data.synthetic import generate_synthetic
    from recgoat_dist.graph import build_graph

    root = tmp_path_factory.mktemp("tiny")
    data, graph = str(root / "data"), str(root / "graph")
    generate_synthetic(data, users=300, items=200, seed=0)
    build_graph(data, graph, knn_k=5, user_knn_k=5)
    return graph


@pytest.fixture(scope="module")
def local_ray():
    """A real local Ray (2 CPUs, loopback, own temp dir) shared by the module's tune runs."""
    import ray

    tmp = tempfile.mkdtemp(prefix="rgtune-", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", _temp_dir=tmp,
             runtime_env={"env_vars": {"DGLBACKEND": "pytorch", "OMP_NUM_THREADS": "1"}})
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def base_config(graph: str, *extra: str):
    return load_config(None, [f"data.graph={graph}", *BASE, *extra])


def write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


# ---- the search space file ------------------------------------------------------------------------
@pytest.mark.parametrize("text, fragment", [
    ("params: {model.lambda_cmc: {uniform: [0.0, 1.0]}}", "params.model.lambda_cmc: unknown config key"),
    ("params: {modle.dim: {choice: [16]}}", "params.modle.dim: unknown config key"),
    ("params: {model: {choice: [1]}}", "params.model: is a config section"),
    ("params: {model.lambda_cmcl: {normal: [0.0, 1.0]}}", "unknown distribution 'normal'"),
    ("params: {model.lambda_cmcl: [0.1, 0.2]}", "expected one distribution as a mapping"),
    ("params: {model.lambda_cmcl: {uniform: [0.1]}}", "uniform expects [low, high] numbers"),
    ("params: {model.lambda_cmcl: {uniform: [0.5, 0.1]}}", "needs low < high"),
    ("params: {train.lr: {loguniform: [0.0, 0.1]}}", "loguniform needs low > 0"),
    ("params: {model.dim: {uniform: [8, 64]}}", "model.dim is an integer key; use randint or choice"),
    ("params: {model.n_layers: {randint: [0.5, 3]}}", "randint expects integer bounds"),
    ("params: {model.dim: {choice: [16, abc]}}", "value 'abc' is refused by the config schema"),
    ("params: {model.name: {grid: [recgoat, bogus]}}", "value 'bogus' is refused by the config schema"),
    ("params: {model.n_layers: {randint: [-1, 2]}}", "value -1 is refused by the config schema"),
    ("params: {model.lambda_oat: {choice: []}}", "choice expects a non-empty list"),
    ("params: {cluster.num_workers: {choice: [0, 2]}}", "params.cluster.num_workers: cannot be tuned"),
    ("params: {train.valid_metric: {choice: [ndcg@20]}}", "params.train.valid_metric: cannot be tuned"),
    ("params: {graph.knn_k: {choice: [5, 10]}}", "params.graph.knn_k: cannot be tuned"),
    ("params: {export.ranking: {choice: [exact, ann]}}", "params.export.ranking: cannot be tuned"),
    ("params: {}", "'params' must map at least one dotted config key"),
    ("space: {model.dim: {choice: [16]}}", "unknown top-level key(s) ['space']"),
    ("- just a list", "expected a mapping with a 'params' section"),
    ("params: {model.dim: {choice: [16]}\n", "not valid YAML"),
    ("scheduler: {name: hyperband}\nparams: {model.dim: {choice: [16]}}", "'hyperband' is not one of asha, random"),
    ("scheduler: {grace: 1}\nparams: {model.dim: {choice: [16]}}", "scheduler: unknown key(s) ['grace']"),
    ("scheduler: {reduction_factor: 1}\nparams: {model.dim: {choice: [16]}}",
     "reduction_factor: expected a number > 1"),
])
def test_bad_space_is_one_error_naming_the_file_and_the_problem(text, fragment):
    with pytest.raises(SpaceError) as info:
        parse_space(text, load_config(None, BASE), source="space.yaml")
    message = str(info.value)
    assert message.startswith("space.yaml: "), message
    assert fragment in message, message


def test_space_parses_every_distribution_into_ray_samplers():
    from ray.tune.search.sample import Categorical, Float, Integer

    space = parse_space("""
scheduler: {name: random}
params:
  model.lambda_cmcl: {loguniform: [0.001, 0.1]}
  model.ot_eps: {uniform: [0.1, 1]}
  model.gat_layers: {randint: [0, 2]}
  model.name: {choice: [recgoat, no_oat]}
  train.lr: {grid: [0.005, 0.02]}
  train.epochs: {choice: [2, 7]}
""", load_config(None, BASE))
    ray_space = space.ray_space()
    assert isinstance(ray_space["model.lambda_cmcl"], Float) and isinstance(ray_space["model.name"], Categorical)
    assert isinstance(ray_space["model.gat_layers"], Integer)
    assert (ray_space["model.gat_layers"].lower, ray_space["model.gat_layers"].upper) == (0, 3)  # inclusive 2
    assert ray_space["train.lr"] == {"grid_search": [0.005, 0.02]}
    assert space.scheduler == "random" and space.grid_size() == 2
    assert space.max_epochs(load_config(None, BASE)) == 7          # ASHA's max_t follows a tuned epochs


def test_cli_refuses_a_bad_space_before_starting_ray(tiny, tmp_path, capsys):
    import ray
    from recgoat_dist.cli import main

    space = write(tmp_path / "space.yaml", "params: {model.lambda_cmc: {uniform: [0.0, 1.0]}}\n")
    out = tmp_path / "out"
    code = main(["tune", "--space", space, "--trials", "2", "--out", str(out), "--set", f"data.graph={tiny}"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"{space}: params.model.lambda_cmc: unknown config key" in err
    assert not out.exists() and not ray.is_initialized()


def test_trials_must_cover_the_grid_evenly_and_fit_the_cpus(tiny, tmp_path):
    from recgoat_dist.tune.runner import check_inputs

    config = base_config(tiny)
    space = parse_space("params: {train.lr: {grid: [0.01, 0.02, 0.03]}}", config, source="s.yaml")
    with pytest.raises(SpaceError, match="3 combinations; --trials 4 must be a multiple of 3"):
        check_inputs(config, space, 4, str(tmp_path / "out"), overwrite=False)
    with pytest.raises(Exception, match="no manifest"):
        check_inputs(base_config(str(tmp_path / "missing")), space, 3, str(tmp_path / "out"), overwrite=False)
    with pytest.raises(ConfigError, match="--cpus-per-trial 3 exceeds --num-cpus 2: no trial could start"):
        check_inputs(config, space, 3, str(tmp_path / "out"), overwrite=False, num_cpus=2, cpus_per_trial=3)


# ---- per-epoch reports ----------------------------------------------------------------------------
def test_epoch_tracker_replays_the_trainers_early_stopping_rule():
    from recgoat_dist.train.single import Progress
    from recgoat_dist.tune.trial import EpochTracker

    scores = [0.1, 0.3, 0.3, 0.2, 0.31, 0.1, 0.1, 0.1]
    tracker, progress = EpochTracker("recall@20", patience=2, epochs=100), Progress()
    for epoch, score in enumerate(scores):
        report = tracker.update(epoch, {"recall@20": score, "num_users": 5})
        progress.record(epoch, {}, {"recall@20": score}, 0.0, "recall@20")
        assert report["epoch"] == epoch + 1 and report["score"] == score
        assert (report["best_score"], report["best_epoch"]) == (progress.best_score, progress.best_epoch)
        assert report["trainer_done"] == progress.should_stop(2)
    assert report["trainer_done"] and report["best_epoch"] == 4
    assert tracker.update(8, None) is None                       # an epoch without evaluation
    assert EpochTracker("recall@20", 20, 3).update(2, {"recall@20": 0.0})["trainer_done"]   # last epoch


def test_reports_every_epoch_once_in_order_through_the_trainers_callback(tiny, tmp_path):
    from recgoat_dist.train.run import Run
    from recgoat_dist.tune.trial import train_with_epoch_reports

    config = base_config(tiny, "train.epochs=4")
    seen = []
    metrics = train_with_epoch_reports(config, str(tmp_path / "run"), lambda e, v: seen.append((e, v)))
    history = Run(str(tmp_path / "run")).history
    assert [e for e, _ in seen] == [0, 1, 2, 3]
    assert [v for _, v in seen] == [h["valid"] for h in history]
    assert metrics["valid"]["recall@20"] == pytest.approx(max(v["recall@20"] for _, v in seen))


# ---- real Ray Tune runs ---------------------------------------------------------------------------
def test_asha_tune_selects_on_validation_and_writes_a_trainable_best_config(tiny, tmp_path, local_ray):
    import pyarrow.parquet as pq
    import torch

    from recgoat_dist.cli import main
    from recgoat_dist.train.run import Run
    from recgoat_dist.tune.runner import run_tune

    config = base_config(tiny)
    space = parse_space("""
scheduler: {name: asha, grace_period: 1, reduction_factor: 2}
params:
  train.lr: {loguniform: [0.001, 0.03]}
  model.name: {choice: [recgoat, lightgcn]}
""", config, source="space.yaml")
    out = str(tmp_path / "tune")
    manifest = run_tune(config, space, 4, out, seed=3)

    artifact = Artifact(out, kind="tune")
    table = pq.read_table(str(tmp_path / "tune" / "trials.parquet")).to_pylist()
    assert len(table) == 4 and manifest["num_trials"] == 4
    assert not any("test" in column for column in table[0])       # test metrics never reach the search
    assert all(r["status"] in ("completed", "stopped by scheduler") for r in table)
    for r in table:
        assert r["best_valid_score"] == max(r["valid_curve"])
        assert r["epochs_reported"] == len(r["valid_curve"]) == (2 if r["status"] == "completed" else 1)
    assert manifest["completed"] >= 1
    best = max(table, key=lambda r: r["best_valid_score"])
    assert manifest["best"]["valid_score"] == best["best_valid_score"]
    assert manifest["best"]["params"] == {"train.lr": best["train.lr"], "model.name": best["model.name"]}
    assert len({r["train.lr"] for r in table}) == 4                # sampled, not repeated
    markdown = artifact.read_bytes("trials.md").decode()
    assert markdown.count("\n") == 2 + 4 and f"**{best['best_valid_score']:.4f}**" in markdown
    assert artifact.read_bytes("trials.png")[:8] == b"\x89PNG\r\n\x1a\n"

    # best.yaml is a complete config: `recgoat train` reproduces the best trial's validation score.
    best_yaml = str(tmp_path / "tune" / "best.yaml")
    chosen = load_config(best_yaml)
    assert (chosen.train.lr, chosen.model.name) == (best["train.lr"], best["model.name"])
    assert chosen.to_dict()["data"] == config.to_dict()["data"] and chosen.model.dim == 16
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                                       # as in the trial
    try:
        assert main(["train", "--config", best_yaml, "--out", str(tmp_path / "retrain")]) == 0
    finally:
        torch.set_num_threads(threads)
    retrained = Run(str(tmp_path / "retrain")).metrics
    assert retrained["valid"]["recall@20"] == pytest.approx(best["best_valid_score"], abs=1e-9)


def test_cli_random_scheduler_runs_every_grid_point_to_the_end(tiny, tmp_path, local_ray, capsys):
    import pyarrow.parquet as pq

    from recgoat_dist.cli import main

    space = write(tmp_path / "space.yaml", "scheduler: {name: asha}\nparams: {model.n_layers: {grid: [1, 2]}}\n")
    out = str(tmp_path / "tune")
    args = ["tune", "--space", space, "--trials", "2", "--out", out, "--scheduler", "random",
            *[a for kv in BASE for a in ("--set", kv)], "--set", f"data.graph={tiny}", "--set", "model.name=lightgcn"]
    assert main(args) == 0
    assert "best config: " in capsys.readouterr().out
    rows = pq.read_table(os.path.join(out, "trials.parquet")).to_pylist()
    assert sorted(r["model.n_layers"] for r in rows) == [1, 2]
    assert all(r["status"] == "completed" and r["epochs_reported"] == 2 for r in rows)
    assert Artifact(out, kind="tune")["scheduler"] == "random"
    assert main(args) == 2                                          # refuses to clobber
    assert "a tune result already exists" in capsys.readouterr().err


def test_when_every_trial_fails_nothing_is_published(tiny, tmp_path, local_ray):
    from recgoat_dist.tune.runner import run_tune

    config = base_config(tiny)
    # Valid for the schema, refused by the trainer inside each trial (no such modality).
    space = parse_space("params: {model.modalities: {choice: [[sound], [smell]]}}", config)
    out = str(tmp_path / "tune")
    with pytest.raises(ValueError, match="no trial reported a validation score .*model.modalities"):
        run_tune(config, space, 2, out)
    assert not exists(out + "/manifest.json") and not os.path.exists(out)


@pytest.fixture
def ray_head_address():
    """A real Ray head started with ``ray start`` (2 CPUs, loopback, own temp dir); yields its GCS address."""
    from test_jobs import _env, _stop_head, start_head

    temp_dir, port, _ = start_head("rgtunehead-", _env(), num_cpus=2, dashboard=False)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        _stop_head(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_cli_runs_trials_on_the_cluster_at_ray_address(tiny, tmp_path, ray_head_address):
    import subprocess
    import sys

    from test_jobs import _env

    space = write(tmp_path / "space.yaml", "params: {train.lr: {choice: [0.005, 0.02]}}\n")
    out = str(tmp_path / "tune")
    env = {**_env(), "RAY_ADDRESS": ray_head_address}
    cmd = [sys.executable, "-m", "recgoat_dist", "tune", "--space", space, "--trials", "2", "--out", out,
           "--num-cpus", "1", *[a for kv in BASE for a in ("--set", kv)], "--set", f"data.graph={tiny}"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    port = ray_head_address.rsplit(":", 1)[1]
    assert re.search(rf"Connecting to existing Ray cluster at address: [0-9.]+:{port}", done.stderr), done.stderr
    assert "Ray cluster: 2.0 CPUs" in done.stderr             # the head's CPUs, not --num-cpus
    assert Artifact(out, kind="tune")["num_trials"] == 2


def test_the_example_space_in_configs_is_valid():
    from recgoat_dist.tune.space import load_space

    space = load_space(str(Path(__file__).resolve().parents[1] / "configs" / "tune-space.yaml"),
                       load_config(str(Path(__file__).resolve().parents[1] / "configs" / "lfm2k.yaml")))
    assert space.scheduler == "asha" and space.grace_period == 10 and "model.ot_eps" in space.keys
