"""Bounded memory: max_keys, idle reclaim, CLOCK eviction, batch equivalence."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from limiter import FixedWindow, SlidingWindow, TokenBucket
from tests.core.clock import ManualClock


def test_table_never_exceeds_max_keys_and_counts_evictions():
    clock = ManualClock()
    tb = TokenBucket(rate=1.0, burst=1, max_keys=100, clock=clock)
    for i in range(10_000):
        tb.allow(f"k{i}")
    assert len(tb) == 100
    assert tb.evictions == 10_000 - 100
    assert tb.max_keys == 100


def test_idle_rows_are_reclaimed_without_counting_evictions():
    clock = ManualClock()
    tb = TokenBucket(rate=1.0, burst=1, max_keys=100, clock=clock)
    for i in range(100):
        tb.allow(f"old{i}")
    clock.advance(5)  # every bucket is full again: rows are idle
    for i in range(100):
        tb.allow(f"new{i}")
    assert tb.evictions == 0 and len(tb) == 100


def test_idle_rows_shrink_the_table_as_keys_go_quiet():
    clock = ManualClock()
    fw = FixedWindow(limit=10, period=1.0, clock=clock)
    for i in range(1000):
        fw.allow(f"k{i}")
    clock.advance(2)
    for _ in range(600):
        fw.allow("steady")
    assert len(fw) < 1000


def test_recently_used_keys_survive_eviction():
    clock = ManualClock()
    tb = TokenBucket(rate=1.0, burst=3, max_keys=50, clock=clock)
    tb.allow("hot")
    for i in range(500):
        tb.allow("hot") if i % 5 == 0 else tb.allow(f"cold{i}")
        clock.advance(0.001)
    # "hot" was referenced between sweeps, so it kept its (empty) bucket.
    assert not tb.allow("hot")


def test_batch_equals_sequential_decisions():
    clock = ManualClock()
    a = SlidingWindow(limit=7, period=1.0, clock=clock)
    b = SlidingWindow(limit=7, period=1.0, clock=clock)
    rng = np.random.default_rng(1)
    keys = [f"k{i}" for i in rng.integers(0, 5, size=200)]
    costs = rng.integers(1, 4, size=200)
    batch = a.allow_batch(keys, costs)
    assert batch.dtype == np.bool_
    assert batch.tolist() == [b.allow(k, cost=int(c)) for k, c in zip(keys, costs, strict=True)]
    assert a.allow_batch(np.array(["x", "y"], dtype=object)).tolist() == [True, True]


def test_batch_validates_everything_before_deciding():
    tb = TokenBucket(rate=1.0, burst=2)
    with pytest.raises(ValueError, match="costs"):
        tb.allow_batch(["a", "b"], np.array([1, 3]))
    with pytest.raises(ValueError, match="key"):
        tb.allow_batch(["a", 5])
    with pytest.raises(ValueError, match="costs"):
        tb.allow_batch(["a"], np.array([1, 1]))
    assert tb.allow("a", cost=2)  # nothing was consumed by the refused batches


@pytest.mark.parametrize("kind", ["token", "fixed", "sliding"])
def test_acquire_batch_equals_sequential_acquires(kind):
    """Decisions in order at one clock reading: each key sees the batch's earlier checks."""
    clock = ManualClock()

    def make():
        if kind == "token":
            return TokenBucket(rate=2.0, burst=5, clock=clock)
        if kind == "fixed":
            return FixedWindow(limit=5, period=1.0, clock=clock)
        return SlidingWindow(limit=5, period=1.0, clock=clock)

    batched, single = make(), make()
    rng = np.random.default_rng(7)
    seen = set()
    for _ in range(6):
        keys = [f"k{i}" for i in rng.integers(0, 4, size=30)]
        costs = [int(c) for c in rng.integers(1, 3, size=30)]
        expected = [single.acquire(k, c) for k, c in zip(keys, costs, strict=True)]
        assert batched.acquire_batch(keys, costs) == expected
        seen.update(d.allowed for d in expected)
        clock.advance(0.4)
    assert seen == {True, False}
    assert batched.acquire_batch(["new", "new"]) == [single.acquire("new"), single.acquire("new")]


def test_acquire_batch_refuses_bad_input_and_changes_nothing():
    tb = TokenBucket(rate=1.0, burst=2)
    with pytest.raises(ValueError, match="cost must be in \\[1, 2\\], got 3"):
        tb.acquire_batch(["a", "b"], [1, 3])
    with pytest.raises(ValueError, match="key must be a str, got int"):
        tb.acquire_batch(["a", 5])
    with pytest.raises(ValueError, match="costs: 1 given for 2 keys"):
        tb.acquire_batch(["a", "b"], [1])
    with pytest.raises(ValueError, match="cost"):
        tb.acquire_batch(["a"], [True])
    assert tb.acquire_batch([]) == []
    assert tb.acquire("a", cost=2).allowed  # nothing was consumed by the refused batches


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(["token", "fixed", "sliding"]),
    steps=st.lists(
        st.tuples(
            st.lists(st.integers(0, 40), min_size=1, max_size=80),  # key ids of one batch
            st.integers(0, 3_000),  # ms the clock moves after the batch
        ),
        min_size=1,
        max_size=8,
    ),
    max_keys=st.integers(1, 24),
    as_array=st.booleans(),
)
def test_batch_equals_sequential_with_eviction_and_reclaim(kind, steps, max_keys, as_array):
    """The prefetching batch path must answer exactly like one call per key, also when
    new keys evict or reclaim rows in the middle of a chunk (slots change hands)."""
    clock = ManualClock()

    def make():
        if kind == "token":
            return TokenBucket(rate=2.0, burst=3, max_keys=max_keys, clock=clock)
        if kind == "fixed":
            return FixedWindow(limit=3, period=1.0, max_keys=max_keys, clock=clock)
        return SlidingWindow(limit=3, period=1.0, max_keys=max_keys, clock=clock)

    batched, single = make(), make()
    for ids, ms in steps:
        keys = [f"key-{i}" for i in ids]
        arg = np.array(keys, dtype=object) if as_array else keys
        assert batched.allow_batch(arg).tolist() == [single.allow(k) for k in keys]
        assert len(batched) == len(single) and batched.evictions == single.evictions
        clock.advance(ms / 1000)
