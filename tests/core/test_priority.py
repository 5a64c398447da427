"""Priority: one type, converted at the edges (config names, limiter.v1 values, queue ranks)."""

from __future__ import annotations

import pytest

from limiter.errors import InvalidParameter
from limiter.priority import BY_RANK, Priority

P = Priority


def test_parse_names_values_and_default():
    assert P.parse(None) is P.CRITICAL
    assert P.parse("sheddable-plus") is P.SHEDDABLE_PLUS
    assert P.parse("CRITICAL_PLUS") is P.CRITICAL_PLUS
    assert P.parse(0) is P.SHEDDABLE
    for bad in ("vip", 4, -1, True, 1.0, b"CRITICAL"):
        with pytest.raises(InvalidParameter, match="priority"):
            P.parse(bad)


def test_wire_and_queue_orders():
    assert [P.from_proto(n) for n in range(5)] == [
        None,
        P.CRITICAL_PLUS,
        P.CRITICAL,
        P.SHEDDABLE_PLUS,
        P.SHEDDABLE,
    ]
    assert [p.proto for p in BY_RANK] == [1, 2, 3, 4]
    assert [p.rank for p in BY_RANK] == [0, 1, 2, 3]
    assert [p.label for p in BY_RANK] == [
        "critical_plus",
        "critical",
        "sheddable_plus",
        "sheddable",
    ]
    for bad in (5, -1, "1", True):
        with pytest.raises(InvalidParameter, match="priority"):
            P.from_proto(bad)
