"""Tasks over HTTP, end to end: an import task created with the real `glance
task-create` and an export task created with a plain POST /v2/tasks, both run
by `vhdkit worker --until-idle` on the server's data directory and followed
with GET /v2/tasks/{id}.  Peer: qemu-img reads the exported virtual disk."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import require_tool
from helpers_api import ROOT, api_server  # noqa: F401
from shared import put_file
from test_api_glance import table

from vhdkit.pack import segments
from vhdkit.tasks.pipeline import PipelineConfig
from vhdkit.store import LocalStore

ADMIN = "acct-http:cloudImages:admin"
OTHER = "acct-other:cloudImages:admin"


def _raw_sha256(path: Path, fmt: str, tmp: Path) -> str:
    out = tmp / (path.name + ".raw")
    subprocess.run([require_tool("qemu-img"), "convert", "-f", fmt, "-O", "raw", str(path), str(out)], check=True)
    h = hashlib.sha256(out.read_bytes()).hexdigest()
    out.unlink()
    return h


def _worker(data: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("VHDKIT_STORE", None)
    p = subprocess.run([sys.executable, "-m", "vhdkit", "worker", "--until-idle", "--data", str(data)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr


def test_import_then_export_through_the_http_api(api_server, tmp_path):
    # a dynamic VHD made by the peer, half of it data
    raw = tmp_path / "disk.raw"
    with open(raw, "wb") as f:
        f.truncate(8 << 20)
        f.write(os.urandom(3 << 20))
    vhd = tmp_path / "disk.vhd"
    subprocess.run([require_tool("qemu-img"), "convert", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic",
                    str(raw), str(vhd)], check=True)
    want = _raw_sha256(vhd, "vpc", tmp_path)
    store: LocalStore = PipelineConfig(home=api_server.data).store("acct-http")
    put_file(store, "incoming", "disk.vhd", vhd, also=["exports"])

    # import: created by the real glance client
    task_input = {"import_from": "incoming/disk.vhd", "import_from_format": "vhd",
                  "image_properties": {"name": "over-http"}}
    created = table(api_server.glance(ADMIN, "task-create", "--type", "import",
                                      "--input", json.dumps(task_input)).stdout)
    assert created["status"] == "pending"
    _worker(api_server.data)
    with api_server.http(ADMIN) as c:
        t = c.get(f"/v2/tasks/{created['id']}").json()
        assert t["status"] == "success", t
        image_id = t["result"]["image_id"]
        img = c.get(f"/v2/images/{image_id}").json()
        assert img["status"] == "active" and img["name"] == "over-http"
        assert img["disk_format"] == "vhd" and img["container_format"] == "ova"
        # the stored data is what the API serves, with the checksum it declares
        body = c.get(f"/v2/images/{image_id}/file").content
        assert hashlib.md5(body).hexdigest() == img["checksum"] and len(body) == img["size"]
        # another account sees neither the task nor the image
        with api_server.http(OTHER) as o:
            assert o.get(f"/v2/tasks/{created['id']}").status_code == 404
            assert o.get(f"/v2/images/{image_id}").status_code == 404

        # export: a plain POST /v2/tasks
        r = c.post("/v2/tasks", json={"type": "export", "input": {"image_uuid": image_id,
                                                                  "receiving_swift_container": "exports"}})
        assert r.status_code == 201, r.text
        task_id = r.json()["id"]
    _worker(api_server.data)
    with api_server.http(ADMIN) as c:
        t = c.get(f"/v2/tasks/{task_id}").json()
    assert t["status"] == "success", t
    assert t["result"]["export_location"] == f"exports/{image_id}.vhd"
    joined = tmp_path / "joined.vhd"
    segments.join(store, "exports", f"{image_id}.vhd", str(joined))
    assert _raw_sha256(joined, "vpc", tmp_path) == want
    # a new identity: the file differs from the imported one, the virtual disk does not
    assert hashlib.sha256(joined.read_bytes()).hexdigest() != hashlib.sha256(vhd.read_bytes()).hexdigest()


def test_a_failed_task_shows_its_code_over_http(api_server):
    with api_server.http(ADMIN) as c:
        r = c.post("/v2/tasks", json={"type": "import", "input": {"import_from": "incoming/missing.vhd",
                                                                  "import_from_format": "vhd"}})
        assert r.status_code == 201, r.text
        task_id = r.json()["id"]
    _worker(api_server.data)
    with api_server.http(ADMIN) as c:
        t = c.get(f"/v2/tasks/{task_id}").json()
    assert t["status"] == "failure" and t["message"].startswith("[404]"), t


def test_a_running_tasks_progress_is_in_its_json_and_glance_accepts_it(api_server):
    from vhdkit.registry import Registry

    with api_server.http(ADMIN) as c:
        r = c.post("/v2/tasks", json={"type": "import", "input": {"import_from": "incoming/x.vhd"}})
        task_id = r.json()["id"]
        assert "stage" not in c.get(f"/v2/tasks/{task_id}").json()  # pending: no progress fields
    reg = Registry(str(api_server.data))
    claimed = reg.claim_task("test-worker", lease_seconds=600)
    assert claimed is not None and claimed.id == task_id
    reg.heartbeat(task_id, "test-worker", lease_seconds=600, stage="package", bytes_done=1234, bytes_total=5678)
    with api_server.http(ADMIN) as c:
        t = c.get(f"/v2/tasks/{task_id}").json()
        schema = c.get("/v2/schemas/task").json()
    assert (t["status"], t["stage"], t["bytes_done"], t["bytes_total"]) == ("processing", "package", 1234, 5678)
    assert schema["properties"]["bytes_done"]["readOnly"] and "additionalProperties" not in schema
    shown = table(api_server.glance(ADMIN, "task-show", task_id).stdout)  # the client validates with the schema
    assert shown["status"] == "processing" and shown["stage"] == "package" and shown["bytes_done"] == "1234"
    lib = api_server.glance_lib(ADMIN).tasks.get(task_id)
    assert lib.stage == "package" and lib.bytes_total == 5678
    reg.finish(task_id, "test-worker", status="failure", message="[500] test over")
