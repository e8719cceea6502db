"""Artifacts on any fsspec URL: data files first, ``manifest.json`` last.

Every stage writes one *artifact* (a dataset, a graph, a partition set, a run) under a URL and
reads the previous stage's artifact by URL. An artifact is valid only when its ``manifest.json``
exists; the manifest records what the artifact is (``kind``), stage-specific metadata, and for
every file its size, row count (when tabular) and SHA-256. Readers check sizes on open and the
checksum of every file they read, so a half-written or tampered location is refused.

URLs: a local path, ``file://``, ``memory://`` (tests) or ``s3://``. For ``s3://`` the standard AWS
environment variables apply (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``,
``AWS_ENDPOINT_URL`` for MinIO-style endpoints). Credentials are never logged or written: URLs are
logged as given, and a URL carrying ``user:password@`` is refused.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import logging
import os
import posixpath
from contextlib import contextmanager
from typing import Any, Iterator
from urllib.parse import urlsplit

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class StorageError(RuntimeError):
    """A location cannot be read or written as an artifact."""


RETRIES = int(os.environ.get("RECGOAT_STORAGE_RETRIES", "4"))   # whole-operation retries
RETRY_WAIT = 0.5                                                # seconds, doubled per attempt
_TRANSIENT_NAMES = {"EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError",
                    "ConnectTimeoutError", "ClientOSError", "ServerDisconnectedError", "ClientPayloadError",
                    "IncompleteRead", "FSTimeoutError", "ResponseStreamingError"}
_TRANSIENT_TEXT = ("SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "Throttl",
                   "503", "500 ", "Connection reset", "Connection aborted", "timed out")


def is_transient(exc: BaseException) -> bool:
    """Network and throttling errors worth retrying; missing files and bad requests are not."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, StorageError)):
        return False
    for e in (exc, exc.__cause__, exc.__context__):
        if e is None:
            continue
        if isinstance(e, (ConnectionError, TimeoutError)) or type(e).__name__ in _TRANSIENT_NAMES:
            return True
        if isinstance(e, OSError) and any(t in str(e) for t in _TRANSIENT_TEXT):
            return True
    return False


def retrying(what: str, fn, retries: int | None = None):
    """``fn()``, retried on transient storage errors with exponential back-off.

    Retries whole operations (a file read or a whole-object write), on top of the per-request
    retries of botocore/s3fs, so a connection dropped in the middle of a multipart upload or of
    a long read restarts the file rather than failing the stage.
    """
    import time

    retries = RETRIES if retries is None else retries
    for attempt in range(retries + 1):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below
            if attempt == retries or not is_transient(exc):
                raise
            wait = RETRY_WAIT * 2 ** attempt
            logger.warning("%s: transient storage error (%s: %s); retry %d/%d in %.1f s", what,
                           type(exc).__name__, str(exc)[:200], attempt + 1, retries, wait)
            time.sleep(wait)


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return ``(fs, path)`` for ``url``, honouring ``AWS_ENDPOINT_URL`` for ``s3://``."""
    url = str(url)
    if "://" in url and "@" in urlsplit(url).netloc:
        raise StorageError(f"{url.split('://')[0]}://{url.split('@', 1)[1]}: credentials in URLs "
                           "are not accepted; use the AWS environment variables")
    options: dict[str, Any] = {}
    if url.startswith(("s3://", "s3a://")):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            options["client_kwargs"] = {"endpoint_url": endpoint}
        # Listings must not be served from a stale cache after another process wrote.
        options["use_listings_cache"] = False
        # botocore's own per-request retries (connection errors, throttling, 5xx)
        attempts = int(os.environ.get("AWS_MAX_ATTEMPTS", "5"))
        options["config_kwargs"] = {"retries": {"max_attempts": attempts, "mode": "standard"}}
    try:
        fs, path = fsspec.core.url_to_fs(url, **options)
    except (ValueError, ImportError) as exc:
        raise StorageError(f"{url}: unsupported or unreadable URL ({exc})") from exc
    return fs, path


def join(url: str, *parts: str) -> str:
    """Join URL components with ``/`` (URLs are always posix-style, local paths too)."""
    return posixpath.join(str(url).rstrip("/"), *parts)


def absolute(url: str) -> str:
    """``url``, with a relative local path made absolute (other processes, e.g. Ray workers and
    graph servers, may run in another directory); URLs with a scheme are returned unchanged."""
    url = str(url)
    return url if "://" in url else os.path.abspath(url)


def is_local(url: str) -> bool:
    fs, _ = filesystem(url)
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    try:
        return retrying(f"check {url}", lambda: fs.exists(path))
    except Exception as exc:  # network errors, permissions
        raise StorageError(f"{url}: cannot be read ({type(exc).__name__}: {exc})") from exc


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)

    def read() -> bytes:
        with fs.open(path, "rb") as fh:
            return fh.read()

    try:
        return retrying(f"read {url}", read)
    except FileNotFoundError as exc:
        raise StorageError(f"{url}: not found") from exc
    except Exception as exc:
        raise StorageError(f"{url}: cannot be read ({type(exc).__name__}: {exc})") from exc


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _HashingWriter(io.RawIOBase):
    """File wrapper that hashes and counts bytes as they are written."""

    def __init__(self, fh):
        self._fh = fh
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        b = bytes(b)
        self.sha.update(b)
        self.size += len(b)
        self._fh.write(b)
        return len(b)

    def close(self) -> None:
        if not self.closed:
            self._fh.close()
        super().close()


class ArtifactWriter:
    """Write an artifact under ``url``; publish it by writing the manifest last.

    Use as a context manager and call :meth:`commit` with the stage's metadata. If the block
    raises, every file this writer created is deleted, so no manifest and no partial data is left.
    An existing artifact at ``url`` is refused unless ``overwrite=True``; when overwriting, its
    manifest is deleted *first*, so a reader never sees the old manifest over new files.
    """

    def __init__(self, url: str, kind: str, overwrite: bool = False):
        self.url = str(url).rstrip("/")
        self.kind = kind
        self.fs, self.root = filesystem(self.url)
        self.files: dict[str, dict[str, Any]] = {}
        self._committed = False
        manifest = posixpath.join(self.root, MANIFEST)
        if retrying(f"check {self.url}", lambda: self.fs.exists(manifest)):
            if not overwrite:
                raise StorageError(f"{self.url}: an artifact already exists here (pass --overwrite)")
            logger.info("overwriting artifact at %s", self.url)
            self.fs.rm(manifest)
            self.fs.rm(self.root, recursive=True)
        self.fs.makedirs(self.root, exist_ok=True)

    def __enter__(self) -> "ArtifactWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self._committed:
            self.abort()

    def abort(self) -> None:
        """Delete everything this writer wrote."""
        for rel in list(self.files):
            try:
                self.fs.rm(posixpath.join(self.root, rel))
            except FileNotFoundError:
                pass
        try:
            if self.fs.exists(self.root) and not self.fs.ls(self.root):
                self.fs.rmdir(self.root)
        except Exception:  # an empty prefix on object storage does not exist anyway
            pass
        self.files.clear()

    @contextmanager
    def open(self, rel: str, rows: int | None = None) -> Iterator[io.RawIOBase]:
        """Open ``rel`` for binary writing; size and SHA-256 are recorded on close."""
        if rel in self.files:
            raise StorageError(f"{self.url}: {rel} written twice")
        path = posixpath.join(self.root, rel)
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        self.files[rel] = {}
        with self.fs.open(path, "wb") as raw:
            writer = _HashingWriter(raw)
            yield writer
        self.files[rel] = {"bytes": writer.size, "sha256": writer.sha.hexdigest()}
        if rows is not None:
            self.files[rel]["rows"] = int(rows)

    def _retry_whole(self, rel: str, write) -> None:
        """Write ``rel`` with ``write(fh)``, restarting the whole object on a transient error."""
        def attempt():
            self.files.pop(rel, None)
            with self.open(rel) as fh:
                write(fh)
        retrying(f"write {join(self.url, rel)}", attempt)

    def write_bytes(self, rel: str, data: bytes) -> None:
        if rel in self.files:
            raise StorageError(f"{self.url}: {rel} written twice")
        self._retry_whole(rel, lambda fh: fh.write(data))

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=2, sort_keys=True).encode())

    def write_table(self, rel: str, table: pa.Table) -> None:
        """Write one Parquet file (zstd) and record its row count."""
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf, compression="zstd")
        self.write_bytes(rel, buf.getvalue().to_pybytes())
        self.files[rel]["rows"] = int(table.num_rows)

    def put_file(self, local_path: str, rel: str) -> None:
        """Upload a local file (e.g. produced by a library that writes to disk)."""
        if rel in self.files:
            raise StorageError(f"{self.url}: {rel} written twice")

        def copy(dst):
            with open(local_path, "rb") as src:
                for block in iter(lambda: src.read(1 << 22), b""):
                    dst.write(block)
        self._retry_whole(rel, copy)

    def commit(self, meta: dict[str, Any]) -> dict[str, Any]:
        """Write ``manifest.json`` (the artifact becomes visible) and return it."""
        manifest = {
            "kind": self.kind,
            "format_version": FORMAT_VERSION,
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **meta,
            "files": dict(sorted(self.files.items())),
        }
        data = json.dumps(manifest, indent=2, sort_keys=True).encode()

        def write() -> None:
            with self.fs.open(posixpath.join(self.root, MANIFEST), "wb") as fh:
                fh.write(data)
        retrying(f"write {join(self.url, MANIFEST)}", write)
        self._committed = True
        logger.info("published %s artifact at %s (%d files)", self.kind, self.url, len(self.files))
        return manifest


class Artifact:
    """A published artifact: its manifest and checksum-verified reads of its files."""

    def __init__(self, url: str, kind: str | None = None):
        self.url = str(url).rstrip("/")
        self.fs, self.root = filesystem(self.url)
        manifest_url = join(self.url, MANIFEST)
        try:
            found = retrying(f"check {manifest_url}", lambda: self.fs.exists(posixpath.join(self.root, MANIFEST)))
        except Exception as exc:
            raise StorageError(f"{manifest_url}: cannot be read ({type(exc).__name__}: {exc})") from exc
        if not found:
            raise StorageError(f"{manifest_url}: no manifest; not a published artifact "
                               "(unfinished or failed write?)")
        try:
            self.manifest = json.loads(read_bytes(manifest_url))
        except json.JSONDecodeError as exc:
            raise StorageError(f"{manifest_url}: not valid JSON ({exc})") from exc
        if kind is not None and self.manifest.get("kind") != kind:
            raise StorageError(f"{self.url}: expected a {kind} artifact, found "
                               f"{self.manifest.get('kind')!r}")
        self._check_sizes()

    def _check_sizes(self) -> None:
        for rel, info in self.manifest.get("files", {}).items():
            path = posixpath.join(self.root, rel)
            try:
                size = retrying(f"check {join(self.url, rel)}", lambda: self.fs.size(path))
            except FileNotFoundError:
                raise StorageError(f"{join(self.url, rel)}: listed in the manifest but missing") from None
            if size != info["bytes"]:
                raise StorageError(f"{join(self.url, rel)}: size {size} differs from the manifest's "
                                   f"{info['bytes']} (checksum mismatch)")

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    def __getitem__(self, key: str) -> Any:
        return self.manifest[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.manifest.get(key, default)

    def files(self, prefix: str = "") -> list[str]:
        return [rel for rel in self.manifest["files"] if rel.startswith(prefix)]

    def read_bytes(self, rel: str) -> bytes:
        """Read a file and verify its SHA-256 against the manifest."""
        info = self.manifest["files"].get(rel)
        if info is None:
            raise StorageError(f"{join(self.url, rel)}: not listed in the manifest")
        data = read_bytes(join(self.url, rel))
        if sha256_bytes(data) != info["sha256"]:
            raise StorageError(f"{join(self.url, rel)}: checksum mismatch (SHA-256 differs from the manifest)")
        return data

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def read_table(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(pa.BufferReader(self.read_bytes(rel)), columns=columns)

    def fetch(self, rel: str, local_path: str) -> str:
        """Copy a verified file to ``local_path`` (e.g. for libraries that read from disk)."""
        info = self.manifest["files"].get(rel)
        if info is None:
            raise StorageError(f"{join(self.url, rel)}: not listed in the manifest")
        os.makedirs(os.path.dirname(local_path) or ".", exist_ok=True)
        tmp = f"{local_path}.tmp-{os.getpid()}"

        def copy() -> str:        # in blocks: a part file can be larger than this process's memory
            digest = hashlib.sha256()
            with self.fs.open(posixpath.join(self.root, rel), "rb") as src, open(tmp, "wb") as dst:
                for block in iter(lambda: src.read(1 << 24), b""):
                    digest.update(block)
                    dst.write(block)
            return digest.hexdigest()

        try:
            sha = retrying(f"read {join(self.url, rel)}", copy)
        except FileNotFoundError as exc:
            raise StorageError(f"{join(self.url, rel)}: not found") from exc
        if sha != info["sha256"]:
            os.remove(tmp)
            raise StorageError(f"{join(self.url, rel)}: checksum mismatch (SHA-256 differs from the manifest)")
        os.replace(tmp, local_path)
        return local_path


def published(url: str, kind: str) -> bool:
    """Whether a complete artifact of ``kind`` is at ``url`` (manifest present and readable)."""
    try:
        Artifact(url, kind=kind)
        return True
    except StorageError:
        return False
