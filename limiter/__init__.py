"""limiter: adaptive rate limiting and degradation with a Cython core.

Every limiter answers ``acquire(key, cost=1) -> Decision``; see README.md.
"""

from limiter.errors import ConfigError, InvalidParameter, LimiterError, RateLimited

try:
    from limiter._core import (
        AdaptiveLimit,
        AdaptivePermit,
        Decision,
        HeavyHitters,
        Permit,
        PriorityQueue,
        Reservoir,
        weighted_quantile,
    )
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "limiter's compiled core (limiter._core) is missing or stale. Build it with "
        "`make build` (or `pip install -e .` / `python setup.py build_ext --inplace`); "
        f"limiter never falls back to slow pure-Python code. Cause: {exc}"
    ) from exc

from limiter.admission import AdmissionQueue, DeadlineExceeded, QueuedPermit, QueueFull
from limiter.decorators import limited, rate_limited
from limiter.failure import FailureMode
from limiter.limits import (
    AdaptiveLimiter,
    ConcurrencyLimit,
    FixedWindow,
    LeakyBucket,
    LeakyShaper,
    SlidingWindow,
    TokenBucket,
)
from limiter.priority import Priority

__all__ = [
    "AdaptiveLimit",
    "AdaptiveLimiter",
    "AdaptivePermit",
    "AdmissionQueue",
    "ConcurrencyLimit",
    "ConfigError",
    "DeadlineExceeded",
    "Decision",
    "FailureMode",
    "FixedWindow",
    "HeavyHitters",
    "InvalidParameter",
    "LeakyBucket",
    "LeakyShaper",
    "LimiterError",
    "Permit",
    "Priority",
    "PriorityQueue",
    "QueueFull",
    "QueuedPermit",
    "RateLimited",
    "Reservoir",
    "SlidingWindow",
    "TokenBucket",
    "limited",
    "rate_limited",
    "weighted_quantile",
]
