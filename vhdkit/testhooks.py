"""Test-only hooks: the one place tests reach into production code to stop it
at a chosen point.  Nothing here reads the environment; a test sets a hook
in its own process (``monkeypatch``, or the functions below), or starts a
child through ``tests/hooked.py``, which sets them before running the
``vhdkit`` command line.

- :data:`kill_at_stage` (``STAGE`` or ``STAGE:stop``): a pipeline worker kills
  itself with SIGKILL at the first progress report inside that stage, i.e.
  with that stage's output half written (vhdkit/tasks/pipeline.py); ``:stop`` sends
  SIGSTOP instead, once (a worker paused past its lease until someone sends
  SIGCONT).
- :func:`abort_after_writes` (N): the native writers (modify, repair,
  coalesce into parent, writes through an image opened read-write) stop with
  ``OperationInterrupted`` after exactly N writes (the native core's
  ``vk_options.abort_after_writes``).
- :data:`cleanup_now` (seconds since the epoch): ``vhdkit cleanup`` judges
  every age against this moment instead of the clock
  (vhdkit/tasks/maintenance.py), so a test decides exactly which side of
  the grace each item is on.
"""
from __future__ import annotations

from typing import Optional

#: "STAGE" or "STAGE:stop"; empty: no hook
kill_at_stage: str = ""

#: the moment `vhdkit cleanup` takes as now; None: the clock
cleanup_now: Optional[float] = None


def abort_after_writes(n: Optional[int]) -> None:
    """Stop the native writers after ``n`` writes (None: never)."""
    from . import native

    native.set_options(abort_after_writes=-1 if n is None else int(n))
