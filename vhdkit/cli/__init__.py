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

import click

from ._common import VhdkitGroup

#: The command modules, each registering its commands on `main` when imported.
_MODULES = ("inspect", "convert", "chains", "packaging", "registry", "tasks", "serve", "maintenance")
#: Where the common commands live, so that running one imports only its module
#: (start-up time matters for a command-line tool); anything else, and --help,
#: imports every module.
_WHERE = {"info": "inspect", "check": "inspect", "map": "inspect",
          "create": "convert", "convert": "convert", "modify": "convert", "repair": "convert",
          "compare": "convert", "snapshot": "chains", "coalesce": "chains", "reparent": "chains",
          "chain": "chains", "compress": "packaging", "decompress": "packaging", "ova": "packaging",
          "object": "packaging", "segments": "packaging", "image": "registry", "member": "registry",
          "task": "tasks", "worker": "tasks", "serve": "serve", "cleanup": "maintenance"}


class _LazyGroup(VhdkitGroup):
    """Imports a command's module when the command is first looked up."""

    def _load_all(self) -> None:
        for m in _MODULES:
            importlib.import_module(f"{__name__}.{m}")

    def list_commands(self, ctx: click.Context):
        self._load_all()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, name: str):
        if name not in self.commands:
            if name in _WHERE:
                importlib.import_module(f"{__name__}.{_WHERE[name]}")
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
