"""The caller's identity: who sends a request, and with which roles.

One *identity provider* per server, chosen by ``Settings.auth`` (``vhdkit serve
--auth``, ``VHDKIT_AUTH``):

``headers`` (:class:`HeaderIdentity`, the default)
    The request headers say who the caller is, as behind Glance's auth
    middleware: ``X-Tenant-Id`` (or ``X-Project-Id``) plus ``X-Roles:
    <role>[,<role>...]``, or ``X-Auth-Token: <account>:<role>[,<role>...]``
    (Glance's test authentication style, percent-encoding allowed; the first
    ``:`` separates the account, so roles like ``cloudImages:admin`` keep
    theirs).  Anyone who can reach the server can claim any customer account,
    so this is safe only for the embedded default on a trusted host or behind
    an authenticating proxy that strips these headers and sets them itself.

``keystone`` (:class:`KeystoneIdentity`)
    ``X-Auth-Token`` is a Keystone token, validated against the Keystone v3
    service (``GET /v3/auth/tokens`` as the configured service user, through
    keystoneauth1).  The account is the token's project id, the roles are the
    token's role names after the configured role map; identity headers sent
    by the client are ignored.  A validated token is remembered until it
    expires or for ``keystone_cache_seconds``, whichever is sooner (so a
    revoked token keeps working at most that long).

No identity at all is 401; a malformed, invalid or expired one is 401 too,
never passed on.  Every 401 carries ``WWW-Authenticate`` naming how to
authenticate (``Keystone uri="..."`` in keystone mode, as Glance answers).
The operator role ``vhdkit:service`` can never come from a request: claimed in
headers it is 403; from Keystone it is granted only to the configured operator
roles on the admin project (a Keystone role of that literal name is dropped).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import threading
import time
from collections import OrderedDict
from typing import Dict, FrozenSet, Optional, Tuple
from urllib.parse import unquote

import anyio
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from ..registry.rbac import is_account_id
from .config import Settings
from .errors import ApiError

log = logging.getLogger("vhdkit.api.auth")

ROLE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}\Z")
MAX_ROLES = 32
#: Roles no HTTP caller may claim: the registry's operator/pipeline identity.
RESERVED_ROLES = frozenset({"vhdkit:service"})
#: Longest X-Auth-Token looked at in keystone mode (Fernet tokens are ~200 bytes,
#: PKI tokens of old could reach a few KiB).
MAX_TOKEN = 8192

#: The scope key where the identity of a request is kept once known.
_SCOPE_KEY = "vhdkit.caller"

Identity = Tuple[str, FrozenSet[str]]

#: Headers that say who the caller is: each may appear at most once.
IDENTITY_HEADERS = ("X-Tenant-Id", "X-Project-Id", "X-Roles", "X-Auth-Token")


def _unauthorized(message: str, challenge: str = 'Token realm="vhdkit"') -> ApiError:
    return ApiError(401, message, {"WWW-Authenticate": challenge})


def check_account(account: str, unauthorized=_unauthorized) -> str:
    """``account`` unless it is not a valid account id (401)."""
    if not is_account_id(account):
        raise unauthorized("an account id may hold only letters, digits and _ . @ : + - (at most 255), "
                           "and may not start with '.'")
    return account


def _once(headers, names) -> None:
    """400 if one of the headers ``names`` was sent more than once."""
    getlist = getattr(headers, "getlist", None)
    if getlist is not None:
        for name in names:
            if len(getlist(name)) > 1:
                raise ApiError(400, f"the identity header {name} was sent more than once")


# ---- header identity ------------------------------------------------------------------

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
    """(account, roles) from trusted request headers, or :class:`ApiError` 401.

    X-Tenant-Id/X-Roles win over X-Auth-Token: that is what an authenticating
    proxy (keystonemiddleware) sets next to the opaque token it validated, and
    what a client without a token plugin (openstacksdk ``auth_type: none``,
    whose token is the literal ``notused``) can send.
    A header of :data:`IDENTITY_HEADERS` given more than once is 400: a proxy
    that appends its value to the client's instead of replacing it must not
    leave the choice to whichever copy is read.
    """
    _once(headers, IDENTITY_HEADERS)
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
    return check_account(account), _roles(roles)


class HeaderIdentity:
    """Identity from request headers set by a trusted upstream (see the module text)."""

    blocking = False

    def identify(self, headers) -> Identity:
        account, roles = identity(headers)
        return account, frozenset(roles)


# ---- Keystone identity ------------------------------------------------------------------

def parse_role_map(text: str) -> Dict[str, str]:
    """``"member=cloudImages:admin,reader=cloudImages:observer"`` as a dict."""
    out: Dict[str, str] = {}
    for item in filter(None, (i.strip() for i in text.split(","))):
        src, sep, dst = (p.strip() for p in item.partition("="))
        if not sep or not src or not ROLE_RE.match(dst) or dst in RESERVED_ROLES:
            raise ValueError(f"role map entry {item!r}: expected KEYSTONE_ROLE=VHDKIT_ROLE "
                             f"(the vhdkit role a valid role name, not {', '.join(sorted(RESERVED_ROLES))})")
        out[src] = dst
    return out


class _TokenCache:
    """Validated tokens (by SHA-256, never the token itself) with a deadline
    each; least recently used dropped beyond ``size``.  Thread-safe."""

    def __init__(self, size: int) -> None:
        self._size = max(1, size)
        self._items: "OrderedDict[bytes, Tuple[float, object]]" = OrderedDict()
        self._lock = threading.Lock()
        self._inflight: Dict[bytes, list] = {}

    @staticmethod
    def key(token: str) -> bytes:
        return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()

    def get(self, key: bytes):
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            if item[0] <= time.monotonic():
                del self._items[key]
                return None
            self._items.move_to_end(key)
            return item[1]

    @contextlib.contextmanager
    def inflight(self, key: bytes):
        """Held while ``key`` is being validated (one thread per key)."""
        with self._lock:
            entry = self._inflight.get(key)
            if entry is None:
                entry = self._inflight[key] = [threading.Lock(), 0]
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._lock:
                entry[1] -= 1
                if not entry[1]:
                    del self._inflight[key]

    def put(self, key: bytes, value, ttl: float) -> None:
        if ttl <= 0:
            return
        with self._lock:
            self._items[key] = (time.monotonic() + ttl, value)
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


class _Refused:
    """A cached 401: the token Keystone refused."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


class KeystoneIdentity:
    """Identity from a Keystone v3 token in ``X-Auth-Token`` (see the module text)."""

    blocking = True
    #: how long a token Keystone called invalid is answered 401 without asking again
    NEGATIVE_TTL = 10.0

    def __init__(self, cfg: Settings) -> None:
        from keystoneauth1 import session as ks_session
        from keystoneauth1.identity import v3

        missing = [env for name, env in (("keystone_url", "VHDKIT_KEYSTONE_URL"),
                                         ("keystone_user", "VHDKIT_KEYSTONE_USER"),
                                         ("keystone_password", "VHDKIT_KEYSTONE_PASSWORD"))
                   if not getattr(cfg, name)]
        if missing:
            raise ValueError(f"keystone identity needs {', '.join(missing)}")
        self.url = cfg.keystone_url.rstrip("/")
        self.challenge = f'Keystone uri="{(cfg.keystone_public_url or cfg.keystone_url).rstrip("/")}"'
        self.role_map = parse_role_map(cfg.keystone_role_map)
        self.operator_roles = frozenset(r.strip() for r in cfg.keystone_operator_roles.split(",") if r.strip())
        self.cache_seconds = cfg.keystone_cache_seconds
        self.timeout = cfg.keystone_timeout
        self._cache = _TokenCache(cfg.keystone_cache_size)
        auth = v3.Password(auth_url=self.url, username=cfg.keystone_user, password=cfg.keystone_password,
                           project_name=cfg.keystone_project, user_domain_name=cfg.keystone_user_domain,
                           project_domain_name=cfg.keystone_project_domain)
        self._session = ks_session.Session(auth=auth, timeout=self.timeout)

    def unauthorized(self, message: str) -> ApiError:
        return _unauthorized(message, self.challenge)

    def _token(self, headers) -> str:
        _once(headers, ("X-Auth-Token",))
        token = headers.get("x-auth-token")
        if token is None or not token.strip():
            raise self.unauthorized("authentication required: send a Keystone token in X-Auth-Token")
        token = unquote(token.strip())
        if len(token) > MAX_TOKEN:
            raise self.unauthorized("the token is not valid")
        return token

    def _answer(self, found):
        """A cached entry as the identity, or the 401 it stands for (a new
        exception each time: one raised again would grow its traceback)."""
        if isinstance(found, _Refused):
            raise self.unauthorized(found.message)
        return found

    def cached(self, headers) -> Optional[Identity]:
        """The identity of a token validated before (or its 401), without blocking."""
        return self._answer(self._cache.get(self._cache.key(self._token(headers))))

    def identify(self, headers) -> Identity:
        token = self._token(headers)
        key = self._cache.key(token)
        found = self._cache.get(key)
        if found is None:
            # one validation per token at a time: the requests a client sends
            # at once with a new token wait for the first one's answer
            with self._cache.inflight(key):
                found = self._cache.get(key)
                if found is None:
                    found = self._validate_and_cache(key, token)
        return self._answer(found)

    def _validate_and_cache(self, key: bytes, token: str):
        try:
            found, ttl = self._validate(token)
        except ApiError as exc:
            if exc.status == 401:
                self._cache.put(key, _Refused(exc.message), min(self.NEGATIVE_TTL, self.cache_seconds))
            raise
        self._cache.put(key, found, min(ttl, self.cache_seconds))
        return found

    def _validate(self, token: str) -> Tuple[Identity, float]:
        """(identity, seconds the token stays valid) from Keystone, or 401 / 503."""
        from keystoneauth1 import access
        from keystoneauth1 import exceptions as ks_exc

        try:
            resp = self._session.get(self.url + "/auth/tokens", authenticated=True, raise_exc=False,
                                     headers={"X-Subject-Token": token}, log=False)
        except ks_exc.ClientException as exc:   # unreachable, timed out, or the service user refused
            log.error("cannot validate a token at Keystone %s: %s", self.url, exc)
            raise ApiError(503, "The identity service cannot be reached; try again later") from None
        if resp.status_code == 404:             # Keystone: no such valid token
            raise self.unauthorized("the token is not valid (unknown, expired or revoked)")
        if resp.status_code != 200:
            log.error("Keystone answered %s validating a token: %.500s", resp.status_code, resp.text)
            raise ApiError(503, "The identity service failed to validate the token; try again later")
        ref = access.create(resp=resp)
        if not ref.project_id:
            raise self.unauthorized("the token is not scoped to a project")
        account = check_account(ref.project_id, self.unauthorized)
        names = set(ref.role_names) - RESERVED_ROLES
        roles = {self.role_map.get(r, r) for r in names}
        if names & self.operator_roles and ref.is_admin_project:
            roles.add(next(iter(RESERVED_ROLES)))
        ttl = (ref.expires.timestamp() - time.time()) if ref.expires else self.cache_seconds
        if ttl <= 0:
            raise self.unauthorized("the token is not valid (unknown, expired or revoked)")
        return (account, frozenset(roles)), ttl


def provider_for(cfg: Settings):
    """The identity provider ``cfg.auth`` names (ValueError for a bad setting)."""
    if cfg.auth == "headers":
        return HeaderIdentity()
    if cfg.auth == "keystone":
        return KeystoneIdentity(cfg)
    raise ValueError(f"VHDKIT_AUTH {cfg.auth!r}: expected 'headers' or 'keystone'")


# ---- per request ----------------------------------------------------------------------

def _resolve(provider, headers):
    from ..registry import Caller
    try:
        account, roles = provider.identify(headers)
        return Caller(account, roles)
    except ApiError as exc:
        return exc


class IdentityMiddleware:
    """Resolves a blocking provider's identity (a Keystone call) in a worker
    thread before the handler runs, so :func:`caller` never blocks the event
    loop.  Requests without an ``X-Auth-Token`` pass untouched: routes that
    need no identity (version discovery) stay open, and
    :func:`caller` answers 401 for the others."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            provider = scope["app"].state.identity
            if provider.blocking and any(name == b"x-auth-token" for name, _ in scope.get("headers", ())):
                from starlette.datastructures import Headers
                headers = Headers(scope=scope)
                try:
                    found = provider.cached(headers)
                except ApiError as exc:
                    found = exc
                if found is None:
                    found = await anyio.to_thread.run_sync(_resolve, provider, headers)
                elif not isinstance(found, ApiError):
                    from ..registry import Caller
                    found = Caller(*found)
                scope[_SCOPE_KEY] = found
        await self.app(scope, receive, send)


def caller(request: Request):
    """The registry ``Caller`` for this request (cached on the request), or
    :class:`ApiError` (401 without a valid identity)."""
    found = request.scope.get(_SCOPE_KEY)
    if found is None:
        # (a blocking provider gets here only without X-Auth-Token: a 401 at once)
        found = request.scope[_SCOPE_KEY] = _resolve(request.app.state.identity, request.headers)
    if isinstance(found, ApiError):
        raise found
    return found
