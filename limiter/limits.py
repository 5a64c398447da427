"""The limiters users build, and where their state lives.

Each constructor builds the in-process Cython kernel (``limiter._core``), which
validates the parameters and decides in this process. With ``backend=`` (a Redis URL or
a ``RedisBackend``) the same algorithm is decided by the shared store instead, and the
kernel stays as the ``local`` failure-mode fallback (``limiter.shared``). This is the
one place that picks between the two: kernels never know stores exist.
"""

from __future__ import annotations

from typing import Any

from limiter import _core
from limiter.backends import bind
from limiter.backends.base import Spec
from limiter.failure import DEFAULT
from limiter.shared import SharedConcurrency, SharedLimiter

MAX_KEYS = 1_000_000


def spec_of(kernel: Any) -> Spec:
    """What a shared store needs to run ``kernel``'s algorithm with its parameters."""
    kind = type(kernel)
    if kind is _core.TokenBucket:
        return Spec("token_bucket", kernel.burst, interval_ns=kernel.interval_ns)
    if kind is _core.LeakyBucket:
        return Spec("leaky_bucket", kernel.burst, interval_ns=kernel.interval_ns)
    if kind is _core.LeakyShaper:
        return Spec("leaky_shaper", kernel.burst, kernel.interval_ns, 0, kernel.max_wait_ns)
    if kind is _core.FixedWindow:
        return Spec("fixed_window", kernel.limit, period_ns=kernel.period_ns)
    if kind is _core.SlidingWindow:
        return Spec("sliding_window", kernel.limit, period_ns=kernel.period_ns)
    return Spec("concurrency", kernel.limit)


def share(kernel: Any, backend: object, failure_mode: object = DEFAULT, **options: Any) -> Any:
    """``kernel`` itself when ``backend`` is None or ``"memory://"``, else its algorithm
    on the shared store ``backend`` names (``options``: the store's per-limit options,
    e.g. ``lease_ttl``)."""
    spec = spec_of(kernel)
    store = bind(backend, spec, **options)
    if store is None:
        return kernel
    if spec.algorithm == "concurrency":
        return SharedConcurrency(kernel, store, spec.limit, failure_mode)
    return SharedLimiter(kernel, store, spec.limit, failure_mode)


def TokenBucket(
    rate: float,
    burst: int,
    *,
    clock: Any = None,
    max_keys: int = MAX_KEYS,
    backend: object = None,
    failure_mode: object = DEFAULT,
) -> Any:
    """Token bucket: ``rate`` tokens per second accrue continuously up to ``burst``."""
    kernel = _core.TokenBucket(rate, burst, clock=clock, max_keys=max_keys)
    return share(kernel, backend, failure_mode)


def LeakyBucket(
    rate: float,
    burst: int = 1,
    *,
    clock: Any = None,
    max_keys: int = MAX_KEYS,
    backend: object = None,
    failure_mode: object = DEFAULT,
) -> Any:
    """Leaky bucket as a meter (GCRA): exactly ``rate``/s with ``burst`` tolerance."""
    kernel = _core.LeakyBucket(rate, burst, clock=clock, max_keys=max_keys)
    return share(kernel, backend, failure_mode)


def LeakyShaper(
    rate: float,
    burst: int = 1,
    *,
    max_wait: float = 1.0,
    clock: Any = None,
    max_keys: int = MAX_KEYS,
    backend: object = None,
    failure_mode: object = DEFAULT,
) -> Any:
    """Leaky bucket as a shaper: admits and says how long to wait (``Decision.wait``)."""
    kernel = _core.LeakyShaper(rate, burst, max_wait=max_wait, clock=clock, max_keys=max_keys)
    return share(kernel, backend, failure_mode)


def FixedWindow(
    limit: int,
    period: float,
    *,
    clock: Any = None,
    max_keys: int = MAX_KEYS,
    backend: object = None,
    failure_mode: object = DEFAULT,
) -> Any:
    """At most ``limit`` units per aligned window of ``period`` seconds."""
    kernel = _core.FixedWindow(limit, period, clock=clock, max_keys=max_keys)
    return share(kernel, backend, failure_mode)


def SlidingWindow(
    limit: int,
    period: float,
    *,
    clock: Any = None,
    max_keys: int = MAX_KEYS,
    backend: object = None,
    failure_mode: object = DEFAULT,
) -> Any:
    """Sliding-window counter: ``limit`` units per any ``period``-long window."""
    kernel = _core.SlidingWindow(limit, period, clock=clock, max_keys=max_keys)
    return share(kernel, backend, failure_mode)


def ConcurrencyLimit(
    limit: int,
    *,
    max_keys: int = MAX_KEYS,
    backend: object = None,
    failure_mode: object = DEFAULT,
) -> Any:
    """At most ``limit`` units in flight per key; ``acquire`` returns a permit."""
    kernel = _core.ConcurrencyLimit(limit, max_keys=max_keys)
    return share(kernel, backend, failure_mode)


def AdaptiveLimiter(
    target_latency: float = 0.1,
    percentile: float = 0.99,
    mode: str = "rate",
    *,
    backend: object = None,
    name: str = "adaptive",
    failure_mode: object = DEFAULT,
    **knobs: Any,
) -> Any:
    """A limit that follows the backend's latency (see ``limiter._core.AdaptiveLimiter``).

    With ``backend=`` (Redis) every process using the same ``name`` converges on, and
    paces at, one shared limit (rate mode only): ``SharedAdaptiveLimiter``.
    """
    if backend is None or backend == "memory://":
        return _core.AdaptiveLimiter(target_latency, percentile, mode, **knobs)
    from limiter.backends.redis import RedisBackend, shared_backend
    from limiter.backends.shared_adaptive import SharedAdaptiveLimiter
    from limiter.errors import InvalidParameter

    if "queue_cap" in knobs:
        raise InvalidParameter("queue_cap is not supported with a shared backend (it paces only)")
    if "limit_model" in knobs:
        raise InvalidParameter("limit_model cannot be combined with a shared backend")
    if isinstance(backend, str):
        store: Any = shared_backend(backend) if "://" in backend else None
        if store is None:
            raise InvalidParameter(f"backend must be a Redis URL, got {backend!r:.80}")
    elif isinstance(backend, RedisBackend):
        store = backend
    else:
        raise InvalidParameter(
            f"backend must be a Redis URL or a RedisBackend for AdaptiveLimiter, "
            f"got {backend!r:.80}"
        )
    return SharedAdaptiveLimiter(
        store,
        name,
        target_latency=target_latency,
        percentile=percentile,
        mode=mode,
        failure_mode=failure_mode,
        **knobs,
    )
