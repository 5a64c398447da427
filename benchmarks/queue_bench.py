"""Queued admission: cost per request, and wait by priority class at 2x overload.

Run from the repository root: ``python benchmarks/queue_bench.py [--quick] [--out FILE]``.
A full run writes ``benchmarks/results/queue.md``.

Part 1, cost. The ``PriorityQueue`` kernel's push+pop (strict, weighted, with deadlines,
and push+cancel) against the Python structures one would otherwise use (``deque`` for
FIFO, ``heapq`` for priorities); then the ``AdmissionQueue`` paths: admitted at once
(vs a bare ``TokenBucket.acquire``), refused at once, and a request that really waits
(enqueue, admission, wake-up of its asyncio task) against the floor of an asyncio task
awaiting a future. Cells run interleaved round after round; each keeps its minimum.

Part 2, overload. One seeded Poisson arrival stream at twice a token bucket's rate
(three classes: 20 % / 30 % / 50 % of requests, every request allowed to wait up to
MAX_WAIT) is fed to: plain rejection (the bare bucket), a FIFO queue (one class), strict
priority, and weighted 3:2:1 queues (FIFO and LIFO within a class). It runs on a manual
clock (a discrete-event simulation through the real AdmissionQueue code, deterministic),
then on the real clock with asyncio, all strategies side by side in one loop, shorter.

Part 3, the decision service (skip with ``--no-service``). A real ``limiter serve`` with
one token-bucket rule per strategy (``queue`` settings: FIFO = one class, strict,
weighted 3:2:1); the same Poisson stream at 2x the rate is sent to every rule at once
as native ``Decide`` RPCs (grpc.aio, ``max_wait`` = MAX_WAIT, plain rejection:
``max_wait`` = 0), so waits are the service's ``waited`` answers. Also the per-RPC cost
of asking to wait when the rule admits at once (``max_wait`` > 0 vs 0), sequential.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import heapq
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from limiter.server import v1  # noqa: E402
from machine import cpu_model, git_revision  # noqa: E402

from limiter import TokenBucket  # noqa: E402
from limiter._core import PriorityQueue  # noqa: E402
from limiter.admission import AdmissionQueue, DeadlineExceeded, QueueFull  # noqa: E402
from tests.support import free_port, wait_for_port  # noqa: E402

DEFAULT_OUT = os.path.join(ROOT, "benchmarks", "results", "queue.md")
SHARES = (0.2, 0.3, 0.5)  # fraction of requests in class 0 (most important), 1, 2
MAX_WAIT = 1.0  # seconds any request may wait
MAX_QUEUE = 200  # per class
BURST = 10  # bucket tolerance: absorbs timer lateness on the real clock


# --- part 1: cost per request ------------------------------------------------------


def kernel_cells(depth: int) -> dict[str, Callable[[int], None]]:
    """Each cell does n (push, pop) pairs around a steady backlog of ``depth`` items."""

    def kernel(weights, deadline: bool, cancel: bool = False):
        q = PriorityQueue(depth * 4, weights=weights, classes=3)
        for i in range(depth):
            q.push(i % 3, 10**15 + i if deadline else None)
        push, pop, remove = q.push, q.pop, q.remove

        def run(n: int) -> None:
            d = 10**15 if deadline else None
            if cancel:
                for i in range(n):
                    remove(push(i % 3, d))
            else:
                for i in range(n):
                    push(i % 3, d)
                    pop(0)

        return run

    def deque_fifo(n: int) -> None:
        d = collections.deque(range(depth))
        append, popleft = d.append, d.popleft
        for i in range(n):
            append(i)
            popleft()

    def heapq_priority(n: int) -> None:
        h = [(i % 3, i, 10**15) for i in range(depth)]
        heapq.heapify(h)
        push, pop = heapq.heappush, heapq.heappop
        for i in range(n):
            push(h, (i % 3, i, 10**15))
            pop(h)

    def floor(n: int) -> None:
        for i in range(n):
            i % 3

    return {
        "kernel strict, no deadline": kernel(None, False),
        "kernel strict, deadline": kernel(None, True),
        "kernel weighted 3:2:1, deadline": kernel((3, 2, 1), True),
        "kernel push + cancel, deadline": kernel(None, True, cancel=True),
        "collections.deque append+popleft (FIFO)": deque_fifo,
        "heapq push+pop (priority, seq, deadline)": heapq_priority,
        "empty loop (floor)": floor,
    }


class Manual:
    def __init__(self) -> None:
        self.now = 10**12

    def __call__(self) -> int:
        return self.now


def admission_cells() -> dict[str, Callable[[int], None]]:
    """Per-request cost of the AdmissionQueue paths, with the matching floors."""
    free = TokenBucket(rate=1e9, burst=10**9)
    q_free = AdmissionQueue(free, classes=3, auto_poll=False)
    empty = TokenBucket(rate=1e-6, burst=1)
    empty.acquire("k")
    q_full = AdmissionQueue(empty, classes=3, max_queue=1, auto_poll=False)

    def bare(bucket: TokenBucket) -> Callable[[int], None]:
        def run(n: int) -> None:
            acquire = bucket.acquire
            for _ in range(n):
                acquire("k")

        return run

    def queue_allowed(n: int) -> None:
        acquire = q_free.acquire
        for _ in range(n):
            acquire("k", priority=1)

    def queue_busy(n: int) -> None:
        acquire = q_full.acquire
        for _ in range(n):
            with contextlib.suppress(DeadlineExceeded):
                acquire("k", timeout=0)

    def waited(n: int) -> None:
        """n tasks queue behind an empty bucket, then one poll admits them all."""
        clock = Manual()
        bucket = TokenBucket(rate=1.0, burst=n + 1, clock=clock)
        bucket.acquire("k", cost=n + 1)
        q = AdmissionQueue(
            bucket, weights=(3, 2, 1), max_queue=n, clock=clock, auto_poll=False, max_wait=None
        )

        async def main() -> None:
            tasks = [asyncio.create_task(q.acquire_async("k", priority=i % 3)) for i in range(n)]
            await asyncio.sleep(0)
            clock.now += (n + 1) * 10**9
            q.poll()
            await asyncio.gather(*tasks)

        asyncio.run(main())

    def task_floor(n: int) -> None:
        """The same tasks awaiting plain futures that one loop pass completes."""

        async def main() -> None:
            loop = asyncio.get_running_loop()
            futures = [loop.create_future() for _ in range(n)]

            async def one(f: asyncio.Future[None]) -> None:
                await f

            tasks = [asyncio.create_task(one(f)) for f in futures]
            await asyncio.sleep(0)
            for f in futures:
                f.set_result(None)
            await asyncio.gather(*tasks)

        asyncio.run(main())

    return {
        "TokenBucket.acquire, allowed (bare)": bare(free),
        "AdmissionQueue.acquire, admitted at once": queue_allowed,
        "TokenBucket.acquire, refused (plain rejection)": bare(empty),
        "AdmissionQueue.acquire, busy at once (timeout=0)": queue_busy,
        "AdmissionQueue.acquire_async, waited (enqueue+admit+wake)": waited,
        "asyncio task awaiting a future (floor for the row above)": task_floor,
    }


def measure(cells: dict[str, Callable[[int], None]], n: int, rounds: int) -> dict[str, float]:
    """Min ns per operation of each cell over interleaved rounds."""
    best = dict.fromkeys(cells, float("inf"))
    for _ in range(rounds):
        for name, fn in cells.items():
            t0 = time.perf_counter_ns()
            fn(n)
            best[name] = min(best[name], (time.perf_counter_ns() - t0) / n)
    return best


# --- part 2: overload ---------------------------------------------------------------


@dataclass
class Outcome:
    offered: int = 0
    admitted: int = 0
    busy: int = 0
    full: int = 0
    waits: list[int] = field(default_factory=list)  # ns, admitted requests


def arrivals(rate: float, seconds: float, seed: int) -> list[tuple[float, int]]:
    """(time in s, class) at 2 x ``rate``, Poisson, classes drawn by SHARES."""
    rng = random.Random(seed)
    t, out = 0.0, []
    while True:
        t += rng.expovariate(2 * rate)
        if t >= seconds:
            return out
        out.append((t, rng.choices((0, 1, 2), SHARES)[0]))


STRATEGIES: dict[str, dict | None] = {
    "plain rejection": None,
    "FIFO queue": {"classes": 1, "max_queue": 3 * MAX_QUEUE},  # same total buffer
    "strict priority": {"classes": 3},
    "weighted 3:2:1": {"weights": (3, 2, 1)},
    "weighted 3:2:1, LIFO": {"weights": (3, 2, 1), "lifo": True},
}


def queue_args(kwargs: dict) -> dict:
    return {"max_queue": MAX_QUEUE, "max_wait": MAX_WAIT, **kwargs}


def offered(stream: list[tuple[float, int]]) -> list[Outcome]:
    """One Outcome per class, with the requests the stream offers it counted."""
    out = [Outcome() for _ in SHARES]
    for _, c in stream:
        out[c].offered += 1
    return out


def reject_plainly(bucket: TokenBucket, out: Outcome) -> None:
    """The strategy without a queue: admitted now, or refused now."""
    if bucket.acquire("rule").allowed:
        out.admitted += 1
        out.waits.append(0)
    else:
        out.full += 1


async def paced(stream: list[tuple[float, int]]) -> AsyncIterator[int]:
    """Each arrival's class, at its time (seconds from now) on the event loop's clock."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for t, c in stream:
        delay = start + t - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        yield c


async def serve(q: AdmissionQueue, out: list[Outcome], c: int, now: Callable[[], int]) -> None:
    priority = min(c, q.classes - 1)
    start = now()
    try:
        await q.acquire_async("rule", priority=priority)
    except QueueFull:
        out[c].full += 1
    except DeadlineExceeded:
        out[c].busy += 1
    else:
        out[c].admitted += 1
        out[c].waits.append(now() - start)


def simulate(kwargs: dict | None, stream: list[tuple[float, int]], rate: float) -> list[Outcome]:
    """Discrete-event run on a manual clock: jump to the next arrival or queue wake-up."""
    clock = Manual()
    t0 = clock.now
    bucket = TokenBucket(rate=rate, burst=BURST, clock=clock)
    out = offered(stream)
    if kwargs is None:
        for t, c in stream:
            clock.now = t0 + round(t * 1e9)
            reject_plainly(bucket, out[c])
        return out
    q = AdmissionQueue(bucket, clock=clock, auto_poll=False, **queue_args(kwargs))

    async def main() -> None:
        tasks, i = [], 0
        times = [t0 + round(t * 1e9) for t, _ in stream]
        while i < len(stream) or q.depth():
            wake = q.next_wake()
            nxt = times[i] if i < len(stream) else None
            clock.now = max(clock.now, min(t for t in (wake, nxt) if t is not None))
            while i < len(stream) and times[i] <= clock.now:
                tasks.append(asyncio.create_task(serve(q, out, stream[i][1], clock)))
                i += 1
            for _ in range(3):
                await asyncio.sleep(0)
            q.poll()
            for _ in range(3):
                await asyncio.sleep(0)
        await asyncio.gather(*tasks)

    asyncio.run(main())
    return out


def realtime(stream: list[tuple[float, int]], rate: float) -> dict[str, list[Outcome]]:
    """The same on the real clock, every strategy at once in one event loop (each with its
    own bucket), so machine noise hits them alike; the queues' loop timers admit."""
    results: dict[str, list[Outcome]] = {}
    setups = []
    for name, kwargs in STRATEGIES.items():
        out = offered(stream)
        bucket = TokenBucket(rate=rate, burst=BURST)
        q = None if kwargs is None else AdmissionQueue(bucket, **queue_args(kwargs))
        results[name] = out
        setups.append((bucket, q, out))

    async def main() -> None:
        tasks: list[asyncio.Task[None]] = []
        async for c in paced(stream):
            for bucket, q, out in setups:
                if q is not None:
                    tasks.append(asyncio.create_task(serve(q, out, c, time.monotonic_ns)))
                else:
                    reject_plainly(bucket, out[c])
        await asyncio.gather(*tasks)

    asyncio.run(main())
    for _, q, _ in setups:
        if q is not None:
            q.close()
    return results


# --- part 3: the decision service -------------------------------------------------------

# rule name -> (queue settings, priority each class is sent with; None = its own class)
SERVICE_STRATEGIES: dict[str, tuple[str | None, int | None]] = {
    "plain rejection": (None, None),
    "FIFO queue": (f"{{mode: strict, max_queue: {3 * MAX_QUEUE}}}", 2),
    "strict priority": (f"{{mode: strict, max_queue: {MAX_QUEUE}}}", None),
    "weighted 3:2:1": (f"{{weights: [3, 2, 1, 1], max_queue: {MAX_QUEUE}}}", None),
}


def service_config(rate: float) -> str:
    lines = ["domain: bench", "descriptors:"]
    for i, (queue, _) in enumerate(SERVICE_STRATEGIES.values()):
        extra = f", queue: {queue}" if queue else ""
        lines.append(f"  - key: s{i}")
        lines.append(
            f"    rate_limit: {{unit: second, requests_per_unit: {int(rate)}, "
            f"algorithm: token_bucket, burst: {BURST}, name: s{i}{extra}}}"
        )
    lines += ["  - key: free", "    rate_limit: {unit: second, requests_per_unit: 1000000000,"]
    lines += ["                 algorithm: token_bucket, name: free}"]
    lines += ["  - key: paced", f"    rate_limit: {{unit: second, requests_per_unit: {PACED},"]
    lines += [f"                 algorithm: token_bucket, burst: {PACED_BURST}, name: paced,"]
    lines += ["                 queue: {max_queue: 100000}}"]
    return "\n".join(lines) + "\n"


PACED = 2000  # admissions/s of the rule the service-CPU cells queue at
# 10 ms of tokens: more than the event loop's timer granularity (~1 ms), so each wake-up
# admits what came due since the last one and the queue keeps up with the rate.
PACED_BURST = 20


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def service_cpu(target: str, pid: int, n: int, rounds: int) -> dict[str, float]:
    """Service CPU per RPC: n concurrent Decides answered at once, vs n held in the queue
    of a PACED/s rule and admitted one by one (enqueue, timer, admission, wake-up)."""
    cells = {
        "n concurrent Decides, answered at once (free rule)": ("free", 0.0),
        f"n concurrent Decides, queued, admitted at {PACED}/s (burst {PACED_BURST})": (
            "paced",
            30.0,
        ),
    }
    best = dict.fromkeys(cells, float("inf"))

    async def burst(stub, rule: str, wait: float, tag: int) -> int:  # type: ignore[no-untyped-def]
        check = v1.Check(domain="bench", rule=rule, key=f"cpu{tag}", max_wait=wait)
        request = v1.DecideRequest(checks=[check])
        answers = await asyncio.gather(*(stub.Decide(request, timeout=60) for _ in range(n)))
        return sum(a.results[0].allowed for a in answers)

    async def main() -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = v1.LimiterStub(channel)
            for r in range(rounds):
                for name, (rule, wait) in cells.items():
                    await asyncio.sleep(0.2)  # let the service go idle
                    before = cpu_seconds(pid)
                    admitted = await burst(stub, rule, wait, r)
                    used = cpu_seconds(pid) - before
                    assert admitted == n, (name, admitted)
                    best[name] = min(best[name], used / n * 1e6)

    asyncio.run(main())
    return best


@contextlib.contextmanager
def service_process(config: str):  # type: ignore[no-untyped-def]
    """A ``limiter serve`` on free ports for the duration of the block; yields
    (target, pid)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "rules.yaml")
        with open(path, "w") as f:
            f.write(config)
        port = free_port()
        command = [
            sys.executable, "-m", "limiter.server.cli", "serve", "--config", path,
            "--host", "127.0.0.1", "--grpc-port", str(port), "--http-port", str(free_port()),
            "--log-level", "warning",
        ]  # fmt: skip
        proc = subprocess.Popen(command, cwd=ROOT)
        try:
            wait_for_port(port, timeout=30)
            yield f"127.0.0.1:{port}", proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def service_overload(
    target: str, stream: list[tuple[float, int]]
) -> tuple[dict[str, list[Outcome]], dict[str, list[float]]]:
    """Every strategy's rule gets the same arrivals at once; returns outcomes by class and,
    per strategy, RPC latency minus the wait (the service's + transport's own time), ms."""
    results = {name: [Outcome() for _ in SHARES] for name in SERVICE_STRATEGIES}
    overhead: dict[str, list[float]] = {name: [] for name in SERVICE_STRATEGIES}

    async def one(stub, name: str, rule: str, c: int, priority: int | None) -> None:  # type: ignore[no-untyped-def]
        queued = SERVICE_STRATEGIES[name][0] is not None
        out = results[name][c]
        check = v1.Check(
            domain="bench",
            rule=rule,
            key="k",
            priority=priority or c + 1,
            max_wait=MAX_WAIT if queued else 0.0,
        )
        start = time.perf_counter()
        result = (await stub.Decide(v1.DecideRequest(checks=[check]), timeout=30)).results[0]
        overhead[name].append((time.perf_counter() - start - result.waited) * 1e3)
        if result.allowed:
            out.admitted += 1
            out.waits.append(round(result.waited * 1e9))
        elif result.code == v1.Result.QUEUE_TIMEOUT:
            out.busy += 1
        else:
            out.full += 1

    async def main() -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = v1.LimiterStub(channel)
            await stub.Decide(v1.DecideRequest(checks=[v1.Check(domain="bench", rule="free")]))
            tasks: list[asyncio.Task[None]] = []
            async for c in paced(stream):
                for i, (name, (_, priority)) in enumerate(SERVICE_STRATEGIES.items()):
                    results[name][c].offered += 1
                    tasks.append(asyncio.create_task(one(stub, name, f"s{i}", c, priority)))
            await asyncio.gather(*tasks)

    asyncio.run(main())
    return results, overhead


def service_cost(target: str, n: int, rounds: int) -> dict[str, float]:
    """Sequential Decide RPCs on a rule that always admits: median us per RPC, per cell."""
    cells = {
        "Decide, max_wait=0 (answered at once)": 0.0,
        "Decide, max_wait=1 s, admitted at once": 1.0,
    }
    best: dict[str, list[float]] = {name: [] for name in cells}

    async def main() -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = v1.LimiterStub(channel)
            for _ in range(rounds):
                for name, wait in cells.items():
                    request = v1.DecideRequest(
                        checks=[v1.Check(domain="bench", rule="free", key="c", max_wait=wait)]
                    )
                    t0 = time.perf_counter_ns()
                    for _ in range(n):
                        await stub.Decide(request, timeout=10)
                    best[name].append((time.perf_counter_ns() - t0) / n / 1e3)

    asyncio.run(main())
    return {name: min(v) for name, v in best.items()} | {
        f"{name} (median of rounds)": sorted(v)[len(v) // 2] for name, v in best.items()
    }


def overhead_table(overhead: dict[str, list[float]]) -> list[str]:
    lines = ["| strategy | p50 ms | p99 ms |", "|---|---:|---:|"]
    for name, values in overhead.items():
        s = sorted(values)
        p50, p99 = s[len(s) // 2], s[min(len(s) - 1, int(0.99 * len(s)))]
        lines.append(f"| {name} | {p50:.2f} | {p99:.2f} |")
    return lines


def pct(waits: list[int], p: float) -> float:
    if not waits:
        return float("nan")
    s = sorted(waits)
    return s[min(len(s) - 1, int(p * len(s)))] / 1e6


# --- report -------------------------------------------------------------------------


def machine() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{cpu_model()}, {os.cpu_count()} CPUs (load average {load} at the end), "
        f"Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}, git {git_revision()}"
    )


def cost_table(title: str, res: dict[str, float], unit: str) -> list[str]:
    lines = [f"| {title} | {unit} |", "|---|---:|"]
    lines += [f"| {name} | {v:,.0f} |" for name, v in res.items()]
    return lines


def overload_table(results: dict[str, list[Outcome]]) -> list[str]:
    lines = [
        "| strategy | class | offered | admitted | busy (deadline) | rejected | "
        "p50 wait ms | p99 wait ms | max wait ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, outs in results.items():
        for c, o in enumerate(outs):
            lines.append(
                f"| {name} | {c} | {o.offered} | {o.admitted} ({o.admitted / o.offered:.0%}) "
                f"| {o.busy} | {o.full} | {pct(o.waits, 0.5):.1f} | {pct(o.waits, 0.99):.1f} "
                f"| {max(o.waits, default=0) / 1e6:.1f} |"
            )
        total = sum(o.admitted for o in outs)
        lines.append(f"| {name} | all | {sum(o.offered for o in outs)} | {total} | | | | | |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller run (smoke test)")
    ap.add_argument("--out", default=DEFAULT_OUT, help="markdown file to write")
    ap.add_argument("--no-service", action="store_true", help="skip part 3 (the service)")
    args = ap.parse_args()
    quick = args.quick

    print("part 1: cost", file=sys.stderr)
    kern = measure(kernel_cells(1000), 20_000 if quick else 200_000, 3 if quick else 9)
    adm = measure(admission_cells(), 2_000 if quick else 20_000, 3 if quick else 7)

    sim_rate, sim_seconds = 100.0, 20.0 if quick else 120.0
    rt_rate, rt_seconds = 200.0, 2.0 if quick else 20.0
    print("part 2: overload, manual clock", file=sys.stderr)
    stream = arrivals(sim_rate, sim_seconds, seed=1)
    sim = {name: simulate(kw, stream, sim_rate) for name, kw in STRATEGIES.items()}
    print("part 2: overload, real clock", file=sys.stderr)
    rt_stream = arrivals(rt_rate, rt_seconds, seed=2)
    real = realtime(rt_stream, rt_rate)
    svc_rate, svc_seconds = 50.0, 3.0 if quick else 15.0
    service_doc: list[str] = []
    if not args.no_service:
        print("part 3: the service", file=sys.stderr)
        svc_stream = arrivals(svc_rate, svc_seconds, seed=3)
        with service_process(service_config(svc_rate)) as (target, pid):
            cost = service_cost(target, 200 if quick else 1000, 3 if quick else 7)
            cpu_n = 500 if quick else 1000  # 2000 at once on one channel: some CANCELLED
            cpu = service_cpu(target, pid, cpu_n, 2 if quick else 5)
            svc, overhead = service_overload(target, svc_stream)
        service_doc = [
            "## The decision service",
            "",
            "A real `limiter serve` (in-memory), one grpc.aio client channel in this process.",
            "",
            "Per-RPC cost of asking to wait when the rule admits at once (sequential unary",
            "Decide RPCs, one check; minimum and median over interleaved rounds):",
            "",
            *cost_table("Decide", cost, "us per RPC"),
            "",
            f"Service CPU time per RPC (user + system, from /proc; n = {cpu_n} concurrent "
            "Decide RPCs from one channel; minimum over interleaved rounds). The difference "
            "is what queueing costs the service per held request: entering the rule's "
            "queue, timer wake-ups, admission and resuming the held RPC:",
            "",
            *cost_table("burst", cpu, "service CPU us per RPC"),
            "",
            f"Wait by class at 2x overload through the service: one token-bucket rule per "
            f"strategy at {svc_rate:g}/s (burst {BURST}); Poisson arrivals at "
            f"{2 * svc_rate:g}/s for {svc_seconds:g} s sent to every rule at once (so "
            f"{2 * svc_rate * len(SERVICE_STRATEGIES):g} RPC/s in all), classes as above "
            f"(priorities CRITICAL_PLUS, CRITICAL, SHEDDABLE_PLUS; the FIFO rule gets them all "
            f"as CRITICAL, one class); max_wait {MAX_WAIT:g} s (plain rejection: 0). Waits "
            "are the service's `waited` answers; busy = QUEUE_TIMEOUT; rejected = OVER_LIMIT "
            "at once (queue full, or plain rejection).",
            "",
            *overload_table(svc),
            "",
            "RPC latency minus `waited` (what holding adds on top of the wait itself: the",
            "service's and the transport's time), all RPCs of each rule:",
            "",
            *overhead_table(overhead),
            "",
        ]

    doc = [
        "# Queued admission benchmark",
        "",
        f"Command: `python benchmarks/queue_bench.py{' --quick' if quick else ''}` "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).",
        f"Machine: {machine()}.",
        "",
        "## Cost per request",
        "",
        "Kernel cells: one push and one pop (or cancel) per request around a backlog of",
        "1000 items, three classes; Python method calls included. Minimum over interleaved",
        "rounds.",
        "",
        *cost_table("kernel (push + pop)", kern, "ns per request"),
        "",
        *cost_table("AdmissionQueue path", adm, "ns per request"),
        "",
        "## Wait by class at 2x overload",
        "",
        f"Token bucket at {sim_rate:g}/s (burst {BURST}); Poisson arrivals at "
        f"{2 * sim_rate:g}/s for {sim_seconds:g} s, classes 0/1/2 = "
        f"{SHARES[0]:.0%}/{SHARES[1]:.0%}/{SHARES[2]:.0%} of requests; max wait {MAX_WAIT:g} s; "
        f"queue bound {MAX_QUEUE} per class ({3 * MAX_QUEUE} for the single FIFO class). "
        "Manual clock (discrete-event run through the real AdmissionQueue); same arrivals for "
        "every strategy. Waits are of admitted requests; busy = deadline passed while waiting; "
        "rejected = queue full (plain rejection: refused).",
        "",
        *overload_table(sim),
        "",
        f"Real clock: token bucket at {rt_rate:g}/s (burst {BURST}), arrivals at "
        f"{2 * rt_rate:g}/s for {rt_seconds:g} s; all strategies side by side in one event loop "
        "(each with its own bucket, same arrivals), admissions driven by the queues' event-loop "
        "timers; waits as seen by the awaiting task.",
        "",
        *overload_table(real),
        "",
        *service_doc,
    ]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(doc))
    print("\n".join(doc))


if __name__ == "__main__":
    main()
