"""The standard library's :func:`contextlib.contextmanager` for the modules
a command loads at start-up, with contextlib's import put off until a
decorated function is first called.

contextlib imports collections, functools and types, whose loading costs
``vhdkit image show`` more than its work does.  The registry's read path
(open, one snapshot, one SELECT, close) calls no decorated function, so a
read never loads them.  Behaviour is contextlib's own: the first call
builds ``contextlib.contextmanager(func)`` and every call goes to it.

    @contextmanager
    def transaction(conn):
        ...
        yield conn
"""
from __future__ import annotations

__all__ = ["contextmanager"]


def contextmanager(func):
    """:func:`contextlib.contextmanager`, imported on the first call."""
    made = None

    def call(*args, **kwargs):
        nonlocal made
        if made is None:
            from contextlib import contextmanager as make

            made = make(func)
        return made(*args, **kwargs)

    for name in ("__module__", "__name__", "__qualname__", "__doc__"):
        setattr(call, name, getattr(func, name))
    call.__wrapped__ = func
    return call
