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


def run(home, *args, account="acct-a", roles="cloudImages:admin", code=0):
    r = CliRunner().invoke(main, list(args), env={"VHDKIT_HOME": str(home), "VHDKIT_ACCOUNT": account,
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
    r = CliRunner().invoke(main, ["image", "list"], env={"VHDKIT_HOME": str(h), "VHDKIT_ACCOUNT": ""})
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
