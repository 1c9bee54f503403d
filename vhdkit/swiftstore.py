"""An OpenStack Swift backend for :class:`vhdkit.store.ObjectStore` (python-swiftclient).

Selected by configuration (see :func:`open_configured_store`)::

    VHDKIT_STORE=swift+http://127.0.0.1:8080     # the proxy
    VHDKIT_SWIFT_AUTH_URL=http://127.0.0.1:8080/auth/v1.0
    VHDKIT_SWIFT_USER=admin:admin  VHDKIT_SWIFT_KEY=...

One vhdkit account is one Swift account, ``AUTH_<account>``: the configured
user must be a reseller admin (tempauth ``.reseller_admin``), as an image
service's own service user is.  Without ``VHDKIT_STORE`` the embedded
directory store is used.

Semantics follow the directory backend exactly: ``head``/``get`` see the raw
object, never what a large-object middleware assembles (they ask with
``multipart-manifest=get``), so a DLO manifest is the zero-byte object it is,
and ``x-object-manifest`` in ``metadata`` is the real ``X-Object-Manifest``
header, the one that makes ``swift download`` stitch the segments together.
Other metadata keys are stored as ``X-Object-Meta-*``.  A body shorter than its
Content-Length (Swift's answer when a segment's data is gone) is an
IntegrityError, never a silently short stream.

Puts stream in bounded memory (chunked transfer).  A put whose stream can seek
is retried on transient errors (connection errors, 5xx) from its start
position; a put that fails for good leaves no object behind (Swift writes an
object atomically).
"""
from __future__ import annotations

import hashlib
import io
import os
import time
from pathlib import Path
from typing import BinaryIO, Dict, List, Optional
from urllib.parse import urlsplit

from .errors import (ConflictError, IntegrityError, InvalidInputError, NotFoundError, StorageError,
                     UnauthorizedError)
from .store import (LocalStore, ObjectInfo, ObjectReader, ObjectStore, validate_container_name,
                    validate_metadata, validate_object_name)

__all__ = ["SwiftStore", "SwiftConfig", "open_configured_store"]

_CHUNK = 1 << 20
_MANIFEST_KEY = "x-object-manifest"
_RAW = "multipart-manifest=get"


class SwiftConfig:
    """Connection settings, from the environment by default."""

    def __init__(self, auth_url: str, user: str, key: str, *, retries: int = 3, timeout: float = 60.0):
        self.auth_url, self.user, self.key = auth_url, user, key
        self.retries, self.timeout = retries, timeout

    @classmethod
    def from_env(cls, env: Optional[Dict[str, str]] = None) -> "SwiftConfig":
        env = dict(os.environ if env is None else env)
        store = env.get("VHDKIT_STORE", "")
        auth = env.get("VHDKIT_SWIFT_AUTH_URL")
        if not auth:
            if not store.startswith("swift+"):
                raise InvalidInputError("VHDKIT_STORE is not a swift+http(s):// URL and "
                                        "VHDKIT_SWIFT_AUTH_URL is not set")
            auth = store[len("swift+"):].rstrip("/") + "/auth/v1.0"
        user, key = env.get("VHDKIT_SWIFT_USER"), env.get("VHDKIT_SWIFT_KEY")
        if not user or not key:
            raise InvalidInputError("set VHDKIT_SWIFT_USER and VHDKIT_SWIFT_KEY for the Swift store")
        return cls(auth, user, key)


_token_cache: Dict[tuple, tuple] = {}


def _client():
    try:
        import swiftclient  # type: ignore
    except ImportError as e:  # pragma: no cover - dependency of the package
        raise StorageError("python-swiftclient is not installed") from e
    return swiftclient


def _err(e: Exception, what: str):
    sc = _client()
    if isinstance(e, sc.ClientException):
        st = e.http_status
        if st == 404:
            return NotFoundError(f"{what}: not found")
        if st == 409:
            return ConflictError(f"{what}: conflict ({e.http_reason})")
        if st in (401, 403):
            return UnauthorizedError(f"{what}: Swift refused the credentials ({st})")
        if st == 422:
            return IntegrityError(f"{what}: Swift says the data does not match its ETag")
        return StorageError(f"{what}: Swift answered {st} {e.http_reason or ''}".strip())
    return StorageError(f"{what}: {type(e).__name__}: {e}")


def _transient(e: Exception) -> bool:
    sc = _client()
    if isinstance(e, sc.ClientException):
        return e.http_status is None or e.http_status >= 500 or e.http_status == 408
    return isinstance(e, (OSError, ConnectionError))


class _SwiftReader(ObjectReader):
    def __init__(self, info: ObjectInfo, body):
        self.info = info
        self._it = iter(body)
        self._buf = b""
        self._left = info.size

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self._left <= 0:
            return 0
        if not self._buf:
            try:
                self._buf = next(self._it)
            except StopIteration:
                raise IntegrityError(f"object {self.info.container}/{self.info.name}: Swift sent "
                                     f"{self.info.size - self._left} of {self.info.size} bytes") from None
            except Exception as e:  # noqa: BLE001 - a broken connection mid-body
                raise IntegrityError(f"object {self.info.container}/{self.info.name}: the download broke "
                                     f"after {self.info.size - self._left} of {self.info.size} bytes: {e}") from None
        n = min(len(b), len(self._buf), self._left)
        memoryview(b)[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        self._left -= n
        return n

    def close(self) -> None:
        if not self.closed:
            close = getattr(self._it, "close", None)
            if close is not None:
                close()
            super().close()


class SwiftStore(ObjectStore):
    """Containers and objects of one vhdkit account, kept in Swift account ``AUTH_<account>``."""

    def __init__(self, config: SwiftConfig, account: str = "default"):
        self.config = config
        self.account = validate_container_name(account, "account name")
        self._conn = None

    # -- connection
    def _connection(self):
        if self._conn is None:
            sc = _client()
            key = (self.config.auth_url, self.config.user)
            cached = _token_cache.get(key)
            if cached is None or cached[2] < time.monotonic():
                auth = sc.Connection(authurl=self.config.auth_url, user=self.config.user, key=self.config.key,
                                     retries=self.config.retries, timeout=self.config.timeout)
                try:
                    url, token = auth.get_auth()
                except Exception as e:  # noqa: BLE001
                    raise _err(e, f"authenticate at {self.config.auth_url}") from None
                cached = (url, token, time.monotonic() + 3000)
                _token_cache[key] = cached
            base = cached[0].rsplit("/", 1)[0]
            self._conn = sc.Connection(preauthurl=f"{base}/AUTH_{self.account}", preauthtoken=cached[1],
                                       retries=self.config.retries, timeout=self.config.timeout)
        return self._conn

    @property
    def storage_url(self) -> str:
        return self._connection().url

    # -- containers
    def create_container(self, container: str) -> None:
        validate_container_name(container)
        try:
            self._connection().put_container(container)
        except Exception as e:  # noqa: BLE001
            raise _err(e, f"create container {container!r}") from None

    def delete_container(self, container: str) -> None:
        validate_container_name(container)
        try:
            self._connection().delete_container(container)
        except Exception as e:  # noqa: BLE001
            raise _err(e, f"delete container {container!r}") from None

    def list_containers(self) -> List[str]:
        try:
            _, rows = self._connection().get_account(full_listing=True)
        except Exception as e:  # noqa: BLE001
            raise _err(e, f"list containers of account {self.account!r}") from None
        return sorted((r["name"] for r in rows), key=lambda n: n.encode("utf-8"))

    # -- objects
    def _info(self, container: str, name: str, h: Dict[str, str]) -> ObjectInfo:
        meta = {k[len("x-object-meta-"):]: v for k, v in h.items() if k.startswith("x-object-meta-")}
        if _MANIFEST_KEY in h:
            meta[_MANIFEST_KEY] = h[_MANIFEST_KEY]
        lm = h.get("x-timestamp")
        return ObjectInfo(container, name, int(h.get("content-length", 0)), h.get("etag", "").strip('"'),
                          float(lm) if lm else 0.0, h.get("content-type", "application/octet-stream"), meta)

    def head(self, container: str, name: str) -> ObjectInfo:
        validate_container_name(container)
        validate_object_name(name)
        try:
            h = self._connection().head_object(container, name, query_string=_RAW)
        except Exception as e:  # noqa: BLE001
            raise _err(e, f"object {container}/{name}") from None
        return self._info(container, name, h)

    def get(self, container: str, name: str) -> ObjectReader:
        validate_container_name(container)
        validate_object_name(name)
        try:
            h, body = self._connection().get_object(container, name, resp_chunk_size=_CHUNK, query_string=_RAW)
        except Exception as e:  # noqa: BLE001
            raise _err(e, f"object {container}/{name}") from None
        return _SwiftReader(self._info(container, name, h), body)

    def put(self, container: str, name: str, stream: BinaryIO, *, metadata: Optional[Dict[str, str]] = None,
            content_type: Optional[str] = None, etag: Optional[str] = None,
            size: Optional[int] = None, durable: bool = True) -> ObjectInfo:
        """``durable`` is accepted for the interface: a Swift PUT answers only
        once the object is on disk, so every put is durable."""
        validate_container_name(container)
        validate_object_name(name)
        meta = validate_metadata(metadata)
        headers = {}
        for k, v in meta.items():
            if k == _MANIFEST_KEY:
                headers["X-Object-Manifest"] = v
            else:
                headers[f"X-Object-Meta-{k}"] = v
        try:
            start = stream.tell() if stream.seekable() else None  # type: ignore[union-attr]
        except (AttributeError, OSError, ValueError):
            start = None
        attempts = self.config.retries + 1 if start is not None else 1
        for attempt in range(attempts):
            counter = _Counting(stream)
            try:
                got = self._connection().put_object(
                    container, name, contents=counter, chunk_size=_CHUNK, content_type=content_type,
                    headers=headers, etag=etag.strip('"') if etag else None)
            except Exception as e:  # noqa: BLE001
                if attempt + 1 < attempts and _transient(e):
                    stream.seek(start)  # type: ignore[arg-type,union-attr]
                    time.sleep(0.2 * (attempt + 1))
                    continue
                raise _err(e, f"put {container}/{name}") from None
            break
        digest = counter.md5.hexdigest()
        if (got or "").strip('"') != digest:
            raise IntegrityError(f"put {container}/{name}: Swift stored ETag {got}, we sent md5 {digest}")
        if size is not None and counter.n != size:
            self.delete(container, name)
            raise IntegrityError(f"put {container}/{name}: got {counter.n} bytes, expected {size}")
        return ObjectInfo(container, name, counter.n, digest, time.time(),
                          content_type or "application/octet-stream", meta)

    def delete(self, container: str, name: str) -> None:
        validate_container_name(container)
        validate_object_name(name)
        try:
            self._connection().delete_object(container, name, query_string=_RAW)
        except Exception as e:  # noqa: BLE001
            raise _err(e, f"delete {container}/{name}") from None

    def list(self, container: str, prefix: str = "", *, marker: Optional[str] = None,
             limit: Optional[int] = None) -> List[ObjectInfo]:
        validate_container_name(container)
        try:
            _, rows = self._connection().get_container(container, prefix=prefix or None, marker=marker or "",
                                                       full_listing=limit is None, limit=limit)
        except Exception as e:  # noqa: BLE001
            raise _err(e, f"list container {container!r}") from None
        out = []
        for r in rows:
            if "subdir" in r:
                continue
            try:
                out.append(self.head(container, r["name"]))
            except NotFoundError:  # deleted while listing
                continue
        return out


class _Counting:
    """Reads through ``stream``, counting bytes and hashing them (what we sent).
    Deliberately not seekable: retries are ours (see SwiftStore.put), so
    swiftclient never re-sends a half-consumed stream."""

    def __init__(self, stream: BinaryIO):
        self._s = stream
        self.n = 0
        self.md5 = hashlib.md5()

    def read(self, size: int = -1) -> bytes:
        data = self._s.read(_CHUNK if size is None or size < 0 else size)
        if data:
            self.n += len(data)
            self.md5.update(data)
        return data


def open_configured_store(account: str, home: Optional[os.PathLike | str] = None,
                          env: Optional[Dict[str, str]] = None) -> ObjectStore:
    """The store the configuration names: Swift when ``VHDKIT_STORE`` is a
    ``swift+http(s)://`` URL, else the directory store under ``home/objects``."""
    e = os.environ if env is None else env
    spec = e.get("VHDKIT_STORE", "")
    if spec.startswith("swift+"):
        u = urlsplit(spec[len("swift+"):])
        if u.scheme not in ("http", "https") or not u.netloc:
            raise InvalidInputError(f"VHDKIT_STORE {spec!r} is not swift+http(s)://HOST[:PORT]")
        return SwiftStore(SwiftConfig.from_env(dict(e)), account)
    if spec and not spec.startswith(("dir:", "file:")):
        raise InvalidInputError(f"VHDKIT_STORE {spec!r}: expected swift+http(s)://… or dir:PATH")
    root = Path(spec.split(":", 1)[1]) if spec else Path(home if home is not None else
                                                          os.environ.get("VHDKIT_HOME", ".vhdkit")) / "objects"
    return LocalStore(root, account)
