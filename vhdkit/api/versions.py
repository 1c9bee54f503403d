"""Version discovery at ``/`` (300 Multiple Choices, as Glance) and ``/versions``;
``/`` answers a browser (Accept: text/html) with the control panel instead."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

# Versions whose behaviour this server implements: 2.1 members, 2.2 tags, 2.3
# deactivate/reactivate, 2.4 tasks, 2.5 community visibility, 2.6
# interoperable import (glance-direct, web-download), 2.7 hidden images and
# os_hash_*.  Not offered: multiple stores (2.8+), copy-image, per-image tasks
# (2.12), the cache API, locations (2.16/2.17).
CURRENT = "v2.7"
SUPPORTED = ["v2.6", "v2.5", "v2.4", "v2.3", "v2.2", "v2.1", "v2.0"]


def _document(request: Request) -> dict:
    base = str(request.base_url).rstrip("/")
    return {"versions": [
        {"id": vid, "status": "CURRENT" if vid == CURRENT else "SUPPORTED",
         "links": [{"rel": "self", "href": f"{base}/v2/"}]}
        for vid in [CURRENT] + SUPPORTED
    ]}


async def root(request: Request) -> Response:
    """The version document for API clients; the control panel for a browser."""
    from . import panel
    if panel.prefers_html(request):
        return await panel.index(request)
    return JSONResponse(_document(request), status_code=300)


async def versions(request: Request) -> JSONResponse:
    return JSONResponse(_document(request))


ROUTES = [
    Route("/", root, methods=["GET"]),
    Route("/versions", versions, methods=["GET"]),
]
