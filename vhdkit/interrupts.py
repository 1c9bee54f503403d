"""Stopping on SIGINT and SIGTERM: the one place that turns these signals
into an exception.

:func:`install` (the command line calls it) makes both signals raise
:class:`Stopped` in the main thread, wherever it is, so a long operation
unwinds at once: every ``finally`` and ``except BaseException`` on the way
runs (temporary files are removed, a worker gives its task back) and the
process exits ``128 + signal`` (130 for SIGINT, 143 for SIGTERM).

Code that an exception must not break into half-way (handing a block to the
parallel gzip writer's threads, giving a task back) runs inside
:func:`deferred`: a signal arriving meanwhile is raised when the section
ends.  A second signal while the first one's unwinding runs stops the
process at once, as the signal's default action would (a temporary file
then left behind is removed by the next write of the same output).
"""
from __future__ import annotations

import os
import sys
from _thread import get_ident

try:  # `signal` without its enum wrappers (importing enum costs every command start-up)
    import _signal as signal
except ImportError:  # pragma: no cover - an interpreter without CPython's module
    import signal

TYPE_CHECKING = False   # typing is not imported at run time (start-up of every command)
if TYPE_CHECKING:
    from typing import Any, Callable, Optional


def _in_main_thread() -> bool:
    """``threading.current_thread() is threading.main_thread()``, without
    importing threading (start-up) unless something did: then threads may
    run and threading knows the main one.  Until then only the main thread
    runs, so the thread that imported this module is it."""
    threading = sys.modules.get("threading")
    if threading is not None:
        return threading.current_thread() is threading.main_thread()
    return get_ident() == _MAIN


_MAIN = get_ident()

__all__ = ["Stopped", "install", "release", "deferred", "stopping", "Background"]


class Stopped(KeyboardInterrupt):
    """Raised in the main thread by SIGINT or SIGTERM once :func:`install` ran.

    A KeyboardInterrupt, so ``except Exception`` does not swallow it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        import signal as named

        self.name = named.Signals(signum).name
        #: The shell's convention for "ended by this signal".
        self.exit_status = 128 + signum


_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_depth = 0                     # nesting of deferred() sections in the main thread
_pending: Optional[int] = None  # a signal that arrived inside one
_stopping: Optional[int] = None  # the signal that stopped us (raised or pending): a second one is forceful


def stopping() -> Optional[int]:
    """The signal that is stopping the process, if any: an error raised while
    it unwinds (a lock an interrupted wait left broken, say) is part of the stop."""
    return _stopping


def _handler(signum: int, frame) -> None:
    global _pending, _stopping
    if _stopping is not None:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _stopping = signum
    if _depth:
        _pending = signum
        return
    raise Stopped(signum)


_held = False                  # install(hold=True) opened a deferred section


def install(hold: bool = False) -> None:
    """Make SIGINT and SIGTERM raise :class:`Stopped` (main thread only).  A
    signal that was ignored when the process started stays ignored (``nohup``,
    a background job of a non-interactive shell).  ``hold``: a signal is kept
    until :func:`release` (a program's start-up, before it can clean up)."""
    global _depth, _held
    if not _in_main_thread():
        return
    for sig in _SIGNALS:
        if signal.getsignal(sig) not in (signal.SIG_IGN, _handler):
            signal.signal(sig, _handler)
    if hold and not _held:
        _held = True
        _depth += 1


def release() -> None:
    """End :func:`install`'s hold: a signal that came meanwhile is raised now."""
    global _held
    if _held and _in_main_thread():
        _held = False
        _Deferred.__exit__(_HELD)


class _Deferred:
    """See :func:`deferred`."""

    __slots__ = ("main",)

    def __enter__(self) -> None:
        global _depth
        self.main = _in_main_thread()
        if self.main:
            _depth += 1

    def __exit__(self, *exc) -> None:
        global _depth, _pending
        if not self.main:
            return
        _depth -= 1
        if _depth == 0 and _pending is not None:
            signum, _pending = _pending, None
            raise Stopped(signum)


_HELD = _Deferred()
_HELD.main = True


def deferred() -> _Deferred:
    """A section SIGINT/SIGTERM must not break into: a signal arriving inside
    is raised as :class:`Stopped` when the (outermost) section ends.  Keep such
    sections short: a stop waits for them."""
    return _Deferred()


class Background:
    """``fn()`` in a daemon thread (a native call that drops the GIL), waited
    for with :meth:`wait`, which an interruption never corrupts.

    ``Thread.join`` is not used: on Python 3.11 a join interrupted by a
    signal handler's exception may mark a still running thread as stopped,
    so that the next join returns at once while the thread still uses the
    buffers its caller is about to free."""

    def __init__(self, fn: Callable[[], Any], name: str):
        self.result: Any = None
        import threading

        self._done = threading.Event()

        def work() -> None:
            try:
                self.result = fn()
            finally:
                self._done.set()

        self._thread = threading.Thread(target=work, name=name, daemon=True)

    def start(self) -> "Background":
        with deferred():  # not broken into half-way: afterwards the thread runs
            self._thread.start()
        return self

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    @property
    def running(self) -> bool:
        return self.started and not self._done.is_set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """True once ``fn`` returned (or raised)."""
        return self._done.wait(timeout)
