"""The ASGI application: routes of every resource, error handlers, negotiation.

Handlers are thin: they turn HTTP into registry calls (run in worker threads,
since the registry is blocking SQLite and file I/O) and registry results into
the Images v2 JSON shapes.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import anyio

from starlette.applications import Starlette
from starlette.middleware import Middleware

from . import images, imports, members, objects, panel, schemas, tasks, versions
from .auth import IdentityMiddleware, provider_for
from .config import Settings
from .errors import EXCEPTION_HANDLERS
from .http import NegotiationMiddleware

#: uploads that may stream at once per process
UPLOAD_SLOTS = 16


def create_app(settings: Optional[Settings] = None, registry=None) -> Starlette:
    """The app over ``registry`` (default: a Registry opened on ``settings.data_dir``).
    Without ``settings``, those of this process's environment and configuration file."""
    settings = settings or Settings.from_env()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        own = registry is None
        app.state.registry = _open_registry(settings) if own else registry
        # Short writes queue one at a time (see http.write_call); uploads hold a
        # worker thread each while their data flows, so they get a pool of their
        # own and slow uploads cannot starve every other request.
        app.state.write_limiter = anyio.CapacityLimiter(1)
        app.state.upload_limiter = anyio.CapacityLimiter(UPLOAD_SLOTS)
        app.state.web_downloads = imports.WebDownloads(settings)
        try:
            yield
        finally:
            app.state.web_downloads.stop()
            if own:
                close = getattr(app.state.registry, "close", None)
                if close is not None:
                    close()

    app = Starlette(
        routes=(versions.ROUTES + schemas.ROUTES + images.ROUTES + imports.ROUTES + members.ROUTES + tasks.ROUTES
                + objects.ROUTES + panel.ROUTES),
        middleware=[Middleware(panel.PanelMiddleware), Middleware(NegotiationMiddleware), Middleware(IdentityMiddleware)],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    # Glance answers a path it does not know with 404 (``GET /v2/images/`` is
    # no image), never with a redirect to a neighbouring route
    app.router.redirect_slashes = False
    app.state.settings = settings
    app.state.identity = provider_for(settings)
    if registry is not None:
        app.state.registry = registry
    return app


def _open_registry(settings: Settings):
    """The registry this host serves: every API host and worker opens the same
    database and blob store itself (docs/deployment.md)."""
    from ..registry import Registry
    return Registry(settings.data_dir, size_cap=settings.max_image_size, config=settings)


def app_factory() -> Starlette:
    """Entry point for ``uvicorn --factory`` run by hand: the settings of the
    environment and configuration file (``vhdkit serve`` hands its workers
    theirs, vhdkit/api/protocol.py)."""
    return create_app(Settings.from_env())
