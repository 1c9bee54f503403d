"""vhdkit.vhd.chain (see vhdkit/vhd/__init__.py)."""
from __future__ import annotations

__all__: list = []
