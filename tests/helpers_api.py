"""Shared helpers for the HTTP API tests: a real ``vhdkit serve`` subprocess on
a free loopback port, and the real OpenStack clients pointed at it.

Import the fixtures into a test module with
``from helpers_api import api_server  # noqa: F401``.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Optional

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


class ApiServer:
    """``python -m vhdkit serve`` in a subprocess, waited for until it answers."""

    def __init__(self, workdir: Path, env: Optional[Dict[str, str]] = None, workers: int = 1):
        self.workdir = Path(workdir)
        self.data = self.workdir / "data"
        self.home = self.workdir / "home"   # HOME of the clients: glanceclient caches schemas there
        self.home.mkdir(parents=True, exist_ok=True)
        self.extra_env = dict(env or {})
        self.workers = workers
        self.proc: Optional[subprocess.Popen] = None
        self.port = 0
        self.log = self.workdir / "server.log"

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, timeout: float = 30.0) -> "ApiServer":
        for _attempt in range(5):   # a port picked free may be taken before we bind it
            self.port = free_port()
            env = dict(os.environ, PYTHONPATH=str(ROOT), **self.extra_env)
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "vhdkit", "serve", "--host", LOOPBACK, "--port", str(self.port),
                     "--data", str(self.data), "--workers", str(self.workers)],
                    cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            if self._wait(timeout):
                return self
            self.stop()
        raise RuntimeError(f"vhdkit serve did not come up; log:\n{self.log.read_text()[-4000:]}")

    def _wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if httpx.get(self.url + "/versions", timeout=1.0).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> "ApiServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- clients ----------------------------------------------------------------------

    def http(self, token: Optional[str] = None, **kw) -> httpx.Client:
        """An httpx client; ``token`` is ``account:role[,role]``."""
        headers = {"X-Auth-Token": token} if token else {}
        headers.update(kw.pop("headers", {}))
        return httpx.Client(base_url=self.url, headers=headers, timeout=kw.pop("timeout", 30.0), **kw)

    def glance(self, token: str, *args: str, check: bool = True, stdin_file=None,
               timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run the real ``glance`` CLI against this server.

        Its standard input is closed unless ``stdin_file`` is given: glance
        treats an open, non-terminal stdin as image data to upload.
        """
        cmd = [glance_executable(), "--os-image-url", self.url, "--os-auth-token", token, *args]
        env = dict(os.environ, HOME=str(self.home))
        for var in [k for k in env if k.startswith("OS_")]:
            del env[var]
        kw = {}
        if stdin_file is None:
            kw["preexec_fn"] = _close_stdin
        else:
            kw["stdin"] = stdin_file
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise AssertionError(f"glance {' '.join(args)} exited {proc.returncode}:\n"
                                 f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
        return proc

    def glance_lib(self, token: str):
        """python-glanceclient's library (v2 client)."""
        from glanceclient import Client
        return Client("2", endpoint=self.url, token=token)

    def sdk(self, account: str, roles: str):
        """openstacksdk with ``auth_type: none`` and the image endpoint set; the
        identity travels as X-Tenant-Id/X-Roles on the session."""
        import openstack
        conn = openstack.connect(auth_type="none", auth={"endpoint": self.url},
                                 image_endpoint_override=self.url,
                                 load_yaml_config=False, load_envvars=False)
        conn.session.additional_headers.update({"X-Tenant-Id": account, "X-Roles": roles})
        return conn

    def rss(self) -> int:
        """Resident memory (bytes) of the server process and its children."""
        import psutil
        proc = psutil.Process(self.proc.pid)
        return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])


def _close_stdin() -> None:
    os.close(0)


def glance_executable() -> str:
    """The ``glance`` script installed beside this interpreter (the test extra)."""
    here = Path(sys.executable).parent / "glance"
    found = str(here) if here.exists() else shutil.which("glance")
    if found is None:
        pytest.fail("python-glanceclient's `glance` is not installed; run scripts/setup")
    return found


@pytest.fixture(scope="module")
def api_server(tmp_path_factory, api_engine):
    """One server per test module, on its own data directory and the database
    ``api_engine`` names (tests/helpers_pg.py)."""
    with ApiServer(tmp_path_factory.mktemp("api")) as server:
        yield server


def raw_request(server: ApiServer, head: str, body: bytes = b"", timeout: float = 10.0):
    """Send bytes exactly as given (no client-side URL normalisation) and
    return (status, headers dict, body) of the answer."""
    with socket.create_connection((LOOPBACK, server.port), timeout=timeout) as s:
        s.sendall(head.encode("latin-1") + body)
        return read_response(s)


def read_response(sock: socket.socket):
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, headers, rest[:length]
