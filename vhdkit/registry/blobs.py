"""The blob store: image data files under ``<data>/blobs``.

An upload writes ``tmp/<token>.part`` while holding an exclusive ``flock`` on
it, hashes on the way in (md5 and sha512 in two threads beside the writer),
fsyncs, renames to ``<id[:2]>/<id>.<token>`` (still locked) and only then does
the registry mark the image active.  The lock dies with the process, so a
cleanup run can tell a live upload from debris left by a killed one.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator, Optional

from ..errors import NoSpaceError, QuotaError, StorageError

CHUNK = 4 << 20


@dataclass
class Digest:
    size: int
    md5: str
    sha512: str


class _Hasher(threading.Thread):
    """Feeds chunks to one hash in its own thread (hashlib releases the GIL)."""

    def __init__(self, h) -> None:
        super().__init__(daemon=True)
        self.h = h
        self.q: "queue.Queue[Optional[bytes]]" = queue.Queue(maxsize=4)
        self.start()

    def run(self) -> None:
        h, get = self.h, self.q.get
        while True:
            b = get()
            if b is None:
                return
            h.update(b)

    def finish(self) -> str:
        self.q.put(None)
        self.join()
        return self.h.hexdigest()


def _os_error(exc: OSError, what: str) -> StorageError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpaceError(f"{what}: no space left", sys_errno=exc.errno)
    return StorageError(f"{what}: {exc.strerror or exc}", sys_errno=exc.errno or 0)


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


def is_locked(path: str) -> bool:
    """True when a live process holds the upload lock on ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class BlobStore:
    def __init__(self, root: str):
        self.root = root
        self.tmp = os.path.join(root, "tmp")
        os.makedirs(self.tmp, exist_ok=True)

    def final_rel(self, image_id: str, token: str) -> str:
        return os.path.join(image_id[:2], f"{image_id}.{token}")

    def part_path(self, token: str) -> str:
        return os.path.join(self.tmp, f"{token}.part")

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def unlink(self, rel_or_abs: str) -> None:
        p = rel_or_abs if os.path.isabs(rel_or_abs) else self.path(rel_or_abs)
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
        self._md5: Optional[_Hasher] = None
        self._sha: Optional[_Hasher] = None

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
            raise _os_error(exc, f"cannot create {self.part}") from None
        return self

    def feed(self, b: "bytes | bytearray | memoryview") -> None:
        """Append ``b``: buffered to CHUNK, then written and handed to the hashers."""
        if self._md5 is None:
            self._md5 = _Hasher(hashlib.md5())
            self._sha = _Hasher(hashlib.sha512())
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
                raise _os_error(exc, f"writing {self.part}") from None
            mv = mv[n:]

    def digest(self) -> Digest:
        """Flush and finish the hashes (call once, after the last feed)."""
        try:
            self._flush()
        finally:
            if self._md5 is None:
                self._md5 = _Hasher(hashlib.md5())
                self._sha = _Hasher(hashlib.sha512())
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
            raise _os_error(exc, f"storing blob {self.rel}") from None
        self.published = True
        return self.rel

    def discard(self) -> None:
        self.store.unlink(self.store.path(self.rel) if self.published else self.part)

    def release(self) -> None:
        self.stop_hashers()
        if self.fd >= 0:
            os.close(self.fd)   # drops the lock
            self.fd = -1


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
            off = start
            use_cfr = hasattr(os, "copy_file_range")
            while done < total:
                n = min(256 << 20, total - done)  # big calls: fewer writeback stalls
                try:
                    if use_cfr:
                        w = os.copy_file_range(in_fd, out_fd, n, off)
                    else:
                        w = os.sendfile(out_fd, in_fd, off, n)
                except OSError as exc:
                    if use_cfr and exc.errno in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                        use_cfr = False
                        continue
                    raise _os_error(exc, "copying image data") from None
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
