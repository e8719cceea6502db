"""``ray job submit`` of jobs/train.py against a real local Ray head (127.0.0.1, own temp dir).

The head is started with ``ray start --head`` and stopped by killing exactly the processes it
created (found by its unique temp dir), never with ``ray stop`` (which would stop every Ray on the
machine).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import pytest

from conftest import REPO, free_port

BIN = Path(sys.executable).parent


def _env() -> dict:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", DGLBACKEND="pytorch", OMP_NUM_THREADS="1",
               RAY_AUTH_MODE="disabled")       # loopback-only test cluster: no token file in ~/.ray
    return env


def _stop_head(temp_dir: str) -> None:
    import psutil

    mine = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(temp_dir in part for part in proc.info["cmdline"] or []):
                mine.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    family = {p.pid: p for p in mine}
    for proc in mine:
        try:
            family.update({c.pid: c for c in proc.children(recursive=True)})
        except psutil.NoSuchProcess:
            pass
    for proc in family.values():
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(list(family.values()), timeout=10)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def start_head(prefix: str, env: dict, num_cpus: int, dashboard: bool = True) -> tuple[str, int, Optional[int]]:
    """``ray start --head`` on 127.0.0.1 in its own temp dir (stop it with :func:`_stop_head`);
    returns ``(temp dir, GCS port, dashboard port or None)``."""
    temp_dir = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    port, dashboard_port = free_port(), free_port() if dashboard else None
    cmd = [str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
           *(["--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", "--include-dashboard=true"]
             if dashboard else ["--include-dashboard=false"]),
           f"--num-cpus={num_cpus}", f"--temp-dir={temp_dir}", "--disable-usage-stats",
           # Own agent ports: the defaults (e.g. 52365) may be held by another Ray on this machine.
           f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
           f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}"]
    try:
        subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=180)
    except BaseException:
        _stop_head(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    return temp_dir, port, dashboard_port


def submit_when_agent_ready(cmd: list, env: dict, tries: int) -> subprocess.CompletedProcess:
    """Run a ``ray job submit`` command, retrying while the job agent is not up yet (it comes up a
    little after ``ray start`` returns)."""
    for _ in range(tries):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        if done.returncode == 0 or "No available agent" not in done.stderr + done.stdout:
            break
        time.sleep(5)
    return done


@pytest.fixture
def ray_head():
    temp_dir, _, dashboard = start_head("rgjob-", _env(), num_cpus=3)
    try:
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        _stop_head(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_trains_the_demo_on_a_fresh_cluster(ray_head, tmp_path):
    out = tmp_path / "demo"
    ray = str(BIN / "ray")
    job_id = f"recgoat-test-{os.getpid()}"
    runtime_env = {"excludes": [".venv", ".git", "demo-out", "**/__pycache__", "*.png"]}
    submit = [ray, "job", "submit", "--address", ray_head, "--submission-id", job_id, "--no-wait",
              "--working-dir", str(REPO), "--runtime-env-json", json.dumps(runtime_env), "--",
              "python", "jobs/train.py", "--config", "configs/demo.yaml",
              "--set", "cluster.num_workers=2", "--set", "train.epochs=2", "--out", str(out)]
    done = submit_when_agent_ready(submit, _env(), tries=24)
    assert done.returncode == 0, f"ray job submit failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    status, deadline = "", time.time() + 480
    while time.time() < deadline:
        status = subprocess.run([ray, "job", "status", "--address", ray_head, job_id], env=_env(),
                                capture_output=True, text=True, timeout=60).stdout
        if any(s in status.lower() for s in ("succeeded", "failed", "stopped")):
            break
        time.sleep(5)
    if "succeeded" not in status.lower():
        logs = subprocess.run([ray, "job", "logs", "--address", ray_head, job_id], env=_env(),
                              capture_output=True, text=True, timeout=60).stdout
        (tmp_path / "job.log").write_text(logs)
        pytest.fail(f"job did not succeed: {status}\n{logs[-4000:]}")
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    assert metrics["num_workers"] == 2 and metrics["num_partitions"] == 2 and metrics["restarts"] == 0
    assert metrics["dense_params_in_sync"] is True and metrics["epochs_run"] == 2
    assert sorted(w["partition"] for w in metrics["workers"]) == [0, 1]
    assert metrics["valid"]["recall@20"] > 0
    assert (out / "run" / "report.png").exists() and (out / "run" / "manifest.json").exists()
