"""The hashes of image data as it is written: md5 and sha512, each fed in its
own thread (hashlib releases the GIL), so one pass over the data computes
both beside the writer.

Imported only where data is hashed (an upload, :func:`.blobs.file_digest`):
threading, queue and hashlib (OpenSSL) are start-up cost a registry that only
reads (``vhdkit image show|list|download``) does not pay.
"""
from __future__ import annotations

import hashlib
import queue
import threading

TYPE_CHECKING = False   # typing is not imported at run time
if TYPE_CHECKING:  # pragma: no cover
    from typing import Optional, Tuple


class Hasher(threading.Thread):
    """Feeds the chunks put on :attr:`q` to one hash; None ends it."""

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


def hashers() -> "Tuple[Hasher, Hasher]":
    """Started md5 and sha512 hashers."""
    return Hasher(hashlib.md5()), Hasher(hashlib.sha512())
