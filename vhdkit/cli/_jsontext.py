"""JSON text exactly as the standard library's ``json.dumps`` writes it, for
the command line's output, without importing :mod:`json` (which loads
``re`` and ``enum``: start-up cost of every command that prints a result,
more than the work of ``vhdkit image show``).

:func:`dumps` writes the types the commands print -- dicts with string keys,
lists, tuples, strings, ints, floats, booleans and None, each of exactly that
type -- itself; a value of any other type (a subclass, a key that is not a
string, anything ``default`` must convert) hands the whole call to
``json.dumps``.  tests/test_cli_jsontext.py holds the two to the same bytes.
"""
from __future__ import annotations

#: The escapes json writes for these characters; other control characters
#: (and, with ensure_ascii, every non-ASCII one) are ``\\uXXXX``.
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}
_FLOATS = {float("inf"): "Infinity", float("-inf"): "-Infinity"}


class _Other(Exception):
    """A value this module does not write: json.dumps takes the call."""


def _string(s: str, ascii_only: bool) -> str:
    if s.isascii() and s.isprintable() and '"' not in s and "\\" not in s:
        return f'"{s}"'
    out = []
    for c in s:
        e = _ESCAPES.get(c)
        if e is None:
            n = ord(c)
            if n < 0x20 or (ascii_only and n > 0x7E):
                if n > 0xFFFF:      # a surrogate pair, as json writes it
                    n -= 0x10000
                    e = "\\u%04x\\u%04x" % (0xD800 | (n >> 10), 0xDC00 | (n & 0x3FF))
                else:
                    e = "\\u%04x" % n
            else:
                e = c
        out.append(e)
    return '"' + "".join(out) + '"'


def _write(o, out: list, ascii_only: bool, indent, level: int) -> None:
    t = type(o)
    if t is str:
        out.append(_string(o, ascii_only))
    elif o is None:
        out.append("null")
    elif o is True:
        out.append("true")
    elif o is False:
        out.append("false")
    elif t is int:
        out.append(int.__repr__(o))
    elif t is float:
        out.append("NaN" if o != o else _FLOATS.get(o) or float.__repr__(o))
    elif t is list or t is tuple or t is dict:
        items = o.items() if t is dict else o
        if not o:
            out.append("{}" if t is dict else "[]")
            return
        out.append("{" if t is dict else "[")
        if indent is None:
            sep = ", "
        else:
            level += 1
            sep = ",\n" + indent * level
            out.append(sep[1:])
        first = True
        for item in items:
            if not first:
                out.append(sep)
            first = False
            if t is dict:
                key, item = item
                if type(key) is not str:
                    raise _Other
                out.append(_string(key, ascii_only))
                out.append(": ")
            _write(item, out, ascii_only, indent, level)
        if indent is not None:
            out.append("\n" + indent * (level - 1))
        out.append("}" if t is dict else "]")
    else:
        raise _Other


def dumps(obj, *, indent=None, ensure_ascii: bool = True, default=None) -> str:
    """``json.dumps(obj, indent=indent, ensure_ascii=ensure_ascii, default=default)``."""
    out: list = []
    try:
        _write(obj, out, ensure_ascii, None if indent is None else " " * indent, 0)
    except _Other:
        import json

        return json.dumps(obj, indent=indent, ensure_ascii=ensure_ascii, default=default)
    return "".join(out)
