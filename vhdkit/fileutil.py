"""Small file helpers shared by the packaging modules and the CLI."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator, Union


@contextmanager
def atomic_file(path: Union[str, os.PathLike], mode: str = "wb") -> Iterator[BinaryIO]:
    """Write ``path`` atomically: the body writes a temporary file next to it,
    which is fsynced and renamed over ``path`` only if the body succeeds; on
    any error the temporary file is removed and ``path`` is left as it was."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=parent)
    try:
        with open(fd, mode) as f:
            yield f  # type: ignore[misc]
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
        tmp = None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
