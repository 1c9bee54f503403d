"""The format layer: the Python face of the native VHD core.

Submodules: :mod:`.read` (open, info, check, map, probe), :mod:`.write`
(create, convert, modify, repair, compare), :mod:`.chain` (snapshot, coalesce,
reparent).  Each defines ``__all__``; everything is re-exported here and from
the top-level :mod:`vhdkit` package.
"""
from __future__ import annotations

from .read import *  # noqa: F401,F403
from .write import *  # noqa: F401,F403

# .chain is imported on first use of one of its names (start-up time: a
# convert or a download does not need it).


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    import importlib
    chain = importlib.import_module(".chain", __name__)
    if name in getattr(chain, "__all__", ()):
        return getattr(chain, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
