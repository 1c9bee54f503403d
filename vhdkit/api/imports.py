"""Interoperable image import (Images API 2.6): ``GET /v2/info/import``,
``PUT /v2/images/{id}/stage`` and ``POST /v2/images/{id}/import``.

Both methods put the data through the registry's one upload path (the same
checks, hashing and atomic publication as ``PUT /v2/images/{id}/file``):

- ``glance-direct``: the stage request uploads the data with ``stage`` (the
  image ends ``uploading``, its data stored and checked); the import request
  then makes it ``active`` at once.  Nothing runs in the background.
- ``web-download``: the import request checks the URL (see
  :mod:`.webdownload`), opens the upload (the image turns ``importing``,
  with ``os_glance_import_task``) and answers 202; a thread of this server
  streams the URL's body into the upload.  It ends ``active``, or back in
  ``queued`` when the fetch or the checks fail.  The upload holds the image
  with a lease this server renews: if the server dies meanwhile, ``vhdkit
  cleanup``, the next upload to the image or a registry opened after the
  lease ran out returns the image to ``queued``, removing the partial data.
  On a graceful stop the running downloads are aborted the same way.

Only one store exists, so ``all_stores_must_succeed`` may not be false and
``stores``/``all_stores`` change nothing, as in a Glance without
``enabled_backends``.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import List, Optional, Set

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .auth import caller
from .config import IMPORT_METHODS, Settings
from ..errors import VhdkitError
from .errors import ApiError, status_of
from .http import call, json_object, read_json, registry, settings, write_call
from .images import image_id, receive_data
from .webdownload import Download, FetchFailed, ImportFilter, UrlRefused

log = logging.getLogger("vhdkit.api.import")

GLANCE_DIRECT, WEB_DOWNLOAD = IMPORT_METHODS


class WebDownloads:
    """The web-downloads this process runs: at most ``slots`` at once, each
    in a thread; :meth:`stop` aborts them (their uploads are undone)."""

    def __init__(self, cfg: Settings):
        self.filter = ImportFilter.from_settings(cfg)
        self._cfg = cfg
        self._slots = threading.BoundedSemaphore(max(1, cfg.import_slots))
        self._stop = threading.Event()
        self._threads: List[threading.Thread] = []
        self._running: Set[Download] = set()
        self._lock = threading.Lock()

    def reserve(self) -> bool:
        return self._slots.acquire(blocking=False)

    def release(self) -> None:
        self._slots.release()

    def run(self, writer, url: str) -> None:
        """Fetch ``url`` into ``writer`` (an open registry upload) in a
        thread; the slot taken by :meth:`reserve` is given back at the end."""
        t = threading.Thread(target=self._fetch, args=(writer, url), name=f"web-download {writer.image_id}",
                             daemon=True)
        self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()

    def _fetch(self, writer, url: str) -> None:
        download: Optional[Download] = None
        try:
            download = Download(self.filter, url, self._cfg, self._stop)
            with self._lock:
                self._running.add(download)
            if self._stop.is_set():
                raise FetchFailed("the server is shutting down")
            writer.fill(download, inspect=True)  # a customer-named URL's bytes
            log.info("web-download of image %s finished", writer.image_id)
        except (UrlRefused, FetchFailed) as exc:
            log.warning("web-download of image %s failed: %s", writer.image_id, exc)
        except VhdkitError as exc:   # the data failed the upload's limits or checks
            if status_of(exc) >= 500:
                log.error("web-download of image %s failed: %s", writer.image_id, exc, exc_info=exc)
            else:
                log.warning("web-download of image %s refused: %s", writer.image_id, exc)
        except Exception:  # noqa: BLE001 - the image must not stay importing
            log.exception("web-download of image %s failed", writer.image_id)
        finally:
            writer.abort()   # a no-op after a commit; otherwise the image returns to queued
            if download is not None:
                with self._lock:
                    self._running.discard(download)
                download.close()
            self.release()

    def stop(self, timeout: float = 1.0) -> None:
        """Abort every running download (their images return to queued),
        waiting up to ``timeout`` in all."""
        self._stop.set()
        with self._lock:
            running = list(self._running)
        for d in running:
            d.abort()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))


def enabled_methods(request: Request) -> List[str]:
    return settings(request).enabled_import_methods()


async def info_import(request: Request) -> JSONResponse:
    caller(request)
    return JSONResponse({"import-methods": {"description": "Import methods available.", "type": "array",
                                            "value": enabled_methods(request)}})


async def stage(request: Request) -> Response:
    if GLANCE_DIRECT not in enabled_methods(request):
        raise ApiError(404, "The glance-direct import method is not enabled on this server")
    await receive_data(request, stage=True)
    return Response(status_code=204)


def _import_body(body: dict, methods: List[str]) -> tuple:
    """(method name, uri) of an import request, checked as Glance checks it."""
    method = body.get("method")
    if not isinstance(method, dict) or "name" not in method:
        raise ApiError(400, "Import request requires a 'method' field with a 'name'.")
    name = method["name"]
    if name not in methods:
        raise ApiError(400, f"Unknown import method name {str(name)[:64]!r}; "
                            f"this server offers {', '.join(methods) or 'none'}.")
    for key in ("all_stores_must_succeed", "all_stores"):
        if key in body and not isinstance(body[key], bool):
            raise ApiError(400, f"'{key}' must be boolean value only")
    if body.get("all_stores_must_succeed", True) is False:
        raise ApiError(400, "All_stores_must_succeed can only be set with multiple stores; "
                            "this server has one")
    return name, method.get("uri")


async def import_image(request: Request) -> Response:
    who = caller(request)
    iid = image_id(request)
    name, uri = _import_body(json_object(await read_json(request)), enabled_methods(request))
    reg = registry(request)
    if name == GLANCE_DIRECT:
        await write_call(request, reg.import_staged, who, iid)
        return Response(status_code=202)
    downloads: WebDownloads = request.app.state.web_downloads
    # the image's existence, rights and status first (404/403/409), then the URL (400)
    image = await call(reg.show_image, who, iid)
    if image.status != "queued":
        raise ApiError(409, "Image needs to be in 'queued' state to use 'web-download' method")
    try:
        await call(downloads.filter.check, uri)
    except UrlRefused as exc:
        log.info("web-download for image %s refused: %s", iid, exc)
        shown = uri if isinstance(uri, str) and len(uri) <= 2048 else "(malformed)"
        raise ApiError(400, f"URI for web-download does not pass filtering: {shown}") from None
    if not downloads.reserve():
        raise ApiError(503, "Too many web-download imports are running; try again later", {"Retry-After": "30"})
    try:
        writer = await write_call(request, reg.open_upload, who, iid, into="importing")
    except BaseException:
        downloads.release()
        raise
    try:
        downloads.run(writer, uri)
    except BaseException:
        writer.abort()
        downloads.release()
        raise
    return Response(status_code=202)


ROUTES = [
    Route("/v2/info/import", info_import, methods=["GET"]),
    Route("/v2/images/{image_id}/stage", stage, methods=["PUT"]),
    Route("/v2/images/{image_id}/import", import_image, methods=["POST"]),
]
