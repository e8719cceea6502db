"""One night, and the first version: the steps, their order, and what makes them resumable.

A night for date D writes under ``<registry>/versions/D/``, each part an artifact published with
its manifest last, and reuses a part that is already published, so a run that died resumes where
it stopped (the trainer itself resumes from its last epoch checkpoint):

1. ``dataset/``: the delta is read and validated *before anything is written*; a bad delta writes
   a ``rejected`` event and nothing else. Then parent version + delta (:mod:`.versions`).
2. ``graph/``: incremental KNN rows, a full rebuild every ``full_rebuild_every`` nights.
3. ``run/``: ``nightly.epochs`` epochs warm-started from the champion (:mod:`.warmstart`).
4. ``export/``: embeddings and top-K by original id (``recgoat export``).
5. the gate (:mod:`.gate`), then the version's ``manifest.json`` with the decision: from here on
   the decision is fixed, and a re-run only finishes the promotion.
6. promoted: the champion pointer is swapped; then the event object is written. The event is
   what marks the date decided, so a crash between 6's two writes is finished by the re-run.
"""
from __future__ import annotations

import copy
import datetime as dt
import logging
import os
import subprocess
import time
from dataclasses import dataclass, field
from typing import Optional

from recgoat_dist.config import Config
from recgoat_dist.data.dataset import DataError, Dataset
from recgoat_dist.nightly.registry import VERSION_KIND, Registry
from recgoat_dist.storage import (ArtifactWriter, absolute, filesystem, join, published, read_bytes,
                                  sha256_bytes)

logger = logging.getLogger(__name__)
EXIT = {"promoted": 0, "noop": 0, "rejected": 3, "bad_input": 2}


class InjectedFault(RuntimeError):
    """Raised by ``nightly.fault`` (tests of crash safety)."""


@dataclass
class Outcome:
    date: str
    decision: str                       # promoted | rejected | noop
    version: Optional[str]
    message: str
    exit_code: int
    row: dict = field(default_factory=dict)


def _fault(config: Config, step: str) -> None:
    if config.nightly.fault == step:
        raise InjectedFault(f"nightly.fault={step}: stopping after step {step}")


def code_version() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version
    try:
        return f"recgoat-dist {version('recgoat-dist')}"
    except PackageNotFoundError:
        return "unknown"


def input_checksums(url: Optional[str]) -> dict[str, str]:
    """SHA-256 of every file under a delta (or a dataset's manifest) for the lineage."""
    if not url:
        return {}
    fs, root = filesystem(url)
    if not fs.exists(root):
        return {}
    files = [root] if fs.isfile(root) else sorted(fs.find(root))
    return {os.path.relpath(p, root) if p != root else os.path.basename(p): sha256_bytes(fs.cat(p)) for p in files}


def _row(date, manifest: dict, decision: str, champion_recall=None) -> dict:
    m = manifest.get("metrics", {})
    return {"date": date, "new_users": manifest.get("new_users", 0), "new_items": manifest.get("new_items", 0),
            "train_seconds": manifest.get("train_seconds"), "candidate_recall@20": m.get("recall@20"),
            "champion_recall@20": m.get("champion_recall@20", champion_recall),
            "new_items_recall@20": m.get("new_items_recall@20"), "churn_overlap@20": m.get("churn_overlap@20"),
            "decision": decision}


def _train_config(config: Config, ds_url: str, graph_url: str, epochs: int) -> Config:
    cfg = copy.deepcopy(config)
    cfg.data.dataset, cfg.data.graph, cfg.data.partitions = ds_url, graph_url, None
    cfg.train.epochs, cfg.train.resume = epochs, True
    return cfg


def _build_candidate(config: Config, reg: Registry, date: str, ds_url: str, graph_url: str,
                     champion: Optional[dict], epochs: int, warm_meta: dict) -> dict:
    """Train, export, score: everything the version manifest records (parts reused when published)."""
    from recgoat_dist.export.recommendations import export_run
    from recgoat_dist.nightly.gate import decide, score
    from recgoat_dist.pipeline import train

    vurl = reg.version_url(date)
    run_url, export_url = join(vurl, "run"), join(vurl, "export")
    cfg = _train_config(config, ds_url, graph_url, epochs)
    train_seconds = train_cpu = None
    if not published(run_url, "run"):
        warm = None
        if champion is not None:
            from recgoat_dist.nightly.warmstart import warm_start_state
            missing = Dataset(ds_url).manifest.get("nightly", {}).get("new_without_content_ids", {})
            no_items = sorted({i for key, ids in missing.items() if key.startswith("item:") for i in ids})
            warm, stats = warm_start_state(join(champion["url"], "run"), cfg, graph_url,
                                           missing.get(f"user:{cfg.model.user_modality or 'text'}"), no_items)
            warm_meta.update(stats)
        start, cpu = time.perf_counter(), time.process_time()
        train(cfg, run_url, warm_start=warm)
        train_seconds = round(time.perf_counter() - start, 3)
        train_cpu = round(time.process_time() - cpu, 3)       # robust to other load on a shared machine
    _fault(config, "train")
    if not published(export_url, "export"):
        export_run(run_url, export_url, top_k=config.nightly.export_top_k, overwrite=True)
    scores = score(ds_url, export_url, join(champion["url"], "export") if champion else None)
    decision, reason, metrics = decide(scores, config.nightly.gate)
    return {"decision": decision, "reason": reason, "metrics": metrics, "scores": scores,
            "train_seconds": train_seconds, "train_cpu_seconds": train_cpu, "run": run_url, "export": export_url}


def _publish_version(reg: Registry, config: Config, date: str, ds_url: str, graph_url: str, parent: Optional[str],
                     champion: Optional[dict], result: dict, warm_meta: dict, delta_url: Optional[str]) -> dict:
    ds = Dataset(ds_url)
    nightly = ds.manifest.get("nightly", {})
    lineage = {"inputs": {"delta": delta_url, "sha256": input_checksums(delta_url)},
               "dataset": {"url": ds.url, "manifest_sha256": sha256_bytes(read_bytes(join(ds.url, "manifest.json"))),
                           "num_users": ds.num_users, "num_items": ds.num_items},
               "parent_version": parent, "warm_start_from": champion["version"] if champion else None,
               "config": config.to_dict(), "code_version": code_version()}
    with ArtifactWriter(reg.version_url(date), kind=VERSION_KIND) as writer:
        writer.write_json("gate.json", result["scores"])
        writer.write_json("lineage.json", lineage)
        return writer.commit({
            "version": date, "date": date, "decision": result["decision"], "reason": result["reason"],
            "metrics": result["metrics"], "lineage": lineage, "train_seconds": result["train_seconds"],
            "train_cpu_seconds": result["train_cpu_seconds"],
            "warm_start": warm_meta, "new_users": nightly.get("new_users", ds.num_users if parent is None else 0),
            "new_items": nightly.get("new_items", ds.num_items if parent is None else 0),
            "parts": {"dataset": ds_url, "graph": graph_url, "run": result["run"], "export": result["export"]}})


def _decide_and_promote(config: Config, reg: Registry, date: str, manifest: dict, champion: Optional[dict]) -> Outcome:
    decision = manifest["decision"]
    before = champion["version"] if champion else None
    if decision == "promoted":
        reg.set_champion(date, manifest["reason"], previous=before)
        _fault(config, "pointer")
    reg.event(decision, date, date, metrics=manifest["metrics"], reason=manifest["reason"], champion_before=before)
    row = _row(date, manifest, decision)
    message = f"{date}: {decision} version {date} ({manifest['reason']})"
    return Outcome(date, decision, date, message, EXIT[decision], row)


def _already(reg: Registry, date: str) -> Optional[Outcome]:
    event = reg.decision(date)
    if event is None:
        return None
    what = f"version {event['version']}" if event.get("version") else "no version (bad input)"
    message = (f"{date}: already decided on {event['created_utc']}: {event['kind']}, {what} "
               f"({event.get('reason', '')}); nothing to do")
    manifest = reg.version(event["version"]) if event.get("version") and reg.is_complete(event["version"]) else {}
    return Outcome(date, "noop", event.get("version"), message, 0, _row(date, manifest, event["kind"]))


def _latest_date(dataset_url: str) -> str:
    ts = [t["timestamp"].to_numpy(zero_copy_only=False) for t in Dataset(dataset_url).iter_interactions(
        columns=["timestamp"]) if t["timestamp"].null_count < t.num_rows]
    if not ts:
        raise DataError(f"{dataset_url}: no timestamps; pass --date for the base version")
    import numpy as np
    latest = int(max(np.nanmax(t.astype(float)) for t in ts))
    return dt.datetime.fromtimestamp(latest, dt.timezone.utc).date().isoformat()


def init_registry(config: Config, dataset_url: str, date: Optional[str] = None) -> Outcome:
    """Register ``dataset_url`` as the base, train it from scratch, gate it on the floor, promote it."""
    from recgoat_dist.graph.incremental import build_nightly_graph

    reg = Registry(config.nightly.registry)
    dataset_url = absolute(dataset_url)
    date = date or _latest_date(dataset_url)
    done = _already(reg, date)
    if done is not None:
        return done
    if reg.champion() is not None:
        champ = reg.champion()
        return Outcome(date, "noop", champ["version"], f"registry {reg.url} already has champion "
                       f"{champ['version']}; nothing to do", 0)
    with reg.lock(f"nightly init {date}", config.nightly.lock_stale_seconds):
        return _locked(config, reg, date, lambda: _init_parts(config, reg, date, dataset_url, build_nightly_graph))


def _init_parts(config, reg, date, dataset_url, build_nightly_graph):
    Dataset(dataset_url)               # a published canonical dataset, or a clear error
    graph_url = join(reg.version_url(date), "graph")
    if not published(graph_url, "graph"):
        build_nightly_graph(dataset_url, graph_url, config.graph.knn_k, config.graph.user_knn_k,
                            approx_above=config.graph.approx_above)
    _fault(config, "graph")
    warm_meta: dict = {}
    result = _build_candidate(config, reg, date, dataset_url, graph_url, None, config.train.epochs, warm_meta)
    return _publish_version(reg, config, date, dataset_url, graph_url, None, None, result, warm_meta, None), None


def _locked(config: Config, reg: Registry, date: str, build) -> Outcome:
    """Inside the lock: re-check, build the version unless complete, then finish the promotion."""
    done = _already(reg, date)
    if done is not None:
        return done
    champion = reg.champion()
    try:
        if reg.is_complete(date):
            logger.info("%s: version already complete; finishing its promotion", date)
            manifest = reg.version(date)
        else:
            manifest, _ = build()
            _fault(config, "version")
        return _decide_and_promote(config, reg, date, manifest, champion)
    except DataError:
        raise
    except Exception as exc:
        try:
            reg.event("failed", date, None, reason=f"{type(exc).__name__}: {exc}")
        except Exception:  # the registry itself may be unreachable
            logger.exception("could not record the failure")
        raise


def run_night(config: Config, date: str) -> Outcome:
    """Ingest the delta of ``date``, train the candidate, gate it, promote it (or not)."""
    dt.date.fromisoformat(date)
    reg = Registry(config.nightly.registry)
    done = _already(reg, date)
    if done is not None:
        return done
    if reg.champion() is None:
        raise DataError(f"{reg.url}: no champion yet; run `recgoat nightly init` first")
    with reg.lock(f"nightly run {date}", config.nightly.lock_stale_seconds):
        return _locked(config, reg, date, lambda: _night_parts(config, reg, date))


def _night_parts(config: Config, reg: Registry, date: str):
    from recgoat_dist.graph.incremental import build_nightly_graph
    from recgoat_dist.nightly.delta import delta_url, read_delta
    from recgoat_dist.nightly.versions import build_version_dataset

    versions = reg.versions()
    later = [v["date"] for v in versions if v["date"] > date]
    if later:
        raise DataError(f"--date {date}: the registry already has version {later[-1]}; dates run in order "
                        "(a backfill skips decided dates)")
    parent = versions[-1]
    champion = reg.champion()
    vurl = reg.version_url(date)
    ds_url, graph_url = join(vurl, "dataset"), join(vurl, "graph")
    n = config.nightly
    if not published(ds_url, "dataset"):
        recent = [v for v in versions if v["lineage"].get("parent_version")][-n.volume_nights:]
        counts = [Dataset(v["parts"]["dataset"]).manifest["nightly"]["delta"]["interactions"] for v in recent]
        try:
            delta = read_delta(date, n, Dataset(parent["parts"]["dataset"]).manifest,
                               sum(counts) / len(counts) if counts else None)
        except DataError as exc:
            reg.event("rejected", date, None, reason=str(exc), stage="delta validation",
                      champion_before=champion["version"])
            raise
        build_version_dataset(parent["parts"]["dataset"], delta, ds_url, n)
    _fault(config, "dataset")
    if not published(graph_url, "graph"):
        nights = sum(1 for v in versions if v["lineage"].get("parent_version")) + 1
        full = nights % n.full_rebuild_every == 0
        changed = Dataset(ds_url).manifest["nightly"].get("changed_content", {})
        build_nightly_graph(ds_url, graph_url, config.graph.knn_k, config.graph.user_knn_k,
                            previous=None if full else parent["parts"]["graph"], changed=changed,
                            approx_above=config.graph.approx_above)
    _fault(config, "graph")
    warm_meta: dict = {}
    result = _build_candidate(config, reg, date, ds_url, graph_url, champion, n.epochs, warm_meta)
    return _publish_version(reg, config, date, ds_url, graph_url, parent["version"], champion, result, warm_meta,
                            delta_url(n.delta, date)), parent


def rollback(config_registry: str, to: str, stale_seconds: int = 6 * 3600) -> Outcome:
    """Point the champion at an earlier version that was promoted once."""
    reg = Registry(config_registry)
    manifest = reg.version(to)
    if manifest["decision"] != "promoted":
        raise DataError(f"{reg.version_url(to)}: version {to} was {manifest['decision']} by the gate, never "
                        "promoted; roll back to a version that served")
    with reg.lock(f"registry rollback --to {to}", stale_seconds):
        current = reg.champion()
        before = current["version"] if current else None
        if before == to:
            return Outcome(manifest["date"], "noop", to, f"{to} is already the champion; nothing to do", 0)
        reg.set_champion(to, f"rolled back from {before}", previous=before)
        reg.event("rolled_back", manifest["date"], before, to=to, champion_before=before)
    return Outcome(manifest["date"], "rolled_back", to, f"champion rolled back from {before} to {to}", 0)
