"""asyncio callers on Redis: the event-loop connection against the threaded path.

The same backend serves asyncio callers either on a connection in their own event
loop (``limiter.backends.loop_transport``, the default for one server or Sentinel's
master) or through the flusher thread that threads use (``combiner``, still used for
Redis Cluster); the event-loop connection is measured on a plain loop and on the
idle-flushing loop the service runs (``limiter.backends.idle_loop``). Rounds interleave
the three; medians are printed.

    .venv/bin/python benchmarks/redis_async_ab.py --rounds 7

Starts its own redis-server on a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import limiter
from limiter.backends.idle_loop import new_event_loop
from limiter.backends.redis import RedisBackend
from tests.support import RedisServer


def limiter_on(url: str, loop_connection: bool) -> tuple[RedisBackend, limiter.FixedWindow]:
    backend = RedisBackend(url, local_cache=False, timeout=1.0)
    if not loop_connection:
        backend.endpoint = None  # what a TLS / Sentinel / Cluster URL gets
    return backend, limiter.FixedWindow(10**9, 3600.0, backend=backend)


async def sequential(fw: limiter.FixedWindow, n: int) -> tuple[float, float]:
    """(wall µs, CPU µs) per call of one task awaiting one decision at a time."""
    for _ in range(n // 10):
        await fw.acquire_async("k")
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(n):
        await fw.acquire_async("k")
    return (time.perf_counter() - wall) / n * 1e6, (time.process_time() - cpu) / n * 1e6


async def concurrent(fw: limiter.FixedWindow, tasks: int, each: int) -> tuple[float, float]:
    """(calls/s, CPU µs per call) of ``tasks`` tasks deciding over 8 keys."""

    async def work(i: int) -> None:
        for _ in range(each):
            await fw.acquire_async(f"k{i % 8}")

    await work(0)
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(work(i) for i in range(tasks)))
    n = tasks * each
    return n / (time.perf_counter() - wall), (time.process_time() - cpu) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=3000, help="sequential calls per round")
    parser.add_argument("--tasks", type=int, default=64)
    args = parser.parse_args()
    paths = {  # name -> (event-loop connection, loop factory)
        "event-loop connection": (True, None),
        "event-loop connection, idle-flushing loop": (True, new_event_loop),
        "flusher thread": (False, None),
    }
    rows: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with RedisServer() as server:
        for _ in range(args.rounds):
            for path, (loop_connection, factory) in paths.items():
                backend, fw = limiter_on(server.url, loop_connection)
                with asyncio.Runner(loop_factory=factory) as runner:
                    seq = runner.run(sequential(fw, args.calls))
                with asyncio.Runner(loop_factory=factory) as runner:
                    par = runner.run(concurrent(fw, args.tasks, args.calls // 10))
                rows.setdefault(("sequential", path), []).append(seq)
                rows.setdefault(("concurrent", path), []).append(par)
                backend.close()
    for (kind, path), samples in rows.items():
        first = statistics.median(s[0] for s in samples)
        cpu = statistics.median(s[1] for s in samples)
        if kind == "sequential":
            print(f"1 task, {path}: {first:.0f} µs per call, {cpu:.1f} µs CPU per call")
        else:
            print(f"{args.tasks} tasks, {path}: {first:,.0f} calls/s, {cpu:.1f} µs CPU per call")


if __name__ == "__main__":
    main()
