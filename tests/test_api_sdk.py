"""openstacksdk, unchanged, with ``auth_type: none`` and the image endpoint set,
against a real `vhdkit serve` subprocess: create, upload, download, list with
filters, update, tag, share and accept; and the negative cases."""
from __future__ import annotations

import hashlib
import os

import pytest

from helpers_api import api_server  # noqa: F401


@pytest.fixture(scope="module")
def owner(api_server):
    return api_server.sdk("sdk-owner", "admin")


@pytest.fixture(scope="module")
def member(api_server):
    return api_server.sdk("sdk-member", "cloudImages:admin")


def test_sdk_create_upload_download(owner, tmp_path):
    data = os.urandom(1 << 20) + b"end"
    path = tmp_path / "disk.raw"
    path.write_bytes(data)
    # random bytes: disk_format raw (a "vhd" upload must be a VHD, see test_security.py)
    img = owner.image.create_image(name="sdk-up", filename=str(path), disk_format="raw",
                                   container_format="bare", os_distro="debian", wait=True)
    got = owner.image.get_image(img)
    assert got.status == "active" and got.size == len(data) and got.os_distro == "debian"
    assert got.checksum == hashlib.md5(data).hexdigest()
    assert got.hash_algo == "sha512" and got.hash_value == hashlib.sha512(data).hexdigest()
    out = tmp_path / "back.raw"
    owner.image.download_image(got, output=str(out))   # the sdk checks the md5 itself
    assert out.read_bytes() == data


def test_sdk_list_with_filters_update_and_tag(owner):
    a = owner.image.create_image(name="sdk-list-a", disk_format="vhd", container_format="bare",
                                 allow_duplicates=True, flavour="sweet")
    b = owner.image.create_image(name="sdk-list-b", disk_format="raw", container_format="bare",
                                 allow_duplicates=True, flavour="sour")
    owner.image.add_tag(a, "sdk-tag")
    assert [i.id for i in owner.image.images(tag="sdk-tag")] == [a.id]
    assert [i.id for i in owner.image.images(name="sdk-list-b")] == [b.id]
    assert {i.id for i in owner.image.images(disk_format="raw", name="in:sdk-list-a,sdk-list-b")} == {b.id}
    # (openstacksdk drops query parameters it does not know, so property filters are
    # exercised through glance's --property-filter in test_api_glance.py)
    names = [i.name for i in owner.image.images(sort="name:desc", name="in:sdk-list-a,sdk-list-b")]
    assert names == ["sdk-list-b", "sdk-list-a"]

    a = owner.image.get_image(a)   # fresh: the sdk diffs the object it is given into a patch
    updated = owner.image.update_image(a, name="sdk-list-a2", flavour="bitter", min_ram=256)
    assert updated.name == "sdk-list-a2" and updated.min_ram == 256
    assert owner.image.get_image(a).properties["flavour"] == "bitter"
    owner.image.remove_tag(a, "sdk-tag")
    assert owner.image.get_image(a).tags == []


def test_sdk_share_and_accept(owner, member):
    img = owner.image.create_image(name="sdk-shared", disk_format="vhd", container_format="bare",
                                   visibility="shared", allow_duplicates=True)
    m = owner.image.add_member(img, member_id="sdk-member")
    assert m.status == "pending"
    assert img.id not in {i.id for i in member.image.images()}
    assert img.id in {i.id for i in member.image.images(visibility="shared", member_status="pending")}
    accepted = member.image.update_member(m, img, status="accepted")
    assert accepted.status == "accepted"
    assert img.id in {i.id for i in member.image.images()}
    assert [x.member_id for x in owner.image.members(img)] == ["sdk-member"]


def test_sdk_negative_cases(api_server, owner):
    from openstack import exceptions

    img = owner.image.create_image(name="sdk-neg", disk_format="vhd", container_format="bare",
                                   allow_duplicates=True)
    with pytest.raises(exceptions.ForbiddenException):
        api_server.sdk("sdk-owner", "observer").image.delete_image(img)
    with pytest.raises(exceptions.ForbiddenException) as err:
        api_server.sdk("sdk-owner", "admin").image.update_image(img, **{"com.rackspace__1__build": "x"})
    assert "com.rackspace__1__build" in str(err.value)
    with pytest.raises(exceptions.ForbiddenException):
        api_server.sdk("sdk-owner", "cloudImages:creator").image.update_image(img, **{"com.rackspace__1__build": "x"})
    with pytest.raises(exceptions.NotFoundException):
        api_server.sdk("sdk-stranger", "admin").image.get_image(img.id)
    with pytest.raises(exceptions.BadRequestException):
        owner.image.add_tag(img, "t" * 256)
    resp = owner.image.post("/images", data=b"{oops", headers={"Content-Type": "application/json"})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == 400
    assert owner.image.get_image(img).tags == []
