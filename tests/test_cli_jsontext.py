"""The command line's JSON writer (vhdkit.cli._jsontext) writes the same
bytes as json.dumps, in the three ways the commands call it: indented with
default=str (--json), compact (one object per line), and ensure_ascii=False
(values in `image show`'s table) -- for every kind of value, every escape,
and the values it hands to json.dumps."""
from __future__ import annotations

import datetime
import enum
import json
import random

import pytest

from vhdkit.cli._jsontext import dumps

CALLS = [dict(indent=2, default=str), dict(default=str), dict(ensure_ascii=False), dict(indent=0)]

_CHARS = [chr(n) for n in (*range(0x00, 0x21), 0x22, 0x2F, 0x5C, 0x7E, 0x7F, 0x80, 0x9F, 0xA0, 0xE9, 0x2028,
                           0xD800, 0xDFFF, 0xFFFF, 0x10000, 0x1F600, 0x10FFFF)] + list("aZ09 .:")


class Color(enum.IntEnum):
    RED = 1


VALUES = [
    {}, [], (), "", None, True, False, 0, -1, 2**70, 1.5, -0.0, 1e300, float("nan"), float("inf"), float("-inf"),
    "plain text", "quote \" backslash \\ slash /", "\x00\x1f\x7f\n\r\t\b\f", "é ü 日本 \u2028 \U0001F600 \ud800",
    {"id": "x", "tags": ["a", "b"], "properties": {"k": "v", "é": "\x01"}, "size": 4096, "protected": False,
     "checksum": None, "nested": {"empty": {}, "list": [], "deep": [[1, [2, {"a": (3,)}]]]}},
    [{"a": 1}, [], {}, [None]],
    # handed to json.dumps: a subclass, non-string keys, what default converts
    {"c": Color.RED}, {1: "int key"}, {None: 1, True: 2, 1.5: 3}, {"when": datetime.date(2026, 1, 2)},
    {"set": {1}}, ["x", b"bytes"],
]


@pytest.mark.parametrize("kw", CALLS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
@pytest.mark.parametrize("value", VALUES, ids=lambda v: repr(v)[:40])
def test_same_text_as_json_dumps(value, kw):
    try:
        want = json.dumps(value, **kw)
    except TypeError as exc:
        with pytest.raises(TypeError) as got:
            dumps(value, **kw)
        assert str(got.value) == str(exc)
        return
    assert dumps(value, **kw) == want


@pytest.mark.parametrize("kw", CALLS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_random_strings_and_shapes(kw):
    rnd = random.Random(24)

    def value(depth):
        pick = rnd.random()
        if depth > 3 or pick < 0.4:
            return "".join(rnd.choice(_CHARS) for _ in range(rnd.randrange(6)))
        if pick < 0.5:
            return rnd.choice([None, True, False, rnd.randrange(-10**6, 10**6), rnd.uniform(-1e6, 1e6)])
        if pick < 0.75:
            return [value(depth + 1) for _ in range(rnd.randrange(4))]
        return {value(5): value(depth + 1) for _ in range(rnd.randrange(4))}

    for _ in range(2000):
        v = value(0)
        assert dumps(v, **kw) == json.dumps(v, **kw), v
