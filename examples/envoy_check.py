"""Envoy-style checks through the SDK against the decision service.

    limiter serve --config examples/ratelimit.yaml &   # gRPC on port 8081
    python examples/envoy_check.py                     # or: --spawn to start one itself

Asks what Envoy's rate-limit filter would ask (ShouldRateLimit with descriptors
built from the request), prints each answer with its RateLimit headers, then asks
the same through the native API in one batched Decide. Each call has Envoy's 20 ms
deadline; if the service is unreachable the failure mode (here: allow) answers, until the
client throttles itself and refuses calls it keeps from the service; and
each line says where its answer came from ([service], [fallback] or [throttled]).
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import grpc
from limiter.clients import LimiterClient, RlsClient
from limiter.server.logs import serving_ports

HERE = Path(__file__).resolve().parent


@contextlib.contextmanager
def spawned_service(port: int, http_port: int) -> Iterator[str]:
    """`limiter serve` on the example rules, for a self-contained run. Port 0 lets it
    bind a free port; its "serving" log line says which."""
    args = [
        sys.executable, "-m", "limiter.server.cli", "serve",
        "--config", str(HERE / "ratelimit.yaml"), "--host", "127.0.0.1",
        "--grpc-port", str(port), "--http-port", str(http_port),
    ]  # fmt: skip
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(args, stderr=log)
        try:
            yield f"127.0.0.1:{_wait_serving(proc, log)['grpc']}"
        finally:
            proc.terminate()
            proc.wait(10)


def _wait_serving(proc: subprocess.Popen, log: IO[str], timeout: float = 30.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log.seek(0)
        for line in log:
            ports = serving_ports(line)
            if ports is not None:
                return ports
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    log.seek(0)
    raise SystemExit(f"limiter serve did not start:\n{log.read()}")


def run(target: str, timeout: float, connect: float) -> None:
    with RlsClient(target, "edge", timeout=timeout, failure_mode="allow") as rls:
        try:
            rls.wait_ready(timeout=connect)
        except grpc.FutureTimeoutError:
            print(f"service at {target} unreachable after {connect:g} s: the failure mode answers")
        requests = [
            ("client 10.0.0.1", [{"remote_address": "10.0.0.1"}]),
            ("api key k1 on /search", [{"api_key": "k1"}, {"api_key": "k1", "path": "/search"}]),
            ("a crawler (shadow mode)", [{"user_agent": "bot-9000"}]),
        ]
        for label, descriptors in requests:
            for attempt in range(12):
                answer = rls.should_rate_limit(descriptors)
                if attempt in (0, 11):
                    verdict = "OK" if answer.allowed else "OVER_LIMIT"
                    headers = "; ".join(f"{k}: {v}" for k, v in answer.response_headers)
                    print(f"{label:26} #{attempt + 1:<2} {verdict:10} [{answer.source}] {headers}")
    with LimiterClient(target, "edge", timeout=timeout, failure_mode="allow") as native:
        decisions = native.decide_batch(
            [
                {"rule": "per-api-key", "key": "k2", "cost": 40},
                {"rule": "per-api-key", "key": "k2", "cost": 40},
                {"rule": "tenant-inflight", "key": "acme", "priority": "sheddable_plus"},
            ]
        )
        for d in decisions:
            print(f"native Decide: allowed={d.allowed} remaining={d.remaining} "
                  f"retry_after={d.retry_after:.2f}s level={d.level} [{d.source}]")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:8081", help="service gRPC address")
    parser.add_argument("--timeout", type=float, default=0.020, help="per-call deadline (s)")
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=1.0,
        help="how long to wait for a connection before the failure mode answers (s)",
    )
    parser.add_argument("--spawn", action="store_true", help="start `limiter serve` first")
    parser.add_argument("--port", type=int, default=0, help="gRPC port with --spawn (0: any)")
    parser.add_argument("--http-port", type=int, default=0, help="HTTP port with --spawn (0: any)")
    args = parser.parse_args()
    if args.spawn:
        with spawned_service(args.port, args.http_port) as target:
            run(target, args.timeout, args.connect_timeout)
    else:
        run(args.target, args.timeout, args.connect_timeout)


if __name__ == "__main__":
    main()
