"""Reservoir: uniform samples per sub-window, count-weighted merge, documented error."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from limiter._core import Reservoir, weighted_quantile
from limiter.errors import InvalidParameter

S = 1_000_000_000


def test_exact_while_under_size() -> None:
    r = Reservoir(size=1000, horizon=10.0, subwindows=10)
    for v in range(1, 101):
        r.add(float(v), now=5 * S)
    assert r.count(now=5 * S) == 100
    assert r.kept(now=5 * S) == 100
    assert r.quantiles([0.5, 0.9, 0.99], now=5 * S) == [50.0, 90.0, 99.0]


@pytest.mark.parametrize("p", [0.5, 0.9, 0.99])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_rank_error_within_documented_bound(p: float, seed: int) -> None:
    """Uniform(0,1) values: the answer's true rank is the value itself."""
    size, subwindows = 512, 10
    r = Reservoir(size=size, horizon=10.0, subwindows=subwindows, seed=seed)
    values = np.random.default_rng(seed).random(200_000)
    # 20,000 values per 1 s sub-window, far more than it keeps.
    for i, v in enumerate(values):
        r.add(float(v), now=i * 50_000)
    now = len(values) * 50_000 - 1
    k = r.kept(now=now)
    assert k == size * subwindows
    bound = math.sqrt(p * (1 - p) / k)
    assert r.rank_error(p, now=now) == pytest.approx(bound)
    # 4 sigma: a correct sampler fails this about once in 15,000 runs.
    assert abs(r.quantile(p, now=now) - p) <= 4 * bound


def test_lognormal_p99_within_error() -> None:
    rng = np.random.default_rng(9)
    r = Reservoir(size=1024, horizon=10.0, subwindows=10, seed=4)
    values = rng.lognormal(0.0, 1.0, 100_000)
    for i, v in enumerate(values):
        r.add(float(v), now=i * 100_000)
    now = len(values) * 100_000 - 1
    q = r.quantile(0.99, now=now)
    rank = float(np.mean(values <= q))
    assert abs(rank - 0.99) <= 4 * math.sqrt(0.99 * 0.01 / r.kept(now=now))


def test_count_weighting_across_subwindows() -> None:
    """A busy sub-window counts for what it saw, not for what it kept."""
    r = Reservoir(size=100, horizon=2.0, subwindows=2)
    for _ in range(9000):
        r.add(1.0, now=0)
    for _ in range(1000):
        r.add(2.0, now=S)
    # Unweighted, the kept 100 + 100 values would put P80 at 2.0.
    assert r.quantile(0.8, now=S) == 1.0
    assert r.quantile(0.95, now=S) == 2.0


def test_values_leave_after_the_horizon() -> None:
    r = Reservoir(size=10, horizon=1.0, subwindows=4)
    r.add(5.0, now=0)
    assert r.count(now=S - 1) == 1
    assert r.count(now=S) == 0
    assert math.isnan(r.quantile(0.5, now=S))
    r.add(7.0, now=0)  # older than the horizon by now: ignored
    r.add(3.0, now=S)
    assert r.count(now=S) == 1


def test_enough_uses_the_freshest_subwindows() -> None:
    r = Reservoir(size=100, horizon=10.0, subwindows=10)
    for _ in range(50):
        r.add(9.0, now=0)
    for _ in range(50):
        r.add(1.0, now=5 * S)
    assert r.quantile(0.99, now=5 * S) == 9.0
    assert r.quantile(0.99, now=5 * S, enough=50) == 1.0
    assert r.quantile(0.99, now=5 * S, enough=51) == 9.0


def test_algorithm_r_keeps_a_uniform_sample() -> None:
    r = Reservoir(size=1000, horizon=10.0, subwindows=1, seed=5)
    n = 100_000
    r.add_many(np.arange(n, dtype=float), now=0)
    values, weights = r.snapshot(now=0)
    assert len(values) == 1000
    assert np.all(weights == n / 1000)
    # Mean of 1000 uniform picks from [0, n): sd = n / sqrt(12 * 1000) ~ 0.009 n.
    assert abs(values.mean() - n / 2) < 0.04 * n
    assert values.min() < 0.01 * n and values.max() > 0.99 * n


def test_seed_makes_sampling_reproducible() -> None:
    def sample(seed: int) -> np.ndarray:
        r = Reservoir(size=50, horizon=1.0, subwindows=1, seed=seed)
        r.add_many(np.arange(10_000, dtype=float), now=0)
        return r.snapshot(now=0)[0]

    assert np.array_equal(sample(1), sample(1))
    assert not np.array_equal(sample(1), sample(2))


def test_injected_clock_and_infinity() -> None:
    t = [3 * S]
    r = Reservoir(size=10, horizon=1.0, subwindows=2, clock=lambda: t[0])
    r.add(0.5)
    r.add(math.inf)
    assert r.quantile(0.99) == math.inf
    t[0] += 2 * S
    assert r.count() == 0


def test_snapshots_merge_into_one_weighted_sample() -> None:
    a = Reservoir(size=64, horizon=1.0, subwindows=1, seed=1)
    b = Reservoir(size=64, horizon=1.0, subwindows=1, seed=2)
    a.add_many(np.full(900, 1.0), now=0)
    b.add_many(np.full(100, 3.0), now=0)
    va, wa = a.snapshot(now=0)
    vb, wb = b.snapshot(now=0)
    merged = (np.concatenate([va, vb]), np.concatenate([wa, wb]))
    assert weighted_quantile(*merged, 0.85) == 1.0
    assert weighted_quantile(*merged, 0.95) == 3.0
    assert math.isnan(weighted_quantile([], [], 0.5))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 1e6), min_size=1, max_size=300), st.floats(0.01, 0.99))
def test_answer_is_an_offered_value_between_min_and_max(values: list[float], p: float) -> None:
    r = Reservoir(size=64, horizon=1.0, subwindows=1)
    for v in values:
        r.add(v, now=0)
    q = r.quantile(p, now=0)
    assert q in values
    assert min(values) <= q <= max(values)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"size": 0}, "size"),
        ({"size": 1.5}, "size"),
        ({"horizon": 0}, "horizon"),
        ({"horizon": float("nan")}, "horizon"),
        ({"subwindows": 0}, "subwindows"),
        ({"size": 1 << 20, "subwindows": 4096}, "size * subwindows"),
        ({"seed": -1}, "seed"),
        ({"clock": 5}, "clock"),
    ],
)
def test_bad_parameters(kwargs: dict, field: str) -> None:
    with pytest.raises(InvalidParameter, match=field.replace("*", r"\*")):
        Reservoir(**kwargs)


def test_bad_calls() -> None:
    r = Reservoir()
    with pytest.raises(InvalidParameter, match="NaN"):
        r.add(float("nan"), now=0)
    with pytest.raises(InvalidParameter, match="value"):
        r.add("fast", now=0)
    with pytest.raises(InvalidParameter, match="p must"):
        r.quantile(1.0, now=0)
    with pytest.raises(InvalidParameter, match="now"):
        r.quantile(0.5, now=-1)
    with pytest.raises(InvalidParameter, match="weights"):
        weighted_quantile([1.0], [-1.0], 0.5)


@settings(max_examples=200, deadline=None)
@given(
    windows=st.lists(
        st.tuples(st.lists(st.integers(0, 6), min_size=0, max_size=6), st.integers(1, 5)),
        min_size=1,
        max_size=5,
    ),
    p=st.floats(0.01, 0.99),
)
def test_quantile_selection_equals_sort_and_scan(windows, p):
    """quantile() selects in linear time; it must answer what sorting the weighted
    sample and scanning it does (ties and unequal weights included). Sub-windows of
    4 kept values offered 4*k values weigh exactly k, so the sums are exact."""
    r = Reservoir(size=4, horizon=10.0, subwindows=10, seed=3)
    for w, (values, k) in enumerate(windows):
        now = w * 1_000_000_000
        for _ in range(k):
            for v in [*values, 0, 1, 2, 3][:4]:
                r.add(float(v), now=now)
    now = (len(windows) - 1) * 1_000_000_000
    values, weights = r.snapshot(now=now)
    assert r.quantile(p, now=now) == weighted_quantile(values, weights, p)
