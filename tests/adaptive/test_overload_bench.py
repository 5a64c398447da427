"""The overload benchmark's timeline and per-window summary (benchmarks/overload_bench.py)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from benchmarks.overload_bench import FAILED, TARGET, TIMEOUT, Timeline, metric, window


def test_timeline_drops_the_capacity_for_its_middle_third() -> None:
    timeline = Timeline(30.0, workers=8, dropped_workers=3)
    assert [timeline.workers_at(t) for t in (0, 9.99, 10, 19.99, 20, 29.9)] == [8, 8, 3, 3, 8, 8]
    assert timeline.changes() == [(10.0, 3), (20.0, 8)]


def test_phases_tile_the_run_after_the_warm_up() -> None:
    for seconds in (9.0, 18.0, 36.0):
        phases = Timeline(seconds).phases()
        assert phases[-1][2] == seconds
        for (_, _, end), (_, start, _) in itertools.pairwise(phases):
            assert end == start
        assert all(start < end for _, start, end in phases)
        # Each phase has one capacity throughout.
        timeline = Timeline(seconds)
        for _, start, end in phases:
            assert timeline.workers_at(start) == timeline.workers_at(end - 1e-9)


def test_window_counts_good_refused_and_failed_per_second() -> None:
    rows = np.array([
        (0.1, TARGET / 2, 200),  # good
        (0.2, TARGET * 2, 200),  # served, too late to be good
        (0.3, 0.001, 429),  # refused: not in the percentiles
        (0.4, math.inf, FAILED),  # gave up: counted at the timeout
        (1.5, 0.01, 200),  # outside the window
    ])  # fmt: skip
    w = window(rows, 0.0, 0.5)
    assert (w.offered, w.good, w.refused, w.failed) == (8, 2, 2, 2)
    assert w.p99 == pytest.approx(np.quantile([TARGET / 2, TARGET * 2, TIMEOUT], 0.99))
    assert w.p50 == TARGET * 2


def test_window_without_answers_has_no_percentile() -> None:
    w = window(np.array([(0.1, 0.001, 429)]), 0.0, 1.0)
    assert w.refused == 1 and math.isnan(w.p99)


def test_metric_picks_the_sample_with_the_labels() -> None:
    text = "\n".join([
        "# TYPE limiter_adaptive_limit gauge",
        'limiter_adaptive_limit{domain="a",rule="r"} 12.5',
        'limiter_adaptive_limit{domain="b",rule="r"} 80.0',
        "limiter_level 2.0",
    ])  # fmt: skip
    assert metric(text, "limiter_adaptive_limit", {"domain": "b", "rule": "r"}) == 80.0
    assert metric(text, "limiter_level", {}) == 2.0
    assert metric(text, "limiter_adaptive_limit", {"domain": "c"}) is None
