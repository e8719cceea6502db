"""DGL graph servers in Ray actors, and the worker side that connects to them.

Each Ray Train worker (torch rank ``r``) owns partition ``r``: it starts the graph server for that
partition in a Ray actor pinned to its own node, the workers exchange the servers' addresses over
torch.distributed, and every worker then becomes a DGL client (``DistGraph``) of all servers.
Because the actor is owned by the worker, a worker-group restart kills and restarts the servers
with it (a DGL server waits for an exact number of clients, so it cannot outlive its group).
Partition ``r`` lives on rank ``r``'s node, which is what DGL's sparse optimiser assumes (it sends
partition ``p``'s gradients to torch rank ``p`` when there is one trainer per machine).

The shim (:mod:`.shim`) is enabled in the servers and clients of every run: it names DGL's
shared-memory segments after the run (so concurrent runs on one host cannot clobber each other) and
pins each client's machine id to its rank (needed when several ranks share a node).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from typing import Any, Optional

import ray

from recgoat_dist.train.distributed import frontier, shim

logger = logging.getLogger(__name__)


def _free_port(ip: str) -> int:
    with socket.socket() as sock:
        sock.bind((ip, 0))
        return sock.getsockname()[1]


def _node_ip() -> str:
    """This node's address as Ray knows it (127.0.0.1 for a loopback-only local cluster)."""
    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node["NodeID"] == node_id:
            return node["NodeManagerAddress"]
    return ray.util.get_node_ip_address()


def _peak_rss_mb() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _write_ip_config(addresses: list[tuple[str, int]], directory: str) -> str:
    path = os.path.join(directory, "ip_config.txt")
    with open(path, "w") as fh:
        fh.writelines(f"{ip} {port}\n" for ip, port in addresses)
    return path


def local_part_config(partitions: str, part_id: int) -> str:
    """Path of DGL's partition JSON on this node, with part ``part_id`` present locally.

    ``partitions`` is a partitions artifact URL (downloaded part by part through
    ``recgoat_dist.graph.load_partition``) or, for tests, a local DGL ``<graph>.json``.
    """
    if partitions.endswith(".json") and os.path.exists(partitions):
        return partitions
    from recgoat_dist.storage import Artifact, is_local
    art = Artifact(partitions, kind="partitions")
    if is_local(partitions):
        return os.path.join(art.root, art["dgl_config"])
    from recgoat_dist.graph import load_partition
    return load_partition(partitions, part_id).config_path


class GraphServer:
    """Hosts one DGL ``DistGraphServer`` (one partition); its blocking loop runs in a thread."""

    def __init__(self):
        self._server = None
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[str] = None
        self._done = False
        self._workdir = tempfile.mkdtemp(prefix="recgoat-dglserver-")
        self._graph_name: Optional[str] = None
        self._graphbolt = False

    def address(self) -> tuple[str, int]:
        ip = _node_ip()
        return ip, _free_port(ip)

    def start(self, server_id: int, addresses: list, num_clients: int, partitions: str,
              shim_token: Optional[str], graphbolt: bool = False) -> dict:
        """Load the partition, publish it in shared memory, and start serving in a thread.

        ``graphbolt``: serve GraphBolt's ``FusedCSCSamplingGraph`` of the partition (converted once,
        into a local copy of the partition when the artifact's own folder is not ours to write)."""
        os.environ.setdefault("DGLBACKEND", "pytorch")
        os.environ.update(DGL_DIST_MODE="distributed", DGL_ROLE="server")
        if shim_token:
            shim.enable(shim_token, server_id)
        import dgl.distributed
        from dgl.distributed import rpc

        start = time.perf_counter()
        part_config = local_part_config(partitions, server_id)
        ip_config = _write_ip_config([tuple(a) for a in addresses], self._workdir)
        import json
        with open(part_config) as fh:
            self._graph_name = json.load(fh)["graph_name"]
        if graphbolt:
            part_config = graphbolt_partition(part_config, server_id, self._workdir)
        self._graphbolt = graphbolt
        rpc.reset()
        self._server = dgl.distributed.DistGraphServer(
            server_id, ip_config, 1, num_clients, part_config, disable_shared_mem=False,
            graph_format=["csc", "coo"], use_graphbolt=graphbolt)
        self._thread = threading.Thread(target=self._serve, name=f"dgl-server-{server_id}",
                                        daemon=True)
        self._thread.start()
        return {"pid": os.getpid(), "load_s": time.perf_counter() - start}

    def _serve(self) -> None:
        try:
            self._server.start()
        except BaseException as exc:  # noqa: BLE001 - reported through status()
            self._error = f"{type(exc).__name__}: {exc}"
        finally:
            # The ip config and a GraphBolt copy of the partition: needed only while serving.
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._done = True

    def status(self) -> dict:
        return {"done": self._done, "error": self._error, "pid": os.getpid(),
                "peak_rss_mb": _peak_rss_mb(), "graphbolt": self._graphbolt}

    def wait(self, timeout: float) -> dict:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.status()


@dataclasses.dataclass
class GraphService:
    """What a worker holds while it is a DGL client: the graph and how it was brought up."""
    graph: Any                      # dgl.distributed.DistGraph
    partition: int                  # = torch rank = DGL machine id of this worker
    num_partitions: int
    shared_host: bool               # several partitions on one node: the shim is on
    token: str
    server: Any                     # the GraphServer actor handle
    group: Any                      # a gloo process group for object exchange


def graphbolt_partition(part_config: str, part_id: int, workdir: str) -> str:
    """A partition JSON whose part ``part_id`` has GraphBolt's ``fused_csc_sampling_graph.pt``."""
    import json

    import dgl.distributed

    with open(part_config) as fh:
        meta = json.load(fh)
    root = os.path.dirname(os.path.abspath(part_config))
    part_dir = os.path.join(root, os.path.dirname(meta[f"part-{part_id}"]["part_graph"]))
    if os.path.exists(os.path.join(part_dir, "fused_csc_sampling_graph.pt")):
        return part_config
    local = os.path.join(workdir, "graphbolt")
    if not os.path.exists(local):
        shutil.copytree(root, local)
    config = os.path.join(local, os.path.basename(part_config))
    start = time.perf_counter()
    # eids: a partition's training edges are read as its items' in-edges, with their ids.
    dgl.distributed.dgl_partition_to_graphbolt(config, store_eids=True, store_inner_node=True,
                                               store_inner_edge=True)
    logger.info("partition %d converted to GraphBolt in %.1f s", part_id, time.perf_counter() - start)
    return config


def connect(partitions: str, graph_name: str, token: Optional[str] = None, graphbolt: bool = False) -> GraphService:
    """Start this rank's graph server, exchange addresses, and connect as a DGL client.

    ``token`` names this run's shared-memory segments when the one-host shim is needed.

    Collective: every rank of the torch process group must call it.
    """
    import torch.distributed as dist
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    rank, world = dist.get_rank(), dist.get_world_size()
    # Object exchange over gloo works whatever the training backend (NCCL needs CUDA tensors).
    group = dist.new_group(backend="gloo")
    node_id = ray.get_runtime_context().get_node_id()
    actor = ray.remote(num_cpus=0)(GraphServer).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        name=None).remote()
    ip, port = ray.get(actor.address.remote())
    token = token or f"rg{uuid.uuid4().hex[:8]}"
    peers: list = [None] * world
    dist.all_gather_object(peers, (node_id, ip, port, token), group=group)
    addresses = [(p[1], p[2]) for p in peers]
    token = peers[0][3]
    shared_host = len({p[0] for p in peers}) < world
    # Always on: DGL names its shared memory after the tensor alone, so two runs on one host
    # (two jobs on a node, a benchmark beside the tests) would unlink each other's segments.
    shim.enable(token, rank)
    num_clients = world          # trainers only: workers sample in their own process
    info = ray.get(actor.start.remote(rank, addresses, num_clients, partitions, token, graphbolt))
    logger.info("rank %d: graph server for partition %d up on %s:%d (pid %d, %.1f s)%s",
                rank, rank, ip, port, info["pid"], info["load_s"],
                " [one-host shim]" if shared_host else "")

    os.environ.update(DGL_DIST_MODE="distributed", DGL_ROLE="client", DGL_NUM_SERVER="1",
                      DGL_NUM_SAMPLER="0")
    import dgl.distributed
    workdir = tempfile.mkdtemp(prefix="recgoat-dglclient-")
    try:
        dgl.distributed.initialize(_write_ip_config(addresses, workdir), use_graphbolt=graphbolt)
    finally:                     # DGL reads the ip config once, while it connects
        shutil.rmtree(workdir, ignore_errors=True)
    frontier.install()
    graph = dgl.distributed.DistGraph(graph_name)
    return GraphService(graph=graph, partition=rank, num_partitions=world,
                        shared_host=shared_host, token=token, server=actor, group=group)


def disconnect(service: GraphService, timeout: float = 30.0) -> dict:
    """Leave DGL (collective; shuts the servers down) and collect this rank's server status."""
    import dgl.distributed
    dgl.distributed.exit_client()
    status = ray.get(service.server.wait.remote(timeout))
    ray.kill(service.server)
    shim.cleanup(service.token)
    return status
