"""The README's main job: import → share → export on the embedded file-based default.

    python -m vhdkit.tasks.demo [--data DIR] [--image VHD] [--keep]

Uses ``../shared/samples/windows-dynamic-512M.vhd.gz`` when present (a real
Windows-made dynamic VHD), else makes a sample dynamic VHD with vhdkit.  Every
step is printed with its figures; the run fails (exit 1) if any check fails.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Optional

from ..pack import segments
from ..registry import Caller, Registry
from .pipeline import PipelineConfig, Worker

ROOT = Path(__file__).resolve().parents[2]   # the repository
SAMPLE = ROOT.parent / "shared" / "samples" / "windows-dynamic-512M.vhd.gz"
MiB = 1 << 20


def _say(step: str, text: str = "") -> None:
    print(f"[{step}] {text}", flush=True)


def _virtual_sha256(path: Path) -> str:
    from .. import vhd

    h = hashlib.sha256()
    buf = bytearray(8 * MiB)
    with vhd.open(path) as s:
        while True:
            n = s.readinto(buf)
            if not n:
                break
            h.update(memoryview(buf)[:n])
    return h.hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(8 * MiB), b""):
            h.update(chunk)
    return h.hexdigest()


def _make_sample(dest: Path) -> Path:
    """A 256 MiB dynamic VHD, a quarter of it written (deterministic)."""
    from .. import vhd

    raw = dest.with_suffix(".raw")
    block = 2 * MiB
    with open(raw, "wb") as f:
        f.truncate(256 * MiB)
        seed = hashlib.sha256(b"vhdkit-demo").digest()
        for i in range(0, 128, 4):
            f.seek(i * block)
            data = hashlib.shake_256(seed + i.to_bytes(4, "big")).digest(block)
            f.write(data)
    vhd.convert(raw, dest, type="dynamic")
    raw.unlink()
    return dest


def _run_task(reg: Registry, caller: Caller, kind: str, task_input: dict) -> Optional[dict]:
    """Create a ``kind`` task as ``caller`` and wait for it: the finished task,
    or None (said) if it failed."""
    task = reg.create_task(caller, kind, task_input)
    _say(kind, f"task {task.id} created by {caller.account}")
    t = _wait(reg, caller, task.id, kind)
    if t["status"] != "success":
        _say(kind, f"FAILED: {t['message']}")
        return None
    return t


def _wait(reg: Registry, caller: Caller, task_id: str, label: str) -> dict:
    tty = sys.stdout.isatty()
    last = None
    while True:
        t = reg.show_task(caller, task_id)
        if t.status in ("success", "failure"):
            if tty:
                print("\r\x1b[K", end="")
            return t.to_dict() | {"message": t.message}
        if tty and t.stage:
            line = f"  {label}: {t.stage}"
            if t.bytes_total:
                line += f" {100 * (t.bytes_done or 0) / t.bytes_total:5.1f}%"
            if line != last:
                print("\r" + line + "\x1b[K", end="", flush=True)
                last = line
        time.sleep(0.1)


def run(data: Path, image: Path | None, keep: bool) -> int:
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    work = data / "demo-files"
    work.mkdir()
    t_all = time.monotonic()

    # 1. a sample VHD
    if image is not None:
        src = image
        _say("sample", f"using {src}")
    elif SAMPLE.is_file():
        src = work / "windows-dynamic-512M.vhd"
        with gzip.open(SAMPLE, "rb") as fi, open(src, "wb") as fo:
            shutil.copyfileobj(fi, fo, MiB)
        _say("sample", f"real Windows-made dynamic VHD from {SAMPLE.name}")
    else:
        src = _make_sample(work / "sample.vhd")
        _say("sample", "made a 256 MiB dynamic VHD with vhdkit (shared samples not found)")
    from .. import vhd

    vi = vhd.info(src)
    src_virtual = _virtual_sha256(src)
    _say("sample", f"{src.name}: {vi.disk_type}, virtual size {vi.virtual_size} bytes, "
                   f"file {src.stat().st_size} bytes, creator {vi.creator_app!r}")
    _say("sample", f"sha256 of the virtual disk: {src_virtual}")

    reg = Registry(data)
    # small segments, so the sample export shows a real multi-segment large object
    cfg = PipelineConfig.from_config(reg.config, data, segment_size=8 * MiB)
    a = Caller.parse("account-a", "cloudImages:admin")
    b = Caller.parse("account-b", "cloudImages:admin")

    # 2. upload into account A's container
    store_a = cfg.store(a.account)
    store_a.create_container("images")
    store_a.create_container("exports")
    with open(src, "rb") as f:
        obj = store_a.put("images", src.name, f)
    _say("object put", f"account-a/images/{src.name}: {obj.size} bytes, etag {obj.etag}")

    # a worker, as `vhdkit worker` runs it
    stop = threading.Event()
    worker = Worker(reg, cfg, "demo-worker")
    wt = threading.Thread(target=worker.run, kwargs={"poll": 0.05, "stop": stop}, daemon=True)
    wt.start()
    ok = True
    try:
        # 3. import
        t0 = time.monotonic()
        t = _run_task(reg, a, "import", {"import_from": f"images/{src.name}", "import_from_format": "vhd",
                                         "image_properties": {"name": "demo-web-server"}})
        if t is None:
            return 1
        image_id = t["result"]["image_id"]
        img = reg.show_image(a, image_id)
        _say("import", f"image {image_id} {img.status}: {img.disk_format}/{img.container_format}, "
                       f"stored {img.size} bytes ({100 * img.size / src.stat().st_size:.1f}% of the VHD), "
                       f"virtual_size {img.virtual_size}, md5 {img.checksum}")
        _say("import", f"stages (s): {t['result'].get('timings')}; total {time.monotonic() - t0:.2f} s")

        # 4. tag and share
        reg.add_tag(a, image_id, "demo")
        reg.add_member(a, image_id, b.account)
        seen = [i.id for i in reg.list_images(b).images]
        _say("share", f"tagged 'demo'; shared with account-b (pending); account-b's list shows it: {image_id in seen}")
        ok &= image_id not in seen
        reg.update_member(b, image_id, b.account, "accepted")
        seen = [i.id for i in reg.list_images(b).images]
        _say("share", f"account-b accepted; account-b's list shows it: {image_id in seen}")
        ok &= image_id in seen

        # 5. export by the owner
        t0 = time.monotonic()
        t = _run_task(reg, a, "export", {"image_uuid": image_id, "receiving_swift_container": "exports"})
        if t is None:
            return 1
        loc = t["result"]["export_location"]
        segs = [o.name for o in store_a.list("exports")]
        _say("export", f"{loc}: {t['result']['segments']} segment(s), {t['result']['size']} bytes; "
                       f"objects in account-a/exports: {', '.join(segs)}")
        _say("export", f"stages (s): {t['result'].get('timings')}; total {time.monotonic() - t0:.2f} s")
    finally:
        stop.set()
        wt.join()

    # 6. join and verify
    joined = work / "exported.vhd"
    man = segments.join(store_a, "exports", loc.split("/", 1)[1], joined)
    exp_info = vhd.info(joined)
    rep = vhd.check(joined)
    exp_virtual = _virtual_sha256(joined)
    _say("verify", f"joined {len(man.segments)} segment(s), every one verified: {joined.stat().st_size} bytes, "
                   f"sha256 {man.sha256}")
    _say("verify", f"exported VHD: {exp_info.disk_type}, uuid {exp_info.uuid} (imported {vi.uuid}), "
                   f"check {'clean' if rep.ok else rep.problems}")
    _say("verify", f"file sha256 imported {_file_sha256(src)[:16]}… exported {_file_sha256(joined)[:16]}… "
                   "(differ: new UUID and timestamp)")
    same = exp_virtual == src_virtual
    _say("verify", f"virtual disk sha256 {exp_virtual} {'==' if same else '!='} imported")
    ok &= same and rep.ok and exp_info.virtual_size == vi.virtual_size
    if shutil.which("qemu-img"):
        import subprocess
        r = subprocess.run(["qemu-img", "compare", "-f", "vpc", "-F", "vpc", str(src), str(joined)],
                           capture_output=True, text=True)
        _say("verify", f"qemu-img compare: {r.stdout.strip() or r.stderr.strip()}")
        ok &= r.returncode == 0
    _say("done", f"{'OK' if ok else 'FAILED'} in {time.monotonic() - t_all:.2f} s; data in {data}")
    if not keep and ok:
        shutil.rmtree(work)
    return 0 if ok else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vhdkit.tasks.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(".vhdkit-demo"), help="data directory (recreated)")
    ap.add_argument("--image", type=Path, help="use this VHD instead of the sample")
    ap.add_argument("--keep", action="store_true", help="keep the sample and joined files")
    args = ap.parse_args(argv)
    return run(args.data, args.image, args.keep)


if __name__ == "__main__":
    sys.exit(main())
