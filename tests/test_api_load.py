"""32 concurrent clients against one server for a bounded time: zero 5xx, no
lost updates, the server's memory stays flat (slow: run with -m slow)."""
from __future__ import annotations

import sqlite3

import pytest

from bench.api_load import check_ledger, run_mix
from helpers_api import ApiServer

TOKEN = "load-acct:admin"


@pytest.mark.slow
def test_32_clients_mixed_load(tmp_path):
    with ApiServer(tmp_path) as srv:
        with srv.http(TOKEN) as c:
            shared = [c.post("/v2/images", json={"name": f"shared-{i}", "disk_format": "raw",
                                                 "container_format": "bare"}).json()["id"] for i in range(8)]
        res = run_mix(srv.url, TOKEN, shared, clients=32, seconds=20.0, rss=srv.rss)

        assert res.server_errors == 0, res.errors
        assert res.errors == [], res.errors
        assert res.ops["list"] > 0 and res.ops["tag"] > 0 and res.ops["patch"] > 0 and res.uploads_verified > 0
        assert check_ledger(srv.url, TOKEN, res) == []
        # memory: after the first seconds of warm-up, the peak may not keep climbing
        third = len(res.rss_samples) // 3
        warm, late = max(res.rss_samples[:third]), max(res.rss_samples[2 * third:])
        assert late - warm < 48 << 20, (warm >> 20, late >> 20)
    conn = sqlite3.connect(str(srv.data / "registry.db"))
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()


@pytest.mark.slow
def test_large_upload_and_download_stream_in_bounded_memory(tmp_path):
    """512 MiB in and out: the server never holds more than a few MiB of it."""
    import hashlib
    import os

    block = os.urandom(1 << 20)
    blocks = 512
    want = hashlib.md5()
    for _ in range(blocks):
        want.update(block)

    with ApiServer(tmp_path) as srv:
        with srv.http(TOKEN, timeout=600.0) as c:
            img = c.post("/v2/images", json={"name": "big", "disk_format": "raw",
                                             "container_format": "bare"}).json()
            with srv.watch_rss() as rss:
                r = c.put(img["file"], content=(block for _ in range(blocks)),
                          headers={"Content-Type": "application/octet-stream"})
                assert r.status_code == 204, r.text
                got = hashlib.md5()
                with c.stream("GET", img["file"]) as resp:
                    assert resp.status_code == 200
                    assert resp.headers["content-md5"] == want.hexdigest()
                    for chunk in resp.iter_raw():
                        got.update(chunk)
    assert got.hexdigest() == want.hexdigest()
    assert rss.growth < 64 << 20, f"server RSS grew by {rss.growth >> 20} MiB"


def test_two_workers_share_one_data_directory(tmp_path):
    with ApiServer(tmp_path, workers=2) as srv:
        ids = []
        for i in range(6):   # fresh connections, so both workers answer some
            with srv.http(TOKEN) as c:
                ids.append(c.post("/v2/images", json={"name": f"w{i}"}).json()["id"])
        with srv.http(TOKEN) as c:
            listed = {i["id"] for i in c.get("/v2/images", params={"limit": 100}).json()["images"]}
    assert listed == set(ids)
