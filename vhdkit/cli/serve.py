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
    against --keystone-url (README "Identity").  Every other setting (limits,
    timeouts, the import filter) comes from the environment or the
    configuration file: docs/configuration.md, `vhdkit config show`.

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
    from ..api.protocol import ServeConfig, run

    settings = _settings(data_dir, identity)
    where = {"url": f"http://{host}:{port}", "data": settings.data_dir, "workers": workers}
    emit(where, as_json, lambda w: f"vhdkit: serving {w['data']} at {w['url']} ({w['workers']} worker(s))")
    # every worker process receives these settings with uvicorn's configuration
    run(ServeConfig(
        settings,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=log_level in ("info", "debug"),
        timeout_keep_alive=15,
        timeout_graceful_shutdown=10,
        server_header=False,
        proxy_headers=False,
    ))


def _settings(data_dir, identity: dict):
    """The server's settings (flags over environment over file), checked
    before it starts: identity, the web-download URL filter, the upload lease."""
    from ..api.auth import provider_for
    from ..api.webdownload import ImportFilter
    from ..config import load
    from ..errors import InvalidInputError

    settings = load(flags=dict(identity, data_dir=data_dir))
    settings = settings.with_flags(data_dir=os.path.abspath(settings.data_dir))
    try:
        provider_for(settings)
    except (ValueError, ImportError) as exc:
        raise InvalidInputError(f"identity settings: {exc}") from None
    try:
        ImportFilter.from_settings(settings)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None
    from ..registry.data import check_upload_lease

    check_upload_lease(settings.upload_lease)   # a lease out of bounds: refused before the server starts
    return settings
