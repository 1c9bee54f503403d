"""Workers on other hosts: the registry reached through the API host.

The SQLite registry lives on one host (WAL needs every process that opens it
on that host).  A worker elsewhere (``vhdkit worker --api URL``) uses
:class:`RemoteRegistry`, which offers the registry calls the pipeline makes
(claim, heartbeat, finish, show_task, show_image, create_image, delete_image,
open_data, upload_file) over the API host's internal routes
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
the task.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from typing import Any, Callable, Dict, List, Optional

from .errors import (ConflictError, ForbiddenError, InvalidInputError, NotFoundError, QuotaError, StorageError,
                     UnauthorizedError, VhdkitError)
from .registry import Caller
from .registry.models import Image, Task

__all__ = ["RemoteRegistry", "RemoteWorker", "TOKEN_ENV"]

TOKEN_ENV = "VHDKIT_SERVICE_TOKEN"
_STATUS = {400: InvalidInputError, 401: UnauthorizedError, 403: ForbiddenError, 404: NotFoundError,
           409: ConflictError, 413: QuotaError}


def _caller(c: Caller) -> dict:
    return {"account": c.account, "roles": sorted(c.roles), "service": c.is_service}


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
                 transport=None) -> None:
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
        self._fetched: List[str] = []

    # -- plumbing
    def _op(self, op: str, **body: Any) -> dict:
        import httpx

        try:
            r = self._http.post(f"/internal/v1/{op}", json=body)
        except httpx.HTTPError as e:
            raise StorageError(f"API host {self.api_url}: {type(e).__name__}: {e}") from None
        if r.status_code == 200:
            return r.json()
        try:
            msg = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            msg = r.text[:300]
        raise _STATUS.get(r.status_code, StorageError)(f"API host {op}: {msg}")

    def blobs(self):
        """The image-data container in Swift (the worker's VHDKIT_BLOB_STORE settings)."""
        if self._blobs is None:
            from .registry.blobs import SwiftBlobs

            spec = os.environ.get("VHDKIT_BLOB_STORE", "")
            if not (spec == "swift" or spec.startswith("swift+")):
                raise InvalidInputError("a remote worker needs VHDKIT_BLOB_STORE=swift (the API host's settings): "
                                        "image data must be in Swift to be shared between hosts")
            self._blobs = SwiftBlobs.from_env(spec)
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
                  bytes_done: Optional[int] = None, bytes_total: Optional[int] = None) -> Task:
        return self._t(self._op("heartbeat", task_id=task_id, worker_id=worker_id, lease_seconds=lease_seconds,
                                stage=stage, bytes_done=bytes_done, bytes_total=bytes_total))  # type: ignore

    def finish(self, task_id: str, worker_id: str, *, status: str, result: Optional[Dict[str, Any]] = None,
               message: str = "") -> Task:
        return self._t(self._op("finish", task_id=task_id, worker_id=worker_id, status=status, result=result,
                                message=message))  # type: ignore[return-value]

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
        try:
            if man.size != total or src.n != total:
                raise StorageError(f"image data {rel}: stored {man.size} bytes of {total}")
            d = self._op("register_blob", caller=_caller(caller), image_id=image_id, blob=rel, size=total,
                         md5=src.md5.hexdigest(), sha512=src.sha512.hexdigest(), virtual_size=virtual_size)
        except BaseException:
            try:
                blobs.remove(rel)  # not registered: nothing may point at it, leave nothing behind
            except VhdkitError:
                pass
            raise
        return Image(**d["image"])


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
