"""limiter: adaptive rate limiting and degradation with a Cython core.

Every limiter answers ``acquire(key, cost=1) -> Decision``; see README.md.
"""

from limiter.errors import ConfigError, InvalidParameter, LimiterError, RateLimited

try:
    from limiter._core import (
        ConcurrencyLimit,
        Decision,
        FixedWindow,
        LeakyBucket,
        LeakyShaper,
        Permit,
        SlidingWindow,
        TokenBucket,
    )
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "limiter's compiled core (limiter._core) is missing or stale. Build it with "
        "`make build` (or `pip install -e .` / `python setup.py build_ext --inplace`); "
        f"limiter never falls back to slow pure-Python code. Cause: {exc}"
    ) from exc

__all__ = [
    "ConcurrencyLimit",
    "ConfigError",
    "Decision",
    "FixedWindow",
    "InvalidParameter",
    "LeakyBucket",
    "LeakyShaper",
    "LimiterError",
    "Permit",
    "RateLimited",
    "SlidingWindow",
    "TokenBucket",
]
