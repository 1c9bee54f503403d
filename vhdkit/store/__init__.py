"""The blob stores behind one interface (:class:`ObjectStore`, :mod:`.base`):
the local file store (:mod:`.local`, the embedded default) and Swift
(:mod:`.swift`, imported only when configured), and the one factory that picks
between them (:func:`open_configured_store`)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional

from .base import (MAX_CONTAINER_NAME, MAX_OBJECT_NAME, ObjectInfo, ObjectReader, ObjectStore,
                   validate_container_name, validate_metadata, validate_object_name)
from .local import LocalStore, default_root, open_store

__all__ = ["ObjectInfo", "ObjectReader", "ObjectStore", "LocalStore", "open_store", "open_configured_store",
           "default_root", "validate_container_name", "validate_object_name", "validate_metadata",
           "MAX_CONTAINER_NAME", "MAX_OBJECT_NAME"]


def open_configured_store(account: str, home: Optional[os.PathLike | str] = None,
                          env: Optional[Mapping[str, str]] = None, config=None) -> ObjectStore:
    """The one factory of object stores: the store the configuration names for
    ``account``.  Swift when the ``store`` setting is a ``swift+http(s)://``
    URL (:mod:`vhdkit.store.swift`, imported only then), a directory for
    ``dir:PATH``, else ``objects`` in the data directory (``home``, default the
    configured one).  ``config`` is a :class:`vhdkit.config.Config` (default:
    the settings of ``env``, itself defaulting to this process's)."""
    from ..config import data_home, load

    cfg = config if config is not None else load(env=env)
    kind, where = cfg.object_store_kind()
    if kind == "swift":
        from .swift import SwiftConfig, SwiftStore

        return SwiftStore(SwiftConfig.from_config(cfg), account)
    root = Path(where) if kind == "dir" else Path(data_home(home, cfg)) / "objects"
    return LocalStore(root, account)
