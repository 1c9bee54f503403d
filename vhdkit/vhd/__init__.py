"""The format layer: the Python face of the native VHD core.

Submodules: :mod:`.read` (open, info, check, map, probe), :mod:`.write`
(create, convert, modify, repair, compare), :mod:`.chain` (snapshot, coalesce,
reparent).  Each defines ``__all__``; everything is re-exported here and from
the top-level :mod:`vhdkit` package.
"""
from __future__ import annotations

from .read import *  # noqa: F401,F403

#: Imported on first use of one of their names (start-up time: `vhdkit info`
#: or `check` needs only .read).  ``__all__`` (so ``from vhdkit.vhd import *``),
#: ``dir()`` and ``help()`` name all three modules' names (asking imports them).
_LAZY = (".write", ".chain")
_PUBLIC = (".read", ".write", ".chain")


def __getattr__(name):
    """.write's and .chain's names, loaded on first use."""
    if name.startswith("_") and name != "__all__" or f".{name}" in _LAZY:
        # a submodule or a private name: `from . import write` then imports the submodule itself
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    if name == "__all__":
        return [n for m in _PUBLIC for n in importlib.import_module(m, __name__).__all__]
    for m in _LAZY:
        mod = importlib.import_module(m, __name__)
        if name in getattr(mod, "__all__", ()):
            return getattr(mod, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    """This module's names and the whole format API."""
    return sorted(set(globals()) | set(__getattr__("__all__")))
