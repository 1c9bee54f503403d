"""Maintenance of a vhdkit data directory: what ``vhdkit cleanup`` runs.

:func:`cleanup` (or :func:`plan` for a dry run) covers

- tasks whose worker died for the last time (lease ran out after the last
  attempt) are failed, and the remains of every failed task not swept yet
  are removed (:func:`vhdkit.tasks.pipeline.sweep_failed`: an import's image, an
  export's unpublished segments and sidecar, the task's work directory),
  whatever their age: a failed task runs no more;

- the registry's own cleanup (:meth:`Registry.cleanup`): uploads whose process
  died go back to ``queued`` and lose their partial data, unlocked upload
  lock files in ``blobs/tmp`` go, the trash (data of deleted images) is emptied;
- image data in Swift (``VHDKIT_BLOB_STORE=swift``) that no registry row
  references: every object of the blob container named ``<id>.<token>``,
  ``<id>.<token>-NNNNN`` or ``<id>.<token>.segments.json`` whose image row
  neither records that blob nor holds that upload token, and whose newest
  object is older than the grace period (default 1 h: an upload in flight,
  even one on another host, writes its objects within that time and records
  its token before the first byte, so it is never touched);
- local blob files and verified local copies of Swift blobs
  (``blobs/<xx>/``, ``blobs/swift/``) that no row references, older than the
  grace and not locked by a live upload;
- task work directories (``work/<task id>``) of tasks that are not running
  (finished, unknown, or processing under a lease that ran out longer than the
  grace ago), older than the grace;
- temporary files of killed operations anywhere under the data directory
  (``.NAME.XXXX.part`` of the VHD writers, ``.NAME.XXXX.tmp`` of atomic
  writes, ``.tmp-*`` of the embedded object store), older than the grace and
  not locked by a live writer (writers ``flock`` their temporary files).
  ``blobs/tmp`` is left to the registry (its lock files say who is alive).

A dry run lists the same items without touching anything (the registry part is
listed by the same rules :meth:`Registry.cleanup` applies).
"""
from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from .. import testhooks
from ..errors import NotFoundError
from ..fileutil import is_locked

__all__ = ["CleanupReport", "cleanup", "plan", "DEFAULT_GRACE"]

DEFAULT_GRACE = 3600.0
_BLOB_OBJ = re.compile(r"^([0-9a-f-]{36})\.([0-9a-f]{32})(?:-\d+|\.segments\.json)?$")
_TEMP = re.compile(r"^(\..+\.part|\..+\.tmp|\.tmp-.+)$")


@dataclass
class CleanupReport:
    dry_run: bool
    grace_seconds: float
    registry: Dict[str, object] = field(default_factory=dict)
    swift_blobs: List[str] = field(default_factory=list)  # <id>.<token> of removed (or removable) blobs
    swift_objects: int = 0
    local_blobs: List[str] = field(default_factory=list)
    failed_tasks: List[str] = field(default_factory=list)  # what failed tasks left: image:, object:, work/
    work_dirs: List[str] = field(default_factory=list)
    temp_files: List[str] = field(default_factory=list)
    kept_young: int = 0  # unreferenced items left alone because they are younger than the grace
    errors: List[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def clock() -> float:
    """The moment a cleanup judges ages against: the system clock, or the
    time a test fixed (:data:`vhdkit.testhooks.cleanup_now`)."""
    return testhooks.cleanup_now if testhooks.cleanup_now is not None else time.time()


def _age(path: str, now: float) -> float:
    try:
        return now - os.lstat(path).st_mtime
    except FileNotFoundError:
        return -1.0


def _swift_blobs(reg, grace: float, now: float, dry_run: bool, rep: CleanupReport) -> None:
    remote = reg.blobs.remote
    if remote is None:
        return
    from ..registry.blobs import SWIFT_REL

    try:
        rows = remote.store.listing(remote.container)
    except NotFoundError:
        return
    groups: Dict[str, list] = {}
    for r in rows:
        m = _BLOB_OBJ.match(r["name"])
        if m:
            groups.setdefault(f"{m.group(1)}.{m.group(2)}", []).append(r)
    for base, objs in sorted(groups.items()):
        image_id, token = base.split(".")
        if reg.refers_to_blob(image_id, token, SWIFT_REL + base):
            continue
        if now - max(o["last_modified"] for o in objs) < grace:
            rep.kept_young += 1
            continue
        rep.swift_blobs.append(base)
        rep.swift_objects += len(objs)
        if dry_run:
            continue
        # re-check under the registry's write lock: an upload may have committed meanwhile
        if reg.refers_to_blob(image_id, token, SWIFT_REL + base, locked=True):
            rep.swift_blobs.pop()
            rep.swift_objects -= len(objs)
            continue
        for o in sorted(objs, key=lambda o: o["name"], reverse=True):  # manifest and sidecar go first
            try:
                remote.store.delete(remote.container, o["name"])
            except NotFoundError:
                pass


def _local_blobs(reg, grace: float, now: float, dry_run: bool, rep: CleanupReport) -> None:
    from ..registry import blobs as _blobs

    root = reg.blobs.root
    try:
        subs = sorted(os.listdir(root))
    except FileNotFoundError:
        return
    for sub in subs:
        d = os.path.join(root, sub)
        if sub == "tmp" or not os.path.isdir(d):
            continue
        for name in sorted(os.listdir(d)):
            m = re.match(r"^([0-9a-f-]{36})\.([0-9a-f]{32})$", name)
            if not m:
                continue
            rel, full = f"{sub}/{name}", os.path.join(d, name)
            if reg.refers_to_blob(m.group(1), m.group(2), rel) or is_locked(full):
                continue
            if _age(full, now) < grace:
                rep.kept_young += 1
                continue
            rep.local_blobs.append(rel)
            if dry_run:
                continue
            if reg.refers_to_blob(m.group(1), m.group(2), rel, locked=True):
                rep.local_blobs.pop()
                continue
            try:
                os.unlink(full)  # only the local file: a Swift blob's objects are judged above
            except FileNotFoundError:
                pass


def _work_dirs(reg, home: str, grace: float, now: float, dry_run: bool, rep: CleanupReport) -> None:
    from ..registry import Caller

    root = os.path.join(home, "work")
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        return
    svc = Caller.service("vhdkit-cleanup")
    for name in names:
        d = os.path.join(root, name)
        if not os.path.isdir(d):
            continue
        try:
            t = reg.show_task(svc, name)
            lease = getattr(t, "lease_expires_at", None)
            running = t.status == "processing" and (lease is None or _ts(lease) > now - grace)
        except NotFoundError:
            running = False
        if running:
            continue
        if _age(d, now) < grace:
            rep.kept_young += 1
            continue
        rep.work_dirs.append(f"work/{name}")
        if not dry_run:
            shutil.rmtree(d, ignore_errors=True)


def _failed_tasks(reg, home: str, dry_run: bool, rep: CleanupReport) -> None:
    from .pipeline import PipelineConfig, sweep_failed

    if not dry_run:
        reg.expire_leases()
    rep.failed_tasks = sweep_failed(reg, PipelineConfig.from_config(reg.config, home), dry_run=dry_run)


def _ts(v) -> float:
    if isinstance(v, (int, float)):
        return float(v)
    try:
        from datetime import datetime

        return datetime.fromisoformat(str(v).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def _temp_files(home: str, grace: float, now: float, dry_run: bool, rep: CleanupReport) -> None:
    skip = os.path.join(home, "blobs", "tmp")
    for dirpath, dirnames, filenames in os.walk(home):
        if dirpath == skip:
            dirnames[:] = []
            continue
        for fn in filenames:
            if not _TEMP.match(fn):
                continue
            p = os.path.join(dirpath, fn)
            if is_locked(p):
                continue  # its writer is alive (writers flock their temporary files)
            if _age(p, now) < grace:
                rep.kept_young += 1
                continue
            rep.temp_files.append(os.path.relpath(p, home))
            if not dry_run:
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass


def cleanup(reg, home: Optional[str] = None, *, grace: float = DEFAULT_GRACE, dry_run: bool = False) -> CleanupReport:
    """Run every cleanup on the registry ``reg`` whose data directory is ``home``
    (default: the registry's); see the module doc.  ``dry_run`` only lists."""
    home = str(home if home is not None else reg.home)
    rep = CleanupReport(dry_run=dry_run, grace_seconds=grace)
    rep.registry = reg.cleanup_plan() if dry_run else reg.cleanup()
    now = clock()   # one reading: every part of a run judges ages against the same moment
    for step in (lambda: _failed_tasks(reg, home, dry_run, rep),
                 lambda: _swift_blobs(reg, grace, now, dry_run, rep),
                 lambda: _local_blobs(reg, grace, now, dry_run, rep),
                 lambda: _work_dirs(reg, home, grace, now, dry_run, rep),
                 lambda: _temp_files(home, grace, now, dry_run, rep)):
        try:
            step()
        except Exception as e:  # noqa: BLE001 - one failing part must not stop the others; reported
            rep.errors.append(f"{type(e).__name__}: {e}")
    return rep


def plan(reg, home: Optional[str] = None, *, grace: float = DEFAULT_GRACE) -> CleanupReport:
    """What :func:`cleanup` would remove (nothing is touched)."""
    return cleanup(reg, home, grace=grace, dry_run=True)
