"""vhdkit: VHD/OVA disk-image toolkit with a native C core.

Format layer (:mod:`vhdkit.vhd`): open/read/check/create/convert VHDs.
Packaging: :mod:`vhdkit.streams`, :mod:`vhdkit.ova`, :mod:`vhdkit.segments`,
:mod:`vhdkit.store`.  Registry: :mod:`vhdkit.registry`.  Pipeline:
:mod:`vhdkit.pipeline`.  HTTP API: :mod:`vhdkit.api`.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import VhdkitError  # noqa: F401


def __getattr__(name):
    # The format API is re-exported lazily so that importing vhdkit (e.g. for
    # the registry alone) does not require the native build.
    if name.startswith("__"):
        raise AttributeError(name)
    import importlib

    vhd = importlib.import_module(".vhd", __name__)
    try:
        return getattr(vhd, name)
    except AttributeError:
        raise AttributeError(f"module 'vhdkit' has no attribute {name!r}") from None
