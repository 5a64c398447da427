"""HeavyHitters (Space-Saving over a sliding window) against exact counts."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from limiter._core import HeavyHitters
from limiter.errors import InvalidParameter


def zipf_stream(n: int, keys: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    weights = [1 / (i + 1) ** 1.2 for i in range(keys)]
    return rng.choices([f"k{i}" for i in range(keys)], weights, k=n)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_bounds_hold_and_heavy_hitters_are_found(clock, seed):
    capacity = 32
    sketch = HeavyHitters(capacity, 10.0, 5, clock=clock)
    truth: Counter[str] = Counter()
    for i, key in enumerate(zipf_stream(20_000, 2_000, seed)):
        if i % 2000 == 0:
            clock.advance(0.7)  # spread over 7 s: inside the window
        w = 1 + i % 3
        sketch.offer(key, w)
        truth[key] += w
    total = sum(truth.values())
    assert sketch.total() == total
    top = sketch.top(capacity)
    for key, count, error in top:
        assert count - error <= truth[key] <= count, key
    found = {k for k, _, _ in top}
    # Each sub-window guarantees keys above its total/capacity; over the window that
    # means every key above total/capacity (per-bucket shares add up).
    for key, n in truth.items():
        if n > total / capacity:
            assert key in found, (key, n, total)
    assert top[0][0] == "k0"


def test_window_slides_and_forgets(clock):
    sketch = HeavyHitters(8, 10.0, 5, clock=clock)
    for _ in range(100):
        sketch.offer("old")
    clock.advance(6.0)
    for _ in range(10):
        sketch.offer("new")
    assert sketch.estimate("old") == 100
    assert sketch.share("new") == pytest.approx(10 / 110)
    clock.advance(4.5)  # "old" sub-window (t=0..2 s) is now out of the window
    assert sketch.estimate("old") == 0
    assert sketch.estimate("new") == 10
    assert [k for k, _, _ in sketch.top()] == ["new"]
    clock.advance(20)
    assert sketch.total() == 0 and sketch.top() == [] and len(sketch) == 0
    assert sketch.share("new") == 0.0


def test_offer_returns_window_estimate_across_subwindows(clock):
    sketch = HeavyHitters(4, 4.0, 4, clock=clock)
    assert sketch.offer("a") == 1
    clock.advance(1.0)
    assert sketch.offer("a", 5) == 6
    clock.advance(1.0)
    assert sketch.offer("b") == 1
    assert sketch.total() == 7


def test_replacement_inherits_error(clock):
    sketch = HeavyHitters(2, 1.0, 1, clock=clock)
    sketch.offer("a", 5)
    sketch.offer("b", 3)
    sketch.offer("c")  # evicts b (smallest): count 4, error 3
    assert dict((k, (c, e)) for k, c, e in sketch.top()) == {"a": (5, 0), "c": (4, 3)}
    sketch.clear()
    assert sketch.total() == 0


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((0,), {}),
        ((8, 0), {}),
        ((8, -1.0), {}),
        ((8, float("nan")), {}),
        ((8, 10.0, 0), {}),
        ((8, 10.0, 2000), {}),
        ((8, 10.0, 5), {"clock": 5}),
        (("8",), {}),
    ],
)
def test_bad_construction(args, kwargs):
    with pytest.raises(InvalidParameter):
        HeavyHitters(*args, **kwargs)


def test_offer_many_counts_like_offers(clock):
    many, one = HeavyHitters(8, 10.0, 5, clock=clock), HeavyHitters(8, 10.0, 5, clock=clock)
    stream = zipf_stream(3_000, 40, 4)
    weights = [1 + i % 4 for i in range(len(stream))]
    for start in range(0, len(stream), 250):
        many.offer_many(stream[start : start + 250], weights[start : start + 250])
        for key, w in zip(stream[start : start + 250], weights[start : start + 250], strict=True):
            one.offer(key, w)
        clock.advance(0.5)
    assert many.top(8) == one.top(8) and many.total() == one.total() == sum(weights)


def test_offer_many_refuses_bad_input_and_counts_nothing(clock):
    sketch = HeavyHitters(clock=clock)
    with pytest.raises(InvalidParameter, match="weight"):
        sketch.offer_many(["a", "b"], [1, 0])
    with pytest.raises(InvalidParameter, match="key"):
        sketch.offer_many(["a", b"b"], [1, 1])
    with pytest.raises(InvalidParameter, match="weights: 1 given for 2 keys"):
        sketch.offer_many(["a", "b"], [1])
    assert sketch.total() == 0


def test_bad_calls(clock):
    sketch = HeavyHitters(clock=clock)
    with pytest.raises(InvalidParameter):
        sketch.offer(b"bytes")
    with pytest.raises(InvalidParameter):
        sketch.offer("a", 0)
    with pytest.raises(InvalidParameter):
        sketch.offer("a", 1.5)
    with pytest.raises(InvalidParameter):
        sketch.top(-1)
    bad = HeavyHitters(clock=lambda: -5)
    with pytest.raises(InvalidParameter):
        bad.offer("a")
