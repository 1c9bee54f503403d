"""The format layer: the Python face of the native VHD core.

Submodules: :mod:`.read` (open, info, check, map, probe), :mod:`.write`
(create, convert, modify, repair, compare), :mod:`.chain` (snapshot, coalesce,
reparent).  Each defines ``__all__``; everything is re-exported here and from
the top-level :mod:`vhdkit` package.
"""
from __future__ import annotations

from .read import *  # noqa: F401,F403
from .write import *  # noqa: F401,F403
from .chain import *  # noqa: F401,F403
