"""The :class:`Registry`: the one interface to an open registry.  It opens
the data directory (:class:`~.context.Context`: database, blob store,
settings, clock, the write transaction and its fence) and hands each call
to the service of its concern, each given what it needs:

- :class:`~.images.ImageService` (images, tags, and loading an image for a
  caller: visibility, roles, property protections),
- :class:`~.data.DataService` (uploads, downloads, cleanup; on the images),
- :class:`~.sharing.MemberService` (members; on the images),
- :class:`~.tasks.TaskService` (tasks and the worker lease protocol).

Every public method takes the caller's identity (:class:`~.rbac.Caller`)
first; see :mod:`.rbac` for the order of checks (404 before 403)."""
from __future__ import annotations

import os

from .context import DEFAULT_LEASE_S, Context
from .data import DEFAULT_SIZE_CAP, DataService, ImageData, UploadWriter
from .images import ImageService
from .models import Image, ImageList, Member, Task, TaskList
from .rbac import Caller

TYPE_CHECKING = False   # typing and datetime are not imported at run time (start-up of `vhdkit image show`)
if TYPE_CHECKING:  # pragma: no cover
    import datetime as _dt
    from collections.abc import Mapping
    from typing import Any, BinaryIO, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

    from ..config import Config
    from . import db as _db
    from .data import Progress
    from .protections import PropertyProtections
    from .query import Params
    from .sharing import MemberService
    from .tasks import Lease, TaskService
# .sharing and .tasks are imported on first use, like .protections (a rules
# file's parser) and .query (list filters and sorting): opening a registry
# and reading one image need none of them (start-up of `vhdkit image show`).


def _attribute(part: str, name: str, doc: str, settable: bool = False) -> Any:
    """An attribute of the :class:`Registry` that is attribute ``name`` of its
    ``part`` (the context ``_ctx`` or a service)."""
    def get(reg: Registry) -> Any:
        return getattr(getattr(reg, part), name)

    def set_(reg: Registry, value: Any) -> None:
        setattr(getattr(reg, part), name, value)

    return property(get, set_ if settable else None, doc=doc)


class Registry:
    """A file-based image registry on a data directory.

    ``Registry(home=None)`` opens (creating if needed) ``home`` -- default
    the data directory of ``config`` -- and runs a quick :meth:`cleanup`.
    ``config`` (a :class:`vhdkit.config.Config`; default: the settings of
    this process's environment and configuration file) also chooses where
    image data lives and the property protection rules.
    Safe to share between threads; several processes may open the same
    directory at once.
    """

    def __init__(self, home: Optional[str] = None, *, protections: "PropertyProtections | str | None" = None,
                 quotas: Optional[Mapping[str, int]] = None, size_cap: int = DEFAULT_SIZE_CAP,
                 clock: Optional[Callable[[], _dt.datetime]] = None, cleanup: bool = True,
                 config: "Optional[Config]" = None, database_url: Optional[str] = None):
        from ..config import data_home, load

        cfg = config if config is not None else load()
        self._ctx = ctx = Context(os.path.abspath(data_home(home, cfg)), cfg, database_url=database_url,
                                  quotas=quotas, clock=clock)
        if protections is None:
            protections = cfg.property_protections
            if not protections:
                p = os.path.join(ctx.home, "property-protections.conf")
                protections = p if os.path.exists(p) else None
        if isinstance(protections, (str, os.PathLike)):
            from .protections import PropertyProtections

            protections = PropertyProtections.from_file(protections)
        self._images = ImageService(ctx, protections or None)
        self._data = DataService(ctx, self._images, size_cap)
        self._member_service: Optional[MemberService] = None
        self._task_service: Optional[TaskService] = None
        ctx.conn(first=True)
        if cleanup:
            self.cleanup()

    @property
    def _members(self) -> MemberService:
        if self._member_service is None:
            from .sharing import MemberService

            self._member_service = MemberService(self._ctx, self._images)
        return self._member_service

    @property
    def _tasks(self) -> TaskService:
        if self._task_service is None:
            from .tasks import TaskService

            self._task_service = TaskService(self._ctx)
        return self._task_service

    # ---- the open registry ----
    config = _attribute("_ctx", "config", "The settings this registry was opened with.")
    home = _attribute("_ctx", "home", "The data directory.")
    database_url = _attribute("_ctx", "database_url", "The database URL (None: the SQLite file :attr:`db_path`).")
    db_path = _attribute("_ctx", "db_path", "The SQLite file (when :attr:`database_url` is None).")
    created = _attribute("_ctx", "created", "True when this open made a new, empty registry (the CLI says where).")
    blobs = _attribute("_ctx", "blobs", "The blob store (:class:`~.blobs.BlobStore`).")
    quotas = _attribute("_ctx", "quotas", "Per-image limits: tags, properties, members.")

    size_cap = _attribute("_data", "size_cap", "The largest upload, bytes.", settable=True)
    upload_lease = _attribute("_data", "upload_lease", "Seconds of an upload's lease on its image.")
    max_task_attempts = _attribute("_tasks", "max_attempts", "How many times a task is claimed at most.",
                                   settable=True)
    protections = _attribute("_images", "protections", "The property protection rules: those given or found at "
                             "open, else the defaults (parsed on first use).", settable=True)

    @property
    def dialect(self) -> Any:
        """The SQL that differs between the engines (see db.py)."""
        return self._ctx.conn().dialect

    def _conn(self) -> _db.Connection:
        """This thread's database connection (for tests and bench to inspect)."""
        return self._ctx.conn()

    def integrity_check(self) -> str:
        """The database's own consistency check ('ok' when healthy)."""
        return self._ctx.conn().integrity_check()

    def close(self) -> None:
        self._ctx.close()

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- images and tags: ImageService ----
    def get_schema(self, caller: Caller, name: str) -> Dict[str, Any]:
        """``GET /v2/schemas/{name}``: image, images, member, members, task, tasks."""
        return self._images.get_schema(caller, name)

    def create_image(self, caller: Caller, data: Optional[Mapping[str, Any]] = None, /, **fields: Any) -> Image:
        """Create a queued image from a v2 body (``name``, ``visibility``, ``tags``,
        ``disk_format``, ..., extra string properties at top level; ``id`` optional)."""
        return self._images.create_image(caller, data, **fields)

    def show_image(self, caller: Caller, image_id: str) -> Image:
        return self._images.show_image(caller, image_id)

    def list_images(self, caller: Caller, params: Optional[Params] = None, **kw: Any) -> ImageList:
        """List what ``caller`` may see (see :meth:`.ImageService.list_images`)."""
        return self._images.list_images(caller, params, **kw)

    def update_image(self, caller: Caller, image_id: str, changes: Sequence[Mapping[str, Any]]) -> Image:
        """Apply JSON-patch operations (``add``/``replace``/``remove`` on
        ``/field`` paths) atomically."""
        return self._images.update_image(caller, image_id, changes)

    def delete_image(self, caller: Caller, image_id: str) -> None:
        """Delete the image and its data; its id is retired (see :meth:`.ImageService.delete_image`)."""
        self._images.delete_image(caller, image_id)

    def deactivate_image(self, caller: Caller, image_id: str) -> Image:
        return self._images.deactivate_image(caller, image_id)

    def reactivate_image(self, caller: Caller, image_id: str) -> Image:
        return self._images.reactivate_image(caller, image_id)

    def set_status(self, caller: Caller, image_id: str, status: str) -> Image:
        """Service only: move an image along the state machine."""
        return self._images.set_status(caller, image_id, status)

    def add_tag(self, caller: Caller, image_id: str, tag: str) -> None:
        """Add a tag (adding an existing tag is a no-op)."""
        self._images.add_tag(caller, image_id, tag)

    def delete_tag(self, caller: Caller, image_id: str, tag: str) -> None:
        self._images.delete_tag(caller, image_id, tag)

    # ---- image data: DataService ----
    def open_upload(self, caller: Caller, image_id: str, *, into: str = "saving") -> UploadWriter:
        """Start an upload and return a writable file object (see :meth:`.DataService.open_upload`)."""
        return self._data.open_upload(caller, image_id, into=into)

    def renew_upload(self, image_id: str, token: str) -> None:
        self._data.renew_upload(image_id, token)

    def upload(self, caller: Caller, image_id: str, stream: BinaryIO, *, size: Optional[int] = None,
               virtual_size: Optional[int] = None, progress: Progress = None, stage: bool = False,
               inspect: bool = False) -> Image:
        """Store ``stream`` as the image's data and make it active (see :meth:`.DataService.upload`)."""
        return self._data.upload(caller, image_id, stream, size=size, virtual_size=virtual_size,
                                 progress=progress, stage=stage, inspect=inspect)

    def import_staged(self, caller: Caller, image_id: str) -> Image:
        """Glance's ``glance-direct`` import of data staged by :meth:`upload` with ``stage``."""
        return self._data.import_staged(caller, image_id)

    def upload_file(self, caller: Caller, image_id: str, path: str, **kw: Any) -> Image:
        """:meth:`upload` from a file (``size`` checked against the file's size)."""
        return self._data.upload_file(caller, image_id, path, **kw)

    def open_data(self, caller: Caller, image_id: str) -> ImageData:
        """The data of an active image."""
        return self._data.open_data(caller, image_id)

    def iter_data(self, caller: Caller, image_id: str, *, offset: int = 0, length: Optional[int] = None,
                  chunk: int = 1 << 20) -> Tuple[ImageData, Iterator[bytes]]:
        """(handle, iterator over bytes [offset, offset+length)) -- for HTTP streaming."""
        return self._data.iter_data(caller, image_id, offset=offset, length=length, chunk=chunk)

    def download(self, caller: Caller, image_id: str, out: BinaryIO, *, offset: int = 0,
                 length: Optional[int] = None, progress: Progress = None) -> int:
        """Copy the data (or a byte range) into ``out``; returns bytes written."""
        return self._data.download(caller, image_id, out, offset=offset, length=length, progress=progress)

    def refers_to_blob(self, image_id: str, token: str, rel: str, *, locked: bool = False) -> bool:
        return self._data.refers_to_blob(image_id, token, rel, locked=locked)

    def cleanup_plan(self) -> Dict[str, list]:
        """What :meth:`cleanup` would do now, read-only."""
        return self._data.cleanup_plan()

    def cleanup(self, deep: bool = False) -> Dict[str, int]:
        """Undo what dead processes left (see :meth:`.DataService.cleanup`)."""
        return self._data.cleanup(deep)

    # ---- members: MemberService ----
    def add_member(self, caller: Caller, image_id: str, member_id: str) -> Member:
        return self._members.add_member(caller, image_id, member_id)

    def list_members(self, caller: Caller, image_id: str) -> List[Member]:
        return self._members.list_members(caller, image_id)

    def show_member(self, caller: Caller, image_id: str, member_id: str) -> Member:
        return self._members.show_member(caller, image_id, member_id)

    def update_member(self, caller: Caller, image_id: str, member_id: str, status: str) -> Member:
        """The member account accepts/rejects (or resets to pending) a share."""
        return self._members.update_member(caller, image_id, member_id, status)

    def delete_member(self, caller: Caller, image_id: str, member_id: str) -> None:
        self._members.delete_member(caller, image_id, member_id)

    # ---- tasks: TaskService (the fence: Context.fenced) ----
    def create_task(self, caller: Caller, type: str, input: Mapping[str, Any]) -> Task:
        """Record a pending task of ``type`` (import/export) owned by the caller's account."""
        return self._tasks.create_task(caller, type, input)

    def show_task(self, caller: Caller, task_id: str) -> Task:
        return self._tasks.show_task(caller, task_id)

    def list_tasks(self, caller: Caller, params: Optional[Params] = None) -> TaskList:
        """The caller account's tasks (see :meth:`.TaskService.list_tasks`)."""
        return self._tasks.list_tasks(caller, params)

    def claim_task(self, worker_id: str, lease_seconds: float = DEFAULT_LEASE_S,
                   types: Optional[Sequence[str]] = None) -> Optional[Task]:
        """Atomically take the oldest pending task (or one whose worker's lease
        expired); None when there is nothing to do."""
        return self._tasks.claim_task(worker_id, lease_seconds, types)

    def expire_leases(self) -> None:
        """Tasks whose lease ran out go back to pending, or fail after their last
        attempt (what ``vhdkit cleanup`` runs first)."""
        self._tasks.expire_leases()

    def fenced(self, lease: Optional[Lease]):
        """Within: every write transaction of this thread is refused unless
        ``lease`` is still the task's current attempt.  None: no fence."""
        return self._ctx.fenced(lease)

    def check_lease(self, lease: Lease) -> None:
        """ConflictError ``lease_lost`` unless ``lease`` is the task's current attempt."""
        self._tasks.check_lease(lease)

    def holding(self, lease: Lease):
        """Run the block while holding the registry's write lock with ``lease``
        checked (see :meth:`.TaskService.holding`)."""
        return self._tasks.holding(lease)

    def unswept_failures(self, limit: int = 50) -> List[Task]:
        """Failed tasks whose remains were not swept yet (oldest first)."""
        return self._tasks.unswept_failures(limit)

    def mark_swept(self, task_id: str) -> None:
        self._tasks.mark_swept(task_id)

    def heartbeat(self, task_id: str, worker_id: str, *, lease_seconds: float = DEFAULT_LEASE_S,
                  stage: Optional[str] = None, bytes_done: Optional[int] = None,
                  bytes_total: Optional[int] = None, attempt: Optional[int] = None) -> Task:
        """Renew the lease and record progress; ConflictError when the lease was lost."""
        return self._tasks.heartbeat(task_id, worker_id, lease_seconds=lease_seconds, stage=stage,
                                     bytes_done=bytes_done, bytes_total=bytes_total, attempt=attempt)

    def release_task(self, task_id: str, worker_id: str, attempt: Optional[int] = None) -> None:
        """Give a held task back (its worker is stopping): pending again, the attempt not counted."""
        self._tasks.release_task(task_id, worker_id, attempt)

    def finish(self, task_id: str, worker_id: str, *, status: str, result: Optional[Dict[str, Any]] = None,
               message: str = "", attempt: Optional[int] = None) -> Task:
        """End a held task with ``success`` or ``failure``."""
        return self._tasks.finish(task_id, worker_id, status=status, result=result, message=message,
                                  attempt=attempt)

    def purge_expired_tasks(self) -> int:
        """Delete finished tasks whose ``expires_at`` has passed; returns how many."""
        return self._tasks.purge_expired_tasks()
