"""The model on a distributed graph: ``recgoat_dist.model.RecGOAT`` with its ID tables on the servers.

Sparse and dense parameters are kept apart on purpose. The user and item ID tables live on the
DGL servers (``DistEmbedding``, one shard per partition) and are updated row-wise, with DGL's
``SparseAdam`` rule, by the rank that owns each row (:mod:`.row_adam`), from the rows a batch
touched, so no embedding table is ever all-reduced. The rest
of the model (projections, GAT, OAT, gammas) is the unchanged ``RecGOAT`` module wrapped in DDP:
only its LightGCN stream's ``ego`` lookup is redirected to the distributed tables.

What a sampled block cannot know by itself is pulled from the servers: each node's training degree
(LightGCN's normalisation, ``ndata["deg"]``) and its content features, standardised with
statistics all-reduced over the partitions (the single-process trainer standardises each column
over all nodes; so do we, without any worker holding all rows).
"""
from __future__ import annotations

from typing import Optional

import dgl
import torch
from torch import nn

from recgoat_dist.model import LightGCN, build_model
from recgoat_dist.train.distributed.row_adam import OwnerRowAdam

NTYPES = ("user", "item")
RATES = ("user", "rates", "item")
RATED_BY = ("item", "rated_by", "user")


def init_id_embedding(shape, dtype):
    """``DistEmbedding`` initialiser (module level: DGL pickles it to the servers); Xavier-like."""
    bound = (6.0 / (shape[0] + shape[1])) ** 0.5 if len(shape) == 2 else 0.1
    return torch.empty(shape, dtype=dtype).uniform_(-bound, bound)


def init_zeros(shape, dtype):
    return torch.zeros(shape, dtype=dtype)


class SparseTables:
    """The user and item ID tables on the DGL servers, with the row-wise Adam of their owners."""

    def __init__(self, graph, dim: int, lr: float, group=None):
        from dgl.distributed import DistEmbedding

        self.tables = {nt: DistEmbedding(graph.num_nodes(nt), dim, name=f"{nt}_id",
                                         init_func=init_id_embedding,
                                         part_policy=graph.get_node_partition_policy(nt))
                       for nt in NTYPES}
        self.optimizer = OwnerRowAdam(self.tables, lr=lr, group=group)

    def step(self) -> None:
        """Apply this batch's row gradients on the owners' partitions, then forget the batch's rows."""
        self.optimizer.step()

    def lookup(self, nodes: dict) -> dict[str, torch.Tensor]:
        return {nt: self.tables[nt](nodes[nt]) for nt in NTYPES}


class DistIdStream(LightGCN):
    """LightGCN whose layer-0 rows come from the ``DistEmbedding`` tables instead of parameters."""

    def __init__(self, tables: SparseTables, n_layers: int):
        nn.Module.__init__(self)
        self.n_layers = n_layers
        self._tables = tables           # not a submodule: DDP must not see the tables

    def ego(self, input_nodes):
        # DistEmbedding looks rows up by CPU ids and returns CPU rows; the model may be on a GPU.
        device = input_nodes["user"].device
        rows = self._tables.lookup({nt: ids.cpu() for nt, ids in input_nodes.items()})
        return {nt: r.to(device) for nt, r in rows.items()}


def in_edges(graph, nodes: dict):
    """Every in-edge of ``nodes`` (``{ntype: ids}``) through the servers, as a frontier graph.
    The ``DistGraph`` method, not the module function: it knows whether the servers run GraphBolt."""
    return graph.sample_neighbors(nodes, -1)


def pull_all(graph, ntype: str, fn, block: int = 65536) -> torch.Tensor:
    """``fn(nodes)`` for every node of ``ntype``, in blocks (e.g. a ``DistTensor``'s rows)."""
    return pull_rows(fn, torch.arange(graph.num_nodes(ntype)), block)


def pull_rows(fn, nodes: torch.Tensor, block: int = 65536) -> torch.Tensor:
    """``fn(nodes)`` in blocks of ``block`` nodes."""
    return torch.cat([fn(nodes[i:i + block]) for i in range(0, len(nodes), block)])


class NodeInputs:
    """Per-node data a block needs, pulled from the servers: degrees and standardised features."""

    def __init__(self, graph, own: dict, item_modalities: list[str], user_modality: Optional[str]):
        from dgl.distributed import DistTensor
        import torch.distributed as dist

        self.graph = graph
        self.item_modalities, self.user_modality = item_modalities, user_modality
        # Training degree (rates edges) of every node, computed by the owner partition.
        self.degree = {nt: DistTensor((graph.num_nodes(nt),), torch.float32, name=f"deg_{nt}",
                                      init_func=init_zeros, part_policy=graph.get_node_partition_policy(nt),
                                      persistent=True) for nt in NTYPES}
        for nt, etype in (("user", RATED_BY), ("item", RATES)):
            self.degree[nt][own[nt]] = training_degree(graph, own[nt], nt, etype)
        self._item_cold = None
        # Column mean and std of each feature over all nodes (sums all-reduced over partitions).
        self.stats = {}
        for nt, name in [("item", m) for m in item_modalities] + ([("user", user_modality)] if user_modality else []):
            x = graph.nodes[nt].data[name][own[nt]].double()
            sums = torch.stack([x.sum(0), (x * x).sum(0), torch.full_like(x[0], len(x))])
            dist.all_reduce(sums)
            mean = sums[0] / sums[2]
            std = ((sums[1] / sums[2] - mean**2) * sums[2] / (sums[2] - 1).clamp(min=1)).clamp(min=0).sqrt()
            self.stats[(nt, name)] = (mean.float(), std.float().clamp(min=1e-6))
        dist.barrier()
        graph.barrier()

    @property
    def item_cold(self) -> torch.Tensor:
        """(num_items,) bool, every item: no training interaction. Pulled once, on first use
        (after the constructor's barrier, so every partition's degrees are in place)."""
        if self._item_cold is None:
            self._item_cold = pull_all(self.graph, "item", lambda b: self.degree["item"][b]) == 0
        return self._item_cold

    def features(self, ntype: str, name: str, nodes: torch.Tensor) -> torch.Tensor:
        mean, std = self.stats[(ntype, name)]
        return (self.graph.nodes[ntype].data[name][nodes] - mean) / std



def training_degree(graph, nodes: torch.Tensor, ntype: str, etype, batch_size: int = 65536) -> torch.Tensor:
    """Number of ``etype`` edges into each of ``nodes`` (full neighbourhood, via the servers)."""
    out = []
    for i in range(0, len(nodes), batch_size):
        batch = nodes[i:i + batch_size]
        frontier = in_edges(graph, {ntype: batch})
        _, dst = frontier.edges(etype=etype)
        position = torch.full((graph.num_nodes(ntype),), -1, dtype=torch.long)
        position[batch] = torch.arange(len(batch))
        out.append(torch.bincount(position[dst], minlength=len(batch)).float())
    return torch.cat(out) if out else torch.zeros(0)


def modalities_of(graph, model_config) -> tuple[list[str], Optional[str]]:
    """Item modalities (those with features and a ``knn_`` graph) and the user LM modality, with
    the single-process engine's rules (:func:`recgoat_dist.train.inputs.load_inputs`)."""
    from recgoat_dist.config import ConfigError

    knn = {e[len("knn_"):] for e in graph.etypes if e.startswith("knn_")}
    item_feats = set(graph.nodes["item"].data.keys())
    wanted = model_config.modalities if model_config.modalities is not None else sorted(knn)
    for m in wanted:
        if m not in knn or m not in item_feats:
            raise ConfigError(f"config key model.modalities: {m!r} needs item features and a knn_{m} graph "
                              f"(graph has knn for {sorted(knn) or 'none'})")
    user_names = sorted(k for k in graph.nodes["user"].data.keys() if not k.startswith("_"))
    user = model_config.user_modality
    if user is not None and user not in user_names:
        raise ConfigError(f"config key model.user_modality: {user!r} is not a user modality of the dataset "
                          f"({user_names or 'none'})")
    if user is None:
        user = "text" if "text" in user_names else (user_names[0] if len(user_names) == 1 else None)
    if "uu" not in graph.etypes:
        user = None
    return list(wanted), user


def build_dist_model(model_config, graph, tables: SparseTables, item_modalities, user_modality):
    """``RecGOAT`` (any variant, from a typed ``ModelConfig``) with the distributed ID stream."""
    dims = {m: int(graph.nodes["item"].data[m].shape[1]) for m in item_modalities}
    user_dim = int(graph.nodes["user"].data[user_modality].shape[1]) if user_modality else None
    model = build_model(model_config, 1, 1, dims, user_dim)
    model.id = DistIdStream(tables, model_config.n_layers)
    return model
