"""Shared fixtures: a real S3-protocol server on loopback, the real lfm2k dataset."""
from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LFM2K = (REPO.parent / "shared" / "data" / "lfm2k").resolve()

os.environ.setdefault("DGLBACKEND", "pytorch")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1 with a bucket; yields the bucket URL ``s3://recgoat-test``.

    Sets the standard AWS variables (dummy credentials, ``AWS_ENDPOINT_URL``) for this process
    and for subprocesses the tests start.
    """
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                                           "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_DEFAULT_REGION")}
    os.environ.update({
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing-key-id",
        "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
    })
    import boto3
    boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_bucket(Bucket="recgoat-test")
    try:
        yield "s3://recgoat-test"
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def s3_url(s3_server):
    """A fresh, empty prefix on the loopback S3 server."""
    return f"{s3_server}/{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def lfm2k_dir() -> Path:
    if not (LFM2K / "lfm2k.inter").exists():
        pytest.fail(f"{LFM2K}: the shared lfm2k dataset must sit beside the repo (../shared/data/lfm2k)")
    return LFM2K


@pytest.fixture(scope="session")
def lfm2k_dataset(lfm2k_dir, tmp_path_factory) -> str:
    """lfm2k as a canonical dataset (text = MiniLM, audio = vggish), prepared once per session."""
    from recgoat_dist.data.mmrec import prepare_mmrec

    out = str(tmp_path_factory.mktemp("lfm2k") / "dataset")
    prepare_mmrec(inter=str(lfm2k_dir / "lfm2k.inter"),
                  features={"text": str(lfm2k_dir / "all-MiniLM-L6-v2.npy"),
                            "audio": str(lfm2k_dir / "vggish.npy")},
                  out=out, original_ids=str(lfm2k_dir / "lfm2k_og_ids.inter"))
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small and medium solves are dominated by thread wake-ups when the CPU is shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
