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

    def __init_subclass__(cls, *, code: Optional[str] = None, http_status: Optional[int] = None, **kw):
        """``class XError(Base, code="x", http_status=N)``: the subclass's ``code``
        and ``http_status`` (each inherited from ``Base`` when not given)."""
        super().__init_subclass__(**kw)
        if code is not None:
            cls.code = code
        if http_status is not None:
            cls.http_status = http_status

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


class InvalidInputError(VhdkitError, ValueError, code="invalid", http_status=400):
    """The caller asked for something malformed (bad argument, bad request)."""


class FormatError(VhdkitError, code="format", http_status=400):
    """An image, archive or manifest is malformed."""


class ValidationFailed(FormatError, code="validation"):
    """A disk that opens failed ``check``; the message names the first problem."""


class ChecksumError(FormatError, code="checksum"):
    """A structure's checksum or a content hash does not verify."""


class OutOfRangeError(FormatError, code="range"):
    """An offset or length read from a file points outside it (truncated or corrupt)."""


class UnsupportedError(FormatError, code="unsupported"):
    """Well-formed but not supported (an unknown version, a VHDX, ...)."""


class ArchiveError(FormatError, code="archive"):
    """A gzip stream, tar archive or OVA is malformed or unsafe."""


class IntegrityError(VhdkitError, code="integrity", http_status=409):
    """Stored data does not match its manifest (a missing, short or altered segment, ...)."""


class ChainError(VhdkitError, code="chain", http_status=400):
    """A differencing chain cannot be assembled: parent missing, mismatched, cycle, too deep."""


class NotFoundError(VhdkitError, code="not_found", http_status=404):
    """What the caller names (an image, object, container, file) does not exist."""


class UnauthorizedError(VhdkitError, code="unauthorized", http_status=401):
    """The caller's credentials are missing or not valid."""


class ForbiddenError(VhdkitError, code="forbidden", http_status=403):
    """The caller is known but may not do this."""


class ConflictError(VhdkitError, code="conflict", http_status=409):
    """The object exists already, or is in a state that forbids the operation."""


class DataLossError(ConflictError, code="data_loss"):
    """The operation would lose data and was not forced; ``lost`` says what
    (for a repair: the blocks, as virtual byte ranges)."""

    def __init__(self, message: str, *, lost: Optional[list] = None, **kw):
        super().__init__(message, **kw)
        self.lost = list(lost or [])

    def to_dict(self) -> dict:
        return dict(super().to_dict(), lost=self.lost)


class QuotaError(VhdkitError, code="quota", http_status=413):
    """A quota or size limit would be exceeded."""


class ResourceLimitError(VhdkitError, code="limit", http_status=413):
    """A structure would need more memory or work than the sane limits allow."""


class OutputLimitError(ArchiveError, code="output_limit", http_status=413):
    """Decompressed (or unpacked) output went past the bound the server set for it."""


class ReadOnlyError(VhdkitError, code="read_only", http_status=409):
    """A write to something opened (or kept) read-only."""


class OperationInterrupted(VhdkitError, code="interrupted"):
    """Stopped on purpose: cancelled, or a test hook fired."""


class StorageError(VhdkitError, OSError, code="io"):
    """A system call failed (I/O error, permission, ...)."""

    def __init__(self, message: str, *, offset: Optional[int] = None, sys_errno: int = 0, code=None,
                 override: Optional[Tuple[str, str]] = None):
        VhdkitError.__init__(self, message, offset=offset, code=code, override=override)
        self.errno = sys_errno or None
        self.strerror = self.message


class UnavailableError(StorageError, code="unavailable", http_status=503):
    """A service vhdkit depends on (the registry's database, the Swift of
    image data and containers) did not answer or failed: the server's side,
    and transient.  ``message`` says why (for the operator and the log); a
    customer is shown only :attr:`PUBLIC`, which names no host or path."""
    PUBLIC = "the service's storage is unavailable; try again later"


class DatabaseUnavailableError(UnavailableError):
    """The registry's database cannot be reached (PostgreSQL down, network)."""
    PUBLIC = "the image registry is unavailable; try again later"


class NoSpaceError(StorageError, code="no_space", http_status=507):
    """A file system is full (ENOSPC) or a disk quota is used up (EDQUOT).
    Behind the API that is always the service's own storage: 507."""


class OutOfSpaceError(NoSpaceError, code="out_of_space", http_status=507):
    """The service's own storage (its database, blob store, work or object
    store file system) is full: the server's fault, not the customer's, and
    transient.  The message names no server path."""
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
