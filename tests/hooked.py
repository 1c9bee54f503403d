"""Run the ``vhdkit`` command line with test hooks set (vhdkit/testhooks.py).

    python tests/hooked.py [--kill-at-stage STAGE[:stop]] [--abort-after-writes N] [--cleanup-now T] -- ARGS...

The hooks are module attributes and native options, never environment
variables: production code does not read test settings from the environment.
:func:`vhdkit_cmd` builds the command line for a test.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

HERE = Path(__file__).resolve()


def vhdkit_cmd(*, kill_at_stage: str = "", abort_after_writes: Optional[int] = None,
               cleanup_now: Optional[float] = None) -> List[str]:
    """The argv prefix that runs ``vhdkit`` with these hooks (plain ``python -m
    vhdkit`` when none is set)."""
    if not kill_at_stage and abort_after_writes is None and cleanup_now is None:
        return [sys.executable, "-m", "vhdkit"]
    cmd = [sys.executable, str(HERE)]
    if kill_at_stage:
        cmd += ["--kill-at-stage", kill_at_stage]
    if abort_after_writes is not None:
        cmd += ["--abort-after-writes", str(abort_after_writes)]
    if cleanup_now is not None:
        cmd += ["--cleanup-now", repr(float(cleanup_now))]
    return cmd + ["--"]


def main(argv: List[str]) -> None:
    sys.path.insert(0, str(HERE.parent.parent))
    from vhdkit import testhooks
    from vhdkit.cli import main as cli

    sep = argv.index("--")
    opts, rest = argv[:sep], argv[sep + 1:]
    for flag, value in zip(opts[::2], opts[1::2]):
        if flag == "--kill-at-stage":
            testhooks.kill_at_stage = value
        elif flag == "--abort-after-writes":
            testhooks.abort_after_writes(int(value))
        elif flag == "--cleanup-now":
            testhooks.cleanup_now = float(value)
        else:
            raise SystemExit(f"hooked.py: unknown option {flag}")
    cli(rest, prog_name="vhdkit")


if __name__ == "__main__":
    main(sys.argv[1:])
