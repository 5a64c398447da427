"""The config schema itself: one check per declaration, whichever way a value arrives."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import pytest

from limiter import ConfigError, InvalidParameter
from limiter.failure import FailureMode
from limiter.schema import FieldError, Section, describe, from_text, load, setting


@dataclass(frozen=True)
class Inner(Section):
    """A nested section."""

    n: int = setting(1, "a count", low=1, high=5)


@dataclass(frozen=True)
class Outer(Section):
    """A section with one field of each kind."""

    name: str = setting(doc="required, non-empty", low=1)
    ratio: float = setting(0.5, "a share", low=0, high=1, open_low=True)
    mode: FailureMode = setting(FailureMode.LOCAL, "an enum")
    sizes: tuple[int, ...] = setting((1, 1, 1, 1), "per priority", low=1, high=9, per_priority=True)
    inner: Inner = setting(Inner(), "nested")
    parts: Mapping[str, Inner] = setting(factory=dict, doc="keyed, inheriting", inherit="default")
    names: tuple[str, ...] = setting((), "wrapped items", item_key="name")
    url: str | None = setting(None, "a URL", prefixes=("http://",))

    def check(self, given: frozenset[str] | None) -> None:
        if given is not None and "names" in given and "url" not in given:
            raise FieldError("names", "only with url")


def fails(raw: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(Outer, raw, "f.yaml")
    assert str(info.value) == f"f.yaml: {message}"


def test_yaml_values_are_checked_and_normalised() -> None:
    raw = {"name": "x", "mode": "DENY", "sizes": 3, "inner": {"n": 2},
           "parts": {"default": {"n": 4}, "a": {}, "b": {"n": 5}},
           "names": [{"name": "r"}], "url": "http://h"}  # fmt: skip
    out = load(Outer, raw, "f.yaml")
    assert out.mode is FailureMode.DENY and out.sizes == (3, 3, 3, 3) and out.inner == Inner(2)
    assert out.parts == {"default": Inner(4), "a": Inner(4), "b": Inner(5)}
    assert out.names == ("r",) and isinstance(out.ratio, float)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "name: required (a non-empty string)"),
        ({"name": ""}, "name: must be a non-empty string, got ''"),
        ({"name": "x", "nmae": 1}, "unknown field 'nmae' (known: inner, mode, name, names, "
         "parts, ratio, sizes, url)"),
        ({"name": "x", "ratio": 0}, "ratio: must be a number in (0, 1], got 0"),
        ({"name": "x", "ratio": True}, "ratio: must be a number in (0, 1], got True"),
        ({"name": "x", "ratio": float("nan")}, "ratio: must be a number in (0, 1], got nan"),
        ({"name": "x", "mode": "open"}, "mode: 'open' is not one of local, allow, deny"),
        ({"name": "x", "sizes": [1, 2]}, "sizes: must be a list of 4 (one per priority: "
         "critical_plus, critical, sheddable_plus, sheddable) or one for all, each an integer "
         "in [1, 9], got [1, 2]"),
        ({"name": "x", "sizes": [1, 0, 1, 1]}, "sizes[1] (critical): must be an integer in "
         "[1, 9], got 0"),
        ({"name": "x", "inner": {"n": 6}}, "inner.n: must be an integer in [1, 5], got 6"),
        ({"name": "x", "inner": []}, "inner: must be a mapping, got list"),
        ({"name": "x", "parts": {"default": {"n": 9}, "a": {}}},
         "parts.default.n: must be an integer in [1, 5], got 9"),
        ({"name": "x", "parts": {3: {}}}, "parts: invalid key: must be a string, got 3"),
        ({"name": "x", "names": ["r"]}, "names[0]: must be a mapping with only 'name', got 'r'"),
        ({"name": "x", "names": [{"name": "r"}]}, "names: only with url"),
        ({"name": "x", "url": "ftp://h"}, "url: must be a URL starting with http://, got "
         "'ftp://h'"),
        ([], "must be a mapping, got list"),
    ],
)  # fmt: skip
def test_errors_name_the_path(raw: object, message: str) -> None:
    fails(raw, message)


def test_code_gets_the_same_checks() -> None:
    """Keyword arguments are checked by the same converter (InvalidParameter, no file)."""
    with pytest.raises(InvalidParameter, match=r"^ratio: must be a number in \(0, 1\]"):
        Outer("x", ratio=2)
    with pytest.raises(InvalidParameter, match=r"^inner\.n: must be an integer"):
        Outer("x", inner={"n": 0})
    out = Outer("x", names=("r",))  # built in code: no config-only rule, items as they are
    assert out.names == ("r",)
    again = dataclasses.replace(out, ratio=1)  # replace checks and normalises again
    assert again.ratio == 1.0 and isinstance(again.ratio, float)


def test_defaults_are_checked_once_when_declared() -> None:
    @dataclass(frozen=True)
    class Bad(Section):
        n: int = setting(0, "a count", low=1)

    for build in (lambda: Bad(n=5), lambda: load(Bad, {}, "f")):
        with pytest.raises(TypeError, match=r"Bad\.n: the default does not fit its type"):
            build()


def test_text_values_for_flags_and_environment() -> None:
    hint, meta = float | None, Outer.__dataclass_fields__["ratio"].metadata["schema"]
    assert from_text(hint, meta, "0.25") == 0.25
    for text in ("x", "0", "nan"):
        with pytest.raises(FieldError, match=r"must be a number in \(0, 1\]"):
            from_text(hint, meta, text)
    assert describe(hint, meta) == "a number in (0, 1]"
