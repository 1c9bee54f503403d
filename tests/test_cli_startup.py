"""Start-up discipline of the commands a script calls per image (issue 24):
each imports its own CLI module and what its work needs, nothing else; and
`info`/`check` take many images in one process.  The modules a command must
not load are derived: every other command module (from vhdkit.cli's own
command lookup), plus the layers of the other domain (the registry for the
format commands, the format layer for the registry's)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers_registry import OWNER, make_image
from vhdkit import cli
from vhdkit.registry import Registry

ROOT = Path(__file__).resolve().parent.parent

#: never needed by a command that only reads images or the registry
HEAVY = ("numpy", "xxhash", "zstandard", "isal", "defusedxml", "starlette", "uvicorn", "httptools", "httpx",
         "swiftclient", "hashlib", "concurrent.futures", "vhdkit.api", "vhdkit.tasks.pipeline",
         "vhdkit.store.swift", "vhdkit.pack.segments", "vhdkit.pack.ova", "vhdkit.pack.streams", "vhdkit.store",
         "vhdkit.pack.exportstream", "vhdkit.tasks.maintenance", "psycopg", "sqlalchemy", "alembic")
FORMAT_ONLY = ("vhdkit.registry", "vhdkit.config", "sqlite3", "_sqlite3")
REGISTRY_ONLY = ("vhdkit.vhd", "vhdkit.native", "vhdkit._native", "_cffi_backend")
#: not needed by a command on the fast path: context managers' and threads' machinery
#: (vhdkit._lazy; an upload's lease thread imports threading when it starts)
FAST = ("contextlib", "threading")
#: nor by a format command: records are vhdkit._record's, not namedtuples
FAST_FORMAT = FAST + ("collections", "functools")
#: nor by a registry read (click itself loads typing; collections and functools come
#: with _sqlite3, whose statement cache is functools.lru_cache): annotations,
#: new ids, in: filters, a rules file's parser (the default rules need none), regular
#: expressions and the json package (vhdkit.cli._jsontext writes the output), the hashers' queues,
#: sqlite3's date adapters (the registry stores times as text)
FAST_REGISTRY_READ = FAST + ("typing", "uuid", "platform", "csv", "configparser", "re", "enum", "json", "queue",
                             "datetime")

_RUN = ("import sys\nfrom vhdkit.cli import main\n"
        "try:\n    main(sys.argv[1:], prog_name='vhdkit')\nexcept SystemExit as e:\n    code = e.code\n"
        "mods = sorted(sys.modules)\nimport json\nprint(json.dumps(mods), file=sys.stderr)\n"
        "sys.exit(code)\n")


def _run(*args: str, env=None):
    r = subprocess.run([sys.executable, "-c", _RUN, *args], capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, **(env or {})))
    *msgs, mods = r.stderr.strip().splitlines()
    return r, set(json.loads(mods)), "\n".join(msgs)


def _unneeded(command: str, domain: tuple) -> set:
    own = cli._module_of(command)
    assert own is not None, command
    return {f"vhdkit.cli.{m}" for m in cli._modules() if m != own} | set(HEAVY) | set(domain)


def _loaded(mods: set, names: set) -> list:
    return sorted(n for n in names if n in mods or any(m.startswith(n + ".") for m in mods))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from vhdkit.vhd import create, snapshot
    d = tmp_path_factory.mktemp("imgs")
    paths = []
    for i in range(3):
        p = d / f"d{i}.vhd"
        create(str(p), 8 << 20, sync=False)
        paths.append(str(p))
    snapshot(paths[0], str(d / "child.vhd"))
    return d, paths


@pytest.mark.parametrize("argv", [["info"], ["check"], ["map"], ["chain"], ["compare"]])
def test_format_commands_load_only_what_they_need(images, argv):
    d, paths = images
    args = argv + ([paths[0], paths[1]] if argv == ["compare"] else
                   [str(d / "child.vhd")] if argv == ["chain"] else [paths[0]])
    r, mods, err = _run(*args, "--json")
    assert r.returncode == 0, err
    json.loads(r.stdout)
    assert f"vhdkit.cli.{cli._module_of(argv[0])}" in mods
    assert _loaded(mods, _unneeded(argv[0], FORMAT_ONLY)) == []


@pytest.mark.parametrize("sub", ["show", "list"])
def test_registry_reads_load_only_what_they_need(tmp_path, sub):
    home = tmp_path / "home"
    with Registry(str(home)) as reg:
        img = make_image(reg, data=b"x" * 4096, name="plain")
    args = ["image", sub] + ([img.id] if sub == "show" else []) + ["--json"]
    r, mods, err = _run(*args, env={"VHDKIT_HOME": str(home), "VHDKIT_ACCOUNT": OWNER,
                                    "VHDKIT_ROLES": "cloudImages:admin"})
    assert r.returncode == 0, err
    assert img.id in r.stdout
    assert _loaded(mods, _unneeded("image", REGISTRY_ONLY)) == []


def test_the_check_catches_a_needless_import(images):
    """The derived list names the sibling modules: a command that loads one fails."""
    d, paths = images
    code = "import vhdkit.cli.packaging\n" + _RUN
    r = subprocess.run([sys.executable, "-c", code, "info", paths[0]], capture_output=True, text=True, cwd=ROOT)
    mods = set(json.loads(r.stderr.strip().splitlines()[-1]))
    assert "vhdkit.cli.packaging" in _loaded(mods, _unneeded("info", FORMAT_ONLY))


def test_check_many_images_json_lines_and_exit_status(images, tmp_path):
    d, paths = images
    r, _, err = _run("check", "--json", *paths)
    assert r.returncode == 0, err
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [x["path"] for x in rows] == paths and all(x["ok"] for x in rows)
    bad = tmp_path / "bad.vhd"
    bad.write_bytes(b"not a vhd")
    r, _, _ = _run("check", "--json", paths[0], str(bad), paths[1])
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert r.returncode == 1
    assert [x["ok"] for x in rows] == [True, False, True]
    assert rows[1]["problems"][0]["code"]


def test_info_many_images_reports_each_and_goes_on(images, tmp_path):
    d, paths = images
    missing = str(tmp_path / "missing.vhd")
    r, _, err = _run("info", "--json", paths[0], missing, paths[2])
    assert r.returncode == 1
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [x["path"] for x in rows] == [paths[0], missing, paths[2]]
    assert rows[0]["virtual_size"] == 8 << 20 and rows[1]["error"]["message"]
    r, _, err = _run("info", paths[0], paths[1])       # human: one block per image
    assert r.returncode == 0, err
    assert r.stdout.count("image: ") == 2
    r, _, err = _run("info", paths[0], missing)
    assert r.returncode == 1 and err.count("vhdkit: error:") == 1 and missing in err


def test_one_image_output_is_unchanged(images):
    d, paths = images
    r, _, _ = _run("info", "--json", paths[0])
    assert r.stdout.startswith("{\n  ")                 # indented, as before
    r, _, _ = _run("info", str(Path(paths[0]).with_name("nope.vhd")))
    assert r.returncode == 1 and r.stderr.startswith("vhdkit: error: ")


# ---- the fast path: the same commands through the program's entry point, without click

#: what the installed script runs (pip writes it from pyproject's [project.scripts]); runpy
#: (``python -m vhdkit``) would load importlib.util and contextlib itself
_ENTRY = ("import sys\nsys.argv = ['vhdkit', *sys.argv[1:]]\nfrom vhdkit.__main__ import run\ncode = 0\n"
          "try:\n    code = run()\nexcept SystemExit as e:\n    code = e.code\n"
          "mods = sorted(sys.modules)\nimport json\nprint(json.dumps(mods), file=sys.stderr)\nsys.exit(code)\n")


def _fast_commands():
    from vhdkit.cli import _fast
    return sorted(_fast.COMMANDS)


@pytest.mark.parametrize("words", _fast_commands(), ids=" ".join)
def test_fast_commands_load_no_click_and_no_command_module(images, tmp_path, words):
    """Derived from the fast path's own table: each of its commands, run as a
    user runs it, loads neither click nor any click command module, nor the
    heavy modules, nor the other domain's layer."""
    d, paths = images
    env = dict(os.environ)
    if words[0] == "image":
        home = tmp_path / "home"
        with Registry(str(home)) as reg:
            img = make_image(reg, data=b"x" * 4096, name="plain")
        env.update(VHDKIT_HOME=str(home), VHDKIT_ACCOUNT=OWNER, VHDKIT_ROLES="cloudImages:admin")
        args = [*words, *([img.id] if words[1] == "show" else [])]
        unneeded = set(HEAVY) | set(REGISTRY_ONLY) | set(FAST_REGISTRY_READ)
    else:
        args = [*words, *({"compare": paths[:2], "chain": [str(d / "child.vhd")]}.get(words[0], [paths[0]]))]
        unneeded = set(HEAVY) | set(FORMAT_ONLY) | set(FAST_FORMAT)
    r = subprocess.run([sys.executable, "-c", _ENTRY, *args, "--json"], capture_output=True, text=True, cwd=ROOT,
                       env=env)
    *msgs, mods = r.stderr.strip().splitlines()
    assert r.returncode == 0, msgs
    json.loads(r.stdout)
    mods = set(json.loads(mods))
    assert "vhdkit.cli._fast" in mods
    unneeded |= {"click", "vhdkit.cli._group", "vhdkit.cli._common"} | {f"vhdkit.cli.{m}" for m in cli._modules()}
    assert _loaded(mods, unneeded) == []
