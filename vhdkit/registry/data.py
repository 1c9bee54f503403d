"""Image data, a mixin of :class:`~vhdkit.registry.Registry`: uploads (one
pass: size, md5 and sha512 beside the write; temp file, fsync, rename, then
active), downloads with byte ranges, and the cleanup of what dead processes
left behind.  See :mod:`.blobs` for the file protocol."""
from __future__ import annotations

import io
import os
import uuid
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Dict, Iterator, List, Optional, Tuple

from ..errors import (ConflictError, ForbiddenError, IntegrityError, InvalidInputError, NotFoundError, QuotaError,
                      VhdkitError)
from . import blobs as _blobs
from .models import IMPORT_STORE_PROPERTIES, IMPORT_TASK_PROPERTY, Image
from .rbac import Caller

if TYPE_CHECKING:  # pragma: no cover
    from .core import Registry  # noqa: F401

Progress = Optional[Callable[[int, Optional[int]], None]]
_UPLOADING = ("SELECT id, upload_token, upload_lease_until FROM images WHERE status IN "
              "('saving', 'uploading', 'importing') AND upload_token IS NOT NULL")
#: the status an upload holds the image in -> the statuses it may start from.
#: ``saving``: data upload (``importing`` stays: the pipeline's import task);
#: ``uploading``: data staged for an interoperable import (``glance-direct``);
#: ``importing``: an interoperable import fetching the data (``web-download``).
_UPLOAD_FROM = {"saving": ("queued", "importing"), "uploading": ("queued",), "importing": ("queued",)}
#: bounds of a forwarded upload's lease, seconds
MIN_LEASE_S, MAX_LEASE_S = 1.0, 3600.0

#: set one property (an upsert both engines know, SQLite >= 3.24)
SET_PROPERTY = ("INSERT INTO image_properties (image_id, name, value) VALUES (?, ?, ?) "
                "ON CONFLICT (image_id, name) DO UPDATE SET value = excluded.value")


def _lease(seconds: Any) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) \
            or not MIN_LEASE_S <= seconds <= MAX_LEASE_S:
        raise InvalidInputError(f"lease_seconds must be a number from {MIN_LEASE_S:g} to {MAX_LEASE_S:g}")
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


class DataMixin:
    def open_upload(self: "Registry", caller: Caller, image_id: str, *, into: str = "saving") -> "UploadWriter":
        """Start an upload to a ``queued`` (or ``importing``) image and return a
        writable file object; ``write()`` to it, then ``commit()`` (the image
        turns active) or ``abort()`` (it returns to queued).  Used as a context
        manager it aborts unless committed.  For producers that write (a tar or
        gzip writer): no second pass over the data.  ``into``: the status the
        image holds meanwhile (see ``_UPLOAD_FROM``); ``importing`` also sets
        the image's ``os_glance_import_task``, removed when the status changes."""
        token = uuid.uuid4().hex
        up = self.blobs.new_upload(str(image_id), token).open()
        up.limit = self.size_cap
        try:
            img = self._start_upload(caller, image_id, token, lease_until=None, into=into)
        except BaseException:
            up.discard()
            up.release()
            raise
        return UploadWriter(self, caller, img, up)

    def _start_upload(self: "Registry", caller: Caller, image_id: str, token: str,
                      lease_until: Optional[str], into: str = "saving") -> Image:
        """Mark the image ``into`` (``saving``: ``importing`` stays) under
        ``token``.  A lapsed forwarded upload (its lease ran out: the API host
        that made it died) is reset first, so the image does not stay stuck
        until a cleanup."""
        allowed = _UPLOAD_FROM[into]
        reaped = False
        with self._write() as conn:
            img = self._get_for("upload_data", caller, image_id, conn)
            row = conn.execute("SELECT upload_token, upload_lease_until FROM images WHERE id = ?",
                               (img.id,)).fetchone()
            if img.status == "saving" and row[1] is not None and not self._upload_alive(img.id, row[0], row[1]):
                self._trash(conn, [self.blobs.final_rel(img.id, row[0])])
                img.status, reaped = "queued", True
            if img.status == "importing" and row[0] is not None and self._upload_alive(img.id, row[0], row[1]):
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
                         "updated_at = ? WHERE id = ?", (img.status, token, lease_until, self._now(), img.id))
            if into == "importing":  # Glance's import lock, shown while the import runs (db.py's trigger ends it)
                self._mark_import(conn, img.id, {IMPORT_TASK_PROPERTY: str(uuid.uuid4())})
        if reaped:
            self._empty_trash()
        return img

    # ---- uploads forwarded by another API host (``vhdkit serve --registry``) ----
    def begin_remote_upload(self: "Registry", caller: Caller, image_id: str, *,
                            lease_seconds: float) -> Tuple[str, Image]:
        """Reserve the image for an upload that another API host streams into
        Swift itself: the image turns ``saving`` under a new token with a lease
        of ``lease_seconds``, which that host renews (:meth:`renew_remote_upload`)
        while data flows.  Returns the token; the data goes to
        ``swift/<image id>.<token>``.  A lease that runs out counts as a dead
        upload: :meth:`cleanup`, or the next upload to the image, resets it and
        removes its data.  Internal (service route ``/internal/v1``)."""
        if self.blobs.remote is None:
            raise InvalidInputError("this registry does not keep image data in Swift (VHDKIT_BLOB_STORE): "
                                    "an API host that forwards to it cannot store uploads")
        token = uuid.uuid4().hex
        img = self._start_upload(caller, image_id, token, lease_until=self._lease_until(_lease(lease_seconds)))
        return token, self._present(caller, img)

    def renew_remote_upload(self: "Registry", image_id: str, token: str, *, lease_seconds: float) -> None:
        """Extend the lease of a forwarded upload; ConflictError (code
        ``upload_lost``) when the upload is no longer the image's current one
        (deleted, reset by a cleanup after its lease ran out, or replaced)."""
        with self._write() as conn:
            n = conn.execute("UPDATE images SET upload_lease_until = ? WHERE id = ? AND upload_token = ? "
                             "AND upload_lease_until IS NOT NULL",
                             (self._lease_until(_lease(lease_seconds)), str(image_id), str(token))).rowcount
        if n != 1:
            raise ConflictError(f"image {image_id}: the upload is no longer current (deleted, reset or "
                                "replaced)", code="upload_lost")

    def commit_remote_upload(self: "Registry", caller: Caller, image_id: str, token: str, *, size: int,
                             md5: str, sha512: str, virtual_size: Optional[int] = None) -> Image:
        """Make the image active with the data of a forwarded upload (stored in
        Swift as ``swift/<image id>.<token>``, whose sidecar must record ``size``)."""
        if not (isinstance(token, str) and len(token) == 32 and all(c in "0123456789abcdef" for c in token)):
            raise InvalidInputError("an upload token is 32 hex digits")
        blob = self.blobs.final_rel(str(image_id), token)
        self._check_remote_blob(image_id, blob, size, md5, sha512)
        with self._write() as conn:
            img = self._get_for("upload_data", caller, image_id, conn)
            row = conn.execute("SELECT upload_token FROM images WHERE id = ?", (img.id,)).fetchone()
            if row[0] != token:
                raise ConflictError(f"image {img.id} was deleted or reset during the upload", code="upload_lost")
            out = self._activate(conn, img.id, size, md5, sha512, virtual_size, blob)
        return self._present(caller, out)

    def abort_remote_upload(self: "Registry", image_id: str, token: str) -> None:
        """Give up a forwarded upload: the image returns to ``queued`` and what
        was stored of its data is removed (a no-op if it is no longer current)."""
        with self._write() as conn:
            n = conn.execute("UPDATE images SET status = 'queued', upload_token = NULL, upload_lease_until = NULL, "
                             "updated_at = ? WHERE id = ? AND upload_token = ? AND upload_lease_until IS NOT NULL",
                             (self._now(), str(image_id), str(token))).rowcount
            if n:
                self._trash(conn, [self.blobs.final_rel(str(image_id), str(token))])
        if n:
            self._empty_trash()

    def upload(self: "Registry", caller: Caller, image_id: str, stream: BinaryIO, *, size: Optional[int] = None,
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

    def import_staged(self: "Registry", caller: Caller, image_id: str) -> Image:
        """Glance's ``glance-direct`` import: an ``uploading`` image whose data
        was staged (and checked) by :meth:`upload` with ``stage`` turns active.
        Conflict unless the image is staged."""
        with self._write() as conn:
            img = self._get_for("upload_data", caller, image_id, conn)
            row = conn.execute("SELECT blob, upload_token FROM images WHERE id = ?", (img.id,)).fetchone()
            if img.status != "uploading" or not row["blob"] or row["upload_token"]:
                raise ConflictError(f"image {img.id} is '{img.status}': its data must be staged "
                                    "before the 'glance-direct' method can be used")
            conn.execute("UPDATE images SET status = 'active', updated_at = ? WHERE id = ?", (self._now(), img.id))
            self._mark_import(conn, img.id, {})
            out = self._load(conn, img.id)
        assert out is not None
        return self._present(caller, out)

    def upload_file(self: "Registry", caller: Caller, image_id: str, path: str, **kw: Any) -> Image:
        """:meth:`upload` from a file (``size`` checked against the file's size)."""
        with open(path, "rb") as f:
            kw.setdefault("size", os.fstat(f.fileno()).st_size)
            return self.upload(caller, image_id, f, **kw)

    def register_blob(self: "Registry", caller: Caller, image_id: str, *, blob: str, size: int, md5: str,
                      sha512: str, virtual_size: Optional[int] = None) -> Image:
        """Make a queued image active with data a remote worker already stored in
        Swift (``blob`` = ``swift/<image id>.<32 hex token>``, the name of its
        large object; its sidecar must record ``size``).  Internal (service
        route ``/internal/v1``): the hashes are the worker's."""
        import re as _re

        m = _re.fullmatch(r"swift/([0-9a-f-]{36})\.([0-9a-f]{32})", blob or "")
        if m is None or m.group(1) != str(image_id):
            raise InvalidInputError(f"blob {blob!r} is not swift/{image_id}.<token>")
        self._check_remote_blob(image_id, blob, size, md5, sha512)
        with self._write() as conn:
            img = self._get_for("upload_data", caller, image_id, conn)
            if img.status != "queued":
                raise ConflictError(f"image {img.id} is '{img.status}': data can be registered only for a "
                                    "queued image")
            if not img.disk_format or not img.container_format:
                raise InvalidInputError("set disk_format and container_format before registering data")
            out = self._activate(conn, img.id, size, md5, sha512, virtual_size, blob)
        return self._present(caller, out)

    def _check_remote_blob(self: "Registry", image_id: str, blob: str, size: Any, md5: Any, sha512: Any) -> None:
        """Checks of data another host stored in Swift: the registry keeps data in
        Swift, the digests are hex of the right length, the size is within the
        cap and Swift's sidecar records exactly ``size`` bytes."""
        import re as _re

        if self.blobs.remote is None:
            raise InvalidInputError("this registry does not keep image data in Swift (VHDKIT_BLOB_STORE)")
        if not (isinstance(size, int) and not isinstance(size, bool) and size >= 0
                and isinstance(md5, str) and _re.fullmatch(r"[0-9a-f]{32}", md5)
                and isinstance(sha512, str) and _re.fullmatch(r"[0-9a-f]{128}", sha512)):
            raise InvalidInputError("registering image data needs size, md5 and sha512 hex digests")
        if self.size_cap is not None and size > self.size_cap:
            raise QuotaError(f"image data of {size} bytes exceeds the size limit of {self.size_cap} bytes")
        from .. import segments

        man = segments.load_manifest(self.blobs.remote.store, self.blobs.remote.container,
                                     self.blobs.remote.name(blob))
        if man.size != size:
            raise IntegrityError(f"blob {blob}: Swift's sidecar records {man.size} bytes, not {size}")

    def _mark_import(self: "Registry", conn, image_id: str, extra: Dict[str, str]) -> None:
        """The properties an interoperable import shows on its image, as Glance."""
        props = dict.fromkeys(IMPORT_STORE_PROPERTIES, "")
        props.update(extra)
        conn.executemany(SET_PROPERTY,
                         [(image_id, k, v) for k, v in props.items()])

    def _activate(self: "Registry", conn, image_id: str, size: int, md5: str, sha512: str,
                  virtual_size: Optional[int], blob: str, status: str = "active") -> Image:
        """Record the data and its checksums; the image turns ``status``
        (``active``, or ``uploading`` for staged data)."""
        if virtual_size is not None and (not isinstance(virtual_size, int) or isinstance(virtual_size, bool)
                                         or virtual_size < 0):
            raise InvalidInputError("virtual_size must be a non-negative integer")
        conn.execute(
            "UPDATE images SET status = ?, size = ?, checksum = ?, os_hash_algo = 'sha512', "
            "os_hash_value = ?, virtual_size = ?, blob = ?, upload_token = NULL, upload_lease_until = NULL, "
            "updated_at = ? WHERE id = ?", (status, size, md5, sha512, virtual_size, blob, self._now(), image_id))
        out = self._load(conn, image_id)
        assert out is not None
        return out

    def open_data(self: "Registry", caller: Caller, image_id: str) -> ImageData:
        """The data of an active image (the file is opened lazily by the iterators;
        a concurrent delete may make it vanish: NotFoundError then)."""
        with self._read() as conn:
            img = self._get_for("download_data", caller, image_id, conn)
            if img.status == "deactivated" and not caller.is_service:
                raise ForbiddenError(f"image {img.id} is deactivated: its data cannot be downloaded")
            row = conn.execute("SELECT blob FROM images WHERE id = ?", (img.id,)).fetchone()
            if img.status != "active" or not row["blob"]:
                raise ConflictError(f"image {img.id} has no data (status '{img.status}')", code="no_data")
        return ImageData(self._present(caller, img), row["blob"], img.size or 0, img.checksum, self.blobs)

    def _range(self: "Registry", size: int, offset: int, length: Optional[int]) -> Tuple[int, int]:
        if offset < 0 or (length is not None and length < 0) or (offset >= size and size > 0) \
                or (size == 0 and offset > 0):
            raise InvalidInputError(f"range starting at {offset} is outside the data (size {size})",
                                    code="range_not_satisfiable")
        end = size if length is None else min(size, offset + length)
        return offset, end

    def iter_data(self: "Registry", caller: Caller, image_id: str, *, offset: int = 0, length: Optional[int] = None,
                  chunk: int = 1 << 20) -> Tuple[ImageData, Iterator[bytes]]:
        """(handle, iterator over bytes [offset, offset+length)) -- for HTTP streaming."""
        h = self.open_data(caller, image_id)
        start, end = self._range(h.size, offset, length)
        try:
            return h, h.iter(start, end, chunk)
        except FileNotFoundError:
            raise NotFoundError(f"image {image_id} not found") from None

    def download(self: "Registry", caller: Caller, image_id: str, out: BinaryIO, *, offset: int = 0,
                 length: Optional[int] = None, progress: Progress = None) -> int:
        """Copy the data (or a byte range) into ``out``; returns bytes written."""
        h = self.open_data(caller, image_id)
        start, end = self._range(h.size, offset, length)
        if self.blobs.is_remote(h.rel):
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
    def refers_to_blob(self: "Registry", image_id: str, token: str, rel: str, *, locked: bool = False) -> bool:
        """Whether a registry row refers to blob ``rel`` (as an image's data) or
        to the upload ``token`` of ``image_id`` (in progress).  ``locked``: ask
        under the registry's write lock, so that no upload commits meanwhile
        (for a caller about to remove the blob when the answer is no)."""
        if not locked:
            row = self._conn().execute("SELECT blob, upload_token FROM images WHERE id = ?",
                                       (image_id,)).fetchone()
            return row is not None and (row[0] == rel or row[1] == token)
        with self._write():
            return self.refers_to_blob(image_id, token, rel)

    def _trash(self: "Registry", conn, rels: List[str]) -> None:
        """Record blobs (and upload files) to remove once nothing holds them (see :meth:`_empty_trash`)."""
        now = self._now()
        conn.executemany("INSERT INTO trash (path, created_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
                         [(p, now) for p in rels])

    def _empty_trash(self: "Registry") -> int:
        conn = self._conn()
        removed = 0
        for (p,) in conn.execute("SELECT path FROM trash").fetchall():
            full = self.blobs.path(p)
            if _blobs.is_locked(full):
                continue
            self.blobs.unlink(full)
            with self._write() as c:
                c.execute("DELETE FROM trash WHERE path = ?", (p,))
            removed += 1
        return removed

    def _upload_files(self: "Registry", image_id: str, tok: str) -> Tuple[str, str]:
        """The part file and the final blob file of an upload."""
        return self.blobs.part_path(tok), self.blobs.path(self.blobs.final_rel(image_id, tok))

    def _upload_alive(self: "Registry", image_id: str, tok: str, lease: Optional[str]) -> bool:
        """A local upload holds a lock on its part (or final) file; a forwarded
        one (another API host streams it into Swift) holds a lease it renews."""
        if lease is not None:
            return lease >= self._now()
        part, final = self._upload_files(image_id, tok)
        return _blobs.is_locked(part) or _blobs.is_locked(final)

    def _dead_parts(self: "Registry", live_tokens: set) -> List[str]:
        """Names in the blob tmp directory that no live upload holds."""
        try:
            names = sorted(os.listdir(self.blobs.tmp))
        except FileNotFoundError:
            return []
        dead = []
        for name in names:
            p = os.path.join(self.blobs.tmp, name)
            if name.endswith(".part") and name[:-5] in live_tokens:
                continue
            if name.endswith(".new") and not _blobs.older_than(p, 60):
                continue  # being created and locked right now (see Upload.open)
            if not _blobs.is_locked(p):
                dead.append(name)
        return dead

    def cleanup_plan(self: "Registry") -> Dict[str, list]:
        """What :meth:`cleanup` would do now, read-only: the uploads it would
        reset, the tmp files it would remove, the trash it would empty."""
        conn = self._conn()
        resets, live = [], set()
        for image_id, tok, lease in conn.execute(_UPLOADING).fetchall():
            if self._upload_alive(image_id, tok, lease):
                live.add(tok)
            else:
                resets.append(image_id)
        trash = [p for (p,) in conn.execute("SELECT path FROM trash").fetchall()
                 if not _blobs.is_locked(self.blobs.path(p))]
        return {"reset_uploads": resets, "removed_parts": self._dead_parts(live), "trash": trash}

    def cleanup(self: "Registry", deep: bool = False) -> Dict[str, int]:
        """Undo what dead processes left: uploads whose process died go back to
        ``queued`` and lose their partial data; deleted images' blobs are
        removed.  ``deep`` also removes blob files no image refers to (a scan of
        the whole blob directory)."""
        report = {"reset_uploads": 0, "removed_parts": 0, "removed_blobs": 0}
        conn = self._conn()
        live_tokens = set()
        for image_id, tok, _lease in conn.execute(_UPLOADING).fetchall():
            with self._write() as c:
                row = c.execute("SELECT upload_token, upload_lease_until FROM images WHERE id = ?",
                                (image_id,)).fetchone()
                if row is None or row[0] != tok:
                    continue
                if self._upload_alive(image_id, tok, row[1]):
                    live_tokens.add(tok)
                    continue
                part, final = self._upload_files(image_id, tok)
                self.blobs.unlink(part)
                self.blobs.unlink(final)
                c.execute("UPDATE images SET status = 'queued', upload_token = NULL, upload_lease_until = NULL, updated_at = ? "
                          "WHERE id = ?", (self._now(), image_id))
                report["reset_uploads"] += 1
        for name in self._dead_parts(live_tokens):
            self.blobs.unlink(os.path.join(self.blobs.tmp, name))
            report["removed_parts"] += 1
        report["removed_blobs"] += self._empty_trash()
        if deep:
            report["removed_blobs"] += self._remove_unreferenced()
        return report

    def _remove_unreferenced(self: "Registry") -> int:
        removed = 0
        conn = self._conn()
        for sub in os.listdir(self.blobs.root):
            d = os.path.join(self.blobs.root, sub)
            if sub == "tmp" or not os.path.isdir(d):
                continue
            for name in os.listdir(d):
                rel = os.path.join(sub, name)
                image_id, _, tok = name.partition(".")
                row = conn.execute("SELECT blob, upload_token FROM images WHERE id = ?", (image_id,)).fetchone()
                if row is not None and (row[0] == rel or row[1] == tok):
                    continue
                full = os.path.join(d, name)
                if _blobs.is_locked(full):
                    continue
                # re-check under the write lock (an upload may have committed meanwhile)
                with self._write() as c:
                    row = c.execute("SELECT blob FROM images WHERE id = ?", (image_id,)).fetchone()
                    if row is not None and row[0] == rel:
                        continue
                    self.blobs.unlink(full)
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


class UploadWriter(io.RawIOBase):
    """A writable upload in progress (see :meth:`Registry.open_upload`)."""

    def __init__(self, reg: "Registry", caller: Caller, img: Image, up: _blobs.Upload):
        super().__init__()
        self._reg, self._caller, self._img, self._up = reg, caller, img, up
        self._done = False
        self.image_id = img.id

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[override]
        if self._done:
            raise ValueError("upload already committed or aborted")
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
            if inspect:
                from .inspect import InspectLimits, inspect_upload

                src = inspect_upload(stream, disk_format=self._img.disk_format,
                                     container_format=self._img.container_format, tmp_dir=self._reg.blobs.root,
                                     limits=InspectLimits.from_config(self._reg.config))
            self._up.write_from(src, progress=progress, total=size)
        except BaseException:
            self.abort()
            raise
        finally:
            if src is not stream:
                src.close()
        return self.commit(size=size, virtual_size=virtual_size)

    def commit(self, *, size: Optional[int] = None, virtual_size: Optional[int] = None) -> Image:
        """Finish: check ``size`` if given, fsync, rename, record the hashes and
        make the image active (``uploading`` when the upload stages data)."""
        if self._done:
            raise ValueError("upload already committed or aborted")
        reg, up, img = self._reg, self._up, self._img
        try:
            digest = up.digest()
            if size is not None and digest.size != size:
                raise InvalidInputError(f"upload ended after {digest.size} bytes; {size} were announced")
            rel = up.publish()
            if virtual_size is None and img.disk_format == "vhd":
                if reg.blobs.is_remote(rel):  # the footer, kept from the stream (no read back)
                    virtual_size = _blobs.footer_virtual_size(getattr(up, "tail", b""))
                else:
                    virtual_size = _vhd_virtual_size(reg.blobs.path(rel))
            with reg._write() as conn:
                row = conn.execute("SELECT upload_token FROM images WHERE id = ?", (img.id,)).fetchone()
                if row is None or row[0] != up.token:
                    raise ConflictError(f"image {img.id} was deleted or reset during the upload")
                out = reg._activate(conn, img.id, digest.size, digest.md5, digest.sha512, virtual_size, rel,
                                    status="uploading" if img.status == "uploading" else "active")
        except BaseException:
            self.abort()
            raise
        self._done = True
        up.release()
        assert out is not None
        return reg._present(self._caller, out)

    def abort(self) -> None:
        """Drop the data; the image returns to ``queued``."""
        if self._done:
            return
        self._done = True
        up = self._up
        up.release()
        up.discard()
        try:
            with self._reg._write() as conn:
                conn.execute("UPDATE images SET status = 'queued', upload_token = NULL, upload_lease_until = NULL, updated_at = ? "
                             "WHERE id = ? AND upload_token = ?", (self._reg._now(), self._img.id, up.token))
        except VhdkitError:
            pass  # cleanup() resets it later

    def close(self) -> None:
        if not self._done:
            self.abort()
        super().close()

    def __exit__(self, *exc: Any) -> None:
        self.close()
