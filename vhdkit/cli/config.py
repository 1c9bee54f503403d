"""CLI commands: config show (see vhdkit/cli/__init__.py)."""
from __future__ import annotations

from typing import Optional

from . import main
from ._common import data_option, emit, identity_options, json_option, settings


@main.group("config")
def config_group() -> None:
    """vhdkit's settings (the table: docs/configuration.md)."""


def _human(d: dict) -> str:
    rows = [(name, "" if s["value"] is None else str(s["value"]), s["source"], s["env"])
            for name, s in d["settings"].items()]
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"configuration file: {d['file'] or '(none)'}"]
    lines += [f"{n:<{w[0]}}  {v:<{w[1]}}  {src:<{w[2]}}  {env}" for n, v, src, env in rows]
    return "\n".join(lines)


@config_group.command("show")
@data_option()
@identity_options
@json_option
def config_show(data_dir: Optional[str], account: Optional[str], roles: Optional[str], as_json: bool) -> None:
    """Print every setting's effective value and where it came from.

    Each value comes from the first of: a flag, the environment (VHDKIT_*),
    the configuration file ($VHDKIT_CONFIG, else
    $XDG_CONFIG_HOME/vhdkit/config.toml if it exists), the default; the
    source column says which.  Secrets (passwords, keys, a database URL)
    are masked.

    \b
    Example:
      vhdkit config show
      VHDKIT_STORE=swift+http://proxy:8080 vhdkit config show --json
    """
    from ..config import config_file

    cfg = settings(data_dir=data_dir, account=account, roles=roles)
    emit({"file": config_file(), "settings": cfg.shown()}, as_json, _human)
