"""One-host shim: several DistDGL partitions (servers and their clients) on one machine.

DGL assumes one partition per machine. Two of its choices break when several partitions share a
host (tests, laptops):

* shared-memory segments are named after the tensor or the graph only (``<name>-kvdata-``,
  ``<graph_name>...``), with no partition id, so the second server on a host overwrites the first
  one's segments (it dies with SIGBUS in ``KVServer.init_data``);
* a client finds its machine id by matching its IP against the ip config, so every client on the
  host gets the same machine id and ``KVClient`` maps only that partition's data.

:func:`enable` fixes both for *this process* and every Python process it starts: it prefixes
DGL's shared-memory names with ``<run token>-m<machine id>-`` and pins the client's machine id.
DGL's sampler processes are started with ``spawn`` and do not inherit a monkeypatch, so
``enable`` also puts a ``sitecustomize`` directory on ``PYTHONPATH`` that re-applies the shim at
interpreter start when ``RECGOAT_DGL_SHIM`` is set. Every distributed run enables it: with one
partition per node the pinned machine id is the one DGL would find (ip config lines follow the
ranks), and the run-scoped names keep two runs on one host apart.
"""
from __future__ import annotations

import glob
import os

ENV_SHIM = "RECGOAT_DGL_SHIM"            # "<run token>:<machine id>"
SITE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sitecustomize")
_applied: tuple[str, int] | None = None


def shm_prefix(token: str, machine_id: int) -> str:
    return f"{token}-m{machine_id}-"


def enable(token: str, machine_id: int) -> None:
    """Apply the shim here and arrange for it in child Python processes (DGL samplers)."""
    os.environ[ENV_SHIM] = f"{token}:{int(machine_id)}"
    path = os.environ.get("PYTHONPATH", "")
    if SITE_DIR not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (SITE_DIR, path) if p)
    _apply(token, int(machine_id))


def apply_from_env() -> None:
    """Called by the ``sitecustomize`` of child processes."""
    value = os.environ.get(ENV_SHIM)
    if value:
        token, machine_id = value.rsplit(":", 1)
        _apply(token, int(machine_id))


def _apply(token: str, machine_id: int) -> None:
    global _applied
    if _applied is not None:
        if _applied != (token, machine_id):
            raise RuntimeError(f"DGL shim already applied as {_applied}, asked for {(token, machine_id)}")
        return
    from dgl.distributed import dist_graph, graph_partition_book, kvstore, rpc_client

    prefix = shm_prefix(token, machine_id)

    def prefixed(fn):
        def wrapper(name, *args, **kwargs):
            return fn(prefix + name, *args, **kwargs)
        wrapper.__wrapped__ = fn
        return wrapper

    # Key-value store tensors (node features, DistEmbedding tables, optimiser state).
    kvstore.empty_shared_mem = prefixed(kvstore.empty_shared_mem)
    # Graph structure and partition book, both named after the graph.
    copy_graph = dist_graph._copy_graph_to_shared_mem
    dist_graph._copy_graph_to_shared_mem = (
        lambda g, graph_name, *a, **k: copy_graph(g, prefix + graph_name, *a, **k))
    dist_graph._get_graph_from_shared_mem = prefixed(dist_graph._get_graph_from_shared_mem)
    dist_graph.get_shared_mem_partition_book = prefixed(dist_graph.get_shared_mem_partition_book)
    book = graph_partition_book.RangePartitionBook
    book_shared_memory = book.shared_memory
    book.shared_memory = lambda self, graph_name: book_shared_memory(self, prefix + graph_name)
    # The client's machine id is its partition, not "the first local line of the ip config".
    rpc_client.get_local_machine_id = lambda server_namebook: machine_id
    _applied = (token, machine_id)


def cleanup(token: str) -> list[str]:
    """Remove the shared-memory segments a run with this token left in ``/dev/shm``."""
    removed = []
    # GraphBolt's shared graph also leaves lock files named after the (prefixed) graph.
    for path in glob.glob(f"/dev/shm/{token}-m*") + glob.glob(f"/dev/shm/dgl.graphbolt.{token}-m*"):
        try:
            os.unlink(path)
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed
