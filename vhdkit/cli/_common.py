"""Shared CLI plumbing: error handling to exit codes, --json emission, sizes."""
from __future__ import annotations

import os
import sys
from typing import Any, Callable, Optional

import click

from . import _plain
from ._plain import (FORCE, FORMAT_NAMES, INPUT_FORMAT_NAMES, cli_message, emit, failure,  # noqa: F401
                     image_format, os_error_message, sized)


class VhdkitGroup(click.Group):
    """The top-level group: failures become exit codes in one place
    (:func:`vhdkit.cli._plain.failure`)."""

    def invoke(self, ctx: click.Context) -> Any:
        from ..interrupts import install, release

        install()
        try:
            release()   # a signal during start-up (see vhdkit.__main__) stops the command now
            return super().invoke(ctx)
        except click.exceptions.Exit:
            raise
        except BaseException as exc:
            code = failure(exc)
            if code is None:
                raise
            ctx.exit(code)


def fail(ctx: click.Context, message: str) -> None:
    """Print ``vhdkit: error: MESSAGE`` on stderr and exit 1."""
    click.echo(f"vhdkit: error: {message}", err=True)
    ctx.exit(1)


def force_option(f: Callable) -> Callable:
    """--force: replace an existing output file (the rule: :func:`vhdkit.fileutil.refuse_existing`)."""
    return click.option(FORCE, "force", is_flag=True, help="Replace the output file if it exists.")(f)


def refuse_terminal(path: str, what: str = "binary data") -> None:
    """Binary output never goes to a terminal (as ``glance image-download``):
    with PATH "-" stdout must be redirected."""
    if path == "-" and sys.stdout.isatty():
        raise click.UsageError(f"refusing to write {what} to a terminal: give -o FILE or redirect stdout")


def json_option(f: Callable) -> Callable:
    """The --json flag every command offers."""
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")(f)


def qemu_json_option(f: Callable) -> Callable:
    """--json, and qemu-img's spelling of it, --output=json|human."""
    import functools

    @click.option("--output", "output_format_", type=click.Choice(["human", "json"]), default=None,
                  help="human or json (qemu-img's spelling of --json).")
    @json_option
    @functools.wraps(f)
    def wrapper(*args: Any, output_format_: Optional[str], as_json: bool, **kw: Any) -> Any:
        return f(*args, as_json=as_json or output_format_ == "json", **kw)

    return wrapper


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


# ------------------------------------------- identity and data location
# Every command that touches the registry, the object store or a worker's data
# takes these options from here, so `--data`/VHDKIT_HOME and
# `--account`/`--roles`/VHDKIT_ACCOUNT/VHDKIT_ROLES mean the same everywhere.
# The options carry only what the command line says; the environment and the
# configuration file are read by vhdkit.config, once per command (settings()).

_SETTINGS_KEY = "vhdkit.settings"
_FLAGS_KEY = "vhdkit.flags"        # flags no command takes as an argument (see _flag)


def settings(**flags: Any):
    """The command's settings (:func:`vhdkit.config.load`, built once per
    command) with the flags given (None: not given) on top."""
    from ..config import load

    ctx = click.get_current_context(silent=True)
    base = ctx.meta.get(_SETTINGS_KEY) if ctx is not None else None
    if base is None:
        try:
            base = load()
        except ValueError as exc:  # a malformed setting: a usage error naming it
            raise click.UsageError(str(exc)) from None
        if ctx is not None:
            ctx.meta[_SETTINGS_KEY] = base
    extra = ctx.meta.get(_FLAGS_KEY, {}) if ctx is not None else {}
    return base.with_flags(**{**extra, **flags})


def data_option(help_text: str = "Data directory (registry, object store, task work).") -> Callable:
    """--data DIR [env VHDKIT_HOME]; the command receives ``data_dir`` (None: not given).
    With it, --database-url URL [env VHDKIT_DATABASE_URL], the registry's
    database: a flag :func:`settings` adds to every command's settings."""
    def deco(f: Callable) -> Callable:
        f = click.option("--database-url", metavar="URL", default=None, expose_value=False, callback=_flag,
                         help="The registry's database, postgresql://USER@HOST:PORT/DB "
                              "[env VHDKIT_DATABASE_URL; default: SQLite in the data directory].")(f)
        return click.option("--data", "data_dir", metavar="DIR", default=None,
                            help=f"{help_text} [env VHDKIT_HOME; default $XDG_DATA_HOME/vhdkit, "
                                 "i.e. ~/.local/share/vhdkit].")(f)
    return deco


def _flag(ctx: Any, param: Any, value: Any) -> None:
    """Keep a flag the command does not take as an argument for :func:`settings`."""
    if value is not None:
        ctx.meta.setdefault(_FLAGS_KEY, {})[param.name] = value


def identity_options(f: Callable) -> Callable:
    """--account ID and --roles R1,R2 [env VHDKIT_ACCOUNT, VHDKIT_ROLES]."""
    f = click.option("--roles", metavar="R1,R2", default=None,
                     help="Your roles, comma-separated, e.g. cloudImages:admin [env VHDKIT_ROLES].")(f)
    return click.option("--account", metavar="ID", default=None,
                        help="Your account (tenant) id [env VHDKIT_ACCOUNT].")(f)


def caller_of(account: Optional[str], roles: Optional[str]):
    """The registry identity the options (or the settings) name; a usage
    error (exit 2) without an account."""
    from ..registry import Caller

    cfg = settings(account=account, roles=roles)
    account, roles = cfg.account, cfg.roles
    if not account:
        raise click.UsageError("no identity: give --account ID (or set VHDKIT_ACCOUNT), "
                               "and your roles with --roles (or VHDKIT_ROLES)")
    return Caller.parse(account, roles or "")


def open_registry(data_dir: Optional[str], **kw: Any):
    """The registry in ``data_dir`` (default: the configured data directory),
    as :func:`vhdkit.cli._plain.open_registry` opens it."""
    return _plain.open_registry(settings(data_dir=data_dir), **kw)


# ------------------------------------------------------------ formats
#: The output format a file name's extension says, as qemu-img users name files.
_EXTENSIONS = {".vhd": "vhd", ".vpc": "vhd", ".raw": "raw", ".img": "raw"}
FORMAT = click.Choice(sorted(FORMAT_NAMES))
INPUT_FORMAT = click.Choice(sorted(INPUT_FORMAT_NAMES))


def output_format(dst: str, given: Optional[str]) -> str:
    """The one choice of an output format: -O if given, else DST's extension
    (stdout, "-", is a VHD as before); an extension that says nothing is
    refused rather than guessed."""
    if given is not None:
        return FORMAT_NAMES[given]
    if dst == "-":
        return "vhd"
    fmt = _EXTENSIONS.get(os.path.splitext(dst)[1].lower())
    if fmt is None:
        known = ", ".join(f"{e} ({f})" for e, f in _EXTENSIONS.items())
        raise click.UsageError(f"cannot tell the output format from the name {dst!r}: give -O vhd (or vpc) "
                               f"or -O raw, or use a known extension: {known}")
    return fmt
