"""The VHD format as Python sees it: the native core's numbers (``lib.VK_*``
from csrc/vhdkit.h, never re-typed here) and its decoders of the footer and
the dynamic disk header.  Python code that meets a VHD structure in a stream
(export, upload, OVA) asks these functions instead of unpacking bytes.
"""
from __future__ import annotations

TYPE_CHECKING = False   # typing, datetime and uuid are imported where used: `vhdkit info` reads this module
if TYPE_CHECKING:
    import datetime as _dt
    import uuid as _uuid
    from typing import List, Optional

from .._record import record
from ..native import check, ffi, lib, new_err

__all__ = ["SECTOR", "FOOTER_BYTES", "DYNHDR_BYTES", "MAX_VIRTUAL_SIZE", "EPOCH", "DISK_TYPES", "DISK_TYPE_CODES",
           "Footer", "DynamicHeader", "footer", "dynamic_header", "bat_blocks", "renew_footer", "to_datetime", "from_datetime"]

SECTOR = lib.VK_SECTOR_BYTES
FOOTER_BYTES = lib.VK_FOOTER_BYTES
DYNHDR_BYTES = lib.VK_DYNHDR_BYTES
MAX_VIRTUAL_SIZE = lib.VK_MAX_VIRTUAL_GIB << 30
#: Disk type code (footer) -> name, and back.
DISK_TYPES = {lib.VK_DISK_FIXED: "fixed", lib.VK_DISK_DYNAMIC: "dynamic", lib.VK_DISK_DIFF: "differencing"}
DISK_TYPE_CODES = {name: code for code, name in DISK_TYPES.items()}


def _epoch() -> _dt.datetime:
    import datetime as _dt

    return _dt.datetime.fromtimestamp(lib.VK_VHD_EPOCH, tz=_dt.timezone.utc)


def __getattr__(name: str):
    """:data:`EPOCH`, where VHD timestamps count from (2000-01-01 00:00 UTC),
    made on use (datetime costs every command's start-up)."""
    if name == "EPOCH":
        return _epoch()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def to_datetime(timestamp: int) -> _dt.datetime:
    """A VHD timestamp (seconds since :data:`EPOCH`) as an aware UTC datetime."""
    import datetime as _dt

    return _epoch() + _dt.timedelta(seconds=int(timestamp))


def from_datetime(when: _dt.datetime) -> int:
    """Seconds from :data:`EPOCH` to ``when`` (naive datetimes are UTC)."""
    import datetime as _dt

    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return int((when - _epoch()).total_seconds())


@record(frozen=True)
class Footer:
    """``disk_type`` a key of :data:`DISK_TYPES`; ``timestamp`` seconds since
    :data:`EPOCH`; ``uuid`` a :class:`uuid.UUID`."""

    disk_type: int
    data_offset: int
    current_size: int
    timestamp: int
    uuid: _uuid.UUID


@record(frozen=True)
class DynamicHeader:
    """``bitmap_bytes``: a block's sector bitmap, in whole sectors."""

    table_offset: int
    max_table_entries: int
    block_size: int
    bitmap_bytes: int
    n_locators: int


def footer(buf: bytes) -> Optional[Footer]:
    """The footer in ``buf`` (512 bytes), or None unless its cookie, checksum
    and disk type are right."""
    out, err = ffi.new("vk_footer_fields *"), new_err()
    data = bytes(buf)
    if lib.vk_footer_peek(data, len(data), out, err) != 0:
        return None
    import uuid as _uuid

    return Footer(int(out.disk_type), int(out.data_offset), int(out.current_size), int(out.timestamp),
                  _uuid.UUID(bytes=bytes(ffi.buffer(out.uuid, 16))))


def dynamic_header(buf: bytes) -> Optional[DynamicHeader]:
    """The dynamic disk header in ``buf`` (1024 bytes), or None unless it is
    one the core opens (cookie, checksum, version, block size)."""
    out, err = ffi.new("vk_dynhdr_fields *"), new_err()
    data = bytes(buf)
    if lib.vk_dynhdr_peek(data, len(data), out, err) != 0:
        return None
    return DynamicHeader(int(out.table_offset), int(out.max_table_entries), int(out.block_size),
                         int(out.bitmap_bytes), int(out.n_locators))


def bat_blocks(bat: bytes) -> List[int]:
    """File offsets of the allocated blocks of a BAT (big-endian entries), in
    entry order."""
    data = bytes(bat)
    n = len(data) // 4
    out = ffi.new("uint64_t[]", max(n, 1))
    return list(out[0:lib.vk_bat_blocks(data, n, out)])


def renew_footer(buf: bytes, new_uuid: _uuid.UUID, timestamp: int) -> bytes:
    """``buf`` (a valid footer) with ``new_uuid``, ``timestamp`` (seconds since
    :data:`EPOCH`) and its checksum; every other byte as it was.  Raises the
    core's error for a footer :func:`footer` refuses."""
    data = bytes(buf)
    out, err = ffi.new("uint8_t[]", FOOTER_BYTES), new_err()
    check(lib.vk_footer_renew(data, len(data), new_uuid.bytes, timestamp & 0xFFFFFFFF, out, err), err)
    return bytes(ffi.buffer(out, FOOTER_BYTES))

