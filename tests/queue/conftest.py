"""Helpers for the queue area: a manual clock and a driver for queued asyncio requests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from limiter import TokenBucket
from limiter.admission import AdmissionQueue
from tests.core.clock import ManualClock

TICK = 100_000_000  # one token at rate 10/s, in ns


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def make_queue(clock: ManualClock) -> Callable[..., AdmissionQueue]:
    """An AdmissionQueue over TokenBucket(rate=10, burst=1) on the manual clock."""

    def make(limiter: Any = None, **kwargs: Any) -> AdmissionQueue:
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("auto_poll", False)
        kwargs.setdefault("max_wait", 100.0)
        if limiter is None:
            limiter = TokenBucket(rate=10, burst=1, clock=clock)
        return AdmissionQueue(limiter, **kwargs)

    return make


async def settle() -> None:
    """Let every ready task run until it blocks again."""
    for _ in range(5):
        await asyncio.sleep(0)


async def held_and_queued(q: AdmissionQueue, key: str = "k") -> tuple[Any, asyncio.Task[Any]]:
    """Take ``key``'s only slot, then queue one task behind it (settled, still waiting)."""
    holder = q.acquire(key)
    waiter = asyncio.create_task(q.acquire_async(key))
    await settle()
    return holder, waiter
