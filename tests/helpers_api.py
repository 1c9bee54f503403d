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
from pathlib import Path

import pytest

from apiserver import LOOPBACK, ROOT, free_port  # noqa: F401 - the tests import them from here
from apiserver import ApiServer as _Server


class ApiServer(_Server):
    """``python -m vhdkit serve`` in a subprocess (fixtures/apiserver.py), with
    the real OpenStack clients pointed at it."""

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
