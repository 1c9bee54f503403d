"""Loader of the native core: the only module that touches ``vhdkit._native``.

It checks the ABI version compiled into the library (a stale in-place build
fails loudly here), and turns native return codes into exceptions via
:func:`vhdkit.errors.from_native`.
"""
from __future__ import annotations

from . import errors

try:
    from ._native import ffi, lib  # type: ignore[attr-defined]
except ImportError as exc:  # pragma: no cover - only without a build
    raise ImportError(
        "vhdkit's native core is not built: run `pip install -e .` "
        "(or `python vhdkit/_build.py` for an in-place build)"
    ) from exc

#: Must equal VK_ABI_VERSION in csrc/vk_internal.h.
ABI_VERSION = 6

if lib.vk_abi_version() != ABI_VERSION:  # pragma: no cover
    raise ImportError(
        f"vhdkit native core ABI {lib.vk_abi_version()} != expected {ABI_VERSION}: "
        "the build is stale, rebuild with `pip install -e .`"
    )


def set_options(*, io_threads: "int | None" = None, abort_after_writes: "int | None" = None) -> None:
    """Set the core's process-wide options (``vk_options``, csrc/vhdkit.h);
    None leaves an option as it is.  ``io_threads`` is the ``io_threads``
    setting (:mod:`vhdkit.config`); ``abort_after_writes`` is a test hook
    (:mod:`vhdkit.testhooks`)."""
    opts = ffi.new("vk_options *")
    lib.vk_get_options(opts)
    if io_threads is not None:
        if not 0 <= io_threads <= 8:
            raise errors.InvalidInputError(f"io_threads {io_threads}: expected 1..8, or 0 for one per CPU")
        opts.io_threads = io_threads
    if abort_after_writes is not None:
        opts.abort_after_writes = abort_after_writes
    lib.vk_set_options(opts)


def new_err():
    """A fresh caller-owned ``vk_err`` for one native call."""
    return ffi.new("vk_err *")


def check(rc: int, err) -> int:
    """Raise the mapped exception if ``rc`` is a negative vk_code; else return rc."""
    if rc < 0:
        code = err.code if err.code < 0 else rc
        name = ffi.string(lib.vk_code_name(code)).decode()
        msg = ffi.string(err.msg).decode("utf-8", "replace") or name
        raise errors.from_native(name, msg, offset=int(err.offset), sys_errno=int(err.sys_errno))
    return rc
