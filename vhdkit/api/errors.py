"""JSON error bodies with the status codes Glance uses.

Every error the API answers with has the shape OpenStack clients parse::

    {"error": {"code": 404, "title": "Not Found", "message": "404 Not Found: ..."}}

python-glanceclient joins the ``message`` of every top-level object; openstacksdk
reads the first object's ``message``.  The message starts with the status line,
as the text of Glance's own error pages does, so ``glance`` prints the same
``HTTP 404 Not Found: ...`` for us as for Glance.  A :class:`~vhdkit.errors.VhdkitError`
raised by the registry becomes its ``http_status``; anything else is a 500 whose
body does not leak internals.
"""
from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Mapping, Optional

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from ..errors import (DatabaseUnavailableError, NoSpaceError, OutOfSpaceError, UnavailableError, VhdkitError,
                      from_oserror, public_message)

log = logging.getLogger("vhdkit.api")


class ApiError(Exception):
    """An HTTP error answered as a JSON body."""

    def __init__(self, status: int, message: str, headers: Optional[Mapping[str, str]] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def error_response(status: int, message: str, headers: Optional[Mapping[str, str]] = None,
                   extra: Optional[Mapping[str, str]] = None) -> JSONResponse:
    title = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    body = {"error": {"code": status, "title": title, "message": f"{status} {title}: {message}", **(extra or {})}}
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def status_of(exc: VhdkitError) -> int:
    status = getattr(exc, "http_status", 500) or 500
    return status if 400 <= status < 600 else 500


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, exc.headers)


async def _vhdkit_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, VhdkitError)
    status = status_of(exc)
    if status >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc, exc_info=exc)
    if status == 500:  # an unexpected fault of the server: its details (paths, errno texts) stay in the log
        return error_response(status, "The server failed to complete the request; see its log.")
    if isinstance(exc, UnavailableError):  # which host or file did not answer stays in the log
        return error_response(status, exc.PUBLIC, {"Retry-After": "5"})
    if isinstance(exc, NoSpaceError):  # behind the API a full file system is always the service's own
        return error_response(status, OutOfSpaceError.MESSAGE)
    return error_response(status, getattr(exc, "PUBLIC", None) or public_message(exc.message))


async def _starlette_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    if exc.status_code == 404:
        detail = f"The resource could not be found: {request.url.path}"
    elif exc.status_code == 405:
        detail = f"Method {request.method} is not allowed on {request.url.path}"
    return error_response(exc.status_code, detail, exc.headers)


def database_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` is the registry database's driver failing to reach or
    use its database (a connection refused or lost, a file that cannot be
    opened): the call did not happen, a later one may succeed."""
    import sqlite3

    if isinstance(exc, sqlite3.OperationalError):
        return True
    return any(c.__name__ in ("OperationalError", "InterfaceError") and c.__module__.split(".")[0]
               in ("sqlalchemy", "psycopg", "psycopg2") for c in type(exc).__mro__)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    if database_unreachable(exc):
        log.error("%s %s: registry database unavailable", request.method, request.url.path, exc_info=exc)
        return error_response(DatabaseUnavailableError.http_status, DatabaseUnavailableError.PUBLIC,
                              {"Retry-After": "5"})
    if isinstance(exc, OSError) and isinstance(from_oserror(exc, "", service=True), NoSpaceError):
        log.error("%s %s: out of space", request.method, request.url.path, exc_info=exc)
        return error_response(OutOfSpaceError.http_status, OutOfSpaceError.MESSAGE)
    log.error("%s %s crashed", request.method, request.url.path, exc_info=exc)
    return error_response(500, "The server failed to complete the request; see its log.")


EXCEPTION_HANDLERS = {
    ApiError: _api_error,
    VhdkitError: _vhdkit_error,
    StarletteHTTPException: _starlette_error,
    Exception: _unexpected,
}
