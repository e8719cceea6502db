"""The gate: candidate and champion scored on the date's holdout with one protocol.

Both models are scored from their *exports* (embeddings keyed by original id, as serving sees
them) with :func:`recgoat_dist.eval.evaluate_ranking` (MMRec's full ranking: every catalogue item
scored, the user's training items of the new version excluded). Slices of the holdout (the
version's ``test`` split):

* ``known`` (the gate's metric): pairs whose user and item the champion knows. The champion ranks
  its own catalogue, the candidate its larger one (new items may take top slots, which can only
  lower the candidate's figure: the comparison is conservative).
* ``new_items``: pairs with an item the champion has never seen. Only the candidate is scored: the
  champion has no row for a new id and cannot rank it (its figure is reported as ``null``).
* ``warm_items``: pairs with an item known before the date (every user), for the benchmark's
  new-item vs warm-item comparison; ``all``: the whole holdout.

``churn``: for the users of the ``known`` slice, the mean share of the candidate's top-20 that is
also in the champion's top-20 (1 = same lists; new items in the candidate's list count as
changes). Decision: promoted iff ``known`` Recall@20 >= champion x (1 - max_relative_drop) and
>= min_recall; on the first night (no champion) only the floor, on the whole holdout.
"""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import torch

from recgoat_dist.data.dataset import Dataset
from recgoat_dist.eval import UserItems, evaluate_ranking, topk_items
from recgoat_dist.nightly.config import GateConfig
from recgoat_dist.storage import Artifact

logger = logging.getLogger(__name__)
K = 20


def export_vectors(url: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"user": (original ids, (n, d) float32), "item": ...}`` of an export artifact."""
    art = Artifact(url, kind="export")
    out = {}
    for kind in ("user", "item"):
        ids, rows = [], []
        for rel in sorted(art.files(f"{kind}s/")):
            table = art.read_table(rel, columns=[f"{kind}_id", "embedding"])
            ids.append(table[f"{kind}_id"].to_numpy(zero_copy_only=False))
            emb = table["embedding"].combine_chunks()
            rows.append(emb.values.to_numpy(zero_copy_only=False).reshape(len(emb), -1))
        out[kind] = (np.concatenate(ids), np.concatenate(rows).astype(np.float32))
    return out


def _align(ids: np.ndarray, vectors: np.ndarray, index: dict[str, int], size: int) -> tuple[torch.Tensor, np.ndarray]:
    """Rows of ``vectors`` placed at the version's ids; and which version ids are present."""
    out = np.zeros((size, vectors.shape[1]), np.float32)
    present = np.zeros(size, bool)
    for row, original in enumerate(ids):
        i = index.get(str(original))
        if i is not None:
            out[i], present[i] = vectors[row], True
    return torch.from_numpy(out), present


def _pairs(ui: UserItems) -> tuple[np.ndarray, np.ndarray]:
    return np.repeat(np.arange(ui.num_users), ui.degree()), ui.indices


def _restrict(ui: UserItems, keep: np.ndarray) -> UserItems:
    u, i = _pairs(ui)
    return UserItems.from_pairs(u[keep], i[keep], ui.num_users, ui.num_items)


def _recall(users: torch.Tensor, items: torch.Tensor, train: UserItems, heldout: UserItems) -> Optional[dict]:
    result = evaluate_ranking(users, items, train, heldout, [K])
    if not result["num_users"]:
        return None
    return {"recall@20": round(result["recall@20"], 6), "ndcg@20": round(result["ndcg@20"], 6),
            "num_users": result["num_users"]}


def score(dataset_url: str, candidate_export: str, champion_export: Optional[str]) -> dict:
    """Slices of the holdout for the candidate (and the champion), plus churn."""
    ds = Dataset(dataset_url)
    nu, ni = ds.num_users, ds.num_items
    index = {kind: {str(v): i for i, v in enumerate(ds.original_ids(kind))} for kind in ("user", "item")}
    train_split, test_split = ds.interactions("train"), ds.interactions("test")
    train = UserItems.from_pairs(train_split["user_id"], train_split["item_id"], nu, ni)
    holdout = UserItems.from_pairs(test_split["user_id"], test_split["item_id"], nu, ni)
    cand = export_vectors(candidate_export)
    cu, _ = _align(*cand["user"], index["user"], nu)
    ci, _ = _align(*cand["item"], index["item"], ni)
    parent_items = np.zeros(ni, bool)
    parent_items[:ds.manifest.get("nightly", {}).get("num_items_before", ni)] = True
    hu, hi = _pairs(holdout)
    out: dict = {"holdout_pairs": int(len(hu)), "candidate": {}, "champion": None}
    out["candidate"]["all"] = _recall(cu, ci, train, holdout)
    out["candidate"]["warm_items"] = _recall(cu, ci, train, _restrict(holdout, parent_items[hi]))
    if champion_export is None:
        out["candidate"]["new_items"] = _recall(cu, ci, train, _restrict(holdout, ~parent_items[hi]))
        return out
    champ = export_vectors(champion_export)
    pu, known_u = _align(*champ["user"], index["user"], nu)
    known_i = np.zeros(ni, bool)
    champ_items = np.array([index["item"].get(str(v), -1) for v in champ["item"][0]], np.int64)
    champ_items = champ_items[champ_items >= 0]
    known_i[champ_items] = True
    out["candidate"]["new_items"] = _recall(cu, ci, train, _restrict(holdout, ~known_i[hi]))
    known = _restrict(holdout, known_u[hu] & known_i[hi])
    out["candidate"]["known"] = _recall(cu, ci, train, known)
    # The champion ranks its own catalogue: items renumbered 0..len(champ_items).
    position = np.full(ni, -1, np.int64)
    position[champ_items] = np.arange(len(champ_items))
    pi = torch.from_numpy(_align(*champ["item"], index["item"], ni)[0].numpy()[champ_items])
    tu, ti = _pairs(train)
    keep = position[ti] >= 0
    train_c = UserItems.from_pairs(tu[keep], position[ti[keep]], nu, len(champ_items))
    ku, kitems = _pairs(known)
    known_c = UserItems.from_pairs(ku, position[kitems], nu, len(champ_items))
    out["champion"] = {"known": _recall(pu, pi, train_c, known_c),
                       "new_items": None, "note": "the champion has no row for a new id and cannot rank it"}
    users = np.nonzero((known.degree() > 0) & (train.degree() > 0))[0]
    if len(users):
        top_c = topk_items(cu, ci, users, train, K)
        top_p = champ_items[topk_items(pu, pi, users, train_c, K)]
        overlap = [len(np.intersect1d(a, b)) / K for a, b in zip(top_c, top_p)]
        out["churn_overlap@20"] = round(float(np.mean(overlap)), 6)
    return out


def decide(scores: dict, gate: GateConfig) -> tuple[str, str, dict]:
    """``(promoted|rejected, reason, metrics)``; ``metrics["recall@20"]`` is the gated figure."""
    cand = scores["candidate"]
    first = scores["champion"] is None
    slice_name = "all" if first else "known"
    value = (cand.get(slice_name) or {}).get("recall@20", 0.0)
    metrics = {"recall@20": value, "slice": slice_name,
               "new_items_recall@20": (cand.get("new_items") or {}).get("recall@20"),
               "warm_items_recall@20": (cand.get("warm_items") or {}).get("recall@20"),
               "all_recall@20": (cand.get("all") or {}).get("recall@20"),
               "churn_overlap@20": scores.get("churn_overlap@20")}
    if value < gate.min_recall:
        return "rejected", f"recall@20 {value:.4f} < nightly.gate.min_recall {gate.min_recall}", metrics
    if first:
        return "promoted", f"first version: recall@20 {value:.4f} >= floor {gate.min_recall}", metrics
    champ = (scores["champion"].get("known") or {}).get("recall@20", 0.0)
    metrics["champion_recall@20"] = champ
    bar = champ * (1 - gate.max_relative_drop)
    if value < bar:
        return "rejected", (f"recall@20 {value:.4f} < champion {champ:.4f} x (1 - {gate.max_relative_drop}) = "
                            f"{bar:.4f}"), metrics
    return "promoted", f"recall@20 {value:.4f} >= champion {champ:.4f} x (1 - {gate.max_relative_drop})", metrics
