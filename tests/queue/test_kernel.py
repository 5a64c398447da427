"""PriorityQueue kernel: unit tests for each rule, with explicit integer-ns times."""

from __future__ import annotations

import pytest

from limiter._core import PriorityQueue
from limiter.errors import InvalidParameter


def classes_of(q: PriorityQueue, ids: dict[int, int], n: int, now: int = 0) -> list[int]:
    return [ids[q.pop(now)] for _ in range(n)]


def fill(q: PriorityQueue, per_class: list[int]) -> dict[int, int]:
    ids = {}
    for c, count in enumerate(per_class):
        for _ in range(count):
            ids[q.push(c)] = c
    return ids


def test_weighted_321_cycle():
    q = PriorityQueue(20, weights=(3, 2, 1))
    ids = fill(q, [20, 20, 20])
    assert classes_of(q, ids, 12) == [0, 0, 0, 1, 1, 2] * 2


def test_weighted_skips_empty_class_and_keeps_turn_order():
    q = PriorityQueue(20, weights=(3, 2, 1))
    ids = fill(q, [10, 0, 10])
    assert classes_of(q, ids, 9) == [0, 0, 0, 2, 0, 0, 0, 2, 0]
    # Class 1 fills up during class 0's turn: it is served next, in its place.
    ids[q.push(1)] = 1
    ids[q.push(1)] = 1
    ids[q.push(1)] = 1
    assert classes_of(q, ids, 7) == [0, 0, 1, 1, 2, 0, 1]


def test_weighted_class_emptied_mid_turn_passes_the_turn_on():
    q = PriorityQueue(20, weights=(3, 2, 1))
    ids = fill(q, [1, 5, 5])
    assert classes_of(q, ids, 6) == [0, 1, 1, 2, 1, 1]


def test_weighted_single_nonempty_class_is_served_continuously():
    q = PriorityQueue(20, weights=(3, 2, 1))
    ids = fill(q, [0, 0, 7])
    assert classes_of(q, ids, 7) == [2] * 7
    assert q.pop(0) == -1


def test_strict_serves_higher_class_first():
    q = PriorityQueue(10, classes=3)
    ids = fill(q, [0, 2, 2])
    assert classes_of(q, ids, 1) == [1]
    ids[q.push(0)] = 0
    assert classes_of(q, ids, 4) == [0, 1, 2, 2]
    assert q.strict and q.weights is None


def test_fifo_and_lifo_within_a_class():
    fifo = PriorityQueue(10)
    lifo = PriorityQueue(10, lifo=True)
    a = [fifo.push(0) for _ in range(3)]
    b = [lifo.push(0) for _ in range(3)]
    assert [fifo.pop(0) for _ in range(3)] == a
    assert [lifo.pop(0) for _ in range(3)] == b[::-1]


def test_bounded_per_class():
    q = PriorityQueue([2, 1], weights=(1, 1))
    assert q.push(0) >= 0 and q.push(0) >= 0
    assert q.push(0) == -1
    assert q.push(1) >= 0
    assert q.push(1) == -1
    assert len(q) == 3 and q.depth(0) == 2 and q.capacity == (2, 1)
    q.pop(0)
    assert q.push(0) >= 0


def test_expired_item_is_handed_back_not_served():
    q = PriorityQueue(10, classes=2)
    late = q.push(0, deadline=100)
    ok = q.push(1, deadline=1_000)
    assert q.next_deadline() == 100
    assert q.peek(100) == ok  # deadline 100 is over at now=100
    assert q.pop(100) == ok
    assert q.pop(100) == -1
    assert q.expired_pending == 1
    assert q.pop_expired(100) == late
    assert q.pop_expired(100) == -1
    assert len(q) == 0 and q.next_deadline() == -1


def test_expired_items_count_against_the_bound_until_handed_back():
    q = PriorityQueue(1)
    a = q.push(0, deadline=5)
    assert q.pop(10) == -1
    assert q.push(0) == -1
    assert q.pop_expired(10) == a
    assert q.push(0) >= 0


def test_expired_order_is_by_deadline():
    q = PriorityQueue(10, classes=3)
    ids = [q.push(2, 30), q.push(0, 10), q.push(1, 20), q.push(0, 40)]
    assert [q.pop_expired(35) for _ in range(4)] == [ids[1], ids[2], ids[0], -1]
    assert q.pop(35) == ids[3]


def test_remove_waiting_expired_and_stale_ids():
    q = PriorityQueue(10, classes=2)
    a, b, c = q.push(0, 50), q.push(0), q.push(1, 10)
    assert q.remove(a) is True
    assert q.remove(a) is False
    assert q.next_deadline() == 10
    q.peek(20)  # c expires
    assert q.remove(c) is True
    assert q.pop_expired(20) == -1
    assert q.pop(20) == b
    assert q.remove(b) is False
    # Slots are reused, but an old id never matches its slot's new item.
    d = q.push(0)
    assert d != a and d != b and q.remove(a) is False
    assert q.remove(-5) is False and q.remove(2**70) is False
    assert len(q) == 1


def test_no_deadline_never_expires():
    q = PriorityQueue(3)
    a = q.push(0)
    assert q.pop_expired(2**62) == -1
    assert q.pop(2**62) == a


def test_grows_past_initial_pool_and_reuses_slots():
    q = PriorityQueue(1000, classes=2)
    ids = [q.push(i % 2, 10_000 - i) for i in range(2000)]
    assert len(q) == 2000 and q.push(0) == -1
    assert q.next_deadline() == 10_000 - 1999
    served = []
    while (item := q.pop(0)) >= 0:
        served.append(item)
    assert served == ids[0::2] + ids[1::2]
    assert len(q) == 0 and q.push(0) >= 0


@pytest.mark.parametrize(
    ("args", "kwargs", "name"),
    [
        ((0,), {}, "capacity"),
        ((-1,), {}, "capacity"),
        ((1.5,), {}, "capacity"),
        (("10",), {}, "capacity"),
        (([1, 2],), {"weights": (1,)}, "capacity has 2 entries"),
        ((2**40,), {}, "capacity"),
        (([2**29] * 3,), {}, "total capacity"),
        ((10,), {"weights": ()}, "weights"),
        ((10,), {"weights": (3, 0)}, "weights[1]"),
        ((10,), {"weights": (3, float("nan"))}, "weights[1]"),
        ((10,), {"weights": 3}, "weights"),
        ((10,), {"weights": (1,) * 65}, "classes"),
        ((10,), {"classes": 0}, "classes"),
        ((10,), {"classes": 65}, "classes"),
        ((10,), {"classes": 2, "weights": (1, 2, 3)}, "classes=2"),
    ],
)
def test_bad_construction(args, kwargs, name):
    with pytest.raises(InvalidParameter, match=name.replace("[", r"\[").replace("]", r"\]")):
        PriorityQueue(*args, **kwargs)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda q: q.push(3), "priority"),
        (lambda q: q.push(-1), "priority"),
        (lambda q: q.push(True), "priority"),
        (lambda q: q.push("0"), "priority"),
        (lambda q: q.push(0, -1), "deadline"),
        (lambda q: q.push(0, 1.5), "deadline"),
        (lambda q: q.push(0, 2**64), "deadline"),
        (lambda q: q.pop(-1), "now"),
        (lambda q: q.peek(float("inf")), "now"),
        (lambda q: q.pop_expired("x"), "now"),
        (lambda q: q.remove("1"), "item"),
        (lambda q: q.depth(9), "priority"),
    ],
)
def test_bad_calls(call, name):
    q = PriorityQueue(4, classes=3)
    with pytest.raises(InvalidParameter, match=name):
        call(q)


def test_repr_and_attributes():
    q = PriorityQueue([1, 2, 3], weights=[3, 2, 1], lifo=True)
    assert q.classes == 3 and q.weights == (3, 2, 1) and q.lifo and not q.strict
    assert "weights=(3, 2, 1)" in repr(q)
