"""Run commands as children and measure each one: wall time, that child's own peak
RSS, CPU time, and bytes read/written through syscalls.

Peak RSS: every command runs under ``/usr/bin/time -f %M``.  Taking ``ru_maxrss``
from ``os.wait4`` of a child spawned straight from this Python process is wrong
on Linux: at ``exec`` the kernel folds the *pre-exec* address space's high-water
mark (the harness's own ~35 MiB, shared by the vfork/fork child) into the
child's maxrss.  ``time`` is a small process, so the child it forks starts from a
small mm; its ``%M`` also covers the child's waited-for descendants, so a
``sh -c 'a | b'`` pipeline reports its largest process.

I/O: ``/proc/PID/io`` of the ``time`` process, read after it exits but before it
is reaped (``waitid(WNOWAIT)``); the kernel adds a reaped child's I/O counters
to its parent's, so this is the whole command's ``rchar``/``wchar``.

A *variant* is one contender of a workload (vhdkit or a peer) and may have
several sequential steps (e.g. ``pigz`` then ``tar``); its time is the sum of
its steps, its RSS the largest step's.
"""
from __future__ import annotations

import os
import shutil
import signal
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional


@dataclass
class Cmd:
    argv: list[str]
    stdin: Optional[str] = None     # path to read fd 0 from
    stdout: Optional[str] = None    # path to write fd 1 to (default /dev/null)
    env: Optional[dict] = None      # extra environment

    @classmethod
    def sh(cls, script: str, **kw) -> "Cmd":
        return cls(["sh", "-c", script], **kw)

    def display(self) -> str:
        import shlex
        if self.argv[:2] == ["sh", "-c"]:
            s = self.argv[2]
        else:
            s = " ".join(shlex.quote(a) for a in self.argv)
        if self.stdin:
            s += f" < {self.stdin}"
        if self.stdout and self.stdout != os.devnull:
            s += f" > {self.stdout}"
        return s


@dataclass
class Variant:
    name: str
    steps: list[Cmd]
    ours: bool = False
    setup: Optional[Callable[[], None]] = None      # before every run (untimed): clean outputs
    verify: Optional[Callable[[], Optional[str]]] = None  # after the warm-up run: None or a problem
    output: Optional[str] = None                   # path whose size is reported
    tools: list[str] = field(default_factory=list)  # executables that must exist
    inner: Optional[str] = None  # the command writes {"seconds": per-operation median} here; that is its time
    #: A lower bound that does less work than vhdkit (e.g. a bare ``cat`` with no
    #: hashing or sync): shown, labelled "floor", never a verdict.
    floor: bool = False

    def display(self, root: str = "") -> str:
        s = " && ".join(c.display() for c in self.steps)
        return s.replace(root, "") if root else s


class RunError(Exception):
    def __init__(self, msg: str, stderr: str = ""):
        super().__init__(msg)
        self.stderr = stderr


TIME = "/usr/bin/time"


def measure(cmd: Cmd, cwd: str, base_env: dict, err_path: str, timeout: float = 3600) -> dict:
    exe = shutil.which(cmd.argv[0], path=base_env.get("PATH"))
    if exe is None:
        raise RunError(f"{cmd.argv[0]}: not installed")
    rss_path = err_path + ".rss"
    wrapped = os.path.exists(TIME)
    argv = [TIME, "-f", "%M", "-o", rss_path, exe, *cmd.argv[1:]] if wrapped else [exe, *cmd.argv[1:]]
    env = dict(base_env)
    if cmd.env:
        env.update(cmd.env)
    fa = [
        (os.POSIX_SPAWN_OPEN, 0, cmd.stdin or os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, cmd.stdout or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
        (os.POSIX_SPAWN_OPEN, 2, err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
    ]
    old = os.getcwd()
    os.chdir(cwd)
    try:
        t0 = time.perf_counter()
        pid = os.posix_spawn(argv[0], argv, env, file_actions=fa)
    finally:
        os.chdir(old)
    killed = []
    timer = threading.Timer(timeout, lambda: (killed.append(1), os.kill(pid, signal.SIGKILL)))
    timer.start()
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        wall = time.perf_counter() - t0
        io = {}
        try:
            with open(f"/proc/{pid}/io") as f:
                for line in f:
                    k, v = line.split(":")
                    io[k] = int(v)
        except OSError:
            pass
        _, status, ru = os.wait4(pid, 0)
    finally:
        timer.cancel()
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0 or killed:
        try:
            tail = Path(err_path).read_text(errors="replace")[-2000:]
        except OSError:
            tail = ""
        why = "timed out" if killed else f"exit status {rc}"
        raise RunError(f"{cmd.argv[0]}: {why}", tail)
    maxrss = ru.ru_maxrss  # fallback: polluted by the harness's own RSS (see above)
    if wrapped:
        try:
            maxrss = int(Path(rss_path).read_text().split()[-1])
        except (OSError, ValueError, IndexError):
            raise RunError(f"{TIME}: no RSS figure in {rss_path}")
    return {
        "wall": wall,
        "maxrss_kib": maxrss,
        "rss_exact": wrapped,
        "cpu": ru.ru_utime + ru.ru_stime,
        "rchar": io.get("rchar"),
        "wchar": io.get("wchar"),
    }


def run_variant(v: Variant, cwd: str, env: dict, err_path: str) -> dict:
    if v.setup:
        try:
            v.setup()
        except RunError:
            raise
        except Exception as e:  # a setup step (e.g. putting the input object) failed: not a timing
            raise RunError(f"{v.name}: setup failed: {type(e).__name__}: {e}")
    os.sync()  # start every run with no dirty pages left by the previous one
    total = {"wall": 0.0, "maxrss_kib": 0, "cpu": 0.0, "rchar": 0, "wchar": 0}
    for step in v.steps:
        r = measure(step, cwd, env, err_path)
        total["wall"] += r["wall"]
        total["cpu"] += r["cpu"]
        total["maxrss_kib"] = max(total["maxrss_kib"], r["maxrss_kib"])
        for k in ("rchar", "wchar"):
            total[k] = None if (total[k] is None or r[k] is None) else total[k] + r[k]
    if v.inner:
        import json
        try:
            total["process_wall"] = total["wall"]
            total["wall"] = float(json.loads(Path(v.inner).read_text())["seconds"])
        except (OSError, ValueError, KeyError) as e:
            raise RunError(f"{v.name}: no inner timing in {v.inner}: {e}")
    if v.output:
        try:
            st = os.stat(v.output)
            total["out_bytes"] = st.st_size
            total["out_alloc"] = st.st_blocks * 512
        except OSError:
            pass
    return total


def summarize(runs: list[dict], basis: Optional[int]) -> dict:
    walls = [r["wall"] for r in runs]
    med = statistics.median(walls)
    out = {
        "median": med, "min": min(walls), "max": max(walls),
        "cv": (statistics.stdev(walls) / statistics.mean(walls)) if len(walls) > 1 else 0.0,
        "maxrss_mib": max(r["maxrss_kib"] for r in runs) / 1024,
        "cpu_median": statistics.median(r["cpu"] for r in runs),
        "mb_s": (basis / med / 1e6) if basis and med > 0 else None,
    }
    for k in ("rchar", "wchar", "out_bytes", "out_alloc"):
        vals = [r.get(k) for r in runs if r.get(k) is not None]
        if vals:
            out[k] = statistics.median(vals)
    return out


def pair_ratios(ours: list[dict], peer: list[dict]) -> dict:
    """vhdkit/peer wall-time ratio for each alternation round (same round = same noise)."""
    rs = [a["wall"] / b["wall"] for a, b in zip(ours, peer) if b["wall"] > 0]
    if not rs:
        return {}
    return {"median": statistics.median(rs), "min": min(rs), "max": max(rs), "n": len(rs)}
