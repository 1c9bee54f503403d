"""Shared helpers for the registry tests (not a conftest: import explicitly)."""
from __future__ import annotations

import io
from typing import Iterable

import pytest

from vhdkit.registry import Caller, Registry

OWNER, MEMBER, STRANGER = "acct-owner", "acct-member", "acct-stranger"


def who(account: str, *roles: str) -> Caller:
    return Caller(account, frozenset(roles))


def admin(account: str = OWNER) -> Caller:
    return who(account, "cloudImages:admin")


def service(account: str = OWNER) -> Caller:
    return Caller.service(account)


@pytest.fixture
def reg(tmp_path) -> Iterable[Registry]:
    r = Registry(str(tmp_path / "home"))
    yield r
    r.close()


def make_image(reg: Registry, owner: str = OWNER, *, data: bytes = None, members=(), **fields):
    """An image owned by ``owner`` (created by a customer admin of it), with
    optional data uploaded and members added (accepted unless given as (id, status))."""
    c = admin(owner)
    fields.setdefault("disk_format", "raw")
    fields.setdefault("container_format", "bare")
    fields.setdefault("visibility", "shared")
    img = reg.create_image(c, **fields)
    if data is not None:
        img = reg.upload(c, img.id, io.BytesIO(data))
    for m in members:
        mid, status = (m, "accepted") if isinstance(m, str) else m
        reg.add_member(c, img.id, mid)
        if status != "pending":
            reg.update_member(admin(mid), img.id, mid, status)
    return img
