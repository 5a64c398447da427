"""Client-side adaptive throttling (Google SRE): stop hammering a struggling service.

A client that keeps sending to a service which already refuses most of its calls
only adds load. Each client therefore counts, over a sliding window, the calls it
attempted (``requests``, locally refused ones included) and those the service
answered (``accepts``), and refuses a new call locally with probability
``max(0, (requests - K * accepts) / (requests + 1))``. With K = 2 the service keeps
seeing about twice the traffic it can answer, enough to notice its recovery.
"""

from __future__ import annotations

import random as _random
import threading
import time
from collections.abc import Callable

from limiter.errors import InvalidParameter

NS_PER_S = 1_000_000_000


class AdaptiveThrottle:
    """The SRE formula over a window of ``buckets`` sub-windows (sliding by one bucket).

    ``clock`` returns integer nanoseconds (monotonic by default) and ``random``
    returns a float in [0, 1); both are injectable so tests are deterministic.
    Thread-safe; the asyncio clients use it from one loop without contention.
    """

    def __init__(
        self,
        k: float = 2.0,
        window: float = 120.0,
        buckets: int = 12,
        *,
        clock: Callable[[], int] | None = None,
        random: Callable[[], float] | None = None,
    ) -> None:
        if isinstance(k, bool) or not isinstance(k, int | float) or not 1.0 <= k <= 100.0:
            raise InvalidParameter(f"k must be a number in [1, 100], got {k!r}")
        if isinstance(window, bool) or not isinstance(window, int | float) or not window > 0:
            raise InvalidParameter(f"window must be a positive number of seconds, got {window!r}")
        if isinstance(buckets, bool) or not isinstance(buckets, int) or not 1 <= buckets <= 3600:
            raise InvalidParameter(f"buckets must be an integer in [1, 3600], got {buckets!r}")
        if clock is not None and not callable(clock):
            raise InvalidParameter(f"clock must be a callable returning int ns, got {clock!r}")
        self.k = float(k)
        self.window = float(window)
        self._clock = clock or time.monotonic_ns
        self._random = random or _random.random
        self._width = max(1, int(self.window * NS_PER_S) // buckets)
        self._requests = [0] * buckets
        self._accepts = [0] * buckets
        self._epoch = [-1] * buckets  # which bucket index each slot currently holds
        self._lock = threading.Lock()

    def _slot(self) -> int:
        """Index of the current slot, clearing it if it still holds an old bucket."""
        index = self._clock() // self._width
        slot = index % len(self._epoch)
        if self._epoch[slot] != index:
            self._epoch[slot] = index
            self._requests[slot] = 0
            self._accepts[slot] = 0
        return slot

    def _totals(self) -> tuple[int, int]:
        oldest = self._clock() // self._width - len(self._epoch) + 1
        requests = accepts = 0
        for slot, epoch in enumerate(self._epoch):
            if epoch >= oldest:
                requests += self._requests[slot]
                accepts += self._accepts[slot]
        return requests, accepts

    def reject_probability(self) -> float:
        """Current probability that ``allow_request`` refuses locally."""
        with self._lock:
            requests, accepts = self._totals()
        return max(0.0, (requests - self.k * accepts) / (requests + 1))

    def allow_request(self) -> bool:
        """Count one attempt; False means: refuse it here, do not call the service."""
        p = self.reject_probability()
        with self._lock:
            self._requests[self._slot()] += 1
        return p <= 0.0 or self._random() >= p

    def accepted(self) -> None:
        """The service answered the attempt (any answer, over-limit included)."""
        with self._lock:
            self._accepts[self._slot()] += 1

    @property
    def counts(self) -> tuple[int, int]:
        """(requests, accepts) in the current window, for observability."""
        with self._lock:
            return self._totals()

    def __repr__(self) -> str:
        requests, accepts = self.counts
        return f"AdaptiveThrottle(k={self.k:g}, requests={requests}, accepts={accepts})"
