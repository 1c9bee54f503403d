"""Abuse of the HTTP API: oversized bodies, endless slow uploads, injection
attempts in sort keys, filters, member ids, tag names and headers.  Every
answer is a clean 4xx with a JSON body, nothing is stored, and the database
passes PRAGMA integrity_check afterwards."""
from __future__ import annotations

import json
import select
import socket
import sqlite3
import time

import pytest

from helpers_api import LOOPBACK, ApiServer, raw_request, read_response

ADMIN = "abuse-acct:admin"
LIMIT = 1 << 20


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = {"VHDKIT_API_MAX_IMAGE_SIZE": str(LIMIT), "VHDKIT_API_UPLOAD_IDLE_TIMEOUT": "2",
           "VHDKIT_API_UPLOAD_RATE_GRACE": "2", "VHDKIT_API_UPLOAD_MIN_RATE": "65536"}
    with ApiServer(tmp_path_factory.mktemp("abuse"), env=env) as srv:
        yield srv


@pytest.fixture(scope="module")
def image(server):
    with server.http(ADMIN) as c:
        r = c.post("/v2/images", json={"name": "victim", "disk_format": "raw", "container_format": "bare",
                                       "visibility": "shared", "tags": ["original"]})
        assert r.status_code == 201
        img = r.json()
        assert c.post(f"{img['self']}/members", json={"member": "friend"}).status_code == 200
        return img


def state(server, image) -> dict:
    """Everything an attack could have changed."""
    with server.http(ADMIN) as c:
        shown = c.get(image["self"]).json()
        members = c.get(f"{image['self']}/members").json()["members"]
        count = len(c.get("/v2/images", params={"limit": 1000}).json()["images"])
    return {"image": {k: v for k, v in shown.items() if k != "updated_at"},
            "members": [(m["member_id"], m["status"]) for m in members], "count": count}


def blob_files(server):
    root = server.data / "blobs"
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def assert_clean_4xx(status, headers, body, allowed=(400, 401, 403, 404, 405, 409, 413, 415, 416)):
    assert status in allowed, (status, body)
    assert headers["content-type"].startswith("application/json"), headers
    err = json.loads(body)["error"]
    assert err["code"] == status and err["message"]


INJECTED_QUERIES = [
    "sort_key=name;DROP%20TABLE%20images",
    "sort_key=name%20--",
    "sort=name:asc,../../etc:desc",
    "sort=name:sideways",
    "sort_dir=up",
    "sort_key=(SELECT%201)",
    "name=%00",
    "name=a%00b",
    "name=a%C2%85b",
    "name=a%7Fb",
    "status=in:active,%27%20OR%201=1--",
    "status=%27%20OR%20%271%27=%271",
    "visibility=everything",
    "member_status=maybe",
    "created_at=gt:yesterday",
    "created_at=lt:2020-01-01T00:00:00Z%27--",
    "size_min=-1",
    "size_max=1e99",
    "limit=-1",
    "limit=abc",
    "protected=perhaps",
    "a%00b=1",
    "..%2F..=x",
    "marker=..%2F..%2Fetc%2Fpasswd",
    "marker=00000000-0000-0000-0000-000000000000",
]


@pytest.mark.parametrize("query", INJECTED_QUERIES)
def test_injected_list_queries_are_clean_4xx(server, image, query):
    status, headers, body = raw_request(
        server, f"GET /v2/images?{query} HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {ADMIN}\r\n"
                f"Connection: close\r\n\r\n")
    assert_clean_4xx(status, headers, body)


@pytest.mark.parametrize("path, method, body", [
    ("/members", "POST", {"member": "../x"}),
    ("/members", "POST", {"member": "a/b"}),
    ("/members", "POST", {"member": "x\u0000"}),
    ("/members", "POST", {"member": "x' OR '1'='1"}),
    ("/members", "POST", {"member": ["friend"]}),
    ("/members/..%2Ffriend", "PUT", {"status": "accepted"}),
    ("/members/friend%00", "PUT", {"status": "accepted"}),
    ("/members/friend", "PUT", {"status": "accepted' --"}),
    ("/members/%2e%2e", "DELETE", None),
    ("/tags/a%2Fb", "PUT", None),
    ("/tags/%00", "PUT", None),
    ("/tags/..", "PUT", None),
    ("/tags/%2e%2e", "PUT", None),
    ("/tags/.", "PUT", None),
    ("/tags/x%0d%0aSet-Cookie:%20a=b", "PUT", None),
    ("/tags/original%00", "DELETE", None),
    ("/tags/..", "DELETE", None),
])
def test_injected_member_ids_and_tags_are_clean_4xx(server, image, path, method, body):
    before = state(server, image)
    data = b"" if body is None else json.dumps(body).encode()
    head = (f"{method} {image['self']}{path} HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {ADMIN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n")
    status, headers, answer = raw_request(server, head, data)
    assert_clean_4xx(status, headers, answer)
    assert "set-cookie" not in headers
    assert state(server, image) == before


@pytest.mark.parametrize("headers", [
    "X-Auth-Token: abuse-acct:admin%0d%0aX-Roles:%20admin",
    "X-Auth-Token: abuse-acct%00:admin",
    "X-Auth-Token: ../abuse-acct:admin",
    "X-Auth-Token: abuse-acct:admin,../../root",
    "X-Tenant-Id: abuse-acct\r\nX-Roles: admin;DROP",
    "X-Tenant-Id: abuse acct\r\nX-Roles: admin",
])
def test_injected_identity_headers_are_401(server, image, headers):
    before = state(server, image)
    status, hdrs, body = raw_request(
        server, f"DELETE {image['self']} HTTP/1.1\r\nHost: x\r\n{headers}\r\nConnection: close\r\n\r\n")
    assert_clean_4xx(status, hdrs, body, allowed=(401,))
    assert state(server, image) == before


def _new_image(server, name):
    with server.http(ADMIN) as c:
        r = c.post("/v2/images", json={"name": name, "disk_format": "raw", "container_format": "bare"})
        assert r.status_code == 201
        return r.json()


def _status(server, img):
    with server.http(ADMIN) as c:
        return c.get(img["self"]).json()


def test_declared_oversized_upload_is_413_before_reading(server):
    img = _new_image(server, "too-big-declared")
    head = (f"PUT {img['file']} HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {ADMIN}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {LIMIT + 1}\r\n\r\n")
    status, headers, body = raw_request(server, head, b"x" * 1000)
    assert_clean_4xx(status, headers, body, allowed=(413,))
    assert _status(server, img)["status"] == "queued"


def test_chunked_oversized_upload_is_413_and_leaves_nothing(server):
    img = _new_image(server, "too-big-chunked")
    before = blob_files(server)
    with server.http(ADMIN) as c:
        r = c.put(img["file"], content=iter([b"y" * 65536] * (LIMIT // 65536 + 2)),
                  headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 413 and r.json()["error"]["code"] == 413
    shown = _status(server, img)
    assert shown["status"] == "queued" and shown["size"] is None
    assert blob_files(server) == before


def _trickle(server, img, pause: float, max_seconds: float = 30.0):
    """An endless chunked upload sending one byte per ``pause`` seconds
    (``pause`` None: one byte, then silence).  Returns the answer and how long
    the server took to give it."""
    sock = socket.create_connection((LOOPBACK, server.port), timeout=max_seconds)
    try:
        sock.sendall((f"PUT {img['file']} HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {ADMIN}\r\n"
                      "Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n").encode())
        start = time.monotonic()
        sent_once = False
        while time.monotonic() - start < max_seconds:
            if not sent_once or pause is not None:
                try:
                    sock.sendall(b"1\r\nz\r\n")
                except OSError:
                    break
                sent_once = True
            readable, _, _ = select.select([sock], [], [], pause or 0.2)
            if readable:
                break
        else:
            raise AssertionError(f"the server let an endless upload run for {max_seconds} s")
        return read_response(sock), time.monotonic() - start
    finally:
        sock.close()


@pytest.mark.parametrize("pause", [None, 0.2], ids=["stalled", "trickle"])
def test_endless_slow_upload_times_out_and_image_stays_inactive(server, pause):
    img = _new_image(server, f"slow-{pause}")
    before = blob_files(server)
    (status, headers, body), _took = _trickle(server, img, pause)
    assert_clean_4xx(status, headers, body, allowed=(408,))
    shown = _status(server, img)
    assert shown["status"] == "queued" and shown["checksum"] is None
    assert blob_files(server) == before


def test_trickled_json_body_times_out(server):
    sock = socket.create_connection((LOOPBACK, server.port), timeout=30)
    try:
        sock.sendall((f"POST /v2/images HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {ADMIN}\r\n"
                      "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{").encode())
        status, headers, body = read_response(sock)
    finally:
        sock.close()
    assert_clean_4xx(status, headers, body, allowed=(408,))


def test_database_passes_integrity_check_after_the_abuse(server, image):
    # run last in this module (pytest keeps file order)
    conn = sqlite3.connect(f"file:{server.data / 'registry.db'}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()
    assert state(server, image)["image"]["tags"] == ["original"]


# -- the request head: bounded, and every refusal a JSON body ----------------------------

def _json_error(status, headers, body, expect):
    assert status == expect, (status, body[:200])
    assert headers["content-type"].startswith("application/json"), headers
    err = json.loads(body)["error"]
    assert err["code"] == expect and err["message"].startswith(str(expect))
    return err


def test_overlong_request_target_is_414_json(server):
    status, headers, body = raw_request(
        server, f"GET /v2/images?name={'a' * 100_000} HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {ADMIN}\r\n\r\n")
    err = _json_error(status, headers, body, 414)
    assert "65536" in err["message"]


def test_endless_headers_are_431_json_and_the_server_lives(server):
    """A client that sends header lines without end is cut off at the limit
    (uvicorn's httptools protocol alone keeps them all in memory)."""
    with socket.create_connection((LOOPBACK, server.port), timeout=10) as s:
        s.sendall(f"GET /v2/images HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {ADMIN}\r\n".encode())
        line = b"X-Filler: " + b"f" * 1000 + b"\r\n"
        sent = 0
        try:
            while sent < 8 << 20:           # far past the limit; the server closes first
                s.sendall(line * 64)
                sent += len(line) * 64
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, headers, body = read_response(s)
    assert sent < 8 << 20 or status == 431
    _json_error(status, headers, body, 431)
    with server.http(ADMIN) as c:                      # still serving
        assert c.get("/v2/images").status_code == 200


def test_malformed_request_line_is_400_json(server):
    status, headers, body = raw_request(server, "GARBAGE\x01 / HTTP/9.9\r\n\r\n")
    _json_error(status, headers, body, 400)


def test_large_but_allowed_head_is_served(server):
    status, headers, body = raw_request(
        server, f"GET /v2/images HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {ADMIN}\r\n"
                f"X-Big: {'b' * 30_000}\r\nConnection: close\r\n\r\n")
    assert status == 200, body[:200]


def test_head_limit_applies_per_request_on_a_kept_alive_connection(server):
    """Many requests on one connection, each under the limit, add up past it:
    the count restarts with every request."""
    req = f"GET /versions HTTP/1.1\r\nHost: x\r\nX-Pad: {'p' * 8000}\r\n\r\n".encode()
    with socket.create_connection((LOOPBACK, server.port), timeout=10) as s:
        for _ in range(20):                            # 20 x 8 KB > 64 KiB in total
            s.sendall(req)
            status, _h, _b = read_response(s)
            assert status in (200, 300), status
