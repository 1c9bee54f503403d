#!/usr/bin/env python3
"""A real OpenStack Keystone on loopback, for vhdkit's tests and benchmarks.

    python scripts/keystone_aio.py start [--dir DIR]          # prints the env file path
    python scripts/keystone_aio.py endpoint URL [--dir DIR]    # put vhdkit at URL in the catalog
    python scripts/keystone_aio.py stop  [--dir DIR]
    python scripts/keystone_aio.py status [--dir DIR]

It runs PyPI's ``keystone`` from its own virtual environment (``.venv-keystone``,
made by scripts/setup; ``VHDKIT_KEYSTONE_VENV`` overrides): SQLite database (a copy
of one ``keystone-manage db_sync`` made once) and Fernet keys under DIR,
``keystone-manage bootstrap`` (an ``admin`` user with the ``admin`` role
on the ``admin`` project, region ``RegionOne``), and the public WSGI
application under gunicorn on a free 127.0.0.1 port, logging to DIR/log/.
Debian's ``keystone`` package is not used: installing it configures and starts
Apache and a system-wide Keystone, where the tests need one they own.

`start` also makes the service user vhdkit validates tokens with (``vhdkit``
with the ``service`` role on the ``service`` project) and writes DIR/env with
the ``OS_*`` variables of the admin (for openstackclient, Tempest) and the
``VHDKIT_AUTH=keystone`` / ``VHDKIT_KEYSTONE_*`` settings of `vhdkit serve`.
Passwords are random per start.  Nothing listens beyond 127.0.0.1.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from swift_aio import _alive, _free_port, server_env, status, stop  # noqa: E402  (same pid bookkeeping)

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("VHDKIT_KEYSTONE_VENV", ROOT / ".venv-keystone"))
DEFAULT_DIR = Path(os.environ.get("VHDKIT_KEYSTONE_DIR", "/tmp/vhdkit-keystone"))
REGION = "RegionOne"
SERVICE_USER, SERVICE_PROJECT = "vhdkit", "service"

# password_hash_rounds: bcrypt's minimum.  The tests create and authenticate
# hundreds of users (Tempest's dynamic credentials); at the default 12 rounds
# every password check is a noticeable slice of CPU, which a shared test
# machine cannot afford hundreds of times over.
_CONF = """[DEFAULT]
log_file = {dir}/log/keystone.log
debug = false

[database]
# (WAL, and a busy timeout for keystone-manage beside the server)
connection = sqlite:///{dir}/keystone.db?timeout=60

[token]
provider = fernet
expiration = {expiration}

[fernet_tokens]
key_repository = {dir}/fernet-keys

[fernet_receipts]
key_repository = {dir}/fernet-receipts

[credential]
key_repository = {dir}/credential-keys

[identity]
password_hash_rounds = 4

[cache]
enabled = false
"""


#: The WSGI entry gunicorn loads: Keystone's configuration parses sys.argv,
#: which holds gunicorn's own arguments.
_ENTRY = """import sys
sys.argv = sys.argv[:1]
from keystone.server.wsgi import initialize_public_application
application = initialize_public_application()
"""


def _manage(d: Path, *args: str, **env: str) -> None:
    r = subprocess.run([str(VENV / "bin" / "keystone-manage"), "--config-file", str(d / "keystone.conf"), *args],
                       capture_output=True, text=True, env=dict(server_env(), **env), cwd=str(d))
    if r.returncode != 0:
        sys.exit(f"keystone_aio: keystone-manage {args[0]} failed:\n{r.stderr[-3000:]}")


def _database(d: Path) -> None:
    """DIR/keystone.db with Keystone's schema: a copy of a template made once
    per installed Keystone version (``keystone-manage db_sync`` runs every
    migration since 2023 and costs ten seconds or more on a busy machine)."""
    versions = sorted(p.name for p in VENV.glob("lib/python*/site-packages/keystone-*.dist-info"))
    template = VENV / f"vhdkit-template-{versions[-1][:-len('.dist-info')] if versions else 'keystone'}.db"
    if not template.exists():
        _manage(d, "db_sync")
        tmp = template.with_suffix(f".{os.getpid()}.part")
        shutil.copyfile(d / "keystone.db", tmp)
        os.replace(tmp, template)
    else:
        shutil.copyfile(template, d / "keystone.db")
    with sqlite3.connect(d / "keystone.db") as db:
        db.execute("PRAGMA journal_mode=WAL")


def _key_repository(repo: Path) -> None:
    """A Fernet key repository as ``keystone-manage fernet_setup`` makes it:
    key 0 staged, key 1 primary, each a urlsafe-base64 32-byte key, owner-only."""
    repo.mkdir(mode=0o700)
    for index in ("0", "1"):
        path = repo / index
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(base64.urlsafe_b64encode(os.urandom(32)))


def _call(url: str, method: str = "GET", body=None, token: str = None, ok=(200, 201, 204)):
    """(status, headers, JSON body) of one Keystone REST call."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    if token:
        req.add_header("X-Auth-Token", token)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read()
            return r.status, r.headers, (json.loads(raw) if raw else {})
    except urllib.error.HTTPError as exc:
        if exc.code in ok:
            return exc.code, exc.headers, {}
        raise RuntimeError(f"{method} {url}: {exc.code} {exc.read()[:500]!r}") from None


def password_token(auth_url: str, user: str, password: str, project: str) -> str:
    """A project-scoped token for ``user`` (domain Default)."""
    _s, headers, _b = _call(f"{auth_url}/auth/tokens", "POST", {"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"id": "default"}, "password": password}}},
        "scope": {"project": {"name": project, "domain": {"id": "default"}}}}})
    return headers["X-Subject-Token"]


def _find_or_create(auth_url: str, token: str, kind: str, name: str, body: dict) -> str:
    _s, _h, found = _call(f"{auth_url}/{kind}s?name={name}", token=token)
    if found[f"{kind}s"]:
        return found[f"{kind}s"][0]["id"]
    _s, _h, made = _call(f"{auth_url}/{kind}s", "POST", {kind: dict(body, name=name)}, token)
    return made[kind]["id"]


def read_env(d: Path) -> dict:
    out = {}
    for line in (d / "env").read_text().splitlines():
        k, _, v = line.partition("=")
        if k:
            out[k] = v
    return out


def start(d: Path, expiration: int = 3600) -> Path:
    for tool in ("keystone-manage", "gunicorn"):
        if not (VENV / "bin" / tool).exists():
            sys.exit(f"keystone_aio: {VENV}/bin/{tool} is missing: run scripts/setup")
    stop(d)
    if d.exists():
        shutil.rmtree(d)
    (d / "log").mkdir(parents=True)
    (d / "keystone.conf").write_text(_CONF.format(dir=d, expiration=expiration))
    port = _free_port()
    auth_url = f"http://127.0.0.1:{port}/v3"
    admin_pw, service_pw = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    _database(d)
    for repo in ("fernet-keys", "fernet-receipts", "credential-keys"):
        _key_repository(d / repo)
    # (the password in the environment: off the command line, and a value
    # starting with "-" would be taken for an option)
    _manage(d, "bootstrap", "--bootstrap-admin-url", auth_url, "--bootstrap-public-url", auth_url,
            "--bootstrap-internal-url", auth_url, "--bootstrap-region-id", REGION, OS_BOOTSTRAP_PASSWORD=admin_pw)
    env = dict(server_env(), OS_KEYSTONE_CONFIG_FILES=str(d / "keystone.conf"))
    (d / "keystone_wsgi.py").write_text(_ENTRY)
    log = open(d / "log" / "gunicorn.log", "wb")
    # One request at a time: Keystone's SQLite transactions read, then write
    # (each password check records the user's last activity), and two such
    # transactions at once fail "database is locked" at once, whatever the busy
    # timeout (WAL refuses to upgrade a stale read snapshot).  Each request is
    # short, so making them wait in line costs little and none of them fails.
    proc = subprocess.Popen([str(VENV / "bin" / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--workers", "1",
                             "--threads", "1", "--timeout", "120", "--no-control-socket", "--chdir", str(d),
                             "keystone_wsgi:application"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, cwd=str(d), env=env)
    (d / "state.json").write_text(json.dumps({"pids": [proc.pid], "ports": {"keystone": port}}))
    deadline = time.monotonic() + 90
    while True:
        try:
            if _call(auth_url)[0] == 200:
                break
        except (OSError, RuntimeError):
            pass
        if time.monotonic() > deadline or not _alive(proc.pid):
            logs = "".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in (d / "log").iterdir())
            stop(d)
            sys.exit(f"keystone_aio: Keystone did not come up\n{logs}")
        time.sleep(0.2)
    # the service user vhdkit validates tokens as (Keystone's policy lets the
    # "service" role validate any token)
    token = password_token(auth_url, "admin", admin_pw, "admin")
    project = _find_or_create(auth_url, token, "project", SERVICE_PROJECT, {"domain_id": "default"})
    role = _find_or_create(auth_url, token, "role", "service", {})
    uid = _find_or_create(auth_url, token, "user", SERVICE_USER, {"domain_id": "default", "password": service_pw})
    _call(f"{auth_url}/projects/{project}/users/{uid}/roles/{role}", "PUT", token=token)
    for name in ("member", "reader"):   # bootstrap makes them in recent releases; older ones lack reader
        _find_or_create(auth_url, token, "role", name, {})
    out = d / "env"
    out.write_text("".join(f"{k}={v}\n" for k, v in {
        "OS_AUTH_URL": auth_url, "OS_IDENTITY_API_VERSION": "3", "OS_AUTH_TYPE": "password",
        "OS_USERNAME": "admin", "OS_PASSWORD": admin_pw, "OS_PROJECT_NAME": "admin",
        "OS_USER_DOMAIN_NAME": "Default", "OS_PROJECT_DOMAIN_NAME": "Default", "OS_REGION_NAME": REGION,
        "VHDKIT_AUTH": "keystone", "VHDKIT_KEYSTONE_URL": auth_url, "VHDKIT_KEYSTONE_USER": SERVICE_USER,
        "VHDKIT_KEYSTONE_PASSWORD": service_pw, "VHDKIT_KEYSTONE_PROJECT": SERVICE_PROJECT}.items()))
    out.chmod(0o600)
    return out


def register_image_endpoint(d: Path, url: str) -> None:
    """Make ``url`` the catalog's ``image`` service (public, internal and admin),
    replacing any earlier image endpoints."""
    env = read_env(d)
    auth_url = env["OS_AUTH_URL"]
    token = password_token(auth_url, env["OS_USERNAME"], env["OS_PASSWORD"], env["OS_PROJECT_NAME"])
    service = _find_or_create(auth_url, token, "service", "glance", {"type": "image", "enabled": True})
    _s, _h, found = _call(f"{auth_url}/endpoints?service_id={service}", token=token)
    for ep in found["endpoints"]:
        _call(f"{auth_url}/endpoints/{ep['id']}", "DELETE", token=token)
    for interface in ("public", "internal", "admin"):
        _call(f"{auth_url}/endpoints", "POST", {"endpoint": {
            "service_id": service, "interface": interface, "url": url, "region_id": REGION}}, token)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=["start", "stop", "status", "endpoint"])
    ap.add_argument("url", nargs="?", help="endpoint: the vhdkit Images API URL")
    ap.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--token-expiration", type=int, default=3600, help="start: token lifetime in seconds")
    a = ap.parse_args()
    d = a.dir.resolve()
    if a.action == "start":
        t = time.monotonic()
        env = start(d, a.token_expiration)
        print(env)
        print(f"keystone_aio: up in {time.monotonic() - t:.1f} s", file=sys.stderr)
    elif a.action == "endpoint":
        if not a.url:
            ap.error("endpoint needs the URL")
        register_image_endpoint(d, a.url)
    elif a.action == "stop":
        stop(d)
    else:
        status(d, "keystone_aio")


if __name__ == "__main__":
    main()
