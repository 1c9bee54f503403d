"""The ``vhdkit`` command line.

One module per command group registers its commands on :data:`main`:
inspect (info, check, map), convert (create, convert, modify, repair, compare),
chains (snapshot, coalesce, reparent, chain), packaging (compress, decompress, ova, segments,
object), registry (image, member), tasks (task, worker), serve, maintenance (cleanup).

Exit status: 0 success, 1 the operation failed (message on stderr; file
problems included), 2 usage error, 130/143 stopped by SIGINT/SIGTERM
(:mod:`vhdkit.interrupts`).  Results go to stdout, ``--json`` on every command
for scripts.

This package itself imports no click: the commands a script calls per image
(info, check, map, chain, compare, image show, image list) run without it
(:mod:`vhdkit.cli._fast`); :data:`main`, the click group, is loaded on first use
(:mod:`vhdkit.cli._group`).
"""
from __future__ import annotations

import os

_HERE = os.path.dirname(os.path.abspath(__file__))


def _modules() -> list:
    """The command modules (every module here not starting with "_"), each
    registering its commands on `main` when imported."""
    return sorted(f[:-3] for f in os.listdir(_HERE) if f.endswith(".py") and not f.startswith("_"))


def _module_of(name: str):
    """The module that registers command ``name``, read from the modules' own
    ``@main.command("NAME")`` / ``@main.group("NAME")`` lines (derived, not a
    hand-kept map), so that running a command imports only its module:
    start-up time matters for a command-line tool.  None if no module says so."""
    decls = (f'@main.command("{name}")', f'@main.group("{name}")')
    for m in _modules():
        try:
            with open(os.path.join(_HERE, f"{m}.py"), encoding="utf-8") as f:
                text = f.read()
        except OSError:  # no source (e.g. a bytecode-only install): the caller loads every module
            return None
        if any(d in text for d in decls):
            return m
    return None


def __getattr__(name: str):
    """``main`` (the click group) and the group class, loaded on first use."""
    if name in ("main", "_LazyGroup"):
        from . import _group

        return getattr(_group, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
