"""Image data (:class:`DataService`): uploads (one pass: size, md5 and
sha512 beside the write; temp file, fsync, rename, then active), downloads
with byte ranges, and the cleanup of what dead processes left behind.  See
:mod:`.blobs` for the file protocol."""
from __future__ import annotations

import io
import os
from _thread import get_ident

from .._lazy import contextmanager
from ..errors import (ConflictError, ForbiddenError, InvalidInputError, NotFoundError,
                      VhdkitError)
from ..fileutil import is_locked, lock_state
from . import blobs as _blobs
from .context import Context
from .images import SET_PROPERTY, ImageService
from .models import IMPORT_STORE_PROPERTIES, IMPORT_TASK_PROPERTY, Image, new_uuid
from .rbac import Caller

TYPE_CHECKING = False   # typing and uuid are not imported at run time (start-up of `vhdkit image show`)
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, BinaryIO, Callable, Dict, Iterator, List, Optional, Tuple

    Progress = Optional[Callable[[int, Optional[int]], None]]
_UPLOADING = ("SELECT id, upload_token, upload_lease_until FROM images WHERE status IN "
              "('saving', 'uploading', 'importing') AND upload_token IS NOT NULL")
#: the status an upload holds the image in -> the statuses it may start from.
#: ``saving``: data upload (``importing`` stays: the pipeline's import task);
#: ``uploading``: data staged for an interoperable import (``glance-direct``);
#: ``importing``: an interoperable import fetching the data (``web-download``).
_UPLOAD_FROM = {"saving": ("queued", "importing"), "uploading": ("queued",), "importing": ("queued",)}
#: Glance's default image_size_cap (1 TiB)
DEFAULT_SIZE_CAP = 1 << 40
#: bounds of an upload's lease on its image, seconds (the setting: Config.upload_lease)
MIN_LEASE_S, MAX_LEASE_S = 1.0, 3600.0


def check_upload_lease(seconds: float) -> float:
    if not MIN_LEASE_S <= seconds <= MAX_LEASE_S:
        raise InvalidInputError(f"VHDKIT_UPLOAD_LEASE_SECONDS {seconds:g}: expected seconds from {MIN_LEASE_S:g} "
                                f"to {MAX_LEASE_S:g}")
    return float(seconds)


class ImageData:
    """An open handle on an active image's data (see :meth:`Registry.open_data`).
    ``path`` is a local file with the data: the blob itself, or a verified copy
    of a blob kept in Swift (fetched on first use of ``path``)."""

    def __init__(self, image: Image, rel: str, size: int, checksum: Optional[str], blobs: _blobs.BlobStore):
        self.image, self.rel, self.size, self.checksum = image, rel, size, checksum
        self._blobs = blobs

    @property
    def path(self) -> str:
        return self._blobs.local_path(self.rel)

    def iter(self, start: int = 0, end: Optional[int] = None, chunk: int = 1 << 20) -> Iterator[bytes]:
        return self._blobs.iter_range(self.rel, start, self.size if end is None else end, chunk)


class DataService:
    """The data of the images of ``images`` (the registry open as ``ctx``):
    an upload stops at ``size_cap`` bytes."""

    def __init__(self, ctx: Context, images: ImageService, size_cap: int = DEFAULT_SIZE_CAP):
        self.ctx, self.images, self.size_cap = ctx, images, size_cap
        #: seconds of an upload's lease on its image (see :meth:`open_upload`)
        self.upload_lease = check_upload_lease(ctx.config.upload_lease)

    def open_upload(self, caller: Caller, image_id: str, *, into: str = "saving") -> "UploadWriter":
        """Start an upload to a ``queued`` (or ``importing``) image and return a
        writable file object; ``write()`` to it, then ``commit()`` (the image
        turns active) or ``abort()`` (it returns to queued).  Used as a context
        manager it aborts unless committed.  For producers that write (a tar or
        gzip writer): no second pass over the data.  ``into``: the status the
        image holds meanwhile (see ``_UPLOAD_FROM``); ``importing`` also sets
        the image's ``os_glance_import_task``, removed when the status changes.

        The upload holds the image under a new token with a lease in the
        database, renewed by a thread of this process while the upload is
        open.  Whoever finds the lease run out (:meth:`cleanup`, the next upload
        to the image, on any host) resets the image and removes the data; the
        token is the fence: a process that wakes after that (its token is no
        longer the image's) cannot commit, and removes only its own data."""
        import uuid

        token = uuid.uuid4().hex
        up = self.ctx.blobs.new_upload(str(image_id), token).open()
        up.limit = self.size_cap
        try:
            img = self._start_upload(caller, image_id, token, into=into)
        except BaseException:
            up.discard()
            up.release()
            raise
        return UploadWriter(self, caller, img, up)

    def _start_upload(self, caller: Caller, image_id: str, token: str, into: str = "saving") -> Image:
        """Mark the image ``into`` (``saving``: ``importing`` stays) under
        ``token`` with a fresh lease.  A dead upload (see
        :meth:`_upload_alive`) is reset first, so the image does not stay stuck
        until a cleanup."""
        allowed = _UPLOAD_FROM[into]
        reaped = False
        with self.ctx.write() as conn:
            img = self.images.get_for("upload_data", caller, image_id, conn)
            row = conn.execute("SELECT upload_token, upload_lease_until FROM images WHERE id = ?",
                               (img.id,)).fetchone()
            if row[0] is not None and not self._upload_alive(img.id, row[0], row[1]):
                self._reclaim(conn, img.id, row[0])
                img.status, reaped = "queued", True
            if img.status == "importing" and row[0] is not None and not reaped:
                raise ConflictError(f"image {img.id} is being imported: it takes no other data meanwhile")
            if img.status not in allowed:
                raise ConflictError(f"image {img.id} is '{img.status}': data can be "
                                    f"{'uploaded' if into == 'saving' else 'staged or imported'} "
                                    "only to a queued image")
            if not img.disk_format or not img.container_format:
                if into == "saving":
                    raise InvalidInputError("set disk_format and container_format before uploading data")
                raise ConflictError("set disk_format and container_format before staging or importing data")
            img.status = "importing" if img.status == "importing" else into
            conn.execute("UPDATE images SET status = ?, upload_token = ?, upload_lease_until = ?, "
                         "updated_at = ? WHERE id = ?",
                         (img.status, token, self.ctx.later(self.upload_lease), self.ctx.now(), img.id))
            if into == "importing":  # Glance's import lock, shown while the import runs (db.py's trigger ends it)
                self._mark_import(conn, img.id, {IMPORT_TASK_PROPERTY: new_uuid()})
        if reaped:
            self.ctx.empty_trash()
        return img

    def renew_upload(self, image_id: str, token: str) -> None:
        """Extend an upload's lease; ConflictError (code ``upload_lost``) when
        the upload is no longer the image's current one (deleted, reset after
        its lease ran out, or replaced)."""
        with self.ctx.write() as conn:
            n = conn.execute("UPDATE images SET upload_lease_until = ? WHERE id = ? AND upload_token = ?",
                             (self.ctx.later(self.upload_lease), str(image_id), str(token))).rowcount
        if n != 1:
            raise ConflictError(f"image {image_id}: the upload is no longer current (deleted, reset or "
                                "replaced)", code="upload_lost")

    def _reclaim(self, conn, image_id: str, token: str) -> None:
        """Reset the dead upload ``token`` (in the caller's write transaction):
        the image returns to ``queued`` and its data goes to the trash; the
        part file too when it is on this host."""
        conn.execute("UPDATE images SET status = 'queued', upload_token = NULL, upload_lease_until = NULL, "
                     "updated_at = ? WHERE id = ? AND upload_token = ?", (self.ctx.now(), image_id, token))
        self.ctx.trash(conn, [self.ctx.blobs.final_rel(image_id, token)])
        part = self.ctx.blobs.part_path(token)
        if not is_locked(part):
            self.ctx.blobs.unlink(part)

    def upload(self, caller: Caller, image_id: str, stream: BinaryIO, *, size: Optional[int] = None,
               virtual_size: Optional[int] = None, progress: Progress = None, stage: bool = False,
               inspect: bool = False) -> Image:
        """Store ``stream`` as the image's data and make it active.

        The image must be ``queued`` (or ``importing``) with disk and container
        formats set.  Size, md5 and sha512 are computed in one pass; ``size``,
        when given, must match.  ``virtual_size`` is recorded as given, else
        read from the data when disk_format is ``vhd``.  With ``inspect`` (every
        upload of a customer's bytes: the Images API) the data is inspected on
        the way in (:func:`vhdkit.registry.inspect.inspect_upload`).  On any
        failure the image returns to ``queued`` and nothing is left behind.

        ``stage``: Glance's ``PUT /v2/images/{id}/stage``: the same upload and
        checks, but the image ends ``uploading`` with the data kept for an
        import (:meth:`import_staged`) instead of active."""
        with self.open_upload(caller, image_id, into="uploading" if stage else "saving") as w:
            return w.fill(stream, size=size, virtual_size=virtual_size, progress=progress, inspect=inspect)

    def import_staged(self, caller: Caller, image_id: str) -> Image:
        """Glance's ``glance-direct`` import: an ``uploading`` image whose data
        was staged (and checked) by :meth:`upload` with ``stage`` turns active.
        Conflict unless the image is staged."""
        with self.ctx.write() as conn:
            img = self.images.get_for("upload_data", caller, image_id, conn)
            row = conn.execute("SELECT blob, upload_token FROM images WHERE id = ?", (img.id,)).fetchone()
            if img.status != "uploading" or not row["blob"] or row["upload_token"]:
                raise ConflictError(f"image {img.id} is '{img.status}': its data must be staged "
                                    "before the 'glance-direct' method can be used")
            conn.execute("UPDATE images SET status = 'active', updated_at = ? WHERE id = ?", (self.ctx.now(), img.id))
            self._mark_import(conn, img.id, {})
            out = self.images.load(conn, img.id)
        assert out is not None
        return self.images.present(caller, out)

    def upload_file(self, caller: Caller, image_id: str, path: str, **kw: Any) -> Image:
        """:meth:`upload` from a file (``size`` checked against the file's size)."""
        with open(path, "rb") as f:
            kw.setdefault("size", os.fstat(f.fileno()).st_size)
            return self.upload(caller, image_id, f, **kw)

    def _mark_import(self, conn, image_id: str, extra: Dict[str, str]) -> None:
        """The properties an interoperable import shows on its image, as Glance."""
        props = dict.fromkeys(IMPORT_STORE_PROPERTIES, "")
        props.update(extra)
        conn.executemany(SET_PROPERTY,
                         [(image_id, k, v) for k, v in props.items()])

    def activate(self, conn, image_id: str, size: int, md5: str, sha512: str,
                  virtual_size: Optional[int], blob: str, status: str = "active") -> Image:
        """Record the data and its checksums; the image turns ``status``
        (``active``, or ``uploading`` for staged data)."""
        if virtual_size is not None and (not isinstance(virtual_size, int) or isinstance(virtual_size, bool)
                                         or virtual_size < 0):
            raise InvalidInputError("virtual_size must be a non-negative integer")
        conn.execute(
            "UPDATE images SET status = ?, size = ?, checksum = ?, os_hash_algo = 'sha512', "
            "os_hash_value = ?, virtual_size = ?, blob = ?, upload_token = NULL, upload_lease_until = NULL, "
            "updated_at = ? WHERE id = ?", (status, size, md5, sha512, virtual_size, blob, self.ctx.now(), image_id))
        out = self.images.load(conn, image_id)
        assert out is not None
        return out

    def open_data(self, caller: Caller, image_id: str) -> ImageData:
        """The data of an active image (the file is opened lazily by the iterators;
        a concurrent delete may make it vanish: NotFoundError then)."""
        with self.ctx.read() as conn:
            img = self.images.get_for("download_data", caller, image_id, conn)
            if img.status == "deactivated" and not caller.is_service:
                raise ForbiddenError(f"image {img.id} is deactivated: its data cannot be downloaded")
            row = conn.execute("SELECT blob FROM images WHERE id = ?", (img.id,)).fetchone()
            if img.status != "active" or not row["blob"]:
                raise ConflictError(f"image {img.id} has no data (status '{img.status}')", code="no_data")
        return ImageData(self.images.present(caller, img), row["blob"], img.size or 0, img.checksum, self.ctx.blobs)

    def _range(self, size: int, offset: int, length: Optional[int]) -> Tuple[int, int]:
        if offset < 0 or (length is not None and length < 0) or (offset >= size and size > 0) \
                or (size == 0 and offset > 0):
            raise InvalidInputError(f"range starting at {offset} is outside the data (size {size})",
                                    code="range_not_satisfiable")
        end = size if length is None else min(size, offset + length)
        return offset, end

    def iter_data(self, caller: Caller, image_id: str, *, offset: int = 0, length: Optional[int] = None,
                  chunk: int = 1 << 20) -> Tuple[ImageData, Iterator[bytes]]:
        """(handle, iterator over bytes [offset, offset+length)) -- for HTTP streaming."""
        h = self.open_data(caller, image_id)
        start, end = self._range(h.size, offset, length)
        try:
            return h, h.iter(start, end, chunk)
        except FileNotFoundError:
            raise NotFoundError(f"image {image_id} not found") from None

    def download(self, caller: Caller, image_id: str, out: BinaryIO, *, offset: int = 0,
                 length: Optional[int] = None, progress: Progress = None) -> int:
        """Copy the data (or a byte range) into ``out``; returns bytes written."""
        h = self.open_data(caller, image_id)
        start, end = self._range(h.size, offset, length)
        if self.ctx.blobs.is_remote(h.rel):
            done = 0
            for b in h.iter(start, end):
                out.write(b)
                done += len(b)
                if progress is not None:
                    progress(done, end - start)
            return done
        try:
            return _blobs.copy_range(h.path, out, start, end, progress)
        except FileNotFoundError:
            raise NotFoundError(f"image {image_id} not found") from None

    # ---- cleanup ----
    def refers_to_blob(self, image_id: str, token: str, rel: str, *, locked: bool = False) -> bool:
        """Whether a registry row refers to blob ``rel`` (as an image's data) or
        to the upload ``token`` of ``image_id`` (in progress).  ``locked``: ask
        under the registry's write lock, so that no upload commits meanwhile
        (for a caller about to remove the blob when the answer is no)."""
        if not locked:
            row = self.ctx.conn().execute("SELECT blob, upload_token FROM images WHERE id = ?",
                                          (image_id,)).fetchone()
            return row is not None and (row[0] == rel or row[1] == token)
        with self.ctx.write():
            return self.refers_to_blob(image_id, token, rel)

    def _upload_files(self, image_id: str, tok: str) -> Tuple[str, str]:
        """The part file and the final blob file of an upload."""
        return self.ctx.blobs.part_path(tok), self.ctx.blobs.path(self.ctx.blobs.final_rel(image_id, tok))

    def _upload_alive(self, image_id: str, tok: str, lease: Optional[str]) -> bool:
        """Whether upload ``tok`` still holds its image: its lease has not run
        out.  An upload of this host also holds a lock on its part (or final)
        file; found unlocked, the process died and the upload is dead at once
        (on another host the file is not there, and the lease decides; a lease
        of NULL is an upload begun before leases, which has only the lock)."""
        part, final = self._upload_files(image_id, tok)
        states = (lock_state(part), lock_state(final))
        held = True if True in states else (False if False in states else None)
        if held is False:
            return False
        if lease is None:
            return bool(held)
        return lease >= self.ctx.now()

    def _dead_parts(self, live_tokens: set) -> List[str]:
        """Names in the blob tmp directory that no live upload holds."""
        try:
            names = sorted(os.listdir(self.ctx.blobs.tmp))
        except FileNotFoundError:
            return []
        dead = []
        for name in names:
            p = os.path.join(self.ctx.blobs.tmp, name)
            if name.endswith(".part") and name[:-5] in live_tokens:
                continue
            if name.endswith(".new") and not _blobs.older_than(p, 60):
                continue  # being created and locked right now (see Upload.open)
            if not is_locked(p):
                dead.append(name)
        return dead

    def cleanup_plan(self) -> Dict[str, list]:
        """What :meth:`cleanup` would do now, read-only: the uploads it would
        reset, the tmp files it would remove, the trash it would empty."""
        conn = self.ctx.conn()
        resets, live = [], set()
        for image_id, tok, lease in conn.execute(_UPLOADING).fetchall():
            if self._upload_alive(image_id, tok, lease):
                live.add(tok)
            else:
                resets.append(image_id)
        trash = [p for (p,) in conn.execute("SELECT path FROM trash").fetchall()
                 if not is_locked(self.ctx.blobs.path(p))]
        return {"reset_uploads": resets, "removed_parts": self._dead_parts(live), "trash": trash}

    def cleanup(self, deep: bool = False) -> Dict[str, int]:
        """Undo what dead processes left: uploads whose process died go back to
        ``queued`` and lose their partial data; deleted images' blobs are
        removed.  ``deep`` also removes blob files no image refers to (a scan of
        the whole blob directory)."""
        report = {"reset_uploads": 0, "removed_parts": 0, "removed_blobs": 0}
        conn = self.ctx.conn()
        live_tokens = set()
        for image_id, tok, _lease in conn.execute(_UPLOADING).fetchall():
            with self.ctx.write() as c:
                row = c.execute("SELECT upload_token, upload_lease_until FROM images WHERE id = ?",
                                (image_id,)).fetchone()
                if row is None or row[0] != tok:
                    continue
                if self._upload_alive(image_id, tok, row[1]):
                    live_tokens.add(tok)
                    continue
                self._reclaim(c, image_id, tok)
                report["reset_uploads"] += 1
        for name in self._dead_parts(live_tokens):
            self.ctx.blobs.unlink(os.path.join(self.ctx.blobs.tmp, name))
            report["removed_parts"] += 1
        report["removed_blobs"] += self.ctx.empty_trash()
        if deep:
            report["removed_blobs"] += self._remove_unreferenced()
        return report

    def _remove_unreferenced(self) -> int:
        removed = 0
        conn = self.ctx.conn()
        for sub in os.listdir(self.ctx.blobs.root):
            d = os.path.join(self.ctx.blobs.root, sub)
            if sub == "tmp" or not os.path.isdir(d):
                continue
            for name in os.listdir(d):
                rel = os.path.join(sub, name)
                image_id, _, tok = name.partition(".")
                row = conn.execute("SELECT blob, upload_token FROM images WHERE id = ?", (image_id,)).fetchone()
                if row is not None and (row[0] == rel or row[1] == tok):
                    continue
                full = os.path.join(d, name)
                if is_locked(full):
                    continue
                # re-check under the write lock (an upload may have committed meanwhile)
                with self.ctx.write() as c:
                    row = c.execute("SELECT blob FROM images WHERE id = ?", (image_id,)).fetchone()
                    if row is not None and row[0] == rel:
                        continue
                    self.ctx.blobs.unlink(full)
                removed += 1
        return removed


def _vhd_virtual_size(path: str) -> Optional[int]:
    """virtual_size of a VHD via the core reader, None when the reader is not
    available (yet) or the data is not a readable VHD."""
    try:
        from ..vhd import info  # type: ignore[attr-defined]
    except (ImportError, AttributeError):
        return None
    try:
        return int(info(path).virtual_size)
    except Exception:  # noqa: BLE001 - not a VHD, or reader missing native build
        return None


class _LeaseKeeper:
    """Renews an upload's lease every third of its length, in a thread, until
    stopped; remembers why it could not (``check()`` raises it).  A database
    that does not answer is retried at the next turn: if it stays away past
    the lease, the upload may be reclaimed, and the token fences the commit."""

    def __init__(self, data: DataService, image_id: str, token: str) -> None:
        import threading   # here: only an upload runs it (a read need not load threading)

        self.data, self.image_id, self.token = data, image_id, token
        self.error: Optional[BaseException] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"upload-lease-{image_id}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.data.upload_lease / 3):
            try:
                self.data.renew_upload(self.image_id, self.token)
            except ConflictError as e:   # deleted, reset or replaced: stop streaming
                self.error = e
                return
            except Exception:  # noqa: BLE001 - the database did not answer: retry within the lease
                continue

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread.ident != get_ident():
            self._thread.join()


class UploadWriter(io.RawIOBase):
    """A writable upload in progress (see :meth:`Registry.open_upload`)."""

    def __init__(self, data: DataService, caller: Caller, img: Image, up: _blobs.Upload):
        super().__init__()
        self._data, self._caller, self._img, self._up = data, caller, img, up
        self._done = False
        self.image_id = img.id
        self._lease = _LeaseKeeper(data, img.id, up.token)

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[override]
        if self._done:
            raise ValueError("upload already committed or aborted")
        self._lease.check()
        n = len(memoryview(b).cast("B")) if not isinstance(b, (bytes, bytearray)) else len(b)
        self._up.feed(b if isinstance(b, (bytes, bytearray)) else memoryview(b).cast("B"))
        return n

    @property
    def bytes_written(self) -> int:
        return self._up.size

    def fill(self, stream: BinaryIO, *, size: Optional[int] = None, virtual_size: Optional[int] = None,
             progress: Progress = None, inspect: bool = False) -> Image:
        """Copy ``stream`` to the end, then :meth:`commit` (aborted on any failure).

        Every upload of data a caller sends or names goes through here:
        ``PUT /file`` and the CLI (:meth:`Registry.upload`), staging for
        ``glance-direct`` (``upload(stage=True)``) and ``web-download``
        (api/imports.py).  ``inspect`` (a customer's bytes) runs the stream
        through :func:`vhdkit.registry.inspect.inspect_upload`, which refuses
        data that is not what its disk and container formats claim."""
        src = stream
        try:
            with self._aborting():
                if inspect:
                    from .inspect import InspectLimits, inspect_upload

                    src = inspect_upload(stream, disk_format=self._img.disk_format,
                                         container_format=self._img.container_format,
                                         tmp_dir=self._data.ctx.blobs.root,
                                         limits=InspectLimits.from_config(self._data.ctx.config))

                def step(done: int, total: Optional[int]) -> None:
                    self._lease.check()
                    if progress is not None:
                        progress(done, total)

                self._up.write_from(src, progress=step, total=size)
        finally:
            if src is not stream:
                src.close()
        return self.commit(size=size, virtual_size=virtual_size)

    def commit(self, *, size: Optional[int] = None, virtual_size: Optional[int] = None) -> Image:
        """Finish: check ``size`` if given, fsync, rename, record the hashes and
        make the image active (``uploading`` when the upload stages data)."""
        if self._done:
            raise ValueError("upload already committed or aborted")
        data, ctx, up, img = self._data, self._data.ctx, self._up, self._img
        with self._aborting():
            self._lease.check()
            digest = up.digest()
            if size is not None and digest.size != size:
                raise InvalidInputError(f"upload ended after {digest.size} bytes; {size} were announced")
            rel = up.publish()
            if virtual_size is None and img.disk_format == "vhd":
                if ctx.blobs.is_remote(rel):  # the footer, kept from the stream (no read back)
                    virtual_size = _blobs.footer_virtual_size(getattr(up, "tail", b""))
                else:
                    virtual_size = _vhd_virtual_size(ctx.blobs.path(rel))
            with ctx.write() as conn:
                row = conn.execute("SELECT upload_token FROM images WHERE id = ?", (img.id,)).fetchone()
                if row is None or row[0] != up.token:   # the fence: reclaimed (or deleted) meanwhile
                    raise ConflictError(f"image {img.id} was deleted or reset during the upload",
                                        code="upload_lost")
                out = data.activate(conn, img.id, digest.size, digest.md5, digest.sha512, virtual_size, rel,
                                    status="uploading" if img.status == "uploading" else "active")
        self._done = True
        self._lease.stop()
        up.release()
        assert out is not None
        return data.images.present(self._caller, out)

    @contextmanager
    def _aborting(self) -> Iterator[None]:
        """Run the block; on any failure :meth:`abort` and re-raise -- as
        ``upload_lost`` when the upload lost its image (see :meth:`_lost`)."""
        try:
            yield
        except BaseException as exc:
            lost = self._lost(exc)
            self.abort()
            if lost is not None:
                raise lost from None
            raise

    def _lost(self, exc: BaseException) -> Optional[ConflictError]:
        """When the upload failed because it lost the image (reclaimed after its
        lease ran out, or the image deleted: another process may have removed
        its data under it), the error that says so; else None."""
        if not isinstance(exc, VhdkitError) or isinstance(exc, ConflictError):
            return None     # the caller's own reason (a conflict says what it is)
        if self._lease.error is None:
            try:
                row = self._data.ctx.conn().execute("SELECT upload_token FROM images WHERE id = ?",
                                                (self._img.id,)).fetchone()
            except VhdkitError:
                return None
            if row is not None and row[0] == self._up.token:
                return None
        return ConflictError(f"image {self._img.id} was deleted or reset during the upload", code="upload_lost")

    def abort(self) -> None:
        """Drop the data; the image returns to ``queued``."""
        if self._done:
            return
        self._done = True
        self._lease.stop()
        up = self._up
        up.release()
        try:
            up.discard()
            left: List[str] = []
        except VhdkitError:    # the blob store did not answer: its data goes to the trash, emptied later
            left = [up.rel]
        try:
            ctx = self._data.ctx
            with ctx.write() as conn:
                conn.execute("UPDATE images SET status = 'queued', upload_token = NULL, upload_lease_until = NULL, updated_at = ? "
                             "WHERE id = ? AND upload_token = ?", (ctx.now(), self._img.id, up.token))
                ctx.trash(conn, left)
        except VhdkitError:
            pass  # cleanup() resets it once the lease has run out

    def close(self) -> None:
        if not self._done:
            self.abort()
        super().close()

    def __exit__(self, *exc: Any) -> None:
        self.close()
