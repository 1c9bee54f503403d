"""The format layer: the Python face of the native VHD core.

Submodules: :mod:`.read` (open, info, check, map, probe), :mod:`.write`
(create, convert, modify, repair, compare), :mod:`.chain` (snapshot, coalesce,
reparent).  Each defines ``__all__``; everything is re-exported here and from
the top-level :mod:`vhdkit` package.
"""
from __future__ import annotations

from . import read as _read
from . import write as _write
from .read import *  # noqa: F401,F403
from .write import *  # noqa: F401,F403

# .chain is imported on first use of one of its names (start-up time: a
# convert or a download does not need it); ``__all__`` and ``dir()`` name
# its names too (asking for them imports it).


def _chain():
    import importlib
    return importlib.import_module(".chain", __name__)


def __getattr__(name):
    if name == "__all__":
        return [*_read.__all__, *_write.__all__, *_chain().__all__]
    if name.startswith("__"):
        raise AttributeError(name)
    chain = _chain()
    if name in getattr(chain, "__all__", ()):
        return getattr(chain, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__getattr__("__all__")))
