"""The command line's plumbing that needs no click: output, sizes, error
messages and exit codes, format names, opening the registry.

The click commands and the click-free fast path (:mod:`vhdkit.cli._fast`)
share it, so both print the same bytes and exit with the same status.
"""
from __future__ import annotations

import sys

from ..errors import VhdkitError

#: The ANSI escape sequences ``click.echo`` strips from text that does not go
#: to a terminal (click's own pattern).
_ANSI = r"\033\[[0-?]*[ -/]*[@-~]"


def echo(message: str = "", err: bool = False) -> None:
    """``click.echo(message, err=err)`` for text on a correctly configured
    stream (see :func:`vhdkit.cli._fast.streams_plain`): the line, ANSI codes
    stripped when not a terminal, flushed at once (stdout and stderr keep
    their order when they share a file)."""
    f = sys.stderr if err else sys.stdout
    out = message + "\n"
    if "\033" in out:
        try:
            tty = f.isatty()
        except Exception:  # as click: a stream that cannot say is not a terminal
            tty = False
        if not tty:
            import re

            out = re.sub(_ANSI, "", out)
    f.write(out)
    f.flush()


def emit(obj, as_json: bool, human=None) -> None:
    """Print ``obj`` as JSON (``--json``) or through ``human`` (default: JSON too)."""
    if as_json or human is None:
        from ._jsontext import dumps  # here: a command that prints no JSON (e.g. a download) need not load it

        echo(dumps(obj, indent=2, default=str))
    else:
        echo(human(obj))


def sized(n) -> str:
    """A size for people and scripts alike: ``1610612736 bytes (1.5 GiB)``."""
    if n is None:
        return "-"
    from ..progress import human_bytes

    return f"{n} bytes" if abs(n) < 1024 else f"{n} bytes ({human_bytes(n)})"


#: The flag that overrides every refusal of the command line (see VhdkitError.override).
FORCE = "--force"


def cli_message(exc: VhdkitError) -> str:
    """The error's message as the command line says it: flags, not Python keywords."""
    if exc.override is None:
        return exc.message
    return f"{exc.refusal} (use {FORCE} to {exc.override[1]})"


def os_error_message(exc: OSError) -> str:
    """One line for a failed system call: the file, then what is wrong with it."""
    what = exc.strerror or str(exc) or type(exc).__name__
    names = [n for n in (exc.filename, exc.filename2) if n is not None]
    if isinstance(exc, IsADirectoryError):
        what = "is a directory (give a file)"
    elif isinstance(exc, PermissionError):
        what = "permission denied (not readable or not writable by you)"
    return f"{' -> '.join(map(str, names))}: {what}" if names else what


def failure(exc: BaseException):
    """The one place where a command's failure becomes an exit status: said
    on stderr, the status returned; None for an exception that is not a
    command's failure (the caller re-raises it).

    A VhdkitError, or an OSError about a file (missing, a directory,
    unreadable, ...), is one line on stderr and exit 1.  SIGINT and SIGTERM
    stop the command at once (:mod:`vhdkit.interrupts`): whatever the
    unwinding raised, the status is 130 or 143."""
    from ..interrupts import Stopped, stopping

    signum = stopping()
    if signum is not None:
        stop = exc if isinstance(exc, Stopped) else Stopped(signum)
        echo(f"vhdkit: stopped by {stop.name}", err=True)
        return stop.exit_status
    if isinstance(exc, VhdkitError):
        echo(f"vhdkit: error: {cli_message(exc)}", err=True)
        return 1
    if isinstance(exc, BrokenPipeError):  # e.g. `vhdkit ... | head`
        sys.stderr.close()
        return 1
    if isinstance(exc, OSError):
        echo(f"vhdkit: error: {os_error_message(exc)}", err=True)
        return 1
    return None


# ------------------------------------------------------------ formats
#: Format names on the command line: vhdkit's, and qemu-img's ("vpc" is its VHD).
FORMAT_NAMES = {"vhd": "vhd", "vpc": "vhd", "raw": "raw"}
#: Input formats (-f/-F): the above, and VHDX, which vhdkit reads but does not write.
INPUT_FORMAT_NAMES = {**FORMAT_NAMES, "vhdx": "vhdx"}


def image_format(name):
    """vhdkit's name of a format given with -f/-F/-O (None stays None: detect)."""
    return None if name is None else INPUT_FORMAT_NAMES[name]


def open_registry(cfg, **kw):
    """The registry the settings ``cfg`` (:class:`vhdkit.config.Config`) name;
    says on stderr where a registry was created, so a wrong --data or
    VHDKIT_HOME shows at once instead of as an empty list."""
    from ..registry import Registry

    reg = Registry(cfg.data_dir, config=cfg, **kw)
    if reg.created:
        echo(f"vhdkit: created a new registry in {reg.home}", err=True)
    return reg
