"""A real Swift all-in-one for the tests (scripts/swift_aio.py), started once per session.

If ``VHDKIT_SWIFT_AUTH_URL`` is already set (a Swift started by the caller),
that one is used.  A missing Swift installation is a failure, not a skip:
scripts/setup installs Debian's Swift packages."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _read_env(path: Path) -> dict:
    out = {}
    for line in path.read_text().splitlines():
        k, _, v = line.partition("=")
        if k:
            out[k] = v
    return out


@pytest.fixture(scope="session")
def swift_env(tmp_path_factory):
    """Environment variables that point vhdkit at a running real Swift."""
    keys = ("VHDKIT_SWIFT_AUTH_URL", "VHDKIT_SWIFT_USER", "VHDKIT_SWIFT_KEY", "VHDKIT_STORE")
    if os.environ.get("VHDKIT_SWIFT_AUTH_URL"):
        yield {k: os.environ[k] for k in keys if k in os.environ}
        return
    d = tmp_path_factory.mktemp("swift")
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "swift_aio.py"), "start", "--dir", str(d)],
                       capture_output=True, text=True, timeout=180)
    if r.returncode != 0:
        pytest.fail(f"could not start the Swift all-in-one: {r.stderr[-3000:]}")
    try:
        yield _read_env(Path(r.stdout.strip().splitlines()[-1]))
    finally:
        subprocess.run([sys.executable, str(ROOT / "scripts" / "swift_aio.py"), "stop", "--dir", str(d)],
                       capture_output=True, timeout=60)


@pytest.fixture
def swift_store_env(swift_env, monkeypatch):
    """Point this test's process (and its children) at Swift."""
    for k, v in swift_env.items():
        monkeypatch.setenv(k, v)
    return swift_env


def swift_cli(env: dict, *args: str, cwd=None) -> subprocess.CompletedProcess:
    """python-swiftclient's own `swift` command, as a customer would run it."""
    from vhdkit.store.swift import SwiftConfig, SwiftStore

    st = SwiftStore(SwiftConfig.from_env(env), args[0])
    url, token = st.storage_url, st._connection().token
    return subprocess.run([sys.executable, "-m", "swiftclient.shell", "--os-storage-url", url,
                           "--os-auth-token", token, *args[1:]], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


@pytest.fixture(params=["local", "swift"])
def store_factory(request, tmp_path):
    """``make(account="acct") -> ObjectStore`` on the directory backend or on the
    real Swift (a fresh Swift account per test, so tests never see each other)."""
    import uuid

    from vhdkit.store import LocalStore
    from vhdkit.store.swift import SwiftConfig, SwiftStore

    if request.param == "local":
        return lambda account="acct": LocalStore(tmp_path / "objects", account)
    env = request.getfixturevalue("swift_env")
    tag = uuid.uuid4().hex[:10]
    return lambda account="acct": SwiftStore(SwiftConfig.from_env(env), f"{account}-{tag}")


@pytest.fixture
def backend_env(store_factory, request, tmp_path):
    """Environment for CLI children that selects this test's backend (and its account prefix)."""
    env = {"VHDKIT_HOME": str(tmp_path / "home")}
    if request.node.callspec.params.get("store_factory") == "swift":
        env.update(request.getfixturevalue("swift_env"))
    return env


def make_test_vhd(path, size=12 * (1 << 20)):
    """A dynamic VHD (written by the independent fixture writer) with data in every 2 MiB block."""
    import hashlib

    import vhdref

    MiB = 1 << 20
    data = bytearray(size)
    for blk in range(0, size // (2 * MiB)):
        data[blk * 2 * MiB: blk * 2 * MiB + 256 * 1024] = hashlib.shake_256(bytes([7, blk])).digest(256 * 1024)
    vhdref.write_vhd(path, size, vhdref.sectors_of(bytes(data)), kind="dynamic")
