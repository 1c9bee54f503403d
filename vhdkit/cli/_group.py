"""The click group of the ``vhdkit`` command line (see :mod:`vhdkit.cli`)."""
from __future__ import annotations

import importlib

import click

from . import _module_of, _modules
from ._common import VhdkitGroup


class _LazyGroup(VhdkitGroup):
    """Imports a command's module when the command is first looked up;
    anything else, and --help, imports every module."""

    def _load_all(self) -> None:
        for m in _modules():
            importlib.import_module(f"{__package__}.{m}")

    def list_commands(self, ctx: click.Context):
        self._load_all()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, name: str):
        if name not in self.commands:
            where = _module_of(name)
            if where is not None:
                importlib.import_module(f"{__package__}.{where}")
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
