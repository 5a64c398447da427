"""Decision service throughput and latency vs a no-op gRPC server, in the same run.

For each target (a no-op grpc.aio server answering the same protos with a constant
response, then ``limiter serve`` on the in-memory backend, on Redis, and with
``--workers``), a grpc.aio load generator in this process measures

- max: calls/s with many concurrent calls in flight (closed loop, ``--concurrency``);
- p50/p99 at 50% of that target's own max, with open-loop constant-rate arrivals
  timed from each call's *scheduled* send time (no coordinated omission).

Targets are measured interleaved, ``--repeats`` times, and each number is the
median over repeats, so machine noise hits every target alike; ratios to the no-op
server are taken per repeat (same minute, same load) before the median. Every
measurement records the 1-minute load average, reported as a range per row. RLS
calls carry one descriptor over 10,000 distinct users; native ``Decide`` calls carry
each of the ``--batch`` sizes of checks (1, the like-for-like call, and 100 by default).
``--baseline DIR`` also measures the service of another checkout (an A/B in one run).
Run: ``python benchmarks/service_bench.py [--redis auto] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from limiter.server import v1  # noqa: E402

from tests.support import RedisServer, free_port, wait_for_port  # noqa: E402

CONFIG = """
domain: bench
descriptors:
  - key: user
    rate_limit: {unit: second, requests_per_unit: 1000000, name: per-user}
  - key: tenant
    rate_limit: {unit: second, requests_per_unit: 1000000, algorithm: token_bucket,
                 name: tenant}
"""
USERS = 10_000
# Runs ``limiter serve`` from another checkout (``--baseline``): its own limiter package,
# with its server/ as limiter.server, as its install would map them.
BASELINE_BOOT = (
    "import runpy, sys; root = sys.argv.pop(1); sys.path.insert(0, root); import limiter; "
    "limiter.__path__.append(root); "
    "runpy.run_module('limiter.server.cli', run_name='__main__', alter_sys=True)"
)


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


# --- the no-op server ---------------------------------------------------------------


async def noop_server(port: int, batches: list[int]) -> None:
    """RLS + limiter.v1 answering constant responses shaped like the real ones."""
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
    # One constant answer per batch size, picked by the request's number of checks.
    decide_answers = {
        batch: v1.DecideResponse(
            results=[
                v1.Result(allowed=True, code=1, limit=10**6, remaining=999) for _ in range(batch)
            ]
        )
        for batch in batches
    }

    class Noop(rls_pb2_grpc.RateLimitServiceServicer):
        async def ShouldRateLimit(self, request, context):
            return rls_answer

        async def Decide(self, request, context):
            return decide_answers[len(request.checks)]

        async def Release(self, request, context):
            return v1.ReleaseResponse()

        async def Observe(self, request, context):
            return v1.ObserveResponse()

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(Noop(), server)
    v1.add_limiter_servicer(server, Noop())
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


# --- load generation ----------------------------------------------------------------


async def closed_loop(
    call: Callable, requests: list, concurrency: int, seconds: float, errors: list[str]
) -> tuple[float, int]:
    """(calls/s, calls) with ``concurrency`` calls always in flight; failures go to errors."""
    count = 0
    end = time.perf_counter() + seconds

    async def worker(offset: int) -> None:
        nonlocal count
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
    call: Callable, requests: list, rate: float, seconds: float, errors: list[str]
) -> list[float]:
    """Latencies (s) of calls sent at a constant ``rate``, timed from their scheduled start."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    pending: set[asyncio.Task[None]] = set()
    total = int(rate * seconds)

    async def one(i: int, scheduled: float) -> None:
        try:
            await call(requests[i % len(requests)], timeout=10)
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
    p50: float
    p99: float
    errors: int
    load: float  # 1-minute load average when the measurement ended


@dataclass
class Target:
    name: str
    command: list[str]
    port: int
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log: Any = None  # the server's stderr (shown if it fails to start)
    results: dict[str, list[Result]] = field(default_factory=dict)

    def start(self) -> None:
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (lives until stop())
        self.proc = subprocess.Popen(
            self.command,
            cwd=ROOT,
            env={**os.environ, **self.env},
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        try:
            wait_for_port(self.port, timeout=30)
        except TimeoutError:
            self.log.seek(0)
            tail = self.log.read()[-2000:].decode(errors="replace")
            raise RuntimeError(f"{self.name} did not start:\n{tail}") from None
        time.sleep(0.5)

    def cpu_seconds(self) -> float:
        """CPU time of the server process and its direct children (workers)."""
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
        total = 0
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        if self.log is not None:
            self.log.close()


async def measure(target: Target, api: str, args: argparse.Namespace) -> Result:
    errors: list[str] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{target.port}") as channel:
        if api == "rls":
            call, requests = rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit, RLS
        else:
            call, requests = v1.LimiterStub(channel).Decide, NATIVE[int(api.removeprefix("x"))]
        await closed_loop(call, requests, args.concurrency, 0.5, errors)  # warm up
        cpu = target.cpu_seconds()
        best, calls = await closed_loop(call, requests, args.concurrency, args.seconds, errors)
        cpu = target.cpu_seconds() - cpu
        latencies = await open_loop(call, requests, best / 2, args.seconds, errors)
    return Result(
        best, cpu / max(calls, 1), percentile(latencies, 0.5), percentile(latencies, 0.99),
        len(errors), os.getloadavg()[0],
    )  # fmt: skip


RLS: list = []
NATIVE: dict[int, list] = {}  # batch size -> requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64, help="closed-loop calls in flight")
    parser.add_argument(
        "--batch", default="1,100", help="checks per native Decide (comma-separated sizes)"
    )
    parser.add_argument("--redis", default="auto", help="URL, 'auto' (start one) or 'none'")
    parser.add_argument("--workers", type=int, default=2, help="also measure --workers N (Redis)")
    parser.add_argument("--out", type=Path, help="write a markdown report here")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="also measure the service of this checkout (e.g. a git worktree of an older "
        "commit, built with `python setup.py build_ext --inplace`) in memory and on Redis",
    )
    parser.add_argument("--noop-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.batches = [int(b) for b in args.batch.split(",")]
    if args.noop_server:
        asyncio.run(noop_server(args.noop_server, args.batches))
        return 0
    RLS.extend(rls_requests())
    NATIVE.update({b: native_requests(b) for b in args.batches})
    config = Path(tempfile.mkdtemp(prefix="limiter-bench-")) / "bench.yaml"
    config.write_text(CONFIG)
    redis_server = None
    redis_url = None if args.redis == "none" else args.redis
    if args.redis == "auto":
        redis_server = RedisServer().start()
        redis_url = redis_server.url

    def serve(name: str, *extra: str, root: Path | None = None) -> Target:
        port = free_port()
        launch = ["-m", "limiter.server.cli"] if root is None else ["-c", BASELINE_BOOT, str(root)]
        command = [
            sys.executable, *launch, "serve", "--config", str(config),
            "--host", "127.0.0.1", "--grpc-port", str(port), "--http-port", str(free_port()),
            "--log-level", "warning", *extra,
        ]  # fmt: skip
        return Target(name, command, port)

    noop_port = free_port()
    targets = [
        Target(
            "no-op grpc.aio",
            [sys.executable, __file__, "--noop-server", str(noop_port), "--batch", str(args.batch)],
            noop_port,
        ),
        serve("limiter, memory"),
    ]
    if redis_url:
        targets.append(serve("limiter, redis", "--redis", redis_url))
        if args.workers > 1:
            targets.append(
                serve(
                    f"limiter, redis, {args.workers} workers",
                    "--redis",
                    redis_url,
                    "--workers",
                    str(args.workers),
                )
            )
    if args.baseline:
        baseline = args.baseline.resolve()
        targets.append(serve("baseline, memory", root=baseline))
        if redis_url:
            targets.append(serve("baseline, redis", "--redis", redis_url, root=baseline))
    try:
        for target in targets:
            target.start()
        for repeat in range(args.repeats):
            for api in ("rls", *(f"x{b}" for b in args.batches)):
                for target in targets:
                    result = asyncio.run(measure(target, api, args))
                    target.results.setdefault(api, []).append(result)
                    print(
                        f"[{repeat + 1}/{args.repeats}] {api:6} {target.name:32} "
                        f"max {result.max_rate:8.0f} calls/s  "
                        f"cpu {result.cpu_per_call * 1e6:6.0f} us/call  "
                        f"p50 {result.p50 * 1e3:6.2f} ms  p99 {result.p99 * 1e3:6.2f} ms  "
                        f"errors {result.errors}  load {result.load:.1f}",
                        flush=True,
                    )
    finally:
        for target in targets:
            target.stop()
        if redis_server is not None:
            redis_server.stop()
    report = render(targets, args)
    print(report)
    if args.out:
        args.out.write_text(report)
    return 0


def render(targets: list[Target], args: argparse.Namespace) -> str:
    lines = [
        f"`python benchmarks/service_bench.py {' '.join(sys.argv[1:])}`",
        "",
        f"Medians of {args.repeats} interleaved repeats, {args.seconds:g} s each; closed loop "
        f"with {args.concurrency} calls in flight for max, open loop at 50% of each target's "
        f"own max for latency; {os.cpu_count()} CPUs shared by the load generator, the "
        "servers (and Redis). `server CPU` is the server processes' CPU time per call during "
        "the closed loop (Redis excluded): median (min) over repeats. `vs no-op` is the "
        "median over repeats of max calls/s relative to the no-op server's in the same "
        "repeat; `CPU vs no-op` the same for no-op CPU per call / target CPU per call. "
        "`load` is the range of the 1-minute load average seen at the end of each measurement.",
        "",
        "| API | target | max calls/s | decisions/s | vs no-op | server CPU µs/call "
        "| CPU vs no-op | p50 ms | p99 ms | errors | load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for api in ("rls", *(f"x{b}" for b in args.batches)):
        per_call = 1 if api == "rls" else int(api.removeprefix("x"))
        label = "RLS ShouldRateLimit" if api == "rls" else f"native Decide x{per_call}"
        base = targets[0].results[api]
        for target in targets:
            rows = target.results[api]
            rate = statistics.median(r.max_rate for r in rows)
            cpu = statistics.median(r.cpu_per_call for r in rows)
            low = min(r.cpu_per_call for r in rows)
            pairs = list(zip(rows, base, strict=True))
            vs = statistics.median(r.max_rate / b.max_rate for r, b in pairs)
            cpu_vs = statistics.median(b.cpu_per_call / r.cpu_per_call for r, b in pairs)
            p50 = statistics.median(r.p50 for r in rows)
            p99 = statistics.median(r.p99 for r in rows)
            loads = [r.load for r in rows]
            lines.append(
                f"| {label} | {target.name} | {rate:,.0f} | {rate * per_call:,.0f} | "
                f"{vs:.0%} | {cpu * 1e6:,.0f} ({low * 1e6:,.0f}) | {cpu_vs:.0%} | "
                f"{p50 * 1e3:.2f} | {p99 * 1e3:.2f} | {sum(r.errors for r in rows)} | "
                f"{min(loads):.1f}-{max(loads):.1f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
