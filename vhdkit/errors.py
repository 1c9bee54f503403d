"""The vhdkit exception hierarchy, and the one place where native error codes
(:func:`from_native`) and failed system calls (:func:`from_oserror`) become
exceptions.

Every exception carries a message a user can act on, a stable ``code`` string
for scripts and task messages, and the HTTP status the API layer answers with.
"""
from __future__ import annotations

import errno as _errno

TYPE_CHECKING = False   # typing is not imported at run time: every command imports this module
if TYPE_CHECKING:
    from typing import Optional, Tuple


class VhdkitError(Exception):
    """Root of every error vhdkit raises on purpose."""

    code = "error"
    http_status = 500

    def __init__(self, message: str, *, offset: Optional[int] = None, code: Optional[str] = None,
                 override: Optional[Tuple[str, str]] = None):
        #: A refusal the caller may override: ``(keyword, what it does)``, e.g.
        #: ``("overwrite", "replace it")``.  ``message`` names the Python keyword;
        #: the command line names its flag instead (``refusal``).
        self.override = override
        self.refusal = message
        if override is not None:
            message = f"{message} (pass {override[0]}=True to {override[1]})"
        super().__init__(message)
        self.message = message
        self.offset = offset
        if code is not None:
            self.code = code

    def to_dict(self) -> dict:
        d = {"code": self.code, "message": self.message}
        if self.offset is not None:
            d["offset"] = self.offset
        return d


class InvalidInputError(VhdkitError, ValueError):
    """The caller asked for something malformed (bad argument, bad request)."""
    code = "invalid"
    http_status = 400


class FormatError(VhdkitError):
    """An image, archive or manifest is malformed."""
    code = "format"
    http_status = 400


class ValidationFailed(FormatError):
    """A disk that opens failed ``check``; the message names the first problem."""
    code = "validation"


class ChecksumError(FormatError):
    """A structure's checksum or a content hash does not verify."""
    code = "checksum"


class OutOfRangeError(FormatError):
    """An offset or length read from a file points outside it (truncated or corrupt)."""
    code = "range"


class UnsupportedError(FormatError):
    """Well-formed but not supported (an unknown version, a VHDX, ...)."""
    code = "unsupported"


class ArchiveError(FormatError):
    """A gzip stream, tar archive or OVA is malformed or unsafe."""
    code = "archive"


class IntegrityError(VhdkitError):
    """Stored data does not match its manifest (a missing, short or altered segment, ...)."""
    code = "integrity"
    http_status = 409


class ChainError(VhdkitError):
    """A differencing chain cannot be assembled: parent missing, mismatched, cycle, too deep."""
    code = "chain"
    http_status = 400


class NotFoundError(VhdkitError):
    code = "not_found"
    http_status = 404


class UnauthorizedError(VhdkitError):
    code = "unauthorized"
    http_status = 401


class ForbiddenError(VhdkitError):
    code = "forbidden"
    http_status = 403


class ConflictError(VhdkitError):
    """The object exists already, or is in a state that forbids the operation."""
    code = "conflict"
    http_status = 409


class DataLossError(ConflictError):
    """The operation would lose data and was not forced; ``lost`` says what
    (for a repair: the blocks, as virtual byte ranges)."""
    code = "data_loss"

    def __init__(self, message: str, *, lost: Optional[list] = None, **kw):
        super().__init__(message, **kw)
        self.lost = list(lost or [])

    def to_dict(self) -> dict:
        return dict(super().to_dict(), lost=self.lost)


class QuotaError(VhdkitError):
    """A quota or size limit would be exceeded."""
    code = "quota"
    http_status = 413


class ResourceLimitError(VhdkitError):
    """A structure would need more memory or work than the sane limits allow."""
    code = "limit"
    http_status = 413


class OutputLimitError(ArchiveError):
    """Decompressed (or unpacked) output went past the bound the server set for it."""
    code = "output_limit"
    http_status = 413


class ReadOnlyError(VhdkitError):
    code = "read_only"
    http_status = 409


class OperationInterrupted(VhdkitError):
    """Stopped on purpose: cancelled, or a test hook fired."""
    code = "interrupted"


class StorageError(VhdkitError, OSError):
    """A system call failed (I/O error, permission, ...)."""
    code = "io"

    def __init__(self, message: str, *, offset: Optional[int] = None, sys_errno: int = 0, code=None,
                 override: Optional[Tuple[str, str]] = None):
        VhdkitError.__init__(self, message, offset=offset, code=code, override=override)
        self.errno = sys_errno or None
        self.strerror = self.message


class UnavailableError(StorageError):
    """A service vhdkit depends on (the registry's database, the Swift of
    image data and containers) did not answer or failed: the server's side,
    and transient.  ``message`` says why (for the operator and the log); a
    customer is shown only :attr:`PUBLIC`, which names no host or path."""
    code = "unavailable"
    http_status = 503
    PUBLIC = "the service's storage is unavailable; try again later"


class DatabaseUnavailableError(UnavailableError):
    """The registry's database cannot be reached (PostgreSQL down, network)."""
    PUBLIC = "the image registry is unavailable; try again later"


class NoSpaceError(StorageError):
    """A file system is full (ENOSPC) or a disk quota is used up (EDQUOT).
    Behind the API that is always the service's own storage: 507."""
    code = "no_space"
    http_status = 507


class OutOfSpaceError(NoSpaceError):
    """The service's own storage (its database, blob store, work or object
    store file system) is full: the server's fault, not the customer's, and
    transient.  The message names no server path."""
    code = "out_of_space"
    http_status = 507
    MESSAGE = "the service is out of storage space; try again later"

    def __init__(self, message: str = MESSAGE, **kw):
        super().__init__(message, **kw)


# ---- native codes (csrc/vhdkit.h vk_code, by name) -> exceptions: the one mapping ----
NATIVE_CODES = {
    "VK_E_IO": StorageError,
    "VK_E_NOMEM": ResourceLimitError,
    "VK_E_INVALID": InvalidInputError,
    "VK_E_FORMAT": FormatError,
    "VK_E_CHECKSUM": ChecksumError,
    "VK_E_UNSUPPORTED": UnsupportedError,
    "VK_E_RANGE": OutOfRangeError,
    "VK_E_CHAIN": ChainError,
    "VK_E_NOTFOUND": NotFoundError,
    "VK_E_EXISTS": ConflictError,
    "VK_E_INTERRUPTED": OperationInterrupted,
    "VK_E_READONLY": ReadOnlyError,
    "VK_E_NOSPACE": NoSpaceError,
}


def from_native(code: str, message: str, *, offset: Optional[int] = None, sys_errno: int = 0) -> VhdkitError:
    """Build the exception for a native ``vk_code``, named as the core names it
    (``vk_code_name``: "VK_E_FORMAT", ...)."""
    if offset is not None and offset >= 2**64 - 1:
        offset = None
    cls = NATIVE_CODES.get(code, VhdkitError)
    if cls is StorageError and sys_errno == _errno.ENOENT:
        cls = NotFoundError
    if issubclass(cls, StorageError):
        return cls(message, offset=offset, sys_errno=sys_errno)
    return cls(message, offset=offset)


# ---- failed system calls -> exceptions: the one errno mapping ---------------
_FULL = (_errno.ENOSPC, _errno.EDQUOT)


def from_oserror(exc: OSError, what: str, *, service: bool = False) -> VhdkitError:
    """The exception for ``exc``, a failed system call on ``what`` (the caller's
    description of the file or operation, which starts the message).

    - ENOSPC and EDQUOT: no space.  On the service's own files (``service``:
      the blob store, the database directory, spool and work files) that is
      :class:`OutOfSpaceError` (507, its message names no path); else
      :class:`NoSpaceError`.
    - ENOENT: :class:`NotFoundError` for what a caller names (an object, a
      container, a file); on the service's own files it is the server's fault,
      a :class:`StorageError`.
    - anything else: :class:`StorageError` with the system's text.
    """
    e = exc.errno
    if e in _FULL:
        if service:
            return OutOfSpaceError(sys_errno=e)
        return NoSpaceError(f"{what}: no space left on device", sys_errno=e)
    if e == _errno.ENOENT and not service:
        return NotFoundError(f"{what}: not found")
    return StorageError(f"{what}: {exc.strerror or exc}", sys_errno=e or 0)


# ---- what a customer may read -------------------------------------------------
#: An absolute path inside a message: starts at a word boundary, stops at blanks,
#: quotes, brackets and the ``:`` that separates a path from what follows it.
_ABS_PATH = r"(?<![\w.~-])/[^\s'\"(),;:<>]+"


def public_message(text: str) -> str:
    """``text`` as a customer of the server may read it: every absolute path
    is cut to its last component (a customer's own file keeps its name, the
    server's directories are not shown) and the server's host name is
    removed.  Server code logs the full text and shows only this (task
    messages, HTTP error bodies)."""
    import re   # here: the command line, which never calls this, need not load it
    import socket

    out = re.sub(_ABS_PATH, lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1] or "(path)", text)
    host = socket.gethostname()
    if len(host) > 2:
        out = out.replace(host, "(server)")
    return out
