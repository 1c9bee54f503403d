"""CLI commands: chains (see vhdkit/cli/__init__.py)."""
from __future__ import annotations

import click  # noqa: F401

from . import main  # noqa: F401
