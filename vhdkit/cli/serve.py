"""CLI commands: serve (see vhdkit/cli/__init__.py)."""
from __future__ import annotations

import os

import click

from . import main
from ._common import data_option, emit, json_option


@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=9292, show_default=True, type=click.IntRange(1, 65535), help="TCP port.")
@data_option("Data directory: the SQLite registry and image data, or with VHDKIT_DATABASE_URL and Swift "
             "blobs only this host's scratch files.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Worker processes (they share the registry's data directory).")
@click.option("--auth", type=click.Choice(["headers", "keystone"]), default=None,
              help="Where the caller's identity comes from: 'headers' (X-Auth-Token ACCOUNT:ROLES or "
                   "X-Tenant-Id/X-Roles; only for a trusted host or behind an authenticating proxy) or "
                   "'keystone' (validate X-Auth-Token against Keystone) (default: $VHDKIT_AUTH or headers).")
@click.option("--keystone-url", default=None, metavar="URL",
              help="Keystone v3 auth URL, e.g. http://keystone:5000/v3 ($VHDKIT_KEYSTONE_URL).")
@click.option("--keystone-user", default=None, metavar="NAME",
              help="Service user that validates tokens ($VHDKIT_KEYSTONE_USER; its password only in "
                   "$VHDKIT_KEYSTONE_PASSWORD).")
@click.option("--keystone-project", default=None, metavar="NAME",
              help="Project of the service user ($VHDKIT_KEYSTONE_PROJECT, default service).")
@click.option("--keystone-cache-seconds", default=None, type=click.FloatRange(0, 86400), metavar="S",
              help="Trust a validated token at most this long, or until it expires "
                   "($VHDKIT_KEYSTONE_CACHE_SECONDS, default 300).")
@click.option("--keystone-role-map", default=None, metavar="KS=VHDKIT,...",
              help="Keystone roles mapped to vhdkit roles ($VHDKIT_KEYSTONE_ROLE_MAP, default "
                   "member=cloudImages:admin,reader=cloudImages:observer).")
@click.option("--keystone-operator-roles", default=None, metavar="ROLE,...",
              help="Keystone roles that, on the admin project, may set owners, make images public and see "
                   "all images ($VHDKIT_KEYSTONE_OPERATOR_ROLES, default admin).")
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@json_option
def serve(host: str, port: int, data_dir, workers: int, log_level: str, as_json: bool,
          **identity) -> None:
    """Serve the registry over HTTP as an OpenStack Images v2 API.

    With --auth headers (the default) callers identify themselves with
    `X-Auth-Token: ACCOUNT:ROLE[,ROLE...]` (or X-Tenant-Id plus X-Roles):
    anyone who reaches the port can claim any account, so use it only on a
    trusted host or behind an authenticating proxy that sets these headers.
    With --auth keystone every request needs a Keystone token, validated
    against --keystone-url (README "Identity").  Limits and timeouts come from the
    VHDKIT_API_* environment variables (see vhdkit/api/config.py; the request
    line plus headers are capped by VHDKIT_API_MAX_REQUEST_HEAD, 64 KiB).

    A browser opening http://HOST:PORT/ gets the web control panel (README
    "Control panel"); the API stays where it is.

    Several hosts may serve one registry: each `vhdkit serve` and `vhdkit
    worker` opens the same database (VHDKIT_DATABASE_URL=postgresql://...)
    and the same blob store in Swift (VHDKIT_BLOB_STORE=swift) itself; see
    docs/deployment.md.

    \b
    Example:
      vhdkit serve --port 9292 --data /srv/images
      glance --os-image-url http://127.0.0.1:9292 --os-auth-token acct:admin image-list
      VHDKIT_KEYSTONE_PASSWORD=... vhdkit serve --auth keystone \\
          --keystone-url http://keystone:5000/v3 --keystone-user glance
    """
    import uvicorn

    _identity_settings(identity)

    from ..home import data_home

    # every uvicorn worker process finds the data directory through VHDKIT_HOME
    os.environ["VHDKIT_HOME"] = os.path.abspath(data_home(data_dir))
    _check_import_filter()
    where = {"url": f"http://{host}:{port}", "data": os.environ["VHDKIT_HOME"],
             "workers": workers}
    emit(where, as_json, lambda w: f"vhdkit: serving {w['data']} at {w['url']} ({w['workers']} worker(s))")
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


def _identity_settings(flags: dict) -> None:
    """Put the identity flags given into the environment (every uvicorn worker
    reads its settings there, vhdkit/api/config.py) and check the result."""
    from ..api.auth import provider_for
    from ..api.config import Settings
    from ..errors import InvalidInputError

    for name, value in flags.items():
        if value is not None:
            os.environ[Settings.ENV[name]] = str(value)
    try:
        provider_for(Settings.from_env())
    except (ValueError, ImportError) as exc:
        raise InvalidInputError(f"identity settings: {exc}") from None


def _check_import_filter() -> None:
    """The web-download URL filter (VHDKIT_IMPORT_*), checked before the server starts."""
    from ..api.config import Settings
    from ..api.webdownload import ImportFilter
    from ..errors import InvalidInputError

    try:
        ImportFilter.from_settings(Settings.from_env())
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None
