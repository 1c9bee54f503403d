"""The format layer: the Python face of the native VHD core.

Submodules: :mod:`.read` (open, info, check, map, probe), :mod:`.write`
(create, convert, modify, repair, compare), :mod:`.chain` (snapshot, coalesce,
reparent).  Each defines ``__all__``; everything is re-exported here and from
the top-level :mod:`vhdkit` package.
"""
from __future__ import annotations

from .read import *  # noqa: F401,F403

#: Imported on first use of one of their names (start-up time: `vhdkit info`
#: or `check` needs only .read); ``from vhdkit.vhd import *`` still gives
#: .read's and .write's names, as when .write was imported eagerly.
_LAZY = (".write", ".chain")
_STAR = (".read", ".write")


def __getattr__(name):
    import importlib

    if name == "__all__":
        return [n for m in _STAR for n in importlib.import_module(m, __name__).__all__]
    if name.startswith("__"):
        raise AttributeError(name)
    for m in _LAZY:
        mod = importlib.import_module(m, __name__)
        if name in getattr(mod, "__all__", ()):
            return getattr(mod, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
