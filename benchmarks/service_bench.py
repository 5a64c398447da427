"""Decision service throughput and latency vs two no-op gRPC servers, in the same run.

For each target (two no-op grpc.aio servers answering every call with a constant
response, then ``limiter serve`` on the in-memory backend, on Redis, and with
``--workers``), a grpc.aio load generator in this process measures

- max: calls/s with many concurrent calls in flight (closed loop, ``--concurrency``),
  spread over ``--connections`` TCP connections (as Envoy's worker threads open one
  each: with ``--workers`` the kernel spreads connections, not calls, over the
  workers, so one connection would measure one worker);
- p50/p99 at 50% of that target's own max, with open-loop constant-rate arrivals
  timed from each call's *scheduled* send time (no coordinated omission);
- server CPU per call during the closed loop, and with ``--workers`` each worker's
  share of it (from /proc, per process).

The two floors: the *raw* no-op takes and returns bytes (no protobuf at all: the
transport alone, as ``limiter serve`` handles raw bytes with its own codec); the
*protobuf* no-op parses each request into protobuf objects and serialises a
constant answer (what a servicer written with the generated stubs costs at least).

Targets are measured interleaved, ``--repeats`` times, and each number is the
median over repeats, so machine noise hits every target alike; ratios to the no-op
servers are taken per repeat (same minute, same load) before the median. Every
measurement records the 1-minute load average, reported as a range per row.
Shapes: RLS calls carry one descriptor over 10,000 distinct users; native ``Decide``
calls carry each of the ``--batch`` sizes of checks of one token-bucket rule (1, the
like-for-like call, and 100: the best case, one run of one rule); ``--mixed N`` adds
``Decide`` calls of N checks over four rules (fixed window, token bucket, sliding
window, leaky bucket) and four priorities, shuffled, so runs of one rule and
priority are short. ``--baseline DIR`` also measures the service of another checkout
(an A/B in one run).
Redis targets run with a store timeout of ``--redis-timeout`` (0.25 s) instead of the
service's 20 ms default: at 20 ms, batches of 100 checks from 64 calls in flight on two
shared cores time out now and then, and a check the failure mode answers costs less
than a decision, so the rows would not compare the same work.
Run: ``python benchmarks/service_bench.py [--redis auto] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from limiter.server import v1  # noqa: E402

from tests.support import RedisServer, free_port, start_on_free_ports, wait_ready  # noqa: E402

CONFIG = """
domain: bench
descriptors:
  - key: user
    rate_limit: {unit: second, requests_per_unit: 1000000, name: per-user}
  - key: tenant
    rate_limit: {unit: second, requests_per_unit: 1000000, algorithm: token_bucket,
                 name: tenant}
  - key: slide
    rate_limit: {unit: second, requests_per_unit: 1000000, algorithm: sliding_window,
                 name: slide}
  - key: leak
    rate_limit: {unit: second, requests_per_unit: 1000000, algorithm: leaky_bucket,
                 name: leak}
"""
MIXED_RULES = ("per-user", "tenant", "slide", "leak")
PRIORITIES = (1, 2, 3, 4)  # critical_plus, critical, sheddable_plus, sheddable
USERS = 10_000
# Runs ``limiter serve`` from another checkout (``--baseline``): its own limiter package,
# with its server/ as limiter.server, as its install would map them.
BASELINE_BOOT = (
    f"import runpy, sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import checkout; "
    "checkout.use(sys.argv.pop(1)); "
    "runpy.run_module('limiter.server.cli', run_name='__main__', alter_sys=True)"
)
# Printed once by each `limiter serve` process when it serves (at --log-level info).
SERVING = '"msg": "serving"'


@dataclass(frozen=True)
class Shape:
    """One kind of call: ``api`` names it in the output, ``checks`` per call."""

    api: str
    label: str
    checks: int
    requests: list

    @property
    def rls(self) -> bool:
        return self.api == "rls"


def rls_requests() -> list[rls_pb2.RateLimitRequest]:
    return [
        rls_pb2.RateLimitRequest(
            domain="bench", descriptors=[{"entries": [{"key": "user", "value": f"u{i}"}]}]
        )
        for i in range(USERS)
    ]


def native_requests(batch: int) -> list[object]:
    return [
        v1.DecideRequest(
            checks=[
                v1.Check(domain="bench", rule="tenant", key=f"t{(i * batch + j) % USERS}")
                for j in range(batch)
            ]
        )
        for i in range(100)
    ]


def mixed_requests(size: int) -> list[object]:
    """``size`` checks per request over four rules and four priorities, shuffled (a fixed
    seed): a run of one rule and priority is one check long three times in four."""
    rng = random.Random(7)
    return [
        v1.DecideRequest(
            checks=[
                v1.Check(
                    domain="bench",
                    rule=rng.choice(MIXED_RULES),
                    key=f"m{(i * size + j) % USERS}",
                    priority=rng.choice(PRIORITIES),
                )
                for j in range(size)
            ]
        )
        for i in range(100)
    ]


def shapes(args: argparse.Namespace) -> list[Shape]:
    out = [Shape("rls", "RLS ShouldRateLimit", 1, rls_requests())]
    out += [Shape(f"x{b}", f"native Decide x{b}", b, native_requests(b)) for b in args.batches]
    if args.mixed:
        label = f"native Decide x{args.mixed} mixed"
        out.append(Shape(f"mix{args.mixed}", label, args.mixed, mixed_requests(args.mixed)))
    return out


# --- the no-op servers --------------------------------------------------------------


def noop_answers(sizes: set[int]) -> tuple[object, dict[int, object]]:
    """Constant answers shaped like the service's: one RLS answer, one Decide answer per
    number of checks."""
    rls_answer = rls_pb2.RateLimitResponse(overall_code=rls_pb2.RateLimitResponse.OK)
    status = rls_answer.statuses.add(code=rls_pb2.RateLimitResponse.OK, limit_remaining=999)
    status.current_limit.requests_per_unit = 1000000
    status.current_limit.unit = rls_pb2.RateLimitResponse.RateLimit.SECOND
    status.current_limit.name = "per-user"
    status.duration_until_reset.nanos = 500_000_000
    for key, value in (
        ("RateLimit-Policy", '"per-user";q=1000000;w=1'),
        ("RateLimit", '"per-user";r=999;t=1'),
    ):
        rls_answer.response_headers_to_add.add(key=key, value=value)
    rls_answer.request_headers_to_add.add(key="x-limiter-level", value="0")
    decide_answers = {
        n: v1.DecideResponse(
            results=[v1.Result(allowed=True, code=1, limit=10**6, remaining=999) for _ in range(n)]
        )
        for n in sizes
    }
    return rls_answer, decide_answers


async def noop_server(port: int, raw: bool, args: argparse.Namespace) -> None:
    """RLS + limiter.v1 answering constants; ``raw``: bytes in, bytes out (no protobuf)."""
    decide_shapes = [shape for shape in shapes(args) if not shape.rls]
    rls_answer, decide_answers = noop_answers({shape.checks for shape in decide_shapes})
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    if raw:
        rls_bytes = rls_answer.SerializeToString()
        # Without parsing, the answer is picked by request size: the shape whose requests'
        # mean size is nearest (a few comparisons, no decoding).
        by_size = sorted(
            (
                statistics.mean(len(r.SerializeToString()) for r in shape.requests),
                decide_answers[shape.checks].SerializeToString(),
            )
            for shape in decide_shapes
        )

        async def should_rate_limit(request: bytes, context: object) -> bytes:
            return rls_bytes

        async def decide(request: bytes, context: object) -> bytes:
            size = len(request)
            return min(by_size, key=lambda pair: abs(pair[0] - size))[1]

        async def empty(request: bytes, context: object) -> bytes:
            return b""

        unary = grpc.unary_unary_rpc_method_handler
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "envoy.service.ratelimit.v3.RateLimitService",
                    {"ShouldRateLimit": unary(should_rate_limit)},
                ),
                grpc.method_handlers_generic_handler(
                    v1.SERVICE_NAME,
                    {"Decide": unary(decide), "Release": unary(empty), "Observe": unary(empty)},
                ),
            )
        )
    else:

        class Noop(rls_pb2_grpc.RateLimitServiceServicer):
            async def ShouldRateLimit(self, request, context):
                return rls_answer

            async def Decide(self, request, context):
                return decide_answers[len(request.checks)]

            async def Release(self, request, context):
                return v1.ReleaseResponse()

            async def Observe(self, request, context):
                return v1.ObserveResponse()

        rls_pb2_grpc.add_RateLimitServiceServicer_to_server(Noop(), server)
        v1.add_limiter_servicer(server, Noop())
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


# --- load generation ----------------------------------------------------------------


async def closed_loop(
    calls: list[Callable], requests: list, concurrency: int, seconds: float, errors: list[str]
) -> tuple[float, int]:
    """(calls/s, calls) with ``concurrency`` calls always in flight, spread over the
    connections of ``calls``; failures go to errors."""
    count = 0
    end = time.perf_counter() + seconds

    async def worker(offset: int) -> None:
        nonlocal count
        call = calls[offset % len(calls)]
        i = offset
        while time.perf_counter() < end:
            try:
                await call(requests[i % len(requests)], timeout=10)
                count += 1
            except grpc.RpcError as exc:
                errors.append(exc.code().name)
            i += concurrency

    start = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return count / (time.perf_counter() - start), count


async def open_loop(
    calls: list[Callable], requests: list, rate: float, seconds: float, errors: list[str]
) -> list[float]:
    """Latencies (s) of calls sent at a constant ``rate``, timed from their scheduled start,
    round-robin over the connections of ``calls``."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    pending: set[asyncio.Task[None]] = set()
    total = int(rate * seconds)

    async def one(i: int, scheduled: float) -> None:
        try:
            await calls[i % len(calls)](requests[i % len(requests)], timeout=10)
            latencies.append(loop.time() - scheduled)
        except grpc.RpcError as exc:
            errors.append(exc.code().name)

    start = loop.time() + 0.05
    i = 0
    while i < total:
        now = loop.time()
        while i < total and start + i / rate <= now:
            task = asyncio.create_task(one(i, start + i / rate))
            pending.add(task)
            task.add_done_callback(pending.discard)
            i += 1
        await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
    await asyncio.gather(*pending)
    return latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- targets ------------------------------------------------------------------------


@dataclass
class Result:
    max_rate: float  # calls/s, closed loop
    cpu_per_call: float  # server CPU seconds per call during the closed loop
    split: tuple[float, ...]  # each worker's share of that CPU, largest first (--workers)
    p50: float
    p99: float
    errors: int
    load: float  # 1-minute load average when the measurement ended


@dataclass
class Target:
    """A server process: ``command(grpc_port, http_port)`` is its argv; ``workers`` of
    them each print ``ready`` once when they serve (None: ready when the port is)."""

    name: str
    command: Callable[[int, int], list[str]]
    workers: int = 1
    ready: str | None = None
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    results: dict[str, list[Result]] = field(default_factory=dict)

    def start(self) -> None:
        start_on_free_ports(self._spawn)
        time.sleep(0.5)

    def _spawn(self) -> None:
        self.port, http_port = free_port(), free_port()
        self.log = Path(tempfile.mkdtemp(prefix="limiter-bench-")) / "server.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                self.command(self.port, http_port), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            wait_ready(
                self.proc, self.log, self.name, ports=[self.port], line=self.ready,
                count=self.workers, timeout=30,
            )  # fmt: skip
        except Exception:
            self.proc.kill()
            self.proc.wait()
            raise

    def cpu_by_pid(self) -> dict[int, float]:
        """CPU seconds of the server process and of each of its direct children (workers)."""
        assert self.proc is not None
        pids = [self.proc.pid]
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == self.proc.pid:
                    pids.append(int(entry))
        seconds = {}
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            seconds[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return seconds

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


async def measure(target: Target, shape: Shape, args: argparse.Namespace) -> Result:
    errors: list[str] = []
    # One TCP connection per channel: a local subchannel pool stops grpc sharing one.
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [
        grpc.aio.insecure_channel(f"127.0.0.1:{target.port}", options=options)
        for _ in range(args.connections)
    ]
    try:
        if shape.rls:
            calls = [rls_pb2_grpc.RateLimitServiceStub(c).ShouldRateLimit for c in channels]
        else:
            calls = [v1.LimiterStub(c).Decide for c in channels]
        requests = shape.requests
        await closed_loop(calls, requests, args.concurrency, 0.5, errors)  # warm up
        before = target.cpu_by_pid()
        best, count = await closed_loop(calls, requests, args.concurrency, args.seconds, errors)
        after = target.cpu_by_pid()
        latencies = await open_loop(calls, requests, best / 2, args.seconds, errors)
    finally:
        for channel in channels:
            await channel.close()
    spent = {pid: after[pid] - before.get(pid, 0.0) for pid in after}
    workers = sorted(
        (s for pid, s in spent.items() if pid != target.proc.pid), reverse=True
    ) if target.workers > 1 else []  # fmt: skip
    split = tuple(s / sum(workers) for s in workers) if sum(workers) > 0 else ()
    return Result(
        best, sum(spent.values()) / max(count, 1), split, percentile(latencies, 0.5),
        percentile(latencies, 0.99), len(errors), os.getloadavg()[0],
    )  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64, help="closed-loop calls in flight")
    parser.add_argument(
        "--connections", type=int, default=8, help="TCP connections the calls are spread over"
    )
    parser.add_argument(
        "--batch", default="1,100", help="checks per native Decide (comma-separated sizes)"
    )
    parser.add_argument(
        "--mixed", type=int, default=100, help="checks per mixed-rule Decide (0: none)"
    )
    parser.add_argument("--redis", default="auto", help="URL, 'auto' (start one) or 'none'")
    parser.add_argument(
        "--redis-timeout",
        type=float,
        default=0.25,
        help="the Redis targets' store timeout, seconds (see the module docstring)",
    )
    parser.add_argument("--workers", type=int, default=2, help="also measure --workers N (Redis)")
    parser.add_argument("--out", type=Path, help="write a markdown report here")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="also measure the service of this checkout (e.g. a git worktree of an older "
        "commit, built with `python setup.py build_ext --inplace`) in memory and on Redis",
    )
    parser.add_argument("--noop-server", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.batches = [int(b) for b in args.batch.split(",")]
    if args.noop_server:
        asyncio.run(noop_server(args.noop_server, args.raw, args))
        return 0
    kinds = shapes(args)
    config = Path(tempfile.mkdtemp(prefix="limiter-bench-")) / "bench.yaml"
    config.write_text(CONFIG)
    redis_server = None
    redis_url = None if args.redis == "none" else args.redis
    if args.redis == "auto":
        redis_server = RedisServer().start()
        redis_url = redis_server.url
    if redis_url:
        redis_url += ("&" if "?" in redis_url else "?") + f"timeout={args.redis_timeout}"

    def serve(name: str, *extra: str, root: Path | None = None, workers: int = 1) -> Target:
        launch = ["-m", "limiter.server.cli"] if root is None else ["-c", BASELINE_BOOT, str(root)]

        def command(port: int, http_port: int) -> list[str]:
            return [
                sys.executable, *launch, "serve", "--config", str(config),
                "--host", "127.0.0.1", "--grpc-port", str(port), "--http-port", str(http_port),
                "--log-level", "info", *extra,
            ]  # fmt: skip

        return Target(name, command, workers=workers, ready=SERVING)

    def noop(name: str, *flags: str) -> Target:
        shape_args = ("--batch", args.batch, "--mixed", str(args.mixed))
        return Target(
            name, lambda port, _: [sys.executable, __file__, "--noop-server", str(port),
                                   *shape_args, *flags],
        )  # fmt: skip

    targets = [noop("no-op raw bytes", "--raw"), noop("no-op protobuf"), serve("limiter, memory")]
    if redis_url:
        targets.append(serve("limiter, redis", "--redis", redis_url))
        if args.workers > 1:
            workers = str(args.workers)
            targets.append(
                serve(f"limiter, redis, {workers} workers", "--redis", redis_url,
                      "--workers", workers, workers=args.workers)
            )  # fmt: skip
    if args.baseline:
        baseline = args.baseline.resolve()
        targets.append(serve("baseline, memory", root=baseline))
        if redis_url:
            targets.append(serve("baseline, redis", "--redis", redis_url, root=baseline))
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    try:
        for target in targets:
            target.start()
        for repeat in range(args.repeats):
            for shape in kinds:
                for target in targets:
                    result = asyncio.run(measure(target, shape, args))
                    target.results.setdefault(shape.api, []).append(result)
                    split = "/".join(f"{s:.0%}" for s in result.split)
                    print(
                        f"[{repeat + 1}/{args.repeats}] {shape.api:6} {target.name:32} "
                        f"max {result.max_rate:8.0f} calls/s  "
                        f"cpu {result.cpu_per_call * 1e6:6.0f} us/call  "
                        f"p50 {result.p50 * 1e3:6.2f} ms  p99 {result.p99 * 1e3:6.2f} ms  "
                        f"errors {result.errors}  load {result.load:.1f}"
                        + (f"  workers {split}" if split else ""),
                        flush=True,
                    )
    finally:
        for target in targets:
            target.stop()
        if redis_server is not None:
            redis_server.stop()
    ended = time.strftime("%H:%M UTC", time.gmtime())
    report = render(targets, kinds, args, f"{started} to {ended}")
    print(report)
    if args.out:
        args.out.write_text(report)
    return 0


def paired(
    rows: list[Result], base: list[Result], ratio: Callable[[Result, Result], float]
) -> float:
    """Median over repeats of ``ratio(target, floor)`` (both measured in the same repeat)."""
    return statistics.median(ratio(r, b) for r, b in zip(rows, base, strict=True))


def render(targets: list[Target], kinds: list[Shape], args: argparse.Namespace, when: str) -> str:
    raw, protobuf = targets[0], targets[1]
    lines = [
        f"`python benchmarks/service_bench.py {' '.join(sys.argv[1:])}`, {when}",
        "",
        f"Medians of {args.repeats} interleaved repeats, {args.seconds:g} s each; closed loop "
        f"with {args.concurrency} calls in flight over {args.connections} connections for "
        f"max, open loop at 50% of each target's own max for latency; {os.cpu_count()} CPUs "
        "shared by the load generator, the servers (and Redis). `vs raw` / `vs protobuf` is "
        "the median over repeats of max calls/s relative to the raw-bytes / protobuf no-op "
        "server's in the same repeat. `server CPU` is the server processes' CPU time per "
        "call during the closed loop (Redis excluded): median (min) over repeats; `CPU vs "
        "raw` is raw no-op CPU per call / target CPU per call, per repeat, median. `worker "
        "split` is each worker's share of that CPU, per repeat. `load` is the range of the "
        "1-minute load average seen at the end of each measurement.",
        "",
        "| API | target | max calls/s | decisions/s | vs raw | vs protobuf | server CPU "
        "µs/call | CPU vs raw | p50 ms | p99 ms | errors | load | worker split |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for shape in kinds:
        for target in targets:
            rows = target.results[shape.api]
            rate = statistics.median(r.max_rate for r in rows)
            cpu = statistics.median(r.cpu_per_call for r in rows)
            low = min(r.cpu_per_call for r in rows)

            base_raw, base_pb = raw.results[shape.api], protobuf.results[shape.api]
            vs_raw = paired(rows, base_raw, lambda r, b: r.max_rate / b.max_rate)
            vs_pb = paired(rows, base_pb, lambda r, b: r.max_rate / b.max_rate)
            cpu_vs = paired(rows, base_raw, lambda r, b: b.cpu_per_call / r.cpu_per_call)
            p50 = statistics.median(r.p50 for r in rows)
            p99 = statistics.median(r.p99 for r in rows)
            loads = [r.load for r in rows]
            split = " · ".join("/".join(f"{s:.0%}" for s in r.split) for r in rows if r.split)
            lines.append(
                f"| {shape.label} | {target.name} | {rate:,.0f} | {rate * shape.checks:,.0f} | "
                f"{vs_raw:.0%} | {vs_pb:.0%} | {cpu * 1e6:,.0f} ({low * 1e6:,.0f}) | "
                f"{cpu_vs:.0%} | {p50 * 1e3:.2f} | {p99 * 1e3:.2f} | "
                f"{sum(r.errors for r in rows)} | {min(loads):.1f}-{max(loads):.1f} | "
                f"{split or '-'} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
