"""OpenStack's Tempest image API tests (``tempest.api.image.v2``, metadata
definitions excluded, nothing else) against `vhdkit serve` + `vhdkit worker`
with the session's real Keystone, through scripts/tempest.  Fails when Tempest
reports any failure; the output lists every failed and skipped test with its
reason."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.tempest


def test_tempest_image_v2(keystone, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "tempest"), "--workdir", str(tmp_path),
                           "--keystone-env", str(keystone.dir / "env")],
                          capture_output=True, text=True, timeout=1800)
    print(proc.stdout[-20000:])
    summary = [line for line in proc.stdout.splitlines() if line.startswith("tempest: ") and " passed, " in line]
    assert summary, f"scripts/tempest printed no counts (exit {proc.returncode}):\n{proc.stderr[-5000:]}"
    assert proc.returncode == 0, f"{summary[-1]}\n" + "\n".join(
        line for line in proc.stdout.splitlines() if line.startswith("FAILED "))
