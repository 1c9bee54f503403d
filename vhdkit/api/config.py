"""The API server's settings: the one configuration (:mod:`vhdkit.config`).

``vhdkit serve`` builds it once and hands it to each of its worker processes
(see vhdkit/cli/serve.py); ``create_app(Settings(...))`` takes one directly.
"""
from __future__ import annotations

from ..config import IMPORT_METHODS, Config as Settings

__all__ = ["IMPORT_METHODS", "Settings"]
