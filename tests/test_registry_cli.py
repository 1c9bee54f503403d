"""The `vhdkit image` and `vhdkit member` commands (click's CliRunner, and one
real subprocess)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

from click.testing import CliRunner

from vhdkit.cli import main


def _runner() -> CliRunner:
    try:                                   # click 8.1: ask for a separate stderr
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:                      # click >= 8.2: always separate
        return CliRunner()


def run(home, *args, account="acct-a", roles="cloudImages:admin", code=0):
    r = _runner().invoke(main, list(args), env={"VHDKIT_HOME": str(home), "VHDKIT_ACCOUNT": account,
                                                  "VHDKIT_ROLES": roles}, catch_exceptions=False)
    assert r.exit_code == code, (r.exit_code, r.output)
    return r


def js(home, *args, **kw):
    return json.loads(run(home, *args, "--json", **kw).stdout)


def test_image_story(tmp_path):
    h = tmp_path / "home"
    data = os.urandom(200_000)
    (tmp_path / "d.bin").write_bytes(data)
    img = js(h, "image", "create", "--name", "web", "--disk-format", "raw", "--container-format", "bare",
             "--tag", "t1", "--property", "os_distro=ubuntu", "--file", str(tmp_path / "d.bin"))
    iid = img["id"]
    assert (img["status"], img["size"], img["checksum"]) == ("active", len(data), hashlib.md5(data).hexdigest())
    assert img["os_distro"] == "ubuntu" and img["tags"] == ["t1"]
    table = run(h, "image", "list").stdout
    assert iid in table and "web" in table and table.splitlines()[0].split()[:3] == ["ID", "Name", "Status"]
    out = js(h, "image", "update", iid, "--name", "web2", "--property", "k=v", "--remove-property", "os_distro")
    assert out["name"] == "web2" and out["k"] == "v" and "os_distro" not in out
    assert js(h, "image", "tag", "add", iid, "t2", "t3")["tags"] == ["t1", "t2", "t3"]
    assert js(h, "image", "tag", "remove", iid, "t3")["tags"] == ["t1", "t2"]
    assert [i["id"] for i in js(h, "image", "list", "--tag", "t1", "--tag", "t2")["images"]] == [iid]
    assert js(h, "image", "list", "--tag", "t3")["images"] == []
    # share with b
    assert js(h, "member", "add", iid, "acct-b")["status"] == "pending"
    assert js(h, "image", "list", account="acct-b", roles="observer")["images"] == []
    pend = js(h, "image", "list", "--member-status", "pending", account="acct-b", roles="observer")
    assert [i["id"] for i in pend["images"]] == [iid]
    assert js(h, "member", "accept", iid, account="acct-b", roles="admin")["status"] == "accepted"
    assert [i["id"] for i in js(h, "image", "list", account="acct-b", roles="observer")["images"]] == [iid]
    assert [m["member_id"] for m in js(h, "member", "list", iid)["members"]] == ["acct-b"]
    assert js(h, "member", "show", iid, "acct-b")["status"] == "accepted"
    run(h, "image", "download", iid, "-o", str(tmp_path / "o.bin"), account="acct-b", roles="observer")
    assert (tmp_path / "o.bin").read_bytes() == data
    part = run(h, "image", "download", iid, "--offset", "10", "--length", "20").stdout_bytes
    assert part == data[10:30]
    assert js(h, "member", "reject", iid, account="acct-b", roles="admin")["status"] == "rejected"
    run(h, "member", "remove", iid, "acct-b")
    r = run(h, "image", "show", iid, account="acct-b", roles="admin", code=1)
    assert "not found" in r.stderr
    assert js(h, "image", "deactivate", iid)["status"] == "deactivated"
    assert js(h, "image", "reactivate", iid)["status"] == "active"
    r = run(h, "image", "delete", iid, roles="cloudImages:creator", code=1)
    assert r.stderr.startswith("vhdkit: error:")
    run(h, "image", "delete", iid)
    assert js(h, "image", "list")["images"] == []


def test_errors_and_usage(tmp_path):
    h = tmp_path / "home"
    r = run(h, "image", "list", "--sort", "bogus:asc", code=1)
    assert "invalid sort key" in r.stderr
    r = run(h, "image", "create", "--property", "com.rackspace__1__options=1", code=1)
    assert "com.rackspace__1__options" in r.stderr
    r = _runner().invoke(main, ["image", "list"], env={"VHDKIT_HOME": str(h), "VHDKIT_ACCOUNT": ""})
    assert r.exit_code == 2
    img = js(h, "image", "create", "--name", "p")
    assert run(h, "image", "update", img["id"], code=2).exit_code == 2


def test_upload_from_stdin_in_a_real_process(tmp_path):
    env = dict(os.environ, VHDKIT_HOME=str(tmp_path / "h"), VHDKIT_ACCOUNT="acct-a", VHDKIT_ROLES="admin",
               PYTHONPATH=os.getcwd())
    cmd = [sys.executable, "-m", "vhdkit"]
    img = json.loads(subprocess.run(cmd + ["image", "create", "--disk-format", "raw", "--container-format",
                                           "bare", "--json"], env=env, check=True, capture_output=True).stdout)
    out = subprocess.run(cmd + ["image", "upload", img["id"], "-", "--json"], input=b"streamed" * 1000,
                         env=env, check=True, capture_output=True)
    assert json.loads(out.stdout)["checksum"] == hashlib.md5(b"streamed" * 1000).hexdigest()
    assert out.stderr == b""       # no progress when stderr is not a terminal


def test_download_output_is_atomic_and_verify_catches_a_damaged_blob(tmp_path):
    h = tmp_path / "home"
    data = os.urandom(300_000)
    (tmp_path / "d.bin").write_bytes(data)
    iid = js(h, "image", "create", "--name", "v", "--disk-format", "raw", "--container-format", "bare")["id"]
    run(h, "image", "upload", iid, str(tmp_path / "d.bin"))
    out = tmp_path / "o.bin"
    got = js(h, "image", "download", iid, "-o", str(out), "--verify")
    assert got["verified"] is True and got["bytes"] == len(data) and out.read_bytes() == data
    out2 = tmp_path / "o2.bin"
    run(h, "image", "download", iid, "-o", str(out2), "--no-sync")   # no re-hash, no fsync
    assert out2.read_bytes() == data
    # --verify is for a whole image written to a file
    run(h, "image", "download", iid, "--verify", code=2)
    run(h, "image", "download", iid, "-o", str(tmp_path / "r.bin"), "--verify", "--offset", "1", code=2)
    # damage the stored blob (same size): --verify refuses, and leaves neither the file nor its .part
    blob = [p for p in (h / "blobs").rglob("*") if p.is_file() and p.stat().st_size == len(data)]
    assert len(blob) == 1
    with open(blob[0], "r+b") as f:
        f.seek(1000)
        f.write(bytes([data[1000] ^ 0xFF]))
    bad = tmp_path / "bad.bin"
    r = run(h, "image", "download", iid, "-o", str(bad), "--verify", code=1)
    assert "does not match" in r.stderr
    assert not bad.exists() and list(tmp_path.glob(".bad.bin.*.part")) == []
    # without --verify the copy is what the blob holds (no re-hash by default)
    run(h, "image", "download", iid, "-o", str(bad))
    assert bad.read_bytes() != data and len(bad.read_bytes()) == len(data)


def test_image_download_imports_only_the_registry_commands(tmp_path):
    h = tmp_path / "home"
    (tmp_path / "d.bin").write_bytes(b"x" * 1000)
    iid = js(h, "image", "create", "--name", "s", "--disk-format", "raw", "--container-format", "bare")["id"]
    run(h, "image", "upload", iid, str(tmp_path / "d.bin"))
    code = ("import sys, runpy; sys.argv = ['vhdkit', 'image', 'download', sys.argv[1], '-o', sys.argv[2]]\n"
            "try:\n    runpy.run_module('vhdkit', run_name='__main__')\nexcept SystemExit as e:\n"
            "    assert not e.code, e.code\n"
            "print(sorted(m for m in sys.modules if m.startswith('vhdkit.cli.')))")
    env = dict(os.environ, VHDKIT_HOME=str(h), VHDKIT_ACCOUNT="acct-a", VHDKIT_ROLES="admin")
    r = subprocess.run([sys.executable, "-c", code, iid, str(tmp_path / "o.bin")], env=env,
                       capture_output=True, text=True, check=True)
    # the plumbing (the fast path looks first, then click's group) and the registry commands, no others
    assert r.stdout.strip().splitlines()[-1] == ("['vhdkit.cli._common', 'vhdkit.cli._fast', 'vhdkit.cli._group', "
                                                 "'vhdkit.cli._plain', 'vhdkit.cli._reads', 'vhdkit.cli.registry']")
    assert (tmp_path / "o.bin").read_bytes() == b"x" * 1000
