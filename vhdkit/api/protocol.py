"""The HTTP/1.1 protocol `vhdkit serve` runs: uvicorn's httptools protocol
with a bound on the request head and JSON error bodies.

uvicorn's httptools protocol keeps every header line and the whole request
target in memory without a limit, and answers a malformed request with a
plain-text 400.  Here the request line plus headers may hold at most
``VHDKIT_API_MAX_REQUEST_HEAD`` bytes (default 64 KiB; Glance's
``max_header_line`` is 16 KiB per line): a longer request target gets 414, a
longer head 431, a malformed request 400, each with a JSON body like every
other error of the API, and the connection is closed.
"""
from __future__ import annotations

import json
import os

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

DEFAULT_MAX_HEAD = 64 * 1024
_REASONS = {400: "Bad Request", 414: "URI Too Long", 431: "Request Header Fields Too Large"}


class _HeadTooLarge(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def max_head() -> int:
    raw = os.environ.get("VHDKIT_API_MAX_REQUEST_HEAD", "")
    try:
        return max(1024, int(raw)) if raw else DEFAULT_MAX_HEAD
    except ValueError:
        return DEFAULT_MAX_HEAD


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
        self._limit = max_head()
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
