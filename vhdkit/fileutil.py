"""Small file helpers shared by the packaging modules and the CLI.

Imported by every writing command, so it keeps to os and fcntl (tempfile,
glob and pathlib would add to every command's start-up; contextlib waits
for the first atomic write, see vhdkit._lazy)."""
from __future__ import annotations

import fcntl
import os

from ._lazy import contextmanager

TYPE_CHECKING = False   # typing is not imported at run time (start-up)
if TYPE_CHECKING:
    from typing import BinaryIO, Iterator, Union


def locked_temp(directory: Union[str, os.PathLike], name: str, suffix: str) -> "tuple[int, str]":
    """Create ``.NAME.XXXX<suffix>`` in ``directory`` and hold an exclusive
    ``flock`` on it for as long as the returned fd is open.  Temporary files
    of the same target left by a killed process (their lock died with it) are
    removed first; those of a live writer are left alone."""
    remove_dead_temps(directory, name, suffix)
    for _ in range(100):
        tmp = os.path.join(os.fspath(directory), f".{name}.{os.urandom(6).hex()}{suffix}")
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"no free temporary name for {name} in {directory}")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        pass        # a file system without flock: the file still works as a temp file
    return fd, tmp


def remove_dead_temps(directory: Union[str, os.PathLike], name: str, suffix: str) -> "list[str]":
    """Remove ``.NAME.*<suffix>`` files in ``directory`` that no live process
    holds locked (see :func:`locked_temp`); return the paths removed."""
    gone = []
    head, d = f".{name}.", os.fspath(directory)
    try:
        names = [e.name for e in os.scandir(d)
                 if e.name.startswith(head) and e.name.endswith(suffix) and len(e.name) >= len(head) + len(suffix)]
    except OSError:
        return gone
    for path in (os.path.join(d, n) for n in names):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if not os.path.isfile(path) or not os.path.samestat(os.fstat(fd), os.lstat(path)):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue    # held: its writer is alive
            os.unlink(path)
            gone.append(path)
        except OSError:
            continue
        finally:
            os.close(fd)
    return gone


def is_locked(path: str) -> bool:
    """True when a live process holds an flock on ``path`` (an upload's lock
    file, a writer's temporary file)."""
    return bool(lock_state(path))


def lock_state(path: str) -> "bool | None":
    """True: a live process holds the lock on ``path``; False: the file
    is there and nobody holds it (its process died); None: no such file."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it
    (/proc/self/status): setting it to read it would, for an instant, give
    files other threads create (a worker's heartbeat, the API server's)
    the wrong mode.  Elsewhere it is set to 077 for that instant, the safe
    direction."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def refuse_existing(path: Union[str, os.PathLike], overwrite: bool) -> None:
    """The overwrite rule of every vhdkit writer of a named file: an existing
    ``path`` is replaced only when ``overwrite`` is true (``-``, stdout, is no
    file).  The error names the override (``overwrite=True``; ``--force`` on
    the command line)."""
    p = os.fspath(path)
    if not overwrite and p != "-" and os.path.lexists(p):
        from .errors import ConflictError

        raise ConflictError(f"{p} exists", override=("overwrite", "replace it"))


@contextmanager
def atomic_fd(path: Union[str, os.PathLike], suffix: str = ".tmp", sync: bool = True) -> Iterator[int]:
    """The mechanism under every vhdkit write of a named file: yield the fd of
    a locked temporary file next to ``path`` (see :func:`locked_temp`); when
    the body succeeds, fsync it (unless ``sync`` is false), rename it over
    ``path`` while still locked, and fsync the directory; on any error remove
    it and leave ``path`` as it was.  The fd is closed on exit.  The file
    gets mode 0666 minus the umask, as a file made by ``cp`` or qemu-img
    would (the temporary file is 0600 until then)."""
    from .interrupts import deferred

    p = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(p))
    fd = -1
    ok = False
    try:
        with deferred():  # a SIGINT/SIGTERM lands after fd and tmp are known: the finally removes tmp
            fd, tmp = locked_temp(parent, os.path.basename(p), suffix)
        os.fchmod(fd, 0o666 & ~current_umask())
        yield fd
        if sync:
            os.fsync(fd)
        os.replace(tmp, p)          # while the lock is held: no cleaner takes it
        ok = True
        if sync:
            dfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    finally:
        if fd >= 0:
            os.close(fd)
            if not ok:
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass


@contextmanager
def atomic_file(path: Union[str, os.PathLike], mode: str = "wb") -> Iterator[BinaryIO]:
    """Write ``path`` atomically: the body writes a temporary file next to it,
    which is fsynced and renamed over ``path`` only if the body succeeds; on
    any error the temporary file is removed and ``path`` is left as it was.
    A temporary file left by a killed writer of the same path is removed by
    the next write of that path."""
    with atomic_fd(path, ".tmp") as fd:
        with open(fd, mode, closefd=False) as f:
            yield f  # type: ignore[misc]
