"""The caller's identity, taken from request headers.

There is no password store: as behind Glance's auth middleware, an upstream
(an authenticating proxy, or the test harness) says who the caller is:

* ``X-Tenant-Id`` (or ``X-Project-Id``) plus ``X-Roles: <role>[,<role>...]``, or
* ``X-Auth-Token: <account>:<role>[,<role>...]`` (Glance's test authentication
  style, percent-encoding allowed; the first ``:`` separates the account, so
  roles like ``cloudImages:admin`` keep theirs).

No identity at all is 401; a malformed one is 401 too, never passed on.
"""
from __future__ import annotations

import re
from typing import Tuple
from urllib.parse import unquote

from starlette.requests import Request

from ..registry.rbac import ACCOUNT_RE
from .errors import ApiError

ROLE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}\Z")
MAX_ROLES = 32
#: Roles no HTTP caller may claim: the registry's operator/pipeline identity.
RESERVED_ROLES = frozenset({"vhdkit:service"})

#: Headers that say who the caller is: each may appear at most once.
IDENTITY_HEADERS = ("X-Tenant-Id", "X-Project-Id", "X-Roles", "X-Auth-Token")

_CHALLENGE = {"WWW-Authenticate": 'Token realm="vhdkit"'}


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, message, _CHALLENGE)


def _roles(text: str) -> Tuple[str, ...]:
    roles = tuple(r.strip() for r in text.split(",") if r.strip())
    if len(roles) > MAX_ROLES:
        raise _unauthorized(f"too many roles (at most {MAX_ROLES})")
    for role in roles:
        if not ROLE_RE.match(role):
            raise _unauthorized("a role name may hold only letters, digits and _ . : - (at most 64)")
        if role in RESERVED_ROLES:
            raise ApiError(403, f"the role {role!r} is reserved for the operator and cannot be claimed over HTTP")
    return roles


def identity(headers) -> Tuple[str, Tuple[str, ...]]:
    """(account, roles) from request headers, or :class:`ApiError` 401.

    X-Tenant-Id/X-Roles win over X-Auth-Token: that is what an authenticating
    proxy (keystonemiddleware) sets next to the opaque token it validated, and
    what a client without a token plugin (openstacksdk ``auth_type: none``,
    whose token is the literal ``notused``) can send.
    A header of :data:`IDENTITY_HEADERS` given more than once is 400: a proxy
    that appends its value to the client's instead of replacing it must not
    leave the choice to whichever copy is read.
    """
    getlist = getattr(headers, "getlist", None)
    if getlist is not None:
        for name in IDENTITY_HEADERS:
            if len(getlist(name)) > 1:
                raise ApiError(400, f"the identity header {name} was sent more than once")
    account = headers.get("x-tenant-id") or headers.get("x-project-id")
    if account is not None:
        account, roles = account.strip(), headers.get("x-roles", "")
    else:
        token = headers.get("x-auth-token")
        if token is None:
            raise _unauthorized("authentication required: send X-Auth-Token "
                                "'<account>:<role>[,<role>...]' or X-Tenant-Id and X-Roles")
        # python-glanceclient percent-encodes the token ("acct%3Aadmin").
        account, sep, roles = unquote(token.strip()).partition(":")
        if not sep:
            raise _unauthorized("X-Auth-Token must be '<account>:<role>[,<role>...]'")
    if not ACCOUNT_RE.match(account):
        raise _unauthorized("an account id may hold only letters, digits and _ . @ : + - (at most 255), "
                            "and may not start with '.'")
    return account, _roles(roles)


def caller(request: Request):
    """The registry ``Caller`` for this request (cached on the request)."""
    found = request.scope.get("vhdkit.caller")
    if found is None:
        from ..registry import Caller
        account, roles = identity(request.headers)
        found = request.scope["vhdkit.caller"] = Caller(account, frozenset(roles))
    return found
