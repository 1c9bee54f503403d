"""Shared CLI plumbing: error handling to exit codes, --json emission, sizes."""
from __future__ import annotations

import sys
from typing import Any, Callable, Optional

import click

from ..errors import VhdkitError


class VhdkitGroup(click.Group):
    """The top-level group: the one place where failures become exit codes.

    A VhdkitError, or an OSError about a file (missing, a directory,
    unreadable, ...), is one line on stderr and exit 1.  SIGINT and SIGTERM
    stop the command at once (:mod:`vhdkit.interrupts`): what it was writing
    is removed on the way out, and the exit status is 130 or 143."""

    def invoke(self, ctx: click.Context) -> Any:
        from ..interrupts import Stopped, install, release, stopping

        install()
        try:
            release()   # a signal during start-up (see vhdkit.__main__) stops the command now
            return super().invoke(ctx)
        except click.exceptions.Exit:
            raise
        except BaseException as exc:
            signum = stopping()
            if signum is not None:  # whatever the unwinding raised, the command was stopped
                stop = exc if isinstance(exc, Stopped) else Stopped(signum)
                click.echo(f"vhdkit: stopped by {stop.name}", err=True)
                ctx.exit(stop.exit_status)
            if isinstance(exc, VhdkitError):
                fail(ctx, exc.message)
            if isinstance(exc, BrokenPipeError):  # e.g. `vhdkit ... | head`
                sys.stderr.close()
                ctx.exit(1)
            if isinstance(exc, OSError):
                fail(ctx, os_error_message(exc))
            raise


def fail(ctx: click.Context, message: str) -> None:
    """Print ``vhdkit: error: MESSAGE`` on stderr and exit 1."""
    click.echo(f"vhdkit: error: {message}", err=True)
    ctx.exit(1)


def os_error_message(exc: OSError) -> str:
    """One line for a failed system call: the file, then what is wrong with it."""
    what = exc.strerror or str(exc) or type(exc).__name__
    names = [n for n in (exc.filename, exc.filename2) if n is not None]
    if isinstance(exc, IsADirectoryError):
        what = "is a directory (give a file)"
    elif isinstance(exc, PermissionError):
        what = "permission denied (not readable or not writable by you)"
    return f"{' -> '.join(map(str, names))}: {what}" if names else what


def json_option(f: Callable) -> Callable:
    """The --json flag every command offers."""
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")(f)


def emit(obj: Any, as_json: bool, human: Optional[Callable[[Any], str]] = None) -> None:
    """Print ``obj`` as JSON (``--json``) or through ``human`` (default: JSON too)."""
    if as_json or human is None:
        import json  # here: a command that prints no JSON (e.g. a download) need not load it

        click.echo(json.dumps(obj, indent=2, sort_keys=False, default=str))
    else:
        click.echo(human(obj))


_SUFFIX = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """'10G' -> bytes; suffixes K, M, G, T (powers of 1024, optional 'iB'/'B'); bytes if none."""
    t = text.strip().upper()
    for tail in ("IB", "B"):
        if len(t) > 1 and t.endswith(tail) and t[-len(tail) - 1].isalpha():
            t = t[: -len(tail)]
            break
    num, suf = (t[:-1], t[-1]) if t and t[-1].isalpha() else (t, "")
    if suf not in _SUFFIX or not num.isdigit():
        raise click.BadParameter(f"not a size: {text!r} (use e.g. 512, 64K, 10M, 2G, 1T)")
    return int(num) * _SUFFIX[suf]


class SizeType(click.ParamType):
    name = "size"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            return parse_size(value)
        except click.BadParameter as e:
            self.fail(str(e.message), param, ctx)


SIZE = SizeType()
