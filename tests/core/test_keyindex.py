"""The C hash index behind every key table, exercised through the public API.

ConcurrencyLimit deletes a key's row whenever its count returns to zero, so random
acquire/release sequences drive inserts, lookups and backward-shift deletions hard;
the model is a plain dict.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from limiter import ConcurrencyLimit, TokenBucket

KEYS = st.sampled_from([f"k{i}" for i in range(40)] + ["", "ü", "k1 ", "a:b{c}"])


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), KEYS), min_size=1, max_size=400))
def test_in_flight_counts_match_a_dict_model(ops):
    lim = ConcurrencyLimit(limit=3, max_keys=32)
    held: dict[str, list] = {}
    for acquire, key in ops:
        if acquire:
            permit = lim.acquire(key)
            model_ok = len(held.get(key, [])) < 3 and (key in held or len(held) < 32)
            assert permit.allowed == model_ok
            if permit.allowed:
                held.setdefault(key, []).append(permit)
        elif held.get(key):
            held[key].pop().release()
            if not held[key]:
                del held[key]
        assert len(lim) == len(held)
    for key in {k for _, k in ops}:
        assert lim.in_flight(key) == len(held.get(key, []))


def test_many_keys_grow_and_shrink_the_index():
    lim = ConcurrencyLimit(limit=1)
    permits = [lim.acquire(f"key-{i}") for i in range(20_000)]
    assert all(p.allowed for p in permits) and len(lim) == 20_000
    for p in permits[::2]:
        p.release()
    assert len(lim) == 10_000
    assert all(lim.in_flight(f"key-{i}") == i % 2 for i in range(20_000))


def test_equal_strings_that_are_different_objects_find_the_same_row():
    tb = TokenBucket(rate=1.0, burst=1)
    a = "".join(["use", "r-1"])
    b = "".join(["user", "-1"])
    assert a == b and a is not b
    assert tb.allow(a) and not tb.allow(b)


def test_str_subclass_keys_are_plain_strings():
    class Key(str):
        def __hash__(self) -> int:
            raise AssertionError("a subclass hash must never run inside the kernel")

    tb = TokenBucket(rate=1.0, burst=1)
    assert tb.allow(Key("x")) and not tb.allow("x")


def test_key_references_are_released():
    import sys

    key = "".join(["ref", "-counted"])
    before = sys.getrefcount(key)
    tb = TokenBucket(rate=1.0, burst=1)
    tb.allow(key)
    assert sys.getrefcount(key) == before + 1
    tb.reset(key)
    assert sys.getrefcount(key) == before
    tb.allow(key)
    del tb
    assert sys.getrefcount(key) == before
