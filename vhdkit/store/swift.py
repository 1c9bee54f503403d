"""An OpenStack Swift backend for :class:`vhdkit.store.base.ObjectStore` (python-swiftclient).

Selected by configuration (see :func:`vhdkit.store.open_configured_store`)::

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
is retried on transient errors (connection errors, 5xx, 408) from its start
position, at most ``retries`` times; a put that fails for good leaves no
object behind (Swift writes an object atomically).  With ``size`` given, a
stream that turns out longer or shorter aborts the transfer, so Swift keeps
the older object.  ``sync`` HEADs the objects (a Swift put is durable once
acknowledged).  Connections are per thread.

Parallel segment uploads.  ``put(..., durable=False)`` (what
:func:`vhdkit.pack.segments.split` uses for each segment) runs in the background
when ``parallel`` > 1 (the ``swift_parallel`` setting): the caller's
thread reads the segment once, computing its md5, into a spool file (an
unnamed temporary file in ``spool_dir`` (``swift_spool_dir``, default the
system temp dir): it vanishes when closed or when the process dies; the
first 4 MiB stay in memory), and a pool of ``parallel`` threads sends the
spools, each retried from its first byte on transient errors whatever the
input was (the spool can always seek; Swift is also handed the md5 as the
ETag, so it refuses a corrupted body).  Why a spool for every input, even a
seekable file: the caller must read the segment anyway, in order (the
whole-stream sha256 of the sidecar is computed there), and a view of a shared
input file cannot be read by two threads at once.  Bounds, per uploading
thread: at most ``parallel`` segments in flight plus the one being spooled,
so at most ``(parallel + 1) x 4 MiB`` of memory for spools and
``(parallel + 1) x segment size`` of temporary disk (800 MiB with 200 MiB
segments and the default 3).  A background failure is raised by the same
thread's next ``put`` or by ``sync``; ``sync`` then deletes every object of
its names that was put in the background (so no segment of a failed split is
left), and ``delete`` of a name still in flight waits for that upload first
(no orphan appears after a cleanup).  Each thread sees only the failures of
its own puts (several uploads may share one store).
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import os
import tempfile
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import BinaryIO, Dict, List, Mapping, Optional, Sequence, Tuple

from ..errors import (ConflictError, IntegrityError, InvalidInputError, NotFoundError, StorageError,
                      UnavailableError, VhdkitError, from_oserror)
from .base import (ObjectInfo, ObjectReader, ObjectStore, validate_container_name, validate_metadata,
                   validate_object_name)

__all__ = ["SwiftStore", "SwiftConfig"]

_CHUNK = 1 << 20
_SPOOL_MEM = 4 << 20  # a spool's first bytes stay in memory; the rest goes to its temporary file
MAX_PARALLEL = 16
_MANIFEST_KEY = "x-object-manifest"
_RAW = "multipart-manifest=get"


class SwiftConfig:
    """Connection settings, from the environment by default."""

    def __init__(self, auth_url: str, user: str, key: str, *, retries: int = 3, timeout: float = 60.0,
                 parallel: int = 3, spool_dir: Optional[str] = None):
        self.auth_url, self.user, self.key = auth_url, user, key
        self.retries, self.timeout = retries, timeout
        if not 1 <= parallel <= MAX_PARALLEL:
            raise InvalidInputError(f"parallel Swift uploads must be 1..{MAX_PARALLEL}, not {parallel}")
        self.parallel, self.spool_dir = parallel, spool_dir

    @classmethod
    def from_config(cls, cfg, blobs: bool = False) -> "SwiftConfig":
        """The connection ``cfg`` (a :class:`vhdkit.config.Config`) names: for
        customer containers (``store``), or for image data (``blob_store``,
        whose ``swift+`` URL, if any, names the proxy)."""
        proxy = cfg.blob_store[len("swift+"):] if blobs and cfg.blob_store.startswith("swift+") else None
        auth = cfg.swift_auth(proxy)
        if not cfg.swift_user or not cfg.swift_key:
            raise InvalidInputError("set VHDKIT_SWIFT_USER and VHDKIT_SWIFT_KEY for the Swift store")
        return cls(auth, cfg.swift_user, cfg.swift_key, parallel=cfg.swift_parallel,
                   spool_dir=cfg.swift_spool_dir)

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> "SwiftConfig":
        """:meth:`from_config` of the settings of ``env`` (default: this process's)."""
        from ..config import load

        return cls.from_config(load(env=env))


# (auth URL, user, fingerprint of the key) -> (storage URL, token, monotonic expiry).
# The key's fingerprint is part of the cache key, so a token is reused only by
# the credentials that obtained it: a wrong or rotated key authenticates anew.
# The fingerprint is an HMAC under a per-process random salt, so the cache does
# not hold the key, nor an unsalted hash of it.
# A token is reused for TOKEN_REUSE_SECONDS at most (below Keystone's default
# lifetime of an hour); one Swift refuses earlier (revoked, expired, an auth
# service restarted) is replaced at once: _connection's get_auth.
_token_cache: Dict[Tuple[str, str, bytes], Tuple[str, str, float]] = {}
_KEY_SALT = os.urandom(32)
TOKEN_REUSE_SECONDS = 3000


def _token_cache_key(config: "SwiftConfig") -> Tuple[str, str, bytes]:
    fingerprint = hmac.new(_KEY_SALT, config.key.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
    return config.auth_url, config.user, fingerprint


def _client():
    try:
        import swiftclient  # type: ignore
    except ImportError as e:  # pragma: no cover - dependency of the package
        raise StorageError("python-swiftclient is not installed") from e
    return swiftclient


@functools.lru_cache(maxsize=None)
def _account_connection_class():
    """swiftclient's Connection, whose answer to a 401 (it calls get_auth
    once, then retries the request) renews the process's token for its store
    and keeps that store's account URL."""
    class AccountConnection(_client().Connection):
        store: "SwiftStore"

        def get_auth(self):
            self.url, self.token = self.store._token(renew=True)
            return self.url, self.token

    return AccountConnection


def _err(e: Exception, what: str):
    if isinstance(e, VhdkitError):    # already translated (re-authentication inside a request)
        return e
    sc = _client()
    if isinstance(e, sc.ClientException):
        st = e.http_status
        if st == 404:
            return NotFoundError(f"{what}: not found")
        if st == 409:
            return ConflictError(f"{what}: conflict ({e.http_reason})")
        if st in (401, 403):   # the service's own credentials: its configuration is wrong, not the customer's
            return UnavailableError(f"{what}: Swift refused the service's credentials ({st}); "
                                    f"check VHDKIT_SWIFT_USER and VHDKIT_SWIFT_KEY")
        if st == 422:
            return IntegrityError(f"{what}: Swift says the data does not match its ETag")
        if st is None or st >= 500:   # no answer, or Swift failed: transient, the caller may retry
            return UnavailableError(f"{what}: Swift: {e.msg} {st or ''} {e.http_reason or ''}".strip())
        return StorageError(f"{what}: Swift answered {st} {e.http_reason or ''}".strip())
    if isinstance(e, OSError) and e.errno is not None:  # a local spool file, or the connection
        return from_oserror(e, what, service=True)
    if isinstance(e, OSError):        # the connection (requests' errors are OSErrors without errno)
        return UnavailableError(f"{what}: Swift: {type(e).__name__}: {e}")
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
        self._local = threading.local()  # a swiftclient Connection is not thread-safe: one per thread
        self._lock = threading.Lock()
        self._pool: Optional[ThreadPoolExecutor] = None
        # background puts not yet synced or deleted: (container, name) -> (owner thread, future)
        self._pending: Dict[Tuple[str, str], Tuple[int, Future]] = {}
        # per owner thread: its background puts not yet known to have succeeded
        # (what back-pressure and failure reporting look at; a long upload's
        # finished segments drop out, so each put looks at a few futures only)
        self._open: Dict[int, set] = {}

    # -- connection
    def _token(self, *, renew: bool = False) -> Tuple[str, str]:
        """(this account's storage URL, a token): the process's cached token
        for these credentials, or a new one when there is none, it is old, or
        ``renew`` (Swift refused it)."""
        sc = _client()
        key = _token_cache_key(self.config)
        cached = _token_cache.get(key)
        if renew or cached is None or cached[2] < time.monotonic():
            auth = sc.Connection(authurl=self.config.auth_url, user=self.config.user, key=self.config.key,
                                 retries=self.config.retries, timeout=self.config.timeout)
            try:
                url, token = auth.get_auth()
            except Exception as e:  # noqa: BLE001
                raise _err(e, f"authenticate at {self.config.auth_url}") from None
            cached = (url, token, time.monotonic() + TOKEN_REUSE_SECONDS)
            _token_cache[key] = cached
        return f"{cached[0].rsplit('/', 1)[0]}/AUTH_{self.account}", cached[1]

    def _connection(self):
        if getattr(self._local, "conn", None) is None:
            url, token = self._token()
            # The credentials are given only so swiftclient retries after a
            # 401 (it re-authenticates when it holds them); the connection's
            # get_auth is the only place they are used.
            conn = _account_connection_class()(preauthurl=url, preauthtoken=token, authurl=self.config.auth_url,
                                               user=self.config.user, key=self.config.key,
                                               retries=self.config.retries, timeout=self.config.timeout)
            conn.store = self
            self._local.conn = conn
        return self._local.conn

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
        """A Swift PUT answers only once the object is on disk, so a put with
        ``durable=True`` is durable when it returns.  ``durable=False`` with
        ``parallel`` > 1 spools the stream and uploads it in the background
        (module doc); :meth:`sync` waits for it."""
        validate_container_name(container)
        validate_object_name(name)
        meta = validate_metadata(metadata)
        headers = {}
        for k, v in meta.items():
            if k == _MANIFEST_KEY:
                headers["X-Object-Manifest"] = v
            else:
                headers[f"X-Object-Meta-{k}"] = v
        if not durable and self.config.parallel > 1:
            return self._put_background(container, name, stream, headers, meta, content_type, etag, size)
        self._settle(container, name)  # an older background put of this name must not land after this one
        n, digest = self._send(container, name, stream, headers, content_type, etag, size)
        return ObjectInfo(container, name, n, digest, time.time(), content_type or "application/octet-stream", meta)

    def _send(self, container: str, name: str, stream: BinaryIO, headers: Dict[str, str],
              content_type: Optional[str], etag: Optional[str], size: Optional[int],
              known_md5: Optional[str] = None) -> Tuple[int, str]:
        """One PUT with our retries; returns (bytes sent, md5).  With ``known_md5``
        (a spool we wrote and hashed) the bytes are not hashed again: Swift checks
        them against that ETag."""
        try:
            start = stream.tell() if stream.seekable() else None  # type: ignore[union-attr]
        except (AttributeError, OSError, ValueError):
            start = None
        attempts = self.config.retries + 1 if start is not None else 1
        send_etag = known_md5 or (etag.strip('"') if etag else None)
        for attempt in range(attempts):
            counter = _Counting(stream, size, hash_md5=known_md5 is None)
            resp: Dict[str, object] = {}
            try:
                got = self._connection().put_object(
                    container, name, contents=counter, chunk_size=_CHUNK, content_type=content_type,
                    headers=headers, etag=send_etag, response_dict=resp)
            except _SizeMismatch as e:  # the upload was aborted: Swift stored nothing
                raise IntegrityError(f"put {container}/{name}: {e}") from None
            except Exception as e:  # noqa: BLE001
                if isinstance(e.__context__, _SizeMismatch):  # swiftclient wrapped it
                    raise IntegrityError(f"put {container}/{name}: {e.__context__}") from None
                if attempt + 1 < attempts and _transient(e):
                    stream.seek(start)  # type: ignore[arg-type,union-attr]
                    time.sleep(0.2 * (attempt + 1))
                    continue
                raise _err(_real_cause(e, resp), f"put {container}/{name}") from None
            break
        digest = known_md5 or counter.md5.hexdigest()
        if (got or "").strip('"') != digest:
            raise IntegrityError(f"put {container}/{name}: Swift stored ETag {got}, we sent md5 {digest}")
        return counter.n, digest

    # -- background (parallel) puts
    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.config.parallel, thread_name_prefix="vhdkit-swift-put")
            return self._pool

    def _running_or_raise(self, owner: int) -> List[Future]:
        """This thread's background puts still running; raises the error of one
        that failed (it stays known until a sync or delete of its name)."""
        with self._lock:
            mine = list(self._open.get(owner, ()))
        running = []
        for f in mine:
            if not f.done():
                running.append(f)
            elif f.exception() is not None:
                raise f.exception()  # type: ignore[misc]
            else:
                with self._lock:
                    self._open.get(owner, set()).discard(f)
        return running

    def _put_background(self, container: str, name: str, stream: BinaryIO, headers: Dict[str, str],
                        meta: Dict[str, str], content_type: Optional[str], etag: Optional[str],
                        size: Optional[int]) -> ObjectInfo:
        owner = threading.get_ident()
        while True:  # back-pressure: at most ``parallel`` of this thread's puts in flight
            running = self._running_or_raise(owner)
            if len(running) < self.config.parallel:
                break
            wait(running, return_when=FIRST_COMPLETED)
        self._settle(container, name)
        spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_MEM, dir=self.config.spool_dir)
        try:
            md5, n = hashlib.md5(), 0
            while True:
                data = stream.read(_CHUNK)
                if not data:
                    break
                n += len(data)
                if size is not None and n > size:
                    raise IntegrityError(f"put {container}/{name}: got more than {size} bytes")
                md5.update(data)
                spool.write(data)
            digest = md5.hexdigest()
            if size is not None and n != size:
                raise IntegrityError(f"put {container}/{name}: got {n} bytes, expected {size}")
            if etag is not None and etag.strip('"').lower() != digest:
                raise IntegrityError(f"put {container}/{name}: md5 {digest} does not match the given etag {etag}")
            spool.seek(0)
            fut = self._executor().submit(self._send_spool, container, name, spool, headers, content_type, n, digest)
        except BaseException:
            spool.close()
            raise
        with self._lock:
            self._pending[(container, name)] = (owner, fut)
            self._open.setdefault(owner, set()).add(fut)
        return ObjectInfo(container, name, n, digest, time.time(), content_type or "application/octet-stream", meta)

    def _send_spool(self, container, name, spool, headers, content_type, n, digest) -> None:
        try:
            self._send(container, name, spool, headers, content_type, None, n, known_md5=digest)
        finally:
            spool.close()

    def _settle(self, container: str, name: str) -> Optional[BaseException]:
        """Wait for a background put of ``container/name``, forget it, return its error."""
        with self._lock:
            entry = self._pending.pop((container, name), None)
            if entry is not None:
                mine = self._open.get(entry[0])
                if mine is not None:
                    mine.discard(entry[1])
                    if not mine:
                        del self._open[entry[0]]
        if entry is None:
            return None
        try:
            entry[1].result()
        except BaseException as e:  # noqa: BLE001 - the caller decides
            return e
        return None

    def sync(self, container: str, names: Sequence[str]) -> None:
        """Wait for the background puts of ``names``.  If any failed, every one of
        ``names`` that was put in the background is deleted and the first error
        raised.  Like the directory store, a name that is not there is
        NotFoundError (one HEAD each: the objects are really there before
        anything points at them)."""
        background, first = [], None
        for name in names:
            if (container, name) in self._pending:
                background.append(name)
                err = self._settle(container, name)
                first = first or err
        if first is not None:
            for name in background:
                try:
                    self.delete(container, name)
                except NotFoundError:
                    pass
            raise first
        for name in names:
            self.head(container, name)

    def delete(self, container: str, name: str) -> None:
        validate_container_name(container)
        validate_object_name(name)
        self._settle(container, name)  # a put still in flight would otherwise land after the delete
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


    def listing(self, container: str, prefix: str = "") -> List[Dict[str, object]]:
        """The container listing as Swift gives it, one GET per 10,000 names and no
        HEAD per object: ``name``, ``bytes``, ``etag`` and ``last_modified``
        (seconds since the epoch), in name order."""
        from datetime import datetime, timezone

        validate_container_name(container)
        try:
            _, rows = self._connection().get_container(container, prefix=prefix or None, full_listing=True)
        except Exception as e:  # noqa: BLE001
            raise _err(e, f"list container {container!r}") from None
        out: List[Dict[str, object]] = []
        for r in rows:
            if "subdir" in r:
                continue
            lm = datetime.fromisoformat(r["last_modified"]).replace(tzinfo=timezone.utc).timestamp()
            out.append({"name": r["name"], "bytes": int(r["bytes"]), "etag": r.get("hash", ""), "last_modified": lm})
        return out


def _real_cause(e: Exception, resp: Dict[str, object]) -> Exception:
    """swiftclient answers a failed put of a stream it cannot rewind with its own
    "no ability to reset contents" error; the response it saw says what really failed."""
    sc = _client()
    if isinstance(e, sc.ClientException) and e.http_status is None and isinstance(resp.get("status"), int):
        return sc.ClientException(str(e), http_status=resp["status"], http_reason=str(resp.get("reason") or ""))
    return e


class _SizeMismatch(Exception):
    pass


class _Counting:
    """Reads through ``stream``, counting bytes and hashing them (what we sent).
    Deliberately not seekable: retries are ours (see SwiftStore.put), so
    swiftclient never re-sends a half-consumed stream.  With ``expect`` set, a
    stream that turns out longer or shorter raises before the chunked body is
    finished, so Swift aborts the upload and keeps any older object."""

    def __init__(self, stream: BinaryIO, expect: Optional[int] = None, *, hash_md5: bool = True):
        self._s = stream
        self._expect = expect
        self.n = 0
        self.md5 = hashlib.md5()
        self._hash = hash_md5

    def read(self, size: int = -1) -> bytes:
        data = self._s.read(_CHUNK if size is None or size < 0 else size)
        if data:
            self.n += len(data)
            if self._hash:
                self.md5.update(data)
        if self._expect is not None and (self.n > self._expect or (not data and self.n != self._expect)):
            raise _SizeMismatch(f"got {'more than ' if data else ''}{self.n} bytes, expected {self._expect}")
        return data
