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
import heapq
import math
import os
import sys
import time
from collections import deque
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


def simulate(name: str, policy: object, overload: float, seed: int = 7) -> Run:
    rng = np.random.default_rng(seed)
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
        t_arr = now + 1.0 / (overload * capacity_at(now))
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
    RESULTS.mkdir(exist_ok=True)
    for load in sorted({r.overload for r in runs}):
        plot(runs, load, RESULTS / f"adaptive_{load:g}x.png")
    (RESULTS / "adaptive.md").write_text(report(runs, losses, spread))


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

- **Ours, concurrency mode** meets every target on the table seed and on every
  held-out seed: goodput 98.9–99.5%, 100% of steady windows within the SLO,
  convergence ≤ 1 s, limit CV ≤ 7.1%, and it is ahead of Envoy's gradient, the
  closest baseline, on every run: the table seed (99.7% vs 98.8% at 2×, 99.9% vs
  99.0% at 10×, equal steady SLO attainment), tuning seeds 1–7 at both loads and
  all 10 held-out runs (by 0.3–1.0 points). Three changes, chosen on seeds 1–7:
  (1) a *drained queue*, the median of the freshest 100 calls under 3/5 of the
  window's median at the last evaluation, at a saturated limit and with no
  breach, re-arms and grows at once, even mid-interval: after the 400 → 1600 step
  a P99 needs 4/(1 − 0.99) = 400 fresh samples (0.5–1 s here) before the slow calls
  from before the step age out, while the median of 100 fresh calls sees the
  faster backend at once; (2) that growth step is the speed-up the median shows
  (old / fresh median, at least 1.5, at most 2.25: by Little's law the same calls
  in flight go through that much faster), so the limit reaches the new capacity in
  one or two steps (table seed loss after the step: 360 → 224 at 2×, 334 → 82 at
  10×; Envoy 208 / 157); (3) a slow start back to the level last cut from now ends
  on delay once that cut is two intervals old: before, a stale level from the
  1000 req/s phase drove × 1.5 steps at 8 workers long after the cut, and tuning
  seed 4 failed the SLO in one steady window at each load (100.5 and 101 ms) and
  converged only after 13 and 19 s. On seeds 1–7 the mean goodput went from 99.0%
  to 99.4% (2×) and 99.5% (10×). Held-out, before: 98.5–99.4%, behind Envoy on 2×
  seed 14 and 10× seed 13; after (1) and (3) alone (checked once): 98.1–99.4%,
  ahead on those two but behind on seed 12 at both loads; (2) was then chosen on
  seeds 1–7, so the held-out seeds were looked at twice. Where ours still loses
  more than Envoy is the 400 → 1600 step on most seeds (e.g. 224 vs 208 here at
  2×); it is ahead overall because Envoy loses ~470–490 good calls at start-up
  (its minRTT probe pins concurrency to 3 for 50 calls, then it grows from 3)
  and ours none, partly by luck: our default initial limit (20 calls) equals the
  20 workers of the first phase. Started from Envoy's 3 (extra loss-table rows)
  ours loses ~720–740 there and would be behind Envoy on the table seed (98.3%
  vs 98.8% at 2×, 98.3% vs 99.0% at 10×). *SLO windows (all)*: ours misses
  exactly one window, the one admitted in 20–21 s, right at the 1000 → 400 step
  (P99 107 ms at 2×, 111 ms at 10×, table seed). Ours holds ~38 calls in flight
  before the step against Envoy's ~26 (its median target, 1.25 × minRTT, keeps a
  shorter queue): when 20 workers become 8, the calls already queued take ~80 ms
  to drain, and no controller fed by completions sees a call slower than the
  target until ~100 ms after the step. Avoiding that window needs a queue of a
  few calls at the working point; here the service time alone has a P99 of ~57 ms,
  and a larger headroom (growth stopping at 55 ms instead of 65 ms, seeds 1–7)
  never re-grew after the 400 → 1600 step (64–72% goodput). The target counts
  windows after convergence, where both are at 100%. Envoy also holds a lower P99
  overall (median 61–62 ms against our 75–77 ms) because it steers the median, not
  the tail, to 1.25 × minRTT. Tried and dropped (seeds 1–7): also requiring the
  fresh P99 to be under the growth threshold (the P99 of 100–200 calls is mostly
  their maximum, often over 65 ms with no queue at all, so the rule rarely fired).
  Outside the specified loads (seeds 1–7 at 1.5×, 3× and 5×) mean goodput is
  99.5% at each (worst run 99.1%), but at 1.5× seed 2 one steady window in the
  400 req/s phase misses (P99 101 ms; 108 ms before these changes), so that run
  converges only after 16 s (never before).
- **Ours, rate mode** counts a refusal by the in-flight guard (rate × target ×
  ``queue_cap``, 0.4) as "the backend, not the rate, is the bottleneck": no growth
  then, and if the backend delivered less than the rate, the rate comes down to
  one additive step above what it delivered (past slow start: by at most one
  additive step per evaluation) and slow start ends there. Below capacity a paced
  stream shows flat latency, so the knee shows as throughput, not latency. Slow
  start evaluates every ``probe_interval`` (0.25 s), growth stops at 0.8 × target
  (``headroom`` 0.2), the big cut re-arms after 1 healthy evaluation at full use,
  and a burst of slow calls cuts before the interval ends (both modes). A re-probe
  re-armed by healthy growth (not by climbing past the old peak) starts gently
  (× (1 + 4 · additive), just past the peak; × 1.5 only from the second step),
  and if the backend cannot deliver it, it is trimmed no lower than the level it
  started from. Results: table seed 96.6% / 96.5% goodput (2× / 10×), convergence
  1 s after both steps, CV 4.1% / 3.8%; held-out 95.5–97.4% at 2× and 95.6–96.6%
  at 10×, all steady windows within the SLO, convergence ≤ 2 s on all 10 runs,
  limit CV ≤ 6.1%. The ≤ 5 s convergence target, missed before on held-out seed
  12 (6 s at both loads), is met. Why seed 12 was late (traced per 0.25 s): the
  1 s window admitted at 25–26 s delivered 357 good calls, 3 short of the ±10%
  band (360); at 25.0 s a run of slow service times made the in-flight guard
  refuse calls while the backend delivered ~324/s over that interval, so the trim
  set the rate to one additive step over that, 368/s (8% under capacity), and
  additive growth took until ~26.5 s to come back. Two changes (chosen on seeds
  1–7): (1) past slow start a trim comes down by at most one additive step per
  evaluation (the rate is near the knee already, and one interval's deliveries
  measure a run of slow service times, not the capacity); this alone fixed the
  same late convergence on tuning seed 1 (4 s → 1 s) but lost 0.4 points on 2×
  seed 6 (95.2% → 94.8%): after the 400 → 1600 step the re-probe waited a probe
  interval longer for the 1 s-deep P99 window to age out; (2) a drained queue
  (the median of the freshest 100 calls under 3/5 of the window's at the last
  evaluation) counts as a healthy evaluation whatever the P99 window says, but,
  unlike concurrency mode, grows only as any healthy evaluation does (no forced
  re-arm, at the interval): a paced stream also drains its queue whenever the
  rate dips under capacity, and re-arming on it (tried, seeds 1–7) re-probed × 1.5
  from such dips: convergence after 6 and 18 s on two 10× runs, one of them with a
  steady window over the SLO. Trade-off: on
  seeds 1–7 the worst run rose (95.0% → 95.5% at 2×, 95.0% → 95.2% at 10×) and
  convergence went from ≤ 4 s to ≤ 2 s, but mean goodput moved +0.1 / −0.2
  points; on the held-out seeds the mean fell from 96.7% to 96.3% (2×) and from
  96.4% to 96.1% (10×), the minimum went 96.2% → 95.5% at 2× and 95.4% → 95.6% at
  10×. Where it loses (loss table): ~970 good calls at start-up (the rate starts
  at the default 100/s and slow start takes ~1.5 s to reach 1000/s) and ~1,050
  after the 400 → 1600 step (the P99 window needs ~1 s of fresh calls at 400 req/s
  before growth, then the gentle first step and × 1.5 per 0.25 s). History: before
  the gentle re-probe, a × 1.5 re-probe every ~1.75 s overshot and the trim or a
  re-armed half cut after it made single windows dip (held-out 94.1–96.5% at 2×,
  convergence 6, 13 and 18 s on three runs, CV up to 11.7%); growing × 2.25 per
  probe in an open-ended slow start (seeds 1–7) gave 94–98% goodput but failed
  the SLO in up to 13% of steady windows. Prefer concurrency mode to protect a
  backend; use rate mode when a QPS figure is what must be enforced.
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


def report(runs: list[Run], losses: str, spread: str) -> str:
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
            NOTES,
            "![2x](results/adaptive_2x.png)",
            "![10x](results/adaptive_10x.png)",
            "",
        ]
    )


if __name__ == "__main__":
    main()
