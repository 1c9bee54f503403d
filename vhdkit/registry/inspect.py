"""Inspection of uploaded image data: :func:`inspect_upload`, the one check
every path that stores a customer's bytes as image data runs them through
(the Images API upload on the registry host, the same upload on a forwarding
host in :mod:`vhdkit.remote`, and any stage/import path).

What Glance does since OSSA-2024-001, for the formats vhdkit reads:

* ``disk_format=vhd`` (container ``bare``): the data must be one well-formed
  fixed or dynamic VHD -- the core's ``check`` clean, no parent (a
  differencing disk names files by path; the server never opens them),
  virtual size and file size within the limits.
* ``container_format=ova`` (with ``disk_format=vhd``): a package ``ova.unpack`` accepts (no unsafe member
  names, links or devices, manifest and descriptor consistent, each disk's
  decompressed size bounded by the server's limit and its own structure),
  whose disks check out as above -- except that a snapshot chain
  ``0.vhd`` (leaf) … ``N.vhd`` (base) may hold differencing disks, each the
  child of the next, opened with exactly those parents and never through
  their locators.
* An OVA of another disk format must still be a safe package (no unsafe
  member names, links or devices; decompression bounded); its disks are
  stored as given, as is data of any other format.

Refusals are :class:`~vhdkit.errors.InvalidInputError` (HTTP 400) with a
message that says what was wrong and names no server path; the upload is then
aborted by its caller (the image stays ``queued``, nothing is kept).

The checks that the first bytes allow run while the data streams in (a VHD's
footer copy at offset 0 says dynamic or differencing and the virtual size; a
tar header says the first member's name); the rest runs when the last byte
has arrived, on a spooled copy in a temporary file (unlinked, so it goes away
with the process), so memory stays bounded whatever the size.
"""
from __future__ import annotations

import io
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, List, Optional

from ..errors import VhdkitError, InvalidInputError, public_message

__all__ = ["InspectLimits", "DiskRefused", "inspect_upload", "needs_inspection", "check_disk", "check_package"]

_SECTOR = 512
_CHUNK = 1 << 20


@dataclass(frozen=True)
class InspectLimits:
    """What an uploaded disk may be: the pipeline's own limits (the
    ``max_virtual_size`` and ``max_file_size`` settings), one home for both."""

    max_virtual_size: int
    max_file_size: int

    @classmethod
    def from_config(cls, cfg=None) -> "InspectLimits":
        """The limits of ``cfg`` (a :class:`vhdkit.config.Config`; default: this
        process's environment and configuration file)."""
        if cfg is None:
            from ..config import load

            cfg = load()
        return cls(cfg.max_virtual_size, cfg.max_file_size)


class DiskRefused(InvalidInputError):
    """A disk the server does not take; ``number`` is its task code (the public
    Rackspace codes: 396 not a VHD, 397 failed validation, 413 virtual size,
    609 file size, 721 has a parent)."""

    code = "disk_refused"

    def __init__(self, number: int, message: str):
        super().__init__(message)
        self.number = number


def needs_inspection(disk_format: Optional[str], container_format: Optional[str]) -> bool:
    """Whether data of these formats is inspected (VHD disks and OVA packages)."""
    return disk_format == "vhd" or container_format == "ova"


def inspect_upload(stream: BinaryIO, *, disk_format: Optional[str], container_format: Optional[str],
                   limits: Optional[InspectLimits] = None, tmp_dir: Optional[str] = None) -> BinaryIO:
    """``stream`` wrapped so that reading it inspects the upload (see the module
    docstring): a refusal is raised from ``read`` -- early when the first bytes
    show it, else from the read that meets the end of the data -- so a caller
    that copies the stream to storage and commits only after EOF never
    commits refused data.  Formats that are not inspected get ``stream`` back."""
    if not needs_inspection(disk_format, container_format):
        return stream
    kind = "vhd" if container_format != "ova" else "ova" if disk_format == "vhd" else "ova-other"
    return _InspectingReader(stream, kind, limits or InspectLimits.from_config(), tmp_dir)


def _refuse(message: str) -> InvalidInputError:
    return InvalidInputError(f"the uploaded data was refused: {public_message(message)}")


class _InspectingReader(io.RawIOBase):
    def __init__(self, src: BinaryIO, kind: str, limits: InspectLimits, tmp_dir: Optional[str]):
        super().__init__()
        self.src, self.kind, self.limits = src, kind, limits
        self.tmp_dir = tmp_dir
        self.spool = tempfile.TemporaryFile(dir=tmp_dir, prefix=".vhdkit-inspect.")
        self.n = 0
        self.head = b""
        self.checked = False

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.checked:
            return 0
        n = self.src.readinto(b) if hasattr(self.src, "readinto") else self._read_into(b)
        if not n:
            self._at_end()
            return 0
        view = memoryview(b)[:n]
        self.spool.write(view)
        self.n += n
        if self.n > self.limits.max_file_size:
            raise _refuse(f"the data is larger than the limit of {self.limits.max_file_size} bytes")
        if len(self.head) < _SECTOR:
            self.head += bytes(view[:_SECTOR - len(self.head)])
            if len(self.head) == _SECTOR:
                self._early(self.head)
        return n

    def _read_into(self, b) -> int:
        data = self.src.read(len(b))
        b[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                self.spool.close()
            finally:
                super().close()

    # -- while streaming
    def _early(self, head: bytes) -> None:
        if self.kind == "vhd":
            from ..vhd import layout

            # a footer copy: a dynamic or differencing disk
            f = layout.footer(head[:layout.FOOTER_BYTES]) if len(head) >= layout.FOOTER_BYTES else None
            if f is not None:
                if f.disk_type == layout.lib.VK_DISK_DIFF:
                    raise _refuse(_has_parent(_UPLOADED).message)
                if f.current_size > self.limits.max_virtual_size:
                    raise _refuse(_too_big(_UPLOADED, f.current_size, self.limits).message)
        else:
            from ..pack.ova import _safe_name  # one rule for member names
            from ..errors import ArchiveError

            if head[257:262] == b"ustar":
                name = head[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
                try:
                    _safe_name(name)
                except ArchiveError as e:
                    raise _refuse(f"the OVA is not a safe package: {e.message}") from None

    # -- at the end
    def _at_end(self) -> None:
        self.spool.flush()
        path = f"/proc/self/fd/{self.spool.fileno()}"
        try:
            if self.kind == "vhd":
                check_disk(path, self.limits, what=_UPLOADED)
            else:
                check_package(path, self.limits, self.tmp_dir, vhd=self.kind == "ova")
        except VhdkitError as e:
            raise _refuse(e.message) from None
        self.checked = True


_UPLOADED = "the uploaded disk"


def _has_parent(what: str) -> DiskRefused:
    return DiskRefused(721, f"{what} is a differencing disk: it has a parent disk; coalesce it into a "
                            "standalone (fixed or dynamic) VHD first, or upload the whole chain as an OVA")


def _too_big(what: str, size: int, limits: InspectLimits) -> DiskRefused:
    return DiskRefused(413, f"{what}'s virtual size is {size} bytes; the limit is {limits.max_virtual_size}")


def check_disk(path: str, limits: InspectLimits, *, what: str, parents: Optional[List[str]] = None):
    """A standalone fixed or dynamic VHD (or, with ``parents``, a differencing
    disk over exactly those files) that the core checks clean, within limits;
    its :class:`~vhdkit.vhd.VhdInfo`, else :class:`DiskRefused`.  The one
    judgement of a customer's disk: upload inspection and the import task."""
    from ..vhd import check, info, probe, probe_format

    size = os.stat(path).st_size
    if size > limits.max_file_size:
        raise DiskRefused(609, f"{what} is {size} bytes; the limit is {limits.max_file_size}")
    kind = probe(path)
    if kind is None:
        if probe_format(path) == "vhdx":
            raise DiskRefused(396, f"{what} is a VHDX, not a VHD: convert it (vhdkit convert IN.vhdx OUT.vhd), "
                                   "or import it with import_from_format 'vhdx'")
        raise DiskRefused(396, f"{what} is not a VHD (no valid VHD footer)")
    if kind == "differencing" and not parents:
        raise _has_parent(what)
    def refuse_if_invalid() -> None:
        rep = check(path, parents=parents if kind == "differencing" else False, follow_locators=False)
        if not rep.ok:
            p = rep.problems[0]
            more = f" (and {len(rep.problems) - 1} more problems)" if len(rep.problems) > 1 else ""
            raise DiskRefused(397, f"{what} failed validation: {p.code}: {p.message}{more}")

    try:
        vi = info(path)
    except VhdkitError as e:
        # A disk the core will not open is named by the check's finding, as
        # every other invalid disk is (code 397 means "failed validation").
        refuse_if_invalid()
        raise DiskRefused(397, f"{what} failed validation: it cannot be opened: {e.message}") from None
    if vi.virtual_size > limits.max_virtual_size:
        raise _too_big(what, vi.virtual_size, limits)
    refuse_if_invalid()
    return vi


def check_package(path: str, limits: InspectLimits, tmp_dir: Optional[str], *, vhd: bool = True) -> None:
    """A safe OVA whose disks are one standalone VHD or a chain ``0.vhd`` … ``N.vhd``
    (``vhd``); for another disk format, a safe package (names, links, bounded
    decompression) whose disks are stored as given."""
    from ..pack import ova

    work = Path(tempfile.mkdtemp(prefix=".vhdkit-inspect.", dir=tmp_dir))
    try:
        try:
            rep = ova.unpack(path, work / "x", max_output=ova.capacity_bound(limits.max_virtual_size),
                             require_valid=vhd)
        except VhdkitError as e:
            raise _refuse(f"the OVA is not a safe, valid package: {e.message}") from None
        if not vhd:
            return
        disks = sorted(m.name for m in rep.disks)
        for m in rep.disks:
            if m.capacity is not None and m.capacity > limits.max_virtual_size:
                raise _refuse(f"the OVA declares a disk of {m.capacity} bytes; the limit is "
                              f"{limits.max_virtual_size}")
        if not disks:
            raise _refuse("the OVA holds no disk")
        if len(disks) == 1:
            check_disk(str(work / "x" / disks[0]), limits, what=f"the OVA's disk {disks[0]}")
            return
        want = [f"{i}.vhd" for i in range(len(disks))]
        if disks != sorted(want):
            raise _refuse(f"the OVA holds several disks that are not a chain 0.vhd … {len(disks) - 1}.vhd")
        chain = [str(work / "x" / n) for n in want]
        for i, p in enumerate(chain):
            check_disk(p, limits, what=f"the OVA's disk {want[i]}", parents=chain[i + 1:] or None)
    finally:
        shutil.rmtree(work, ignore_errors=True)
