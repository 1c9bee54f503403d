"""Issue 19, items 5-11 and 13: the command line as a newcomer meets it.

Every test runs the real `vhdkit` command in a subprocess, as a user would:
identity and data location, image create without formats, the overwrite rule,
creating containers, binary data to a terminal (through a real pty),
qemu-img's spellings, image names, and the small things (modes under the
umask, progress, stage timings, messages, human sizes, object stat)."""
from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional

import pytest

from conftest import require_tool

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
ADMIN = "cloudImages:admin"


@pytest.fixture
def user(tmp_path):
    """A user's environment: a home of their own, no VHDKIT_* settings, and a
    working directory that is not the data directory."""
    home = tmp_path / "home"
    (home / "work").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VHDKIT_", "XDG_"))}
    env.update(HOME=str(home), PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def vk(*args, env: Dict[str, str], cwd=None, input: Optional[bytes] = None, umask: Optional[int] = None,
       **extra_env) -> subprocess.CompletedProcess:
    e = dict(env, **extra_env)
    pre = (lambda: os.umask(umask)) if umask is not None else None
    return subprocess.run([sys.executable, "-m", "vhdkit", *map(str, args)], env=e, cwd=cwd, input=input,
                          capture_output=True, timeout=300, preexec_fn=pre)


def ok(p: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert p.returncode == 0, (p.args, p.returncode, p.stderr.decode())
    return p


def js(p: subprocess.CompletedProcess):
    return json.loads(ok(p).stdout)


def on_pty(args, env, *, stdout_pty: bool = True, stderr_pty: bool = False, cwd=None, timeout: float = 120):
    """Run ``vhdkit ARGS`` with stdout and/or stderr on a real terminal (a pty);
    returns (exit status, bytes the terminal received, captured stdout/stderr)."""
    master, slave = pty.openpty()
    out = slave if stdout_pty else subprocess.PIPE
    err = slave if stderr_pty else subprocess.PIPE
    p = subprocess.Popen([sys.executable, "-m", "vhdkit", *map(str, args)], env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                         stdout=out, stderr=err)
    os.close(slave)
    got = bytearray()
    while True:                     # drain the terminal while the command runs
        r, _, _ = select.select([master], [], [], 0.1)
        if r:
            try:
                chunk = os.read(master, 65536)
            except OSError:         # EIO: every writer closed the pty
                chunk = b""
            if not chunk and p.poll() is not None:
                break
            got += chunk
        elif p.poll() is not None:
            break
    os.close(master)
    o, e = p.communicate(timeout=timeout)
    return p.returncode, bytes(got), (o or b"") + (e or b"")


def make_vhd(env, path: Path, size: str = "4M", *extra) -> Path:
    ok(vk("create", path, size, *extra, env=env))
    return path


def as_admin(env, account="acct-a", roles=ADMIN, **more):
    return dict(env, VHDKIT_ACCOUNT=account, VHDKIT_ROLES=roles, **more)


# ------------------------------------------------------------------ item 5
def test_default_data_directory_is_per_user_not_the_current_directory(user, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    env = as_admin(user)
    first = ok(vk("image", "create", "--name", "web", env=env, cwd=a))
    where = Path(user["HOME"]) / ".local" / "share" / "vhdkit"
    assert f"created a new registry in {where}" in first.stderr.decode()
    listed = vk("image", "list", "--json", env=env, cwd=b)
    assert [i["name"] for i in js(listed)["images"]] == ["web"]
    assert b"created a new registry" not in listed.stderr
    assert not (a / ".vhdkit").exists() and not (b / ".vhdkit").exists()
    # XDG_DATA_HOME moves it (absolute paths only, as the XDG spec says); VHDKIT_HOME wins over both
    xdg = tmp_path / "xdg"
    p = ok(vk("image", "list", env=env, cwd=a, XDG_DATA_HOME=str(xdg)))
    assert f"created a new registry in {xdg / 'vhdkit'}" in p.stderr.decode()
    p = ok(vk("image", "list", env=env, cwd=a, XDG_DATA_HOME=str(xdg), VHDKIT_HOME=str(tmp_path / "vh")))
    assert f"created a new registry in {tmp_path / 'vh'}" in p.stderr.decode()


def test_object_and_segments_use_the_same_identity_and_data_as_image_and_task(user, tmp_path):
    """The reported failure: `object put` stored into account `default` while
    the import ran as VHDKIT_ACCOUNT and failed `not found in account A`."""
    env = as_admin(user, account="acct-a", XDG_DATA_HOME=str(tmp_path / "xdg"))
    disk = make_vhd(env, tmp_path / "disk.vhd")
    ok(vk("object", "put", "incoming", "disk.vhd", disk, env=env))
    ok(vk("segments", "split", disk, "--name", "seg.vhd", "--container", "incoming", "--segment-size", "1M",
          env=env))
    names = [o["name"] for o in js(vk("object", "list", "incoming", "--json", "--account", "acct-a", env=user,
                                      XDG_DATA_HOME=str(tmp_path / "xdg")))]
    assert "disk.vhd" in names and "seg.vhd" in names
    t = js(vk("task", "create", "import", "--from", "incoming/disk.vhd", "--name", "web", "--json", env=env))
    ok(vk("worker", "--until-idle", "--poll", "0.05", env=env))     # same default data directory
    done = js(vk("task", "wait", t["id"], "--timeout", "60", "--json", env=env))
    assert done["status"] == "success", done
    # --data names the same directory for every command
    other = tmp_path / "elsewhere"
    ok(vk("object", "put", "c", "o", disk, "--data", other, env=env))
    assert (other / "objects" / "acct-a").is_dir()
    ok(vk("image", "list", "--data", other, env=env))
    assert (other / "registry.db").is_file()


def test_role_refusal_names_the_roles_that_would_be_allowed(user, tmp_path):
    env = as_admin(user, VHDKIT_HOME=str(tmp_path / "h"))
    img = js(vk("image", "create", "--name", "web", "--json", env=env))
    p = vk("image", "delete", img["id"], env=env, VHDKIT_ROLES="cloudImages:observer")
    assert p.returncode == 1
    msg = p.stderr.decode()
    assert "may not delete image" in msg and "allowed roles:" in msg and ADMIN in msg, msg


# ------------------------------------------------------------------ item 6
def test_image_create_with_file_but_no_formats_creates_nothing_and_names_the_flags(user, tmp_path):
    env = as_admin(user, VHDKIT_HOME=str(tmp_path / "h"))
    f = make_vhd(env, tmp_path / "disk.vhd")
    p = vk("image", "create", "--name", "x", "--file", f, env=env)
    assert p.returncode == 2
    msg = p.stderr.decode()
    assert "--disk-format" in msg and "--container-format" in msg and "no image was created" in msg
    assert js(vk("image", "list", "--json", env=env))["images"] == []
    assert b"--disk-format" in ok(vk("image", "create", "--help", env=env)).stdout
    # an image made without formats: the upload says which flags set them
    ok(vk("image", "create", "--name", "x", env=env))
    p = vk("image", "upload", "x", f, env=env)
    assert p.returncode == 2 and b"--disk-format" in p.stderr and b"disk_format" not in p.stderr
    assert js(vk("image", "show", "x", "--json", env=env))["status"] == "queued"


# ------------------------------------------------------------------ item 7
def _store_env(user, tmp_path):
    return as_admin(user, VHDKIT_HOME=str(tmp_path / "h"))


def _writers(env, tmp_path):
    """(name, argv writing OUT) for every command that writes a named file."""
    disk = make_vhd(env, tmp_path / "src.vhd", "2M")
    raw = tmp_path / "src.raw"
    raw.write_bytes(os.urandom(MiB))
    gz = tmp_path / "src.raw.gz"
    ok(vk("compress", raw, "-o", gz, env=env))
    child = tmp_path / "child.vhd"
    ok(vk("snapshot", disk, child, env=env))
    ok(vk("object", "put", "c", "o", raw, env=env))
    ok(vk("segments", "split", raw, "--name", "s", "--container", "c", "--segment-size", "256K", env=env))
    img = js(vk("image", "create", "--name", "i", "--disk-format", "raw", "--container-format", "bare",
                "--file", raw, "--json", env=env))
    return [
        ("create", lambda out: ["create", out, "1M"]),
        ("convert", lambda out: ["convert", disk, out, "-O", "raw"]),
        ("snapshot", lambda out: ["snapshot", disk, out]),
        ("coalesce", lambda out: ["coalesce", child, "-o", out, "-O", "raw"]),
        ("compress", lambda out: ["compress", raw, "-o", out]),
        ("decompress", lambda out: ["decompress", gz, "-o", out]),
        ("ova pack", lambda out: ["ova", "pack", disk, "-o", out]),
        ("segments join", lambda out: ["segments", "join", "c", "s", "-o", out]),
        ("object get", lambda out: ["object", "get", "c", "o", "-o", out]),
        ("image download", lambda out: ["image", "download", img["id"], "-o", out]),
    ]


def test_every_command_that_writes_a_file_refuses_an_existing_one_unless_forced(user, tmp_path):
    env = _store_env(user, tmp_path)
    for name, argv in _writers(env, tmp_path):
        out = tmp_path / f"out-{name.replace(' ', '-')}"
        out.write_bytes(b"precious")
        p = vk(*argv(out), env=env)
        msg = p.stderr.decode()
        assert p.returncode == 1, (name, p.returncode, msg)
        assert f"{out} exists (use --force to replace it)" in msg, (name, msg)
        assert "overwrite=" not in msg and "Traceback" not in msg, (name, msg)
        assert out.read_bytes() == b"precious", name
        ok(vk(*argv(out), "--force", env=env))
        assert out.read_bytes() != b"precious", name


def test_modify_shrink_refusal_names_the_flag(user, tmp_path):
    env = dict(user)
    disk = make_vhd(env, tmp_path / "d.vhd", "8M")
    raw = tmp_path / "r.raw"
    raw.write_bytes(b"\x01" * (8 * MiB))
    ok(vk("convert", raw, disk, "--force", env=env))
    p = vk("modify", disk, "--size", "4M", env=env)
    assert p.returncode == 1
    msg = p.stderr.decode()
    assert "use --force to discard it" in msg and "use force" not in msg and "force=True" not in msg, msg
    ok(vk("modify", disk, "--size", "4M", "--force", env=env))


# ------------------------------------------------------------------ item 8
def test_export_container_can_be_created_from_the_cli_and_the_error_says_how(user, tmp_path):
    """Also item 13: the export's stage timings are never negative (a fixed
    disk starts on the streamed path, falls back and enters `split` again)."""
    env = as_admin(user, VHDKIT_HOME=str(tmp_path / "h"))
    disk = make_vhd(env, tmp_path / "fixed.vhd", "4M", "--type", "fixed")
    ok(vk("object", "put", "incoming", "fixed.vhd", disk, env=env))
    t = js(vk("task", "create", "import", "--from", "incoming/fixed.vhd", "--name", "f", "--json", env=env))
    ok(vk("worker", "--until-idle", "--poll", "0.05", env=env))
    image_id = js(vk("task", "show", t["id"], "--json", env=env))["result"]["image_id"]

    def export():
        e = js(vk("task", "create", "export", "--image", image_id, "--container", "exports", "--json", env=env))
        ok(vk("worker", "--until-idle", "--poll", "0.05", env=env))
        return json.loads(vk("task", "show", e["id"], "--json", env=env).stdout)

    failed = export()
    assert failed["status"] == "failure"
    assert "vhdkit object create-container exports" in failed["message"], failed["message"]
    made = js(vk("object", "create-container", "exports", "--json", env=env))
    assert made == {"container": "exports", "created": True}
    assert js(vk("object", "create-container", "exports", "--json", env=env))["created"] is False
    done = export()
    assert done["status"] == "success", done
    timings = done["result"]["timings"]
    assert "split" in timings and all(v >= 0 for v in timings.values()), timings


# ------------------------------------------------------------------ item 9
def test_binary_data_is_not_written_to_a_terminal(user, tmp_path):
    env = as_admin(user, VHDKIT_HOME=str(tmp_path / "h"))
    data = os.urandom(256 * 1024)
    f = tmp_path / "blob.raw"
    f.write_bytes(data)
    img = js(vk("image", "create", "--name", "i", "--disk-format", "raw", "--container-format", "bare",
                "--file", f, "--json", env=env))
    ok(vk("object", "put", "c", "o", f, env=env))
    for argv in (["image", "download", img["id"]], ["object", "get", "c", "o"],
                 ["decompress", "-", "-o", "-"]):
        rc, tty, rest = on_pty(argv, env)
        assert rc == 2, (argv, rc, rest)
        assert b"terminal" in rest and len(tty) < 1024, (argv, rest, len(tty))
    # redirected, the same commands write the data
    assert ok(vk("image", "download", img["id"], env=env)).stdout == data
    assert ok(vk("object", "get", "c", "o", env=env)).stdout == data


# ------------------------------------------------------------------ item 10
def test_convert_takes_qemu_img_spellings_and_infers_the_format_from_the_extension(user, tmp_path):
    env = dict(user)
    qemu = require_tool("qemu-img")
    raw = tmp_path / "in.raw"
    raw.write_bytes(os.urandom(MiB) + bytes(3 * MiB))
    fixed = tmp_path / "fixed.vhd"
    p = ok(vk("convert", "-p", "-O", "vpc", "-o", "subformat=fixed", raw, fixed, env=env))
    assert b"100.0%" in p.stderr                      # -p: progress even though stderr is a pipe
    assert js(vk("info", "--output=json", fixed, env=env))["disk_type"] == "fixed"
    r = subprocess.run([qemu, "compare", "-f", "raw", "-F", "vpc", str(raw), str(fixed)], capture_output=True)
    assert r.returncode == 0, r.stdout + r.stderr
    back = tmp_path / "back.raw"                      # no -O: the extension says raw
    ok(vk("convert", fixed, back, env=env))
    assert back.read_bytes() == raw.read_bytes()
    img = tmp_path / "back.img"
    ok(vk("convert", fixed, img, env=env))
    assert img.read_bytes() == raw.read_bytes()
    dyn = tmp_path / "dyn.vhd"
    ok(vk("convert", raw, dyn, env=env))
    assert js(vk("info", dyn, "--json", env=env))["disk_type"] == "dynamic"
    p = vk("convert", fixed, tmp_path / "out.bin", env=env)
    assert p.returncode == 2 and b"-O" in p.stderr and not (tmp_path / "out.bin").exists()
    p = vk("convert", "-O", "vpc", "-o", "subformat=fixed", "--type", "dynamic", raw, tmp_path / "x.vhd", env=env)
    assert p.returncode == 2 and b"contradicts" in p.stderr
    p = vk("convert", "-O", "vpc", "-o", "preallocation=full", raw, tmp_path / "y.vhd", env=env)
    assert p.returncode == 2 and b"subformat" in p.stderr


# ------------------------------------------------------------------ item 11
def test_image_commands_take_names_and_unique_id_prefixes(user, tmp_path):
    env = as_admin(user, VHDKIT_HOME=str(tmp_path / "h"))
    web = js(vk("image", "create", "--name", "web", "--json", env=env))
    db = js(vk("image", "create", "--name", "db", "--json", env=env))
    assert js(vk("image", "show", "web", "--json", env=env))["id"] == web["id"]
    prefix = db["id"][:8]
    assert js(vk("image", "show", prefix, "--json", env=env))["id"] == db["id"]
    ok(vk("image", "update", "web", "--property", "os_distro=ubuntu", env=env))
    assert js(vk("image", "show", web["id"], "--json", env=env))["os_distro"] == "ubuntu"
    ok(vk("image", "tag", "add", "db", "prod", env=env))
    ok(vk("member", "add", "web", "acct-b", env=env))
    web2 = js(vk("image", "create", "--name", "web", "--json", env=env))
    p = vk("image", "show", "web", env=env)
    assert p.returncode == 1
    msg = p.stderr.decode()
    assert "2 images match the name 'web'" in msg and web["id"] in msg and web2["id"] in msg, msg
    assert vk("image", "delete", "web", env=env).returncode == 1       # ambiguous: nothing deleted
    assert len(js(vk("image", "list", "--json", env=env))["images"]) == 3
    ok(vk("image", "delete", "db", env=env))
    assert vk("image", "show", "nothing-like-this", env=env).returncode == 1


# ------------------------------------------------------------------ item 13
def test_outputs_follow_the_umask(user, tmp_path):
    env = _store_env(user, tmp_path)
    for name, argv in _writers(env, tmp_path):
        out = tmp_path / f"mode-{name.replace(' ', '-')}"
        ok(vk(*argv(out), env=env, umask=0o022))
        assert oct(out.stat().st_mode & 0o777) == oct(0o644), name
    out = tmp_path / "private.raw.gz"
    ok(vk("compress", tmp_path / "src.raw", "-o", out, env=env, umask=0o077))
    assert out.stat().st_mode & 0o777 == 0o600


def test_decompress_progress_never_passes_100_percent(user, tmp_path):
    env = dict(user)
    raw = tmp_path / "zeros.raw"
    raw.write_bytes(bytes(64 * MiB))                   # compresses ~1000:1
    ok(vk("compress", raw, "-o", tmp_path / "z.gz", env=env))
    rc, tty, rest = on_pty(["decompress", tmp_path / "z.gz", "-o", tmp_path / "back.raw"], env,
                           stdout_pty=False, stderr_pty=True)
    assert rc == 0, rest
    pcts = [float(x) for x in re.findall(rb"decompress:\s+([0-9.]+)%", tty)]
    assert pcts and max(pcts) <= 100.0, tty[-400:]


def test_messages_name_the_real_problem(user, tmp_path):
    env = as_admin(user, VHDKIT_HOME=str(tmp_path / "h"))
    p = vk("create", "/proc/x.vhd", "1G", env=env)
    assert p.returncode == 1 and b"does not exist" not in p.stderr and b"/proc" in p.stderr, p.stderr
    disk = make_vhd(env, tmp_path / "d.vhd")
    ok(vk("object", "put", "incoming", "d.vhd", disk, env=env))
    t = js(vk("task", "create", "import", "--from", "incoming/d.vhd", "--json", env=env))
    p = vk("task", "wait", t["id"], "--timeout", "0.3", env=env)
    assert p.returncode == 1 and b"no worker has claimed it" in p.stderr and b"vhdkit worker" in p.stderr


def test_sizes_are_human_next_to_bytes_and_object_stat_is_readable(user, tmp_path):
    env = as_admin(user, VHDKIT_HOME=str(tmp_path / "h"))
    disk = make_vhd(env, tmp_path / "d.vhd", "10M")
    info = ok(vk("info", disk, env=env)).stdout.decode()
    assert "virtual size: 10485760 bytes (10.0 MiB)" in info and "file size: " in info
    assert re.search(r"file size: \d+ bytes \([0-9.]+ KiB\)", info), info
    out = ok(vk("convert", disk, tmp_path / "d.raw", env=env)).stdout.decode()
    assert "10485760 bytes (10.0 MiB)" in out, out
    ok(vk("image", "create", "--name", "web", "--disk-format", "vhd", "--container-format", "bare",
          "--file", disk, env=env))
    listing = ok(vk("image", "list", env=env)).stdout.decode()
    assert re.search(r"\d+ bytes \([0-9.]+ KiB\)", listing), listing
    ok(vk("object", "put", "c", "o", disk, "--meta", "os=linux", env=env))
    stat = ok(vk("object", "stat", "c", "o", env=env)).stdout.decode()
    assert re.search(r"^last modified: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", stat, re.M), stat
    assert "meta os: linux" in stat and "{" not in stat, stat


def test_readme_check_report_comment_matches_the_repr(tmp_path):
    import vhdkit

    bad = tmp_path / "cut.vhd"
    vhdkit.create(bad, MiB)
    os.truncate(bad, bad.stat().st_size - 512)           # no end footer: a problem to show
    r = repr(vhdkit.check(bad))
    assert r.startswith("CheckReport(path=") and "Problem(code=" in r and "layer=" in r
    readme = (ROOT / "README.md").read_text()
    assert "# CheckReport(path, problems=[Problem(code, offset, message, layer)])" in readme
