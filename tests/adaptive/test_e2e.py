"""End to end: a real HTTP backend whose capacity drops, driven past it at a constant rate.

The backend (backend.py, its own process on 127.0.0.1) has 6 workers of ~40 ms
(~150 req/s), then 2 (~50 req/s). An open-loop generator offers 250 req/s through
an AdaptiveLimiter (concurrency mode, target P99 200 ms) on the real monotonic
clock. Admitted calls must keep their P99 near the target (median of per-second
P99s <= 1.5x target) and the limit must follow the capacity down. Bounds are loose
so a noisy 2-core box passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from limiter._core import AdaptiveLimiter
from tests.support import wait_ready

ROOT = Path(__file__).resolve().parents[2]
RATE = 250.0
TARGET = 0.2
CAPACITY = (150.0, 50.0)  # req/s with 6, then 2 workers
PHASE = 8.0  # seconds per capacity level


@contextlib.contextmanager
def backend_process() -> Iterator[int]:
    log = Path(tempfile.mkdtemp(prefix="limiter-backend-")) / "backend.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.adaptive.backend", "0", "6", "40"],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_ready(proc, log, "test backend", line="listening on ")
        yield int(log.read_text().split("listening on ", 1)[1].split()[0])
    finally:
        proc.kill()
        proc.wait(timeout=10)


class Pool:
    """Keep-alive HTTP/1.1 connections to the backend, one request at a time each."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def get(self, path: str) -> None:
        conn = self.idle.pop() if self.idle else await asyncio.open_connection(
            "127.0.0.1", self.port)  # fmt: skip
        reader, writer = conn
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: backend\r\n\r\n".encode())
            await writer.drain()
            assert (await reader.readline()).startswith(b"HTTP/1.1 200")
            while (await reader.readline()) not in (b"\r\n", b""):
                pass
            await reader.readexactly(2)
        except BaseException:
            writer.close()
            raise
        self.idle.append(conn)


async def drive(port: int) -> dict[str, np.ndarray]:
    lim = AdaptiveLimiter(target_latency=TARGET, percentile=0.99, mode="concurrency")
    pool = Pool(port)
    admitted: list[tuple[float, float]] = []  # (start, latency or inf)
    rejected: list[float] = []
    limits: list[tuple[float, float]] = []
    lateness: list[tuple[float, float]] = []
    tasks: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    async def call(start: float) -> None:
        permit = lim.acquire("backend")
        if not permit.allowed:
            rejected.append(start)
            return
        try:
            async with permit:
                await asyncio.wait_for(pool.get("/work"), 1.0)
            admitted.append((start, loop.time() - t0 - start))
        except TimeoutError:
            admitted.append((start, float("inf")))

    i = 0
    while True:
        at = i / RATE
        if at >= 2 * PHASE:
            break
        delay = t0 + at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        lateness.append((at, loop.time() - t0 - at))
        if i == int(PHASE * RATE):
            await Pool(port).get("/capacity/2")
        if i % 40 == 0:
            limits.append((at, lim.current_limit))
        task = loop.create_task(call(at))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        i += 1
    await asyncio.gather(*tasks)
    return {"admitted": np.array(admitted), "rejected": np.array(rejected),
            "limits": np.array(limits), "lateness": np.array(lateness)}  # fmt: skip


def phase_stats(run: dict[str, np.ndarray], lo: float, hi: float) -> tuple[float, float, float]:
    a = run["admitted"]
    sel = a[(a[:, 0] >= lo) & (a[:, 0] < hi)]
    # Median of the per-second P99s: one second frozen by a neighbour process on a
    # shared box must not decide the test, a limiter that lets queues grow does.
    per_second = [sel[np.floor(sel[:, 0]) == s, 1] for s in np.arange(lo, hi)]
    p99 = float(np.median([np.quantile(x, 0.99, method="inverted_cdf") for x in per_second]))
    good = np.count_nonzero(sel[:, 1] <= TARGET) / (hi - lo)
    lim = run["limits"]
    median_limit = float(np.median(lim[(lim[:, 0] >= lo) & (lim[:, 0] < hi), 1]))
    return p99, good, median_limit


def stalled(run: dict[str, np.ndarray], windows: list[tuple[float, float]]) -> float:
    """Worst delay of the load generator itself in the judged windows (a CPU stall)."""
    late = run["lateness"]
    return max(
        float(late[(late[:, 0] >= lo - 1) & (late[:, 0] < hi), 1].max()) for lo, hi in windows
    )


@pytest.mark.timeout(90)
def test_limit_tracks_a_capacity_drop_and_keeps_p99_near_target() -> None:
    # On a shared 2-core box another process can freeze this one for a second; the
    # limiter is not to blame for that, so a run whose own load generator stalled
    # in the judged windows is repeated (at most 3 runs of ~17 s).
    windows = [(PHASE / 2, PHASE), (PHASE + PHASE / 2, 2 * PHASE)]
    for attempt in range(3):
        with backend_process() as port:
            run = asyncio.run(drive(port))
        stall = stalled(run, windows)
        if stall <= 0.5:
            break
        print(f"run {attempt + 1}: load generator stalled {stall:.2f} s; repeating")
    p99_a, good_a, limit_a = phase_stats(run, *windows[0])
    p99_b, good_b, limit_b = phase_stats(run, *windows[1])
    report = (
        f"6 workers: median P99 {p99_a * 1000:.0f} ms, {good_a:.0f} good/s, limit {limit_a:.1f}; "
        f"2 workers: median P99 {p99_b * 1000:.0f} ms, {good_b:.0f} good/s, limit {limit_b:.1f}; "
        f"rejected {len(run['rejected'])}"
    )
    print(report)
    assert len(run["rejected"]) > 0.2 * RATE * 2 * PHASE, report  # it did shed the excess
    assert p99_a <= 1.5 * TARGET, report
    assert p99_b <= 1.5 * TARGET, report
    assert good_a >= 0.6 * CAPACITY[0], report  # most of the capacity, on time
    # With two workers the limit sits near 2 calls in flight, where a dip below 2 halves
    # what is admitted: 34-40 good/s alone, 23 with two test suites sharing the 2 cores.
    assert 0.4 * CAPACITY[1] <= good_b <= 1.3 * CAPACITY[1], report
    assert limit_b <= 0.7 * limit_a, report  # the limit followed the capacity down
