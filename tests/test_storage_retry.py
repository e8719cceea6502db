"""Transient storage errors: a real TCP proxy in front of the moto server drops connections, and
a stage still round-trips; the retry policy retries transient errors only."""
from __future__ import annotations

import os
import socket
import threading

import numpy as np
import pytest

from recgoat_dist import storage
from recgoat_dist.storage import StorageError, is_transient, retrying


class DroppingProxy:
    """Forwards TCP to ``target``; the first ``drops`` connections are reset right after accept."""

    def __init__(self, target: tuple[str, int], drops: int):
        self.target, self.drops, self.dropped = target, drops, 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            if self.dropped < self.drops:
                self.dropped += 1
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                client.close()                                   # RST: connection reset by peer
                continue
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b) -> None:
        try:
            while data := a.recv(1 << 16):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


def test_stage_survives_dropped_connections(s3_url, monkeypatch, caplog):
    """More consecutive resets than botocore's attempts per request (2 here, to keep its back-off
    short; 5 by default): the whole-operation retry (logged) carries the stage through."""
    import logging

    from recgoat_dist.data.dataset import Dataset
    from recgoat_dist.data.synthetic import generate_synthetic, synthetic_arrays

    host, port = os.environ["AWS_ENDPOINT_URL"].rsplit("//", 1)[1].split(":")
    proxy = DroppingProxy((host, int(port)), drops=5)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setattr(storage, "RETRY_WAIT", 0.05)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    try:
        opts = dict(users=200, items=150, topics=4, chunk_users=64, modalities=("text",))
        with caplog.at_level(logging.WARNING, logger="recgoat_dist.storage"):
            generate_synthetic(f"{s3_url}/flaky", seed=1, **opts)
        ds = Dataset(f"{s3_url}/flaky")
        np.testing.assert_array_equal(ds.item_features("text"), synthetic_arrays(seed=1, **opts)["item_text"])
    finally:
        proxy.close()
    assert proxy.dropped == 5 and "transient storage error" in caplog.text


def test_retry_policy(monkeypatch):
    monkeypatch.setattr(storage, "RETRY_WAIT", 0.01)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("Connection reset by peer")
        return "ok"

    assert retrying("x", flaky, retries=3) == "ok" and len(calls) == 3
    calls.clear()
    with pytest.raises(ConnectionResetError):
        retrying("x", flaky, retries=1)
    assert len(calls) == 2

    def missing():
        calls.append(1)
        raise FileNotFoundError("s3://b/k")

    calls.clear()
    with pytest.raises(FileNotFoundError):
        retrying("x", missing, retries=5)
    assert len(calls) == 1                      # permanent errors are not retried
    assert is_transient(OSError("An error occurred (SlowDown) when calling PutObject"))
    assert not is_transient(StorageError("checksum mismatch")) and not is_transient(ValueError("bad"))
