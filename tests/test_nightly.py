"""Nightly retraining end to end: real trainer, real registry on disk and on the loopback S3 server."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import REPO
from recgoat_dist.cli import main
from recgoat_dist.config import load_config
from recgoat_dist.data.dataset import Dataset
from recgoat_dist.data.timeline import generate_timeline
from recgoat_dist.nightly.night import InjectedFault, init_registry, run_night
from recgoat_dist.nightly.registry import LockHeld, Registry
from recgoat_dist.storage import filesystem, join

TINY = ["model.dim=16", "model.n_layers=1", "model.gat_layers=1", "model.num_landmarks=16", "model.cmcl_batch=64",
        "model.ot_batch=64", "graph.knn_k=5", "graph.user_knn_k=5", "train.epochs=3", "train.batch_size=512",
        "train.lr=0.02", "train.progress=false", "nightly.epochs=2", "nightly.gate.min_recall=0.01"]
SIZES = dict(users=120, items=90, days=4, new_items_per_day=10, new_users_per_day=10, active_users_per_day=60)


def _config(registry: str, delta: str, *extra: str):
    return load_config(None, TINY + [f"nightly.registry={registry}", f"nightly.delta={delta}", *extra])


@pytest.fixture(scope="session")
def timeline(tmp_path_factory):
    return generate_timeline(str(tmp_path_factory.mktemp("timeline")), **SIZES)


@pytest.fixture(scope="session")
def base_registry(timeline, tmp_path_factory):
    """A registry with its base version promoted (read-only: tests work on copies)."""
    url = str(tmp_path_factory.mktemp("registry") / "reg")
    outcome = init_registry(_config(url, timeline["delta"]), timeline["base"])
    assert outcome.decision == "promoted" and outcome.exit_code == 0
    return url


def _copy(base: str, tmp_path) -> str:
    """An independent registry whose champion is the base version (its parts stay where they are)."""
    url = str(tmp_path / "reg")
    shutil.copytree(base, url)
    return url


def test_init_is_promoted_on_the_floor_and_rerun_is_a_noop(base_registry, timeline):
    reg = Registry(base_registry)
    champion = reg.champion()
    assert champion["metrics"]["slice"] == "all" and champion["metrics"]["recall@20"] > 0.01
    again = init_registry(_config(base_registry, timeline["delta"]), timeline["base"])
    assert again.decision == "noop" and "already decided" in again.message and again.exit_code == 0


def test_ids_stable_and_warm_start_copies_rows_by_original_id(base_registry, timeline, tmp_path):
    from recgoat_dist.nightly.warmstart import warm_start_state
    from recgoat_dist.train.run import Run

    url = _copy(base_registry, tmp_path)
    config = _config(url, timeline["delta"])
    date = timeline["dates"][0]
    outcome = run_night(config, date)
    assert outcome.decision in ("promoted", "rejected")
    reg = Registry(url)
    base, version = Dataset(timeline["base"]), Dataset(join(reg.version_url(date), "dataset"))
    for kind in ("user", "item"):
        old, new = base.original_ids(kind), version.original_ids(kind)
        assert (new[:len(old)] == old).all() and len(set(new)) == len(new) > len(old)
    np.testing.assert_array_equal(version.item_features("text")[:base.num_items], base.item_features("text"))
    assert version.manifest["nightly"]["new_items"] == SIZES["new_items_per_day"]

    base_version = Registry(base_registry).champion()["version"]
    assert reg.version(date)["lineage"]["warm_start_from"] == base_version
    champion = Run(join(reg.version_url(base_version), "run"))
    graph = join(reg.version_url(date), "graph")
    warm, stats = warm_start_state(champion.url, config, graph)
    state, old_state = warm["model"], champion.checkpoint("best")["model"]
    assert stats["items_copied"] == base.num_items and stats["new_items_from_content"] == SIZES["new_items_per_day"]
    assert stats["new_users_from_lm"] == SIZES["new_users_per_day"]
    new_index = {v: i for i, v in enumerate(version.original_ids("item"))}
    for old_row, original in enumerate(base.original_ids("item")):
        assert torch.equal(state["id.item"][new_index[original]], old_state["id.item"][old_row])
    fresh = state["id.item"][base.num_items:]
    assert torch.isfinite(fresh).all() and fresh.norm(dim=1).min() > 0
    for key, value in old_state.items():
        if key not in ("id.user", "id.item"):
            assert torch.equal(state[key], value), key


def test_gate_rejects_below_floor_and_champion_is_unchanged(base_registry, timeline, tmp_path, capsys):
    url = _copy(base_registry, tmp_path)
    before = Registry(url).champion()
    date = timeline["dates"][0]
    args = ["nightly", "run", "--registry", url, "--date", date, "--set", f"nightly.delta={timeline['delta']}"]
    code = main(args + [x for t in TINY for x in ("--set", t)] + ["--set", "nightly.gate.min_recall=0.99"])
    assert code == 3
    assert "rejected" in capsys.readouterr().out
    reg = Registry(url)
    assert reg.champion() == before
    assert reg.version(date)["decision"] == "rejected"
    assert [e["kind"] for e in reg.events() if e["date"] == date] == ["rejected"]
    code = main(args + [x for t in TINY for x in ("--set", t)])    # decided: a no-op that says so
    assert code == 0
    assert f"{date}: already decided" in capsys.readouterr().out and reg.champion() == before


@pytest.mark.parametrize("fault", ["train", "version", "pointer"])
def test_pointer_never_names_a_partial_version(fault, base_registry, timeline, tmp_path):
    url = _copy(base_registry, tmp_path)
    reg = Registry(url)
    base = reg.champion()["version"]
    date = timeline["dates"][0]
    with pytest.raises(InjectedFault):
        run_night(_config(url, timeline["delta"], f"nightly.fault={fault}"), date)
    champion = reg.champion()
    reg.version(champion["version"])                       # complete, or this raises
    assert champion["version"] == (date if fault == "pointer" else base)
    assert reg.is_complete(date) == (fault != "train")
    assert reg.decision(date) is None and not os.path.exists(os.path.join(url, "lock.json"))
    outcome = run_night(_config(url, timeline["delta"]), date)       # the re-run finishes the night
    assert outcome.decision == "promoted" and reg.champion()["version"] == date
    assert [e["kind"] for e in reg.events() if e["date"] == date and e["kind"] != "failed"] == ["promoted"]


def test_killed_run_resumes_to_the_same_decision_and_metrics(base_registry, timeline, tmp_path):
    date = timeline["dates"][0]
    clean = _copy(base_registry, tmp_path / "clean")
    reference = run_night(_config(clean, timeline["delta"], "nightly.epochs=3"), date)
    killed = _copy(base_registry, tmp_path / "killed")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    cmd = [sys.executable, "-m", "recgoat_dist", "nightly", "run", "--registry", killed, "--date", date,
           "--set", f"nightly.delta={timeline['delta']}", "--set", "nightly.epochs=3"]
    cmd += [x for t in TINY if not t.startswith("nightly.epochs") for x in ("--set", t)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = os.path.join(killed, "versions", date, "run", "checkpoints", "last.pt")
    deadline = time.time() + 120
    while not os.path.exists(checkpoint) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert os.path.exists(checkpoint), "the run ended before its first epoch checkpoint"
    reg = Registry(killed)
    assert not reg.is_complete(date) and os.path.exists(os.path.join(killed, "lock.json"))
    with pytest.raises(LockHeld, match="nightly.lock_stale_seconds"):     # the dead run's lock still holds
        run_night(_config(killed, timeline["delta"], "nightly.epochs=3"), date)
    resumed = run_night(_config(killed, timeline["delta"], "nightly.epochs=3", "nightly.lock_stale_seconds=0"), date)
    assert resumed.decision == reference.decision
    got, want = reg.version(date)["metrics"], Registry(clean).version(date)["metrics"]
    assert got == want                                       # same inputs and seed: same metrics


@pytest.mark.parametrize("where", ["local", "s3"])
def test_concurrent_runs_exactly_one_gets_the_lock(where, tmp_path, request):
    url = str(tmp_path / "reg") if where == "local" else request.getfixturevalue("s3_url") + "/reg"
    reg = Registry(url)
    locks = [reg.lock(f"run {i}", 3600) for i in range(6)]
    results = [None] * len(locks)
    barrier = threading.Barrier(len(locks))

    def race(i):
        barrier.wait()
        results[i] = locks[i]._create()

    threads = [threading.Thread(target=race, args=(i,)) for i in range(len(locks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(results) == 1
    winner = locks[results.index(True)]
    with pytest.raises(LockHeld, match="held by 'run"):
        reg.lock("another", 3600).__enter__()
    winner.__exit__(None, None, None)
    fs, path = filesystem(join(url, "lock.json"))
    assert not fs.exists(path)
    with reg.lock("first", 3600):
        with reg.lock("takes over a stale lock", 0):     # stale after 0 s: taken over
            pass


def test_cli_reports_a_held_lock_with_exit_4(base_registry, timeline, tmp_path, capsys):
    url = _copy(base_registry, tmp_path)
    with Registry(url).lock("someone else", 3600):
        code = main(["nightly", "run", "--registry", url, "--date", timeline["dates"][0],
                     "--set", f"nightly.delta={timeline['delta']}"] + [x for t in TINY for x in ("--set", t)])
    assert code == 4
    assert "held by 'someone else'" in capsys.readouterr().err


def test_three_nights_on_s3_bad_day_rerun_and_rollback(s3_url, capsys):
    tl = generate_timeline(f"{s3_url}/timeline", **SIZES)
    reg_url = f"{s3_url}/registry"
    sets = [x for t in TINY + [f"nightly.delta={tl['delta']}"] for x in ("--set", t)]
    assert main(["nightly", "init", "--registry", reg_url, "--dataset", tl["base"]] + sets) == 0
    d1, d2, d3, d4 = tl["dates"]
    assert main(["nightly", "run", "--registry", reg_url, "--dates", f"{d1}..{d3}"] + sets) == 0
    # A bad day: one NaN rating. Exit 2, one line naming file and column, a rejected event, no version.
    fs, path = filesystem(join(tl["delta"].format(date=d4), "interactions.parquet"))
    table = pq.read_table(fs.open(path, "rb"))
    ratings = table["rating"].to_numpy().copy()
    ratings[3] = np.nan
    with fs.open(path, "wb") as fh:
        pq.write_table(table.set_column(table.column_names.index("rating"), "rating", pa.array(ratings)), fh)
    capsys.readouterr()
    assert main(["nightly", "run", "--registry", reg_url, "--date", d4] + sets) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "interactions.parquet: column rating: row 3: NaN" in err[-1]
    reg = Registry(reg_url)
    assert not reg.is_complete(d4) and reg.champion()["version"] == d3
    assert reg.decision(d4)["kind"] == "rejected" and reg.decision(d4)["version"] is None
    # Re-running decided dates does nothing and says so.
    assert main(["nightly", "run", "--registry", reg_url, "--dates", f"{d2}..{d4}"] + sets) == 0
    out = capsys.readouterr().out
    assert out.count("already decided") == 3 and "rejected, no version (bad input)" in out
    # Rollback, then the registry as JSON.
    assert main(["registry", "rollback", "--registry", reg_url, "--to", d2]) == 0
    capsys.readouterr()
    assert main(["registry", "show", "--registry", reg_url, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["champion"]["version"] == d2 and "recall@20" in report["champion"]["metrics"]
    decisions = {v["version"]: v["decision"] for v in report["versions"]}
    assert decisions[d3] == "rolled_back" and decisions[d2] == "promoted" and d4 not in decisions
    assert len(decisions) == 4 and all("recall@20" in v["metrics"] for v in report["versions"])
    assert {d["date"]: d["decision"] for d in report["dates"]}[d4] == "rejected"
    kinds = [e["kind"] for e in report["events"]]
    assert kinds.count("promoted") == 4 and kinds.count("rejected") == 1 and kinds.count("rolled_back") == 1
    lineage = reg.version(d2)["lineage"]
    assert lineage["parent_version"] == d1 and "interactions.parquet" in lineage["inputs"]["sha256"]
    # The champion's bundle is complete: the export names original ids.
    export = reg.version(d2)["parts"]["export"]
    assert reg.version(d2)["parts"]["export"].startswith("s3://")
    from recgoat_dist.storage import Artifact
    assert Artifact(export, kind="export")["num_items"] == SIZES["items"] + 2 * SIZES["new_items_per_day"]


def test_distributed_night_on_local_ray(base_registry, timeline, tmp_path):
    url = _copy(base_registry, tmp_path)
    outcome = run_night(_config(url, timeline["delta"], "cluster.num_workers=2"), timeline["dates"][0])
    assert outcome.decision in ("promoted", "rejected")
    run = Registry(url).version(timeline["dates"][0])["parts"]["run"]
    from recgoat_dist.storage import Artifact
    assert Artifact(run, kind="run").get("distributed")
