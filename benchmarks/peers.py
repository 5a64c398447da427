"""The in-process rate limiters a Python user would otherwise pick, set up for core_bench.

Each factory returns an ``Impl``: a timed statement (``stmt`` over the loop variable ``k``,
names bound from ``env``) plus an untimed ``check(k) -> bool allowed`` used to warm keys
and to verify that a cell measured the path it claims (allow or deny). Configurations:
``allow`` never refuses during a run; ``deny`` allows 1 per hour, so after one warm-up call
per key every call is refused; ``memory`` is the memory probe's, the same for every
limiter: 1 per hour with a burst of 10 (``limits`` has no token bucket: a fixed window of
10 per hour). Peers use their in-memory storage and non-blocking calls.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version

import limits
import limits.storage
import limits.strategies
import pyrate_limiter as pyrate
import throttled
import token_bucket

# allow path: buckets refill at 1/s but hold HUGE tokens, windows allow HUGE per hour, so
# nothing is refused during a run and every key keeps live (non-idle) state.
# deny path: 1 per hour, burst 1.
HUGE = 10**9
HOUR_S = 3600
MEMORY_BURST = 10


@dataclass
class Impl:
    """One implementation under test: how to time it and how to read one answer."""

    name: str
    package: str
    returns: str
    stmt: str
    env: dict
    check: Callable[[str], bool]
    # Untimed hook run before each timed round (e.g. to bound a log's fill).
    before_round: Callable[[], None] | None = None
    note: str = ""
    keep: list = field(default_factory=list)


def versions() -> dict[str, str]:
    return {
        p: version(p) for p in ("limits", "throttled-py", "pyrate-limiter", "token-bucket", "numpy")
    }


# --- token-bucket -------------------------------------------------------------------------


def token_bucket_tb(path: str) -> Impl:
    rate, cap = {
        "allow": (1.0, HUGE), "deny": (1.0 / HOUR_S, 1), "memory": (1.0 / HOUR_S, MEMORY_BURST)
    }[path]  # fmt: skip
    lim = token_bucket.Limiter(rate, cap, token_bucket.MemoryStorage())
    return Impl(
        "token-bucket Limiter.consume",
        "token-bucket",
        "bool",
        "f(k)",
        {"f": lim.consume},
        lim.consume,
    )


# --- throttled-py -------------------------------------------------------------------------


def throttled_impl(using: str, path: str, max_size: int) -> Impl:
    """throttled-py on its MemoryStore, MAX_SIZE raised so the keyed cells keep every key."""
    if path == "deny":
        quota = throttled.per_hour(1, 1)
    elif path == "memory":
        quota = throttled.per_hour(1, burst=MEMORY_BURST)
    elif using in ("token_bucket", "gcra", "leaking_bucket"):
        quota = throttled.per_sec(1, burst=HUGE)
    else:
        quota = throttled.per_hour(HUGE)
    store = throttled.MemoryStore(options={"MAX_SIZE": max_size})
    th = throttled.Throttled(using=using, quota=quota, store=store, timeout=-1)

    def check(k: str) -> bool:
        return not th.limit(k).limited

    return Impl(
        f"throttled-py {using}", "throttled-py", "RateLimitResult", "f(k)", {"f": th.limit}, check
    )


# --- limits -------------------------------------------------------------------------------


_LIMITS = {
    "fixed": limits.strategies.FixedWindowRateLimiter,
    "moving": limits.strategies.MovingWindowRateLimiter,
    "sliding": getattr(limits.strategies, "SlidingWindowCounterRateLimiter", None),
}


def limits_impl(strategy: str, path: str, single_key: bool) -> Impl | None:
    cls = _LIMITS[strategy]
    if cls is None:
        return None
    storage = limits.storage.MemoryStorage()
    lim = cls(storage)
    item = limits.RateLimitItemPerHour({"allow": HUGE, "memory": MEMORY_BURST}.get(path, 1))
    before = None
    note = ""
    if strategy == "moving" and path == "allow":
        # A moving window keeps one entry per hit and inserts at the front, so its cost
        # grows with fill; clearing between rounds bounds fill by one round's hits.
        note = "log fill bounded by one round's hits (cleared between rounds)"
        if single_key:

            def before() -> None:
                lim.clear(item, "k")
        else:
            before = storage.reset

    def check(k: str) -> bool:
        return lim.hit(item, k)

    return Impl(
        f"limits {cls.__name__}",
        "limits",
        "bool",
        "f(item, k)",
        {"f": lim.hit, "item": item},
        check,
        before,
        note,
        [storage],
    )


# --- pyrate-limiter -----------------------------------------------------------------------


class _PerKeyFactory(pyrate.BucketFactory):
    """One bucket per name, as pyrate-limiter's docs suggest for per-user limits.

    Buckets are not registered with the background leaker: that thread would scan every
    bucket every 10 s and add noise unrelated to a decision's cost.
    """

    def __init__(self, make: Callable[[], pyrate.AbstractBucket]):
        self._make = make
        self._buckets: dict[str, pyrate.AbstractBucket] = {}
        self._clock = pyrate.MonotonicClock()

    def wrap_item(self, name: str, weight: int = 1) -> pyrate.RateItem:
        return pyrate.RateItem(name, self._clock.now(), weight=weight)

    def get(self, item: pyrate.RateItem) -> pyrate.AbstractBucket:
        bucket = self._buckets.get(item.name)
        if bucket is None:
            bucket = self._buckets[item.name] = self._make()
        return bucket


def pyrate_impl(algorithm: str, path: str, single_key: bool) -> Impl:
    """pyrate-limiter, in-memory: log buckets (fixed / sliding log) or state buckets (GCRA)."""
    if algorithm in ("token_bucket", "gcra"):
        rate = {
            "allow": pyrate.Rate(HUGE, pyrate.Duration.SECOND, burst=HUGE),
            "deny": pyrate.Rate(1, pyrate.Duration.HOUR, burst=1),
            "memory": pyrate.Rate(1, pyrate.Duration.HOUR, burst=MEMORY_BURST),
        }[path]
        alg_cls = pyrate.TokenBucket if algorithm == "token_bucket" else pyrate.GCRA

        def make() -> pyrate.AbstractBucket:
            return pyrate.StateBucket([rate], algorithm=alg_cls())

        label = f"pyrate-limiter StateBucket({alg_cls.__name__})"
    else:
        rate = pyrate.Rate(HUGE if path == "allow" else 1, pyrate.Duration.HOUR)
        alg_cls = pyrate.FixedWindow if algorithm == "fixed" else pyrate.SlidingWindowLog

        def make() -> pyrate.AbstractBucket:
            return pyrate.InMemoryBucket([rate], algorithm=alg_cls())

        label = f"pyrate-limiter InMemoryBucket({alg_cls.__name__})"
    lim = pyrate.Limiter(make() if single_key else _PerKeyFactory(make))

    def check(k: str) -> bool:
        return lim.try_acquire(k, 1, False)

    return Impl(
        label, "pyrate-limiter", "bool", "f(k, 1, False)", {"f": lim.try_acquire}, check, keep=[lim]
    )


# --- stdlib references --------------------------------------------------------------------


def semaphore_impl(path: str, keys: list[str]) -> Impl:
    """What a Python user would use for an in-flight limit: a BoundedSemaphore per key."""
    limit = HUGE if path == "allow" else 1
    sems = {k: threading.BoundedSemaphore(limit) for k in keys}
    if path == "deny":
        for s in sems.values():
            s.acquire(False)

    def check(k: str) -> bool:
        s = sems[k]
        ok = s.acquire(False)
        if ok:
            s.release()
        return ok

    stmt = "s = sems[k]\n        if s.acquire(False): s.release()"
    return Impl(
        "threading.BoundedSemaphore per key (reference)",
        "stdlib",
        "bool",
        stmt,
        {"sems": sems},
        check,
    )


def noop_impl() -> Impl:
    def noop(key: str) -> bool:
        return True

    return Impl("no-op Python call (floor)", "floor", "bool", "f(k)", {"f": noop}, noop)


def dict_counter_impl(path: str) -> Impl:
    """A naive fixed-window counter in a dict: the least a pure-Python limiter must do."""
    limit = HUGE if path == "allow" else 1
    counts: dict[str, list[int]] = {}
    clock = time.time

    def naive(key: str) -> bool:
        window = int(clock()) // HOUR_S
        c = counts.get(key)
        if c is None or c[0] != window:
            c = counts[key] = [window, 0]
        if c[1] >= limit:
            return False
        c[1] += 1
        return True

    return Impl("naive dict counter (floor)", "floor", "bool", "f(k)", {"f": naive}, naive)


# --- peer pitfalls ------------------------------------------------------------------------


def throttled_forgets_keys(n_keys: int = 2000) -> dict:
    """throttled-py's default MemoryStore keeps 1,024 keys: refused keys come back fresh."""
    th = throttled.Throttled(
        using="token_bucket",
        quota=throttled.per_hour(1, 1),
        store=throttled.MemoryStore(),
        timeout=-1,
    )
    keys = [f"user:{i}" for i in range(n_keys)]
    for k in keys:
        th.limit(k)
    second = sum(not th.limit(k).limited for k in keys)
    return {"keys": n_keys, "allowed_on_second_pass": second}


def limits_moving_window_fill(fills: tuple[int, ...], hits: int = 300) -> list[tuple[int, float]]:
    """limits' moving window inserts each hit at the head of a list: cost grows with fill."""
    out = []
    for fill in fills:
        storage = limits.storage.MemoryStorage()
        lim = limits.strategies.MovingWindowRateLimiter(storage)
        item = limits.RateLimitItemPerHour(HUGE)
        lim.hit(item, "k", cost=fill)
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter_ns()
            for _ in range(hits):
                lim.hit(item, "k")
            best = min(best, (time.perf_counter_ns() - t0) / hits)
            lim.clear(item, "k")
            lim.hit(item, "k", cost=fill)
        out.append((fill, best))
    return out


def pyrate_threads(n_limiters: int = 5) -> int:
    """Threads started by creating ``n_limiters`` default in-memory pyrate limiters."""
    before = threading.active_count()
    lims = [pyrate.Limiter(pyrate.Rate(10, pyrate.Duration.SECOND)) for _ in range(n_limiters)]
    for lim in lims:
        lim.try_acquire("k", 1, False)
    started = threading.active_count() - before
    for lim in lims:
        lim.close()
    return started
