"""The fast path of the command line: the commands a script calls per image
(info, check, map, chain, compare, image show, image list) run without
importing click, which costs more start-up than their work.

:func:`run` parses a command line it fully understands -- the command, its
options spelled as click accepts them, valid choices and values -- and runs
the command through the same functions as the click commands
(:mod:`vhdkit.cli._reads`, :mod:`vhdkit.cli._plain`).  Anything else -- help,
``--version``, another command, a usage error of any kind, an option
spelling it does not know, a stream click would re-encode -- returns None
before any work, and the click command line handles it.
So ``--help`` texts and usage errors are click's own, and output and exit
status are those of the same code.  :data:`COMMANDS` mirrors the click
commands' parameters; tests/test_cli_fast.py checks that it does.
"""
from __future__ import annotations

import codecs
import sys

from ._plain import INPUT_FORMAT_NAMES

# Option kinds.
FLAG, VALUE, MULTI, CHOICE, INT = "flag", "value", "multi", "choice", "int"

_JSON = {"--json": ("as_json", FLAG, True)}
#: --json and qemu-img's spelling of it (vhdkit.cli._common.qemu_json_option)
_QEMU_JSON = {**_JSON, "--output": ("output_format_", CHOICE, ("human", "json"))}
#: --data, --database-url, --account, --roles (vhdkit.cli._common.data_option, identity_options);
#: unset, the settings (vhdkit.config: the environment, the configuration file) say
_REGISTRY = {"--data": ("data_dir", VALUE, None), "--database-url": ("database_url", VALUE, None),
             "--account": ("account", VALUE, None), "--roles": ("roles", VALUE, None)}
_PARENT = {"--parent": ("parents", MULTI, None)}


class Spec:
    """A command's parameters: positional names (``"images+"``: one or more)
    and options ``{spelling: (destination, kind, extra)}``; ``extra`` is a
    flag's value or a choice's values (None for the others: no option reads
    the environment itself; vhdkit.config does)."""

    def __init__(self, args: tuple, options: dict, defaults: dict):
        self.args, self.options, self.defaults = args, options, defaults


#: The fast commands, by their words on the command line.
COMMANDS = {
    ("info",): Spec(("images+",), {**_PARENT, "--size-rule": ("size_rule", CHOICE, ("auto", "current", "chs",
                                                                                    "original")),
                                   **_QEMU_JSON}, {"size_rule": "auto"}),
    ("check",): Spec(("images+",), {"--parents": ("parents", FLAG, True), "--no-parents": ("parents", FLAG, False),
                                    **_QEMU_JSON}, {"parents": True}),
    ("map",): Spec(("image",), {**_PARENT, **_QEMU_JSON}, {}),
    ("chain",): Spec(("leaf",), {**_PARENT, **_JSON}, {}),
    ("compare",): Spec(("a", "b"), {"-f": ("a_format", CHOICE, tuple(sorted(INPUT_FORMAT_NAMES))),
                                    "-F": ("b_format", CHOICE, tuple(sorted(INPUT_FORMAT_NAMES))), **_JSON}, {}),
    ("image", "show"): Spec(("image",), {**_REGISTRY, **_JSON}, {}),
    ("image", "list"): Spec((), {
        "--name": ("name", VALUE, None), "--status": ("status", VALUE, None),
        "--visibility": ("visibility", CHOICE, ("public", "private", "shared", "community", "all")),
        "--member-status": ("member_status", CHOICE, ("pending", "accepted", "rejected", "all")),
        "--owner": ("owner", VALUE, None), "--tag": ("tags", MULTI, None), "--property": ("props", MULTI, None),
        "--filter": ("filters", MULTI, None), "--sort": ("sort", VALUE, None), "--limit": ("limit", INT, None),
        "--marker": ("marker", VALUE, None), "--all-pages": ("all_pages", FLAG, True), **_REGISTRY, **_JSON}, {}),
}


def parse(argv: list):
    """``(command words, options dict)`` for a command line the fast path
    runs exactly as click would, else None (click takes it)."""
    words = tuple(argv[:2]) if argv[:1] == ["image"] else tuple(argv[:1])
    spec = COMMANDS.get(words)
    if spec is None:
        return None
    opts: dict = {}
    for dest, kind, extra in spec.options.values():
        if kind == MULTI:
            opts[dest] = []
        elif kind == FLAG:
            opts.setdefault(dest, False)
        else:
            opts[dest] = None
    opts.update(spec.defaults)
    positional: list = []
    rest = argv[len(words):]
    i = 0
    while i < len(rest):
        tok = rest[i]
        i += 1
        if tok == "--":
            positional += rest[i:]
            break
        if not tok.startswith("-") or tok == "-":
            positional.append(tok)
            continue
        name, eq, attached = tok.partition("=") if tok.startswith("--") else (tok, "", "")
        if name not in spec.options:
            return None                   # help, an unknown option, combined short options: click's
        dest, kind, extra = spec.options[name]
        if kind == FLAG:
            if eq:
                return None               # a flag given a value: click's usage error
            opts[dest] = extra
            continue
        if eq:
            value = attached
        elif i < len(rest):
            value, i = rest[i], i + 1
        else:
            return None                   # a missing value: click's usage error
        if value == "":
            return None                   # an empty value: click's to judge
        if kind == CHOICE and value not in extra:
            return None
        if kind == INT:
            try:
                value = int(value)
            except ValueError:
                return None
        if kind == MULTI:
            opts[dest].append(value)
        else:
            opts[dest] = value
    if spec.args[:1] == ("images+",):
        if not positional:
            return None
        opts["images"] = tuple(positional)
    elif len(positional) != len(spec.args):
        return None
    else:
        opts.update(zip(spec.args, positional))
    for dest, kind, extra in spec.options.values():
        if kind == MULTI:
            opts[dest] = tuple(opts[dest])
    return words, opts


def _call(words: tuple, o: dict):
    """The command's work as a function of no arguments, or None when it
    would stop at a usage error (click then says it)."""
    from . import _reads

    as_json = o["as_json"] or o.get("output_format_") == "json"
    cmd = words[-1]
    if cmd == "info":
        return lambda: _reads.info(o["images"], o["parents"], o["size_rule"], as_json)
    if cmd == "check":
        return lambda: _reads.check(o["images"], o["parents"], as_json)
    if cmd == "map":
        return lambda: _reads.map_(o["image"], o["parents"], as_json)
    if cmd == "chain":
        return lambda: _reads.chain(o["leaf"], o["parents"], as_json)
    if cmd == "compare":
        return lambda: _reads.compare(o["a"], o["b"], o["a_format"], o["b_format"], as_json)
    from ..config import load

    try:
        base = load()
        db = {"database_url": o["database_url"]}      # a flag on every settings() (_common._flag)
        ident = base.with_flags(**db, account=o["account"], roles=o["roles"])     # as _common.caller_of
    except ValueError:
        return None                       # a malformed setting or flag: click's to say
    if not ident.account:
        return None                       # click's "no identity" usage error
    if cmd == "show":
        work, kw = _reads.image_show, {"image": o["image"]}
    else:
        props, filters = [p.partition("=") for p in o["props"]], [f.partition("=") for f in o["filters"]]
        if any(not sep or not k for k, sep, _ in props) or any(not sep for _, sep, _ in filters):
            return None                   # click's "expected KEY=VALUE"
        params = _reads.list_query(o["name"], o["status"], o["visibility"], o["member_status"], o["owner"],
                                   o["sort"], o["limit"], o["marker"], o["tags"], {k: v for k, _, v in props},
                                   [(k, v) for k, _, v in filters])
        work, kw = _reads.image_list, {"params": params, "all_pages": o["all_pages"]}

    def registry_work():
        from ..registry import Caller

        who = Caller.parse(ident.account, ident.roles or "")
        _reads.in_registry(base.with_flags(**db, data_dir=o["data_dir"]), who, work, as_json=as_json, **kw)

    return registry_work


def streams_plain() -> bool:
    """Does click write to stdout and stderr as they are?  Not when one is
    missing or encodes ASCII: click then wraps it (UTF-8, errors replaced)."""
    for f in (sys.stdout, sys.stderr):
        enc = getattr(f, "encoding", None)
        if f is None or not enc or not getattr(f, "errors", None):
            return False
        if codecs.lookup(enc).name == "ascii":
            return False
    return True


def run(argv: list):
    """Run ``argv`` on the fast path and return the exit status, or None
    (nothing done) when click must take it.  Shell completion is click's:
    its scripts run the program without arguments, which this never takes."""
    parsed = parse(argv)
    if parsed is None or not streams_plain():
        return None
    work = _call(*parsed)
    if work is None:
        return None
    from ..interrupts import install, release
    from ._plain import echo, failure

    install()
    try:
        release()   # a signal during start-up (see vhdkit.__main__) stops the command now
        work()
        return 0
    except BaseException as exc:
        code = failure(exc)
        if code is not None:
            return code
        if isinstance(exc, (EOFError, KeyboardInterrupt)):   # as click's main
            echo("", err=True)
            echo("Aborted!", err=True)
            return 1
        raise
