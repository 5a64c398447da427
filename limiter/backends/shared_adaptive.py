"""One adaptive limit for every replica, kept in Redis.

Every replica reports its calls' latencies and its admission counts; one replica at a
time (the holder of a short leader lease in Redis) feeds all reports to an
``AdaptiveLimit`` controller and publishes the limit it computes; every replica reads
that limit and admits through one Redis GCRA paced at it (a ``SharedLimiter``, so a
Redis failure is answered by the limit's failure mode). So the fleet converges on,
and enforces, one cluster-wide limit; if the leader dies its lease lapses and another
replica takes over, starting from the published limit.

The exchange with Redis runs on a worker thread when it is due, so neither a caller's
thread nor an event loop ever waits for it; ``sync()`` runs it now (tests, shutdown).
"""

from __future__ import annotations

import math
import os
import threading
from math import ceil
from time import monotonic_ns
from typing import Any

from limiter._core import (
    AdaptiveLimit,
    Decision,
    TokenBucket,
    pacing_burst,
    valid_cost,
    valid_key,
)
from limiter.backends.base import Spec
from limiter.backends.combiner import Call
from limiter.backends.keys import hash_tag
from limiter.backends.redis import RedisBackend, shared_backend
from limiter.backends.scripts import ADAPTIVE_SYNC
from limiter.errors import InvalidParameter, RateLimited
from limiter.failure import DEFAULT
from limiter.shared import Answers, SharedLimiter

OUTCOMES = ("ok", "dropped", "ignored")


class SharedAdaptivePermit:
    """An admission of a ``SharedAdaptiveLimiter`` that measures its call and reports it.

    Finish it once: ``success()`` (alias ``release()``), ``dropped()`` or ``ignore()``;
    as a context manager a clean exit is a success, ``TimeoutError`` or ``RateLimited``
    a drop, any other exception is ignored (as ``limiter.AdaptivePermit``).
    """

    __slots__ = (
        "_owner",
        "_start",
        "allowed",
        "limit",
        "released",
        "remaining",
        "reset_after",
        "retry_after",
    )  # fmt: skip

    wait = 0.0

    def __init__(self, owner: SharedAdaptiveLimiter, decision: Decision) -> None:
        self._owner = owner
        self._start = owner.clock()
        self.allowed = decision.allowed
        self.limit = decision.limit
        self.remaining = decision.remaining
        self.reset_after = decision.reset_after
        self.retry_after = decision.retry_after
        self.released = not decision.allowed

    def _finish(self, outcome: str) -> None:
        if not self.released:
            self.released = True
            self._owner._in_flight -= 1
            if outcome != "ignored":
                elapsed = max(self._owner.clock() - self._start, 0)
                self._owner.record(elapsed / 1e9, outcome == "ok")

    def success(self) -> None:
        self._finish("ok")

    release = success

    def dropped(self) -> None:
        self._finish("dropped")

    def ignore(self) -> None:
        self._finish("ignored")

    def __bool__(self) -> bool:
        return self.allowed

    def __enter__(self) -> SharedAdaptivePermit:
        if not self.allowed:
            raise RateLimited(self)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if exc_type is None:
            self._finish("ok")
        elif issubclass(exc_type, (TimeoutError, RateLimited)):
            self._finish("dropped")
        else:
            self._finish("ignored")
        return False

    async def __aenter__(self) -> SharedAdaptivePermit:
        return self.__enter__()

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        return self.__exit__(exc_type, exc, tb)


class SharedAdaptiveLimiter:
    """Rate-mode adaptive limiter whose limit and pacing are shared through Redis.

    ``acquire(key, cost)`` -> ``SharedAdaptivePermit`` (one limit for all keys, as
    ``AdaptiveLimiter``); ``record(latency, ok)`` reports a call measured elsewhere.
    Reports and the limit are exchanged every ``sync_interval`` seconds. Controller
    knobs are ``AdaptiveLimit``'s; ``failure_mode`` is what the pacing answers while
    Redis is away (``limiter.failure``); ``clock`` (int ns, default monotonic) times the
    calls permits measure (the limit itself runs on the Redis server's clock).
    """

    def __init__(
        self,
        backend: RedisBackend | str,
        name: str,
        *,
        target_latency: float = 0.1,
        percentile: float = 0.99,
        min_limit: float = 1,
        max_limit: float = 100_000,
        initial_limit: float | None = None,
        burst: float | None = None,
        sync_interval: float = 0.25,
        lease: float = 2.0,
        max_reports: int = 2000,
        failure_mode: object = DEFAULT,
        clock: Any = None,
        **controller: Any,
    ) -> None:
        if clock is not None and not callable(clock):
            raise InvalidParameter(f"clock must be a callable returning int ns, got {clock!r:.80}")
        self.clock = clock or monotonic_ns
        self.backend = backend if isinstance(backend, RedisBackend) else shared_backend(backend)
        if not isinstance(name, str) or not name:
            raise InvalidParameter(f"name must be a non-empty str, got {name!r:.80}")
        for field, value in (("burst", burst), ("sync_interval", sync_interval), ("lease", lease)):
            if field == "burst" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise InvalidParameter(f"{field} must be a positive number, got {value!r}")
        if controller.get("mode", "rate") != "rate":
            raise InvalidParameter(
                f"mode must be 'rate' for a shared limit (it paces admissions), "
                f"got {controller['mode']!r}"
            )
        controller.pop("mode", None)
        self.settings = dict(target_latency=target_latency, percentile=percentile, mode="rate",
                             min_limit=min_limit, max_limit=max_limit, **controller)  # fmt: skip
        self.controller = AdaptiveLimit(initial_limit=initial_limit, **self.settings)
        self.burst = 0.0 if burst is None else float(burst)
        self.mode = "rate"
        self.sync_ns = int(sync_interval * 1e9)
        self.lease_ms = max(1, int(lease * 1000))
        self.max_reports = int(max_reports)
        self.failure_mode = failure_mode
        base = self.backend.prefix + b"adaptive:" + hash_tag(name)
        self.keys = (base + b":reports", base + b":leader", base + b":limit")
        self.state_prefix = base + b":tat"
        self.replica = os.urandom(8).hex().encode()
        self.leader = False
        self.lock = threading.Lock()
        self.reports: list[bytes] = []
        self.admitted = self.rejected = 0
        self.next_sync = 0
        self._syncing = False
        self._in_flight = 0
        self.limit = self.controller.limit
        self.pacer = self._pacer(self.limit)

    def _pacer(self, limit: float) -> SharedLimiter:
        """A GCRA paced at ``limit``/s with the burst tolerance AdaptiveLimiter has."""
        burst = max(1, ceil(pacing_burst(self.burst, self.controller.target_latency, limit)))
        interval = ceil(1e9 / limit)
        store = self.backend.bind(Spec("token_bucket", burst, interval), local_cache=False)
        store.codec.prefix = self.state_prefix  # one state whatever the limit: pacing carries over
        return SharedLimiter(TokenBucket(1e9 / interval, burst), store, burst, self.failure_mode)

    @property
    def current_limit(self) -> float:
        return self.limit

    @property
    def current_percentile(self) -> float:
        """The leader's last evaluated percentile (NaN on a replica that never led)."""
        return float(self.controller.current_percentile)

    @property
    def in_flight(self) -> int:
        """Calls admitted through permits and not yet finished."""
        return self._in_flight

    def summary(self) -> dict[str, Any]:
        return self.controller.summary()

    def _cost(self, key: Any, cost: Any) -> int:
        valid_key(key)
        # One limit for every key; a cost above the burst is paced as one burst's worth
        # (as the in-process kernel widens its tolerance to the cost).
        return min(valid_cost(cost, 1 << 40), self.pacer.max_cost)

    def _answer(self, decision: Decision) -> Decision:
        """Count the admission for the controller; report the shared limit."""
        if decision.allowed:
            self.admitted += 1
        else:
            self.rejected += 1
        return Decision(decision.allowed, math.ceil(self.limit), decision.remaining,
                        decision.reset_after, decision.retry_after)  # fmt: skip

    def _permit(self, decision: Decision) -> SharedAdaptivePermit:
        permit = SharedAdaptivePermit(self, self._answer(decision))
        if permit.allowed:
            self._in_flight += 1
        return permit

    def acquire(self, key: str = "", cost: int = 1) -> SharedAdaptivePermit:
        """Ask to start a call (blocks for the round trip); returns a permit."""
        cost = self._cost(key, cost)
        self._sync_soon()
        return self._permit(self.pacer.acquire("", cost))

    async def acquire_async(self, key: str = "", cost: int = 1) -> SharedAdaptivePermit:
        cost = self._cost(key, cost)
        self._sync_soon()
        return self._permit(await self.pacer.acquire_async("", cost))

    async def decide(self, keys: list[str], costs: list[int]) -> Answers:
        """Validated checks in one awaited round trip (the decision service's entry):
        decisions carry the shared limit; no permit measures these calls (the service
        learns their latency from Observe and access logs)."""
        self._sync_soon()
        cap = self.pacer.max_cost
        answers = await self.pacer.decide([""] * len(keys), [min(c, cap) for c in costs])
        return Answers([self._answer(d) for d in answers.decisions], answers.failed)

    def record(self, latency: float, ok: bool = True, *, outcome: str | None = None) -> None:
        """One finished call: ``latency`` seconds; ``ok=False`` (or ``outcome="dropped"``)
        if it was dropped or timed out; ``outcome="ignored"`` is not a sample."""
        if isinstance(latency, bool) or not isinstance(latency, (int, float)) or not latency >= 0:
            raise InvalidParameter(f"latency must be a number of seconds >= 0, got {latency!r}")
        if outcome is not None:
            if outcome not in OUTCOMES:
                raise InvalidParameter(f"outcome must be one of {OUTCOMES}, got {outcome!r}")
            if outcome == "ignored":
                return
            ok = outcome == "ok"
        self.reports.append(b"%d:%d" % (int(latency * 1e9), 1 if ok else 0))
        self._sync_soon()

    def _sync_soon(self) -> None:
        """Start the exchange with Redis on a worker thread when it is due."""
        if self._syncing or monotonic_ns() < self.next_sync:
            return
        self._syncing = True
        # Pushed ahead here so that the next caller does not start another one.
        self.next_sync = monotonic_ns() + self.sync_ns
        threading.Thread(target=self._sync_in_thread, name="limiter-adaptive", daemon=True).start()

    def _sync_in_thread(self) -> None:
        try:
            self.sync()
        finally:
            self._syncing = False

    def sync(self) -> None:
        """Exchange reports and the limit with Redis now (normally done every sync_interval)."""
        if not self.lock.acquire(blocking=False):
            return  # another thread is syncing
        try:
            self.next_sync = monotonic_ns() + self.sync_ns
            reports, self.reports = self.reports[-self.max_reports :], []
            reports.append(b"d:%d:%d" % (self.admitted, self.rejected))
            self.admitted = self.rejected = 0
            publish = b"%r" % self.controller.limit if self.leader else b""
            args = (b"EVALSHA", ADAPTIVE_SYNC.sha, 3, *self.keys, self.replica, self.lease_ms,
                    self.max_reports, publish, *reports)  # fmt: skip
            call = Call(ADAPTIVE_SYNC, (), args, 0, self.pacer.store._call("", 1).slot)
            if self.backend.allow(call.slot):
                self.backend.run([call])
            if call.error is not None or call.result is None:
                return  # Redis is away: keep pacing at the last limit
            self._apply(call.result)
        finally:
            self.lock.release()

    def _apply(self, reply: list) -> None:
        leader, published, taken = bool(reply[0]), reply[1], reply[2:]
        if leader and not self.leader and published is not None:
            # Take over from the published limit, not from this replica's stale view.
            start = min(max(float(published), self.controller.min_limit), self.controller.max_limit)
            self.controller = AdaptiveLimit(initial_limit=start, **self.settings)
        self.leader = leader
        if leader:
            now = monotonic_ns()
            for item in taken:
                if item.startswith(b"d:"):
                    _, admitted, rejected = item.split(b":")
                    for _ in range(int(admitted)):
                        self.controller.on_decision(True, now=now)
                    for _ in range(int(rejected)):
                        self.controller.on_decision(False, now=now)
                else:
                    latency, ok = item.split(b":")
                    self.controller.record(int(latency) / 1e9, ok == b"1", now=now)
            self.controller.evaluate(now)
            limit = self.controller.limit
        elif published is not None:
            limit = float(published)
        else:
            return
        if limit != self.limit:
            self.limit = limit
            self.pacer = self._pacer(limit)

    def __repr__(self) -> str:
        return f"SharedAdaptiveLimiter(limit={self.limit:.3f}, leader={self.leader})"
