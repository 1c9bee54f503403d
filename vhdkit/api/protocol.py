"""The HTTP/1.1 protocol `vhdkit serve` runs: uvicorn's httptools protocol
with a bound on the request head and JSON error bodies.

uvicorn's httptools protocol keeps every header line and the whole request
target in memory without a limit, and answers a malformed request with a
plain-text 400.  Here the request line plus headers may hold at most
``max_request_head`` bytes (``VHDKIT_API_MAX_REQUEST_HEAD``, default 64 KiB;
Glance's ``max_header_line`` is 16 KiB per line): a longer request target gets 414, a
longer head 431, a malformed request 400, each with a JSON body like every
other error of the API, and the connection is closed.

:class:`ServeConfig` is how ``vhdkit serve`` hands its settings to every
worker process: uvicorn pickles its configuration into each process it
spawns, and this one carries the :class:`~vhdkit.config.Config` along and
builds the app from it (no settings travel through the environment).
"""
from __future__ import annotations

import functools
import json
import sys
from typing import Any, Optional

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..config import Config

#: the smallest head limit honoured (a smaller setting is raised to it)
MIN_MAX_HEAD = 1024
_REASONS = {400: "Bad Request", 414: "URI Too Long", 431: "Request Header Fields Too Large"}


class _HeadTooLarge(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def max_head(settings: Optional[Config]) -> int:
    """The request-head limit of ``settings`` (the default without)."""
    return max(MIN_MAX_HEAD, (settings or Config()).max_request_head)


def error_response(status: int, message: str) -> bytes:
    """A complete HTTP/1.1 error response with the API's JSON error body."""
    title = _REASONS.get(status, "Error")
    body = json.dumps({"error": {"code": status, "title": title, "message": f"{status} {title}: {message}"}}).encode()
    return b"".join([
        f"HTTP/1.1 {status} {title}\r\n".encode(),
        b"content-type: application/json\r\n",
        b"content-length: " + str(len(body)).encode() + b"\r\n",
        b"connection: close\r\n\r\n", body])


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with a bounded request head and JSON errors."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._limit = max_head(getattr(self.config, "vhdkit_settings", None))
        self._head = 0
        self._too_large: "_HeadTooLarge | None" = None

    def on_message_begin(self) -> None:
        self._head = 0
        super().on_message_begin()

    def _count(self, n: int, status: int, what: str) -> None:
        self._head += n
        if self._head > self._limit:
            # httptools turns this into a parser error, which uvicorn answers
            # through send_400_response: remember the real status for it.
            self._too_large = _HeadTooLarge(status, f"{what} is longer than the {self._limit} bytes "
                                                    "this server accepts")
            raise self._too_large

    def on_url(self, url: bytes) -> None:
        self._count(len(url), 414, "the request target")
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4, 431, "the request head")
        super().on_header(name, value)

    def _reject(self, status: int, message: str) -> None:
        if not self.transport.is_closing():
            self.transport.write(error_response(status, message))
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        if self._too_large is not None:
            self._reject(self._too_large.status, str(self._too_large))
        else:
            self._reject(400, msg)


class ServeConfig(uvicorn.Config):
    """uvicorn's configuration plus the server's settings, which every worker
    process receives with it and builds its app from."""

    def __init__(self, settings: Config, **kw: Any) -> None:
        super().__init__("vhdkit.api.app:create_app", factory=True,
                         http="vhdkit.api.protocol:BoundedHttpToolsProtocol", **kw)
        self.vhdkit_settings = settings

    def load_app(self) -> Any:
        from .app import create_app

        return functools.partial(create_app, self.vhdkit_settings)


def run(config: ServeConfig) -> None:
    """Serve until stopped: what ``uvicorn.run`` does with a ready configuration."""
    from uvicorn.main import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    server = uvicorn.Server(config=config)
    try:
        if config.workers > 1:
            Multiprocess(config, sockets=[config.bind_socket()]).run()
        else:
            server.run()
    except KeyboardInterrupt:
        pass
    if config.workers == 1 and not server.started:
        sys.exit(STARTUP_FAILURE)
