"""How moto holds large objects: peak RSS of a loopback moto S3 server process while one object is
uploaded (multipart, through recgoat_dist.storage's filesystem) and read back.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/moto_large_objects.py 256 1024     # object sizes, MB

Prints one JSON line (figures in benchmarks/RESULTS.md, catalog section). Scratch files go to
``$MOTO_BENCH_DIR`` (default /tmp), which is also moto's ``TMPDIR`` (where it spills keys).
"""
import json
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np

SCRATCH = os.environ.get("MOTO_BENCH_DIR", "/tmp")
MOTO = os.path.join(os.path.dirname(sys.executable), "moto_server")

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def rss_mb(pid):
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024

port = free_port()
env = {**os.environ, "TMPDIR": SCRATCH}
srv = subprocess.Popen([MOTO, "-H", "127.0.0.1", "-p", str(port)], env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x",
                  AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1")
time.sleep(3)
import boto3
boto3.client("s3").create_bucket(Bucket="moto-size-test")
from recgoat_dist.storage import filesystem
peak = [0.0]
stop = threading.Event()
def watch():
    while not stop.is_set():
        peak[0] = max(peak[0], rss_mb(srv.pid)); time.sleep(0.05)
threading.Thread(target=watch, daemon=True).start()
base = rss_mb(srv.pid)
out = {"idle_mb": round(base)}
for mb in map(int, sys.argv[1:]):
    path = os.path.join(SCRATCH, f"moto-bench-{mb}.bin")
    with open(path, "wb") as fh:
        for _ in range(mb):
            fh.write(np.random.bytes(1 << 20))
    fs, p = filesystem(f"s3://moto-size-test/obj{mb}")
    peak[0] = rss_mb(srv.pid); t = time.perf_counter()
    fs.put_file(path, p)
    up = time.perf_counter() - t; peak_up = peak[0]
    peak[0] = rss_mb(srv.pid); t = time.perf_counter()
    fs.get_file(p, path + ".back")
    down = time.perf_counter() - t; peak_down = peak[0]
    same = os.path.getsize(path + ".back") == mb << 20
    out[f"{mb}MB"] = {"upload_s": round(up, 1), "peak_during_upload_mb": round(peak_up), "read_s": round(down, 1),
                      "peak_during_read_mb": round(peak_down), "after_mb": round(rss_mb(srv.pid)), "round_trip_ok": same}
    os.remove(path); os.remove(path + ".back"); fs.rm(p)
stop.set(); srv.terminate()
print(json.dumps(out))
