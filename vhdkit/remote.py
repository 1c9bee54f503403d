"""Workers and API servers on other hosts: the registry reached through the registry host.

The SQLite registry lives on one host (WAL needs every process that opens it
on that host).  A worker elsewhere (``vhdkit worker --api URL``) and an API
server elsewhere (``vhdkit serve --registry URL``) use :class:`RemoteRegistry`,
which offers the registry calls the pipeline makes (claim, heartbeat, finish,
show_task, show_image, create_image, delete_image, open_data, upload_file)
and those the Images v2 API makes (list, update, actions, tags, members,
tasks, and ``upload``: the image held with a lease while this host streams
the data into Swift) over the registry host's internal routes
(:mod:`vhdkit.api.internal`, ``X-Service-Token`` = ``VHDKIT_SERVICE_TOKEN``).
Bytes never pass through the API host:

- customer containers are read and written in Swift directly (``VHDKIT_STORE``);
- an export reads the image's data from Swift (the API names the large
  object; the worker fetches a verified copy into its own scratch directory,
  removed after the task);
- an import stores the image's data in Swift itself (``VHDKIT_BLOB_STORE=swift``,
  same account and container as the API host), hashing it on the way (md5,
  sha512; the sidecar's per-segment md5 and sha256), then registers it
  (``register_blob``: blob name, size, checksums, virtual_size); the API host
  checks the sidecar's size before the image turns active.  Data of a
  remote upload that died before it was registered has no registry row: the
  deep cleanup (``vhdkit cleanup``) removes it once older than its grace.

Leases work as for local workers: a remote worker that dies stops
heartbeating, its lease runs out on the API host and another worker retries
the task.  Fencing too: inside :meth:`RemoteRegistry.fenced` every call
carries the attempt's lease, and the registry host makes the call's writes
under it (refused once a newer attempt holds the task).
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import uuid
from typing import Any, BinaryIO, Callable, Dict, Iterator, List, Optional, Sequence

from .errors import (ConflictError, ForbiddenError, InvalidInputError, NotFoundError, QuotaError, StorageError,
                     UnauthorizedError, VhdkitError)
from .registry import Caller
from .registry.models import Image, ImageList, Member, Task, TaskList

__all__ = ["RemoteRegistry", "RemoteWorker", "TOKEN_ENV"]

TOKEN_ENV = "VHDKIT_SERVICE_TOKEN"
log = logging.getLogger("vhdkit.remote")
_STATUS = {400: InvalidInputError, 401: UnauthorizedError, 403: ForbiddenError, 404: NotFoundError,
           409: ConflictError, 413: QuotaError}


def _caller(c: Caller) -> dict:
    return {"account": c.account, "roles": sorted(c.roles), "service": c.is_service}


def _remote_error(op: str, r) -> VhdkitError:
    """The registry host's error as the exception it raised there (same type,
    code and message), so a forwarding API host answers as that host would;
    anything else (its own refusal of the call, a proxy's page) by status."""
    from . import errors as _errors

    try:
        err = r.json()["error"]
        msg = err["message"]
    except (ValueError, KeyError, TypeError):
        err, msg = {}, r.text[:300]
    cls = getattr(_errors, str(err.get("type")), None) if isinstance(err, dict) else None
    if r.status_code >= 500:
        log.warning("registry host, %s: HTTP %s: %s", op, r.status_code, msg)
        return _Unreachable(f"the registry host failed (HTTP {r.status_code}); try again later")
    if isinstance(cls, type) and issubclass(cls, VhdkitError) and isinstance(err.get("detail"), str):
        kind = err.get("kind")
        return cls(err["detail"], code=kind if isinstance(kind, str) else None)
    return _STATUS.get(r.status_code, StorageError)(f"API host {op}: {msg}")


class _Hashing:
    """Reads through a file, feeding md5 and sha512 (the registry's checksums)."""

    def __init__(self, f) -> None:
        self.f, self.n = f, 0
        self.md5, self.sha512 = hashlib.md5(), hashlib.sha512()

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        if data:
            self.n += len(data)
            self.md5.update(data)
            self.sha512.update(data)
        return data


class RemoteData:
    """What :meth:`RemoteRegistry.open_data` returns: ``size`` and a lazily
    fetched, verified local ``path`` (in the worker's scratch directory)."""

    def __init__(self, reg: "RemoteRegistry", rel: str, size: int, checksum: Optional[str], image: Image):
        self._reg, self.rel, self.size, self.checksum, self.image = reg, rel, size, checksum, image
        self._path: Optional[str] = None

    def iter(self, start: int = 0, end: Optional[int] = None, chunk: int = 1 << 20) -> Iterator[bytes]:
        """Bytes [start, end) streamed from Swift (segment by segment, Range requests)."""
        return self._reg.blobs().iter_range(self.rel, start, self.size if end is None else end, chunk)

    @property
    def path(self) -> str:
        if self._path is None:
            blobs = self._reg.blobs()
            p = os.path.join(self._reg.scratch, f"{uuid.uuid4().hex}-{blobs.name(self.rel)}")
            self._reg._fetched.append(p)
            blobs.fetch(self.rel, p)  # every segment's md5 and the whole sha256 checked
            if os.path.getsize(p) != self.size:
                raise StorageError(f"image data {self.rel}: {os.path.getsize(p)} bytes, the registry says {self.size}")
            self._path = p
        return self._path


class RemoteRegistry:
    """The registry calls of a worker, over the API host's internal routes."""

    def __init__(self, api_url: str, token: Optional[str] = None, *, scratch: str, timeout: float = 60.0,
                 transport=None, upload_lease: float = 60.0) -> None:
        import httpx

        token = token if token is not None else os.environ.get(TOKEN_ENV, "")
        if not token:
            raise InvalidInputError(f"a remote worker needs the service token in {TOKEN_ENV}")
        if not api_url.startswith(("http://", "https://")):
            raise InvalidInputError(f"--api {api_url!r} is not an http(s):// URL")
        self.api_url = api_url.rstrip("/")
        self.scratch = scratch
        self._http = httpx.Client(base_url=self.api_url, timeout=timeout, transport=transport,
                                  headers={"X-Service-Token": token, "Accept": "application/json"})
        self._blobs = None
        self._upload_store = None
        self._fetched: List[str] = []
        self.upload_lease = upload_lease
        self._local = threading.local()

    # -- plumbing
    def _op(self, op: str, **body: Any) -> dict:
        import httpx

        lease = getattr(self._local, "lease", None)
        if lease is not None:
            body["lease"] = list(lease)
        try:
            r = self._http.post(f"/internal/v1/{op}", json=body)
        except httpx.HTTPError as e:
            log.warning("registry host %s, %s: %s: %s", self.api_url, op, type(e).__name__, e)
            raise _Unreachable(f"the registry host did not answer ({type(e).__name__}); try again later") from None
        if r.status_code == 200:
            try:
                body = r.json()
            except ValueError:
                body = None
            if not isinstance(body, dict):
                raise StorageError(f"API host {op}: the answer is not a JSON object")
            return body
        raise _remote_error(op, r)

    def blobs(self):
        """The image-data container in Swift (the worker's VHDKIT_BLOB_STORE settings)."""
        if self._blobs is None:
            from .config import load
            from .registry.blobs import SwiftBlobs

            cfg = load()
            if not cfg.blobs_in_swift():
                raise InvalidInputError("a remote worker needs VHDKIT_BLOB_STORE=swift (the API host's settings): "
                                        "image data must be in Swift to be shared between hosts")
            self._blobs = SwiftBlobs.from_config(cfg)
        return self._blobs

    def close(self) -> None:
        self.release()
        self._http.close()

    def release(self) -> None:
        """Remove the local copies fetched for the last task."""
        for p in self._fetched:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
        self._fetched.clear()

    # -- tasks
    @staticmethod
    def _t(d: dict) -> Optional[Task]:
        return Task(**d["task"]) if d.get("task") else None

    def claim_task(self, worker_id: str, lease_seconds: float = 60.0, types=None) -> Optional[Task]:
        return self._t(self._op("claim", worker_id=worker_id, lease_seconds=lease_seconds))

    def heartbeat(self, task_id: str, worker_id: str, *, lease_seconds: float = 60.0, stage: Optional[str] = None,
                  bytes_done: Optional[int] = None, bytes_total: Optional[int] = None,
                  attempt: Optional[int] = None) -> Task:
        return self._t(self._op("heartbeat", task_id=task_id, worker_id=worker_id, lease_seconds=lease_seconds,
                                stage=stage, bytes_done=bytes_done, bytes_total=bytes_total,
                                attempt=attempt))  # type: ignore

    def finish(self, task_id: str, worker_id: str, *, status: str, result: Optional[Dict[str, Any]] = None,
               message: str = "", attempt: Optional[int] = None) -> Task:
        return self._t(self._op("finish", task_id=task_id, worker_id=worker_id, status=status, result=result,
                                message=message, attempt=attempt))  # type: ignore[return-value]

    def fenced(self, lease):
        """Within: this thread's calls carry ``lease`` (see the module doc)."""
        from .registry.tasks import thread_lease

        return thread_lease(self._local, lease)

    def unswept_failures(self, limit: int = 50) -> List[Task]:
        return [Task(**t) for t in self._op("unswept_failures", limit=limit)["tasks"]]

    def mark_swept(self, task_id: str) -> None:
        self._op("mark_swept", task_id=task_id)

    def release_task(self, task_id: str, worker_id: str, attempt: Optional[int] = None) -> None:
        self._op("release", task_id=task_id, worker_id=worker_id, attempt=attempt)

    def show_task(self, caller: Caller, task_id: str) -> Task:
        return self._t(self._op("show_task", caller=_caller(caller), task_id=task_id))  # type: ignore

    # -- images
    def show_image(self, caller: Caller, image_id: str) -> Image:
        return Image(**self._op("show_image", caller=_caller(caller), image_id=image_id)["image"])

    def create_image(self, caller: Caller, data: Optional[dict] = None, /, **fields: Any) -> Image:
        body = dict(data or {})
        body.update(fields)
        return Image(**self._op("create_image", caller=_caller(caller), fields=body)["image"])

    def delete_image(self, caller: Caller, image_id: str) -> None:
        self._op("delete_image", caller=_caller(caller), image_id=image_id)

    def open_data(self, caller: Caller, image_id: str) -> RemoteData:
        d = self._op("open_data", caller=_caller(caller), image_id=image_id)
        return RemoteData(self, d["blob"], int(d["size"]), d.get("checksum"), Image(**d["image"]))

    def upload_file(self, caller: Caller, image_id: str, path: str, *, virtual_size: Optional[int] = None,
                    size: Optional[int] = None, progress: Optional[Callable[[int, Optional[int]], None]] = None
                    ) -> Image:
        """Store the file in Swift as the image's data, then register it with the API host."""
        from . import segments
        from .registry.blobs import SWIFT_REL

        blobs = self.blobs()
        base = f"{image_id}.{uuid.uuid4().hex}"
        rel = SWIFT_REL + base
        blobs.ensure_container()
        with open(path, "rb") as f:
            total = os.fstat(f.fileno()).st_size
            if size is not None and size != total:
                raise InvalidInputError(f"{path} is {total} bytes; {size} were announced")
            src = _Hashing(f)
            man = segments.split(blobs.store, blobs.container, base, src, segment_size=blobs.segment_size,
                                 total=total, progress=progress)  # type: ignore[arg-type]
        sent = False
        try:
            if man.size != total or src.n != total:
                raise StorageError(f"image data {rel}: stored {man.size} bytes of {total}")
            sent = True
            d = self._op("register_blob", caller=_caller(caller), image_id=image_id, blob=rel, size=total,
                         md5=src.md5.hexdigest(), sha512=src.sha512.hexdigest(), virtual_size=virtual_size)
        except BaseException as exc:
            if not sent or _refused(exc):
                _remove_quietly(blobs, rel)  # not registered: nothing may point at it, leave nothing behind
            raise                            # else perhaps registered: cleanup removes it if it was not
        return Image(**d["image"])

    # -- what an API host forwarding to the registry host needs (``vhdkit serve --registry``)
    @staticmethod
    def _img(d: dict) -> Image:
        return Image(**d["image"])

    def list_images(self, caller: Caller, params: Optional[Any] = None, **kw: Any) -> ImageList:
        d = self._op("list_images", caller=_caller(caller), params=_pairs(params, kw))
        return ImageList([Image(**i) for i in d["images"]], d.get("next_marker"))

    def update_image(self, caller: Caller, image_id: str, changes: Sequence[Any]) -> Image:
        return self._img(self._op("update_image", caller=_caller(caller), image_id=image_id, changes=list(changes)))

    def deactivate_image(self, caller: Caller, image_id: str) -> Image:
        return self._img(self._op("deactivate_image", caller=_caller(caller), image_id=image_id))

    def reactivate_image(self, caller: Caller, image_id: str) -> Image:
        return self._img(self._op("reactivate_image", caller=_caller(caller), image_id=image_id))

    def add_tag(self, caller: Caller, image_id: str, tag: str) -> None:
        self._op("add_tag", caller=_caller(caller), image_id=image_id, tag=tag)

    def delete_tag(self, caller: Caller, image_id: str, tag: str) -> None:
        self._op("delete_tag", caller=_caller(caller), image_id=image_id, tag=tag)

    def add_member(self, caller: Caller, image_id: str, member_id: str) -> Member:
        return Member(**self._op("add_member", caller=_caller(caller), image_id=image_id,
                                 member_id=member_id)["member"])

    def list_members(self, caller: Caller, image_id: str) -> List[Member]:
        return [Member(**m) for m in self._op("list_members", caller=_caller(caller), image_id=image_id)["members"]]

    def show_member(self, caller: Caller, image_id: str, member_id: str) -> Member:
        return Member(**self._op("show_member", caller=_caller(caller), image_id=image_id,
                                 member_id=member_id)["member"])

    def update_member(self, caller: Caller, image_id: str, member_id: str, status: str) -> Member:
        return Member(**self._op("update_member", caller=_caller(caller), image_id=image_id, member_id=member_id,
                                 status=status)["member"])

    def delete_member(self, caller: Caller, image_id: str, member_id: str) -> None:
        self._op("delete_member", caller=_caller(caller), image_id=image_id, member_id=member_id)

    def create_task(self, caller: Caller, type: str, input: Any) -> Task:
        return self._t(self._op("create_task", caller=_caller(caller), type=type, input=input))  # type: ignore

    def list_tasks(self, caller: Caller, params: Optional[Any] = None) -> TaskList:
        d = self._op("list_tasks", caller=_caller(caller), params=_pairs(params, {}))
        return TaskList([Task(**t) for t in d["tasks"]], d.get("next_marker"))

    def upload(self, caller: Caller, image_id: str, stream: BinaryIO, *, size: Optional[int] = None,
               virtual_size: Optional[int] = None, progress: Optional[Callable[[int, Optional[int]], None]] = None,
               inspect: bool = False) -> Image:
        """Store ``stream`` as the image's data: the registry host reserves the
        image (``saving``, a token and a lease), this host streams the bytes into
        Swift itself, hashing them on the way (md5, sha512), renewing the lease
        meanwhile, and the registry host makes the image active.  On failure the
        image returns to ``queued`` and the stored part is removed; if this host
        dies instead, its lease runs out and the registry host's cleanup (or the
        next upload to the image) does both.  ``inspect`` as for
        :meth:`vhdkit.registry.Registry.upload`."""
        from .registry import blobs as _blobs

        lease = self.upload_lease
        d = self._op("begin_upload", caller=_caller(caller), image_id=image_id, lease_seconds=lease)
        token, img = str(d["token"]), Image(**d["image"])
        store = self.upload_store()
        up = store.new_upload(img.id, token).open()
        cap = d.get("size_cap")
        up.limit = cap if isinstance(cap, int) else None
        keeper = _LeaseKeeper(self, img.id, token, lease)
        sent = False
        from .registry.inspect import inspect_upload

        src = inspect_upload(stream, disk_format=img.disk_format, container_format=img.container_format,
                             tmp_dir=self.scratch) if inspect else stream
        try:
            up.write_from(src, progress=progress, total=size)
            digest = up.digest()
            if size is not None and digest.size != size:
                raise InvalidInputError(f"upload ended after {digest.size} bytes; {size} were announced")
            keeper.check()
            up.publish()
            if virtual_size is None and img.disk_format == "vhd":
                virtual_size = _blobs.footer_virtual_size(getattr(up, "tail", b""))
            keeper.stop()
            sent = True
            return self._img(self._op("commit_upload", caller=_caller(caller), image_id=img.id, token=token,
                                      size=digest.size, md5=digest.md5, sha512=digest.sha512,
                                      virtual_size=virtual_size))
        except BaseException as exc:
            if not sent or _refused(exc):
                up.release()
                up.discard()   # the segments stored so far
                try:
                    self._op("abort_upload", image_id=img.id, token=token)
                except VhdkitError:
                    pass       # the lease runs out; the registry host's cleanup resets the image
            raise
        finally:
            keeper.stop()
            up.release()
            if src is not stream:
                src.close()

    def upload_store(self):
        """A blob store in this host's scratch directory whose data goes to Swift
        (the lock file of each upload stays local; the bytes do not)."""
        if self._upload_store is None:
            from .registry.blobs import BlobStore

            store = BlobStore(os.path.join(self.scratch, "blobs"), self.blobs())  # Swift (clear error otherwise)
            self._upload_store = store
        return self._upload_store


def _pairs(params: Any, kw: Dict[str, Any]) -> List[List[str]]:
    """Query parameters as JSON [key, value] pairs, normalised as the registry does."""
    from .registry.query import param_pairs

    return [[k, v] for k, v in param_pairs(params, kw)]


class _Unreachable(StorageError):
    """The registry host did not answer, or failed (5xx): a call may or may not
    have taken effect there.  A forwarding API host answers its customer 503."""
    code = "registry_unavailable"
    http_status = 503


def _refused(exc: BaseException) -> bool:
    """True when the registry host refused the call (it surely did not take
    effect); False for a lost connection or a server failure, after which it
    may have: nothing the call could refer to may be deleted then."""
    return isinstance(exc, VhdkitError) and not isinstance(exc, _Unreachable)


def _remove_quietly(blobs, rel: str) -> None:
    try:
        blobs.remove(rel)
    except VhdkitError:
        pass


class _LeaseKeeper:
    """Renews a forwarded upload's lease every third of its length, in a thread,
    until stopped; remembers why it could not (``check()`` raises it)."""

    def __init__(self, reg: "RemoteRegistry", image_id: str, token: str, lease: float) -> None:
        self.reg, self.image_id, self.token, self.lease = reg, image_id, token, lease
        self.error: Optional[BaseException] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{image_id}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.lease / 3):
            try:
                self.reg._op("renew_upload", image_id=self.image_id, token=self.token, lease_seconds=self.lease)
            except ConflictError as e:   # deleted, reset or replaced: stop streaming
                self.error = e
                return
            except VhdkitError:
                continue                 # a lost connection: retry within the lease

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()


class RemoteWorker:
    """A :class:`vhdkit.pipeline.Worker` whose registry is a :class:`RemoteRegistry`;
    fetched image data is removed after each task."""

    def __init__(self, reg: RemoteRegistry, cfg, worker_id: Optional[str] = None) -> None:
        from .pipeline import Worker

        if not os.environ.get("VHDKIT_STORE", "").startswith("swift+"):
            raise InvalidInputError("a remote worker needs VHDKIT_STORE=swift+http(s)://…: customer containers "
                                    "must be in Swift to be shared between hosts")
        reg.blobs()  # VHDKIT_BLOB_STORE must name Swift too: fail now, not in the middle of a task

        class _W(Worker):
            def run_once(inner):  # noqa: N805 - the Worker instance
                try:
                    return super().run_once()
                finally:
                    reg.release()

        os.makedirs(reg.scratch, exist_ok=True)
        self.reg, self.worker = reg, _W(reg, cfg, worker_id)  # type: ignore[arg-type]
        self.id = self.worker.id

    def run_once(self):
        return self.worker.run_once()

    def run(self, **kw):
        return self.worker.run(**kw)

    def close(self) -> None:
        self.reg.close()
        shutil.rmtree(self.reg.scratch, ignore_errors=True)
