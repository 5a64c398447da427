"""Redis backend throughput and latency against raw INCR and peer libraries.

Two floors for one round trip, both in the table: ``Redis.incr`` on redis-py's pooled
client (what an application calls: it checks a connection out of the pool and back in
around each command) and INCR written and read on one redis-py connection held for the
whole run (the wire alone: no pool, no command dispatch).

Starts its own redis-server on a free port (never the system one), then measures, in
one run: sequential calls (one caller) and 64 concurrent callers (threads, and asyncio
tasks for limiter), each with p50/p99 per-call latency, and for the threaded run the CPU
time per call of this process and of redis-server (robust to other load on the host,
unlike throughput). Every limit is set high so all calls really go to Redis (nothing is
answered by a local cache). Contenders are interleaved within each round and ratios are
taken within a round, so load from other processes hits all of them alike. Each round
also measures the thread hand-off ceiling (``handoff_ceiling``): what CPython on this
host can do at best when every decision must resume its caller's thread.

    .venv/bin/python benchmarks/redis_bench.py [--calls 4000] [--rounds 7] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import statistics
import sys
import threading
import time
from _thread import allocate_lock
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

import limiter
from limiter._relay import Waiter
from limiter.backends.redis import RedisBackend
from tests.support import RedisServer

BIG = 10**9
POOLED_INCR = "raw INCR, redis-py pooled client (Redis.incr)"
CONNECTION_INCR = "raw INCR on one held redis-py Connection"
SEQUENTIAL_ONLY = {CONNECTION_INCR}  # one Connection is not thread-safe
OURS: list[RedisBackend] = []
THREADED_OURS = ("limiter TokenBucket (redis)", "limiter FixedWindow (redis)")
LOCK_RING = "_thread locks (the woken thread may find the GIL still held)"
RELAY_RING = "limiter._relay.Waiter (the next thread is woken once the GIL is free)"


def ours(url: str) -> RedisBackend:
    """Our backend, with a long timeout: this measures speed, not the 20 ms fault path."""
    backend = RedisBackend(url, local_cache=False, timeout=1.0)
    OURS.append(backend)
    return backend


def contenders(url: str) -> dict[str, Callable[[], Callable[[str], object]]]:
    """name -> factory of a per-call function ``f(key)``; factories run once per benchmark."""

    def raw_incr():
        r = redis.Redis.from_url(url)
        return r.incr

    def raw_connection_incr():
        conn = redis.Redis.from_url(url).connection_pool.get_connection()

        def incr(key: str) -> object:
            conn.send_packed_command(conn.pack_command("INCR", key), check_health=False)
            return conn.read_response()

        return incr

    def ours_token_bucket():
        tb = limiter.TokenBucket(1e9, BIG, backend=ours(url))
        return tb.acquire

    def ours_fixed_window():
        fw = limiter.FixedWindow(BIG, 60.0, backend=ours(url))
        return fw.acquire

    def limits_fixed_window():
        from limits import RateLimitItemPerMinute
        from limits.storage import RedisStorage
        from limits.strategies import FixedWindowRateLimiter

        lim, item = FixedWindowRateLimiter(RedisStorage(url)), RateLimitItemPerMinute(BIG)
        return lambda key: lim.hit(item, key)

    def throttled_token_bucket():
        from throttled import RateLimiterType, RedisStore, Throttled, rate_limiter

        quota = rate_limiter.per_sec(BIG, burst=BIG)
        t = Throttled(using=RateLimiterType.TOKEN_BUCKET.value, quota=quota,
                      store=RedisStore(server=url))  # fmt: skip
        return lambda key: t.limit(key)

    def pyrate_redis_bucket():
        from pyrate_limiter import Duration, Limiter, Rate, RedisBucket

        bucket = RedisBucket.init([Rate(BIG, Duration.MINUTE)], redis.Redis.from_url(url), "b")
        lim = Limiter(bucket)
        return lambda key: lim.try_acquire(key)  # blocking=False refuses under thread contention

    return {
        POOLED_INCR: raw_incr,
        CONNECTION_INCR: raw_connection_incr,
        "limiter TokenBucket (redis)": ours_token_bucket,
        "limiter FixedWindow (redis)": ours_fixed_window,
        "limits FixedWindow (RedisStorage)": limits_fixed_window,
        "throttled-py TokenBucket (RedisStore)": throttled_token_bucket,
        "pyrate-limiter RedisBucket": pyrate_redis_bucket,
    }


def percentiles(samples: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(samples, n=100, method="inclusive")
    return q[49] * 1e6, q[98] * 1e6


def sequential(call: Callable[[str], object], n: int, chunk: int = 100) -> tuple[float, ...]:
    """Throughput of the median chunk of ``chunk`` calls: robust to the preemption bursts
    other processes cause on a shared host (which hit every contender alike, but not
    in the same proportion within one short run)."""
    for _ in range(200):
        call("warm")
    lat = []
    rates = []
    for _ in range(max(n // chunk, 1)):
        t0 = time.perf_counter()
        for _ in range(chunk):
            s = time.perf_counter()
            call("k")
            lat.append(time.perf_counter() - s)
        rates.append(chunk / (time.perf_counter() - t0))
    return (statistics.median(rates), *percentiles(lat))


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def server_cpu(server: RedisServer) -> float:
    """CPU seconds redis-server has used so far (utime + stime from /proc)."""
    assert server.proc is not None
    fields = Path(f"/proc/{server.proc.pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def threaded_cpu(call, n: int, callers: int, server: RedisServer) -> tuple[float, ...]:
    """``threaded`` after a short untimed warm-up (every client grows its connection pool
    first), plus CPU us per call of this process and of redis-server."""
    threaded(call, callers * 4, callers)
    before, server_before = os.times(), server_cpu(server)
    result = threaded(call, n, callers)
    after, server_after = os.times(), server_cpu(server)
    calls = max(n // callers, 20) * callers
    client = (after.user - before.user + after.system - before.system) / calls * 1e6
    return (*result, client, (server_after - server_before) / calls * 1e6)


def threaded(call: Callable[[str], object], n: int, callers: int) -> tuple[float, float, float]:
    per = max(n // callers, 4)
    lats: list[list[float]] = [[] for _ in range(callers)]
    start = threading.Barrier(callers + 1)

    def work(i: int) -> None:
        start.wait()
        out = lats[i]
        for _ in range(per):
            s = time.perf_counter()
            call(f"k{i % 8}")
            out.append(time.perf_counter() - s)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    total = time.perf_counter() - t0
    return (per * callers / total, *percentiles([x for lat in lats for x in lat]))


def handoff_ceiling(
    callers: int, hops: int = 100_000, off_gil: bool = False
) -> tuple[float, float]:
    """The most thread hand-offs CPython makes here: ``callers`` threads pass a token around
    a ring (wake the next, block on its own lock), with no other work. Any design in which
    every decision resumes its caller's thread pays at least one such hand-off per decision.
    With ``off_gil`` each thread wakes the next in the call that blocks it, once it has let
    go of the GIL (``limiter._relay.Waiter``, as the Redis backend's relay does), instead of
    while it still holds the GIL. Returns (hand-offs per second, CPU us per hand-off)."""
    locks = [Waiter() if off_gil else allocate_lock() for _ in range(callers)]
    if not off_gil:
        for lock in locks:
            lock.acquire()
    left = itertools.count(hops, -1)
    done = threading.Event()

    def work(i: int) -> None:
        me, after = locks[i], locks[(i + 1) % callers]
        if off_gil:
            me.wait()
        while True:
            if not off_gil:
                me.acquire()
            if next(left) <= 0:
                done.set()
                # Lets every other thread see the count and stop.
                after.post() if off_gil else after.release()
                return
            if off_gil:
                me.wait(after)
            else:
                after.release()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    before, t0 = os.times(), time.perf_counter()
    locks[0].post() if off_gil else locks[0].release()
    done.wait()
    total, after = time.perf_counter() - t0, os.times()
    for t in threads:
        t.join()
    cpu = after.user - before.user + after.system - before.system
    return hops / total, cpu / hops * 1e6


def with_asyncio(factory, n: int, callers: int) -> tuple[float, float, float]:
    """``factory`` runs inside the loop: async clients bind to the loop that made them."""
    per = max(n // callers, 20)

    async def main() -> tuple[float, list[float]]:
        acall = factory()
        for _ in range(50):
            await acall("warm")
        lat: list[float] = []

        async def work(i: int) -> None:
            for _ in range(per):
                s = time.perf_counter()
                await acall(f"k{i % 8}")
                lat.append(time.perf_counter() - s)

        t0 = time.perf_counter()
        await asyncio.gather(*(work(i) for i in range(callers)))
        return time.perf_counter() - t0, lat

    total, lat = asyncio.run(main())
    return (per * callers / total, *percentiles(lat))


def async_contenders(url: str) -> dict[str, Callable[[], Callable]]:
    def ours_async():
        tb = limiter.TokenBucket(1e9, BIG, backend=ours(url))
        return tb.acquire_async

    def limits_aio():
        from limits import RateLimitItemPerMinute
        from limits.aio.storage import RedisStorage
        from limits.aio.strategies import FixedWindowRateLimiter

        lim = FixedWindowRateLimiter(RedisStorage("async+" + url, implementation="redispy"))
        item = RateLimitItemPerMinute(BIG)
        return lambda key: lim.hit(item, key)

    return {
        "limiter TokenBucket (redis, asyncio)": ours_async,
        "limits FixedWindow (aio)": limits_aio,
    }


PEERS = ("limits FixedWindow (RedisStorage)", "throttled-py TokenBucket (RedisStore)",
         "pyrate-limiter RedisBucket", "limits FixedWindow (aio)")  # fmt: skip


def _median(results: list[tuple]) -> tuple:
    return tuple(statistics.median(column) for column in zip(*results, strict=True))


def _per_round(par: dict[str, list], name: str, others: list[str]) -> float:
    """Median over rounds of ``name``'s throughput / the best of ``others`` in that round."""
    rounds = range(len(par[name]))
    return statistics.median(par[name][r][0] / max(par[o][r][0] for o in others) for r in rounds)


def ceiling_lines(par: dict[str, list], peers: list[str], ceilings: dict, callers: int) -> list:
    """Where the threaded results stand against the hand-off ceilings (same rounds)."""
    lines = []
    for label, ceiling in ceilings.items():
        rounds = range(len(ceiling))
        ops, cpu = _median(ceiling)
        lines.append(
            f"Thread hand-off ceiling, {label} ({callers} threads passing a token, no other "
            f"work; median over rounds): {ops:.0f} hand-offs/s, {cpu:.1f} us CPU each."
        )
        for name in THREADED_OURS:
            share = statistics.median(par[name][r][0] / ceiling[r][0] for r in rounds)
            need = statistics.median(
                5 * max(par[p][r][0] for p in peers) / ceiling[r][0] for r in rounds
            )
            lines.append(
                f"{name} (threads): {share:.0%} of that ceiling; 5x the best peer would be "
                f"{need:.0%} of it."
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    seq: dict[str, list] = {}
    par: dict[str, list] = {}
    ceilings: dict[str, list[tuple[float, float]]] = {LOCK_RING: [], RELAY_RING: []}
    load_before = load_average()
    started = time.strftime("%H:%M UTC %Y-%m-%d", time.gmtime())
    with RedisServer() as server:
        url = server.url
        calls = {name: factory() for name, factory in contenders(url).items()}
        acalls = async_contenders(url)
        # Rounds interleave the contenders so that load from other processes hits all alike.
        for r in range(args.rounds):
            for name, call in calls.items():
                seq.setdefault(name, []).append(sequential(call, args.calls))
                if name not in SEQUENTIAL_ONLY:
                    result = threaded_cpu(call, args.calls * 2, args.callers, server)
                    par.setdefault(name, []).append(result)
            for name, acall in acalls.items():
                par.setdefault(name, []).append(with_asyncio(acall, args.calls * 2, args.callers))
            ceilings[LOCK_RING].append(handoff_ceiling(args.callers))
            ceilings[RELAY_RING].append(handoff_ceiling(args.callers, off_gil=True))
            print(f"round {r + 1}/{args.rounds} done (load {load_average()})", flush=True)
        failures = sum(b.breaker.trips for b in OURS)
    ratios = {
        floor: {
            name: statistics.median(a[0] / b[0] for a, b in zip(seq[name], seq[floor], strict=True))
            for name in seq
        }
        for floor in (POOLED_INCR, CONNECTION_INCR)
    }
    peers = [p for p in PEERS if p in par]
    lines = [
        "# Redis backend benchmark",
        "",
        f"`benchmarks/redis_bench.py --calls {args.calls} --callers {args.callers} "
        f"--rounds {args.rounds}`, started {started}. Sequential: median over 100-call chunks; "
        f"{args.callers} callers: whole run of {args.calls * 2} calls after an untimed warm-up. "
        f"Python {platform.python_version()}, redis-py {redis.__version__}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs, own redis-server on 127.0.0.1 on the "
        "same host. Medians over rounds; contenders interleaved within each round; "
        "`x best peer` is taken within each round (then the median). Load average (1/5/15 "
        f"min) at start {load_before}, at end {load_average()}. Failure-mode breaker trips "
        f"during the run (must be 0): {failures}.",
        "",
        "Sequential baselines, per round then the median: `x pooled INCR` against "
        f"`{POOLED_INCR}`, `x one-connection INCR` against `{CONNECTION_INCR}`.",
        "",
        f"| contender | sequential ops/s | x pooled INCR | x one-connection INCR | p50 us | "
        f"p99 us | {args.callers} callers ops/s | x best peer | p50 us | p99 us | "
        "CPU us/call client + redis |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in [*seq, *acalls]:
        mode = "asyncio tasks" if name in acalls else "threads"
        if name in seq:
            s_ops, s50, s99 = _median(seq[name])
            pooled, one = ratios[POOLED_INCR][name], ratios[CONNECTION_INCR][name]
            s_txt = f"{s_ops:.0f} | {pooled:.2f} | {one:.2f} | {s50:.0f} | {s99:.0f}"
        else:
            s_txt = "- | - | - | - | -"
        if name in par:
            p_ops, p50, p99, *cpu = _median(par[name])
            vs = f"{_per_round(par, name, peers):.1f}" if name not in peers else "-"
            cpu_txt = f"{cpu[0]:.1f} + {cpu[1]:.1f}" if cpu else "-"
            p_txt = f"{p_ops:.0f} | {vs} | {p50:.0f} | {p99:.0f} | {cpu_txt}"
        else:
            p_txt = "- | - | - | - | -"
        lines.append(f"| {name} ({mode}) | {s_txt} | {p_txt} |")
    lines += ["", *ceiling_lines(par, peers, ceilings, args.callers)]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
