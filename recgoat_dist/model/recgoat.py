"""RecGOAT: LightGCN ID stream + LM/content streams, aligned by CMCL and fused by optimal transport.

    items:  e_i = lightgcn_i [+ h_i] + sum_m gamma_m * T_m(gat_m(proj_m(x_i^m)))     (T_m: OAT transport)
    users:  e_u = lightgcn_u + w * T_u(gat_uu(proj_u(x_u^LM)))              (w: model.user_lm_weight)
    score:  s(u, i) = <e_u, e_i>
    loss:   BPR + reg_weight * L2(batch ego embeddings) + lambda_cmcl * CMCL + lambda_oat * OAT

``forward`` runs every stream on a list of graphs (the full heterograph repeated, or the sampled
blocks of a mini-batch) and returns per-stream representations of the output nodes; ``loss``
indexes them with positions of the batch's users and items among the output nodes;
``final_embeddings`` turns full-graph representations into the vectors that are ranked.

Transport (OAT) maps each content representation into the ID space: onto landmark *item* ID
representations for item modalities, onto landmark *user* ID representations for the user LM
stream, so both blends add vectors of the ID space (without OAT they are added as they are).

What the modality KNN graphs refine (``model.knn_refines``): ``content`` (the GAT of each content
stream runs on its KNN graph; the paper's default here), ``id`` (the graphs smooth the item ID
embeddings, ``h_i`` above, see :mod:`.item_graph`; content streams are projections only) or
``both``. ``h_i`` is part of the item's ID representation everywhere: scoring, CMCL's ID view and
the OAT landmarks.

Where the content joins the ID stream (``model.content_entry``): ``output`` (the blend above,
after LightGCN) or ``input``: ``e^(0)_i + sum_m gamma_m T_m(...)`` is the item's layer-0 row, so
LightGCN (and the item graph) propagate it to users and neighbours; see :mod:`.content_entry`.

How the gammas are learned (``model.fusion``): ``simplex`` (softmax, they sum to 1) or ``free``
(one unconstrained weight per modality); see :mod:`recgoat_dist.ot.oat`.

Variants (``model.name``): ``recgoat``; ``lightgcn`` (ID stream only); ``no_oat`` (modality parts
added with learned weights, no transport); ``no_cmcl``; ``no_gat`` (content streams without graph
attention, items and users); ``no_user_graph`` (user LM stream without the user-user graph).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import dgl
import torch
from torch import nn

from recgoat_dist.model.item_graph import ItemGraph, mixing_weights
from recgoat_dist.model.lightgcn import LightGCN, bpr_loss, embedding_l2
from recgoat_dist.model.streams import FeatureStream

VARIANTS: dict[str, dict[str, bool]] = {
    #               item streams, item GAT, user stream, user GAT, OAT, CMCL
    "recgoat":       dict(items=True, item_gat=True, user=True, user_gat=True, oat=True, cmcl=True),
    "lightgcn":      dict(items=False, item_gat=False, user=False, user_gat=False, oat=False, cmcl=False),
    "no_oat":        dict(items=True, item_gat=True, user=True, user_gat=True, oat=False, cmcl=True),
    "no_cmcl":       dict(items=True, item_gat=True, user=True, user_gat=True, oat=True, cmcl=False),
    "no_gat":        dict(items=True, item_gat=False, user=True, user_gat=False, oat=True, cmcl=True),
    "no_user_graph": dict(items=True, item_gat=True, user=True, user_gat=False, oat=True, cmcl=True),
}
KNN_REFINES = ("content", "id", "both")       # what the modality KNN graphs refine
CONTENT_ENTRIES = ("output", "input")         # where the fused item content joins the ID stream


@dataclass
class Representations:
    """Per-stream representations of the output nodes of one forward pass."""

    user_id: torch.Tensor                 # (n_users_out, d) LightGCN
    item_id: torch.Tensor                 # (n_items_out, d) LightGCN
    user_ego: torch.Tensor                # (n_users_out, d) layer-0 ID embeddings
    item_ego: torch.Tensor
    item_modal: dict[str, torch.Tensor] = field(default_factory=dict)   # modality -> (n_items_out, d)
    user_lm: Optional[torch.Tensor] = None                              # (n_users_out, d)
    item_cold: Optional[torch.Tensor] = None   # (n_items_out,) bool: no training interaction (set by callers)
    content_oat: Optional[torch.Tensor] = None  # 0-d OAT loss of the transport into layer 0 (content_entry=input)


@dataclass
class LossParts:
    total: torch.Tensor
    parts: dict[str, float]               # bpr, reg, cmcl, oat (already weighted), for logging


class RecGOAT(nn.Module):
    """All variants of the model; which streams exist is fixed at construction by ``name``."""

    def __init__(self, num_users: int, num_items: int, item_feature_dims: Mapping[str, int],
                 user_feature_dim: Optional[int] = None, name: str = "recgoat", dim: int = 64,
                 n_layers: int = 3, gat_layers: int = 1, gat_heads: int = 2, dropout: float = 0.0,
                 reg_weight: float = 1e-4, lambda_cmcl: float = 0.01, lambda_oat: float = 0.01,
                 temperature: float = 0.2, ot_eps: float = 0.1, num_landmarks: int = 256,
                 user_lm_weight: float = 0.5, cmcl_batch: int = 256, ot_batch: int = 256,
                 knn_refines: str = "content", item_graph_layers: int = 1,
                 item_graph_weights: Optional[Mapping[str, float]] = None, content_entry: str = "output",
                 fusion: str = "simplex"):
        super().__init__()
        if name not in VARIANTS:
            raise ValueError(f"unknown model {name!r}; choose one of {sorted(VARIANTS)}")
        if knn_refines not in KNN_REFINES:
            raise ValueError(f"unknown knn_refines {knn_refines!r}; choose one of {KNN_REFINES}")
        if content_entry not in CONTENT_ENTRIES:
            raise ValueError(f"unknown content_entry {content_entry!r}; choose one of {CONTENT_ENTRIES}")
        self.name, self.flags = name, VARIANTS[name]
        self.content_entry = content_entry
        self.knn_refines = knn_refines
        self.num_users, self.num_items = num_users, num_items
        self.reg_weight, self.temperature = reg_weight, temperature
        self.lambda_cmcl = lambda_cmcl if self.flags["cmcl"] else 0.0
        self.lambda_oat = lambda_oat if self.flags["oat"] else 0.0
        self.user_lm_weight, self.num_landmarks = user_lm_weight, num_landmarks
        self.cmcl_batch, self.ot_batch = cmcl_batch, ot_batch
        self.id = LightGCN(num_users, num_items, dim, n_layers)
        modalities = sorted(item_feature_dims) if self.flags["items"] else []
        self.item_streams = nn.ModuleDict({
            m: FeatureStream(item_feature_dims[m], dim, f"knn_{m}", "item",
                             gat_layers if self.flags["item_gat"] and knn_refines != "id" else 0,
                             gat_heads, dropout)
            for m in modalities})
        # The item graph needs only the KNN edges, not the features: LightGCN may use it too.
        self.item_graph = None
        if knn_refines != "content" and item_feature_dims:
            self.item_graph = ItemGraph(mixing_weights(sorted(item_feature_dims), item_graph_weights),
                                        item_graph_layers)
        self.user_stream = None
        if self.flags["user"] and user_feature_dim:
            self.user_stream = FeatureStream(user_feature_dim, dim, "uu", "user",
                                             gat_layers if self.flags["user_gat"] else 0, gat_heads, dropout)
        self.oat = None
        self.gamma = None
        self.user_oat = None
        if self.flags["oat"] and (modalities or self.user_stream is not None):
            from recgoat_dist.ot import OAT
            if modalities:
                self.oat = OAT(modalities, dim, eps=ot_eps, num_landmarks=num_landmarks, fusion=fusion)
            if self.user_stream is not None:
                self.user_oat = OAT(["lm"], dim, eps=ot_eps, num_landmarks=num_landmarks)
        if modalities and self.oat is None:
            self.gamma = nn.ParameterDict({m: nn.Parameter(torch.tensor(1.0 / len(modalities)))
                                           for m in modalities})
        # Landmarks: item ids whose current ID representations are the OAT targets. Chosen on first
        # use (k-means++ over the items' ID representations) and re-chosen by refresh_landmarks.
        self.register_buffer("landmark_idx", torch.zeros(0, dtype=torch.long))
        self.register_buffer("user_landmark_idx", torch.zeros(0, dtype=torch.long))
        self._register_load_state_dict_pre_hook(self._resize_landmark_buffers)

    @property
    def modalities(self) -> list[str]:
        return list(self.item_streams)

    @property
    def num_graph_layers(self) -> int:
        """How many graphs/blocks ``forward`` needs."""
        streams = [s for s in (*self.item_streams.values(), self.user_stream) if s is not None]
        if self.content_hops:      # the content's GAT hops first, then the ID stream's (content_entry)
            user = [len(self.user_stream.gats)] if self.user_stream is not None else []
            id_hops = max([self.id.n_layers, 1, self.item_graph.layers if self.item_graph is not None else 0])
            return max([self.content_hops + id_hops] + user)
        return max([self.id.n_layers, 1, self.knn_hops] + [len(s.gats) for s in streams])

    @property
    def content_input(self) -> bool:
        """Whether item content enters LightGCN's layer 0 (``content_entry=input`` with item streams)."""
        return self.content_entry == "input" and bool(self.item_streams)

    @property
    def content_hops(self) -> int:
        """Leading graphs/blocks that only the item streams' GAT uses (``content_entry=input``: the
        content must exist at the ID stream's input nodes, one KNN hop further out per GAT layer)."""
        return max(len(s.gats) for s in self.item_streams.values()) if self.content_input else 0

    @property
    def knn_hops(self) -> int:
        """Hops of the KNN graphs a forward needs: GAT layers of the item streams, item-graph layers."""
        return max([len(s.gats) for s in self.item_streams.values()]
                   + [self.item_graph.layers if self.item_graph is not None else 0, 0])

    def forward(self, blocks: Sequence[dgl.DGLGraph], input_nodes: Mapping[str, torch.Tensor],
                item_feats: Mapping[str, torch.Tensor] | None = None,
                user_feats: Optional[torch.Tensor] = None, history=None) -> Representations:
        """``item_feats[m]`` / ``user_feats``: content features of the input items / users.

        ``history(layer, ntype, ids)``: historical LightGCN layers for the layers beyond the blocks
        (sampled propagation; see :meth:`LightGCN.forward`)."""
        if self.content_input:
            from recgoat_dist.model.content_entry import input_forward
            return input_forward(self, blocks, input_nodes, item_feats, user_feats, history)
        ego_inputs = self.id.ego(input_nodes)
        final, ego = self.id(blocks, input_nodes, history, ego_inputs)
        if self.item_graph is not None:
            final["item"] = final["item"] + self.item_graph(blocks, ego_inputs["item"])
        reps = Representations(final["user"], final["item"], ego["user"], ego["item"])
        for m, stream in self.item_streams.items():
            reps.item_modal[m] = stream(blocks, item_feats[m])
        if self.user_stream is not None:
            reps.user_lm = self.user_stream(blocks, user_feats)
        return reps

    def inference(self, tables, nodes, neighbours, ego, features, sync=None, batch_size: int = 4096) -> None:
        """Layer-wise full inference of every stream into ``tables`` (one hop at a time); see
        :func:`recgoat_dist.model.inference.layerwise_inference` for the arguments."""
        from recgoat_dist.model.inference import layerwise_inference
        layerwise_inference(self, tables, nodes, neighbours, ego, features, sync, batch_size)

    # ---- representations that are scored ------------------------------------------------------
    def landmarks(self, reps: Representations) -> Optional[torch.Tensor]:
        """Landmark item ID embeddings (L, d) the item modalities are transported onto (OAT only).

        ``landmark_idx`` indexes ``reps.item_id``: item ids when ``reps`` covers every item (a
        full-graph forward). With sampled blocks pass landmarks to :meth:`loss` explicitly.
        """
        if self.oat is None:
            return None
        if self.content_input:
            return self.ego_landmarks()
        if len(self.landmark_idx) == 0:
            self.refresh_landmarks(reps)
        return reps.item_id[self.landmark_idx]

    def ego_landmarks(self) -> torch.Tensor:
        """Landmark item *ego* rows (L, d): the OAT targets with ``content_entry=input`` (why: in
        :mod:`.content_entry`). A sparse-gradient lookup when the ID tables are (sampled)."""
        if len(self.landmark_idx) == 0:
            with torch.no_grad():
                self.landmark_idx = self._pick_item_landmarks(self.id.item, None)
        return nn.functional.embedding(self.landmark_idx, self.id.item, sparse=self.id.sparse_grad)

    def user_landmarks(self, reps: Representations) -> Optional[torch.Tensor]:
        """Landmark user ID embeddings (L, d) the user LM stream is transported onto."""
        if self.user_oat is None:
            return None
        if len(self.user_landmark_idx) == 0:
            # input: the item landmarks already shaped this reps' items; choose the users' only
            self._refresh_user_landmarks(reps) if self.content_input else self.refresh_landmarks(reps)
        return reps.user_id[self.user_landmark_idx]

    @torch.no_grad()
    def refresh_landmarks(self, reps: Representations) -> None:
        """(Re-)pick landmark items and users by k-means++ seeding on their ID representations.

        k-means++ costs O(N L d) with L sequential passes over N: above ``LANDMARK_POOL`` rows it
        seeds on a uniform sample of that many, so an epoch's refresh does not grow with the catalog.
        """
        if self.oat is not None:
            # content_entry=input transports onto ego rows: choose among those (content_entry).
            rows = self.id.item if self.content_input else reps.item_id
            self.landmark_idx = self._pick_item_landmarks(rows, reps.item_cold)
        if self.user_oat is not None:
            self._refresh_user_landmarks(reps)

    @torch.no_grad()
    def _refresh_user_landmarks(self, reps: Representations) -> None:
        from recgoat_dist.ot import select_landmarks
        pool = landmark_pool(torch.arange(len(reps.user_id), device=reps.user_id.device))
        self.user_landmark_idx = pool[select_landmarks(reps.user_id[pool], self.num_landmarks)].to(
            self.landmark_idx.device)

    @torch.no_grad()
    def _pick_item_landmarks(self, rows: torch.Tensor, cold: Optional[torch.Tensor]) -> torch.Tensor:
        from recgoat_dist.ot import select_landmarks
        pool = item_landmark_candidates(len(rows), cold, rows.device)
        return pool[select_landmarks(rows.detach()[pool], self.num_landmarks)].to(self.landmark_idx.device)

    def _resize_landmark_buffers(self, state_dict, prefix, *args) -> None:
        # Landmark buffers take their size from the data (at most num_landmarks, at most the
        # number of items/users): adopt the checkpoint's sizes before loading into them.
        for name in ("landmark_idx", "user_landmark_idx"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        for name in ("oat", "user_oat"):
            key = f"{prefix}{name}.landmark_potentials"
            if getattr(self, name) is not None and key in state_dict:
                getattr(self, name).landmark_potentials = torch.empty_like(state_dict[key])

    def _transport(self, oat, modal: dict[str, torch.Tensor], base: torch.Tensor,
                   landmarks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(base + sum_m gamma_m T_m(modal_m), OAT loss)`` for distinct rows.

        Sinkhorn (the OAT loss, and the landmark potentials it stores) runs on a sample of at most
        ``ot_batch`` rows; the entropic map then transports every row with those potentials.
        """
        sample = _subsample(len(base), self.ot_batch)
        loss, _ = oat.align({m: x[sample] for m, x in modal.items()}, landmarks)
        transported = {m: oat.transport(m, x, landmarks) for m, x in modal.items()}
        return oat.fuse(base, transported), loss

    def user_vectors(self, reps: Representations, users: torch.Tensor,
                     landmarks: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(user vectors, OAT loss)`` for ``users`` (positions among output users)."""
        base = reps.user_id[users]
        zero = base.new_zeros(())
        if reps.user_lm is None or self.user_lm_weight == 0:
            return base, zero
        if self.user_oat is None:
            return base + self.user_lm_weight * reps.user_lm[users], zero
        unique, inverse = torch.unique(users, return_inverse=True)
        if landmarks is None:
            landmarks = self.user_landmarks(reps)
        id_u = reps.user_id[unique]
        fused, loss = self._transport(self.user_oat, {"lm": reps.user_lm[unique]}, id_u, landmarks)
        return (id_u + self.user_lm_weight * (fused - id_u))[inverse], loss

    def item_vectors(self, reps: Representations, items: torch.Tensor,
                     landmarks: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(fused item vectors, OAT loss)`` for ``items`` (positions among output items)."""
        base = reps.item_id[items]
        zero = base.new_zeros(())
        if not self.item_streams or self.content_input:    # input: the content is inside item_id
            return base, zero
        if self.oat is None:
            return base + sum(self.gamma[m] * reps.item_modal[m][items] for m in self.modalities), zero
        if landmarks is None:
            landmarks = self.landmarks(reps)
        unique, inverse = torch.unique(items, return_inverse=True)   # transport each item once
        modal = {m: reps.item_modal[m][unique] for m in self.modalities}
        fused, loss = self._transport(self.oat, modal, reps.item_id[unique], landmarks)
        return fused[inverse], loss

    @torch.no_grad()
    def final_embeddings(self, reps: Representations, batch_size: int = 65536,
                         landmarks: Optional[torch.Tensor] = None, user_landmarks: Optional[torch.Tensor] = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(users (U, d), items (I, d))`` to rank with, from a full-graph forward pass; or from a
        block of its rows, given the full graph's OAT ``landmarks`` / ``user_landmarks`` (L, d) and
        fitted potentials: each row's vectors depend only on its own representations and those."""
        users = reps.user_id
        if reps.user_lm is not None and self.user_lm_weight != 0:
            lm = reps.user_lm
            if self.user_oat is not None:
                user_landmarks = self.user_landmarks(reps) if user_landmarks is None else user_landmarks
                lm = self._transport_all(self.user_oat, {"lm": lm}, user_landmarks, batch_size)
            users = users + self.user_lm_weight * lm
        items, content = reps.item_id, None
        if self.oat is not None:
            landmarks = self.landmarks(reps) if landmarks is None else landmarks
            content = self._transport_all(self.oat, reps.item_modal, landmarks, batch_size)
        elif self.gamma is not None:
            content = sum(self.gamma[m] * reps.item_modal[m] for m in self.modalities)
        if content is None:
            return users, items
        if reps.item_cold is not None and bool(reps.item_cold.any()):
            # A cold item's ID embedding never received a gradient: it is its random initial value.
            # Its content, transported into the ID space, is the model's estimate of that embedding
            # (with OAT a convex mix of landmark ID vectors; without OAT only a learned stand-in).
            items = torch.where(reps.item_cold[:, None], content, items)
        if self.content_input:     # the content entered at layer 0 and is already inside item_id
            return users, items
        return users, items + content

    @staticmethod
    def _transport_all(oat, modal: dict[str, torch.Tensor], landmarks: torch.Tensor, batch_size: int) -> torch.Tensor:
        """``sum_m gamma_m T_m(modal_m)`` for every row, with the stored landmark potentials."""
        if not bool(oat.potentials_ready.all()):      # never trained: solve once here
            oat.fit_potentials(modal, landmarks)
        gamma = oat.gamma()
        return sum(gamma[m] * oat.transport(m, modal[m], landmarks, batch_size) for m in oat.modalities)

    # ---- objective ----------------------------------------------------------------------------
    def loss(self, reps: Representations, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
             landmarks: Optional[torch.Tensor] = None, user_landmarks: Optional[torch.Tensor] = None) -> LossParts:
        """BPR + L2 on the batch's ego embeddings + weighted CMCL and OAT terms.

        ``users``, ``pos``, ``neg``: positions among the output users / items of ``reps``.
        ``landmarks`` / ``user_landmarks``: OAT targets (L, d); by default the landmark items / users
        of a full-graph ``reps``. On sampled blocks, add ``self.landmark_idx`` (and
        ``self.user_landmark_idx``) to the seeds and pass their rows of ``reps.item_id``
        (``reps.user_id``) here, so training and full-catalog inference share one definition.
        """
        items = torch.cat([pos, neg])
        item_vec, oat = self.item_vectors(reps, items, landmarks)
        u, oat_users = self.user_vectors(reps, users, user_landmarks)
        oat = oat + oat_users
        if reps.content_oat is not None:
            oat = oat + reps.content_oat
        p, n = item_vec[:len(pos)], item_vec[len(pos):]
        bpr = bpr_loss((u * p).sum(-1), (u * n).sum(-1))
        reg = self.reg_weight * embedding_l2(reps.user_ego[users], reps.item_ego[pos], reps.item_ego[neg])
        cmcl = self.lambda_cmcl * self.cmcl(reps, users, items) if self.lambda_cmcl else bpr.new_zeros(())
        oat = self.lambda_oat * oat
        total = bpr + reg + cmcl + oat
        return LossParts(total, {"bpr": float(bpr), "reg": float(reg), "cmcl": float(cmcl), "oat": float(oat)})

    def cmcl(self, reps: Representations, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Cross-modal contrastive loss between the ID view and each content view of the batch."""
        from recgoat_dist.ot import cmcl_loss
        items = torch.unique(items)
        items = items[_subsample(len(items), self.cmcl_batch)]
        loss = reps.item_id.new_zeros(())
        if self.item_streams:
            views = [reps.item_id[items]] + [reps.item_modal[m][items] for m in self.modalities]
            loss = loss + cmcl_loss(views, temperature=self.temperature)
        if reps.user_lm is not None:
            users = torch.unique(users)
            users = users[_subsample(len(users), self.cmcl_batch)]
            loss = loss + cmcl_loss([reps.user_id[users], reps.user_lm[users]], temperature=self.temperature)
        return loss


LANDMARK_POOL = 65536       # landmarks are seeded on at most this many candidate rows


def landmark_pool(pool: torch.Tensor) -> torch.Tensor:
    """The candidate rows landmarks are seeded on: ``pool``, or a uniform sample of ``LANDMARK_POOL``."""
    if len(pool) <= LANDMARK_POOL:
        return pool
    return pool[torch.randperm(len(pool), device=pool.device)[:LANDMARK_POOL]]


def item_landmark_candidates(num_items: int, cold: Optional[torch.Tensor], device=None) -> torch.Tensor:
    """The items landmarks are seeded on: the warm ones (a cold item's ID vector is untrained noise,
    and landmarks are transport targets), all when every item is cold, at most ``LANDMARK_POOL``."""
    pool = torch.arange(num_items, device=device)
    if cold is not None and not bool(cold.all()):
        pool = pool[~cold.to(pool.device)]
    return landmark_pool(pool)


def _subsample(n: int, size: int) -> torch.Tensor | slice:
    """A uniform sample of ``size`` positions out of ``n`` (all when ``n <= size`` or size is 0)."""
    if size <= 0 or n <= size:
        return slice(None)
    return torch.randperm(n)[:size]


def build_model(model_config, num_users: int, num_items: int, item_feature_dims: Mapping[str, int],
                user_feature_dim: Optional[int] = None) -> RecGOAT:
    """The model named by a :class:`recgoat_dist.config.ModelConfig`."""
    c = model_config
    return RecGOAT(num_users, num_items, item_feature_dims, user_feature_dim, name=c.name, dim=c.dim,
                   n_layers=c.n_layers, gat_layers=c.gat_layers, gat_heads=c.gat_heads, dropout=c.dropout,
                   reg_weight=c.reg_weight, lambda_cmcl=c.lambda_cmcl, lambda_oat=c.lambda_oat,
                   temperature=c.temperature, ot_eps=c.ot_eps, num_landmarks=c.num_landmarks,
                   user_lm_weight=c.user_lm_weight, cmcl_batch=c.cmcl_batch, ot_batch=c.ot_batch,
                   knn_refines=c.knn_refines, item_graph_layers=c.item_graph_layers,
                   item_graph_weights=c.item_graph_weights, content_entry=c.content_entry,
                   fusion=c.fusion)
