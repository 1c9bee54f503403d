"""`vhdkit task show` prints the stage and bytes done of a running task."""
from __future__ import annotations

import json

from click.testing import CliRunner

from vhdkit.cli import main
from vhdkit.registry import Caller, Registry

A = Caller.parse("acct-a", "cloudImages:admin")


def test_task_show_prints_stage_and_bytes_while_running(tmp_path):
    home = str(tmp_path / "home")
    reg = Registry(home)
    t = reg.create_task(A, "import", {"import_from": "c/o.vhd"})
    args = ["task", "show", t.id, "--data", home, "--account", "acct-a", "--roles", "cloudImages:admin"]
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 0, out.output
    assert "pending" in out.output and "stage=" not in out.output
    assert reg.claim_task("w1", lease_seconds=600).id == t.id
    reg.heartbeat(t.id, "w1", lease_seconds=600, stage="package", bytes_done=1234, bytes_total=5678)
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 0, out.output
    assert "processing" in out.output and "stage=package 1234/5678 bytes" in out.output
    d = json.loads(CliRunner().invoke(main, args + ["--json"]).output)
    assert (d["status"], d["stage"], d["bytes_done"], d["bytes_total"]) == ("processing", "package", 1234, 5678)
    reg.finish(t.id, "w1", status="failure", message="[500] over")
    out = CliRunner().invoke(main, args)
    assert "failure" in out.output and "stage=" not in out.output and "[500] over" in out.output
