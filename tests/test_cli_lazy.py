"""The CLI imports a command's module only when that command runs; the map
that says where each command lives must match where it is registered."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from vhdkit import cli

ROOT = Path(__file__).resolve().parent.parent


def test_command_map_matches_registration():
    import click
    names = cli.main.list_commands(click.Context(cli.main))      # imports every module
    assert set(cli._modules()) == {m.rsplit(".", 1)[1] for m in sys.modules if m.startswith("vhdkit.cli.")
                                   and not m.rsplit(".", 1)[1].startswith("_")}
    for name in names:
        cmd = cli.main.commands[name]
        mod = cmd.callback.__module__
        # the lazy lookup finds it by its declaration: @main.command("NAME") or @main.group("NAME")
        assert mod == f"vhdkit.cli.{cli._module_of(name)}", (name, mod, "declare it with its name")
    assert cli._module_of("no-such-command") is None


def test_running_convert_does_not_import_the_registry_or_api():
    code = ("import sys; from vhdkit.cli import main\n"
            "try:\n    main(['convert', '--help'], prog_name='vhdkit')\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith('vhdkit.')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    mods = r.stdout.strip().splitlines()[-1]
    assert "vhdkit.cli.convert" in mods
    for heavy in ("vhdkit.registry", "vhdkit.api", "vhdkit.cli.packaging", "vhdkit.tasks.pipeline"):
        assert heavy not in mods, heavy
