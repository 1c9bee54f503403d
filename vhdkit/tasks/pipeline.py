"""The image pipeline stage: import and export tasks, and the worker that runs them.

Import (``{"type": "import", "input": {"import_from": "CONTAINER/OBJECT",
"import_from_format": "vhd", "image_properties": {"name": ...}}}``):

  fetch     stream OBJECT from the owner account's container into a task
            directory next to the data directory
  validate  the native core: a VHD at all (else 396), fixed or dynamic (a
            differencing disk has a parent: 721), virtual size and file size
            within limits (413, 609), ``check`` clean (397); a VHDX
            (``"import_from_format": "vhdx"``) is validated alike and
            converted to a dynamic VHD first (:mod:`vhdkit.tasks.vhdx_import`)
  package   gzip-compress and pack as an OVA (``0.vhd`` + descriptor + manifest)
  store     upload the OVA as the image's data (disk_format vhd, container_format
            ova, virtual_size from the VHD) -- the image turns active only now

Export (``{"type": "export", "input": {"image_uuid": ..., "receiving_swift_container": C}}``):

  authorize owner only; not public, not shared with the caller; the property
            ``com.rackspace__1__options`` is ``0`` or absent; C exists and its
            name has no ``/``, ``?`` or ``.``
  unpack    the stored OVA (one VHD, or a snapshot chain ``0.vhd`` leaf … ``N.vhd`` base)
  coalesce  flatten the chain into one new dynamic VHD (new UUID and timestamp;
            the virtual disk's content is identical, so its file checksum differs
            from the imported file's)
  split     into C as ``{image_uuid}.vhd`` (zero-byte manifest) plus
            ``{image_uuid}.vhd-00001`` … segments and a sidecar manifest of checksums

Every failure ends the task ``failure`` with a message ``[code] reason`` and
leaves nothing half-made: no active image, no orphan blob, no partial segments,
no temporary files.  Workers claim tasks atomically with a lease; a worker that
dies loses its lease and the task is retried once from the start (then failed).

Fencing: an attempt runs under its :class:`~vhdkit.registry.tasks.Lease`
(task, worker, attempt number).  Every registry write it makes is refused
once a newer attempt holds the task (checked in the write's transaction); its
writes to the customer's container are checked against the lease before each
segment, and the export's manifest is published, and segments are deleted,
while the registry's write lock is held with the lease checked.  Each attempt
works in its own directory ``work/<task id>/<attempt>``, so an attempt that
lost its lease removes only what it made itself.  A task that ends
``failure`` (also when its worker died for the last time) is swept once by
the next worker or by ``vhdkit cleanup`` (:func:`sweep_failed`): its image,
its segments without a manifest and its work directory go.

A worker stopped by SIGINT/SIGTERM gives its task back (claimable at once, the
attempt not counted) after removing what the attempt made.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import signal
import socket
import tarfile
import threading
import time
import uuid as _uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..pack import exportstream, ova, segments, streams
from .. import testhooks
from ..config import Config, data_home, load as load_config
from ..errors import (ArchiveError, ChainError, ConflictError, FormatError, IntegrityError, InvalidInputError,
                      NoSpaceError, NotFoundError, OutOfSpaceError, OutputLimitError, ValidationFailed,
                      VhdkitError, from_oserror, public_message)
from ..interrupts import deferred
from ..registry import Caller, Registry
from ..registry.models import Task
from ..registry.tasks import Lease, task_image_id
from ..store import LocalStore, ObjectStore, validate_container_name

__all__ = ["PipelineConfig", "TaskFailed", "Worker", "run_task", "validate_task_input", "task_failure_message",
           "EXPORT_OPTIONS_PROPERTY", "CODES"]

log = logging.getLogger("vhdkit.tasks.pipeline")

MiB = 1 << 20
EXPORT_OPTIONS_PROPERTY = "com.rackspace__1__options"

#: Stable failure codes.  396, 413, 609 and 721 are the public Rackspace Cloud
#: Images codes; the others are vhdkit's own.
CODES = {
    396: "not a VHD",
    397: "the VHD failed validation",
    413: "virtual size too large (or a package decompresses beyond the limit)",
    609: "file size too large",
    721: "the VHD has a parent disk (missing from, or not matching, the image)",
    400: "invalid task input",
    404: "not found",
    403: "not allowed",
    500: "internal error",
}


class TaskFailed(VhdkitError):
    """A task rule failed; ``number`` is the stable code shown as ``[number]`` in the message."""

    code = "task_failed"

    def __init__(self, number: int, message: str):
        super().__init__(f"[{number}] {message}")
        self.number = number


@dataclass
class PipelineConfig:
    """Where a worker keeps its data and what it accepts.

    ``home`` is the data directory; the registry lives there, the embedded
    object store in ``home/objects`` (one directory per account), and task
    directories in ``home/work`` (removed on success, failure and restart).
    The limits' defaults and the customer store (``settings``, a
    :class:`vhdkit.config.Config`) come from the one configuration.
    """

    home: Path
    max_virtual_size: int = Config.max_virtual_size
    max_file_size: int = Config.max_file_size
    segment_size: int = Config.segment_size
    gzip_level: Optional[int] = None
    threads: Optional[int] = None
    lease_seconds: float = Config.lease_seconds
    heartbeat_seconds: float = Config.heartbeat_seconds
    #: the settings the customer store comes from (None: this process's environment and file)
    settings: Optional[Config] = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.home = Path(self.home)  # a str or any os.PathLike works too

    @classmethod
    def from_config(cls, cfg: Config, home: Optional[os.PathLike | str] = None, **kw: Any) -> "PipelineConfig":
        """The worker's configuration from ``cfg``; ``kw`` overrides."""
        for name in ("max_virtual_size", "max_file_size", "segment_size", "lease_seconds", "heartbeat_seconds"):
            kw.setdefault(name, getattr(cfg, name))
        return cls(home=Path(data_home(home, cfg)), settings=cfg, **kw)

    @classmethod
    def from_env(cls, home: Optional[os.PathLike | str] = None, **kw: Any) -> "PipelineConfig":
        """:meth:`from_config` of this process's environment and configuration file."""
        return cls.from_config(load_config(), home, **kw)

    @property
    def work_root(self) -> Path:
        return self.home / "work"

    def store(self, account: str) -> ObjectStore:
        """The account's object store: Swift when the ``store`` setting names one, else ``home/objects``."""
        from ..store import open_configured_store

        return open_configured_store(account, self.home, config=self.settings)


# ------------------------------------------------------------------ helpers
def _test_kill(stage: str) -> None:
    """The crash tests' hook (:data:`vhdkit.testhooks.kill_at_stage`)."""
    at, _, how = testhooks.kill_at_stage.partition(":")
    if at == stage:
        if how == "stop":
            testhooks.kill_at_stage = ""
        os.kill(os.getpid(), signal.SIGSTOP if how == "stop" else signal.SIGKILL)


class _Context:
    """What a running task may touch: its directory, its progress, its lease."""

    def __init__(self, reg: Registry, cfg: PipelineConfig, task: Task, worker_id: str):
        self.reg, self.cfg, self.task, self.worker_id = reg, cfg, task, worker_id
        self.lease = Lease(task.id, worker_id, int(task.attempts))
        self.caller = Caller(task.owner, frozenset(task.owner_roles or ()))
        self.dir = cfg.work_root / task.id / str(task.attempts)  # this attempt's own
        self.stage = "pending"
        self.done = 0
        self.total: Optional[int] = None
        self.lost = threading.Event()
        #: (stage, start) in the order entered; a stage may be entered again
        #: (a streamed export that falls back to unpack, coalesce, split)
        self.timings: List[Tuple[str, float]] = []

    def enter(self, stage: str, total: Optional[int] = None, timed: bool = True) -> None:
        """Start ``stage``; ``timed=False`` for a short step counted in the
        previous stage's time (``publish`` in ``split``'s)."""
        if self.lost.is_set():
            raise ConflictError(f"task {self.task.id}: lease lost, stopping")
        self.stage, self.done, self.total = stage, 0, total
        if timed:
            self.timings.append((stage, time.monotonic()))

    def progress(self, done: int, total: Optional[int] = None) -> None:
        if testhooks.kill_at_stage:
            _test_kill(self.stage)
        if self.lost.is_set():
            raise ConflictError(f"task {self.task.id}: lease lost, stopping")
        self.done = done
        if total is not None:
            self.total = total

    def check_lease(self) -> None:
        """ConflictError ``lease_lost`` unless this attempt still holds the task
        (asked of the registry, which also renews the lease)."""
        self.reg.heartbeat(self.task.id, self.worker_id, lease_seconds=self.cfg.lease_seconds, stage=self.stage,
                           bytes_done=self.done, bytes_total=self.total, attempt=self.lease.attempt)

    def holding(self):
        """A block during which no newer attempt can take the task: the
        registry's write lock held with the lease checked."""
        return self.reg.holding(self.lease)

    def elapsed(self) -> Dict[str, float]:
        """Seconds per stage, summed over every time it was entered (so never negative)."""
        ends = [start for _, start in self.timings[1:]] + [time.monotonic()]
        out: Dict[str, float] = {}
        for (name, start), end in zip(self.timings, ends):
            out[name] = out.get(name, 0.0) + (end - start)
        return {name: round(t, 3) for name, t in out.items()}


_image_id_for = task_image_id


def _copy(src, dst, ctx: _Context, chunk: int = 8 * MiB) -> int:
    buf = bytearray(chunk)
    view = memoryview(buf)
    n = 0
    while True:
        k = src.readinto(view)
        if not k:
            return n
        dst.write(view[:k])
        n += k
        ctx.progress(n)


# ------------------------------------------------------------------- import
def _parse_import(inp: Dict[str, Any]) -> tuple:
    allowed = {"import_from", "import_from_format", "image_properties"}
    extra = set(inp) - allowed
    if extra:
        raise TaskFailed(400, f"unknown import input field(s): {', '.join(sorted(extra))}")
    src = inp.get("import_from")
    if src is None:
        raise TaskFailed(400, "import_from is required")
    if not isinstance(src, str):
        raise TaskFailed(400, "import_from must be a string")
    if "/" not in src.strip("/"):
        raise TaskFailed(400, "import_from must be 'CONTAINER/OBJECT'")
    container, obj = src.split("/", 1)
    if any(seg in (".", "..") for seg in src.split("/")):
        raise TaskFailed(400, "import_from may not contain '.' or '..' path segments")
    fmt = inp.get("import_from_format", "vhd")
    if fmt not in ("vhd", "vhdx"):
        raise TaskFailed(400, f"import_from_format must be 'vhd' or 'vhdx', not {fmt!r}")
    props = inp.get("image_properties", {})
    if not isinstance(props, dict):
        raise TaskFailed(400, "image_properties must be an object")
    others = sorted(set(props) - {"name"})
    if others:
        raise TaskFailed(400, f"image_properties may hold only 'name'; not allowed: {', '.join(others)}")
    name = props.get("name", obj.rsplit("/", 1)[-1])
    if not isinstance(name, str) or len(name) > 255:
        raise TaskFailed(400, "image name must be a string of at most 255 characters")
    try:
        validate_container_name(container)
    except VhdkitError as e:
        raise TaskFailed(400, f"import_from: {e.message}") from None
    return container, obj, name


def _validate_vhd(path: Path, cfg: PipelineConfig):
    """The object as a disk the service takes (:func:`vhdkit.registry.inspect.check_disk`,
    the same judgement as an uploaded VHD's), its info; else TaskFailed with the code."""
    from ..registry.inspect import DiskRefused, InspectLimits, check_disk

    try:
        return check_disk(str(path), InspectLimits(cfg.max_virtual_size, cfg.max_file_size), what="the object")
    except DiskRefused as e:
        raise TaskFailed(e.number, e.message) from None


def _run_import(ctx: _Context) -> Dict[str, Any]:
    reg, cfg, caller = ctx.reg, ctx.cfg, ctx.caller
    container, obj, name = _parse_import(ctx.task.input)
    store = cfg.store(caller.account)
    try:
        head = store.head(container, obj)
    except NotFoundError:
        raise TaskFailed(404, f"object {container}/{obj} not found in account {caller.account}") from None
    if head.size > cfg.max_file_size:
        raise TaskFailed(609, f"the file is {head.size} bytes; the limit is {cfg.max_file_size}")

    image_id = _image_id_for(ctx.task.id)
    _discard_image(reg, caller.account, image_id)  # what an earlier, interrupted attempt left

    vhdx = ctx.task.input.get("import_from_format") == "vhdx"   # checked by _parse_import
    disk = ctx.dir / ("source.vhdx" if vhdx else "0.vhd")
    ctx.enter("fetch", head.size)
    with store.get(container, obj) as src:
        local = _local_path(src)
        if local is not None:
            # The embedded store: read the object in place (this open file is
            # the version we validate and pack, even if it is replaced now).
            disk.symlink_to(local)
            ctx.progress(head.size)
        else:
            with open(disk, "wb") as dst:
                _copy(src, dst, ctx)

        ctx.enter("validate", head.size)
        if vhdx:
            from . import vhdx_import
            disk = vhdx_import.to_vhd(disk, ctx.dir / "0.vhd", cfg)
        vi = _validate_vhd(disk, cfg)
        ctx.progress(head.size)

        # package: main's ova.pack writes the OVA in one pass (no spool); the
        # registry then takes it in one hashed copy.
        ctx.enter("package", head.size)
        ova_path = ctx.dir / f"{image_id}.ova"
        ova.pack([disk], ova_path, compress="gzip", name=image_id, level=cfg.gzip_level,
                 threads=cfg.threads, progress=ctx.progress)
        disk.unlink()

    ctx.enter("store", ova_path.stat().st_size)
    reg.create_image(caller, id=image_id, name=name, disk_format="vhd", container_format="ova")
    try:
        img = reg.upload_file(caller, image_id, str(ova_path), virtual_size=int(vi.virtual_size),
                              progress=ctx.progress)
    except BaseException:
        _discard_image(reg, caller.account, image_id)
        raise
    return {"image_id": img.id}


def _local_path(reader) -> Optional[str]:
    """A path naming the reader's open file (embedded store), else None."""
    try:
        fd = reader.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return None
    path = f"/proc/self/fd/{fd}"
    return path if os.path.exists(path) else None


def _discard_image(reg: Registry, account: str, image_id: str) -> None:
    """Delete an image an import attempt created (service identity; no-op if
    absent, and refused -- nothing happens -- when the calling attempt runs
    fenced and lost its lease: the image may be a newer attempt's by now)."""
    svc = Caller.service(account)
    try:
        reg.delete_image(svc, image_id)
    except NotFoundError:
        pass
    except ConflictError as e:
        if e.code != "lease_lost":
            raise


# ------------------------------------------------------------------- export
_BAD_CONTAINER_CHARS = set("/?.")


def _parse_export(inp: Dict[str, Any]) -> tuple:
    extra = set(inp) - {"image_uuid", "receiving_swift_container"}
    if extra:
        raise TaskFailed(400, f"unknown export input field(s): {', '.join(sorted(extra))}")
    image_id, container = inp.get("image_uuid"), inp.get("receiving_swift_container")
    for key, val in (("image_uuid", image_id), ("receiving_swift_container", container)):
        if val is None:
            raise TaskFailed(400, f"{key} is required")
        if not isinstance(val, str):
            raise TaskFailed(400, f"{key} must be a string")
        if not val:
            raise TaskFailed(400, f"{key} must not be empty")
    bad = sorted(_BAD_CONTAINER_CHARS & set(container))
    if bad:
        raise TaskFailed(400, f"receiving_swift_container {container!r} may not contain "
                              + " ".join(repr(c) for c in bad))
    try:
        validate_container_name(container)
    except VhdkitError as e:
        raise TaskFailed(400, f"receiving_swift_container: {e.message}") from None
    return image_id, container


def _authorize_export(reg: Registry, caller: Caller, image_id: str):
    try:
        img = reg.show_image(caller, image_id)
    except NotFoundError:
        raise TaskFailed(404, f"image {image_id} not found") from None
    except VhdkitError as e:
        raise TaskFailed(400, f"image {image_id}: {e.message}") from None
    if img.owner != caller.account:
        raise TaskFailed(403, f"image {image_id} is shared with your account, not owned by it: "
                              "only the owner may export an image")
    if img.visibility == "public":
        raise TaskFailed(403, f"image {image_id} is public: public images cannot be exported")
    opt = img.properties.get(EXPORT_OPTIONS_PROPERTY)
    if opt is not None and opt != "0":
        raise TaskFailed(403, f"image {image_id} cannot be exported: its {EXPORT_OPTIONS_PROPERTY} "
                              f"is {opt!r} (licensed or restricted image); only '0' allows export")
    if img.status != "active":
        raise TaskFailed(400, f"image {image_id} is {img.status!r}: only active images can be exported")
    if img.disk_format != "vhd" or img.container_format not in ("ova", "bare"):
        raise TaskFailed(400, f"image {image_id} is {img.disk_format}/{img.container_format}: "
                              "only VHD images (bare or in an OVA) can be exported")
    return img


def _run_export(ctx: _Context) -> Dict[str, Any]:
    reg, cfg, caller = ctx.reg, ctx.cfg, ctx.caller
    image_id, container = _parse_export(ctx.task.input)
    img = _authorize_export(reg, caller, image_id)
    store = _FencedStore(cfg.store(caller.account), ctx)
    if container not in store.list_containers():
        raise TaskFailed(404, f"container {container!r} does not exist in account {caller.account}; "
                              f"create it first (`vhdkit object create-container {container}`, "
                              f"or `swift post {container}`)")

    data = reg.open_data(caller, image_id)
    name = f"{image_id}.vhd"
    out = ctx.dir / name
    stored = _single_disk(data.path) if img.container_format == "ova" else None
    if stored is not None and stored.capacity > cfg.max_virtual_size:
        raise TaskFailed(413, f"the stored package declares a disk of {stored.capacity} bytes; "
                              f"the limit is {cfg.max_virtual_size}")
    if stored is not None:
        # the common case, one dynamic VHD, in one pass (see _export_streamed):
        # a result on the embedded store; else ``out`` written, or nothing
        # when the disk is not one for this pass (a fixed disk, say)
        res = _export_streamed(ctx, stored, data.path, store, container, name, out)
        if res is not None:
            return res
    if not out.exists():
        _unpack_and_coalesce(ctx, img, data, stored, out)

    ctx.enter("split", out.stat().st_size)
    with open(out, "rb") as f:
        man = segments.split(store, container, name, f, segment_size=cfg.segment_size,
                             total=out.stat().st_size, progress=ctx.progress)
    return {"export_location": f"{container}/{name}", "segments": len(man.segments),
            "size": man.size, "sha256": man.sha256}


def _unpack_and_coalesce(ctx: _Context, img, data, stored: Optional["_StoredDisk"], out: Path) -> None:
    """The general path: unpack the stored OVA (a chain ``0.vhd`` … ``N.vhd``, a
    fixed disk, another layout) and coalesce it into the new dynamic VHD ``out``."""
    from ..vhd import check, coalesce, modify, probe

    disks_dir = ctx.dir / "disks"
    own_copy = False  # is chain[0] a private copy we may rewrite in place?
    if img.container_format == "ova":
        ctx.enter("unpack", data.size)
        disks_dir.mkdir(parents=True)
        if stored is not None:
            chain, own_copy = [_unpack_single(ctx, stored, data.path, disks_dir / "disk.vhd")], True
        else:
            disks_dir.rmdir()
            rep = ova.unpack(data.path, disks_dir, progress=ctx.progress,
                             max_output=ova.capacity_bound(ctx.cfg.max_virtual_size))
            chain = _chain_from(rep, disks_dir)
            own_copy = len(chain) == 1
    else:
        disks_dir.mkdir(parents=True)
        chain = [Path(data.path)]
    _check_stored_chain(chain)

    ctx.enter("coalesce")
    if own_copy and probe(chain[0]) == "dynamic":
        # Nothing to flatten: "coalescing" one dynamic VHD only gives it a new
        # identity.  Check it, then rewrite both footer copies in place (new
        # UUID and timestamp); every other byte -- the virtual disk -- stays.
        rep = check(chain[0], parents=False)
        if not rep.ok:
            p = rep.problems[0]
            raise TaskFailed(397, f"the stored VHD failed validation: {p.code}: {p.message}")
        os.replace(chain[0], out)
        modify(out, new_uuid=True, timestamp="now")
    else:
        # One pass over the chain: each sector read once, from the topmost
        # layer holding it.  The chain is exactly the package's own disks:
        # locators name paths the image's author chose and are never followed.
        try:
            coalesce(chain[0], out, type="dynamic", parents=[str(p) for p in chain[1:]] or None,
                     allowed_root=str(disks_dir) if len(chain) > 1 else None, progress=ctx.progress,
                     follow_locators=False)
        except ChainError:
            raise TaskFailed(721, "the stored disks do not form a chain: a disk's parent UUID is not the "
                                  "UUID of the next disk in the package") from None
    shutil.rmtree(disks_dir, ignore_errors=True)


class _FencedStore:
    """The customer's object store as an export attempt may write it: each
    segment is written only after the lease was checked; the manifest and
    sidecar (the publish, stage ``publish``) and every delete happen inside
    :meth:`_Context.holding`, so a stale attempt never publishes over, nor
    deletes the segments of, a newer attempt's export."""

    def __init__(self, inner: ObjectStore, ctx: _Context):
        self.inner, self.ctx = inner, ctx

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def put(self, container: str, name: str, stream, **kw: Any):
        self.ctx.check_lease()
        return self.inner.put(container, name, stream, **kw)

    def put_bytes(self, container: str, name: str, data: bytes, **kw: Any):
        if self.ctx.stage != "publish":
            self.ctx.enter("publish", timed=False)
            self.ctx.progress(0)
        with self.ctx.holding():
            return self.inner.put_bytes(container, name, data, **kw)

    def delete(self, container: str, name: str) -> None:
        with self.ctx.holding():
            self.inner.delete(container, name)


def _check_stored_chain(chain: List[Path]) -> None:
    """Refuse stored disks that are not VHDs (396) or whose chain is not closed
    inside the package (721): the last disk must have no parent, since the
    server never looks for one outside the image's own data."""
    from ..vhd import probe

    kinds = [probe(p) for p in chain]
    if any(k is None for k in kinds):
        raise TaskFailed(396, "the stored image is not a VHD (no valid VHD footer)")
    if kinds[-1] == "differencing":
        what = "the stored VHD is" if len(chain) == 1 else "the base of the stored chain is"
        raise TaskFailed(721, f"{what} a differencing disk whose parent is not part of the image; "
                              "coalesce it into a standalone VHD (or upload the whole chain as an OVA) first")


@dataclass
class _StoredDisk:
    """Where the one disk of an import-made OVA lies in the archive."""

    name: str
    offset: int
    size: int
    algo: str
    want: str  # its manifest digest
    gz: bool
    bound: int  # cap on its decompressed size
    capacity: int  # as the descriptor declares it


def _single_disk(ova_path: str) -> Optional[_StoredDisk]:
    """The disk member of the OVA an import makes (descriptor, manifest, one
    VHD disk, gzip or not; the descriptor's own manifest hash checked), or None
    when the archive is anything else (``ova.unpack`` then does the general,
    fully checking extraction)."""
    try:
        with tarfile.open(ova_path, "r:") as tar:
            members = tar.getmembers()
            if (len(members) != 3 or not all(m.isreg() and "/" not in m.name for m in members)
                    or not members[0].name.endswith(".ovf") or not members[1].name.endswith(".mf")
                    or members[0].size > (1 << 20) or members[1].size > (1 << 20)):
                return None
            ovf = tar.extractfile(members[0]).read()  # type: ignore[union-attr]
            mf = tar.extractfile(members[1]).read()  # type: ignore[union-attr]
        desc = ova.parse_descriptor(ovf)
        manifest = ova.parse_manifest(mf)
    except (tarfile.TarError, OSError, VhdkitError, EOFError):
        return None
    m = members[2]
    if (desc.problems or len(desc.files) != 1 or len(desc.disks) != 1 or desc.files[0].href != m.name
            or not desc.disks[0].is_vhd or desc.disks[0].capacity is None
            or (desc.files[0].compression or "identity").lower() not in ("gzip", "identity")
            or set(manifest) != {members[0].name, m.name}):
        return None
    algo, want = manifest[members[0].name]
    if algo not in ("sha256", "sha1") or hashlib.new(algo, ovf).hexdigest() != want:
        return None
    algo, want = manifest[m.name]
    if algo not in ("sha256", "sha1"):
        return None
    cap = desc.disks[0].capacity
    return _StoredDisk(m.name, m.offset_data, m.size, algo, want,
                       (desc.files[0].compression or "").lower() == "gzip", ova.capacity_bound(cap), cap)


def _unpack_single(ctx: _Context, sd: _StoredDisk, ova_path: str, dest: Path) -> Path:
    """Fast path of "unpack" for the OVA an import makes: decompress the disk
    member straight from its offset in the archive into ``dest`` in one pass,
    verifying its manifest hash."""
    with open(ova_path, "rb", buffering=0) as f, ThreadPoolExecutor(1) as pool:
        f.seek(sd.offset)
        raw = exportstream._HashedSlice(f, sd.size, sd.algo, pool)
        src = streams.open_decompressor(raw, "gzip", max_output=sd.bound,
                                        name=f"{ova_path}:{sd.name}") if sd.gz else raw
        with src, open(dest, "xb+") as out:  # read back by DiskOutputGuard
            _copy(src, ova.DiskOutputGuard(out, sd.bound, sd.name), ctx)
        if raw.left or raw.h.hexdigest() != sd.want:
            raise IntegrityError(f"the stored OVA's disk {sd.name!r} does not match its manifest {sd.algo}")
    return dest


def _export_streamed(ctx: _Context, sd: _StoredDisk, ova_path: str, store: ObjectStore, container: str,
                     name: str, out: Path) -> Optional[Dict[str, Any]]:
    """Export a stored single dynamic VHD in one pass (:mod:`vhdkit.pack.exportstream`):
    decompressed, hashed, its footers renewed and its metadata checked as it
    passes.  On the embedded store the bytes go straight into the segments
    (stage ``split``; a damaged disk fails the last read, and ``segments.split``
    then deletes what it wrote, before any manifest exists) and the result is
    returned.  On another store (Swift, whose puts are retried from a
    seekable segment) the pass writes ``out`` (stage ``unpack``), which the
    caller then splits; None is returned.  None too, with nothing written,
    when the disk is not one this pass handles (a fixed disk, say)."""
    skel = ctx.dir / "skeleton.vhd"
    direct = isinstance(getattr(store, "inner", store), LocalStore)
    try:
        with open(ova_path, "rb", buffering=0) as f, ThreadPoolExecutor(1) as pool, \
                exportstream.RenewedVhdStream(f, sd.offset, sd.size, sd.algo, sd.want, gz=sd.gz, bound=sd.bound,
                                              skeleton=skel, pool=pool, name=sd.name) as src:
            if direct:
                ctx.enter("split", sd.size)

                def progress(done: int, _total: Optional[int]) -> None:
                    ctx.progress(done, src.expected_size)

                man = segments.split(store, container, name, src, segment_size=ctx.cfg.segment_size,
                                     progress=progress)
                return {"export_location": f"{container}/{name}", "segments": len(man.segments),
                        "size": man.size, "sha256": man.sha256}
            ctx.enter("unpack", sd.size)
            with open(out, "xb") as dst:
                buf = src.read(MiB)
                while buf:
                    dst.write(buf)
                    ctx.progress(ctx.done + len(buf), src.expected_size)
                    buf = src.read(MiB)
            return None
    except exportstream.NotStreamable:
        out.unlink(missing_ok=True)
        return None
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    finally:
        skel.unlink(missing_ok=True)


def _chain_from(rep, disks_dir: Path) -> List[Path]:
    """The unpacked disks, leaf first: ``0.vhd`` … ``N.vhd`` for a snapshot chain."""
    names = sorted(m.name for m in rep.disks)
    if not names:
        raise TaskFailed(397, "the stored OVA holds no disk")
    if len(names) == 1:
        return [disks_dir / names[0]]
    want = [f"{i}.vhd" for i in range(len(names))]
    if sorted(names) != sorted(want):
        raise TaskFailed(397, f"the stored OVA holds several disks that are not a chain 0.vhd … "
                              f"{len(names) - 1}.vhd: {', '.join(names)}")
    return [disks_dir / n for n in want]


# ------------------------------------------------------------------- worker
def task_failure_message(task: Task, stage: str, exc: BaseException) -> str:
    """The ``[code] reason`` a customer reads for a task that ended with ``exc``.

    Failures caused by the input get the client codes (a damaged package
    400, decompression beyond its bound 413, a malformed VHD 397, a parent
    not in the image 721); anything else is the server's fault (500) and
    says no more than the stage.  No message carries a server path or host
    name (:func:`vhdkit.errors.public_message`); the full text goes to the
    log."""
    if isinstance(exc, OSError) and not isinstance(exc, VhdkitError):
        exc = from_oserror(exc, stage, service=True)   # what the server's own files failed with
    if isinstance(exc, TaskFailed):
        number, reason = exc.number, exc.message.split("] ", 1)[-1]
    elif isinstance(exc, OutputLimitError):
        number, reason = 413, f"the package decompresses beyond its limit: {exc.message}"
    elif isinstance(exc, ChainError):
        number, reason = 721, "a disk's parent is missing from the image or does not match it"
    elif isinstance(exc, ArchiveError):
        number, reason = 400, f"the image's package is unsafe or malformed: {exc.message}"
    elif isinstance(exc, ValidationFailed):
        number, reason = 397, exc.message
    elif isinstance(exc, (FormatError, IntegrityError)):
        number, reason = 397, f"the stored image failed validation: {exc.message}"
    elif isinstance(exc, InvalidInputError):
        number, reason = 400, exc.message
    elif isinstance(exc, NoSpaceError):
        number, reason = 500, f"{task.type} failed in stage {stage}: {OutOfSpaceError.MESSAGE}"
    else:
        number, reason = 500, f"{task.type} failed in stage {stage}: internal error (see the server's log)"
    if number >= 500 or not isinstance(exc, TaskFailed):
        log.error("task %s (%s) failed in stage %s: %s", task.id, task.type, stage, exc,
                  exc_info=number >= 500)
    return f"[{number}] {public_message(reason)}"


def validate_task_input(type: str, inp: Any) -> None:
    """Check a task's input as the worker will (InvalidInputError, 400): the
    API calls this when the task is created, so a wrong type or a missing
    field is refused at once."""
    if not isinstance(inp, dict):
        raise InvalidInputError("task input must be an object")
    parse = {"import": _parse_import, "export": _parse_export}.get(type)
    if parse is None:
        raise InvalidInputError(f"invalid task type {type!r}")
    try:
        parse(inp)
    except TaskFailed as e:
        raise InvalidInputError(e.message.split("] ", 1)[-1]) from None


RUNNERS: Dict[str, Callable[[_Context], Dict[str, Any]]] = {"import": _run_import, "export": _run_export}


def _remove_own_dir(ctx: _Context) -> None:
    """Remove this attempt's work directory (and the task's, once empty)."""
    shutil.rmtree(ctx.dir, ignore_errors=True)
    try:
        ctx.dir.parent.rmdir()
    except OSError:
        pass  # another attempt's directory is still there, or it is gone already


def run_task(reg: Registry, cfg: PipelineConfig, task: Task, worker_id: str) -> Task:
    """Run one claimed task to its end (success or failure) and return it."""
    ctx = _Context(reg, cfg, task, worker_id)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(cfg.heartbeat_seconds):
            try:
                ctx.check_lease()
            except ConflictError:
                ctx.lost.set()
                return
            except VhdkitError:
                continue

    def end() -> None:  # stop the heartbeat, remove this attempt's own directory (once)
        if not stop.is_set():
            stop.set()
            if hb.is_alive():
                hb.join()
            _remove_own_dir(ctx)

    # what earlier attempts of this task left (they lost the lease to this one), and a fresh own dir
    for old in ctx.dir.parent.iterdir() if ctx.dir.parent.is_dir() else ():
        if old.name.isdigit() and int(old.name) <= ctx.lease.attempt:
            shutil.rmtree(old, ignore_errors=True)
    hb = threading.Thread(target=beat, name=f"heartbeat-{task.id}", daemon=True)
    status, result, message = "failure", None, ""
    try:
        ctx.dir.mkdir(parents=True)
        hb.start()
        with reg.fenced(ctx.lease):
            result = RUNNERS[task.type](ctx)
        result["timings"] = ctx.elapsed()
        status = "success"
    except Exception as e:  # noqa: BLE001 - a task must end, whatever broke
        message = task_failure_message(task, ctx.stage, e)
    except BaseException:  # the worker is stopped (SIGINT/SIGTERM): the task goes back at once
        with deferred():
            end()
            _give_back(reg, task, worker_id, ctx.lease.attempt)
        raise
    finally:
        end()
    try:
        if ctx.lost.is_set():
            raise ConflictError("lease lost", code="lease_lost")
        out = reg.finish(task.id, worker_id, status=status, result=result, message=message,
                         attempt=ctx.lease.attempt)
    except ConflictError as e:
        if e.code != "lease_lost":
            raise
        # a newer attempt holds the task (or it was failed meanwhile): its
        # outcome is that attempt's; this one changed nothing it owns
        return reg.show_task(Caller.service(task.owner), task.id)
    if out.status == "failure":
        sweep_failed(reg, cfg, [out])
    return out


def _objects_left_by(store: ObjectStore, container: str, name: str) -> List[str]:
    """The segments and sidecar of ``container/name`` when no manifest object
    publishes them (an export that never finished), else nothing."""
    try:
        store.head(container, name)
        return []  # published: not remains (perhaps an earlier, successful export)
    except NotFoundError:
        pass
    seg = re.compile(re.escape(name) + r"-\d+")
    out = [o.name for o in store.list(container, f"{name}-") if seg.fullmatch(o.name)]
    try:
        store.head(container, segments.sidecar_name(name))
        out.append(segments.sidecar_name(name))
    except NotFoundError:
        pass
    return out


def sweep_failed(reg: Registry, cfg: PipelineConfig, tasks: Optional[List[Task]] = None,
                 dry_run: bool = False) -> List[str]:
    """Remove what failed tasks made (default: every failed task not swept
    yet): an import's image, an export's segments and sidecar when no
    manifest published them and no other export of the same name is under
    way, the temporary files of killed puts into its container (embedded
    store), the task's work directory.  Returns what was (or, with
    ``dry_run``, would be) removed, as ``image:<id>``,
    ``object:<container>/<name>``, ``temp:<container>/<file>`` and ``work/<task id>``."""
    removed: List[str] = []
    for t in (reg.unswept_failures() if tasks is None else tasks):
        svc = Caller.service(t.owner)
        if t.type == "import":
            image_id = task_image_id(t.id)
            try:
                img = reg.show_image(svc, image_id)
                if img.owner == t.owner:
                    if not dry_run:
                        _discard_image(reg, t.owner, image_id)
                    removed.append(f"image:{image_id}")
            except NotFoundError:
                pass
        elif t.type == "export":
            try:
                image_id, container = _parse_export(t.input)
            except TaskFailed:
                image_id = container = None
            refused = re.match(r"\[(400|403|404)\]", t.message or "")  # failed before writing anything
            if image_id is not None and container is not None and not refused \
                    and not _export_under_way(reg, svc, t):
                try:
                    store = cfg.store(t.owner)
                    for obj in _objects_left_by(store, container, f"{image_id}.vhd"):
                        if not dry_run:
                            try:
                                store.delete(container, obj)
                            except NotFoundError:
                                pass
                        removed.append(f"object:{container}/{obj}")
                    dead = getattr(store, "remove_dead_temps", None)  # the embedded store's killed puts
                    if dead is not None and not dry_run:
                        removed += [f"temp:{container}/{n}" for n in dead(container)]
                except NotFoundError:
                    pass  # the container is gone
        d = cfg.work_root / t.id
        if d.is_dir():
            if not dry_run:
                shutil.rmtree(d, ignore_errors=True)
            removed.append(f"work/{t.id}")
        if not dry_run:
            reg.mark_swept(t.id)
    return removed


def _export_under_way(reg: Registry, svc: Caller, t: Task) -> bool:
    """Whether another export of the same image into the same container is
    pending or running (its segments have the same names)."""
    for status in ("pending", "processing"):
        marker = None
        while True:
            page = reg.list_tasks(svc, {"type": "export", "status": status, "limit": "1000",
                                        **({"marker": marker} if marker else {})})
            if any(o.id != t.id and o.input == t.input for o in page.tasks):
                return True
            marker = page.next_marker
            if not marker:
                break
    return False


def _give_back(reg: Registry, task: Task, worker_id: str, attempt: int) -> None:
    """Hand a task this attempt holds back to the registry, claimable at once
    (best effort: if the registry cannot be reached, the lease expires)."""
    try:
        reg.release_task(task.id, worker_id, attempt)
    except VhdkitError:
        pass


class Worker:
    """Claims pending tasks from the registry and runs them, one at a time."""

    def __init__(self, reg: Registry, cfg: PipelineConfig, worker_id: Optional[str] = None):
        self.reg, self.cfg = reg, cfg
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{_uuid.uuid4().hex[:8]}"

    def cleanup(self) -> int:
        """Remove work directories no live attempt owns (left by a dead worker):
        ``work/<task id>`` of a task that is not running, and within a running
        task's directory those of its other, older attempts."""
        root = self.cfg.work_root
        if not root.is_dir():
            return 0
        removed = 0
        svc = Caller.service("vhdkit-worker")
        for d in root.iterdir():
            try:
                t = self.reg.show_task(svc, d.name)
                live = t.status == "processing" and t.worker_id not in (None, self.id)
            except NotFoundError:
                live = False
            if not live:
                shutil.rmtree(d, ignore_errors=True)
                removed += 1
                continue
            for a in d.iterdir() if d.is_dir() else ():
                if a.name != str(t.attempts):
                    shutil.rmtree(a, ignore_errors=True)
                    removed += 1
        return removed

    def run_once(self) -> Optional[Task]:
        """Claim and run one task; None when nothing was pending.  Failed tasks
        not swept yet (their last worker died) are swept first."""
        task = self.reg.claim_task(self.id, lease_seconds=self.cfg.lease_seconds)
        try:
            sweep_failed(self.reg, self.cfg)
        except VhdkitError as e:  # the next claim tries again
            log.warning("sweeping failed tasks: %s", e)
        if task is None:
            return None
        return run_task(self.reg, self.cfg, task, self.id)

    def run(self, *, until_idle: bool = False, poll: float = 1.0, stop: Optional[threading.Event] = None) -> int:
        """Run tasks until ``stop`` is set (or, with ``until_idle``, none is pending)."""
        self.cleanup()
        n = 0
        while stop is None or not stop.is_set():
            if self.run_once() is not None:
                n += 1
                continue
            if until_idle:
                break
            time.sleep(poll)
        return n
