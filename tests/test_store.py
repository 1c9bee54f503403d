"""The local object store: names, atomic puts, listing, metadata, CLI."""
from __future__ import annotations

import hashlib
import io
import json
import os

import pytest

from vhdkit.errors import ConflictError, IntegrityError, InvalidInputError, NotFoundError
from vhdkit.store import LocalStore, ObjectStore, open_store
from helpers_packaging import run_cli


@pytest.fixture
def st(tmp_path) -> LocalStore:
    s = LocalStore(tmp_path / "objects", "acct")
    s.create_container("c")
    return s


def test_local_store_implements_the_interface(st):
    assert isinstance(st, ObjectStore)


def test_put_get_head_round_trip(st):
    data = os.urandom(3 << 20)
    info = st.put("c", "disk.vhd", io.BytesIO(data), metadata={"OS": "linux"})
    assert info.size == len(data) and info.etag == hashlib.md5(data).hexdigest()
    with st.get("c", "disk.vhd") as r:
        assert r.read() == data
        assert r.info.metadata == {"os": "linux"}
    assert st.head("c", "disk.vhd").etag == info.etag


def test_overwrite_replaces(st):
    st.put_bytes("c", "o", b"old")
    st.put_bytes("c", "o", b"newer")
    assert st.get_bytes("c", "o") == b"newer"


def test_objects_are_plain_files_in_account_and_container_dirs(st, tmp_path):
    st.put_bytes("c", "a/b c", b"xyz")
    assert (tmp_path / "objects" / "acct" / "c" / "objects" / "a%2Fb%20c").read_bytes() == b"xyz"


def test_accounts_are_separate(tmp_path):
    a, b = LocalStore(tmp_path, "a"), LocalStore(tmp_path, "b")
    a.create_container("c")
    a.put_bytes("c", "o", b"1")
    with pytest.raises(NotFoundError):
        b.head("c", "o")


@pytest.mark.parametrize("name", ["/abs", "a/../b", "..", "a/..", "x\0y", "", "a" * 1025, "./a"])
def test_bad_object_names_refused(st, name):
    with pytest.raises(InvalidInputError):
        st.put_bytes("c", name, b"x")


@pytest.mark.parametrize("name", ["a/b", "", "x\0", "..", ".", "c" * 257])
def test_bad_container_names_refused(st, name):
    with pytest.raises(InvalidInputError):
        st.create_container(name)


def test_long_and_unicode_names(st):
    long = "é" * 500  # 1000 bytes of UTF-8: stored under a hashed file name
    st.put_bytes("c", long, b"L")
    st.put_bytes("c", ".hidden", b"H")
    assert st.get_bytes("c", long) == b"L"
    assert {o.name for o in st.list("c")} == {long, ".hidden"}


def test_bad_metadata_refused(st):
    with pytest.raises(InvalidInputError):
        st.put_bytes("c", "o", b"", metadata={"bad key": "v"})
    with pytest.raises(InvalidInputError):
        st.put_bytes("c", "o", b"", metadata={"k": "v" * 300})


def test_missing_things_not_found(st):
    with pytest.raises(NotFoundError):
        st.get("c", "nope")
    with pytest.raises(NotFoundError):
        st.head("nocontainer", "x")
    with pytest.raises(NotFoundError):
        st.delete("c", "nope")


class _Boom(io.RawIOBase):
    def __init__(self):
        self.n = 0

    def readable(self):
        return True

    def readinto(self, b):
        self.n += 1
        if self.n > 3:
            raise OSError("network went away")
        b[:10] = b"x" * 10
        return 10


def test_failed_put_is_atomic(st, tmp_path):
    st.put_bytes("c", "o", b"original")
    with pytest.raises(OSError):
        st.put("c", "o", _Boom())
    assert st.get_bytes("c", "o") == b"original"
    leftovers = [p for p in (tmp_path / "objects").rglob(".tmp-*")]
    assert leftovers == []


def test_put_verifies_etag_and_size(st):
    with pytest.raises(IntegrityError):
        st.put_bytes("c", "o", b"abc", etag="0" * 32)
    with pytest.raises(IntegrityError):
        st.put_bytes("c", "o", b"abc", size=4)
    assert not st.exists("c", "o")
    st.put_bytes("c", "o", b"abc", etag=hashlib.md5(b"abc").hexdigest(), size=3)


def test_list_prefix_marker_limit_in_byte_order(st):
    for n in ["b", "a-2", "a-10", "a-1", "Z", "é"]:
        st.put_bytes("c", n, n.encode())
    assert [o.name for o in st.list("c")] == ["Z", "a-1", "a-10", "a-2", "b", "é"]
    assert [o.name for o in st.list("c", "a-")] == ["a-1", "a-10", "a-2"]
    assert [o.name for o in st.list("c", marker="a-10", limit=2)] == ["a-2", "b"]


def test_delete_and_container_lifecycle(st):
    st.put_bytes("c", "o", b"x")
    with pytest.raises(ConflictError):
        st.delete_container("c")
    st.delete("c", "o")
    assert st.list("c") == []
    st.delete_container("c")
    assert st.list_containers() == []


def test_get_detects_data_shorter_than_metadata(st, tmp_path):
    st.put_bytes("c", "o", b"0123456789")
    data_file = tmp_path / "objects" / "acct" / "c" / "objects" / "o"
    data_file.write_bytes(b"01234")
    with pytest.raises(IntegrityError):
        st.get("c", "o")


def test_open_store_uses_vhdkit_home(tmp_path, monkeypatch):
    monkeypatch.setenv("VHDKIT_HOME", str(tmp_path / "home"))
    s = open_store(account="t1")
    assert s.base == tmp_path / "home" / "objects" / "t1"


def test_cli_object_commands(tmp_path):
    env = {"VHDKIT_HOME": str(tmp_path / "home")}
    f = tmp_path / "f"
    f.write_bytes(b"payload" * 1000)
    put = run_cli("object", "put", "imgs", "f.bin", str(f), "--meta", "os=linux", "--json", env=env, check=True)
    assert json.loads(put.stdout)["etag"] == hashlib.md5(f.read_bytes()).hexdigest()
    assert run_cli("object", "get", "imgs", "f.bin", env=env, check=True).stdout == f.read_bytes()
    lst = json.loads(run_cli("object", "list", "imgs", "--json", env=env, check=True).stdout)
    assert [o["name"] for o in lst] == ["f.bin"] and lst[0]["metadata"] == {"os": "linux"}
    other = run_cli("object", "list", "imgs", "--account", "other", "--json", env=env)
    assert other.returncode == 1
    run_cli("object", "delete", "imgs", "f.bin", env=env, check=True)
    p = run_cli("object", "get", "imgs", "f.bin", env=env)
    assert p.returncode == 1 and b"not found" in p.stderr
    bad = run_cli("object", "put", "imgs", "../x", str(f), env=env)
    assert bad.returncode == 1


def test_non_durable_put_then_sync(st):
    st.put_bytes("c", "a", b"1" * 5000, durable=False)
    st.put_bytes("c", "b", b"2", durable=False)
    st.sync("c", ["a", "b"])
    assert st.get_bytes("c", "a") == b"1" * 5000
    with pytest.raises(NotFoundError):
        st.sync("c", ["missing"])
