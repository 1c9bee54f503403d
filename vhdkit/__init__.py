"""vhdkit: VHD/OVA disk-image toolkit with a native C core.

The format API is here at the top level (``vhdkit.__all__`` lists it):
``open`` (a VHD's virtual disk as a binary stream, ``"r"`` or ``"r+"``),
``info``, ``check``, ``map``, ``probe``, ``create``, ``convert``, ``modify``,
``repair``, ``compare``, ``snapshot``, ``coalesce``, ``coalesce_into_parent``,
``reparent``, ``chain_info`` and their result types; errors derive from
``VhdkitError`` (:mod:`vhdkit.errors`).

Packaging: :mod:`vhdkit.pack.streams`, :mod:`vhdkit.pack.ova`, :mod:`vhdkit.pack.segments`,
:mod:`vhdkit.store`.  Registry: :mod:`vhdkit.registry`.  Pipeline:
:mod:`vhdkit.tasks.pipeline`.  HTTP API: :mod:`vhdkit.api`.
"""
from __future__ import annotations

__version__ = "0.1.0"

import sys as _sys

from .errors import VhdkitError  # noqa: F401

# The format API is loaded on first use, so that importing vhdkit (e.g. for
# the registry alone) neither needs the native build nor pays its start-up.


def _submodule(name: str):
    """``vhdkit.NAME``, imported (``__import__``: importlib costs start-up)."""
    __import__(f"{__name__}.{name}")
    return _sys.modules[f"{__name__}.{name}"]


def _format_api():
    return _submodule("vhd")


def __getattr__(name):
    """The format API (``vhdkit.vhd``), loaded on first use."""
    if name == "__all__":
        return ["VhdkitError", *_format_api().__all__]
    if name.startswith("__"):
        raise AttributeError(name)
    try:  # a submodule (`from vhdkit import ova`): it, not the format API, is wanted
        return _submodule(name)
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
    try:
        value = getattr(_format_api(), name)
    except AttributeError:
        raise AttributeError(f"module 'vhdkit' has no attribute {name!r}") from None
    globals()[name] = value  # found once: later lookups are plain attribute reads
    return value


def __dir__():
    """This module's names and the whole public API."""
    return sorted(set(globals()) | set(__getattr__("__all__")))
