"""ns per decision for every limiter._core kernel, side by side with the peers, same run.

Run from the repository root: ``python benchmarks/core_bench.py [--quick] [--out FILE]``.
A full run writes ``benchmarks/results/core.md`` (tables, machine info, targets).

Method: for each (algorithm, key set, path) group, our calls (``acquire``, ``allow``,
``allow_batch``), the peers on their closest algorithm and two floors run interleaved,
round after round, and each keeps the minimum time per decision over its rounds, so noise
from a busy machine hits everyone alike and the ratios are from the same moments. Keyed
cells use 100k keys, all inserted first, then cycled round-robin in a fixed shuffled order
(arrival order unrelated to insertion order, as with real traffic). After timing, a sample
of calls checks each cell really took its path (allowed fraction 1.0 or 0.0).
"""

from __future__ import annotations

import argparse
import collections
import gc
import heapq
import json
import os
import platform
import random
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import peers
from machine import cpu_model, git_revision

import limiter
from limiter import (
    ConcurrencyLimit,
    FixedWindow,
    LeakyBucket,
    LeakyShaper,
    SlidingWindow,
    TokenBucket,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "benchmarks", "results", "core.md")
PEER_PACKAGES = ("limits", "throttled-py", "pyrate-limiter", "token-bucket")
BATCH = 1000  # keys per allow_batch call (a service-sized batch)
TARGET_RATIO = 10.0
TARGET_SINGLE_NS = 150.0
TARGET_KEYED_NS = 400.0
TARGET_BATCH_NS = 40.0


@dataclass
class Settings:
    quick: bool
    keys: int
    rounds: int
    round_ns: float  # aimed duration of one timed round of one cell
    retime_budget: float  # seconds into the run after which noisy groups are not re-timed
    mem_keys: int  # ours alone, at scale
    mem_bound: int
    compare_keys: int  # ours and every peer, like for like


def settings(quick: bool) -> Settings:
    if quick:
        return Settings(True, 20_000, 8, 2.5e6, 25.0, 200_000, 20_000, 20_000)
    # Many short rounds: on a shared machine a 4 ms round often runs undisturbed
    # inside one scheduler slice, so the minimum over rounds finds the quiet moments.
    return Settings(False, 100_000, 25, 4e6, 170.0, 1_000_000, 100_000, 100_000)


# --- timing harness -----------------------------------------------------------------------


def compile_loop(stmt: str, env: dict) -> Callable[[list], int]:
    """A timing loop ``for k in seq: <stmt>`` with every name a fast local (as timeit does)."""
    args = "".join(f", {name}={name}" for name in env)
    src = (
        f"def run(seq{args}, _now=_now):\n"
        "    t0 = _now()\n"
        "    for k in seq:\n"
        f"        {stmt}\n"
        "    return _now() - t0\n"
    )
    namespace = dict(env, _now=time.perf_counter_ns)
    exec(src, namespace)
    return namespace["run"]


class KeyCycle:
    """Round-robin over a fixed key order, handing out the next ``n`` keys each round."""

    def __init__(self, order: list[str]):
        self.order = order
        self.pos = 0

    def take(self, n: int) -> list[str]:
        if len(self.order) == 1:
            return self.order * n
        out: list[str] = []
        while len(out) < n:
            chunk = self.order[self.pos : self.pos + n - len(out)]
            out += chunk
            self.pos = (self.pos + len(chunk)) % len(self.order)
        return out


@dataclass
class Cell:
    """One implementation in one group: times rounds, keeps the best ns per decision."""

    impl: str
    package: str  # "limiter", a peer package, "stdlib" or "floor"
    api: str  # acquire / allow / allow_batch / the peer's return type
    run_round: Callable[[], tuple[int, int]]  # -> (elapsed ns, decisions)
    verify: Callable[[], float]  # allowed fraction over a sample of calls
    before_round: Callable[[], None] | None = None
    note: str = ""
    best: float = float("inf")
    allowed: float = float("nan")


def per_call_cell(impl, package, api, stmt, env, cycle, check, n, before=None, note="") -> Cell:
    loop = compile_loop(stmt, env)

    def run_round() -> tuple[int, int]:
        seq = cycle.take(n)
        return loop(seq), n

    def verify() -> float:
        sample = cycle.take(300)
        return sum(bool(check(k)) for k in sample) / len(sample)

    return Cell(impl, package, api, run_round, verify, before, note)


def batch_cell(lim, cycle: KeyCycle, rounds_keys: int) -> Cell:
    n_batches = max(1, rounds_keys // BATCH)
    allow_batch = lim.allow_batch

    def run_round() -> tuple[int, int]:
        arrays = [np.array(cycle.take(BATCH), dtype=object) for _ in range(n_batches)]
        t0 = time.perf_counter_ns()
        for arr in arrays:
            allow_batch(arr)
        return time.perf_counter_ns() - t0, n_batches * BATCH

    def verify() -> float:
        return float(allow_batch(np.array(cycle.take(BATCH), dtype=object)).mean())

    return Cell(
        f"{type(lim).__name__}.allow_batch",
        "limiter",
        "allow_batch",
        run_round,
        verify,
        note=f"numpy object array of {BATCH} keys per call",
    )


def estimate_ns(cell_factory: Callable[[int], Cell], probe_n: int) -> float:
    cell = cell_factory(probe_n)
    elapsed, n = cell.run_round()
    return elapsed / n


def sized_cell(make: Callable[[int], Cell], probe: int, s: Settings) -> Cell:
    """``make(n)`` with n calls per round, so that one round takes about ``s.round_ns``."""
    est = estimate_ns(make, probe)
    return make(int(min(2_000_000, max(200, s.round_ns / max(est, 1.0)))))


def simple_cell(
    impl, package, api, stmt, env, values, check, s: Settings, probe=2000, before=None, note=""
) -> Cell:
    def make(n: int) -> Cell:
        return per_call_cell(
            impl, package, api, stmt, env, KeyCycle(values), check, n, before, note
        )

    return sized_cell(make, probe, s)


def key_order(n: int) -> tuple[list[str], list[str]]:
    """``n`` keys in insertion order, and the fixed shuffled order the timed loops cycle."""
    keys = [f"user:{i:06d}" for i in range(n)]
    order = keys[:]
    random.Random(2024).shuffle(order)
    return keys, order


def run_group(cells: list[Cell], rounds: int) -> None:
    """Interleave: every round runs every cell once, in a rotating order."""
    gc_was = gc.isenabled()
    for r in range(rounds):
        order = cells[r % len(cells) :] + cells[: r % len(cells)]
        for cell in order:
            if cell.before_round:
                cell.before_round()
            gc.disable()
            try:
                elapsed, n = cell.run_round()
            finally:
                if gc_was:
                    gc.enable()
            cell.best = min(cell.best, elapsed / n)


def verify_group(cells: list[Cell]) -> None:
    for cell in cells:
        cell.allowed = cell.verify()


# --- the groups: our kernels and their peers ----------------------------------------------

HOUR = 3600.0


def our_limiter(algorithm: str, path: str):
    """Same configurations as the peers (see peers.py): allow never refuses, deny 1/hour."""
    allow = path == "allow"
    huge = peers.HUGE
    rate, burst = (1.0, huge) if allow else (1 / HOUR, 1)
    limit = huge if allow else 1
    if algorithm == "token bucket":
        return TokenBucket(rate=rate, burst=burst)
    if algorithm == "leaky bucket meter (GCRA)":
        return LeakyBucket(rate=rate, burst=burst)
    if algorithm == "leaky bucket shaper":
        return LeakyShaper(rate=rate, burst=burst, max_wait=1.0)
    if algorithm == "fixed window":
        return FixedWindow(limit=limit, period=HOUR)
    if algorithm == "sliding window counter":
        return SlidingWindow(limit=limit, period=HOUR)
    if algorithm == "concurrency (acquire+release)":
        return ConcurrencyLimit(limit=limit)
    raise ValueError(algorithm)


ALGORITHMS = (
    "token bucket",
    "leaky bucket meter (GCRA)",
    "leaky bucket shaper",
    "fixed window",
    "sliding window counter",
    "concurrency (acquire+release)",
)


# Per algorithm, the peers on their closest algorithm: (package, that package's name for it).
# The shaper has none: every peer's "wait" mode sleeps, so none is comparable.
PEERS: dict[str, tuple[tuple[str, str], ...]] = {
    "token bucket": (
        ("token-bucket", ""),
        ("throttled-py", "token_bucket"),
        ("pyrate-limiter", "token_bucket"),
    ),
    "leaky bucket meter (GCRA)": (
        ("throttled-py", "gcra"),
        ("throttled-py", "leaking_bucket"),
        ("pyrate-limiter", "gcra"),
    ),
    "fixed window": (
        ("limits", "fixed"),
        ("throttled-py", "fixed_window"),
        ("pyrate-limiter", "fixed"),
    ),
    "sliding window counter": (
        ("limits", "sliding"),
        ("throttled-py", "sliding_window"),
        ("limits", "moving"),
        ("pyrate-limiter", "sliding_log"),
    ),
    "concurrency (acquire+release)": (("stdlib", ""),),
}


def peer_impls(algorithm: str, path: str, keys: list[str]) -> list[peers.Impl]:
    single = len(keys) == 1
    size = 2 * len(keys) + 16
    factories: dict[str, Callable[[str], peers.Impl | None]] = {
        "token-bucket": lambda _: peers.token_bucket_tb(path),
        "throttled-py": lambda name: peers.throttled_impl(name, path, size),
        "pyrate-limiter": lambda name: peers.pyrate_impl(name, path, single),
        "limits": lambda name: peers.limits_impl(name, path, single),
        "stdlib": lambda _: peers.semaphore_impl(path, keys),
    }
    impls = [factories[package](name) for package, name in PEERS.get(algorithm, ())]
    return [i for i in impls if i is not None]


def build_group(algorithm: str, path: str, keys: list[str], order: list[str], s: Settings):
    """Our cells, the peers' cells and the floors for one group, warmed and sized."""
    cells: list[Cell] = []
    lim = our_limiter(algorithm, path)

    def ours(impl: str, api: str, stmt: str, fn, check) -> Cell:
        return simple_cell(impl, "limiter", api, stmt, {"f": fn}, order, check, s)

    held = []
    if algorithm.startswith("concurrency"):
        if path == "deny":
            held = [lim.acquire(k) for k in keys]  # every key at its limit of 1

        def check(k: str, acq=lim.acquire) -> bool:
            p = acq(k)
            ok = p.allowed
            p.release()
            return ok

        name = "ConcurrencyLimit.acquire+release"
        cells.append(ours(name, "acquire", "f(k).release()", lim.acquire, check))
    else:
        for k in keys:
            lim.allow(k)
        cls = type(lim).__name__
        cells.append(ours(f"{cls}.acquire", "acquire", "f(k)", lim.acquire, lim.acquire))
        cells.append(ours(f"{cls}.allow", "allow", "f(k)", lim.allow, lim.allow))
        cells.append(sized_cell(lambda n: batch_cell(lim, KeyCycle(order), n), 2 * BATCH, s))

    floors = [peers.noop_impl(), peers.dict_counter_impl(path)]
    for impl in [*peer_impls(algorithm, path, keys), *floors]:
        for k in keys:
            impl.check(k)
        cells.append(
            simple_cell(
                impl.name,
                impl.package,
                impl.returns,
                impl.stmt,
                impl.env,
                order,
                impl.check,
                s,
                probe=200,
                before=impl.before_round,
                note=impl.note,
            )
        )
    return cells, (lim, held)


@dataclass
class GroupResult:
    algorithm: str
    keys: str
    path: str
    cells: list[Cell] = field(default_factory=list)
    reruns: int = 0

    def floor(self) -> float:
        return next(c.best for c in self.cells if c.impl.startswith("no-op"))

    def ours(self, api: str) -> Cell | None:
        return next((c for c in self.cells if c.package == "limiter" and c.api == api), None)

    def fastest_peer(self) -> Cell | None:
        ps = [c for c in self.cells if c.package in PEER_PACKAGES]
        return min(ps, key=lambda c: c.best) if ps else None


NOISE = 1.25  # a group whose no-op floor is this much above its best is re-timed
RETRIES = 3


def bench_groups(s: Settings, log) -> list[GroupResult]:
    keyed, shuffled = key_order(s.keys)
    key_sets = (("1 key", ["k"], ["k"]), (f"{s.keys // 1000}k keys", keyed, shuffled))
    results = []
    floor_ref: dict[str, float] = {}
    deadline = time.monotonic() + s.retime_budget
    for algorithm in ALGORITHMS:
        for label, keys, order in key_sets:
            for path in ("allow", "deny"):
                t0 = time.monotonic()
                cells, keep = build_group(algorithm, path, keys, order, s)
                g = GroupResult(algorithm, label, path, cells)
                run_group(cells, s.rounds)
                # Another process hogging the CPU for a whole group inflates every cell
                # alike; the no-op floor shows it, so give the group more rounds.
                while (
                    g.floor() > NOISE * floor_ref.get(label, g.floor())
                    and g.reruns < RETRIES
                    and time.monotonic() < deadline
                ):
                    g.reruns += 1
                    log(
                        f"  noisy ({algorithm}, {label}, {path}): floor {g.floor():.1f} ns vs "
                        f"{floor_ref[label]:.1f}; re-timing"
                    )
                    time.sleep(0.5)
                    run_group(cells, s.rounds)
                floor_ref[label] = min(floor_ref.get(label, g.floor()), g.floor())
                verify_group(cells)
                results.append(g)
                del keep, cells
                gc.collect()
                log(
                    f"  {algorithm:32s} {label:9s} {path:5s} {time.monotonic() - t0:5.1f} s  "
                    + "  ".join(f"{c.impl.split(' ')[0]}={c.best:,.0f}" for c in g.cells)
                )
    return results


# --- memory (each probe in a fresh process) -----------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def probe(kind: str, n: int, max_keys: int, trace: bool) -> dict:
    """Feed ``n`` distinct keys to one limiter; report memory growth (run in a subprocess).

    Every limiter gets the same configuration (peers' ``memory`` path): 1 per hour with a
    burst of 10, so each key's state stays live.
    """
    if kind == "ours":
        lim = TokenBucket(rate=1 / peers.HOUR_S, burst=peers.MEMORY_BURST, max_keys=max_keys)
        call = lim.allow
    else:
        impl = {
            "token-bucket": lambda: peers.token_bucket_tb("memory"),
            "limits": lambda: peers.limits_impl("fixed", "memory", False),
            "throttled-py": lambda: peers.throttled_impl("token_bucket", "memory", 2 * n),
            "pyrate-limiter": lambda: peers.pyrate_impl("token_bucket", "memory", False),
        }[kind]()
        call = impl.check
    gc.collect()
    if trace:
        tracemalloc.start()
    base_rss, base_py = rss_bytes(), tracemalloc.get_traced_memory()[0] if trace else 0
    t0 = time.perf_counter()
    for i in range(n):
        call(f"user:{i:07d}")
    elapsed = time.perf_counter() - t0
    gc.collect()
    out = {
        "kind": kind,
        "n": n,
        "max_keys": max_keys,
        "seconds": elapsed,
        "rss_growth": rss_bytes() - base_rss,
    }
    if trace:
        out["traced_growth"] = tracemalloc.get_traced_memory()[0] - base_py
    if kind == "ours":
        out["len"] = len(lim)
        out["evictions"] = lim.evictions
    return out


def run_probe(kind: str, n: int, max_keys: int, trace: bool) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--probe",
        kind,
        str(n),
        str(max_keys),
        "1" if trace else "0",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def bench_memory(s: Settings, log) -> dict:
    """``compare``: ours and each peer on the same ``compare_keys`` keys, same
    configuration; ``ours``: ours alone at ``mem_keys``, unbounded and bounded."""
    mem: dict = {"compare": [], "ours": []}
    n = s.compare_keys
    for kind in ("ours", *PEER_PACKAGES):
        r = run_probe(kind, n, n, False)  # ours: max_keys = n, so nothing is evicted
        mem["compare"].append(r)
        log(f"  memory {kind} n={n:,}: RSS +{r['rss_growth'] / 2**20:.1f} MiB")
    for max_keys in (s.mem_keys, s.mem_bound):
        rss = run_probe("ours", s.mem_keys, max_keys, False)
        traced = run_probe("ours", s.mem_keys, max_keys, True)
        rss["traced_growth"] = traced["traced_growth"]
        mem["ours"].append(rss)
        log(
            f"  memory ours n={s.mem_keys:,} max_keys={max_keys:,}: "
            f"RSS +{rss['rss_growth'] / 2**20:.1f} MiB, len {rss['len']:,}, "
            f"evictions {rss['evictions']:,}"
        )
    return mem


# --- kernels without a peer row: queue, reservoir, heavy hitters, adaptive ----------------

FAR = 1 << 62  # a deadline that never passes


def extra_group(kernel: str, op: str, cells: list[Cell], s: Settings) -> GroupResult:
    run_group(cells, s.rounds)
    verify_group(cells)
    return GroupResult(kernel, "", op, cells)


def queue_groups(core, s: Settings) -> list[GroupResult]:
    out = []
    prios = [i % 3 for i in range(3000)]
    for label, weights in (("weighted 3:2:1", (3, 2, 1)), ("strict", None)):
        q = core.PriorityQueue(1 << 16, weights=weights, classes=3)
        for p in prios:
            q.push(p, FAR)
        heap: list = []
        for i, p in enumerate(prios):
            heapq.heappush(heap, (p, i))

        def check(k, q=q) -> bool:
            return q.push(k, FAR) >= 0 and q.pop(1) >= 0

        def ref_check(k, heap=heap) -> bool:
            heapq.heappush(heap, (k, 0))
            return heapq.heappop(heap) is not None

        cells = [
            simple_cell(
                f"PriorityQueue({label}) push+pop",
                "limiter",
                "item id",
                "push(k, dl)\n        pop(now)",
                {"push": q.push, "pop": q.pop, "dl": FAR, "now": 1},
                prios,
                check,
                s,
            ),
            simple_cell(
                "heapq heappush+heappop (reference)",
                "stdlib",
                "tuple",
                "hpush(h, (k, 0))\n        hpop(h)",
                {"hpush": heapq.heappush, "hpop": heapq.heappop, "h": heap},
                prios,
                ref_check,
                s,
            ),
        ]
        out.append(extra_group("priority queue", f"{label}, 3,000 queued, push+pop", cells, s))
    return out


def reservoir_groups(core, s: Settings) -> list[GroupResult]:
    rng = random.Random(7)
    values = [rng.lognormvariate(-4, 0.5) for _ in range(4096)]
    res = core.Reservoir(size=1024, horizon=10.0, subwindows=10, seed=1)
    kept: list[float] = []
    seen = [0]

    def algorithm_r(v: float, kept=kept, seen=seen, k=1024, rand=rng.random) -> None:
        seen[0] += 1
        if len(kept) < k:
            kept.append(v)
        else:
            j = int(rand() * seen[0])
            if j < k:
                kept[j] = v

    add_cells = [
        simple_cell(
            "Reservoir.add (clock read per call)",
            "limiter",
            "None",
            "f(k)",
            {"f": res.add},
            values,
            lambda v: res.add(v) is None,
            s,
        ),
        simple_cell(
            "Python Algorithm R (reference)",
            "stdlib",
            "None",
            "f(k)",
            {"f": algorithm_r},
            values,
            lambda v: algorithm_r(v) is None,
            s,
        ),
    ]
    batch = np.array(values[:BATCH])

    def make_many(n: int) -> Cell:
        calls = max(1, n // BATCH)

        def run_round() -> tuple[int, int]:
            t0 = time.perf_counter_ns()
            for _ in range(calls):
                res.add_many(batch)
            return time.perf_counter_ns() - t0, calls * BATCH

        return Cell(
            "Reservoir.add_many (per value)",
            "limiter",
            "None",
            run_round,
            lambda: 1.0,
            note=f"{BATCH} values per call",
        )

    add_cells.append(sized_cell(make_many, 4 * BATCH, s))
    out = [extra_group("reservoir", "add one latency", add_cells, s)]

    full = core.Reservoir(size=1024, horizon=10.0, subwindows=10, seed=1)
    sub = 1_000_000_000
    many = np.array([rng.lognormvariate(-4, 0.5) for _ in range(5000)])
    for w in range(10):
        full.add_many(many, now=w * sub)
    now = 9 * sub + 1
    flat = np.array(full.snapshot(now)[0])
    q_cells = [
        simple_cell(
            f"Reservoir.quantile(0.99), {full.kept(now):,} kept",
            "limiter",
            "float",
            "f(k, now)",
            {"f": full.quantile, "now": now},
            [0.99],
            lambda p: full.quantile(p, now) > 0,
            s,
            probe=20,
        ),
        simple_cell(
            f"numpy.percentile over {flat.size:,} values (reference)",
            "stdlib",
            "float",
            "f(a, k)",
            {"f": np.percentile, "a": flat},
            [99.0],
            lambda p: np.percentile(flat, p) > 0,
            s,
            probe=20,
        ),
    ]
    out.append(extra_group("reservoir", "P99 query (10 sub-windows full)", q_cells, s))
    return out


def heavy_hitter_groups(core, keys: list[str], order: list[str], s: Settings) -> list[GroupResult]:
    out = []
    for label, ks, seq in (("1 key", ["k"], ["k"]), (f"{len(keys) // 1000}k keys", keys, order)):
        hh = core.HeavyHitters(capacity=64, window=10.0, buckets=5)
        counter: collections.Counter = collections.Counter()
        for k in ks:
            hh.offer(k)
            counter[k] += 1
        cells = [
            simple_cell(
                "HeavyHitters(64).offer",
                "limiter",
                "int",
                "f(k)",
                {"f": hh.offer},
                seq,
                lambda k, hh=hh: hh.offer(k) > 0,
                s,
            ),
            simple_cell(
                "collections.Counter += 1 (reference, unbounded)",
                "stdlib",
                "None",
                "c[k] += 1",
                {"c": counter},
                seq,
                lambda k: True,
                s,
            ),
        ]
        out.append(extra_group("heavy hitters", f"offer, {label}", cells, s))
    return out


def adaptive_groups(core, s: Settings) -> list[GroupResult]:
    conc = core.AdaptiveLimiter(
        target_latency=0.1,
        percentile=0.99,
        mode="concurrency",
        initial_limit=1000,
        max_limit=100_000,
    )
    rate = core.AdaptiveLimiter(
        target_latency=0.1, percentile=0.99, mode="rate", initial_limit=1000, max_limit=100_000
    )

    def conc_check(k: str) -> bool:
        p = conc.acquire(k)
        ok = p.allowed
        p.success()
        return ok

    cells = [
        simple_cell(
            "AdaptiveLimiter(concurrency).acquire+success",
            "limiter",
            "AdaptivePermit",
            "f(k).success()",
            {"f": conc.acquire},
            ["k"],
            conc_check,
            s,
        ),
        simple_cell(
            "AdaptiveLimiter(rate).acquire",
            "limiter",
            "AdaptivePermit",
            "f(k)",
            {"f": rate.acquire},
            ["k"],
            lambda k: rate.acquire(k).allowed,
            s,
        ),
        simple_cell(
            "AdaptiveLimiter.record(latency)",
            "limiter",
            "None",
            "f(k)",
            {"f": conc.record},
            [0.01, 0.02, 0.03],
            lambda v: True,
            s,
        ),
    ]
    return [
        extra_group("adaptive limiter", "1 key (rate mode at 1,000/s: mostly refused)", cells, s)
    ]


EXTRAS = (
    ("priority queue", "PriorityQueue", queue_groups),
    ("reservoir", "Reservoir", reservoir_groups),
    ("heavy hitters", "HeavyHitters", None),
    ("adaptive limiter", "AdaptiveLimiter", adaptive_groups),
)


def bench_extras(s: Settings, log) -> tuple[list[GroupResult], list[str]]:
    """Kernels later issues add to limiter._core: benchmarked when present, else noted."""
    from limiter import _core

    results: list[GroupResult] = []
    notes: list[str] = []
    for label, name, fn in EXTRAS:
        if not hasattr(_core, name):
            notes.append(f"{label}: `{name}` is not in limiter._core at this commit; skipped")
            log(f"  note: {notes[-1]}")
            continue
        try:
            if fn is None:
                groups = heavy_hitter_groups(_core, *key_order(s.keys), s)
            else:
                groups = fn(_core, s)
        except (TypeError, AttributeError, ValueError) as exc:
            notes.append(
                f"{label}: `{name}` present but its API differs from what this "
                f"benchmark calls ({type(exc).__name__}: {exc}); skipped"
            )
            log(f"  note: {notes[-1]}")
            continue
        for g in groups:
            log(
                f"  {g.algorithm:20s} {g.path:40s} "
                + "  ".join(f"{c.impl.split(' ')[0]}={fmt_ns(c.best)}" for c in g.cells)
            )
        results += groups
    return results, notes


# --- report -------------------------------------------------------------------------------


def machine_info() -> dict:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": git_revision(),
        "versions": peers.versions(),
    }


def fmt_ns(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def targets(results: list[GroupResult]) -> list[tuple[str, str, str]]:
    rows = []

    for g in results:
        if g.algorithm != "token bucket":
            continue
        limit = TARGET_SINGLE_NS if g.keys == "1 key" else TARGET_KEYED_NS
        v = g.ours("acquire").best
        rows.append(
            (
                f"TokenBucket.acquire (full Decision), {g.keys}, {g.path} ≤ {limit:.0f} ns",
                f"{fmt_ns(v)} ns",
                verdict(v <= limit),
            )
        )
    for g in results:
        b = g.ours("allow_batch")
        if b is not None:
            rows.append(
                (
                    f"allow_batch ≤ {TARGET_BATCH_NS:.0f} ns/decision: {g.algorithm}, "
                    f"{g.keys}, {g.path}",
                    f"{fmt_ns(b.best)} ns",
                    verdict(b.best <= TARGET_BATCH_NS),
                )
            )
    for g in results:
        peer = g.fastest_peer()
        acq = g.ours("acquire")
        if peer is None or acq is None:
            continue
        r_acq = peer.best / acq.best
        allow = g.ours("allow")
        r_allow = f", allow {peer.best / allow.best:.1f}×" if allow else ""
        # Like with like: a peer answering a bool is held against our bool ``allow``; one
        # answering a result object (limit, remaining, reset) against our Decision.
        like = allow if allow is not None and peer.api == "bool" else acq
        rows.append(
            (
                f"≥ {TARGET_RATIO:.0f}× vs fastest peer: {g.algorithm}, {g.keys}, {g.path} "
                f"({peer.impl}, returns {peer.api}; judged on "
                f"{'allow' if like is allow else 'acquire'})",
                f"acquire {r_acq:.1f}×{r_allow}",
                verdict(peer.best / like.best >= TARGET_RATIO),
            )
        )
    return rows


def render_memory(mem: dict) -> list[str]:
    """The memory section: like for like first, then ours alone at scale."""
    lines = [
        "## Memory",
        "",
        "Each probe runs in a fresh process and feeds distinct keys (`user:NNNNNNN`, created "
        "per call, so retained key strings count) to one limiter. Every limiter has the same "
        "configuration: a token bucket of 1 per hour with a burst of 10 (`limits`, which has "
        "no token bucket: a fixed window of 10 per hour), so each key's state stays live. RSS "
        "growth is the whole process; tracemalloc sees only Python allocations (mostly the "
        "retained key strings), not the C state arrays.",
        "",
        "Like for like (same keys, same count, same configuration; ours with `max_keys` = "
        "the key count, so nothing is evicted):",
        "",
        "| limiter | distinct keys | RSS growth | bytes/key (RSS) | × ours | time |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    ours = mem["compare"][0]["rss_growth"]
    for r in mem["compare"]:
        name = "limiter TokenBucket" if r["kind"] == "ours" else r["kind"]
        lines.append(
            f"| {name} | {r['n']:,} | {r['rss_growth'] / 2**20:.1f} MiB | "
            f"{r['rss_growth'] / r['n']:.0f} | {r['rss_growth'] / ours:.1f} | "
            f"{r['seconds']:.2f} s |"
        )
    lines += [
        "",
        "Ours alone at a larger count, unbounded and with a `max_keys` bound (no peer row: "
        "not a comparison):",
        "",
        "| limiter | distinct keys | max_keys | RSS growth | bytes/key (RSS) | tracemalloc growth "
        "| len | evictions | time |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in mem["ours"]:
        lines.append(
            f"| limiter TokenBucket | {r['n']:,} | {r['max_keys']:,} | "
            f"{r['rss_growth'] / 2**20:.1f} MiB | {r['rss_growth'] / r['n']:.0f} | "
            f"{r['traced_growth'] / 2**20:.1f} MiB | {r['len']:,} | {r['evictions']:,} | "
            f"{r['seconds']:.2f} s |"
        )
    return lines


def render(
    results,
    extras,
    notes,
    mem,
    pitfalls,
    info,
    s: Settings,
    started: str,
    elapsed: float,
    loads: tuple[str, str],
) -> str:
    cmd = "python benchmarks/core_bench.py" + (" --quick" if s.quick else "")
    lines = [
        "# Core kernels: ns per decision, limiter vs peers",
        "",
        f"Generated by `{cmd}` (run from the repository root; `make bench` runs the full "
        f"benchmark) on {started}, {elapsed:.0f} s.",
        "",
        f"- Machine: {info['cpu']}, {info['cores']} cores, {info['platform']}; "
        f"Python {info['python']}; limiter commit {info['commit']}",
        "- Peers: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()),
        f"- Load average at start / end: {loads[0]} / {loads[1]} (other work shares these "
        "2 cores; absolute numbers drift, ratios are from the same moments)",
        f"- Method: minimum over {s.rounds} interleaved rounds (each round runs every cell of "
        f"a group once, rotating the order; ≈{s.round_ns / 1e6:.0f} ms per cell per round, "
        "gc off while timing; a group whose no-op floor ran > 25% above the best floor seen "
        "is re-timed up to 3 times while the run is within its time budget, see "
        "`re-timed`). ns per decision includes the Python loop and call, as a user pays "
        "it. Keyed: "
        f"{s.keys:,} keys inserted first, then cycled round-robin in a fixed shuffled order. "
        "allow path: buckets refill 1/s with a burst of 10⁹, windows allow 10⁹ per hour, "
        "so nothing is refused and every key keeps live state; deny path: 1 per hour "
        "(burst 1), every key already spent. `allowed` is the fraction of a 300-call "
        "sample after timing that was allowed (checks the cell took its path).",
        f"- `allow_batch`: numpy object arrays of {BATCH:,} keys per call, ns per decision.",
        "",
        "## Targets",
        "",
        "| target | measured | |",
        "|---|---:|---|",
    ]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in targets(results)]
    lines += [
        "",
        "## Summary (ns per decision; ratio = fastest peer ÷ ours)",
        "",
        "| algorithm | keys | path | acquire | allow | allow_batch | fastest peer | peer ns "
        "| × vs acquire | × vs allow | no-op floor | re-timed |",
        "|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for g in results:
        a, b, c = g.ours("acquire"), g.ours("allow"), g.ours("allow_batch")
        p = g.fastest_peer()
        cols = [
            g.algorithm,
            g.keys,
            g.path,
            fmt_ns(a.best) if a else "–",
            fmt_ns(b.best) if b else "–",
            fmt_ns(c.best) if c else "–",
        ]
        if p:
            cols += [
                p.impl,
                fmt_ns(p.best),
                f"{p.best / a.best:.1f}",
                f"{p.best / b.best:.1f}" if b else "–",
            ]
        else:
            other = next((x for x in g.cells if x.package == "stdlib"), None)
            ref = f"; ref: {other.impl} {fmt_ns(other.best)}" if other else ""
            cols += [f"(no peer{ref})", "–", "–", "–"]
        cols += [fmt_ns(g.floor()), str(g.reruns)]
        lines.append("| " + " | ".join(cols) + " |")
    lines += [
        "",
        "## Every cell",
        "",
        "| algorithm | keys | path | implementation | returns | ns/decision | ÷ our acquire "
        "| allowed | note |",
        "|---|---|---|---|---|---:|---:|---:|---|",
    ]
    for g in results:
        a = g.ours("acquire")
        for c in g.cells:
            lines.append(
                f"| {g.algorithm} | {g.keys} | {g.path} | {c.impl} | {c.api} | {fmt_ns(c.best)} "
                f"| {c.best / a.best:.2f} | {c.allowed:.2f} | {c.note} |"
            )
    lines += ["", *render_memory(mem)]
    lines += ["", "## Peer pitfalls (measured in this run)", ""]
    tf = pitfalls["throttled"]
    lines.append(
        f"- throttled-py, default `MemoryStore()` (MAX_SIZE 1,024), token bucket 1/hour: "
        f"{tf['keys']:,} keys each spent once, then asked again: "
        f"**{tf['allowed_on_second_pass']:,} of {tf['keys']:,} allowed** (should be 0: "
        "evicted keys silently start fresh). Our keyed cells give throttled-py "
        "MAX_SIZE = 2 × keys so it is timed doing the right thing."
    )
    fill = ", ".join(f"{f:,} entries → {fmt_ns(v)} ns" for f, v in pitfalls["moving"])
    lines.append(f"- limits moving window, one key, ns per `hit` by window fill: {fill}.")
    lines.append(
        f"- pyrate-limiter: `Limiter(rate)` started {pitfalls['pyrate_threads']} thread(s) for "
        "5 limiters; `try_acquire` blocks (sleeps) by default, so every cell here passes "
        "`blocking=False`; its log buckets keep one entry per admitted unit."
    )
    lines += [
        "",
        "## Other kernels (no peer among the four packages; stdlib references)",
        "",
        "| kernel | operation | implementation | ns/op | ÷ ours | note |",
        "|---|---|---|---:|---:|---|",
    ]
    for g in extras:
        ours = next(c for c in g.cells if c.package == "limiter")
        for c in g.cells:
            lines.append(
                f"| {g.algorithm} | {g.path} | {c.impl} | {fmt_ns(c.best)} "
                f"| {c.best / ours.best:.2f} | {c.note} |"
            )
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds, shorter cells (≤ 1 min)")
    ap.add_argument(
        "--out",
        help=f"results file (default {DEFAULT_OUT} for a full run; "
        "a --quick run writes only when given)",
    )
    ap.add_argument(
        "--memory-only",
        action="store_true",
        help="run only the memory probes and print (or --out) that section",
    )
    ap.add_argument(
        "--probe", nargs=4, metavar=("KIND", "N", "MAX_KEYS", "TRACE"), help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    if args.probe:
        kind, n, max_keys, trace = args.probe
        print(json.dumps(probe(kind, int(n), int(max_keys) or 1_000_000, trace == "1")))
        return

    s = settings(args.quick)
    out = args.out or (None if s.quick else DEFAULT_OUT)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load0 = f"{os.getloadavg()[0]:.2f}"
    t0 = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f}s] {msg}", flush=True)

    log(f"limiter {limiter.__file__}; {'quick' if s.quick else 'full'} run")
    if args.memory_only:
        mem = bench_memory(s, log)
        info = machine_info()
        cmd = "python benchmarks/core_bench.py --memory-only" + (" --quick" if s.quick else "")
        report = "\n".join(
            [
                f"`{cmd}` on {started} ({info['cpu']}, {info['cores']} cores; limiter commit "
                f"{info['commit']}; load average {load0} at start, "
                f"{os.getloadavg()[0]:.2f} at end)",
                "",
                *render_memory(mem),
            ]
        )
        print(report)
        if args.out:
            with open(args.out, "w") as f:
                f.write(report + "\n")
        return
    results = bench_groups(s, log)
    extras, notes = bench_extras(s, log)
    mem = bench_memory(s, log)
    pitfalls = {
        "throttled": peers.throttled_forgets_keys(),
        "moving": peers.limits_moving_window_fill((10, 1_000, 10_000, 100_000)),
        "pyrate_threads": peers.pyrate_threads(),
    }
    load1 = f"{os.getloadavg()[0]:.2f}"
    info = machine_info()
    report = render(
        results,
        extras,
        notes,
        mem,
        pitfalls,
        info,
        s,
        started,
        time.monotonic() - t0,
        (load0, load1),
    )
    print()
    print(report)
    if out:
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "w") as f:
            f.write(report)
        log(f"wrote {out}")


if __name__ == "__main__":
    main()
