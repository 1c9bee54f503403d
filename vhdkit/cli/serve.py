"""CLI commands: serve (see vhdkit/cli/__init__.py)."""
from __future__ import annotations

import os

import click

from . import main
from ._common import data_option, emit, json_option


@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=9292, show_default=True, type=click.IntRange(1, 65535), help="TCP port.")
@data_option("Registry data directory.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Worker processes (they share the registry's data directory).")
@click.option("--registry", "registry_url", default=None, metavar="URL",
              help="Forward every registry call to the registry host at URL (another `vhdkit serve`) instead "
                   "of opening a registry here; needs VHDKIT_SERVICE_TOKEN and VHDKIT_BLOB_STORE=swift "
                   "(default: $VHDKIT_REGISTRY_URL).")
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@json_option
def serve(host: str, port: int, data_dir, workers: int, registry_url, log_level: str, as_json: bool) -> None:
    """Serve the registry over HTTP as an OpenStack Images v2 API.

    Callers identify themselves with `X-Auth-Token: ACCOUNT:ROLE[,ROLE...]`
    (or X-Tenant-Id plus X-Roles); put an authenticating proxy in front for
    anything but a trusted network.  Limits and timeouts come from the
    VHDKIT_API_* environment variables (see vhdkit/api/config.py; the request
    line plus headers are capped by VHDKIT_API_MAX_REQUEST_HEAD, 64 KiB).

    A browser opening http://HOST:PORT/ gets the web control panel (README
    "Control panel"); the API stays where it is.

    With --registry URL this host keeps no registry: it answers the same API
    by forwarding each call to the registry host's internal routes, and
    streams image data to and from Swift itself, so several API hosts can
    serve one registry (see docs/deployment.md); --data then holds only
    scratch files.

    \b
    Example:
      vhdkit serve --port 9292 --data /srv/images
      glance --os-image-url http://127.0.0.1:9292 --os-auth-token acct:admin image-list
    """
    import uvicorn

    from ..home import data_home

    # every uvicorn worker process finds the data directory through VHDKIT_HOME
    os.environ["VHDKIT_HOME"] = os.path.abspath(data_home(data_dir))
    registry_url = registry_url or os.environ.get("VHDKIT_REGISTRY_URL") or None
    if registry_url:
        _check_forwarding(registry_url)
        os.environ["VHDKIT_REGISTRY_URL"] = registry_url
    _check_import_filter()
    where = {"url": f"http://{host}:{port}", "data": os.environ["VHDKIT_HOME"],
             "workers": workers, "registry": registry_url or "local"}
    emit(where, as_json, lambda w: f"vhdkit: serving {w['data']} at {w['url']} ({w['workers']} worker(s))"
         + (f", forwarding to the registry host {w['registry']}" if registry_url else ""))
    uvicorn.run(
        "vhdkit.api.app:app_factory",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=log_level in ("info", "debug"),
        timeout_keep_alive=15,
        timeout_graceful_shutdown=10,
        server_header=False,
        proxy_headers=False,
        http="vhdkit.api.protocol:BoundedHttpToolsProtocol",
    )


def _check_import_filter() -> None:
    """The web-download URL filter (VHDKIT_IMPORT_*), checked before the server starts."""
    from ..api.config import Settings
    from ..api.webdownload import ImportFilter
    from ..errors import InvalidInputError

    try:
        ImportFilter.from_settings(Settings.from_env())
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None


def _check_forwarding(url: str) -> None:
    """What an API host that forwards to a registry host needs, checked before it starts."""
    from ..errors import InvalidInputError

    if not url.startswith(("http://", "https://")):
        raise InvalidInputError(f"--registry {url!r} is not an http(s):// URL")
    if not os.environ.get("VHDKIT_SERVICE_TOKEN"):
        raise InvalidInputError("--registry needs the registry host's service token in VHDKIT_SERVICE_TOKEN")
    from ..registry.data import MAX_LEASE_S, MIN_LEASE_S

    lease = os.environ.get("VHDKIT_API_UPLOAD_LEASE") or "60"
    try:
        ok = MIN_LEASE_S <= float(lease) <= MAX_LEASE_S
    except ValueError:
        ok = False
    if not ok:
        raise InvalidInputError(f"VHDKIT_API_UPLOAD_LEASE {lease!r}: expected seconds from {MIN_LEASE_S:g} "
                                f"to {MAX_LEASE_S:g}")
    spec = os.environ.get("VHDKIT_BLOB_STORE", "")
    if not (spec == "swift" or spec.startswith("swift+")):
        raise InvalidInputError("--registry needs VHDKIT_BLOB_STORE=swift (the registry host's settings): image "
                                "data must be in Swift for several API hosts to share it")
