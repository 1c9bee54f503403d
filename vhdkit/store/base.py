"""The object-store interface: accounts hold containers, containers hold named
objects.  :class:`ObjectStore` is shaped after OpenStack Swift; its two
backends are :mod:`vhdkit.store.local` (the embedded default) and
:mod:`vhdkit.store.swift`.

Names: a container name is 1–256 bytes of UTF-8 without ``/`` or NUL (Swift's
rule), not ``.`` or ``..``; an object name is 1–1024 bytes of UTF-8 without
NUL, not starting with ``/`` and without a ``..`` path segment.  Metadata
keys are 1–128 characters of ``[A-Za-z0-9_.-]`` (case-insensitive, stored
lower-case), values up to 256 characters, at most 90 items (Swift's limits).
"""
from __future__ import annotations

import abc
import io
import os
import re
from dataclasses import asdict, dataclass, field
from typing import BinaryIO, Dict, List, Optional, Sequence

from ..errors import ConflictError, IntegrityError, InvalidInputError, NotFoundError

__all__ = [
    "ObjectInfo",
    "ObjectReader",
    "ObjectStore",
    "validate_container_name",
    "validate_object_name",
    "validate_metadata",
    "MAX_CONTAINER_NAME",
    "MAX_OBJECT_NAME",
]

MAX_CONTAINER_NAME = 256
MAX_OBJECT_NAME = 1024
MAX_META_KEY = 128
MAX_META_VALUE = 256
MAX_META_ITEMS = 90
_META_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_CHUNK = 1 << 20


@dataclass
class ObjectInfo:
    """What ``head`` returns: Swift's object headers, more or less."""

    container: str
    name: str
    size: int
    etag: str  # md5 hex of the bytes, as Swift's ETag
    last_modified: float  # seconds since the epoch
    content_type: str = "application/octet-stream"
    metadata: Dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------ names
def _utf8(name: str, what: str) -> bytes:
    if not isinstance(name, str):
        raise InvalidInputError(f"{what} must be a string")
    try:
        return name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError(f"{what} {name!r} is not valid UTF-8") from None


def validate_container_name(name: str, what: str = "container name") -> str:
    """Return ``name`` or raise InvalidInputError (Swift's container rules)."""
    raw = _utf8(name, what)
    if not raw:
        raise InvalidInputError(f"{what} is empty")
    if len(raw) > MAX_CONTAINER_NAME:
        raise InvalidInputError(f"{what} is longer than {MAX_CONTAINER_NAME} bytes")
    if "\0" in name or "/" in name:
        raise InvalidInputError(f"{what} {name!r} contains '/' or NUL")
    if name in (".", ".."):
        raise InvalidInputError(f"{what} may not be {name!r}")
    return name


def validate_object_name(name: str) -> str:
    """Return ``name`` or raise InvalidInputError."""
    raw = _utf8(name, "object name")
    if not raw:
        raise InvalidInputError("object name is empty")
    if len(raw) > MAX_OBJECT_NAME:
        raise InvalidInputError(f"object name is longer than {MAX_OBJECT_NAME} bytes")
    if "\0" in name:
        raise InvalidInputError(f"object name {name!r} contains NUL")
    if name.startswith("/"):
        raise InvalidInputError(f"object name {name!r} starts with '/'")
    if any(part in ("..", ".") for part in name.split("/")):
        raise InvalidInputError(f"object name {name!r} has a '.' or '..' path segment")
    return name


def validate_metadata(metadata: Optional[Dict[str, str]]) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for k, v in (metadata or {}).items():
        if not isinstance(k, str) or not _META_KEY.match(k):
            raise InvalidInputError(f"metadata key {k!r} must be 1-{MAX_META_KEY} characters of A-Z a-z 0-9 _ . -")
        if not isinstance(v, str) or len(v) > MAX_META_VALUE or "\0" in v:
            raise InvalidInputError(f"metadata value for {k!r} must be a string of at most {MAX_META_VALUE} characters")
        out[k.lower()] = v
    if len(out) > MAX_META_ITEMS:
        raise InvalidInputError(f"at most {MAX_META_ITEMS} metadata items")
    return out


# -------------------------------------------------------------- interface
class ObjectReader(io.RawIOBase):
    """A readable stream of one object's bytes; ``.info`` is its ObjectInfo."""

    info: ObjectInfo


class ObjectStore(abc.ABC):
    """Containers of objects for one account.

    Every method validates names and raises NotFoundError for a missing
    container or object.  ``put`` reads ``stream`` to its end (streaming, in
    bounded memory) and replaces any object of that name atomically.
    """

    account: str

    @abc.abstractmethod
    def create_container(self, container: str) -> None:
        """Create ``container`` (no error if it exists)."""

    @abc.abstractmethod
    def delete_container(self, container: str) -> None:
        """Delete an empty container (ConflictError if it holds objects)."""

    @abc.abstractmethod
    def list_containers(self) -> List[str]:
        """Container names, sorted."""

    @abc.abstractmethod
    def put(self, container: str, name: str, stream: BinaryIO, *, metadata: Optional[Dict[str, str]] = None,
            content_type: Optional[str] = None, etag: Optional[str] = None,
            size: Optional[int] = None, durable: bool = True) -> ObjectInfo:
        """Store ``stream`` as ``container/name``.  ``etag``/``size``, when
        given, are verified (IntegrityError, nothing stored on mismatch).
        ``durable=False`` lets the store return before the bytes are on
        stable storage (still atomic); call :meth:`sync` before relying on them."""

    def sync(self, container: str, names: Sequence[str]) -> None:
        """Make objects put with ``durable=False`` durable (no-op for stores
        whose puts are durable when acknowledged, such as Swift)."""

    @abc.abstractmethod
    def get(self, container: str, name: str) -> ObjectReader:
        """Open ``container/name`` for streaming reads (use as a context manager)."""

    @abc.abstractmethod
    def head(self, container: str, name: str) -> ObjectInfo:
        """Size, etag and metadata of ``container/name``."""

    @abc.abstractmethod
    def list(self, container: str, prefix: str = "", *, marker: Optional[str] = None,
             limit: Optional[int] = None) -> List[ObjectInfo]:
        """Objects whose name starts with ``prefix`` and sorts after ``marker``,
        in byte order of their UTF-8 names (Swift's order)."""

    @abc.abstractmethod
    def delete(self, container: str, name: str) -> None:
        """Delete ``container/name``."""

    def exists(self, container: str, name: str) -> bool:
        try:
            self.head(container, name)
            return True
        except NotFoundError:
            return False

    def put_bytes(self, container: str, name: str, data: bytes, **kw) -> ObjectInfo:
        return self.put(container, name, io.BytesIO(data), **kw)

    def get_bytes(self, container: str, name: str, *, limit: int = 64 << 20) -> bytes:
        """A small object's bytes (ResourceLimit-style guard: refuses more than ``limit``)."""
        with self.get(container, name) as r:
            if r.info.size > limit:
                raise InvalidInputError(f"object {container}/{name} is {r.info.size} bytes, more than {limit}")
            return r.read(limit + 1)[:limit]


