"""The ``vhdkit`` command line.

One module per command group registers its commands on :data:`main`:
inspect (info, check, map), convert (create, convert, modify, repair, compare),
chains (snapshot, coalesce, reparent, chain), packaging (compress, decompress, ova, segments,
object), registry (image, member), tasks (task, worker), serve, maintenance (cleanup).

Exit status: 0 success, 1 the operation failed (message on stderr), 2 usage
error.  Results go to stdout, ``--json`` on every command for scripts.
"""
from __future__ import annotations

import click

from ._common import VhdkitGroup


@click.group(cls=VhdkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vhdkit")
def main() -> None:
    """vhdkit: VHD/OVA disk-image toolkit.

    \b
    Example:
      vhdkit info disk.vhd --json
    """


# Command modules register themselves on `main` when imported.
from . import inspect, convert, chains, packaging, registry, tasks, serve, maintenance  # noqa: E402,F401
