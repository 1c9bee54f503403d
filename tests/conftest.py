"""Shared fixtures: the real samples in ../shared/samples, peer tools, temp dirs."""
from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = Path(os.environ.get("VHDKIT_SAMPLES", ROOT.parent / "shared" / "samples"))
IN_CI = bool(os.environ.get("CI"))


def require_tool(name: str) -> str:
    """Path of a peer tool.  Peers are part of the suite: missing one is a
    failure (scripts/setup installs them), never a silent skip."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"peer tool {name!r} is not installed; run scripts/setup")
    return path


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    if not SAMPLES.is_dir():
        if IN_CI:
            pytest.fail(f"samples folder {SAMPLES} is missing in CI")
        pytest.skip(f"samples folder {SAMPLES} is absent")
    return SAMPLES


@pytest.fixture(scope="session")
def sample(samples_dir, tmp_path_factory):
    """sample('windows-fixed-10M') -> Path of the decompressed .vhd (cached per session)."""
    out_dir = tmp_path_factory.mktemp("samples")
    cache: dict = {}

    def get(stem: str) -> Path:
        if stem not in cache:
            src = samples_dir / f"{stem}.vhd.gz"
            dst = out_dir / f"{stem}.vhd"
            with gzip.open(src, "rb") as fi, open(dst, "wb") as fo:
                shutil.copyfileobj(fi, fo, 1 << 20)
            os.chmod(dst, 0o444)
            cache[stem] = dst
        return cache[stem]

    return get


# The Swift all-in-one and PostgreSQL fixtures (tests/helpers_swift.py,
# tests/helpers_pg.py) are registered once for
# the whole session here: imported into several test modules instead, each
# module would get its own "session" fixture and start another Swift.
pytest_plugins = ["helpers_swift", "helpers_keystone", "helpers_pg"]


@pytest.fixture
def abort_after_writes():
    """Set the native writers' test hook (vhdkit/testhooks.py): ``abort_after_writes(n)``
    stops them after n writes, ``abort_after_writes(None)`` never; reset after the test."""
    from vhdkit import testhooks

    yield testhooks.abort_after_writes
    testhooks.abort_after_writes(None)
