"""The ``vhdkit`` command line.

One module per command group registers its commands on :data:`main`:
inspect (info, check, map), convert (create, convert, modify, repair, compare),
chains (snapshot, coalesce, reparent, chain), packaging (compress, decompress, ova, segments,
object), registry (image, member), tasks (task, worker), serve, maintenance (cleanup).

Exit status: 0 success, 1 the operation failed (message on stderr; file
problems included), 2 usage error, 130/143 stopped by SIGINT/SIGTERM
(:mod:`vhdkit.interrupts`).  Results go to stdout, ``--json`` on every command
for scripts.
"""
from __future__ import annotations

import importlib
import os

import click

from ._common import VhdkitGroup

_HERE = os.path.dirname(os.path.abspath(__file__))


def _modules() -> list:
    """The command modules (every module here not starting with "_"), each
    registering its commands on `main` when imported."""
    return sorted(f[:-3] for f in os.listdir(_HERE) if f.endswith(".py") and not f.startswith("_"))


def _module_of(name: str):
    """The module that registers command ``name``, read from the modules' own
    ``@main.command("NAME")`` / ``@main.group("NAME")`` lines (derived, not a
    hand-kept map), so that running a command imports only its module:
    start-up time matters for a command-line tool.  None if no module says so."""
    decls = (f'@main.command("{name}")', f'@main.group("{name}")')
    for m in _modules():
        try:
            with open(os.path.join(_HERE, f"{m}.py"), encoding="utf-8") as f:
                text = f.read()
        except OSError:  # no source (e.g. a bytecode-only install): the caller loads every module
            return None
        if any(d in text for d in decls):
            return m
    return None


class _LazyGroup(VhdkitGroup):
    """Imports a command's module when the command is first looked up;
    anything else, and --help, imports every module."""

    def _load_all(self) -> None:
        for m in _modules():
            importlib.import_module(f"{__name__}.{m}")

    def list_commands(self, ctx: click.Context):
        self._load_all()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, name: str):
        if name not in self.commands:
            where = _module_of(name)
            if where is not None:
                importlib.import_module(f"{__name__}.{where}")
            if name not in self.commands:
                self._load_all()
        return super().get_command(ctx, name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vhdkit")
def main() -> None:
    """vhdkit: VHD/OVA disk-image toolkit.

    \b
    Example:
      vhdkit info disk.vhd --json
    """
