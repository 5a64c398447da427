"""Client-side adaptive throttling (Google SRE): stop hammering a struggling service.

A client that keeps sending to a service which already refuses most of its calls
only adds load. Each client therefore counts, over a sliding window, the calls it
attempted (``requests``, locally refused ones included) and those the service
answered (``accepts``), and refuses a new call locally with probability
``max(0, (requests - K * accepts) / (requests + 1))``. With K = 2 the service keeps
seeing about twice the traffic it can answer, enough to notice its recovery.

A call is counted when its outcome is known: a local refusal at once, a call sent
to the service when it is answered (``accepted``) or fails (``rejected``). A call
still in flight is neither, so a burst of concurrent calls is not mistaken for a
burst of failures. Below ``min_requests`` outcomes in the window (a new client, or
one whose window emptied while it was idle) there is too little evidence to refuse
anything, and every call goes to the service.
"""

from __future__ import annotations

import random as _random
import threading
import time
from collections.abc import Callable

from limiter.errors import InvalidParameter

NS_PER_S = 1_000_000_000
MAX_MIN_REQUESTS = 1_000_000


class AdaptiveThrottle:
    """The SRE formula over a window of ``buckets`` sub-windows (sliding by one bucket).

    ``min_requests`` (0 to 1,000,000) is the evidence floor: fewer outcomes than that
    in the window never refuse. ``clock`` returns integer nanoseconds (monotonic by
    default) and ``random`` returns a float in [0, 1); both are injectable so tests
    are deterministic. Thread-safe; the asyncio clients use it from one loop without
    contention.
    """

    def __init__(
        self,
        k: float = 2.0,
        window: float = 120.0,
        buckets: int = 12,
        min_requests: int = 20,
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
        if (
            isinstance(min_requests, bool)
            or not isinstance(min_requests, int)
            or not 0 <= min_requests <= MAX_MIN_REQUESTS
        ):
            raise InvalidParameter(
                f"min_requests must be an integer in [0, {MAX_MIN_REQUESTS}], got {min_requests!r}"
            )
        if clock is not None and not callable(clock):
            raise InvalidParameter(f"clock must be a callable returning int ns, got {clock!r}")
        self.k = float(k)
        self.window = float(window)
        self.min_requests = min_requests
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

    def _probability(self) -> float:
        requests, accepts = self._totals()
        if requests < self.min_requests:
            return 0.0
        return max(0.0, (requests - self.k * accepts) / (requests + 1))

    def reject_probability(self) -> float:
        """Current probability that ``allow_request`` refuses locally."""
        with self._lock:
            return self._probability()

    def allow_request(self) -> bool:
        """False means: refuse this call here, do not call the service (counted now).

        True means: send it, and report its outcome with ``accepted()`` or
        ``rejected()``; until then it counts for nothing.
        """
        with self._lock:
            p = self._probability()
            if p <= 0.0 or self._random() >= p:
                return True
            self._requests[self._slot()] += 1
            return False

    def accepted(self) -> None:
        """The service answered a call sent (any answer, over-limit included)."""
        with self._lock:
            slot = self._slot()
            self._requests[slot] += 1
            self._accepts[slot] += 1

    def rejected(self) -> None:
        """A call sent got no answer (deadline, unavailable, overloaded)."""
        with self._lock:
            self._requests[self._slot()] += 1

    @property
    def counts(self) -> tuple[int, int]:
        """(requests, accepts) in the current window, for observability."""
        with self._lock:
            return self._totals()

    def __repr__(self) -> str:
        requests, accepts = self.counts
        return f"AdaptiveThrottle(k={self.k:g}, requests={requests}, accepts={accepts})"
