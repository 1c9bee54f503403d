"""Uploads to a real Swift under faults: transient errors are retried from the
segment's start (no duplicate, no missing segment), permanent ones leave no
segment behind, and a worker SIGKILLed mid-split leaves no orphan after its
task is retried.  Each runs with one segment at a time (``parallel=1``: the
retry re-reads the input) and with parallel background uploads
(``parallel=3``: the retry re-sends the segment's spool)."""
from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import threading
import time
import uuid

import pytest
import swiftclient.client as swc

from conftest import ROOT
from helpers_swift import make_test_vhd, swift_cli
from hooked import vhdkit_cmd
from vhdkit.pack import segments
from vhdkit.errors import StorageError, UnavailableError
from vhdkit.tasks.pipeline import PipelineConfig, Worker
from vhdkit.registry import Caller, Registry
from vhdkit.store import open_configured_store
from vhdkit.store.swift import SwiftStore

MiB = 1 << 20


@pytest.fixture(params=[1, 3], ids=["sequential", "parallel3"])
def st(swift_store_env, request):
    s = open_configured_store("f" + uuid.uuid4().hex[:12])
    assert isinstance(s, SwiftStore)
    s.config.parallel = request.param
    return s


class _Flaky:
    """Stands in for swiftclient's module-level ``put_object`` (what
    ``Connection.put_object`` retries): fails the puts that ``plan`` names,
    after consuming part of (or the whole) body, as a dropped connection or a
    proxy's 503 would."""

    def __init__(self, plan):
        self.real = swc.put_object
        self.plan = dict(plan)  # object name -> list of failures still to inject
        self.calls: list = []

    def __call__(self, url, token, container, name, contents=None, **kw):
        self.calls.append(name)
        todo = self.plan.get(name)
        if todo:
            kind = todo.pop(0)
            if kind == "reset":
                contents.read(300 * 1024)  # part of the body went out, then the peer reset
                raise ConnectionResetError(104, "Connection reset by peer")
            while contents.read(MiB):  # the whole body went out; the proxy answers 503
                pass
            if kw.get("response_dict") is not None:  # as the real put_object records the response
                kw["response_dict"].update(status=503, reason="Service Unavailable", headers={})
            raise swc.ClientException("injected", http_status=503, http_reason="Service Unavailable")
        return self.real(url, token, container, name, contents, **kw)


class _OneWay(io.RawIOBase):
    """A seekable file that counts how far back it is ever asked to seek."""

    def __init__(self, data: bytes):
        self.f = io.BytesIO(data)
        self.seeks: list = []

    def readable(self):
        return True

    def seekable(self):
        return True

    def readinto(self, b):
        return self.f.readinto(b)

    def tell(self):
        return self.f.tell()

    def seek(self, off, whence=0):
        self.seeks.append(off)
        return self.f.seek(off, whence)


@pytest.mark.parametrize("faults", [["reset"], ["503"], ["reset", "503"]])
def test_transient_put_failures_are_retried_from_the_segment_start(st, swift_store_env, monkeypatch, tmp_path,
                                                                   faults):
    data = os.urandom(7 * MiB + 77)
    flaky = _Flaky({"img.vhd-00002": list(faults)})
    monkeypatch.setattr(swc, "put_object", flaky)
    src = _OneWay(data)
    man = segments.split(st, "exports", "img.vhd", src, segment_size=2 * MiB)
    assert flaky.calls.count("img.vhd-00002") == 1 + len(faults)  # really retried
    assert all(flaky.calls.count(s.name) == 1 for s in man.segments if s.name != "img.vhd-00002")
    if st.config.parallel == 1:
        # split keeps a segment's first MiB in memory and re-reads the rest of
        # segment 2 (which starts at 2 MiB) from the input: one seek per retry, to 3 MiB
        assert src.seeks == [3 * MiB] * len(faults)
    else:  # the input is read once, in order; the retry re-sends the segment's spool
        assert src.seeks == []
    assert man.sha256 == hashlib.sha256(data).hexdigest()  # no byte hashed twice
    listed = [o.name for o in st.list("exports", "img.vhd-")]
    assert listed == [f"img.vhd-{i:05d}" for i in range(1, 5)] == [s.name for s in man.segments]
    out = io.BytesIO()
    segments.join(st, "exports", "img.vhd", out)
    assert out.getvalue() == data
    r = swift_cli(swift_store_env, st.account, "download", "exports", "img.vhd", "-o", str(tmp_path / "dl"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "dl").read_bytes() == data


class _Pipe(io.RawIOBase):  # e.g. stdin: no way to re-read a segment
    def __init__(self, data):
        self.f = io.BytesIO(data)

    def readable(self):
        return True

    def readinto(self, b):
        return self.f.readinto(b)


def test_unseekable_input_is_retried_only_from_a_spool(st, monkeypatch):
    """Sequential: no way to re-read a segment of a pipe, the split fails and
    leaves nothing.  Parallel: the segment's spool is re-sent, the split succeeds."""
    data = os.urandom(3 * MiB + 5)
    flaky = _Flaky({"img.vhd-00002": ["reset", "503"]})
    monkeypatch.setattr(swc, "put_object", flaky)
    if st.config.parallel == 1:
        with pytest.raises(StorageError):
            segments.split(st, "exports", "img.vhd", _Pipe(data), segment_size=1 * MiB)
        assert flaky.calls.count("img.vhd-00002") == 1
        assert st.list("exports") == []  # segment 1 was removed again
        return
    man = segments.split(st, "exports", "img.vhd", _Pipe(data), segment_size=1 * MiB)
    assert flaky.calls.count("img.vhd-00002") == 3
    assert [o.name for o in st.list("exports", "img.vhd-")] == [s.name for s in man.segments]
    assert len(man.segments) == 4 and man.sha256 == hashlib.sha256(data).hexdigest()
    out = io.BytesIO()
    segments.join(st, "exports", "img.vhd", out)
    assert out.getvalue() == data


def test_parallel_uploads_overlap_and_stay_bounded(st, monkeypatch):
    """Several segments are really in flight at once, never more than ``parallel``,
    and the spools of a thread never exceed ``parallel + 1``."""
    import vhdkit.store.swift as ss

    real_put, real_spool = swc.put_object, ss.tempfile.SpooledTemporaryFile
    lock = threading.Lock()
    state = {"active": 0, "max_active": 0, "spools": 0, "max_spools": 0}

    def slow_put(*a, **kw):
        with lock:
            state["active"] += 1
            state["max_active"] = max(state["max_active"], state["active"])
        try:
            time.sleep(0.3)  # a slow link: the next segments must not wait for this one
            return real_put(*a, **kw)
        finally:
            with lock:
                state["active"] -= 1

    class CountedSpool(real_spool):  # type: ignore[misc,valid-type]
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            with lock:
                state["spools"] += 1
                state["max_spools"] = max(state["max_spools"], state["spools"])

        def close(self):
            if not self.closed:
                with lock:
                    state["spools"] -= 1
            super().close()

    monkeypatch.setattr(swc, "put_object", slow_put)
    monkeypatch.setattr(ss.tempfile, "SpooledTemporaryFile", CountedSpool)
    data = os.urandom(8 * MiB)
    man = segments.split(st, "exports", "img.vhd", io.BytesIO(data), segment_size=1 * MiB)
    assert len(man.segments) == 8
    p = st.config.parallel
    if p == 1:
        assert state["max_active"] == 1 and state["max_spools"] == 0  # no spool: streamed from the input
    else:
        assert 2 <= state["max_active"] <= p
        assert 2 <= state["max_spools"] <= p + 1
    assert state["spools"] == 0  # every spool closed
    out = io.BytesIO()
    segments.join(st, "exports", "img.vhd", out)
    assert out.getvalue() == data


def test_input_error_with_uploads_in_flight_leaves_nothing(st, monkeypatch):
    class Breaks(io.RawIOBase):  # a source that fails after 5 MiB (a broken download, a bad disk)
        def __init__(self):
            self.n = 0

        def readable(self):
            return True

        def readinto(self, b):
            if self.n >= 5 * MiB:
                raise OSError(5, "Input/output error")
            k = min(len(b), 5 * MiB - self.n)
            b[:k] = os.urandom(k)
            self.n += k
            return k

    real_put = swc.put_object

    def slow_put(*a, **kw):
        time.sleep(0.2)  # uploads still in flight when the input breaks
        return real_put(*a, **kw)

    monkeypatch.setattr(swc, "put_object", slow_put)
    with pytest.raises(OSError):
        segments.split(st, "exports", "img.vhd", Breaks(), segment_size=1 * MiB)
    assert st.list("exports") == []
    time.sleep(0.5)  # nothing lands later either
    assert st.list("exports") == []


def test_persistent_failure_gives_up_and_removes_the_segments(st, monkeypatch):
    flaky = _Flaky({"img.vhd-00003": ["503"] * 10})
    monkeypatch.setattr(swc, "put_object", flaky)
    with pytest.raises(StorageError, match="503"):
        segments.split(st, "exports", "img.vhd", io.BytesIO(os.urandom(4 * MiB)), segment_size=1 * MiB)
    assert flaky.calls.count("img.vhd-00003") == st.config.retries + 1  # bounded
    assert st.list("exports") == []


def _worker(home, *extra, env_extra=None, hook=""):
    env = dict(os.environ, VHDKIT_LEASE_SECONDS="1", VHDKIT_HEARTBEAT_SECONDS="0.2", **(env_extra or {}))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([*vhdkit_cmd(kill_at_stage=hook), "worker", "--data", str(home), *extra, "--json"],
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("parallel", ["1", "3"])
def test_worker_killed_mid_split_on_swift_leaves_no_orphan_segments(swift_store_env, tmp_path, parallel):
    home = tmp_path / "home"
    reg, cfg = Registry(home), PipelineConfig(home=home, segment_size=1 * MiB)
    a = Caller.parse("k" + uuid.uuid4().hex[:12], "cloudImages:admin")
    st = cfg.store(a.account)
    assert isinstance(st, SwiftStore)
    st.create_container("images")
    st.create_container("exports")
    make_test_vhd(tmp_path / "d.vhd")
    with open(tmp_path / "d.vhd", "rb") as f:
        st.put("images", "d.vhd", f)
    reg.create_task(a, "import", {"import_from": "images/d.vhd", "image_properties": {"name": "d"}})
    t = Worker(reg, cfg).run_once()
    assert t.status == "success", t.message
    image_id = t.result["image_id"]
    t = reg.create_task(a, "export", {"image_uuid": image_id, "receiving_swift_container": "exports"})
    seg_env = {"VHDKIT_SEGMENT_SIZE": str(1 * MiB), "VHDKIT_SWIFT_PARALLEL": parallel}
    r = _worker(home, "--once", hook="split", env_extra=seg_env)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr)
    debris = [o.name for o in st.list("exports")]
    assert f"{image_id}.vhd" not in debris  # half an upload, no manifest yet
    if parallel == "1":  # killed after segment 1 was stored (with parallel uploads it may be in flight)
        assert debris
    time.sleep(1.2)  # the dead worker's lease runs out
    r = _worker(home, "--until-idle", env_extra=seg_env)
    assert r.returncode == 0, r.stderr
    done = reg.show_task(a, t.id)
    assert done.status == "success" and done.attempts == 2, done.message
    man = segments.join(st, "exports", f"{image_id}.vhd", tmp_path / "j.vhd")
    listed = [o.name for o in st.list("exports")]
    assert listed == sorted([f"{image_id}.vhd", f"{image_id}.vhd.segments.json"] + [s.name for s in man.segments])
    r = swift_cli(swift_store_env, a.account, "download", "exports", f"{image_id}.vhd", "-o", str(tmp_path / "dl"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "dl").read_bytes() == (tmp_path / "j.vhd").read_bytes()


def test_a_wrong_key_never_rides_on_the_token_of_the_right_one(swift_env):
    """Within one process, the token the right key obtained serves only that
    key: a store opened afterwards with the same auth URL and user but another
    key (a typo, a rotated-away key) authenticates itself and is refused; the
    right key's stores keep working, before and after."""
    acct = "tk" + uuid.uuid4().hex[:10]
    right = open_configured_store(acct, env=swift_env)
    right.create_container("c")
    right.put_bytes("c", "o", b"data")
    wrong = open_configured_store(acct, env=dict(swift_env, VHDKIT_SWIFT_KEY="not-the-key"))
    for call in (lambda: wrong.list("c"), lambda: wrong.get_bytes("c", "o"), wrong.list_containers):
        with pytest.raises(UnavailableError, match=r"refused the service's credentials \(401\)"):
            call()
    assert open_configured_store(acct, env=swift_env).get_bytes("c", "o") == b"data"
    assert [o.name for o in right.list("c")] == ["o"]


def test_swift_refusing_the_services_credentials_is_a_server_fault_naming_nothing(swift_env, tmp_path):
    """Swift answering 401/403 to the service's own user is the server's
    misconfiguration, not the customer's credentials: the API answers 503 with
    its generic message (no host, port, path or setting), the log says why."""
    from helpers_api import ApiServer

    env = dict(swift_env, VHDKIT_SWIFT_KEY="not-the-key", VHDKIT_BLOB_STORE="swift",
               VHDKIT_BLOB_ACCOUNT="svc" + uuid.uuid4().hex[:10])
    auth_url = swift_env["VHDKIT_SWIFT_AUTH_URL"]
    port = auth_url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[-1]
    with ApiServer(tmp_path / "api", env) as server, server.http("cust:admin") as c:
        r = c.post("/v2/images", json={"name": "m", "disk_format": "raw", "container_format": "bare"})
        assert r.status_code == 201, r.text
        iid = r.json()["id"]
        answers = [c.put(f"/v2/images/{iid}/file", content=os.urandom(MiB),
                         headers={"Content-Type": "application/octet-stream"}),
                   c.get("/store/v1/containers/images/objects/d.vhd")]
        for r in answers:
            assert r.status_code == 503, r.text
            assert r.headers["content-type"].startswith("application/json")
            msg = r.json()["error"]["message"]
            assert "unavailable" in msg, msg
            for secret in ("127.0.0.1", port, "auth", "VHDKIT", "credentials", "not-the-key", str(tmp_path)):
                assert secret not in msg, (secret, msg)
        assert c.get(f"/v2/images/{iid}").json()["status"] == "queued"   # nothing changed, nothing stuck
    assert "refused the service's credentials (401)" in server.log.read_text()


def test_a_token_swift_stops_accepting_is_replaced_at_once(swift_env):
    """A cached token Swift refuses (revoked, expired before our reuse limit,
    the auth service restarted) costs one retry, not an outage until the
    cache's expiry: the next request re-authenticates, every store of the
    process then uses the new token, and a wrong key is still refused."""
    from vhdkit.store import swift as swift_mod

    acct = "tr" + uuid.uuid4().hex[:10]
    st = open_configured_store(acct, env=swift_env)
    st.create_container("c")
    st.put_bytes("c", "o", b"data")
    key = swift_mod._token_cache_key(st.config)
    url, good, expiry = swift_mod._token_cache[key]
    # What Swift sees from a revoked token: one it does not know (tempauth's prefix, unknown body).
    forged = "AUTH_tk" + uuid.uuid4().hex
    swift_mod._token_cache[key] = (url, forged, expiry)
    later = open_configured_store(acct, env=swift_env)
    assert later.get_bytes("c", "o") == b"data"
    renewed = swift_mod._token_cache[key][1]
    assert renewed != forged
    assert [o.name for o in later.list("c")] == ["o"]
    assert open_configured_store(acct, env=swift_env).get_bytes("c", "o") == b"data"
    assert swift_mod._token_cache[key][1] == renewed     # one renewal serves the later stores
    wrong = open_configured_store(acct, env=dict(swift_env, VHDKIT_SWIFT_KEY="not-the-key"))
    with pytest.raises(UnavailableError, match=r"refused the service's credentials \(401\)"):
        wrong.get_bytes("c", "o")
