# Type hints for the compiled core (ext/*.pxi). Keep in step with the Cython sources.
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self

import numpy as np
import numpy.typing as npt

Clock = Callable[[], int]

def clock_ns() -> int:
    """The kernels' default monotonic clock (CLOCK_MONOTONIC's base), int ns."""

def wall_clock_ns() -> int:
    """The kernels' wall clock (CLOCK_REALTIME's base), int ns."""

def clock_source() -> str:
    """``"tsc"`` or ``"clock_gettime"``: how the default clock is read."""

class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    retry_after: float
    wait: float
    def __init__(
        self,
        allowed: bool,
        limit: int,
        remaining: int,
        reset_after: float,
        retry_after: float = 0.0,
        wait: float = 0.0,
    ) -> None: ...
    def __bool__(self) -> bool: ...
    def as_tuple(self) -> tuple[bool, int, int, float, float, float]: ...
    def as_dict(self) -> dict[str, Any]: ...
    def __enter__(self) -> Decision: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool: ...

def answers_of(
    kind: type[tuple[Any, ...]],
    decisions: list[Decision],
    rule: Any,
    shadow: bool,
    ok: Any,
    refused: Any,
) -> list[tuple[Any, ...]]: ...

class Permit(Decision):
    released: bool
    def release(self) -> None: ...

class KeyedLimiter:
    max_keys: int
    max_cost: int
    evictions: int
    def reset(self, key: str = "") -> None: ...
    def __len__(self) -> int: ...

class RateKernel(KeyedLimiter):
    def acquire(self, key: str = "", cost: int = 1) -> Decision: ...
    def allow(self, key: str = "", cost: int = 1) -> bool: ...
    def acquire_batch(
        self, keys: Sequence[str], costs: Sequence[int] | None = None
    ) -> list[Decision]: ...
    def allow_batch(
        self, keys: Sequence[str] | npt.NDArray[np.object_], costs: npt.ArrayLike | None = None
    ) -> npt.NDArray[np.bool_]: ...

class _Gcra(RateKernel):
    rate: float
    burst: int
    interval_ns: int
    max_wait_ns: int
    def reserving(self, reserve: int) -> Self: ...

class TokenBucket(_Gcra):
    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Clock | None = None,
        max_keys: int = 1_000_000,
    ) -> None: ...

class LeakyBucket(_Gcra):
    def __init__(
        self,
        rate: float,
        burst: int = 1,
        *,
        clock: Clock | None = None,
        max_keys: int = 1_000_000,
    ) -> None: ...

class LeakyShaper(_Gcra):
    max_wait: float
    def __init__(
        self,
        rate: float,
        burst: int = 1,
        *,
        max_wait: float = 1.0,
        clock: Clock | None = None,
        max_keys: int = 1_000_000,
    ) -> None: ...

class _Window(RateKernel):
    limit: int
    period: float
    period_ns: int
    def reserving(self, reserve: int) -> Self: ...
    def __init__(
        self,
        limit: int,
        period: float,
        *,
        clock: Clock | None = None,
        max_keys: int = 1_000_000,
    ) -> None: ...

class FixedWindow(_Window): ...
class SlidingWindow(_Window): ...

class ConcurrencyLimit(KeyedLimiter):
    limit: int
    def __init__(self, limit: int, *, max_keys: int = 1_000_000) -> None: ...
    def acquire(self, key: str = "", cost: int = 1) -> Permit: ...
    def in_flight(self, key: str = "") -> int: ...

class Reservoir:
    size: int
    subwindows: int
    horizon: float
    def __init__(
        self,
        size: int = 1024,
        horizon: float = 10.0,
        subwindows: int = 10,
        *,
        seed: int = 0,
        clock: Clock | None = None,
    ) -> None: ...
    def add(self, value: float, now: int | None = None) -> None: ...
    def add_many(self, values: npt.ArrayLike, now: int | None = None) -> None: ...
    def quantile(self, p: float, now: int | None = None, enough: int = 0) -> float: ...
    def quantiles(self, ps: Sequence[float], now: int | None = None) -> list[float]: ...
    def count(self, now: int | None = None) -> int: ...
    def kept(self, now: int | None = None) -> int: ...
    def rank_error(self, p: float, now: int | None = None) -> float: ...
    def snapshot(self, now: int | None = None) -> Any: ...
    def clear(self) -> None: ...

def weighted_quantile(values: npt.ArrayLike, weights: npt.ArrayLike, p: float) -> float: ...

class AdaptiveLimit:
    limit: float
    current_percentile: float
    next_cut: float
    state: Any
    probe_interval: float
    baseline: float
    tolerance: float
    window_age: float
    baseline_interval: float
    def on_decision(
        self, allowed: bool, in_flight: int = 0, now: int | None = None, *, guarded: bool = False
    ) -> None: ...
    def record(
        self, latency: float, ok: bool = True, *, outcome: Any = None, now: int | None = None
    ) -> None: ...
    def evaluate(self, now: int | None = None) -> Any: ...
    def summary(self, now: int | None = None) -> Any: ...

class AdaptivePermit(Decision):
    def success(self) -> None: ...
    def release(self) -> None: ...
    def dropped(self) -> None: ...
    def ignore(self) -> None: ...

def pacing_burst(burst: float, target_latency: float, limit: float) -> float: ...

class AdaptiveLimiter:
    current_limit: float
    current_percentile: float
    in_flight: int
    def __init__(
        self,
        target_latency: float = 0.1,
        percentile: float = 0.99,
        mode: str = "rate",
        min_limit: float = 1,
        max_limit: float = 100_000,
        initial_limit: float | None = None,
        clock: Clock | None = None,
        *,
        burst: float | None = None,
        queue_cap: float | None = None,
        limit_model: Any = None,
        **controller: Any,
    ) -> None: ...
    def acquire(self, key: str = "", cost: int = 1) -> AdaptivePermit: ...
    def record(self, latency: float, ok: bool = True, *, outcome: Any = None) -> None: ...
    def summary(self) -> Any: ...

class PriorityQueue:
    classes: int
    strict: bool
    lifo: bool
    expired_pending: int
    capacity: tuple[int, ...]
    weights: tuple[int, ...] | None
    def __init__(
        self,
        capacity: int | Sequence[int],
        *,
        weights: Sequence[int] | None = None,
        classes: int | None = None,
        lifo: bool = False,
    ) -> None: ...
    def push(self, priority: int, deadline: int | None = None) -> int: ...
    def peek(self, now: int) -> int: ...
    def pop(self, now: int) -> int: ...
    def pop_expired(self, now: int) -> int: ...
    def remove(self, item: int) -> bool: ...
    def next_deadline(self) -> int: ...
    def depth(self, priority: int) -> int: ...
    def __len__(self) -> int: ...

class HeavyHitters:
    capacity: int
    buckets: int
    window: float
    def __init__(
        self,
        capacity: int = 64,
        window: float = 10.0,
        buckets: int = 5,
        *,
        clock: Clock | None = None,
    ) -> None: ...
    def offer(self, key: str, weight: int = 1) -> int: ...
    def offer_many(self, keys: Sequence[str], weights: Sequence[int]) -> None: ...
    def estimate(self, key: str) -> int: ...
    def total(self) -> int: ...
    def share(self, key: str) -> float: ...
    def top(self, n: int = 10) -> list[tuple[str, int, int]]: ...
    def clear(self) -> None: ...
    def __len__(self) -> int: ...

def gcra_decision(
    allowed: bool, d: int, cost: int, interval: int, burst: int, max_wait: int = 0
) -> Decision: ...
def window_decision(
    sliding: bool,
    allowed: bool,
    limit: int,
    period_ns: int,
    cur: int,
    prev: int,
    elapsed: int,
    cost: int,
) -> Decision: ...

MAX_KEY_CHARS: int
KEY_HEAD: int

def valid_key(key: object) -> str: ...
def valid_cost(cost: object, maximum: int) -> int: ...
