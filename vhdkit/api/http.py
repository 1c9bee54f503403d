"""Request plumbing shared by every resource: bounded JSON bodies, content
types, content negotiation, and the upload stream with its timeouts."""
from __future__ import annotations

import functools
import io
import json
import re
import time
from typing import List, Optional, Tuple
from urllib.parse import urlencode

import anyio
import anyio.from_thread
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from ..registry.models import has_control, property_name_problem
from .config import Settings
from .errors import ApiError, error_response

JSON = "application/json"
OCTET = "application/octet-stream"
JSON_PATCH = "application/openstack-images-v2.1-json-patch"
#: Glance's two PATCH dialects: 2.1 is RFC 6902 (``{"op": "add", "path": "/x",
#: "value": ...}``); 2.0, an earlier JSON-patch draft, names the operation by
#: its key (``{"add": "/x", "value": ...}``) and is what Tempest sends.
JSON_PATCH_20 = "application/openstack-images-v2.0-json-patch"
JSON_PATCHES = (JSON_PATCH_20, JSON_PATCH)
#: the control panel's static files (vhdkit/api/panel.py), exempt from JSON-only negotiation
PANEL_PREFIX = "/panel/"


def settings(request: Request) -> Settings:
    return request.app.state.settings


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def require_content_type(request: Request, *allowed: str, optional: bool = False) -> None:
    """415 unless the body's Content-Type is one of ``allowed`` (absent is
    accepted when ``optional``)."""
    got = media_type(request)
    if got in allowed or (optional and not got):
        return
    # Accept-Patch names what a PATCH takes (RFC 5789), as Glance sends it
    headers = {"Accept-Patch": ", ".join(allowed)} if request.method == "PATCH" else None
    raise ApiError(415, f"Content-Type {got or '(none)'!r} is not supported here; use {' or '.join(allowed)}",
                   headers)


def declared_length(request: Request) -> Optional[int]:
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 19:
        raise ApiError(400, "Content-Length is not a number")
    return int(raw)


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)


def json_depth(body: bytes) -> int:
    """Deepest nesting of arrays/objects in ``body`` (strings skipped)."""
    depth = deepest = 0
    for ch in _STRING.sub(b"", body):
        if ch in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in b"]}":
            depth -= 1
    return deepest


async def read_json(request: Request, *, content_types: Tuple[str, ...] = (JSON,)):
    """The request body parsed as JSON, within the size and nesting limits."""
    require_content_type(request, *content_types, optional=content_types == (JSON,))
    limit = settings(request).max_json_body
    length = declared_length(request)
    if length is not None and length > limit:
        raise ApiError(413, f"The request body is {length} bytes; at most {limit} are accepted")
    chunks, got = [], 0
    timeout = settings(request).upload_idle_timeout
    try:
        with anyio.fail_after(timeout):   # a small body has no reason to trickle
            async for chunk in request.stream():
                got += len(chunk)
                if got > limit:
                    raise ApiError(413, f"The request body exceeds {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(408, f"The request body did not arrive within {timeout:g} s") from None
    body = b"".join(chunks)
    depth = settings(request).max_json_depth
    if json_depth(body) > depth:
        raise ApiError(400, f"The JSON body nests deeper than {depth} levels")
    try:
        value = json.loads(body.decode("utf-8"))
        # "\ud800" escapes decode to lone surrogates that no UTF-8 store can
        # hold: refuse them here (they raised UnicodeEncodeError -> 500 in the DB)
        json.dumps(value, ensure_ascii=False).encode("utf-8")
        return value
    except (UnicodeError, ValueError) as exc:
        raise ApiError(400, f"The request body is not valid JSON: {exc}") from None


def json_object(value, what: str = "The request body") -> dict:
    if not isinstance(value, dict):
        raise ApiError(400, f"{what} must be a JSON object")
    return value


# ---- content negotiation -------------------------------------------------------

def _accepts(accept: str, offered: str) -> bool:
    kind = offered.split("/", 1)[0]
    for item in accept.split(","):
        parts = [p.strip() for p in item.split(";")]
        rng = parts[0].lower()
        q = 1.0
        for p in parts[1:]:
            if p.lower().startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        if q > 0 and rng in ("*/*", f"{kind}/*", offered):
            return True
    return False


class NegotiationMiddleware:
    """406 for a request whose Accept header excludes JSON (Glance speaks only
    JSON; XML-only clients are refused), or octet-stream for image data."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            accept = ""
            for name, value in scope.get("headers", ()):
                if name == b"accept":
                    accept = value.decode("latin-1")
            if accept.strip() and not scope["path"].startswith(PANEL_PREFIX):
                offered = [JSON]
                if scope["path"].endswith("/file") or scope["path"].startswith("/store/v1/"):
                    offered.append(OCTET)
                if not any(_accepts(accept, o) for o in offered):
                    resp = error_response(406, f"Cannot answer with {accept!r}; this server speaks "
                                               f"{' and '.join(offered)} only")
                    await resp(scope, receive, send)
                    return
        await self.app(scope, receive, send)


# ---- upload stream ----------------------------------------------------------------

class UploadStream(io.RawIOBase):
    """A blocking, read-only file over a request body, for the registry to
    consume in a worker thread while the event loop receives the body.

    Enforces the limits of a data upload: at most ``max_size`` bytes (413),
    the declared Content-Length exactly (400), no gap longer than the idle
    timeout and, after the grace period, at least the minimum average rate
    (408: an endless trickle is cut off).  Errors surface both from
    :meth:`read` (so the registry aborts and keeps the image inactive) and as
    :attr:`error` for the handler to answer with.
    """

    #: bytes gathered on the event loop per hop into the worker thread (the
    #: server hands the body over ~64 KiB at a time; a hop for each would
    #: dominate the cost of an upload)
    BATCH = 1 << 20

    def __init__(self, request: Request, cfg: Settings):
        super().__init__()
        self._iter = request.stream().__aiter__()
        self._cfg = cfg
        self._buf = memoryview(b"")
        self._eof = False
        self.received = 0
        self.declared = declared_length(request)
        self.error: Optional[ApiError] = None
        self._started = time.monotonic()
        if self.declared is not None and self.declared > cfg.max_image_size:
            self.error = ApiError(413, f"The image data is {self.declared} bytes; "
                                       f"at most {cfg.max_image_size} are accepted")

    def readable(self) -> bool:
        return True

    def _account(self, chunk: bytes) -> None:
        """Check the limits after ``chunk`` arrived (b"": the end)."""
        cfg = self._cfg
        self.received += len(chunk)
        if self.received > cfg.max_image_size:
            raise ApiError(413, f"The image data exceeds {cfg.max_image_size} bytes")
        if self.declared is not None and self.received > self.declared:
            raise ApiError(400, "More data arrived than Content-Length declared")
        if not chunk:
            if self.declared is not None and self.received != self.declared:
                raise ApiError(400, f"Only {self.received} of the {self.declared} declared bytes arrived")
            return
        if cfg.too_slow(self.received, time.monotonic() - self._started):
            raise ApiError(408, f"The upload is slower than {cfg.upload_min_rate} bytes/s; it was abandoned")

    async def _next(self) -> bytes:
        """Up to BATCH bytes of body (b"" at the end), checked as they arrive."""
        parts, got = [], 0
        while got < self.BATCH:
            try:
                with anyio.fail_after(self._cfg.upload_idle_timeout):
                    chunk = await self._iter.__anext__()
            except StopAsyncIteration:
                chunk = b""
            self._account(chunk)
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _pull(self) -> bytes:
        if self.error is not None:
            raise self.error
        try:
            return anyio.from_thread.run(self._next)
        except ApiError as exc:
            self.error = exc
        except TimeoutError:
            self.error = ApiError(408, f"No image data arrived for {self._cfg.upload_idle_timeout:g} s; "
                                       "the upload was abandoned")
        except ClientDisconnect:
            self.error = ApiError(400, "The client went away before the upload finished")
        raise self.error

    def _fill(self) -> None:
        if not self._buf and not self._eof:
            chunk = self._pull()
            self._eof = not chunk
            self._buf = memoryview(chunk)

    def readinto(self, b) -> int:
        self._fill()
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes of what has arrived (b"" only at the end),
        without allocating ``size`` bytes first."""
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(self.BATCH), b""))
        self._fill()
        out = self._buf[:size]
        self._buf = self._buf[size:]
        return out.obj if len(out) == len(out.obj) else bytes(out)


# ---- registry calls and query strings -----------------------------------------------

def registry(request: Request):
    return request.app.state.registry


async def call(fn, *args, limiter: Optional[anyio.CapacityLimiter] = None, **kw):
    """Run a blocking registry call in a worker thread."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kw), limiter=limiter)


async def write_call(request: Request, fn, *args, **kw):
    """:func:`call` for a short registry write.

    The registry itself makes the writers of a process take turns (see
    ``Registry._write``); this limiter only keeps writes that wait for their
    turn in the event loop rather than each parked in a worker thread, so a
    burst of writes cannot use up the thread pool that reads need.
    """
    return await call(fn, *args, limiter=request.app.state.write_limiter, **kw)


MAX_QUERY_PAIRS = 64
MAX_QUERY_VALUE = 1024


def clean_text(value: str, what: str, *, status: int = 400, max_len: int = MAX_QUERY_VALUE) -> str:
    """``value`` unless it holds control characters (``%00`` ...) or is too long."""
    if has_control(value):
        raise ApiError(status, f"{what} holds a control character")
    if len(value) > max_len:
        raise ApiError(status, f"{what} is longer than {max_len} characters")
    return value


def query_pairs(request: Request) -> List[Tuple[str, str]]:
    """The query string as (key, value) pairs, in order, checked for abuse."""
    pairs = request.query_params.multi_items()
    if len(pairs) > MAX_QUERY_PAIRS:
        raise ApiError(400, f"Too many query parameters (at most {MAX_QUERY_PAIRS})")
    for key, value in pairs:
        if property_name_problem(key) is not None:  # filter names: the registry's property-name rule
            raise ApiError(400, f"{clean_text(key, 'A query parameter name', max_len=255)!r} is not a valid "
                                "filter name (1..255 characters, no control characters, not starting with '.')")
        clean_text(value, f"The query parameter {key!r}")
    return pairs


def collection_links(path: str, pairs: List[Tuple[str, str]], next_marker: Optional[str]) -> dict:
    """``first`` and ``next`` links keeping every query parameter but ``marker``."""
    kept = [(k, v) for k, v in pairs if k != "marker"]
    links = {"first": path + ("?" + urlencode(kept) if kept else "")}
    if next_marker:
        links["next"] = path + "?" + urlencode(kept + [("marker", next_marker)])
    return links
