"""The config schema: each setting declared once, then checked and documented from there.

A config class is a frozen dataclass deriving from ``Section`` whose fields are declared
with ``setting(default, doc, ...)``: the type comes from the annotation; bounds, choices
and a one-line doc from the call. One converter checks a value against its declaration
(and normalises it: lists to tuples, names to enums, nested mappings to their classes),
whether it comes from YAML (``load``), a flag or an environment variable (``from_text``)
or a keyword argument in code (``Section.__post_init__``), so each check exists once.
Errors name the field's path, e.g. ``queue.weights[1] (critical)``. Rules tying fields
together live in the class's ``check(given)``; ``given`` holds the keys a config named
(None when the instance is built in code).

``describe`` and ``show`` render declarations for ``--help`` and the configuration
reference (``limiter.server.reference``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import InitVar, dataclass, field
from typing import Any, TypeVar

from limiter.errors import ConfigError, InvalidParameter, brief
from limiter.priority import BY_RANK

__all__ = ["FieldError", "Meta", "Section", "declared", "describe", "load", "setting", "show"]

T = TypeVar("T")
SCALARS = (int, float, str, bool, bytes)
# Per-priority lists are ordered most important first.
PRIORITY_NAMES = tuple(p.label for p in BY_RANK)


@dataclass(frozen=True)
class Meta:
    """What a field declares besides its type and default."""

    doc: str
    low: float | None = None  # bound of a number or of each item; a string's least length
    high: float | None = None
    open_low: bool = False  # the bound itself is excluded
    open_high: bool = False
    choices: tuple[str, ...] = ()  # allowed strings (any case)
    seconds: bool = False
    prefixes: tuple[str, ...] = ()  # a URL: the schemes allowed
    per_priority: bool = False  # a list with one item per priority, or one item for all
    item_key: str = ""  # in YAML, each item of the list is a mapping {item_key: item}
    inherit: str = ""  # in a mapping of sections, the entry that fills the keys others omit
    kind: str = ""  # what the value is, when the type alone does not say
    required: str = ""  # when a field with a default is nonetheless required (``check``)
    flag: str = ""  # service settings: the command-line flag ...
    env: str = ""  # ... and the environment variable
    metavar: str = ""
    hidden: bool = False  # internal: neither in --help nor in the reference


def setting(
    default: Any = dataclasses.MISSING,
    doc: str = "",
    *,
    factory: Any = dataclasses.MISSING,
    **meta: Any,
) -> Any:
    """A dataclass field carrying its declaration (no ``default``: required)."""
    return field(default=default, default_factory=factory, metadata={"schema": Meta(doc, **meta)})


class FieldError(InvalidParameter):
    """A value that does not fit its declaration; ``path`` leads to it from the value checked."""

    def __init__(self, path: str, problem: str) -> None:
        self.path, self.problem = path, problem
        super().__init__(f"{path}: {problem}" if path else problem)

    def under(self, name: str) -> FieldError:
        """The same error seen from the value holding this one as ``name`` (a field or ``[i]``)."""
        path = self.path if not self.path or self.path.startswith("[") else f".{self.path}"
        return FieldError(name + path, self.problem)


@dataclass(frozen=True)
class Section:
    """Base of config classes: an instance's fields are checked when it is built."""

    given: InitVar[frozenset[str] | None] = field(default=None, kw_only=True)

    def __post_init__(self, given: frozenset[str] | None) -> None:
        for f, hint, meta in declared(type(self)):
            value = getattr(self, f.name)
            if value is f.default:
                continue  # checked once, by ``declared``
            try:
                object.__setattr__(self, f.name, convert(hint, meta, value))
            except FieldError as exc:
                raise exc.under(f.name) from None
        self.check(given)

    def check(self, given: frozenset[str] | None) -> None:
        """Rules between fields (raise ``FieldError``); ``given``: the keys a config named."""


@functools.cache
def declared(cls: type) -> tuple[tuple[dataclasses.Field[Any], Any, Meta], ...]:
    """Each field of ``cls`` with its resolved type and declaration (defaults checked)."""
    hints = typing.get_type_hints(cls)
    out = tuple(
        (f, hints[f.name], f.metadata.get("schema", Meta(""))) for f in dataclasses.fields(cls)
    )
    for f, hint, meta in out:
        if f.default is not dataclasses.MISSING:
            try:
                ok = convert(hint, meta, f.default) == f.default
            except FieldError:
                ok = False
            if not ok:
                raise TypeError(f"{cls.__name__}.{f.name}: the default does not fit its type")
    return out


@functools.cache
def _shape(hint: Any) -> tuple[Any, tuple[Any, ...]]:
    """What ``convert`` dispatches on, computed once per type: the origin of a generic type
    (or the type) and its arguments, e.g. (tuple, (int, ...)); for X | Y | None, (Union,
    (X, Y)) or (None, (X, Y)), None standing for the optional."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        options = tuple(a for a in args if a is not type(None))
        return (None if len(options) < len(args) else typing.Union), options
    return (hint if origin is None else origin), args


def load(cls: type[T], raw: Any, where: str) -> T:
    """Parsed YAML as ``cls``; a ConfigError names ``where`` and the field's path."""
    try:
        return build(cls, raw)
    except FieldError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def build(cls: type[T], raw: Any) -> T:
    """``cls`` from a mapping of its fields (unknown keys refused, required ones demanded)."""
    if not isinstance(raw, Mapping):
        raise FieldError(
            "", f"must be a mapping, got {'null' if raw is None else type(raw).__name__}"
        )
    known, needed, wrapped = _keys(cls)
    if not known.issuperset(raw):
        unknown = min(brief(key) for key in raw if key not in known)
        raise FieldError("", f"unknown field {unknown} (known: {', '.join(sorted(known))})")
    for name in needed:
        if name not in raw:
            raise required(cls, name)
    values = dict(raw)
    for name, key in wrapped:
        if isinstance(values.get(name), list):
            values[name] = [_unwrap(key, item, i, name) for i, item in enumerate(values[name])]
    return cls(**values, given=frozenset(raw))  # type: ignore[call-arg]


@functools.cache
def _keys(cls: type) -> tuple[frozenset[str], tuple[str, ...], tuple[tuple[str, str], ...]]:
    """``cls``'s keys, the required ones, and (key, item key) of lists of wrapped items."""
    fields = declared(cls)
    needed = tuple(
        f.name
        for f, _, _ in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    wrapped = tuple((f.name, meta.item_key) for f, _, meta in fields if meta.item_key)
    return frozenset(f.name for f, _, _ in fields), needed, wrapped


def required(cls: type, name: str) -> FieldError:
    """The error for a required field that is missing."""
    hint, meta = next((h, m) for f, h, m in declared(cls) if f.name == name)
    return FieldError(name, f"required ({describe(hint, meta)})")


def _unwrap(key: str, item: Any, i: int, name: str) -> Any:
    if isinstance(item, Mapping) and set(item) == {key}:
        return item[key]
    raise FieldError(f"{name}[{i}]", f"must be a mapping with only {key!r}, got {brief(item)}")


def from_text(hint: Any, meta: Meta, text: str) -> Any:
    """A command-line or environment value, given as text."""
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
    flags = {"0": False, "false": False, "1": True, "true": True}
    parse = {int: int, float: float, bool: lambda t: flags[t.lower()]}.get(base, str)
    try:
        value = parse(text)
    except (ValueError, KeyError):
        raise FieldError("", f"must be {describe(hint, meta)}, got {brief(text)}") from None
    return convert(hint, meta, value)


def convert(hint: Any, meta: Meta, value: Any) -> Any:
    """``value`` checked against type ``hint`` and ``meta``, normalised; raises FieldError."""
    if hint in SCALARS:
        return _scalar(hint, meta, value)
    origin, args = _shape(hint)
    if origin is None or origin is typing.Union:
        if value is None and origin is None:
            return None
        if len(args) == 1:
            return convert(args[0], meta, value)
        for option in args:
            with contextlib.suppress(FieldError):
                return convert(option, meta, value)
        raise FieldError("", f"must be {describe(hint, meta)}, got {brief(value)}")
    if origin in (tuple, list):
        return _items(args[0], meta, value, hint)
    if origin in (dict, Mapping):
        return _mapping(args, meta, value, hint)
    if hint is Any:
        return value
    if issubclass(hint, Section):
        return value if isinstance(value, hint) else build(hint, value)
    if issubclass(hint, enum.Enum):
        return _member(hint, value)
    return _scalar(hint, meta, value)


def _scalar(hint: type, meta: Meta, value: Any) -> Any:
    if meta.choices:
        if isinstance(value, str) and value.lower() in meta.choices:
            return value.lower()
        raise FieldError("", f"{brief(value)} is not one of {', '.join(meta.choices)}")
    given = value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif hint is bytes and isinstance(value, str):
        value = value.encode()
    if isinstance(value, hint) and (hint is bool or type(value) is not bool) and _fits(meta, value):
        return value
    raise FieldError("", f"must be {describe(hint, meta)}, got {brief(given)}")


def _fits(meta: Meta, value: Any) -> bool:
    if isinstance(value, str):
        return len(value) >= (meta.low or 0) and (
            not meta.prefixes or value.startswith(meta.prefixes)
        )
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return True
    low, high = meta.low, meta.high
    return (
        math.isfinite(value)
        and (low is None or (value > low if meta.open_low else value >= low))
        and (high is None or (value < high if meta.open_high else value <= high))
    )


def _items(item: Any, meta: Meta, value: Any, hint: Any) -> tuple[Any, ...]:
    n = len(PRIORITY_NAMES)
    if meta.per_priority and not isinstance(value, (list, tuple)):
        value = [value] * n  # one for all
    if not isinstance(value, (list, tuple)) or (meta.per_priority and len(value) != n):
        raise FieldError("", f"must be {describe(hint, meta)}, got {brief(value)}")
    out = []
    for i, one in enumerate(value):
        try:
            out.append(convert(item, meta, one))
        except FieldError as exc:
            label = f" ({PRIORITY_NAMES[i]})" if meta.per_priority else ""
            raise exc.under(f"[{i}]{label}") from None
    return tuple(out)


def _mapping(args: tuple[Any, ...], meta: Meta, value: Any, hint: Any) -> dict[Any, Any]:
    if not isinstance(value, Mapping):
        raise FieldError("", f"must be {describe(hint, meta)}, got {brief(value)}")
    base = value.get(meta.inherit) if meta.inherit else None
    out = {}
    for key, item in value.items():
        try:
            name = convert(args[0], Meta(""), key)
        except FieldError as exc:
            raise FieldError("", f"invalid key: {exc.problem}") from None
        if isinstance(base, Mapping) and key != meta.inherit and isinstance(item, Mapping | None):
            item = {**base, **(item or {})}
        try:
            out[name] = convert(args[1], meta, item)
        except FieldError as exc:
            raise exc.under(brief(key).strip("'")) from None
    return out


def _member(cls: type[enum.Enum], value: Any) -> enum.Enum:
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        name = value.strip().lower().replace("-", "_")
        for member in cls:
            if _name(member) == name:
                return member
    raise FieldError("", f"{brief(value)} is not one of {', '.join(map(_name, cls))}")


def _name(member: enum.Enum) -> str:
    """A member's config name: its string value, or its name in lower case."""
    return member.value if isinstance(member.value, str) else member.name.lower()


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def describe(hint: Any, meta: Meta) -> str:
    """What a value of this declaration must be, e.g. ``an integer in [1, 100]``."""
    if meta.kind:
        return meta.kind
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    plain = dataclasses.replace(meta, per_priority=False, item_key="")
    if origin in (types.UnionType, typing.Union):
        return " or ".join(describe(a, meta) for a in args if a is not type(None))
    if origin in (tuple, list):
        if meta.item_key:
            return f"a list of {{{meta.item_key}: {describe(args[0], plain)}}}"
        if meta.per_priority:
            names, item = ", ".join(PRIORITY_NAMES), describe(args[0], plain)
            n = len(PRIORITY_NAMES)
            return f"a list of {n} (one per priority: {names}) or one for all, each {item}"
        return f"a list, each {describe(args[0], plain)}"
    if origin in (dict, Mapping):
        return f"a mapping of {describe(args[0], Meta(''))} to {describe(args[1], plain)}"
    if isinstance(hint, type) and issubclass(hint, Section):
        return "a mapping (below)"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return f"one of {', '.join(map(_name, hint))}"
    if meta.choices:
        return f"one of {', '.join(meta.choices)}"
    if hint is bool:
        return "true or false"
    if hint in (str, bytes):
        if meta.prefixes:
            return f"a URL starting with {' or '.join(meta.prefixes)}"
        return "a non-empty string" if meta.low else "a string"
    noun = {int: "an integer", float: "a number"}.get(hint, "any value")
    noun += " of seconds" if meta.seconds else ""
    low, high = meta.low, meta.high
    if low is not None and high is not None:
        left, right = "(["[not meta.open_low], ")]"[not meta.open_high]
        return f"{noun} in {left}{_num(low)}, {_num(high)}{right}"
    if low is not None:
        return f"{noun} {'>' if meta.open_low else '>='} {_num(low)}"
    return noun


def show(value: Any) -> str:
    """A default value as a config file would write it."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, enum.Enum):
        return _name(value)
    if isinstance(value, float | int):
        return _num(value)
    if isinstance(value, tuple | list):
        return f"[{', '.join(map(show, value))}]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{show(k)}: {show(v)}" for k, v in value.items()) + "}"
    return str(value) if value != "" else '""'
