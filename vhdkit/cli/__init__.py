"""The ``vhdkit`` command line.

One module per command group registers its commands on :data:`main`:
inspect (info, check, map), convert (create, convert, modify, repair, compare),
chains (snapshot, coalesce, reparent, chain), packaging (compress, decompress, ova, segments,
object), registry (image, member), tasks (task, worker), serve.

Exit status: 0 success, 1 the operation failed (message on stderr), 2 usage
error.  Results go to stdout, ``--json`` on every command for scripts.
"""
from __future__ import annotations

import importlib
from typing import List, Optional

import click

from ._common import VhdkitGroup

#: the command modules, and which one defines each top-level command (a hint:
#: running a command imports only its module -- `vhdkit image download` starts
#: without the convert or packaging code; a command missing here imports them
#: all, as does --help)
MODULES = ("inspect", "convert", "chains", "packaging", "registry", "tasks", "serve")
MODULE_OF = {
    "info": "inspect", "check": "inspect", "map": "inspect",
    "create": "convert", "convert": "convert", "modify": "convert", "repair": "convert",
    "compare": "convert",
    "snapshot": "chains", "coalesce": "chains", "reparent": "chains", "chain": "chains",
    "compress": "packaging", "decompress": "packaging", "ova": "packaging", "object": "packaging",
    "segments": "packaging",
    "image": "registry", "member": "registry",
    "task": "tasks", "worker": "tasks",
    "serve": "serve",
}


def load_all() -> None:
    """Import every command module (each registers its commands on :data:`main`)."""
    for m in MODULES:
        importlib.import_module(f"{__name__}.{m}")


class _LazyGroup(VhdkitGroup):
    def get_command(self, ctx: click.Context, name: str) -> Optional[click.Command]:
        if name not in self.commands and name in MODULE_OF:
            importlib.import_module(f"{__name__}.{MODULE_OF[name]}")
        if name not in self.commands:
            load_all()
        return super().get_command(ctx, name)

    def list_commands(self, ctx: click.Context) -> List[str]:
        load_all()
        return super().list_commands(ctx)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vhdkit")
def main() -> None:
    """vhdkit: VHD/OVA disk-image toolkit.

    \b
    Example:
      vhdkit info disk.vhd --json
    """

