"""The click-free fast path (vhdkit.cli._fast) behaves exactly as the click
command line: for every command line below -- normal runs, several images,
failures, usage errors of every kind, --help, --version -- the installed
entry point (`python -m vhdkit`, which tries the fast path first) and click's
own group (`vhdkit.cli.main`) print the same bytes on stdout and stderr and
exit with the same status.  And the fast path's table of options is the
click commands' own: spellings, kinds, choices, environment variables."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers_registry import OWNER, make_image
from vhdkit.cli import _fast
from vhdkit.registry import Registry

ROOT = Path(__file__).resolve().parent.parent
_CLICK = "import sys\nfrom vhdkit.cli import main\nmain(sys.argv[1:], prog_name='vhdkit')\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from vhdkit.vhd import create, snapshot
    d = tmp_path_factory.mktemp("fast")
    for name in ("a", "b"):
        create(str(d / f"{name}.vhd"), 8 << 20, sync=False)
    create(str(d / "big.vhd"), 16 << 20, sync=False)
    snapshot(str(d / "a.vhd"), str(d / "child.vhd"))
    (d / "bad.vhd").write_bytes(b"not a vhd" * 100)
    home = d / "home"
    with Registry(str(home)) as reg:
        ids = [make_image(reg, data=b"x" * 4096, name=n, tags=["t"] if n == "one" else []).id
               for n in ("one", "two", "three")]
    return d, home, ids


def _both(args, cwd, env, scratch=None):
    """(stdout, stderr, status) of the entry point and of click's group
    (``scratch``, a directory a command may create, removed before each)."""
    out = []
    for argv in ([sys.executable, "-m", "vhdkit", *args], [sys.executable, "-c", _CLICK, *args]):
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        r = subprocess.run(argv, capture_output=True, cwd=cwd, env=env)
        out.append((r.stdout, r.stderr, r.returncode))
    return out


FORMAT_CASES = [
    ["info", "a.vhd"], ["info", "--json", "a.vhd"], ["info", "--output=json", "a.vhd"],
    ["info", "--output", "human", "a.vhd"], ["info", "a.vhd", "child.vhd"], ["info", "--json", "a.vhd", "nope.vhd"],
    ["info", "a.vhd", "nope.vhd"], ["info", "child.vhd", "--parent", "a.vhd"], ["info", "--size-rule", "chs", "a.vhd"],
    ["info", "--size-rule=bogus", "a.vhd"], ["info", "--size-rule="], ["info", "a.vhd", "--parent"], ["info"],
    ["info", "--help"], ["info", "-h"], ["info", "--json=1", "a.vhd"], ["info", "--nope", "a.vhd"],
    ["info", "--", "--json"], ["info", "-"], ["info", "--parent", "--json", "child.vhd"], ["info", "\x1b[31mred.vhd"],
    ["info", "."], ["info", "--json", "bad.vhd", "a.vhd"],
    ["check", "a.vhd"], ["check", "--json", "a.vhd", "bad.vhd"], ["check", "bad.vhd"], ["check", "--no-parents", "child.vhd"],
    ["check", "--parents", "--json", "child.vhd"], ["check", "nope.vhd"], ["check", "--no-parents=1", "a.vhd"],
    ["map", "child.vhd"], ["map", "--json", "a.vhd"], ["map", "a.vhd", "b.vhd"], ["map"], ["map", "nope.vhd"],
    ["chain", "child.vhd"], ["chain", "--json", "child.vhd"], ["chain"], ["chain", "--output=json", "a.vhd"],
    ["compare", "a.vhd", "b.vhd"], ["compare", "a.vhd", "big.vhd"], ["compare", "-f", "vhd", "-F", "vpc", "a.vhd", "b.vhd"],
    ["compare", "-f", "bogus", "a.vhd", "b.vhd"], ["compare", "-fvhd", "a.vhd", "b.vhd"], ["compare", "a.vhd", "nope.vhd"],
    ["compare", "a.vhd"], ["compare", "--json", "a.vhd", "child.vhd"],
    [], ["--help"], ["--version"], ["inf", "a.vhd"], ["info-x"],
]


@pytest.mark.parametrize("args", FORMAT_CASES, ids=lambda a: " ".join(a) or "(none)")
def test_format_commands_same_bytes_as_click(world, args):
    d, _, _ = world
    fast, slow = _both(args, d, dict(os.environ))
    assert fast == slow


REGISTRY_CASES = [
    ["image", "show", "{id}"], ["image", "show", "--json", "{id}"], ["image", "show", "one"], ["image", "show", "{prefix}"],
    ["image", "show", "nothing-like-it"], ["image", "show"], ["image", "show", "{id}", "--account", ""],
    ["image", "show", "--help"], ["image", "show", "{id}", "--roles", "cloudImages:observer"],
    ["image", "list"], ["image", "list", "--json"], ["image", "list", "--limit", "1"], ["image", "list", "--limit", "x"],
    ["image", "list", "--limit", "1", "--all-pages", "--json"], ["image", "list", "--tag", "t", "--sort", "name:asc"],
    ["image", "list", "--visibility", "all", "--member-status", "all"], ["image", "list", "--visibility", "nope"],
    ["image", "list", "--property", "bad"], ["image", "list", "--property", "=v"], ["image", "list", "--filter", "bad"],
    ["image", "list", "--filter", "size_min=1", "--property", "k=v"], ["image", "list", "--filter", "bogus_key=1"],
    ["image", "list", "--data", "{home}/elsewhere"], ["image", "list", "--database-url", "sqlite:///nope"],
    ["image", "list", "--database-url", "postgresql://nobody@127.0.0.1:1/x"], ["image"], ["image", "--help"],
    ["image", "nope"],
]


@pytest.mark.parametrize("args", REGISTRY_CASES, ids=lambda a: " ".join(a))
@pytest.mark.parametrize("identity", ["env", "flags", "none"])
def test_registry_reads_same_bytes_as_click(world, tmp_path, args, identity):
    d, home, ids = world
    args = [a.format(id=ids[0], prefix=ids[0][:6], home=tmp_path) for a in args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("VHDKIT_")}
    if identity == "env":
        env.update(VHDKIT_HOME=str(home), VHDKIT_ACCOUNT=OWNER, VHDKIT_ROLES="cloudImages:admin")
    elif identity == "flags" and len(args) > 2:
        args += ["--data", str(home), "--account", OWNER, "--roles", "cloudImages:admin"]
    fast, slow = _both(args, d, env, scratch=tmp_path)
    assert fast == slow


def _click_params(words):
    import click
    from vhdkit.cli import main
    ctx = click.Context(main)
    cmd = main.get_command(ctx, words[0])
    for w in words[1:]:
        cmd = cmd.get_command(ctx, w)
    return cmd


def test_the_fast_table_is_the_click_commands_own():
    """Every option spelling of each fast command, its kind, choices and
    environment variable, and the positional arguments, as click declares them."""
    import click
    for words, spec in _fast.COMMANDS.items():
        cmd = _click_params(words)
        want, args = {}, []
        for p in cmd.params:
            if isinstance(p, click.Argument):
                args.append(p.name + ("+" if p.nargs == -1 else ""))
                continue
            if p.name in ("help",):
                continue
            for spelling, value in [(s, True) for s in p.opts] + [(s, False) for s in p.secondary_opts]:
                if p.is_flag:
                    want[spelling] = (p.name, _fast.FLAG, value if p.secondary_opts else True)
                elif p.multiple:
                    want[spelling] = (p.name, _fast.MULTI, None)
                elif isinstance(p.type, click.Choice):
                    want[spelling] = (p.name, _fast.CHOICE, tuple(p.type.choices))
                elif p.type is click.INT:
                    want[spelling] = (p.name, _fast.INT, None)
                else:
                    want[spelling] = (p.name, _fast.VALUE, p.envvar)
        assert spec.options == want, words
        assert list(spec.args) == args, words
        ctx = click.Context(cmd)
        given = {p.name: p.get_default(ctx) for p in cmd.params if isinstance(p, click.Option) and not p.multiple}
        defaults = {k: v for k, v in given.items() if isinstance(v, (str, int)) and v is not False}
        assert spec.defaults == defaults, words
