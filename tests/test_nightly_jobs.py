"""Scheduled nightly submissions: the CronJob/RayJob and crontab files, and `ray job submit` of
jobs/nightly.py against a real `ray start --head` on loopback, with a token file and with
RAY_AUTH_MODE=disabled.

Ray processes get their own HOME, so no ~/.ray/auth_token of this machine is read or written, and
are stopped by killing exactly the processes started for the test (test_jobs._stop_head).
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shlex

import pytest
import yaml

from conftest import REPO
from test_cluster_configs import (HEAD_GROUP, RAYCLUSTER_SPEC, RAYJOB_SPEC, RUNTIME_ENV, SUBMISSION_MODES,
                                  WORKER_GROUP)
from test_jobs import BIN, _stop_head, start_head, submit_when_agent_ready

NO_TOKEN = re.compile(r"Token authentication is enabled but (no authentication token was found|Ray couldn't find an "
                      r"authentication token)")


def _nightly_argv(entrypoint_args: list[str]):
    """Parse what follows `python jobs/nightly.py` with the real CLI parser and config loader."""
    from recgoat_dist.cli import build_parser
    from recgoat_dist.config import load_config

    args = build_parser().parse_args(["nightly", *entrypoint_args])
    config = load_config(str(REPO / args.config), args.set)
    return args, config


def test_cronjob_creates_a_documented_rayjob_with_the_token_from_a_secret():
    docs = list(yaml.safe_load_all((REPO / "cluster" / "nightly-cronjob.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    cron = kinds["CronJob"]
    assert cron["apiVersion"] == "batch/v1" and cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert len(cron["spec"]["schedule"].split()) == 5
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == kinds["ServiceAccount"]["metadata"]["name"]
    assert "kubectl create -f -" in pod["containers"][0]["args"][0]
    assert {"create"} <= set(kinds["Role"]["rules"][0]["verbs"]) and kinds["Role"]["rules"][0]["resources"] == ["rayjobs"]
    template = kinds["ConfigMap"]["data"]["rayjob.yaml"].replace("__DATE__", "2024-01-02")
    job = yaml.safe_load(template)
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert set(spec) <= RAYJOB_SPEC and spec["submissionMode"] in SUBMISSION_MODES
    assert set(yaml.safe_load(spec["runtimeEnvYAML"])) <= RUNTIME_ENV
    cluster = spec["rayClusterSpec"]
    assert set(cluster) <= RAYCLUSTER_SPEC and set(cluster["headGroupSpec"]) <= HEAD_GROUP
    assert all(set(g) <= WORKER_GROUP for g in cluster["workerGroupSpecs"])
    containers = ([spec["submitterPodTemplate"]["spec"]["containers"][0], cluster["headGroupSpec"]["template"]["spec"]
                   ["containers"][0]] + [g["template"]["spec"]["containers"][0] for g in cluster["workerGroupSpecs"]])
    for container in containers:          # every Ray process and the submitter: token mode, token from the Secret
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "auth_token"
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["python", "jobs/nightly.py"]
    args, config = _nightly_argv(argv[2:])
    assert args.date == "2024-01-02" and config.nightly.registry.startswith("s3://")
    assert "{date}" in config.nightly.delta


def test_crontab_line_submits_jobs_nightly_with_a_token_file():
    lines = [line for line in (REPO / "cluster" / "nightly.crontab").read_text().splitlines()
             if line and not line.startswith("#") and "=" not in line.split()[0]]
    assert len(lines) == 1
    fields = lines[0].split(None, 5)
    assert len(fields[:5]) == 5 and all(re.fullmatch(r"[\d*/,-]+", f) for f in fields[:5])
    command = fields[5].replace("\\%", "%")
    assert "RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=" in command and "RAY_AUTH_TOKEN=" not in command
    submit = command.split("ray job submit", 1)[1]
    entry = shlex.split(submit.split(" -- ", 1)[1].split(">>")[0].replace('"$(date -u -d yesterday +%Y-%m-%d)"',
                                                                         "2024-01-02"))
    assert entry[:2] == ["python", "jobs/nightly.py"]
    args, config = _nightly_argv(entry[2:])
    assert args.date == "2024-01-02" and "{date}" in config.nightly.delta


def _head(env: dict):
    temp_dir, _, dashboard = start_head("rgnight-", env, num_cpus=1)
    return temp_dir, f"http://127.0.0.1:{dashboard}"


def _env(tmp_path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", HOME=str(home), DGLBACKEND="pytorch",
               OMP_NUM_THREADS="1", **extra)
    return env


def _submit(address: str, env: dict, registry: str):
    runtime_env = {"excludes": [".venv", ".git", "demo-out", "**/__pycache__", "*.png"]}
    cmd = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO),
           "--runtime-env-json", json.dumps(runtime_env), "--", "python", "jobs/nightly.py", "show",
           "--registry", registry, "--json"]
    return submit_when_agent_ready(cmd, env, tries=12)


@pytest.mark.parametrize("mode", ["token", "disabled"])
def test_ray_job_submit_of_jobs_nightly_on_a_fresh_head(mode, tmp_path):
    token_file = tmp_path / "ray-auth-token"
    token_file.write_text(secrets.token_hex(32))
    token_file.chmod(0o600)
    if mode == "token":
        head_env = _env(tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file))
    else:
        head_env = _env(tmp_path, RAY_AUTH_MODE="disabled")
    registry = str(tmp_path / "registry")
    temp_dir, address = _head(head_env)
    try:
        if mode == "token":
            # The scheduled command without its token: refused, with Ray's message.
            bare = _submit(address, _env(tmp_path), registry)
            assert bare.returncode != 0 and NO_TOKEN.search(bare.stdout + bare.stderr), bare.stderr[-2000:]
            # The token file alone is not enough: a client without RAY_AUTH_MODE=token sends no token.
            path_only = _submit(address, _env(tmp_path, RAY_AUTH_TOKEN_PATH=str(token_file)), registry)
            assert path_only.returncode != 0 and NO_TOKEN.search(path_only.stdout + path_only.stderr)
            # What cluster/nightly.crontab does: token mode plus the token file.
            done = _submit(address, _env(tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file)),
                           registry)
        else:
            done = _submit(address, _env(tmp_path, RAY_AUTH_MODE="disabled"), registry)
        assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        assert '"champion": null' in done.stdout and "succeeded" in done.stdout + done.stderr
        assert not (tmp_path / "home" / ".ray" / "auth_token").exists()
    finally:
        _stop_head(temp_dir)
