"""The blob store: image data files under ``<data>/blobs``, or in Swift.

Backends, chosen by the ``blob_store`` setting (:mod:`vhdkit.config`,
``VHDKIT_BLOB_STORE``) when the registry opens:

- unset or ``local``: files under ``<data>/blobs`` (below);
- ``swift`` (or ``swift+http(s)://PROXY``): objects in the container
  ``blob_container`` of the Swift account ``blob_account``, with the Swift
  credentials of :mod:`vhdkit.store.swift` (``swift_auth_url/user/key``).
  An image's data is a large object written by :func:`vhdkit.pack.segments.split`:
  segments ``<id>.<token>-00001`` … of ``blob_segment_size`` bytes, the sidecar of checksums and the zero-byte DLO manifest
  ``<id>.<token>``; the registry records it as ``swift/<id>.<token>``.  The
  upload streams (bounded memory: a few chunks queued to the uploading
  thread), is hashed in the same single pass, and the image turns active only
  after the manifest is stored.  The upload still creates and locks its
  ``tmp/<token>.part`` file (empty) on the registry's host: that lock is how
  a cleanup run tells a live upload from one whose process was killed; the
  segments of a dead upload are then deleted from Swift.  A process that needs
  a local file (an export) gets a verified copy under ``<data>/blobs/swift/``
  (:meth:`BlobStore.local_path`), removed with the image.

An upload writes ``tmp/<token>.part`` while holding an exclusive ``flock`` on
it, hashes on the way in (md5 and sha512 in two threads beside the writer),
fsyncs, renames to ``<id[:2]>/<id>.<token>`` (still locked) and only then does
the registry mark the image active.  The lock dies with the process, so a
cleanup run can tell a live upload from debris left by a killed one.
"""
from __future__ import annotations

import errno
import fcntl
import os
import time

from .._record import record

TYPE_CHECKING = False   # typing and dataclasses are not imported at run time (start-up of `vhdkit image show`)
if TYPE_CHECKING:
    from typing import BinaryIO, Callable, Iterator, Optional

    from .hashing import Hasher

from ..errors import IntegrityError, QuotaError, StorageError, from_oserror

CHUNK = 4 << 20


@record
class Digest:
    size: int
    md5: str
    sha512: str


def _hashers() -> "tuple[Hasher, Hasher]":
    """md5 and sha512 hashers, each in its own thread (see :mod:`.hashing`,
    imported here: a registry that only reads starts no thread and hashes nothing)."""
    from .hashing import hashers

    return hashers()


def file_digest(path: "str | int") -> Digest:
    """Size, md5 and sha512 of a file (a path, or an open fd read from its
    start and left open), read once (the two hashes in threads)."""
    md5, sha = _hashers()
    size = 0
    try:
        with open(path, "rb", buffering=0, closefd=not isinstance(path, int)) as f:
            f.seek(0)
            for b in iter(lambda: f.read(CHUNK), b""):
                md5.q.put(b)
                sha.q.put(b)
                size += len(b)
    except OSError as exc:
        raise from_oserror(exc, f"reading {path}") from None
    finally:
        m, s = md5.finish(), sha.finish()
    return Digest(size, m, s)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def older_than(path: str, seconds: float) -> bool:
    try:
        return time.time() - os.stat(path).st_mtime > seconds
    except FileNotFoundError:
        return False


SWIFT_REL = "swift/"


class SwiftBlobs:
    """Image data as segmented large objects in one Swift container (see module doc)."""

    def __init__(self, store, container: str, segment_size: int):
        self.store, self.container, self.segment_size = store, container, segment_size
        self._made = False

    @classmethod
    def from_config(cls, cfg) -> "SwiftBlobs":
        """The image-data container that ``cfg`` (a :class:`vhdkit.config.Config`) names."""
        from ..store.swift import SwiftConfig, SwiftStore

        store = SwiftStore(SwiftConfig.from_config(cfg, blobs=True), cfg.blob_account)
        return cls(store, cfg.blob_container, cfg.blob_segment_size)

    def ensure_container(self) -> None:
        if not self._made:
            self.store.create_container(self.container)
            self._made = True

    @staticmethod
    def name(rel: str) -> str:
        return rel[len(SWIFT_REL):]

    def remove(self, rel: str) -> int:
        """Delete the manifest, sidecar and every segment of ``rel`` (also a half-written one)."""
        from ..errors import NotFoundError

        n = 0
        try:
            objs = self.store.list(self.container, self.name(rel))
        except NotFoundError:
            return 0
        for o in objs:
            try:
                self.store.delete(self.container, o.name)
                n += 1
            except NotFoundError:
                pass
        return n

    def iter_range(self, rel: str, start: int, end: int, chunk: int = 1 << 20) -> Iterator[bytes]:
        """Bytes [start, end) of the large object, fetched segment by segment with
        Range requests; a segment answering short is an IntegrityError."""
        from ..pack import segments

        man = segments.load_manifest(self.store, self.container, self.name(rel))
        conn = self.store._connection()
        off = 0
        for seg in man.segments:
            a, b = max(start, off), min(end, off + seg.size)
            if a < b:
                try:
                    _, body = conn.get_object(self.container, seg.name, resp_chunk_size=chunk,
                                              headers={"Range": f"bytes={a - off}-{b - off - 1}"})
                except Exception as e:  # noqa: BLE001
                    from ..store.swift import _err

                    raise _err(e, f"image data segment {seg.name}") from None
                got = 0
                for piece in body:
                    got += len(piece)
                    if got > b - a:
                        raise IntegrityError(f"image data segment {seg.name}: Swift sent more than asked")
                    yield piece
                if got != b - a:
                    raise IntegrityError(f"image data segment {seg.name}: Swift sent {got} of {b - a} bytes")
            off += seg.size
            if off >= end:
                return

    def fetch(self, rel: str, path: str) -> None:
        """A verified local copy (every segment's md5 and the whole sha256), written atomically."""
        from ..pack import segments

        os.makedirs(os.path.dirname(path), exist_ok=True)
        segments.join(self.store, self.container, self.name(rel), path)


def remote_blobs(cfg) -> Optional[SwiftBlobs]:
    """The Swift backend of image data when ``cfg`` puts it in Swift, else None."""
    return SwiftBlobs.from_config(cfg) if cfg.blobs_in_swift() else None


class BlobStore:
    def __init__(self, root: str, remote: Optional[SwiftBlobs] = None):
        self.root = root
        self.tmp = os.path.join(root, "tmp")
        os.makedirs(self.tmp, exist_ok=True)
        self.remote = remote

    def final_rel(self, image_id: str, token: str) -> str:
        if self.remote is not None:
            return f"{SWIFT_REL}{image_id}.{token}"
        return os.path.join(image_id[:2], f"{image_id}.{token}")

    def is_remote(self, rel: str) -> bool:
        return rel.startswith(SWIFT_REL)

    def new_upload(self, image_id: str, token: str) -> "Upload":
        if self.remote is not None:
            from .swift_upload import SwiftUpload

            return SwiftUpload(self, image_id, token)
        return Upload(self, image_id, token)

    def local_path(self, rel: str) -> str:
        """A local file holding the blob: the blob itself, or for a Swift blob a
        verified copy kept under ``swift/`` (fetched on first use)."""
        p = self.path(rel)
        if self.is_remote(rel) and not os.path.exists(p):
            if self.remote is None:
                raise StorageError(f"blob {rel} is in Swift but VHDKIT_BLOB_STORE does not name Swift")
            self.remote.fetch(rel, p)
        return p

    def iter_range(self, rel: str, start: int, end: int, chunk: int = 1 << 20) -> Iterator[bytes]:
        if self.is_remote(rel):
            if self.remote is None:
                raise StorageError(f"blob {rel} is in Swift but VHDKIT_BLOB_STORE does not name Swift")
            return self.remote.iter_range(rel, start, end, chunk)
        return iter_file(open(self.path(rel), "rb", buffering=0), start, end, chunk)

    def part_path(self, token: str) -> str:
        return os.path.join(self.tmp, f"{token}.part")

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def unlink(self, rel_or_abs: str) -> None:
        p = rel_or_abs if os.path.isabs(rel_or_abs) else self.path(rel_or_abs)
        rel = os.path.relpath(p, self.root)
        if self.is_remote(rel) and self.remote is not None:
            self.remote.remove(rel)  # the objects in Swift; then the local copy, if any
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


class Upload:
    """One upload in progress: ``open()`` (creates and locks the part file),
    ``feed(bytes)``/``write_from(stream)``, ``digest()``, ``publish()`` (fsync +
    rename), ``release()``."""

    def __init__(self, store: BlobStore, image_id: str, token: str):
        self.store = store
        self.image_id = image_id
        self.token = token
        self.part = store.part_path(token)
        self.rel = store.final_rel(image_id, token)
        self.fd = -1
        self.published = False
        self.size = 0
        self.limit: Optional[int] = None
        self._buf = bytearray()
        self._md5: Optional[Hasher] = None
        self._sha: Optional[Hasher] = None

    def open(self) -> "Upload":
        """Create the part file already locked: it is created as ``.new`` (which
        cleanup leaves alone while young), locked, then renamed to ``.part``, so
        cleanup never sees an unlocked live ``.part``."""
        new = self.part[:-5] + ".new"
        try:
            self.fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            os.rename(new, self.part)
        except OSError as exc:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
                self.store.unlink(new)
            raise from_oserror(exc, f"cannot create {self.part}", service=True) from None
        return self

    def feed(self, b: "bytes | bytearray | memoryview") -> None:
        """Append ``b``: buffered to CHUNK, then written and handed to the hashers."""
        if self._md5 is None:
            self._md5, self._sha = _hashers()
        n = len(b)
        self.size += n
        if self.limit is not None and self.size > self.limit:
            raise QuotaError(f"upload exceeds the size limit of {self.limit} bytes")
        if not self._buf and n >= CHUNK and isinstance(b, bytes):
            self._emit(b)
            return
        self._buf += b
        if len(self._buf) >= CHUNK:
            self._flush()

    def _flush(self) -> None:
        if self._buf:
            b = bytes(self._buf)
            self._buf.clear()
            self._emit(b)

    def _emit(self, b: bytes) -> None:
        assert self._md5 is not None and self._sha is not None
        self._md5.q.put(b)
        self._sha.q.put(b)
        mv = memoryview(b)
        while mv:
            try:
                n = os.write(self.fd, mv)
            except OSError as exc:
                raise from_oserror(exc, f"writing {self.part}", service=True) from None
            mv = mv[n:]

    def digest(self) -> Digest:
        """Flush and finish the hashes (call once, after the last feed)."""
        try:
            self._flush()
        finally:
            if self._md5 is None:
                self._md5, self._sha = _hashers()
            m = self._md5.finish()
            s = self._sha.finish()  # type: ignore[union-attr]
        return Digest(self.size, m, s)

    def stop_hashers(self) -> None:
        for h in (self._md5, self._sha):
            if h is not None and h.is_alive():
                h.finish()

    def write_from(self, stream: BinaryIO, *, progress: Optional[Callable[[int, Optional[int]], None]] = None,
                   total: Optional[int] = None) -> None:
        """Copy ``stream`` into the part file, hashing on the way."""
        read = stream.read
        while True:
            b = read(CHUNK)
            if not b:
                return
            self.feed(b)
            if progress is not None:
                progress(self.size, total)

    def publish(self) -> str:
        """fsync the data, rename it into place (still locked); returns the blob's relative path."""
        try:
            os.fsync(self.fd)
            final = self.store.path(self.rel)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            os.rename(self.part, final)
            fsync_dir(os.path.dirname(final))
            fsync_dir(self.store.tmp)
        except OSError as exc:
            raise from_oserror(exc, f"storing blob {self.rel}", service=True) from None
        self.published = True
        return self.rel

    def discard(self) -> None:
        self.store.unlink(self.store.path(self.rel) if self.published else self.part)

    def release(self) -> None:
        self.stop_hashers()
        if self.fd >= 0:
            os.close(self.fd)   # drops the lock
            self.fd = -1


def footer_virtual_size(tail: bytes) -> Optional[int]:
    """``current_size`` of a VHD footer in the last 512 bytes (None if they are no
    valid footer: the native core checks cookie, checksum and disk type)."""
    from ..vhd import layout

    f = layout.footer(tail) if len(tail) == layout.FOOTER_BYTES else None
    return None if f is None else f.current_size


def iter_file(f: BinaryIO, start: int, end: int, chunk: int = 1 << 20) -> Iterator[bytes]:
    """Yield bytes [start, end) of the open file ``f``, closing it at the end."""
    with f:
        f.seek(start)
        left = end - start
        while left > 0:
            b = f.read(min(chunk, left))
            if not b:
                raise StorageError(f"blob {getattr(f, 'name', '?')} is shorter than recorded")
            left -= len(b)
            yield b


def iter_range(path: str, start: int, end: int, chunk: int = 1 << 20) -> Iterator[bytes]:
    """Yield bytes [start, end) of ``path``."""
    return iter_file(open(path, "rb", buffering=0), start, end, chunk)


def copy_range(path: str, out: BinaryIO, start: int, end: int,
               progress: Optional[Callable[[int, Optional[int]], None]] = None) -> int:
    """Copy bytes [start, end) of ``path`` into ``out``: in-kernel when ``out`` is a file."""
    total = end - start
    done = 0
    try:
        out_fd = out.fileno()
    except (AttributeError, OSError, ValueError):
        out_fd = -1
    if out_fd >= 0:
        out.flush()
        with open(path, "rb", buffering=0) as f:
            in_fd = f.fileno()
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(in_fd, start, total, os.POSIX_FADV_SEQUENTIAL)
            off = start
            use_cfr = hasattr(os, "copy_file_range")
            # one call for everything (as cp does) unless progress wants news
            step = (256 << 20) if progress is not None else (1 << 62)
            while done < total:
                n = min(step, total - done)
                try:
                    if use_cfr:
                        w = os.copy_file_range(in_fd, out_fd, n, off)
                    else:
                        w = os.sendfile(out_fd, in_fd, off, n)
                except OSError as exc:
                    if use_cfr and exc.errno in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                        use_cfr = False
                        continue
                    raise from_oserror(exc, "copying image data") from None   # into the caller's file
                if w == 0:
                    raise StorageError(f"blob {path} is shorter than recorded")
                off += w
                done += w
                if progress is not None:
                    progress(done, total)
        return done
    for b in iter_range(path, start, end):
        out.write(b)
        done += len(b)
        if progress is not None:
            progress(done, total)
    return done
