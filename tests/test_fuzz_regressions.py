"""Replay the fuzz reproducers in tests/fuzz_regressions/<target>/ through
the Python API, the way each libFuzzer target (fuzz/) drives the C core:

- fuzz_open / fuzz_check / fuzz_convert: the file as a VHD -- probe, info,
  open (+ map, reads at the start, middle and end), check, convert;
- fuzz_chain: the file split at "VHDKIT-FUZZ-SPLIT" into a.vhd,
  parent.vhd, grand.vhd in one directory, opened through the locators and
  with explicit parents, and checked;
- fuzz_modify: repair and modify on a copy.

Each replay runs in a subprocess (a hang or a crash of the native code
fails the test instead of killing or stalling the run) and must end with
success or a typed VhdkitError.  Add a reproducer by copying the crash file
libFuzzer wrote (fuzz/crashes/<target>/crash-*) here under a descriptive
name; `make -C fuzz fuzz` and scripts/fuzz-smoke also replay this directory.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# Reaches the native core: runs again in scripts/test's sanitizer pass.
pytestmark = pytest.mark.native

HERE = Path(__file__).resolve().parent
CASES = sorted(p for p in (HERE / "fuzz_regressions").glob("*/*") if p.is_file())

REPLAY = r'''
import os, shutil, sys, tempfile
sys.path.insert(0, {root!r})
import vhdkit
from vhdkit.errors import VhdkitError
from vhdkit.vhd import write as vw
target, src = sys.argv[1], sys.argv[2]
tmp = tempfile.mkdtemp()
def attempt(fn, *a, **k):
    try:
        return fn(*a, **k)
    except VhdkitError:
        return None
def exercise(path, **kw):
    s = attempt(vhdkit.open, path, **kw)
    if s is None:
        return
    with s:
        attempt(s.map)
        size = s.virtual_size
        for off in (0, size // 2, max(0, size - 65536)):
            n = min(65536, size - off)
            if n > 0:
                attempt(s.pread, n, off)
data = open(src, "rb").read()
if target == "fuzz_chain":
    parts = data.split(b"VHDKIT-FUZZ-SPLIT", 2)
    names = ["a.vhd", "parent.vhd", "grand.vhd"]
    paths = [os.path.join(tmp, n) for n in names]
    for p, b in zip(paths, parts + [b""] * (3 - len(parts))):
        open(p, "wb").write(b)
    exercise(paths[0])
    exercise(paths[0], parents=paths[1:])
    exercise(paths[0], allowed_root=tmp)
    vhdkit.check(paths[0], allowed_root=tmp)
else:
    p = os.path.join(tmp, "a.vhd")
    open(p, "wb").write(data)
    attempt(vhdkit.probe, p)
    attempt(vhdkit.info, p)
    exercise(p)
    vhdkit.check(p)
    if target in ("fuzz_convert", "fuzz_open"):
        attempt(vw.convert, p, os.path.join(tmp, "out.vhd"), src_format="vhd", type="dynamic")
    if target == "fuzz_modify":
        attempt(vw.repair, p)
        exercise(p)
        attempt(vw.modify, p, uuid="11111111-2222-4333-8444-555555555555")
        exercise(p)
shutil.rmtree(tmp)
print("REPLAYED")
'''


@pytest.mark.parametrize("case", CASES, ids=[f"{c.parent.name}/{c.name}" for c in CASES])
def test_fuzz_regression_replays_cleanly(case):
    code = REPLAY.format(root=str(HERE.parent))
    p = subprocess.run([sys.executable, "-c", code, case.parent.name, str(case)], capture_output=True,
                       timeout=120)
    assert p.returncode == 0 and b"REPLAYED" in p.stdout, p.stderr.decode()[-3000:]


def test_regressions_present():
    assert CASES, "tests/fuzz_regressions/ is empty"
