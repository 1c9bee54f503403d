"""One configuration (issue 22): the table in docs/configuration.md is the
code's, `vhdkit config show` says where each value came from with secrets
masked, flags beat the environment beats the file beats the default, no
package code but vhdkit/config.py reads VHDKIT_* from the environment (the C
core reads none), and `vhdkit serve` hands its worker processes their
settings without putting them into the environment."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from helpers_api import free_port
from vhdkit.config import Config, ENV, MASK, markdown_table, settings

ROOT = Path(__file__).resolve().parent.parent


def _clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VHDKIT_")}
    env.update(PYTHONPATH=str(ROOT), XDG_CONFIG_HOME=str(ROOT / "no-such-dir"), **extra)
    return env


def _vhdkit(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vhdkit", *args], env=env, capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_the_documented_table_is_the_code():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    table = doc.split("<!-- table: generated from vhdkit/config.py -->\n", 1)[1].split("<!-- end of table -->")[0]
    assert table == markdown_table(), "regenerate the table in docs/configuration.md (see its first paragraph)"
    names = [f.name for f in settings()]
    assert len(set(ENV.values())) == len(names), "two settings share an environment variable"


def test_show_names_each_source_and_masks_secrets(tmp_path):
    cfg = tmp_path / "vhdkit.toml"
    cfg.write_text('max_file_size = 123\nswift_key = "file-secret"\nroles = "from-file"\n'
                   f'data_dir = "{tmp_path / "from-file"}"\n')
    env = _clean_env(VHDKIT_CONFIG=str(cfg), VHDKIT_KEYSTONE_PASSWORD="env-secret", VHDKIT_ROLES="from-env",
                     VHDKIT_SEGMENT_SIZE="4096", VHDKIT_DATABASE_URL="postgresql://u:db-secret@h/x")
    r = _vhdkit("config", "show", "--json", "--roles", "from-flag", env=env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    s = out["settings"]
    assert out["file"] == str(cfg)
    assert s["roles"] == {"value": "from-flag", "source": "flag", "env": "VHDKIT_ROLES"}
    assert s["segment_size"] == {"value": 4096, "source": "env", "env": "VHDKIT_SEGMENT_SIZE"}
    assert s["max_file_size"]["value"] == 123 and s["max_file_size"]["source"] == "file"
    assert s["data_dir"] == {"value": str(tmp_path / "from-file"), "source": "file", "env": "VHDKIT_HOME"}
    assert s["lease_seconds"] == {"value": Config.lease_seconds, "source": "default", "env": "VHDKIT_LEASE_SECONDS"}
    for name in ("swift_key", "keystone_password", "database_url"):
        assert s[name]["value"] == MASK, name
    assert "secret" not in r.stdout
    human = _vhdkit("config", "show", env=env)
    assert human.returncode == 0 and "secret" not in human.stdout
    assert re.search(r"^roles\s+from-env\s+env\s+VHDKIT_ROLES$", human.stdout, re.M), human.stdout


def test_the_data_directory_default_is_the_xdg_one(tmp_path):
    env = _clean_env(XDG_DATA_HOME=str(tmp_path / "xdg"))
    out = json.loads(_vhdkit("config", "show", "--json", env=env).stdout)["settings"]["data_dir"]
    assert out == {"value": str(tmp_path / "xdg" / "vhdkit"), "source": "default", "env": "VHDKIT_HOME"}


def test_a_malformed_setting_is_a_usage_error_naming_it(tmp_path):
    r = _vhdkit("image", "list", env=_clean_env(VHDKIT_HOME=str(tmp_path), VHDKIT_ACCOUNT="a",
                                                VHDKIT_SWIFT_PARALLEL="three"))
    assert r.returncode == 2 and "VHDKIT_SWIFT_PARALLEL: 'three' is not a number" in r.stderr, r.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("no_such_setting = 1\n")
    r = _vhdkit("image", "list", env=_clean_env(VHDKIT_HOME=str(tmp_path), VHDKIT_ACCOUNT="a",
                                                VHDKIT_CONFIG=str(bad)))
    assert r.returncode == 2 and "no setting 'no_such_setting'" in r.stderr, r.stderr


def test_the_file_is_parsed_only_when_there_is_one(tmp_path):
    code = ("import sys\nfrom vhdkit.cli import main\n"
            "try:\n    main(sys.argv[1:], prog_name='vhdkit')\nexcept SystemExit as e:\n    code = e.code\n"
            "print('tomllib' in sys.modules, file=sys.stderr)\nsys.exit(code)\n")
    env = _clean_env(VHDKIT_HOME=str(tmp_path / "h"), VHDKIT_ACCOUNT="a", VHDKIT_ROLES="admin")
    # an existing registry: creating one runs the schema migrations, whose tool
    # (Alembic) imports tomllib for its own configuration format
    subprocess.run([sys.executable, "-c", code, "image", "list", "--json"], env=env, capture_output=True,
                   check=True, cwd=ROOT)
    r = subprocess.run([sys.executable, "-c", code, "image", "list", "--json"], env=env, capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stderr.strip().splitlines()[-1] == "False", r.stderr
    f = tmp_path / "c.toml"
    f.write_text(f'data_dir = "{tmp_path / "other"}"\n')
    r = subprocess.run([sys.executable, "-c", code, "image", "list", "--json"],
                       env=dict(env, VHDKIT_CONFIG=str(f), VHDKIT_HOME=""), capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stderr.strip().splitlines()[-1] == "True", r.stderr
    assert (tmp_path / "other" / "registry.db").exists()


def test_only_the_configuration_reads_the_environment():
    readers = set()
    for p in sorted((ROOT / "vhdkit").rglob("*.py")):
        rel = p.relative_to(ROOT).as_posix()
        text = p.read_text()
        if re.search(r"os\.environ|getenv\(|envvar=", text):
            readers.add(rel)
    # config.py: the settings; _build.py: build-time switches, not settings
    assert readers == {"vhdkit/config.py", "vhdkit/_build.py"}, readers
    for p in sorted((ROOT / "csrc").glob("*.[ch]")):
        assert "getenv(" not in p.read_text(), p.name


def _children(pid: int) -> list:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def test_serve_hands_its_settings_to_its_workers_not_through_the_environment(tmp_path):
    """Two worker processes; the data directory from --data, the head limit from
    a configuration file that is gone once the server runs: both workers apply
    both, and none of them has a VHDKIT_* variable."""
    f = tmp_path / "serve.toml"
    f.write_text("max_request_head = 2048\n")
    port = free_port()
    data = tmp_path / "data"
    p = subprocess.Popen([sys.executable, "-m", "vhdkit", "serve", "--port", str(port), "--data", str(data),
                          "--workers", "2"], env=_clean_env(VHDKIT_CONFIG=str(f)), cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert p.poll() is None and time.monotonic() < deadline, "the server did not start"
            try:
                if httpx.get(url + "/versions", timeout=2).status_code == 200 and len(_children(p.pid)) >= 3:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        f.unlink()
        workers = [c for c in _children(p.pid)
                   if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
        assert len(workers) == 2, workers
        for c in [p.pid, *workers]:
            env = Path(f"/proc/{c}/environ").read_bytes().split(b"\0")
            assert [v for v in env if v.startswith(b"VHDKIT_") and not v.startswith(b"VHDKIT_CONFIG=")] == [], c
        hdr = {"X-Auth-Token": "acct-a:cloudImages:admin"}
        with httpx.Client(base_url=url, headers=hdr, timeout=10) as client:
            statuses = set()
            for _ in range(12):   # new connections: both workers answer some
                r = client.get("/v2/images", headers={"X-Pad": "x" * 3000, "Connection": "close"})
                statuses.add(r.status_code)
                assert r.headers["content-type"].startswith("application/json")
            assert statuses == {431}, statuses
            r = client.post("/v2/images", json={"name": "here", "disk_format": "raw", "container_format": "bare"})
            assert r.status_code == 201, r.text
        assert (data / "registry.db").exists()
    finally:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
