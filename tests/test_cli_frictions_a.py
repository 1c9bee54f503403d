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
    lines = r.stderr.strip().splitlines()      # (a note such as "created a new registry" may precede it)
    errors = [x for x in lines if x.startswith("vhdkit: error: ")]
    assert len(errors) == 1 and all(x.startswith("vhdkit: ") for x in lines), r.stderr
    assert str(f) in errors[0] or f.name in errors[0], errors[0]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert not [n for n in left if n.startswith(".")], left


# --------------------------------------------- item 2: repair and lost data
def _cut_dynamic(tmp_path: Path, cut: int):
    """A 20 MiB dynamic VHD of random data, and a copy cut at ``cut`` bytes."""
    import random

    data = random.Random(7).randbytes(20 * MiB)
    (tmp_path / "d.raw").write_bytes(data)
    assert vhdkit("convert", tmp_path / "d.raw", tmp_path / "d.vhd", "--type", "dynamic").returncode == 0
    whole = (tmp_path / "d.vhd").read_bytes()
    (tmp_path / "cut.vhd").write_bytes(whole[:cut])
    return data, whole[:cut]


def _lost_ranges_read_as_zeros_only(path: Path, data: bytes, lost):
    import vhdkit as api

    with api.open(str(path)) as s:
        got = s.read()
    assert len(got) == len(data)
    want = bytearray(data)
    for r in lost:
        assert data[r["start"]:r["end"]] != got[r["start"]:r["end"]], r   # random data: really lost
        want[r["start"]:r["end"]] = bytes(r["end"] - r["start"])
    assert got == want, "the named ranges read as zeros, and nothing else changed"


@pytest.mark.native  # the native core on a damaged image: again in the sanitizer pass
def test_repair_refuses_to_turn_lost_data_into_zeros_and_names_the_blocks(tmp_path):
    data, cut = _cut_dynamic(tmp_path, 12_000_000)
    v = tmp_path / "cut.vhd"
    r = vhdkit("repair", v)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and "would lose data" in line and "--force" in line, line
    assert "block" in line and "virtual bytes [" in line, line
    assert v.read_bytes() == cut, "a refused repair must not touch the file"
    r = vhdkit("repair", v, "--json")
    assert r.returncode == 1
    refused = json.loads(r.stdout)
    assert refused["refused"] is True and refused["code"] == "data_loss" and refused["lost"]
    assert v.read_bytes() == cut
    dry = json.loads(vhdkit("repair", v, "--dry-run", "--json").stdout)
    assert dry["lost"] == refused["lost"] and v.read_bytes() == cut
    r = vhdkit("repair", v, "--force")
    assert r.returncode == 0 and "end-footer-appended" in r.stdout and "LOST" in r.stdout, r.stdout + r.stderr
    assert "virtual bytes [" in r.stdout
    _lost_ranges_read_as_zeros_only(v, data, refused["lost"])


@pytest.mark.native  # the native core on a damaged image: again in the sanitizer pass
def test_repair_force_json_lists_the_lost_blocks(tmp_path):
    data, _ = _cut_dynamic(tmp_path, 12_000_000)
    v = tmp_path / "cut.vhd"
    d = json.loads(vhdkit("repair", v, "--force", "--json").stdout)
    assert d["action"] == "end-footer-appended" and d["lost"]
    assert all(set(r) == {"block", "start", "end"} and r["start"] < r["end"] for r in d["lost"])
    _lost_ranges_read_as_zeros_only(v, data, d["lost"])


@pytest.mark.native  # the native core on a damaged image: again in the sanitizer pass
def test_repair_that_loses_nothing_needs_no_force(tmp_path):
    data, _ = _cut_dynamic(tmp_path, 0)
    whole = (tmp_path / "d.vhd").read_bytes()
    v = tmp_path / "cut.vhd"
    v.write_bytes(whole[:-512])          # only the end footer is gone
    d = json.loads(vhdkit("repair", v, "--json").stdout)
    assert d["lost"] == [] and d["action"] != "none"
    assert vhdkit("check", v).returncode == 0


@pytest.mark.native  # the native core on a damaged image: again in the sanitizer pass
def test_python_repair_refuses_unless_forced(tmp_path):
    import vhdkit as api
    from vhdkit.errors import DataLossError

    data, cut = _cut_dynamic(tmp_path, 12_000_000)
    v = tmp_path / "cut.vhd"
    with pytest.raises(DataLossError) as ei:
        api.repair(str(v))
    assert ei.value.lost and v.read_bytes() == cut
    r = api.repair(str(v), force=True)
    assert r.action == "end-footer-appended" and r.lost == ei.value.lost
    _lost_ranges_read_as_zeros_only(v, data, r.lost)


# ------------------------------------- item 4: a lone differencing disk
@pytest.fixture
def chain(tmp_path):
    assert vhdkit("create", tmp_path / "base.vhd", "8M").returncode == 0
    assert vhdkit("snapshot", tmp_path / "base.vhd", tmp_path / "leaf.vhd").returncode == 0
    return tmp_path / "leaf.vhd", tmp_path / "base.vhd"


@pytest.mark.native  # the native core on a damaged image: again in the sanitizer pass
def test_ova_pack_refuses_a_differencing_disk_without_its_parents(tmp_path, chain):
    leaf, base = chain
    r = vhdkit("ova", "pack", leaf, "-o", tmp_path / "lone.ova")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "differencing" in r.stderr and "whole chain" in r.stderr and str(base) in r.stderr, r.stderr
    assert not (tmp_path / "lone.ova").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    r = vhdkit("ova", "pack", leaf, base, "-o", tmp_path / "chain.ova")
    assert r.returncode == 0, r.stderr
    assert vhdkit("ova", "verify", tmp_path / "chain.ova").returncode == 0


@pytest.mark.native
@pytest.mark.parametrize("compress", ["gzip", "none"])
def test_ova_verify_flags_a_package_of_a_lone_differencing_disk(tmp_path, chain, compress):
    """A package as today's `ova pack` made it: the leaf alone."""
    import tarfile

    from vhdkit.pack import ova

    leaf, base = chain
    # what pack wrote before it refused: a valid archive of the leaf alone
    good = tmp_path / "chain.ova"
    assert vhdkit("ova", "pack", leaf, base, "-o", good, "--compress", compress).returncode == 0
    lone = tmp_path / "lone.ova"
    with tarfile.open(good) as src, tarfile.open(lone, "w", format=tarfile.USTAR_FORMAT) as dst:
        members = src.getmembers()
        disk0 = members[2]
        desc = ova.build_descriptor("chain", [{"href": disk0.name, "size": disk0.size,
                                               "capacity": 8 * MiB,
                                               "compression": None if compress == "none" else "gzip"}])
        import hashlib
        mf = (f"SHA256(chain.ovf)= {hashlib.sha256(desc).hexdigest()}\n"
              f"SHA256({disk0.name})= {hashlib.sha256(src.extractfile(disk0).read()).hexdigest()}\n").encode()
        for name, data in (("chain.ovf", desc), ("chain.mf", mf), (disk0.name, src.extractfile(disk0).read())):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            dst.addfile(ti, io.BytesIO(data))
    r = vhdkit("ova", "verify", lone)
    assert r.returncode == 1 and "differencing" in r.stdout and "cannot be read" in r.stdout, r.stdout + r.stderr
    d = json.loads(vhdkit("ova", "verify", lone, "--json").stdout)
    assert d["ok"] is False and any("differencing" in p for p in d["problems"])
    r = vhdkit("ova", "unpack", lone, "-d", tmp_path / "out")
    assert r.returncode == 1 and not (tmp_path / "out").exists()


# --------------------------------------------- item 12: the Python API
def test_help_and_dir_name_the_public_api_and_stay_lazy():
    code = ("import sys, vhdkit\n"
            "assert 'vhdkit.vhd' not in sys.modules and 'vhdkit._native' not in sys.modules\n"
            "names = set(vhdkit.__all__)\n"
            "import pydoc\n"
            "doc = pydoc.plain(pydoc.render_doc(vhdkit))\n"
            "print(sorted(names)); print(sorted(set(dir(vhdkit)) & names) == sorted(names))\n"
            "print(all(f'{n}(' in doc for n in ('open', 'convert', 'repair', 'coalesce', 'check')))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    names, in_dir, in_help = r.stdout.splitlines()
    for n in ("open", "info", "check", "create", "convert", "repair", "snapshot", "coalesce", "VhdkitError"):
        assert repr(n) in names, n
    assert in_dir == "True" and in_help == "True"


def test_open_docstring_and_errors_are_true(tmp_path):
    import vhdkit as api

    v = tmp_path / "d.vhd"
    api.create(str(v), 4 * MiB)
    assert "r+" in api.open.__doc__ and "for reading." not in api.open.__doc__
    with api.open(str(v), "r+") as s:
        s.write(b"x" * 512)
    with pytest.raises(ValueError) as ei:
        api.open(str(v), "w")
    assert "'r+'" in str(ei.value)
    with api.open(str(v)) as s:
        with pytest.raises(io.UnsupportedOperation):
            s.write(b"y")
        assert s.read(512) == b"x" * 512
