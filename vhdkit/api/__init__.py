"""The HTTP API: OpenStack Images v2 over the registry (see vhdkit/api/app.py)."""
from __future__ import annotations

from .app import app_factory, create_app
from .config import Settings

__all__ = ["create_app", "app_factory", "Settings"]
