"""Result records for the modules every command imports: what ``@dataclass``
gives them (an ``__init__`` of the annotated fields in order, with their
defaults; ``repr``; ``==``; :func:`asdict`) without :mod:`dataclasses`, which
imports :mod:`inspect` and compiles every class's methods when the module is
imported -- more than a command that prints one result spends on its work.

    @record
    class Extent:
        offset: int
        path: Optional[str] = None
        parts: list = factory(list)      # dataclasses.field(default_factory=list)
"""
from __future__ import annotations

import sys

__all__ = ["record", "factory", "asdict", "fields", "plain_dict"]


class factory:
    """A default made afresh for each instance (``field(default_factory=make)``)."""

    __slots__ = ("make",)

    def __init__(self, make):
        self.make = make


def fields(obj) -> tuple:
    """The field names of a record (class or instance), in order."""
    return obj.__record_fields__


def record(cls=None, *, frozen: bool = False):
    """Make ``cls`` a record of its annotated fields (base classes' first).
    Like a dataclass: positional or keyword arguments, a field without a
    default may not follow one with a default, ``__hash__`` is None;
    ``frozen``: fields cannot be set after ``__init__`` (``__post_init__``
    sets them with ``object.__setattr__``) and records hash by their fields."""
    if cls is None:
        return lambda c: record(c, frozen=frozen)
    names: list = list(getattr(cls, "__record_fields__", ()))
    defaults: dict = dict(getattr(cls, "__record_defaults__", {}))
    for name in cls.__dict__.get("__annotations__", {}):
        if name not in names:
            names.append(name)
        if name in cls.__dict__:
            defaults[name] = cls.__dict__[name]
            if isinstance(defaults[name], factory):
                delattr(cls, name)
        elif defaults and name not in defaults:
            raise TypeError(f"non-default argument {name!r} follows default argument")
    cls.__record_fields__ = tuple(names)
    cls.__record_defaults__ = defaults
    cls.__match_args__ = tuple(names)
    cls.__init__ = _init
    cls.__repr__ = _repr
    cls.__eq__ = _eq
    cls.__hash__ = _hash if frozen else None
    if frozen:
        cls.__setattr__ = cls.__delattr__ = _frozen
    return cls


def _hash(self) -> int:
    return hash(tuple(getattr(self, n) for n in self.__record_fields__))


def _frozen(self, name, *value):
    raise AttributeError(f"cannot assign to field {name!r} of a frozen {type(self).__name__}")


def _init(self, *args, **kw) -> None:
    cls = type(self)
    names = cls.__record_fields__
    if len(args) > len(names):
        raise TypeError(f"{cls.__name__}() takes {len(names)} arguments but {len(args)} were given")
    for name, value in zip(names, args):
        if name in kw:
            raise TypeError(f"{cls.__name__}() got multiple values for argument {name!r}")
        kw[name] = value
    defaults = cls.__record_defaults__
    for name in names:
        if name in kw:
            value = kw.pop(name)
        elif name in defaults:
            value = defaults[name]
            if isinstance(value, factory):
                value = value.make()
        else:
            raise TypeError(f"{cls.__name__}() missing required argument: {name!r}")
        object.__setattr__(self, name, value)
    if kw:
        raise TypeError(f"{cls.__name__}() got an unexpected keyword argument {next(iter(kw))!r}")
    post = getattr(self, "__post_init__", None)
    if post is not None:
        post()


def _repr(self) -> str:
    return f"{type(self).__qualname__}(" + ", ".join(f"{n}={getattr(self, n)!r}"
                                                    for n in self.__record_fields__) + ")"


def _eq(self, other):
    if other.__class__ is not self.__class__:
        return NotImplemented
    names = self.__record_fields__
    return tuple(getattr(self, n) for n in names) == tuple(getattr(other, n) for n in names)


def asdict(obj):
    """A record as a dict, records, lists, tuples and dicts inside it
    converted in turn (as :func:`dataclasses.asdict`; the other values are
    the record's own, not copies: records hold immutable values)."""
    if hasattr(type(obj), "__record_fields__"):
        return {n: asdict(getattr(obj, n)) for n in obj.__record_fields__}
    if isinstance(obj, (list, tuple)):
        return type(obj)(asdict(v) for v in obj)
    if isinstance(obj, dict):
        return type(obj)((asdict(k), asdict(v)) for k, v in obj.items())
    return obj


def plain_dict(obj) -> dict:
    """:func:`asdict`, its UUID and datetime values as text (``str``,
    ``isoformat``): a result as the command line prints it.  Neither module
    is imported for this: a value of either type means it is loaded."""
    d = asdict(obj)
    uuid, dt = sys.modules.get("uuid"), sys.modules.get("datetime")
    for k, v in d.items():
        if uuid is not None and isinstance(v, uuid.UUID):
            d[k] = str(v)
        elif dt is not None and isinstance(v, dt.datetime):
            d[k] = v.isoformat()
    return d
