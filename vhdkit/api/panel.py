"""The web control panel: its static files, its sign-in, and the headers
every response carries.

The panel is plain HTML, CSS and JavaScript modules shipped in
``vhdkit/api/panel_files/`` and served from memory (the set of files is fixed when
the app is built: a request can never name a path outside it).  It talks to
the same Images v2 API as every other client, plus the customer object-store
API of :mod:`vhdkit.api.objects`.

Sessions.  The browser never holds a credential in script-readable storage:
signing in (``POST /panel/api/session``) sets an ``HttpOnly; SameSite=Strict``
cookie holding the value a client would send as ``X-Auth-Token`` --
``ACCOUNT:ROLES`` with header identity (the embedded default, for trusted
networks only), a Keystone token with Keystone identity.
:class:`PanelMiddleware` turns that cookie into the ``X-Auth-Token`` header
of a request that carries no identity headers of its own, so the API's one
identity provider judges a panel request exactly as any other.

CSRF.  A cookie-authenticated request that may change state (any method but
GET/HEAD/OPTIONS) must carry :data:`CSRF_HEADER` equal to :func:`csrf_token`
of the session: a value only a same-origin page can learn (from
``GET /panel/api/session``; no CORS is offered) and a header no cross-site
form can send.  Signing in needs the header too (any value), so no other site
can sign a browser in.

Headers.  Every response (API and panel) carries a strict
Content-Security-Policy (scripts and styles only from this origin, no inline
code, no framing), ``X-Content-Type-Options: nosniff``, ``X-Frame-Options:
DENY`` and ``Referrer-Policy: no-referrer``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import mimetypes
from pathlib import Path
from typing import Dict, Optional, Tuple
from urllib.parse import quote, unquote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..registry.rbac import is_account_id
from .auth import caller, identity
from .errors import ApiError, error_response
from .http import call, json_object, read_json, registry, settings

log = logging.getLogger("vhdkit.api.panel")

STATIC_DIR = Path(__file__).with_name("panel_files")
COOKIE = "vhdkit_session"
CSRF_HEADER = "X-Vhdkit-CSRF"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: identity headers a client sends itself; a request with any of them ignores the cookie
IDENTITY_HEADERS = (b"x-auth-token", b"x-tenant-id", b"x-project-id")
MAX_COOKIE = 8192
#: the scope key of the session a request is authenticated by (absent: headers)
SESSION_KEY = "vhdkit.panel_session"

SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
     b"form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


def csrf_token(session: str) -> str:
    """The CSRF token of a session: derived from the HttpOnly session value,
    so only a page that may read ``GET /panel/api/session`` learns it."""
    return hashlib.sha256(b"vhdkit-panel-csrf\0" + session.encode("utf-8", "surrogateescape")).hexdigest()


def _cookie(headers) -> Optional[str]:
    for name, value in headers:
        if name == b"cookie":
            for part in value.decode("latin-1").split(";"):
                key, sep, val = part.strip().partition("=")
                if sep and key == COOKIE and 0 < len(val) <= MAX_COOKIE:
                    return unquote(val)
    return None


class PanelMiddleware:
    """Security headers on every response; the session cookie as
    ``X-Auth-Token`` for requests without identity headers, CSRF-checked."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        headers = scope.get("headers", [])
        session = None if any(n in IDENTITY_HEADERS for n, _ in headers) else _cookie(headers)
        if session is not None:
            signing_in = scope["path"] == SESSION_PATH and scope["method"] == "POST"   # checked by sign_in
            if scope["method"] not in SAFE_METHODS and not signing_in:
                sent = next((v.decode("latin-1") for n, v in headers if n == CSRF_HEADER.lower().encode()), "")
                if sent != csrf_token(session):
                    resp = error_response(403, f"This request needs the panel's {CSRF_HEADER} header "
                                               "(cross-site request refused)")
                    await resp(scope, receive, send_secured)
                    return
            scope = dict(scope)
            scope[SESSION_KEY] = session
            scope["headers"] = list(headers) + [(b"x-auth-token", quote(session, safe=":,").encode("latin-1"))]
        await self.app(scope, receive, send_secured)


# ---- static files ------------------------------------------------------------------

def _load_static() -> Dict[str, Tuple[bytes, str]]:
    """Every file of the panel directory, by name, with its media type."""
    files = {}
    for path in sorted(STATIC_DIR.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            kind = {".js": "text/javascript", ".mjs": "text/javascript"}.get(path.suffix) \
                or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            if kind.startswith("text/") or kind.endswith(("javascript", "json", "svg+xml")):
                kind += "; charset=utf-8"
            files[path.name] = (path.read_bytes(), kind)
    return files


_STATIC: Optional[Dict[str, Tuple[bytes, str]]] = None


def _static() -> Dict[str, Tuple[bytes, str]]:
    global _STATIC
    if _STATIC is None:
        _STATIC = _load_static()
    return _STATIC


def _file(name: str) -> Response:
    found = _static().get(name)
    if found is None:
        raise ApiError(404, "No such panel file")
    body, kind = found
    return Response(body, media_type=kind.split(";")[0],
                    headers={"Content-Type": kind, "Cache-Control": "no-cache"})


def prefers_html(request: Request) -> bool:
    """True for a browser navigating to ``/`` (its Accept names text/html);
    API clients (Accept: application/json, or none) get the version document."""
    return "text/html" in request.headers.get("accept", "").lower()


async def index(request: Request) -> Response:
    return _file("index.html")


async def static_file(request: Request) -> Response:
    return _file(request.path_params["name"])


# ---- configuration and sessions -------------------------------------------------------

SESSION_PATH = "/panel/api/session"


def auth_mode(request: Request) -> str:
    return settings(request).auth


async def config(request: Request) -> JSONResponse:
    """What the sign-in page needs before anyone signs in (no identity required)."""
    from ..tasks.pipeline import EXPORT_OPTIONS_PROPERTY
    from ..registry.rbac import CUSTOMER_ROLES
    return JSONResponse({"auth": auth_mode(request), "csrf_header": CSRF_HEADER,
                         "roles": sorted(CUSTOMER_ROLES), "export_options_property": EXPORT_OPTIONS_PROPERTY})


async def property_rules(request: Request) -> JSONResponse:
    """Whether the caller's roles may update and delete each named extra
    property, by the registry's protection rules (``{"rules": {}}`` where
    those rules live on another host: the panel then lets the API decide)."""
    from .http import query_pairs
    who = caller(request)
    names = [v for k, v in query_pairs(request) if k == "name"]
    rules = {}
    protections = getattr(registry(request), "protections", None)
    if protections is not None:
        for name in names:
            can = {op: protections.allowed(who, name, op) for op in ("update", "delete")}
            rules[name] = dict(can, reason=None if all(can.values()) else
                               f"property '{name}' is protected: your roles may not change it")
    return JSONResponse({"rules": rules})


def _abilities(who) -> Dict[str, bool]:
    from ..registry.rbac import MATRIX, role_allows
    from .objects import STORE_ROLES
    can = {op: role_allows(op, who) for op in MATRIX}
    can.update({op: who.has_any(roles) for op, roles in STORE_ROLES.items()})
    return can


async def show_session(request: Request) -> JSONResponse:
    """Who the panel is signed in as, what the roles allow, and the CSRF token."""
    who = caller(request)
    session = request.scope.get(SESSION_KEY)
    return JSONResponse({"account": who.account, "roles": sorted(who.roles), "can": _abilities(who),
                         "csrf": csrf_token(session) if session else None})


def _set_cookie(request: Request, resp: Response, value: str, max_age: Optional[int]) -> None:
    resp.set_cookie(COOKIE, quote(value, safe=":,"), max_age=max_age, path="/", httponly=True,
                    samesite="strict", secure=request.url.scheme == "https")


async def sign_in(request: Request) -> JSONResponse:
    """Header identity: ``{"account", "roles"}``; Keystone: ``{"username",
    "password", "project", "domain"}`` exchanged for a token server-side."""
    if not request.headers.get(CSRF_HEADER):
        raise ApiError(403, f"Signing in needs the panel's {CSRF_HEADER} header (cross-site request refused)")
    body = json_object(await read_json(request))
    if auth_mode(request) == "keystone":
        token, max_age = await call(keystone_token, settings(request), body)
        value = token
    else:
        account, roles = body.get("account"), body.get("roles", "")
        if isinstance(roles, list):
            roles = ",".join(r for r in roles if isinstance(r, str))
        if not isinstance(account, str) or not isinstance(roles, str):
            raise ApiError(400, 'The body must be {"account": "<account id>", "roles": "<role>[,<role>...]"}')
        account = account.strip()
        if ":" in account or not is_account_id(account):
            raise ApiError(400, "An account id may hold only letters, digits and _ . @ + - (at most 255)")
        try:
            account, parsed = identity({"x-tenant-id": account, "x-roles": roles})
        except ApiError as exc:
            raise ApiError(400 if exc.status == 401 else exc.status, exc.message) from None
        value, max_age = f"{account}:{','.join(parsed)}", None
    resp = JSONResponse({"signed_in": True, "csrf": csrf_token(value)})
    _set_cookie(request, resp, value, max_age)
    return resp


async def sign_out(request: Request) -> Response:
    resp = Response(status_code=204)
    resp.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return resp


# ---- Keystone sign-in ------------------------------------------------------------------

def keystone_token(cfg, body: dict) -> Tuple[str, Optional[int]]:
    """(token, seconds until it expires) for username/password/project, from
    Keystone v3 ``POST /auth/tokens`` (password method, project scope).  The
    browser never talks to Keystone; Keystone's answer is not passed on."""
    import datetime as dt
    import urllib.error
    import urllib.request

    url = cfg.keystone_url
    if not url:
        log.error("panel sign-in: keystone identity without a Keystone URL")
        raise ApiError(503, "Sign-in is not available: the identity service is not configured")
    fields = {}
    for key in ("username", "password", "project"):
        value = body.get(key)
        if not isinstance(value, str) or not value or len(value) > 255:
            raise ApiError(400, "Username, password and project are required (at most 255 characters each)")
        fields[key] = value
    domain = body.get("domain") or "Default"
    if not isinstance(domain, str) or len(domain) > 255:
        raise ApiError(400, "The domain must be a name of at most 255 characters")
    request = {"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": fields["username"], "domain": {"name": domain}, "password": fields["password"]}}},
        "scope": {"project": {"name": fields["project"], "domain": {"name": domain}}}}}
    req = urllib.request.Request(url.rstrip("/") + "/auth/tokens", data=json.dumps(request).encode(),
                                 headers={"Content-Type": "application/json", "Accept": "application/json"},
                                 method="POST")
    timeout = getattr(cfg, "keystone_timeout", 10.0)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            token = resp.headers.get("X-Subject-Token")
            answer = json.loads(resp.read(1 << 20))
    except urllib.error.HTTPError as exc:
        if exc.code in (400, 401, 403, 404):
            raise ApiError(401, "The username, password or project is not valid") from None
        log.error("panel sign-in: Keystone answered %s", exc.code)
        raise ApiError(503, "Sign-in is not available right now; try again later") from None
    except (OSError, ValueError) as exc:
        log.error("panel sign-in: cannot reach Keystone at %s: %s", url, exc)
        raise ApiError(503, "Sign-in is not available right now; try again later") from None
    if not token or len(token) > MAX_COOKIE:
        log.error("panel sign-in: Keystone sent no usable X-Subject-Token")
        raise ApiError(503, "Sign-in is not available right now; try again later")
    max_age = None
    try:
        expires = dt.datetime.fromisoformat(answer["token"]["expires_at"].replace("Z", "+00:00"))
        max_age = max(0, int((expires - dt.datetime.now(dt.timezone.utc)).total_seconds()))
    except (KeyError, TypeError, ValueError, AttributeError):
        pass
    return token, max_age


ROUTES = [
    Route("/panel/", index, methods=["GET"]),
    Route("/panel/api/config", config, methods=["GET"]),
    Route(SESSION_PATH, show_session, methods=["GET"]),
    Route(SESSION_PATH, sign_in, methods=["POST"]),
    Route(SESSION_PATH, sign_out, methods=["DELETE"]),
    Route("/panel/api/property-rules", property_rules, methods=["GET"]),
    Route("/panel/{name}", static_file, methods=["GET"]),
]
