"""Decorators and context managers: rate-limit plain functions, sync and async.

They work with anything that answers ``acquire(key, cost) -> Decision``: the
in-process limiters, a ``ConcurrencyLimit`` (its permit is released when the call
ends), the adaptive limiter (its permit measures the call), or an SDK client of the
decision service. A refused call raises ``limiter.RateLimited`` unless ``max_wait``
allows waiting for the limiter's ``retry_after``; async callers wait with
``asyncio.sleep`` and limiters that do network I/O run in a worker thread, so the
event loop is never blocked.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from limiter.errors import InvalidParameter, RateLimited

F = TypeVar("F", bound=Callable[..., Any])
Acquire = Callable[[str, int], Any]

# Polling bounds when a refusal carries no retry_after (e.g. a concurrency limit).
MIN_POLL = 0.001
MAX_POLL = 0.050


def is_blocking(limiter: object) -> bool:
    """Does ``limiter.acquire`` do network I/O (a shared store or a sync SDK client)?"""
    return hasattr(limiter, "store") or bool(getattr(limiter, "blocking", False))


def async_acquirer(limiter: object) -> Callable[[str, int], Awaitable[Any]]:
    """``acquire`` as a coroutine function that never blocks the event loop.

    In-process kernels answer in well under a microsecond and are called inline;
    async clients and shared stores are awaited; anything else that does blocking I/O
    runs in a thread.
    """
    acquire = check_limiter(limiter)
    if inspect.iscoroutinefunction(acquire):
        return acquire
    acquire_async = getattr(limiter, "acquire_async", None)
    if inspect.iscoroutinefunction(acquire_async):
        return acquire_async
    if is_blocking(limiter):

        async def in_thread(key: str, cost: int) -> Any:
            return await asyncio.to_thread(acquire, key, cost)

        return in_thread

    async def inline(key: str, cost: int) -> Any:
        return acquire(key, cost)

    return inline


def check_limiter(limiter: object) -> Acquire:
    acquire = getattr(limiter, "acquire", None)
    if not callable(acquire):
        raise InvalidParameter(
            f"limiter must have an acquire(key, cost) method, got {limiter!r:.80}"
        )
    return acquire


def check_max_wait(max_wait: object) -> float:
    if isinstance(max_wait, bool) or not isinstance(max_wait, int | float):
        raise InvalidParameter(f"max_wait must be a number of seconds, got {max_wait!r}")
    if math.isnan(max_wait) or max_wait < 0:
        raise InvalidParameter(
            f"max_wait must be >= 0 seconds (inf to wait forever), got {max_wait!r}"
        )
    return float(max_wait)


def _pause(decision: Any, attempt: int) -> float:
    if decision.retry_after > 0:
        return decision.retry_after
    return min(MIN_POLL * 2**attempt, MAX_POLL)


def acquire_waiting(limiter: object, key: str, cost: int = 1, max_wait: float = 0.0) -> Any:
    """Acquire, sleeping on refusals for up to ``max_wait`` s; raise RateLimited after.

    A shaper's ``wait`` (an allowed request that must be delayed) is honoured too.
    """
    acquire = check_limiter(limiter)
    max_wait = check_max_wait(max_wait)
    deadline = time.monotonic() + max_wait
    attempt = 0
    while True:
        decision = acquire(key, cost)
        if decision.allowed:
            if decision.wait > 0:
                time.sleep(decision.wait)
            return decision
        pause = _pause(decision, attempt)
        if time.monotonic() + pause > deadline:
            raise RateLimited(decision)
        time.sleep(pause)
        attempt += 1


async def acquire_waiting_async(
    limiter: object, key: str, cost: int = 1, max_wait: float = 0.0
) -> Any:
    """``acquire_waiting`` for coroutines: waits with asyncio.sleep, never blocks the loop."""
    return await _acquire_waiting_async(
        async_acquirer(limiter), key, cost, check_max_wait(max_wait)
    )


async def _acquire_waiting_async(
    acquire: Callable[[str, int], Awaitable[Any]], key: str, cost: int, max_wait: float
) -> Any:
    deadline = time.monotonic() + max_wait
    attempt = 0
    while True:
        decision = await acquire(key, cost)
        if decision.allowed:
            if decision.wait > 0:
                await asyncio.sleep(decision.wait)
            return decision
        pause = _pause(decision, attempt)
        if time.monotonic() + pause > deadline:
            raise RateLimited(decision)
        await asyncio.sleep(pause)
        attempt += 1


def _argument(value: Any, name: str) -> Callable[..., Any]:
    """A key or cost given as a constant or as a function of the call's arguments."""
    if callable(value):
        return value
    if name == "key" and not isinstance(value, str):
        raise InvalidParameter(f"key must be a str or a callable, got {value!r:.80}")
    if name == "cost" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InvalidParameter(f"cost must be an integer >= 1 or a callable, got {value!r:.80}")
    return lambda *args, **kwargs: value


def rate_limited(
    limiter: object,
    key: str | Callable[..., str] = "",
    cost: int | Callable[..., int] = 1,
    *,
    max_wait: float = 0.0,
) -> Callable[[F], F]:
    """Decorate a function (or coroutine function) so each call acquires first.

    ``key`` and ``cost`` may be callables receiving the call's arguments, e.g.
    ``key=lambda user, **_: user.id``. The Decision is held as a context manager
    around the call, so permits are released and latencies recorded on return,
    exception or cancellation.
    """
    check_limiter(limiter)
    max_wait = check_max_wait(max_wait)
    key_of = _argument(key, "key")
    cost_of = _argument(cost, "cost")

    def decorate(fn: F) -> F:
        if inspect.iscoroutinefunction(fn):
            acquire = async_acquirer(limiter)

            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                decision = await _acquire_waiting_async(
                    acquire, key_of(*args, **kwargs), cost_of(*args, **kwargs), max_wait
                )
                with decision:
                    return await fn(*args, **kwargs)

            return run_async  # type: ignore[return-value]

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            decision = acquire_waiting(
                limiter, key_of(*args, **kwargs), cost_of(*args, **kwargs), max_wait
            )
            with decision:
                return fn(*args, **kwargs)

        return run  # type: ignore[return-value]

    return decorate


class limited:
    """Context manager for a block, ``with`` or ``async with``; yields the Decision.

    Create one per use (it holds the Decision of the block it guards).
    """

    def __init__(self, limiter: object, key: str = "", cost: int = 1, *, max_wait: float = 0.0):
        check_limiter(limiter)
        _argument(key, "key")
        _argument(cost, "cost")
        self.limiter = limiter
        self.key = key
        self.cost = cost
        self.max_wait = check_max_wait(max_wait)
        self.decision: Any = None

    def __enter__(self) -> Any:
        self.decision = acquire_waiting(self.limiter, self.key, self.cost, self.max_wait)
        return self.decision.__enter__()

    def __exit__(self, *exc: Any) -> bool | None:
        return self.decision.__exit__(*exc)

    async def __aenter__(self) -> Any:
        self.decision = await acquire_waiting_async(
            self.limiter, self.key, self.cost, self.max_wait
        )
        return self.decision.__enter__()

    async def __aexit__(self, *exc: Any) -> bool | None:
        return self.decision.__exit__(*exc)
