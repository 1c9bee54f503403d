"""Where vhdkit keeps its data: the one definition of the default data directory.

The data directory holds the registry (``registry.db``, ``blobs/``), the
embedded object store (``objects/``) and task work directories (``work/``).
Every command, the API server, workers, cleanup and the pipeline find it
through :func:`data_home`.  Imported by the CLI on every registry command, so
it keeps to ``os``.
"""
from __future__ import annotations

import os
from typing import Optional, Union

#: The environment variable naming the data directory.
ENV = "VHDKIT_HOME"


def data_home(explicit: Optional[Union[str, "os.PathLike[str]"]] = None) -> str:
    """``explicit`` if given, else ``$VHDKIT_HOME``, else the per-user
    ``$XDG_DATA_HOME/vhdkit`` (``~/.local/share/vhdkit`` when XDG_DATA_HOME is
    unset or relative, as the XDG base directory specification says) -- never
    the current directory, so every command run anywhere by one user finds the
    same registry."""
    if explicit:
        return os.fspath(explicit)
    env = os.environ.get(ENV)
    if env:
        return env
    xdg = os.environ.get("XDG_DATA_HOME", "")
    if not os.path.isabs(xdg):
        xdg = os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(xdg, "vhdkit")
