"""Several vhdkit hosts on loopback: `vhdkit serve` and `vhdkit worker`
processes that open one registry database (a PostgreSQL database of
helpers_pg's server) and keep image data in one Swift (the all-in-one of
helpers_swift).  Each process stands for a host of its own, with its own data
directory for scratch files.  (Given no database URL, the processes share the
data directory that holds the embedded SQLite registry instead.)"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Dict, Optional

import pytest

from conftest import ROOT
from helpers_api import ApiServer

MiB = 1 << 20
#: seconds of an upload's lease in these tests (renewed every third)
LEASE = 3


class Hosts:
    """The settings every host of one deployment shares, and its processes."""

    def __init__(self, root: Path, swift_env: Dict[str, str], db_env: Optional[Dict[str, str]] = None) -> None:
        self.root = Path(root)
        self.db_env = dict(db_env or {})
        self.env = dict(swift_env, VHDKIT_BLOB_STORE="swift", VHDKIT_BLOB_ACCOUNT="mh" + uuid.uuid4().hex[:10],
                        VHDKIT_BLOB_SEGMENT_SIZE=str(MiB), VHDKIT_SEGMENT_SIZE=str(MiB),
                        VHDKIT_UPLOAD_LEASE_SECONDS=str(LEASE), **self.db_env)
        self.servers = []

    def data_for(self, name: str) -> Path:
        """The data directory of host ``name``: its own, or on SQLite the shared one."""
        return self.root / (name if self.db_env else "shared")

    def server(self, name: str, **extra: str) -> ApiServer:
        s = ApiServer(self.root / name, env=dict(self.env, **extra))
        s.data = self.data_for(name)
        s.env = s.extra_env
        self.servers.append(s)
        return s

    def run_env(self, **extra: str) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VHDKIT_")}
        env.update(self.env, PYTHONPATH=str(ROOT), **extra)
        return env

    def worker(self, name: str, *args: str, kill_at_stage: str = "", **extra: str) -> subprocess.Popen:
        """`vhdkit worker` as host ``name``; ``kill_at_stage``: the test hook (tests/hooked.py)."""
        from hooked import vhdkit_cmd

        return subprocess.Popen([*vhdkit_cmd(kill_at_stage=kill_at_stage), "worker", "--data",
                                 str(self.data_for(name)), "--json", *args], env=self.run_env(**extra), cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def cli(self, name: str, *args: str, timeout: float = 180, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "vhdkit", *args, "--data", str(self.data_for(name))],
                              env=self.run_env(**extra), capture_output=True, text=True, timeout=timeout)

    def cleanup(self, name: str = "cleaner") -> dict:
        r = self.cli(name, "cleanup", "--grace", "0", "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        return json.loads(r.stdout)

    def customer(self, acct: str, tmp: Path):
        """A customer account in Swift with a VHD at `images/d.vhd` and an empty `exports`."""
        from helpers_swift import make_test_vhd
        from vhdkit.store.swift import SwiftConfig, SwiftStore

        st = SwiftStore(SwiftConfig.from_env(self.env), acct)
        st.create_container("images")
        st.create_container("exports")
        make_test_vhd(tmp / "d.vhd")
        with open(tmp / "d.vhd", "rb") as f:
            st.put("images", "d.vhd", f)
        return st

    def blob_store(self):
        from vhdkit.store.swift import SwiftConfig, SwiftStore

        return SwiftStore(SwiftConfig.from_env(self.env), self.env["VHDKIT_BLOB_ACCOUNT"])

    def blob_objects(self, prefix: str = "") -> list:
        try:
            return [o.name for o in self.blob_store().list("images", prefix)]
        except Exception:  # noqa: BLE001 - no container yet
            return []

    def stop(self) -> None:
        for s in self.servers:
            s.stop()


def database_env(pg_server) -> Dict[str, str]:
    """The settings that point every host at one fresh PostgreSQL database."""
    return {"VHDKIT_DATABASE_URL": pg_server.new_database()}


def pg_stop(pg) -> list:
    """Stop fixtures/pgserver.py's server ``pg`` (fast shutdown) keeping its data;
    returns what :func:`pg_start` needs to start it again as it was."""
    args = open(f"/proc/{pg.proc.pid}/cmdline").read().split("\0")[:-1]
    pg.proc.send_signal(signal.SIGINT)
    pg.proc.wait(30)
    return args


def pg_start(pg, args: list) -> None:
    """Start ``pg`` again (same data, port and settings) and wait until it answers."""
    import time

    from pgserver import as_user

    st = os.stat(pg.dir)
    pg.proc = subprocess.Popen(args, cwd=pg.dir, env=dict(os.environ, LC_ALL="C.UTF-8", HOME=pg.dir),
                               stdin=subprocess.DEVNULL, stdout=pg.log, stderr=subprocess.STDOUT,
                               preexec_fn=as_user(st.st_uid, st.st_gid, signal.SIGQUIT))
    deadline = time.monotonic() + 60
    while True:
        try:
            pg.admin("SELECT 1")
            return
        except Exception:  # noqa: BLE001 - still starting
            assert pg.proc.poll() is None and time.monotonic() < deadline, "postgres did not start again"
            time.sleep(0.1)


@pytest.fixture(scope="module")
def hosts(swift_env, pg_server, tmp_path_factory):
    """One deployment per test module (import this fixture where it is used)."""
    h = Hosts(tmp_path_factory.mktemp("hosts"), swift_env, database_env(pg_server))
    yield h
    h.stop()
