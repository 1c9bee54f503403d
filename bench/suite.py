"""Workload registry and the loop that runs one workload: warm-up, then
alternating rounds (vhdkit, peer 1, peer 2, vhdkit, peer 1, ...)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from .gen import Inputs
from .runner import RunError, Variant, pair_ratios, run_variant, summarize

ROOT = Path(__file__).resolve().parent.parent
UNAVAILABLE_MARKERS = ("NotImplementedError", "No such command", "not implemented", "cannot import name")


@dataclass
class Workload:
    variants: list[Variant]
    basis: Optional[int]            # bytes of virtual disk per run, for MB/s (None: not a data workload)
    params: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    extra: Optional[Callable[[dict], dict]] = None   # derived figures from the summaries


@dataclass
class WorkloadDef:
    name: str
    group: str
    title: str
    build: Callable[["Ctx"], Workload]
    needs: list[tuple] = field(default_factory=list)   # vhdkit CLI command paths, e.g. ("ova", "pack")
    issue: Optional[int] = None
    target: str = ""                                     # the issue's performance target, quoted


REGISTRY: list[WorkloadDef] = []


def workload(name: str, group: str, title: str, needs=(), issue=None, target=""):
    def deco(fn):
        REGISTRY.append(WorkloadDef(name, group, title, fn, [tuple(n) for n in needs], issue, target))
        return fn
    return deco


class Ctx:
    def __init__(self, workdir: Path, size: int, quick: bool, log=print):
        self.root = ROOT
        self.workdir = Path(workdir)
        self.inputs = Inputs(self.workdir, log=log)
        self.size = size
        self.quick = quick
        self.log = log
        self.py = sys.executable
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = str(ROOT) + (os.pathsep + self.env["PYTHONPATH"] if self.env.get("PYTHONPATH") else "")
        self.env.setdefault("LC_ALL", "C")
        self.env["VHDKIT_HOME"] = str(self.workdir / "home")
        # An installed vhdkit has its bytecode compiled; with this set (some dev
        # sandboxes do) every timed `python -m vhdkit` would recompile the
        # modules it imports (~50 ms).  The warm-up run writes the .pyc files.
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        self._probe: dict = {}
        self._current: Optional[str] = None

    def vk(self, *args: str, json: bool = True) -> list[str]:
        """``python -m vhdkit ARGS --json`` (machine output, as scripts use it; stdout is discarded)."""
        return [self.py, "-m", "vhdkit", *args] + (["--json"] if json else [])

    def vk_script(self) -> list[str]:
        """The installed ``vhdkit`` script beside this interpreter (what a user runs), else ``python -m vhdkit``."""
        script = Path(self.py).with_name("vhdkit")
        return [str(script)] if script.exists() else [self.py, "-m", "vhdkit"]

    def tool(self, *args: str) -> list[str]:
        return [self.py, "-m", "bench.tools", *args]

    def outdir(self, variant: str) -> Path:
        d = self.workdir / "out" / (self._current or "x") / variant
        d.mkdir(parents=True, exist_ok=True)
        return d

    def clean(self, *paths) -> Callable[[], None]:
        def setup() -> None:
            for p in paths:
                p = Path(p)
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                    p.mkdir(parents=True)
                else:
                    p.unlink(missing_ok=True)
        return setup

    def has(self, path: tuple) -> bool:
        """Does this vhdkit build have the CLI command ``vhdkit <path...>``?"""
        if path not in self._probe:
            r = subprocess.run(self.vk(*path, "--help"), cwd=ROOT, env=self.env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self._probe[path] = r.returncode == 0
        return self._probe[path]

    def run_quiet(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        return subprocess.run(argv, cwd=ROOT, env=self.env, capture_output=True, text=True, **kw)


def run_workload(d: WorkloadDef, ctx: Ctx, repeat: int, warmup: bool = True) -> dict:
    """Warm-up round (untimed, then each output verified), then ``repeat`` alternating
    rounds.  Without ``warmup`` (``--quick``) the first round is verified and kept."""
    res: dict = {"name": d.name, "group": d.group, "title": d.title, "issue": d.issue,
                 "target": d.target, "status": "ok", "variants": [], "ratios": {}}
    missing = [" ".join(p) for p in d.needs if not ctx.has(p)]
    if missing:
        res["status"] = "unavailable"
        res["reason"] = "feature not available: " + ", ".join(f"`vhdkit {m}`" for m in missing)
        return res
    ctx._current = d.name
    out_root = ctx.workdir / "out" / d.name
    if out_root.exists():
        shutil.rmtree(out_root)
    try:
        w = d.build(ctx)
    except RunError as e:
        return _fail(res, f"preparing inputs: {e}", e.stderr)
    except Exception as e:  # an input that cannot be built is a harness failure, said plainly
        return _fail(res, f"preparing inputs: {type(e).__name__}: {e}")
    res.update(basis_bytes=w.basis, params=w.params, notes=list(w.notes))
    err = str(ctx.workdir / f"last-stderr.{os.getpid()}.txt")  # per harness process: runs may share a workdir
    active: list[Variant] = []
    for v in w.variants:
        vr = {"name": v.name, "ours": v.ours, "floor": v.floor, "command": v.display(str(ctx.workdir) + "/"), "runs": []}
        res["variants"].append(vr)
        miss = [t for t in v.tools if shutil.which(t) is None]
        if miss:
            vr["status"] = f"skipped: {', '.join(miss)} not installed"
            continue
        try:
            first = run_variant(v, str(ROOT), ctx.env, err)  # warm-up (untimed unless --quick)
            if not warmup:
                vr["runs"].append(first)
        except RunError as e:
            text = f"{e}\n{e.stderr}"
            if v.ours and any(m in text for m in UNAVAILABLE_MARKERS):
                res["status"] = "unavailable"
                res["reason"] = "feature not available: " + _last_line(e.stderr or str(e))
                return _cleanup(res, out_root)
            if v.ours:
                return _cleanup(_fail(res, f"vhdkit failed ({e}): {_last_line(e.stderr)}", e.stderr), out_root)
            vr["status"] = f"failed: {e}: {_last_line(e.stderr)}"
            continue
        if v.verify:
            problem = v.verify()
            vr["verified"] = problem is None
            if problem:
                vr["verify_problem"] = problem
                if v.ours:
                    res["status"] = "wrong-output"
                    res["reason"] = problem
                else:   # a peer that did not do the work is no pair: not timed, no ratio
                    vr["status"], vr["runs"] = f"wrong output: {problem}", []
                    continue
        vr["status"] = "ok"
        active.append(v)
    for _ in range(repeat if warmup else repeat - 1):
        for v in active:
            vr = next(x for x in res["variants"] if x["name"] == v.name)
            try:
                vr["runs"].append(run_variant(v, str(ROOT), ctx.env, err))
            except RunError as e:
                vr["status"] = f"failed in a timed run: {e}: {_last_line(e.stderr)}"
    for v in active:
        vr = next(x for x in res["variants"] if x["name"] == v.name)
        if vr["runs"]:
            vr["stats"] = summarize(vr["runs"], w.basis)
    ours = next((x for x in res["variants"] if x["ours"] and x["runs"]), None)
    if ours:
        for x in res["variants"]:
            if not x["ours"] and x["runs"]:
                res["ratios"][x["name"]] = pair_ratios(ours["runs"], x["runs"])
    if w.extra and ours and "stats" in ours:
        try:
            res["extra"] = w.extra(res)
        except Exception as e:  # derived figures are optional; say why one is missing
            res["extra"] = {"error": f"{type(e).__name__}: {e}"}
    return _cleanup(res, out_root)


def _cleanup(res: dict, out_root: Path) -> dict:
    shutil.rmtree(out_root, ignore_errors=True)
    return res


def _fail(res: dict, reason: str, stderr: str = "") -> dict:
    res["status"] = "failed"
    res["reason"] = reason
    if stderr:
        res["stderr"] = stderr[-2000:]
    return res


def _last_line(text: str) -> str:
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""
