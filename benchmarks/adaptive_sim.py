"""Overload simulation: our adaptive limiter against the published baselines.

A deterministic discrete-event simulation on a virtual clock. The backend is a
c-server FIFO queue with lognormal service times (mean 20 ms, sigma 0.5); its
capacity c / mean steps 1000 -> 400 -> 1600 req/s (c = 20 -> 8 -> 32 workers, as
when replicas fail and autoscale). Open-loop arrivals come at a constant rate of
k x the capacity in force (k = 2 and 10; no coordinated omission). Clients give up
after ``TIMEOUT`` s: a call still queued then is never served, one in service
finishes but counts as dropped. The SLO: P99 of admitted calls <= 100 ms.

Our limiter runs through the real compiled kernel (``limiter._core.AdaptiveLimiter``
with the virtual clock injected); the baselines (adaptive_baselines.py) and a static
limit set to the initial capacity see the same arrivals and service times.

Run: ``.venv/bin/python benchmarks/adaptive_sim.py`` (under a minute). Writes PNG plots
and ``benchmarks/results/adaptive.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import math
import os
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adaptive_baselines import Aimd, ConcurrencyLimit, EnvoyGradient, Gradient2, Vegas

from limiter._core import AdaptiveLimiter

TARGET = 0.100  # s, P99 target
MEAN_SERVICE = 0.020  # s
SIGMA = 0.5  # lognormal shape of service time
TIMEOUT = 1.0  # s, client gives up
PHASES = ((0.0, 20), (20.0, 8), (40.0, 32))  # (start s, workers): 1000, 400, 1600 req/s
DURATION = 60.0
SETTLE = 5.0  # s after a step before a window counts as steady state (convergence budget)
RESULTS = Path(__file__).resolve().parent / "results"


def workers_at(t: float) -> int:
    c = PHASES[0][1]
    for start, w in PHASES:
        if t >= start:
            c = w
    return c


def capacity_at(t: float) -> float:
    return workers_at(t) / MEAN_SERVICE


# --- admission policies: ours (compiled kernel) and the baselines -----------------


class Ours:
    """limiter._core.AdaptiveLimiter on the virtual clock; permits measure latency."""

    def __init__(self, mode: str, **knobs: object) -> None:
        self.now_ns = 0
        self.lim = AdaptiveLimiter(target_latency=TARGET, percentile=0.99, mode=mode,
                                   max_limit=100_000, clock=self._clock, **knobs)  # fmt: skip
        self.in_flight = 0

    def _clock(self) -> int:
        return self.now_ns

    def acquire(self, now: float) -> object | None:
        self.now_ns = int(now * 1e9)
        permit = self.lim.acquire()
        return permit if permit.allowed else None

    def complete(self, token: object, now: float, dropped: bool) -> None:
        self.now_ns = int(now * 1e9)
        if dropped:
            token.dropped()
        else:
            token.success()

    @property
    def limit(self) -> float:
        return self.lim.current_limit


class StaticRate:
    """A fixed pacing limit (GCRA, 10 ms burst) at the initial capacity."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.interval = 1.0 / rate
        self.tolerance = max(1.0, rate * 0.01) * self.interval
        self.tat = 0.0

    def acquire(self, now: float) -> object | None:
        tat = max(self.tat, now)
        if tat + self.interval - self.tolerance > now:
            return None
        self.tat = tat + self.interval
        return True

    def complete(self, token: object, now: float, dropped: bool) -> None:
        pass

    @property
    def limit(self) -> float:
        return self.rate


class Concurrency:
    """Enforces a baseline ConcurrencyLimit: admit while in flight < limit."""

    def __init__(self, algo: ConcurrencyLimit) -> None:
        self.algo = algo
        self.in_flight = 0

    def acquire(self, now: float) -> object | None:
        if self.in_flight >= max(1, int(self.algo.limit)):
            return None
        self.in_flight += 1
        return now

    def complete(self, token: object, now: float, dropped: bool) -> None:
        self.algo.update(now, now - token, self.in_flight, dropped)
        self.in_flight -= 1

    @property
    def limit(self) -> float:
        return self.algo.limit


def policies() -> dict[str, object]:
    """Fresh policies, keyed by the name used in tables and plots."""
    return {
        "ours (rate)": lambda: Ours("rate"),
        "ours (concurrency)": lambda: Ours("concurrency"),
        "static": lambda: StaticRate(capacity_at(0.0)),
        "AIMD": lambda: Concurrency(Aimd()),
        "AIMD (timeout = target)": lambda: Concurrency(Aimd(timeout=TARGET)),
        "Vegas": lambda: Concurrency(Vegas()),
        "Gradient2": lambda: Concurrency(Gradient2()),
        "Envoy gradient": lambda: Concurrency(EnvoyGradient()),
    }


# --- the discrete-event simulation -------------------------------------------------


@dataclass
class Run:
    name: str
    overload: float
    admit: np.ndarray  # admission time of each admitted call
    latency: np.ndarray  # completion - admission, inf when dropped
    offered: int
    limit_t: np.ndarray
    limit_v: np.ndarray
    wall: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)


DONE, TIMEOUT_EV, STEP = 0, 1, 2


def simulate(name: str, policy: object, overload: float, seed: int = 7,
             poisson: bool = False) -> Run:  # fmt: skip
    rng = np.random.default_rng(seed)
    arrivals = np.random.default_rng(seed + 1000)
    mu = math.log(MEAN_SERVICE) - SIGMA**2 / 2
    services = rng.lognormal(mu, SIGMA, size=200_000)
    n_services = 0
    events: list[tuple[float, int, int, int]] = []
    seq = 0
    for start, _ in PHASES[1:]:
        events.append((start, seq, STEP, -1))
        seq += 1
    heapq.heapify(events)
    admit_t: list[float] = []
    latency: list[float] = []
    tokens: list[object] = []
    state: list[int] = []  # 0 queued, 1 in service, 2 finished, 3 gave up
    queue: deque[int] = deque()
    busy = 0
    workers = workers_at(0.0)
    limit_t, limit_v = [], []
    next_sample = 0.0
    t_arr = 0.0
    offered = 0
    wall = time.perf_counter()

    def start_service(i: int, now: float) -> None:
        nonlocal busy, n_services, seq
        state[i] = 1
        busy += 1
        heapq.heappush(events, (now + services[n_services % len(services)], seq, DONE, i))
        n_services += 1
        seq += 1

    while True:
        # After the last arrival, run on until every admitted call has resolved.
        if events and (events[0][0] <= t_arr or t_arr >= DURATION):
            now, _, kind, i = heapq.heappop(events)
            if kind == DONE:
                busy -= 1
                if state[i] == 1:
                    state[i] = 2
                    latency[i] = now - admit_t[i]
                    policy.complete(tokens[i], now, False)
                    tokens[i] = None
                while busy < workers and queue:
                    j = queue.popleft()
                    if state[j] == 0:
                        start_service(j, now)
            elif kind == TIMEOUT_EV:
                if state[i] in (0, 1):
                    state[i] = 3  # a queued call is skipped; one in service runs on
                    policy.complete(tokens[i], now, True)
                    tokens[i] = None
            else:
                workers = workers_at(now)
                while busy < workers and queue:
                    j = queue.popleft()
                    if state[j] == 0:
                        start_service(j, now)
            continue
        now = t_arr
        if now >= DURATION:
            break
        while next_sample <= now:
            limit_t.append(next_sample)
            limit_v.append(policy.limit)
            next_sample += 0.1
        offered += 1
        token = policy.acquire(now)
        gap = 1.0 / (overload * capacity_at(now))
        t_arr = now + (arrivals.exponential(gap) if poisson else gap)
        if token is None:
            continue
        i = len(admit_t)
        admit_t.append(now)
        latency.append(math.inf)
        tokens.append(token)
        state.append(0)
        heapq.heappush(events, (now + TIMEOUT, seq, TIMEOUT_EV, i))
        seq += 1
        if busy < workers:
            start_service(i, now)
        else:
            queue.append(i)
    run = Run(name, overload, np.array(admit_t), np.array(latency), offered,
              np.array(limit_t), np.array(limit_v))  # fmt: skip
    run.wall = time.perf_counter() - wall
    run.metrics = measure(run)
    return run


# --- metrics -----------------------------------------------------------------------


def windows(run: Run, width: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per window of admission time: start, P99 latency (inf if > 1% dropped), good count."""
    starts = np.arange(0.0, DURATION, width)
    idx = np.floor(run.admit / width).astype(int)
    p99 = np.zeros(len(starts))
    good = np.zeros(len(starts))
    for w in range(len(starts)):
        lat = run.latency[idx == w]
        p99[w] = np.quantile(lat, 0.99, method="inverted_cdf") if len(lat) else 0.0
        good[w] = np.count_nonzero(lat <= TARGET)
    return starts, p99, good


def measure(run: Run) -> dict[str, float]:
    starts, p99, good = windows(run)
    cap = np.array([capacity_at(s) for s in starts])
    steady = np.ones(len(starts), dtype=bool)
    for start, _ in PHASES:
        steady &= ~((starts >= start) & (starts < start + SETTLE))
    # Convergence: from the first 1 s window after a step whose good throughput
    # stays within +-10% of the new capacity until the next step.
    conv = []
    bounds = [p[0] for p in PHASES] + [DURATION]
    for k, (start, _) in enumerate(PHASES):
        sel = np.nonzero((starts >= start) & (starts < bounds[k + 1]))[0]
        ok = np.abs(good[sel] - cap[sel]) <= 0.1 * cap[sel]
        ok &= p99[sel] <= TARGET
        t_conv = math.inf
        for j in range(len(sel)):
            if ok[j:].all():
                t_conv = starts[sel[j]] - start
                break
        conv.append(t_conv)
    cv = []
    for k, (start, _) in enumerate(PHASES):
        sel = (run.limit_t >= start + SETTLE) & (run.limit_t < bounds[k + 1])
        v = run.limit_v[sel]
        cv.append(float(np.std(v) / np.mean(v)) if len(v) and np.mean(v) > 0 else 0.0)
    total_good = np.count_nonzero(run.latency <= TARGET)
    capacity_integral = sum(
        (bounds[k + 1] - s) * w / MEAN_SERVICE for k, (s, w) in enumerate(PHASES))  # fmt: skip
    steady_good = good[steady].sum() / cap[steady].sum()
    return {
        "goodput": total_good / capacity_integral,
        "goodput_steady": float(steady_good),
        "slo_all": float(np.mean(p99 <= TARGET)),
        "slo_steady": float(np.mean(p99[steady] <= TARGET)),
        "p99_median": float(np.median(p99)),
        "p99_worst_steady": float(np.max(p99[steady])),
        "conv_1": conv[1],
        "conv_2": conv[2],
        "cv": float(np.mean(cv)),
        "admitted": len(run.admit) / run.offered,
    }


SEGMENTS = ((0.0, 5.0), (5.0, 20.0), (20.0, 25.0), (25.0, 40.0), (40.0, 45.0), (45.0, 60.0))


def lost(run: Run) -> list[float]:
    """Per segment of admission time: capacity x time minus calls completed within target.

    Negative when the backend, by chance, served faster than its mean for a while.
    """
    good_at = run.admit[run.latency <= TARGET]
    bounds = [p[0] for p in PHASES] + [DURATION]
    out = []
    for a, b in SEGMENTS:
        cap = sum(
            max(0.0, min(b, bounds[k + 1]) - max(a, start)) * w / MEAN_SERVICE
            for k, (start, w) in enumerate(PHASES)
        )
        out.append(cap - np.count_nonzero((good_at >= a) & (good_at < b)))
    return out


# --- report --------------------------------------------------------------------------


def fmt_time(x: float) -> str:
    return "never" if math.isinf(x) else f"{x:.0f} s"


def table(runs: list[Run]) -> str:
    lines = [
        "| load | algorithm | goodput | goodput (steady) | SLO windows (steady) | SLO windows "
        "(all) | median P99 | worst steady P99 | converge 1000→400 | converge 400→1600 "
        "| limit CV (steady) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        m = r.metrics
        worst = m["p99_worst_steady"]
        worst_s = "timeout" if math.isinf(worst) else f"{worst * 1000:.0f} ms"
        med = m["p99_median"]
        med_s = "timeout" if math.isinf(med) else f"{med * 1000:.0f} ms"
        lines.append(
            f"| {r.overload:g}× | {r.name} | {m['goodput']:.1%} | {m['goodput_steady']:.1%} | "
            f"{m['slo_steady']:.1%} | {m['slo_all']:.1%} | {med_s} | {worst_s} | "
            f"{fmt_time(m['conv_1'])} | {fmt_time(m['conv_2'])} | {m['cv']:.1%} |"
        )
    return "\n".join(lines)


def plot(runs: list[Run], overload: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = [r for r in runs if r.overload == overload]
    fig, axes = plt.subplots(3, 1, figsize=(11, 11), sharex=True)
    t = np.arange(0.0, DURATION, 0.01)
    for ax in axes[:1]:
        ax.plot(t, [capacity_at(x) for x in t], "k--", lw=2, label="capacity")
    for r in sel:
        starts, _, good = windows(r, 0.5)
        axes[0].plot(starts + 0.25, good / 0.5, label=r.name, lw=1)
        axes[1].step(r.limit_t, r.limit_v, where="post", label=r.name, lw=1)
        s1, p, _ = windows(r, 1.0)
        axes[2].plot(s1 + 0.5, np.minimum(p, TIMEOUT) * 1000, label=r.name, lw=1)
    axes[0].set_ylabel("good throughput (req/s, 0.5 s windows)")
    axes[1].set_ylabel("limit (req/s for rate, calls in flight otherwise)")
    axes[1].set_yscale("log")
    axes[2].axhline(TARGET * 1000, color="k", ls="--", label="target")
    axes[2].set_ylabel("P99 of admitted calls per 1 s (ms)")
    axes[2].set_yscale("log")
    axes[2].set_xlabel("time (s)")
    axes[0].set_title(
        f"{overload:g}× overload: capacity 1000 → 400 → 1600 req/s, target P99 100 ms"
    )
    for ax in axes:
        ax.legend(fontsize=7, ncol=4)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def breakdown(runs: list[Run], seed: int) -> str:
    """Where goodput is lost, by segment: ours against Envoy's gradient (the close one).

    Adds ours (concurrency) started from Envoy's initial limit of 3: our default
    initial limit of 20 calls happens to equal the 20 workers of the first phase.
    """
    chosen = [r for r in runs if r.name in ("ours (rate)", "ours (concurrency)", "Envoy gradient")]
    for load in sorted({r.overload for r in chosen}):
        extra = simulate("ours (concurrency, initial 3)", Ours("concurrency", initial_limit=3),
                         load, seed)  # fmt: skip
        chosen.append(extra)
    chosen.sort(key=lambda r: r.overload)
    head = " | ".join(f"{a:g}–{b:g} s" for a, b in SEGMENTS)
    lines = [f"| load | algorithm | {head} | total |", "|---|---|" + "---|" * (len(SEGMENTS) + 1)]
    for r in chosen:
        seg = lost(r)
        cells = " | ".join(f"{x:.0f}" for x in seg)
        lines.append(f"| {r.overload:g}× | {r.name} | {cells} | {sum(seg):.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="comma-separated algorithm names")
    ap.add_argument("--loads", default="2,10")
    ap.add_argument("--seed", type=int, default=7, help="service-time seed")
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args()
    names = list(policies())
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    runs = []
    for load in (float(x) for x in args.loads.split(",")):
        for name in names:
            run = simulate(name, policies()[name](), load, args.seed)
            runs.append(run)
            m = run.metrics
            print(f"{load:g}x {name:20s} goodput {m['goodput']:.1%} steady-SLO "
                  f"{m['slo_steady']:.1%} conv {fmt_time(m['conv_1'])}/{fmt_time(m['conv_2'])} "
                  f"cv {m['cv']:.1%} ({run.wall:.1f}s)", flush=True)  # fmt: skip
    print(table(runs))
    if args.no_plots or args.only:
        return
    losses = breakdown(runs, args.seed)
    print(losses)
    spread = robustness(names, [float(x) for x in args.loads.split(",")])
    print(spread)
    cases = arrival_cases(["ours (rate)", "ours (concurrency)", "static", "Envoy gradient"],
                          args.seed)  # fmt: skip
    print(cases)
    RESULTS.mkdir(exist_ok=True)
    for load in sorted({r.overload for r in runs}):
        plot(runs, load, RESULTS / f"adaptive_{load:g}x.png")
    (RESULTS / "adaptive.md").write_text(report(runs, losses, spread, cases))


# The same steps on a service twenty times slower: 20 -> 8 -> 32 workers of 400 ms
# (50 -> 20 -> 80 req/s); target and timeout scale with the service time (P99 2 s,
# clients giving up after 20 s), so the target sits where it does at 1000 req/s.
LOW_RATE = {"TARGET": 2.0, "MEAN_SERVICE": 0.4, "TIMEOUT": 20.0}


@contextlib.contextmanager
def scaled(**values: float) -> Iterator[None]:
    """Run the simulation with other module constants (the low-rate service)."""
    saved = {k: globals()[k] for k in values}
    globals().update(values)
    try:
        yield
    finally:
        globals().update(saved)


def arrival_cases(names: list[str], seed: int) -> str:
    """Poisson arrivals, and the low-rate service, that evenly spaced arrivals at
    1000 req/s would hide: goodput at 2x and 10x, and the share refused at 0.5x."""
    lines = [
        "| service | arrivals | algorithm | goodput 2× | goodput 10× | SLO windows steady 2× "
        "| converge 2× (↓, ↑) | refused at 0.5× |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for service, values in (("1000 req/s", {}), ("50 req/s", LOW_RATE)):
        for poisson in (False, True):
            if not values and not poisson:
                continue  # the main table
            with scaled(**values):
                for name in names:
                    m2 = simulate(name, policies()[name](), 2.0, seed, poisson).metrics
                    m10 = simulate(name, policies()[name](), 10.0, seed, poisson).metrics
                    half = simulate(name, policies()[name](), 0.5, seed, poisson).metrics
                    lines.append(
                        f"| {service} | {'Poisson' if poisson else 'even'} | {name} | "
                        f"{m2['goodput']:.1%} | {m10['goodput']:.1%} | {m2['slo_steady']:.1%} | "
                        f"{fmt_time(m2['conv_1'])}, {fmt_time(m2['conv_2'])} | "
                        f"{1 - half['admitted']:.1%} |"
                    )
    return "\n".join(lines)


HELD_OUT = (11, 12, 13, 14, 15)  # seeds never used while choosing our defaults


def robustness(names: list[str], loads: list[float]) -> str:
    """Min-max over held-out service-time seeds per algorithm and load, then per seed
    ours against Envoy's gradient (the closest baseline)."""
    lines = [
        "| load | algorithm | goodput (min–max) | SLO windows steady (min) | worst convergence "
        "| worst limit CV |",
        "|---|---|---|---|---|---|",
    ]
    got = {}
    for load in loads:
        for name in names:
            ms = [simulate(name, policies()[name](), load, seed).metrics for seed in HELD_OUT]
            got.update({(load, name, seed): m for seed, m in zip(HELD_OUT, ms, strict=True)})
            gp = [m["goodput"] for m in ms]
            conv = max(max(m["conv_1"], m["conv_2"]) for m in ms)
            lines.append(
                f"| {load:g}× | {name} | {min(gp):.1%}–{max(gp):.1%} | "
                f"{min(m['slo_steady'] for m in ms):.1%} | {fmt_time(conv)} | "
                f"{max(m['cv'] for m in ms):.1%} |"
            )
    pair = ("ours (rate)", "ours (concurrency)", "Envoy gradient")
    if not all(n in names for n in pair):
        return "\n".join(lines)
    lines += ["", "Per held-out seed: goodput / SLO windows (steady) / convergence after "
              "each step.", "", "| load | seed | " + " | ".join(pair) + " |",
              "|---|---|---|---|---|"]  # fmt: skip
    for load in loads:
        for seed in HELD_OUT:
            cells = []
            for name in pair:
                m = got[(load, name, seed)]
                cells.append(f"{m['goodput']:.1%} / {m['slo_steady']:.1%} / "
                             f"{fmt_time(m['conv_1'])}, {fmt_time(m['conv_2'])}")  # fmt: skip
            lines.append(f"| {load:g}× | {seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


NOTES = """Reading the results (all numbers from the tables above):

- **What changed** (the real-service benchmark, `real_service_bench.py`, showed
  what evenly spaced arrivals at 1000 req/s hid): concurrency mode now follows the
  queue, not just the target. A probe measures the no-load median (the limit
  comes down by 1.25^2 for 100 calls, 50 once a baseline is known, and again
  while the median keeps falling), and at a saturated limit the next limit is
  limit x 1.25 / (fresh median / no-load median), as Envoy's gradient controller
  does; the P99 target stays the bound (a breach still cuts 1/2, 1/4, 1/8 ...).
  The fresh median is that of the calls admitted since the limit last moved, and
  the next step comes as soon as a hundred of them are in, so the pace follows the
  service's round trip (Envoy's gradient updates every 100 ms); growth waits for
  those calls too. Before that, steps came every 0.5 s on the freshest calls to
  finish, some of them queued behind the previous limit: the limit climbed slowly
  after 400 -> 1600 and lost most of its goodput there, behind Envoy's gradient
  (the results file at commit 50ae7dd has those rows); a probe that halved the
  limit idled part of the backend while it ran; and on the 400 ms service slow
  start grew on calls from an earlier limit, several times past the backend's
  slots, while a probe that ran out of time read the first calls to finish, a
  baseline read low. Rate mode paces with a burst of half the
  target's worth (at least 20 calls, was 10 ms), and never trims or eases the rate
  without a standing queue in the fresh median (the delivered rate of an idle
  backend is its arrivals, not its capacity); the percentile window stops at
  2 x interval once it holds `min_samples` calls. Since then rate mode's in-flight
  guard is rate x target x queue_cap alone (the pace's burst of half a target's
  worth had widened it, leaving the standing queue at the target's edge), the
  first cut of a run with a queue goes no lower than just under the delivered
  rate (a steady-state breach halved the rate, missing convergence), the rate is
  trimmed to the delivered rate only if calls were refused (at a low load a noisy
  median read as a queue ratcheted it down to the arrivals), and slow start
  doubles.
- **Where targets are missed** (see the tables): rate mode is behind Envoy's
  gradient on goodput (a paced rate keeps a short queue in front of the backend
  to find the knee by throughput). Concurrency mode is ahead of it on the table
  seed and on average over the held-out seeds, within a few tenths of a point
  either way seed by seed. One probe window on one held-out seed falls a call or
  two short of the +-10% band at 400 req/s, which the convergence column reports
  as 12 s. On the 400 ms service neither mode converges by that measure: a 1 s
  window there holds about 20 completions at 20 req/s, whose own spread exceeds
  the +-10% band. Prefer concurrency mode to protect a backend; use rate mode when
  a QPS figure is what must be enforced.
- **Poisson and low-rate rows**: the same controllers, no per-case tuning; the
  low-rate service keeps the ratio of target to service time of the main table.
- **Baselines** were re-checked against the published sources and fixed where
  they differed (see adaptive_baselines.py):
  - **Vegas** had a bug: it used the real log10(limit), which is 0 at a limit of 1,
    so once at 1 it could never move again (5% goodput before). Netflix's
    Log10RootFunction is max(1, int(log10 n)). Fixed, it reaches ~35%: its queue
    estimate limit·(1 − rtt_noload/rtt) takes the *minimum* RTT as no-load, and
    with lognormal service a typical RTT is several times that minimum, so the
    estimate exceeds beta = 6 at any limit above ~7; it holds ~7 calls in flight
    (6–18) against 20, 8 and 32 workers: always within the SLO, never busy.
  - **Gradient2** now has the source's long-RTT decay (× 0.9 while longRtt/shortRtt
    > 2) and ExpAvgMeasurement's 10-sample warm-up; it rose from 2.5% to 39–47%.
    It has no latency target: with tolerance 1.5 the gradient is 1 unless one call
    takes 1.5 × the long average, so it creeps by 0.8 per call (4 × 0.2), while a
    single fast call (lognormal) triggers the decay; the limit swings between 20
    and 135 (CV ~30%) and sits at its maximum of 200 in the 1600 req/s phase.
  - **AIMD** matches AIMDLimit (integer limit, max(1, min(L − 1, int(0.9 L))) on a
    drop or an RTT over the 5 s timeout, +1 when in flight · 2 ≥ L, min 20, max 200).
    It is loss-based, and the only losses here are 1 s client timeouts; with at
    most 200 calls in flight the queue wait stays under 200 ms at 1000 req/s and
    500 ms at 400 req/s, so it never sees one: it holds 200 in flight and a P99 of
    ~238 ms. The extra row **AIMD (timeout = target)** (not a published default)
    counts any call over 100 ms as a drop: 57–58% goodput, but it cuts 10% on
    *every* slow call (no once-per-round-trip rule) and grows by 1 per call, so the
    limit saw-tooths between its floor of 20 and ~200 (CV ~71%) and no steady
    window meets the SLO.
  - **Envoy gradient** now follows GradientController::calculateNewLimit exactly:
    headroom √(gradient · limit) (was √limit), integer truncation, minimum
    concurrency 3.
- **Static** (1000 req/s) is right only while capacity is 1000.
"""


def report(runs: list[Run], losses: str, spread: str, cases: str) -> str:
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    method = f"""## Adaptive limiter: overload simulation

`.venv/bin/python benchmarks/adaptive_sim.py` (deterministic, seeded; under a minute).
Backend: FIFO queue, lognormal service (mean 20 ms, σ 0.5) on 20 → 8 → 32 workers,
so capacity 1000 → 400 → 1600 req/s at t = 0, 20, 40 s. Open-loop constant-rate
arrivals at k × the capacity in force; clients time out after 1 s; target P99 ≤ 100 ms.
Ours runs through the compiled kernel (`limiter._core.AdaptiveLimiter`, default
settings, virtual clock injected); baselines are written from their published
formulas in `benchmarks/adaptive_baselines.py` with their published defaults
(checked against the Netflix concurrency-limits and Envoy sources), plus one
labelled non-default variant, AIMD with its timeout set to the target.
Load average (1/5/15 min) at the end of the run: {load} (the simulation runs on a
virtual clock, so the results do not depend on it).

- Goodput: calls completed within the target ÷ (capacity × time).
- SLO windows: share of 1 s windows (by admission time) whose P99 ≤ target;
  *steady* skips the first {SETTLE:g} s after each step (the convergence budget).
- Convergence: first 1 s window after a step from which good throughput stays
  within ±10% of the new capacity with P99 ≤ target, until the next step.
- Limit CV: coefficient of variation of the limit over the steady windows.
"""
    return "\n".join(
        [
            method,
            table(runs),
            "",
            "Good calls lost (capacity × time − calls completed within the target) by "
            "segment of the run, table seed; steps at 20 s (1000 → 400) and 40 s "
            "(400 → 1600):",
            "",
            losses,
            "",
            f"Held-out service-time seeds {', '.join(map(str, HELD_OUT))} (the table above "
            "is seed 7; our defaults were chosen on seeds 1–7):",
            "",
            spread,
            "",
            "Poisson arrivals (same mean rate), and the same steps on a service twenty "
            "times slower (400 ms calls, 50 → 20 → 80 req/s, P99 target 2 s, 20 s client "
            "timeout); *refused at 0.5×*: share of calls refused with arrivals at half the "
            "capacity in force (table seed):",
            "",
            cases,
            "",
            NOTES,
            "![2x](results/adaptive_2x.png)",
            "![10x](results/adaptive_10x.png)",
            "",
        ]
    )


if __name__ == "__main__":
    main()
