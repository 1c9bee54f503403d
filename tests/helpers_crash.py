"""Crash harness: run a writer in a subprocess and SIGKILL it at a chosen
point, so tests can reopen what it left and check it is the old or the new
consistent state (never a torn one), with nothing orphaned.

Three ways to choose the point:

- ``run_native_hook(code, n)``: the native writers' test hook
  (``vhdkit.testhooks.abort_after_writes(n)``, csrc/vk_write.c) stops vk_modify /
  vk_repair after exactly n writes; the child then SIGKILLs itself at once
  (no cleanup of any kind runs, as in a real kill).
- ``run_event_kill(code, n)``: Python-level events -- every ``os.write``,
  ``os.fsync``, ``os.rename``, ``os.replace``, ``os.unlink`` and every
  registry write transaction (before BEGIN, before COMMIT, after COMMIT) --
  are counted in the child and it SIGKILLs itself *before* event n.
  ``count_events(code)`` runs the code to completion and returns how many
  events it has, so a test can walk every point 1..n+1.
- ``run_random_kill(code, delay)``: SIGKILL from outside after ``delay``
  seconds (for native loops without a hook, e.g. the converter).

Each returns the child's exit status (-9 when killed).  ``code`` is Python
source run with ``sys.path`` set to the project and tests directories.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Optional

ROOT = Path(__file__).resolve().parent.parent

_PRELUDE = r'''
import os, signal, sys
sys.path[:0] = [{root!r}, {tests!r}]
_N = int(os.environ.get("VHDKIT_CRASH_AT", "0"))
_LOG = os.environ.get("VHDKIT_CRASH_LOG")
_count = [0]
def _event(name):
    _count[0] += 1
    if _LOG:
        with open(_LOG, "a") as fh:
            fh.write(name + "\n")
    if _N and _count[0] == _N:
        os.kill(os.getpid(), signal.SIGKILL)
def _wrap(mod, attr):
    orig = getattr(mod, attr)
    def w(*a, **k):
        _event(attr)
        return orig(*a, **k)
    setattr(mod, attr, w)
if _N or _LOG:
    for _a in ("write", "fsync", "rename", "replace", "unlink"):
        _wrap(os, _a)
    try:
        import contextlib
        import vhdkit.registry.db as _db
        _orig_immediate = _db.immediate
        @contextlib.contextmanager
        def _immediate(conn):
            _event("txn-begin")
            with _orig_immediate(conn) as c:
                yield c
                _event("txn-commit")
            _event("txn-committed")
        _db.immediate = _immediate
    except ImportError:
        pass
'''

_HOOK_TAIL = r'''
from vhdkit import testhooks as _testhooks
_testhooks.abort_after_writes(int(os.environ["VHDKIT_CRASH_ABORT_AFTER"]))
try:
    _main()
except Exception as _e:
    from vhdkit.errors import OperationInterrupted
    if isinstance(_e, OperationInterrupted):
        os.kill(os.getpid(), signal.SIGKILL)
    raise
'''


def _script(code: str, hook: bool = False) -> str:
    pre = _PRELUDE.format(root=str(ROOT), tests=str(ROOT / "tests"))
    if hook:
        body = "def _main():\n" + "".join("    " + line + "\n" for line in code.strip().splitlines())
        return pre + body + _HOOK_TAIL
    return pre + code


def _env(extra: Dict[str, str]) -> Dict[str, str]:
    env = dict(os.environ)
    env.pop("VHDKIT_CRASH_ABORT_AFTER", None)
    env.pop("VHDKIT_CRASH_AT", None)
    env.pop("VHDKIT_CRASH_LOG", None)
    env.update(extra)
    return env


def run_native_hook(code: str, n: int, timeout: float = 60) -> int:
    p = subprocess.run([sys.executable, "-c", _script(code, hook=True)], capture_output=True,
                       env=_env({"VHDKIT_CRASH_ABORT_AFTER": str(n)}), timeout=timeout)
    if p.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"writer failed (rc {p.returncode}): {p.stderr.decode()[-2000:]}")
    return p.returncode


def run_event_kill(code: str, n: int, timeout: float = 60) -> int:
    p = subprocess.run([sys.executable, "-c", _script(code)], capture_output=True,
                       env=_env({"VHDKIT_CRASH_AT": str(n)}), timeout=timeout)
    if p.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"writer failed (rc {p.returncode}): {p.stderr.decode()[-2000:]}")
    return p.returncode


def count_events(code: str, log: Path, timeout: float = 60) -> int:
    if log.exists():
        log.unlink()
    p = subprocess.run([sys.executable, "-c", _script(code)], capture_output=True,
                       env=_env({"VHDKIT_CRASH_LOG": str(log)}), timeout=timeout)
    if p.returncode != 0:
        raise AssertionError(f"writer failed: {p.stderr.decode()[-2000:]}")
    return len(log.read_text().splitlines()) if log.exists() else 0


def run_random_kill(code: str, delay: float, timeout: float = 60) -> int:
    proc = subprocess.Popen([sys.executable, "-c", _script(code)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=_env({}))
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"writer failed (rc {proc.returncode}): {err.decode()[-2000:]}")
    return proc.returncode


def timed_run(code: str, timeout: float = 120) -> float:
    """Seconds one complete, unkilled run takes (to spread random kills)."""
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-c", _script(code)], capture_output=True, env=_env({}), timeout=timeout)
    if p.returncode != 0:
        raise AssertionError(f"writer failed: {p.stderr.decode()[-2000:]}")
    return time.monotonic() - t0


def leftovers(directory: Path, keep) -> list:
    """Files in ``directory`` other than ``keep`` (temp files a crash left)."""
    return sorted(p.name for p in Path(directory).iterdir() if p.name not in set(keep))


def crash_points_file() -> Optional[Path]:
    """Where tests append 'writer points' lines for the report (optional)."""
    p = os.environ.get("VHDKIT_CRASH_REPORT")
    return Path(p) if p else None


def record(writer: str, points: int) -> None:
    f = crash_points_file()
    if f is not None:
        with open(f, "a") as fh:
            fh.write(f"{writer} {points}\n")
