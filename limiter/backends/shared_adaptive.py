"""One adaptive limit for every replica, kept in Redis.

Every replica reports its calls' latencies and its admission counts; one replica at a
time (the holder of a short leader lease in Redis) feeds all reports to an
``AdaptiveLimit`` controller and publishes the limit it computes; every replica reads
that limit and admits through one Redis GCRA paced at it. So the fleet converges on,
and enforces, one cluster-wide limit; if the leader dies its lease lapses and another
replica takes over, starting from the published limit.
"""

from __future__ import annotations

import os
import threading
from math import ceil
from time import monotonic_ns
from typing import Any

from limiter._core import AdaptiveLimit, Decision
from limiter.backends.base import Spec
from limiter.backends.combiner import Call
from limiter.backends.keys import hash_tag
from limiter.backends.redis import RedisBackend, RedisBound, RuleOptions, shared_backend
from limiter.backends.scripts import ADAPTIVE_SYNC
from limiter.errors import InvalidParameter


class SharedAdaptiveLimiter:
    """Rate-mode adaptive limiter whose limit and pacing are shared through Redis.

    ``acquire(key, cost)`` -> Decision (one limit for all keys, as ``AdaptiveLimiter``);
    ``record(latency, ok)`` reports a finished call. Reports and the limit are exchanged
    every ``sync_interval`` seconds. Controller knobs are ``AdaptiveLimit``'s.
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
        burst: float = 0.01,
        sync_interval: float = 0.25,
        lease: float = 2.0,
        max_reports: int = 2000,
        on_failure: str = "local",
        **controller: Any,
    ) -> None:
        self.backend = backend if isinstance(backend, RedisBackend) else shared_backend(backend)
        if not isinstance(name, str) or not name:
            raise InvalidParameter(f"name must be a non-empty str, got {name!r:.80}")
        for field, value in (("burst", burst), ("sync_interval", sync_interval), ("lease", lease)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise InvalidParameter(f"{field} must be a positive number, got {value!r}")
        self.settings = dict(target_latency=target_latency, percentile=percentile, mode="rate",
                             min_limit=min_limit, max_limit=max_limit, **controller)  # fmt: skip
        self.controller = AdaptiveLimit(initial_limit=initial_limit, **self.settings)
        self.burst = float(burst)
        self.sync_ns = int(sync_interval * 1e9)
        self.lease_ms = max(1, int(lease * 1000))
        self.max_reports = int(max_reports)
        self.options = RuleOptions(on_failure=on_failure, local_cache=False)
        base = self.backend.prefix + b"adaptive:" + hash_tag(name)
        self.keys = (base + b":reports", base + b":leader", base + b":limit")
        self.state_prefix = base + b":tat"
        self.replica = os.urandom(8).hex().encode()
        self.leader = False
        self.lock = threading.Lock()
        self.reports: list[bytes] = []
        self.admitted = self.rejected = 0
        self.next_sync = 0
        self.limit = self.controller.limit
        self.bound = self._bind(self.limit)

    def _bind(self, limit: float) -> RedisBound:
        """A GCRA paced at ``limit``/s with ``burst`` seconds of tolerance, as AdaptiveLimiter."""
        spec = Spec("token_bucket", limit=max(1, ceil(self.burst * limit)),
                    interval_ns=ceil(1e9 / limit))  # fmt: skip
        bound = RedisBound(self.backend, spec, self.options)
        bound.codec.prefix = self.state_prefix  # one state whatever the limit: pacing carries over
        return bound

    @property
    def current_limit(self) -> float:
        return self.limit

    def acquire(self, key: str = "", cost: int = 1) -> Decision:
        if not isinstance(key, str):
            raise InvalidParameter(f"key must be a str, got {type(key).__name__}: {key!r:.80}")
        if monotonic_ns() >= self.next_sync:
            self.sync()
        bound = self.bound
        if isinstance(cost, bool) or not isinstance(cost, int) or not 1 <= cost <= bound.limit:
            raise InvalidParameter(f"cost must be an integer in [1, {bound.limit}], got {cost!r}")
        d = bound.acquire("", cost)
        if d.allowed:
            self.admitted += 1
        else:
            self.rejected += 1
        return d

    def record(self, latency: float, ok: bool = True) -> None:
        """One finished call: ``latency`` seconds; ``ok=False`` if it was dropped or timed out."""
        if isinstance(latency, bool) or not isinstance(latency, (int, float)) or not latency >= 0:
            raise InvalidParameter(f"latency must be a number of seconds >= 0, got {latency!r}")
        self.reports.append(b"%d:%d" % (int(latency * 1e9), 1 if ok else 0))
        if monotonic_ns() >= self.next_sync:
            self.sync()

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
            call = Call(ADAPTIVE_SYNC, (), args, 0, self.bound._call("", 1).slot)
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
            self.bound = self._bind(limit)
