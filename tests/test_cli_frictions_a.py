"""Issue 19 items 2, 3, 4 and 12, driven as a user would: the `vhdkit`
command in a subprocess, and the Python API."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20


def vhdkit(*args, cwd=None, env=None):
    e = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    e.pop("VHDKIT_STORE", None)
    return subprocess.run([sys.executable, "-m", "vhdkit", *map(str, args)], cwd=cwd, env=e,
                          capture_output=True, text=True)


# ------------------------------------------------- item 3: file problems
#: Every command that reads a file the user names; {F} is that file.
FILE_COMMANDS = [
    ["info", "{F}"], ["check", "{F}"], ["map", "{F}"], ["chain", "{F}"],
    ["compress", "{F}", "-o", "out.gz"], ["decompress", "{F}", "-o", "out"],
    ["convert", "{F}", "out.vhd"], ["modify", "{F}", "--new-uuid"], ["repair", "{F}"],
    ["snapshot", "{F}", "child.vhd"], ["coalesce", "{F}", "-o", "out.vhd"], ["coalesce", "{F}", "--into-parent"],
    ["ova", "pack", "{F}", "-o", "out.ova"], ["ova", "info", "{F}"], ["ova", "verify", "{F}"],
    ["ova", "unpack", "{F}", "-d", "out"],
    ["object", "put", "c", "n", "{F}", "--store", "store"],
    ["segments", "split", "{F}", "--name", "n", "--container", "c", "--store", "store"],
    ["image", "create", "--name", "x", "--disk-format", "raw", "--container-format", "bare", "--file", "{F}",
     "--account", "a", "--roles", "admin"],
]
#: Readable by nobody, root included (a write-only sysctl): EACCES without changing users.
UNREADABLE = "/proc/sys/vm/compact_memory"


def _kinds(tmp_path: Path):
    (tmp_path / "a-directory").mkdir()
    kinds = {"directory": tmp_path / "a-directory", "missing": tmp_path / "no-such-file"}
    if os.path.exists(UNREADABLE) and not os.access(UNREADABLE, os.R_OK):
        kinds["unreadable"] = Path(UNREADABLE)
    return kinds


@pytest.mark.parametrize("kind", ["directory", "missing", "unreadable"])
@pytest.mark.parametrize("cmd", FILE_COMMANDS, ids=lambda c: "-".join(x for x in c[:2] if x != "{F}"))
def test_a_file_problem_is_one_line_and_exit_1(tmp_path, cmd, kind):
    kinds = _kinds(tmp_path)
    if kind not in kinds:
        pytest.skip(f"{UNREADABLE} is not there to be unreadable")
    f = kinds[kind]
    r = vhdkit(*[str(f) if a == "{F}" else a for a in cmd], cwd=tmp_path, env={"VHDKIT_HOME": str(tmp_path / "h")})
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    if cmd[0] == "check":          # check reports the problem as its result
        assert str(f) in r.stdout
        return
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vhdkit: error: "), r.stderr
    assert str(f) in lines[0] or f.name in lines[0], lines[0]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert not [n for n in left if n.startswith(".")], left
