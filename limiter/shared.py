"""Limits whose state lives in a shared store (Redis), with the failure mode applied here.

A ``SharedLimiter`` (rate algorithms) or ``SharedConcurrency`` answers as the in-process
kernel of the same algorithm would, but every decision is made by the store, so every
process that names the same store enforces one limit. The store answers a failure as
the exception itself; this module alone turns it into the limit's ``FailureMode``
(``limiter.failure``), using the kernel it was built from as the ``local`` fallback.

The decision service calls ``decide`` / ``acquire_async`` and learns from the answer
itself which checks the failure mode decided (``Answers.failed``, ``SharedPermit.failed``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from limiter._core import Decision, valid_cost, valid_key
from limiter.failure import DEFAULT, FailureMode, fallback


class Answers(NamedTuple):
    """Decisions in request order, and the indices the failure mode answered."""

    decisions: list[Any]
    failed: tuple[int, ...]


class _Shared:
    def __init__(self, kernel: Any, store: Any, limit: int, failure_mode: object = DEFAULT) -> None:
        self.kernel = kernel  # the algorithm's parameters, and the ``local`` fallback
        self.store = store
        self.limit = limit
        self.max_cost = kernel.max_cost
        self.failure_mode = FailureMode.parse(failure_mode)

    def _fallback(self, key: str, cost: int) -> Any:
        return fallback(
            self.failure_mode, self.kernel, key, cost, self.limit, self.store.retry_after
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.kernel!r}, failure_mode={self.failure_mode.value!r})"


class SharedLimiter(_Shared):
    """A rate algorithm (token/leaky bucket, windows) decided by a shared store."""

    def _answer(self, key: str, cost: int, d: Any) -> Decision:
        return d if type(d) is Decision else self._fallback(key, cost)

    def acquire(self, key: str = "", cost: int = 1) -> Decision:
        """Take ``cost`` units for ``key`` (blocks for the store's round trip)."""
        key, cost = valid_key(key), valid_cost(cost, self.max_cost)
        return self._answer(key, cost, self.store.decide(key, cost))

    async def acquire_async(self, key: str = "", cost: int = 1) -> Decision:
        """``acquire`` for asyncio code: the round trip is awaited."""
        key, cost = valid_key(key), valid_cost(cost, self.max_cost)
        return self._answer(key, cost, await self.store.decide_async(key, cost))

    def allow(self, key: str = "", cost: int = 1) -> bool:
        return self.acquire(key, cost).allowed

    def reserving(self, reserve: int) -> SharedLimiter:
        """This limit's state, leaving ``reserve`` units untouched: the store's and the
        local fallback's (the kernel's ``reserving``)."""
        view = self.kernel.reserving(reserve)
        return SharedLimiter(view, self.store.reserving(reserve), view.max_cost, self.failure_mode)

    def _checked(self, keys: Any, costs: Any) -> tuple[list[str], list[int]]:
        ks = [valid_key(k) for k in keys]
        if costs is None:
            return ks, [1] * len(ks)
        cs = [valid_cost(int(c) if isinstance(c, np.integer) else c, self.max_cost) for c in costs]
        if len(cs) != len(ks):
            from limiter.errors import InvalidParameter

            raise InvalidParameter(f"costs: {len(cs)} given for {len(ks)} keys")
        return ks, cs

    def acquire_batch(self, keys: Any, costs: Any = None) -> list[Decision]:
        """``acquire`` for many requests in order, in one round trip."""
        ks, cs = self._checked(keys, costs)
        answers = self.store.decide_batch(ks, cs)
        return [self._answer(k, c, d) for k, c, d in zip(ks, cs, answers, strict=True)]

    def allow_batch(self, keys: Any, costs: Any = None) -> np.ndarray:
        """``allow`` for many requests: a numpy bool array."""
        return np.fromiter((d.allowed for d in self.acquire_batch(keys, costs)), dtype=np.bool_)

    async def decide(self, keys: list[str], costs: list[int]) -> Answers:
        """Validated checks in one awaited round trip, saying which the failure mode
        answered (the decision service's entry). Keys are taken as the kernels keep
        them (a long one as its digest), so the store's keys are bounded too."""
        keys = [valid_key(k) for k in keys]
        if len(keys) == 1:
            d = await self.store.decide_async(keys[0], costs[0])
            if type(d) is Decision:
                return Answers([d], ())
            return Answers([self._fallback(keys[0], costs[0])], (0,))
        answers = await self.store.decide_batch_async(keys, costs)
        failed = tuple(i for i, d in enumerate(answers) if type(d) is not Decision)
        for i in failed:
            answers[i] = self._fallback(keys[i], costs[i])
        return Answers(answers, failed)

    def reset(self, key: str = "") -> None:
        """Forget ``key``'s state in the store (and in the local fallback)."""
        key = valid_key(key)
        self.kernel.reset(key)
        self.store.reset(key)


class SharedPermit:
    """Slots of a shared concurrency limit held until ``release`` (once; a lease the
    holder never releases expires in the store after the lease TTL).

    ``failed``: the store could not be asked and the failure mode answered.
    """

    __slots__ = ("_held", "allowed", "failed", "limit", "remaining", "reset_after", "retry_after")

    wait = 0.0

    def __init__(self, decision: Any, held: Any, failed: bool) -> None:
        self.allowed = decision.allowed
        self.limit = decision.limit
        self.remaining = decision.remaining
        self.reset_after = decision.reset_after
        self.retry_after = decision.retry_after
        self.failed = failed
        # (store, key, cost, lease) for a store lease, a local Permit, or None
        self._held = held if decision.allowed else None

    @property
    def released(self) -> bool:
        return self._held is None

    def release(self, wait: bool = False) -> None:
        """Give the slots back (once). With ``wait``, return only when the store has them
        back, so the slot is free for every replica when this returns (blocks)."""
        held, self._held = self._held, None
        if held is None:
            return
        if type(held) is tuple:
            store, key, cost, lease = held
            store.release(key, cost, lease)  # posted to the store's queue
            if wait:
                store.in_flight(key)  # queued behind the release: returns once it applied
        else:
            held.release()

    def __bool__(self) -> bool:
        return self.allowed

    def __enter__(self) -> SharedPermit:
        if not self.allowed:
            from limiter.errors import RateLimited

            raise RateLimited(self)
        return self

    def __exit__(self, *exc: object) -> bool:
        self.release()
        return False


class SharedConcurrency(_Shared):
    """A concurrency limit whose in-flight counts live in a shared store (as leases)."""

    def _permit(self, key: str, cost: int, answer: Any) -> SharedPermit:
        if type(answer) is tuple:
            decision, lease = answer
            return SharedPermit(decision, (self.store, key, cost, lease), False)
        local = self._fallback(key, cost)
        held = local if self.failure_mode is FailureMode.LOCAL else None
        return SharedPermit(local, held, True)

    def acquire(self, key: str = "", cost: int = 1) -> SharedPermit:
        """Take ``cost`` in-flight slots for ``key`` (blocks for the round trip)."""
        key, cost = valid_key(key), valid_cost(cost, self.max_cost)
        return self._permit(key, cost, self.store.lease(key, cost))

    async def acquire_async(self, key: str = "", cost: int = 1) -> SharedPermit:
        key, cost = valid_key(key), valid_cost(cost, self.max_cost)
        return self._permit(key, cost, await self.store.lease_async(key, cost))

    def in_flight(self, key: str = "") -> int:
        """Units held for ``key`` by live leases in the store."""
        return self.store.in_flight(valid_key(key))
