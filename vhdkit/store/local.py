"""An object store: accounts hold containers, containers hold named objects.

:class:`LocalStore`, the embedded object store (:class:`vhdkit.store.base.ObjectStore`): one directory per account with one directory per container::

    ROOT/<account>/<container>/objects/<encoded name>    the bytes, a plain file
    ROOT/<account>/<container>/meta/<encoded name>       JSON: name, size, etag, metadata

Encoded names are the percent-encoded object name (a leading ``.`` encoded
too); names whose encoding is longer than 200 bytes are stored under
``%%<sha256 of the name>`` (``%%`` cannot come out of percent-encoding).

Puts are atomic: the data and the metadata are written to temporary files in
the container, fsynced, and renamed into place (data first), then the
directory is fsynced (``put(..., durable=False)`` skips the fsyncs and only
starts writeback; :meth:`ObjectStore.sync` completes it: segment uploads use
this to overlap disk writes with reading the next segment).  A reader checks that the data it opened has the size
its metadata records and retries if it raced with a concurrent overwrite.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import BinaryIO, Dict, Iterator, List, Optional, Sequence

from ..errors import ConflictError, IntegrityError, NotFoundError, StorageError, VhdkitError, from_oserror
from ..interrupts import deferred
from .base import (_CHUNK, ObjectInfo, ObjectReader, ObjectStore, validate_container_name, validate_metadata,
                   validate_object_name)

__all__ = ["LocalStore", "open_store", "default_root"]


# ----------------------------------------------------------- local backend
def default_root() -> Path:
    """``objects`` in the configured data directory (:func:`vhdkit.config.data_home`)."""
    from ..config import data_home

    return Path(data_home()) / "objects"


def _encode(name: str) -> str:
    enc = urllib.parse.quote(name, safe="")
    if enc.startswith("."):
        enc = "%2E" + enc[1:]
    if len(enc) > 200:
        enc = "%%" + hashlib.sha256(name.encode("utf-8")).hexdigest()
    return enc


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _locked(path: str) -> int:
    """An fd holding an exclusive flock on ``path`` (see maintenance: temp files)."""
    import fcntl

    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


class _LocalReader(ObjectReader):
    def __init__(self, f: BinaryIO, info: ObjectInfo):
        self._f = f
        self.info = info
        self._left = info.size

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        """The open data file (a reader of the embedded store is a plain file:
        ``/proc/self/fd/N`` names this exact version even if the object is
        replaced meanwhile)."""
        return self._f.fileno()

    def readinto(self, b) -> int:
        if self._left <= 0:
            return 0
        view = memoryview(b)[: min(len(b), self._left)]
        n = self._f.readinto(view) or 0
        self._left -= n
        if n == 0 and self._left:
            raise IntegrityError(f"object {self.info.container}/{self.info.name} is shorter than its "
                                 f"recorded size {self.info.size}")
        return n

    def close(self) -> None:
        if not self.closed:
            self._f.close()
            super().close()


class LocalStore(ObjectStore):
    """The embedded object store: a directory tree (see module doc)."""

    def __init__(self, root: os.PathLike | str, account: str = "default"):
        self.root = Path(root)
        self.account = validate_container_name(account, "account name")
        self.base = self.root / self.account

    # -- paths
    def _cdir(self, container: str, *, must_exist: bool = True) -> Path:
        validate_container_name(container)
        d = self.base / container
        if must_exist and not d.is_dir():
            raise NotFoundError(f"container {container!r} not found in account {self.account!r}")
        return d

    def _paths(self, container: str, name: str) -> tuple:
        validate_object_name(name)
        d = self._cdir(container)
        enc = _encode(name)
        return d / "objects" / enc, d / "meta" / enc

    # -- containers
    def create_container(self, container: str) -> None:
        d = self._cdir(container, must_exist=False)
        try:
            (d / "objects").mkdir(parents=True, exist_ok=True)
            (d / "meta").mkdir(exist_ok=True)
        except OSError as e:
            raise from_oserror(e, f"create container {container!r}") from None

    def delete_container(self, container: str) -> None:
        d = self._cdir(container)
        if self.list(container, limit=1):
            raise ConflictError(f"container {container!r} is not empty")
        import shutil

        shutil.rmtree(d)

    def list_containers(self) -> List[str]:
        if not self.base.is_dir():
            return []
        return sorted((p.name for p in self.base.iterdir() if p.is_dir() and (p / "objects").is_dir()),
                      key=lambda n: n.encode("utf-8"))

    # -- objects
    def _read_meta(self, container: str, name: str, mpath: Path) -> ObjectInfo:
        try:
            with open(mpath, "rb") as f:
                raw = f.read(64 << 10)
        except OSError as e:
            if isinstance(from_oserror(e, ""), NotFoundError):
                raise NotFoundError(f"object {container}/{name} not found") from None
            raise from_oserror(e, f"object {container}/{name}") from None
        try:
            d = json.loads(raw)
            info = ObjectInfo(container=container, name=d["name"], size=int(d["size"]), etag=str(d["etag"]),
                              last_modified=float(d["last_modified"]),
                              content_type=str(d.get("content_type", "application/octet-stream")),
                              metadata=dict(d.get("metadata", {})))
        except (ValueError, KeyError, TypeError):
            raise StorageError(f"object {container}/{name}: metadata file {mpath} is corrupt") from None
        return info

    def head(self, container: str, name: str) -> ObjectInfo:
        _, mpath = self._paths(container, name)
        info = self._read_meta(container, name, mpath)
        if info.name != name:  # a hash collision in the long-name scheme
            raise NotFoundError(f"object {container}/{name} not found")
        return info

    def get(self, container: str, name: str) -> ObjectReader:
        dpath, mpath = self._paths(container, name)
        for _ in range(5):
            info = self.head(container, name)
            try:
                f = open(dpath, "rb")
            except OSError as e:
                raise from_oserror(e, f"object {container}/{name}") from None
            if os.fstat(f.fileno()).st_size == info.size:
                return _LocalReader(f, info)
            f.close()  # raced with an overwrite: metadata and data disagree, look again
            time.sleep(0.01)
        raise IntegrityError(f"object {container}/{name}: data size does not match its metadata")

    def put(self, container: str, name: str, stream: BinaryIO, *, metadata: Optional[Dict[str, str]] = None,
            content_type: Optional[str] = None, etag: Optional[str] = None,
            size: Optional[int] = None, durable: bool = True) -> ObjectInfo:
        dpath, mpath = self._paths(container, name)
        meta = validate_metadata(metadata)
        md5 = hashlib.md5()
        n = 0
        tmp_data = tmp_meta = None
        locks: List[int] = []  # temp files stay flocked until renamed: cleanup spares a live put's
        try:
            with deferred():  # a stop lands after the name is known, so the finally removes it
                fd, tmp_data = tempfile.mkstemp(prefix=".tmp-", dir=dpath.parent)
                locks.append(_locked(tmp_data))
            with open(fd, "wb") as out:
                buf = bytearray(_CHUNK)
                view = memoryview(buf)
                readinto = getattr(stream, "readinto", None)
                while True:
                    if readinto is not None:
                        k = readinto(view) or 0
                        chunk = view[:k]
                    else:
                        chunk = stream.read(_CHUNK)
                        k = len(chunk)
                    if not k:
                        break
                    md5.update(chunk)
                    out.write(chunk)
                    n += k
                out.flush()
                if durable:
                    os.fsync(out.fileno())
                elif hasattr(os, "posix_fadvise"):
                    # start writeback now (Linux), so a later sync() has little left to wait for
                    os.posix_fadvise(out.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            digest = md5.hexdigest()
            if size is not None and n != size:
                raise IntegrityError(f"put {container}/{name}: got {n} bytes, expected {size}")
            if etag is not None and etag.strip('"').lower() != digest:
                raise IntegrityError(f"put {container}/{name}: md5 {digest} does not match the given etag {etag}")
            info = ObjectInfo(container, name, n, digest, time.time(),
                              content_type or "application/octet-stream", meta)
            d = info.to_dict()
            d.pop("container")
            with deferred():
                fd, tmp_meta = tempfile.mkstemp(prefix=".tmp-", dir=mpath.parent)
                locks.append(_locked(tmp_meta))
            with open(fd, "wb") as out:
                out.write(json.dumps(d, sort_keys=True).encode("utf-8"))
                out.flush()
                if durable:
                    os.fsync(out.fileno())
            with deferred():
                os.replace(tmp_data, dpath)
                tmp_data = None
                os.replace(tmp_meta, mpath)
                tmp_meta = None
            if durable:
                _fsync_dir(dpath.parent)
                _fsync_dir(mpath.parent)
            return info
        except OSError as e:
            if isinstance(e, VhdkitError):
                raise
            raise from_oserror(e, f"put {container}/{name}") from None
        finally:
            for t in (tmp_data, tmp_meta):
                if t is not None:
                    try:
                        os.unlink(t)
                    except OSError:
                        pass
            for lk in locks:
                os.close(lk)

    def sync(self, container: str, names: Sequence[str]) -> None:
        dirs = set()
        for name in names:
            for path in self._paths(container, name):
                try:
                    fd = os.open(path, os.O_RDONLY)
                except OSError as e:
                    raise from_oserror(e, f"sync {container}/{name}") from None
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                dirs.add(path.parent)
        for d in dirs:
            _fsync_dir(d)

    def delete(self, container: str, name: str) -> None:
        dpath, mpath = self._paths(container, name)
        self.head(container, name)
        try:
            os.unlink(mpath)
            os.unlink(dpath)
        except OSError as e:
            raise from_oserror(e, f"delete {container}/{name}") from None

    def remove_dead_temps(self, container: str) -> List[str]:
        """Remove the temporary files of puts into ``container`` whose process
        died (a live put holds a flock on its own); returns their names."""
        from ..fileutil import is_locked

        out = []
        for sub in ("objects", "meta"):
            d = self._cdir(container) / sub
            for entry in os.scandir(d) if d.is_dir() else ():
                if entry.name.startswith(".tmp-") and not is_locked(entry.path):
                    try:
                        os.unlink(entry.path)
                        out.append(f"{sub}/{entry.name}")
                    except FileNotFoundError:
                        pass
        return out

    def _names(self, container: str) -> Iterator[str]:
        mdir = self._cdir(container) / "meta"
        for entry in os.scandir(mdir):
            fn = entry.name
            if fn.startswith(".tmp-"):
                continue
            if fn.startswith("%%"):
                try:
                    with open(entry.path, "rb") as f:
                        yield json.loads(f.read(64 << 10))["name"]
                except (OSError, ValueError, KeyError):
                    continue
            else:
                yield urllib.parse.unquote(fn, errors="strict")

    def list(self, container: str, prefix: str = "", *, marker: Optional[str] = None,
             limit: Optional[int] = None) -> List[ObjectInfo]:
        names = sorted((n for n in self._names(container) if n.startswith(prefix)),
                       key=lambda n: n.encode("utf-8"))
        if marker is not None:
            mk = marker.encode("utf-8")
            names = [n for n in names if n.encode("utf-8") > mk]
        if limit is not None:
            names = names[: max(0, limit)]
        out = []
        for n in names:
            try:
                out.append(self.head(container, n))
            except NotFoundError:  # deleted while listing
                continue
        return out


def open_store(root: Optional[os.PathLike | str] = None, account: str = "default") -> LocalStore:
    """The local store under ``root`` (default :func:`default_root`) for ``account``."""
    return LocalStore(root if root is not None else default_root(), account)
