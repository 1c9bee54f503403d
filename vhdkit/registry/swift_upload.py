"""An upload of image data into Swift (see :mod:`.blobs`): the chunks are
hashed as a local upload's are and handed to a thread that streams them as a
segmented large object.  Imported only when the blob store is Swift and an
upload starts (threads and queues are no start-up cost of a registry read).
"""
from __future__ import annotations

import queue
import threading

TYPE_CHECKING = False   # typing is not imported at run time
if TYPE_CHECKING:  # pragma: no cover
    from typing import Optional

from ..errors import IntegrityError, StorageError, VhdkitError
from .blobs import BlobStore, Upload


class _Abort(Exception):
    pass


_ABORT = object()


class _QueueReader:
    """The read side of an upload to Swift: chunks handed over by ``feed``."""

    def __init__(self, q: "queue.Queue") -> None:
        self.q = q
        self.buf = memoryview(b"")
        self.eof = False

    def read(self, n: int = -1) -> bytes:
        while not self.buf:
            if self.eof:
                return b""
            item = self.q.get()
            if item is None:
                self.eof = True
                return b""
            if item is _ABORT:
                raise _Abort("upload aborted")
            self.buf = memoryview(item)
        k = len(self.buf) if n is None or n < 0 else min(n, len(self.buf))
        out, self.buf = bytes(self.buf[:k]), self.buf[k:]
        return out


class SwiftUpload(Upload):
    """An upload into Swift: ``feed`` hashes as the local upload does and hands the
    chunks to a thread that streams them with :func:`vhdkit.pack.segments.split`;
    ``publish`` waits for the manifest.  The empty ``tmp/<token>.part`` stays
    locked meanwhile (liveness for cleanup)."""

    def __init__(self, store: BlobStore, image_id: str, token: str):
        super().__init__(store, image_id, token)
        assert store.remote is not None
        self.remote = store.remote
        self.tail = b""
        self._q: "queue.Queue" = queue.Queue(maxsize=4)
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None
        self._man = None

    def _run(self) -> None:
        from ..pack import segments

        try:
            self.remote.ensure_container()
            self._man = segments.split(self.remote.store, self.remote.container, self.remote.name(self.rel),
                                       _QueueReader(self._q), segment_size=self.remote.segment_size)  # type: ignore
        except BaseException as e:  # noqa: BLE001 - reported by _emit / publish
            self._error = e
            while True:  # unblock a producer waiting on a full queue
                try:
                    self._q.get_nowait()
                except queue.Empty:
                    break

    def _hand_over(self, item) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        while True:
            if self._error is not None:
                raise self._failure()
            try:
                self._q.put(item, timeout=0.5)
                return
            except queue.Full:
                if not self._thread.is_alive():
                    raise self._failure()

    def _failure(self) -> BaseException:
        """The uploading thread's error: a vhdkit error as it is (a Swift that
        does not answer stays UnavailableError), anything else a StorageError."""
        if isinstance(self._error, VhdkitError):
            return self._error
        return StorageError(f"storing image data in Swift: uploader stopped ({self._error})")

    def _emit(self, b: bytes) -> None:
        assert self._md5 is not None and self._sha is not None
        self._md5.q.put(b)
        self._sha.q.put(b)
        self.tail = (self.tail + b[-512:])[-512:]
        self._hand_over(b)

    def publish(self) -> str:
        self._hand_over(None)
        assert self._thread is not None
        self._thread.join()
        if self._error is not None:
            raise self._failure()
        if self._man is None or self._man.size != self.size:
            raise IntegrityError(f"blob {self.rel}: Swift holds {getattr(self._man, 'size', None)} bytes, "
                                 f"{self.size} were written")
        self.published = True
        return self.rel

    def discard(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            try:
                self._q.put(_ABORT, timeout=5)
            except queue.Full:
                pass
            self._thread.join(timeout=60)
        self.remote.remove(self.rel)
        self.store.unlink(self.part)

    def release(self) -> None:
        super().release()
        if self.published:
            self.store.unlink(self.part)  # the lock file is no longer needed
