"""What each algorithm sends to its Lua script and how the reply becomes a Decision (no I/O).

The scripts do only the atomic part (read state, compare, write state) with exact
integers; the answer (remaining, reset, retry) is computed from what they return by
the in-memory kernels' own functions (``gcra_decision``, ``window_decision``), so a
decision through Redis equals the kernel's decision at the server's time to the
nanosecond.
"""

from __future__ import annotations

from functools import cached_property

from limiter._core import Decision, gcra_decision, window_decision
from limiter.backends.base import Spec
from limiter.backends.scripts import GCRA, LEASE_ACQUIRE, WINDOWS, Script
from limiter.backends.transport import bulk
from limiter.errors import InvalidParameter

GCRA_FAMILY = ("token_bucket", "leaky_bucket", "leaky_shaper")
WINDOWED = ("fixed_window", "sliding_window")
MIN_PERIOD_NS = 1_000_000  # the server clock ticks in us; windows shorter than 1 ms are noise
MAX_EXACT_NS = 1 << 53  # Lua numbers are doubles: larger spans would lose integer exactness


def decision(
    allowed: bool, limit: int, remaining: int, reset_ns: int, retry_ns: int = 0, wait_ns: int = 0
) -> Decision:
    """Build a Decision exactly as the kernels' ``make_decision`` does."""
    return Decision(
        allowed,
        limit,
        remaining if remaining > 0 else 0,
        reset_ns / 1e9 if reset_ns > 0 else 0.0,
        retry_ns / 1e9 if retry_ns > 0 else 0.0,
        wait_ns / 1e9 if wait_ns > 0 else 0.0,
    )


class Codec:
    """One algorithm with fixed parameters: script arguments and reply decoding."""

    script: Script
    keys_per_request = 1
    args_per_request: int
    reply_width: int
    shared: tuple[bytes | int, ...]

    def __init__(self, spec: Spec, prefix: bytes) -> None:
        self.spec = spec
        self.limit = spec.limit
        s = spec
        name = f"{s.algorithm}:{s.limit}:{s.interval_ns}:{s.period_ns}:{s.max_wait_ns}:"
        self.prefix = prefix + name.encode()
        self._heads: dict[int, tuple[int, bytes]] = {}
        self._packed_args: dict[int, bytes] = {}

    @cached_property
    def packed_shared(self) -> bytes:
        return bulk(self.shared)

    def packed_head(self, nkeys: int) -> tuple[int, bytes]:
        """(argument count, RESP) of ``EVALSHA sha nkeys`` plus the shared arguments' count."""
        head = self._heads.get(nkeys)
        if head is None:
            sha = self.script.sha
            resp = b"$7\r\nEVALSHA\r\n$%d\r\n%s\r\n" % (len(sha), sha) + bulk([nkeys])
            head = self._heads[nkeys] = (3 + len(self.shared), resp)
        return head

    def keys(self, tag: bytes) -> tuple[bytes, ...]:
        return (self.prefix + tag,)

    def args(self, cost: int, lease: bytes = b"") -> tuple[int | bytes, ...]:
        raise NotImplementedError

    def packed_args(self, cost: int, lease: bytes = b"") -> bytes:
        """RESP of ``args``, memoised per cost (costs repeat; leases never do)."""
        if lease:
            return bulk(self.args(cost, lease))
        packed = self._packed_args.get(cost)
        if packed is None:
            if len(self._packed_args) >= 1024:
                self._packed_args.clear()
            packed = self._packed_args[cost] = bulk(self.args(cost))
        return packed

    def decode(self, now_us: int, r: list[int], i: int, cost: int) -> Decision:
        """Decision from the reply fields ``r[i : i + reply_width]`` of one request."""
        raise NotImplementedError


class GcraCodec(Codec):
    """Token bucket, leaky bucket meter and shaper: one ``tat`` per key."""

    script = GCRA
    reply_width = 3
    args_per_request = 2

    def __init__(self, spec: Spec, prefix: bytes) -> None:
        super().__init__(spec, prefix)
        self.interval = spec.interval_ns
        tau = spec.limit * spec.interval_ns
        self.max_wait = spec.max_wait_ns if spec.algorithm == "leaky_shaper" else 0
        self.usable = spec.limit - spec.reserve  # the burst this binding may take from
        threshold = self.usable * spec.interval_ns + self.max_wait
        if threshold + tau >= MAX_EXACT_NS * 1000:
            raise InvalidParameter(f"burst / rate spans too long for the Redis backend: {spec}")
        self.shared = divmod(threshold, 1000)

    def args(self, cost: int, lease: bytes = b"") -> tuple[int, int]:
        return divmod(cost * self.interval, 1000)

    def decode(self, now_us: int, r: list[int], i: int, cost: int) -> Decision:
        d = r[i + 1] * 1000 + r[i + 2]  # max(tat, now) - now
        return gcra_decision(r[i], d, cost, self.interval, self.usable, self.max_wait)


class WindowCodec(Codec):
    """Fixed window and sliding-window counter, aligned on the server's clock."""

    script = WINDOWS
    reply_width = 5
    args_per_request = 1

    def __init__(self, spec: Spec, prefix: bytes) -> None:
        super().__init__(spec, prefix)
        if spec.period_ns < MIN_PERIOD_NS:
            raise InvalidParameter(
                f"period must be at least 0.001 s for the Redis backend, got {spec.period_ns} ns"
            )
        self.period = spec.period_ns
        self.sliding = spec.algorithm == "sliding_window"
        mode = b"sliding" if self.sliding else b"fixed"
        self.usable = spec.limit - spec.reserve  # the part of the limit this binding may use
        self.shared = (mode, *divmod(self.period, 1000), self.usable)

    def args(self, cost: int, lease: bytes = b"") -> tuple[int]:
        return (cost,)

    def decode(self, now_us: int, r: list[int], i: int, cost: int) -> Decision:
        elapsed = r[i + 3] * 1000 + r[i + 4]
        return window_decision(
            self.sliding, r[i], self.usable, self.period, r[i + 1], r[i + 2], elapsed, cost
        )


class LeaseCodec(Codec):
    """Concurrency limit: leases that expire unless released first."""

    script = LEASE_ACQUIRE
    keys_per_request = 2
    reply_width = 2
    args_per_request = 2

    def __init__(self, spec: Spec, prefix: bytes, lease_ttl_us: int) -> None:
        super().__init__(spec, prefix)
        self.shared = (lease_ttl_us, spec.limit)

    def keys(self, tag: bytes) -> tuple[bytes, ...]:
        base = self.prefix + tag
        return (base + b":leases", base + b":held")

    def args(self, cost: int, lease: bytes = b"") -> tuple[int, bytes]:
        return (cost, lease)

    def decode(self, now_us: int, r: list[int], i: int, cost: int) -> Decision:
        return decision(bool(r[i]), self.limit, self.limit - r[i + 1], 0)


def codec_for(spec: Spec, prefix: bytes, lease_ttl_us: int) -> Codec:
    if spec.algorithm in GCRA_FAMILY:
        return GcraCodec(spec, prefix)
    if spec.algorithm in WINDOWED:
        return WindowCodec(spec, prefix)
    if spec.algorithm == "concurrency":
        return LeaseCodec(spec, prefix, lease_ttl_us)
    raise InvalidParameter(f"algorithm {spec.algorithm!r} is not supported by the Redis backend")
