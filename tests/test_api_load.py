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
