"""The kernels' default clock: CLOCK_MONOTONIC's time base, read through the TSC where
the OS trusts it. It must track the OS clock closely and never go backwards."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from limiter import _core


def test_clock_stays_between_two_os_readings():
    _core.clock_ns()
    time.sleep(0.05)  # past calibration, so the fast path is in use where available
    worst = 0
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        before = time.monotonic_ns()
        ours = _core.clock_ns()
        after = time.monotonic_ns()
        if after - before > 20_000:
            continue  # preempted between the readings: the bracket says nothing
        worst = max(worst, before - ours, ours - after)
    assert worst < 5_000, f"kernel clock left the OS bracket by {worst} ns"


def test_clock_never_goes_backwards_across_resyncs():
    last = _core.clock_ns()
    for i in range(300_000):
        now = _core.clock_ns()
        assert now >= last, f"read {i}: {now} < {last}"
        last = now
        if i % 50_000 == 0:
            time.sleep(0.012)  # longer than a segment: forces a re-anchor


def test_wall_clock_tracks_realtime():
    _core.wall_clock_ns()
    time.sleep(0.03)
    gaps = []
    for _ in range(1000):
        before = time.time_ns()
        ours = _core.wall_clock_ns()
        after = time.time_ns()
        if after - before < 20_000:
            gaps.append(max(before - ours, ours - after, 0))
    assert gaps and min(gaps) < 5_000 and sorted(gaps)[len(gaps) // 2] < 20_000


def test_clock_source_and_opt_out():
    source = _core.clock_source()
    assert source in ("tsc", "clock_gettime")
    code = (
        "from limiter import _core, TokenBucket; "
        "print(_core.clock_source(), TokenBucket(rate=1.0, burst=1).allow('k'))"
    )
    env = dict(os.environ, LIMITER_CLOCK="monotonic")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["clock_gettime", "True"]
