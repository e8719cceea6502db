"""The model home: immutable versions, one champion pointer, one object per event, a lock.

Layout under the registry URL (local path or ``s3://``)::

    champion.json                       the only mutable object: version, date, metrics, lineage
    versions/<date>/manifest.json       a version (kind ``model_version``), written after its parts:
    versions/<date>/dataset/ graph/ run/ export/   each an artifact with its own manifest
    events/<utc>-<kind>-<date>.json     one object per event: promoted | rejected | rolled_back | failed
    lock.json                           held while a run or a rollback changes the registry

Why this is safe: a version's manifest is written only after every part is published, and the
pointer is swapped only after the version's manifest exists, each by one object PUT (atomic on
S3; on disk a write to a temporary name and a rename). So the pointer never names a partial
version, whatever point a run dies at. Events are never rewritten or appended to.

The lock is created with a conditional write: ``If-None-Match: *`` on S3 (s3fs's exclusive
``xb`` mode) and ``O_CREAT | O_EXCL`` on local disk, so of two runs exactly one gets it. A lock
older than ``nightly.lock_stale_seconds`` (default 6 h, far longer than a night's run) is taken
over, since its run must have died; a run that ends (well or with an error) deletes its own lock.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import posixpath
import socket
import time
import uuid
from typing import Any, Optional

from recgoat_dist.storage import Artifact, StorageError, filesystem, join, read_bytes

logger = logging.getLogger(__name__)

DECISIVE = ("promoted", "rejected")
EVENT_KINDS = ("promoted", "rejected", "rolled_back", "failed")
VERSION_KIND = "model_version"


class LockHeld(RuntimeError):
    """Another run holds the registry lock."""


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _is_local(fs) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


class Registry:
    def __init__(self, url: str):
        if not url:
            raise StorageError("config key nightly.registry: a registry URL is required")
        self.url = str(url).rstrip("/")
        self.fs, self.root = filesystem(self.url)

    # ---- small JSON objects ---------------------------------------------------------------------
    def _path(self, rel: str) -> str:
        return posixpath.join(self.root, rel)

    def _put_json(self, rel: str, obj: Any) -> None:
        """One object written whole: a PUT on object stores, write-then-rename on disk."""
        data = json.dumps(obj, indent=2, sort_keys=True).encode()
        path = self._path(rel)
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        if _is_local(self.fs):
            tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}"
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        else:
            self.fs.pipe(path, data)

    def _get_json(self, rel: str) -> Optional[dict]:
        try:
            if not self.fs.exists(self._path(rel)):
                return None
        except Exception as exc:
            raise StorageError(f"{join(self.url, rel)}: cannot be read ({type(exc).__name__}: {exc})") from exc
        return json.loads(read_bytes(join(self.url, rel)))

    # ---- champion pointer ----------------------------------------------------------------------
    def champion(self) -> Optional[dict]:
        return self._get_json("champion.json")

    def set_champion(self, version: str, reason: str, previous: Optional[str] = None) -> dict:
        manifest = self.version(version)       # refuses a partial version
        pointer = {"version": version, "date": manifest["date"], "metrics": manifest["metrics"],
                   "lineage": manifest["lineage"], "url": self.version_url(version), "since_utc": _now(),
                   "reason": reason, "previous": previous}
        self._put_json("champion.json", pointer)
        logger.info("champion is now %s (%s)", version, reason)
        return pointer

    # ---- versions --------------------------------------------------------------------------------
    def version_url(self, version: str) -> str:
        return join(self.url, "versions", version)

    def version(self, version: str) -> dict:
        """The manifest of a complete version (a :class:`StorageError` when partial or missing)."""
        return Artifact(self.version_url(version), kind=VERSION_KIND).manifest

    def is_complete(self, version: str) -> bool:
        try:
            self.version(version)
            return True
        except StorageError:
            return False

    def versions(self) -> list[dict]:
        """Manifests of every complete version, by date."""
        base = self._path("versions")
        if not self.fs.exists(base):
            return []
        out = []
        for path in self.fs.ls(base, detail=False):
            name = posixpath.basename(path.rstrip("/"))
            if self.is_complete(name):
                out.append(self.version(name))
        return sorted(out, key=lambda m: (m["date"], m["version"]))

    # ---- events -----------------------------------------------------------------------------------
    def event(self, kind: str, date: Optional[str], version: Optional[str], **details) -> dict:
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {kind!r}")
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        record = {"kind": kind, "date": date, "version": version, "created_utc": _now(), **details}
        self._put_json(f"events/{stamp}-{kind}-{date or version}.json", record)
        return record

    def events(self) -> list[dict]:
        base = self._path("events")
        if not self.fs.exists(base):
            return []
        names = sorted(p for p in self.fs.ls(base, detail=False) if p.endswith(".json"))
        return [json.loads(self.fs.cat(p)) for p in names]

    def decision(self, date: str) -> Optional[dict]:
        """The last promoted/rejected event of ``date`` (``failed`` is not a decision: re-runs resume)."""
        decided = [e for e in self.events() if e["date"] == date and e["kind"] in DECISIVE]
        return decided[-1] if decided else None

    # ---- lock -------------------------------------------------------------------------------------
    def lock(self, owner: str, stale_seconds: int) -> "RegistryLock":
        return RegistryLock(self, owner, stale_seconds)


class RegistryLock:
    """``with registry.lock(owner, stale): ...``: exclusive, created by a conditional write."""

    REL = "lock.json"

    def __init__(self, registry: Registry, owner: str, stale_seconds: int):
        self.registry, self.owner, self.stale = registry, owner, stale_seconds
        self.token = uuid.uuid4().hex
        self.path = registry._path(self.REL)

    def _create(self) -> bool:
        """True when this call created the lock object, False when it exists already."""
        body = json.dumps({"owner": self.owner, "token": self.token, "host": socket.gethostname(),
                           "pid": os.getpid(), "created": time.time(), "created_utc": _now()}).encode()
        fs = self.registry.fs
        fs.makedirs(posixpath.dirname(self.path), exist_ok=True)
        if _is_local(fs):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as fh:
                fh.write(body)
            return True
        try:
            with fs.open(self.path, "xb") as fh:    # s3fs: PUT with If-None-Match: *
                fh.write(body)
            return True
        except FileExistsError:
            return False

    def _holder(self) -> Optional[dict]:
        try:
            return json.loads(self.registry.fs.cat(self.path))
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:      # being written right now
            return {"owner": "?", "created": time.time()}

    def __enter__(self) -> "RegistryLock":
        for _ in range(2):
            if self._create():
                return self
            holder = self._holder()
            if holder is None:
                continue
            age = time.time() - float(holder.get("created", 0))
            if age <= self.stale:
                raise LockHeld(f"{join(self.registry.url, self.REL)}: held by {holder.get('owner')!r} "
                               f"(host {holder.get('host')}, pid {holder.get('pid')}) for {age:.0f} s; another run "
                               f"is changing this registry. A lock older than nightly.lock_stale_seconds "
                               f"({self.stale} s) is taken over.")
            logger.warning("taking over a stale lock of %r (%.0f s old > nightly.lock_stale_seconds %d)",
                           holder.get("owner"), age, self.stale)
            try:
                self.registry.fs.rm(self.path)
            except FileNotFoundError:
                pass
        raise LockHeld(f"{join(self.registry.url, self.REL)}: another run took the lock first")

    def __exit__(self, *exc) -> None:
        holder = self._holder()
        if holder is not None and holder.get("token") == self.token:
            self.registry.fs.rm(self.path)
