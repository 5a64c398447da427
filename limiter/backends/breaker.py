"""Circuit breaker on the Redis connection: a dead Redis costs microseconds, not a timeout."""

from __future__ import annotations

import time
from collections.abc import Callable


class Breaker:
    """Opens on a connection failure; while open, one probe per ``cooldown`` may try again.

    Lock-free on purpose: the worst race lets two probes through at once, which is
    harmless, while every call on the hot path pays only a float comparison.
    """

    def __init__(self, cooldown: float = 0.2, clock: Callable[[], float] = time.monotonic) -> None:
        self.cooldown = cooldown
        self.clock = clock
        self.open_until = 0.0
        self.trips = 0

    @property
    def is_open(self) -> bool:
        return self.open_until != 0.0

    def allow(self) -> bool:
        """May a call try Redis now? True when closed, or for the one probe after a cooldown."""
        until = self.open_until
        if until == 0.0:
            return True
        now = self.clock()
        if now < until:
            return False
        self.open_until = now + self.cooldown
        return True

    def failure(self) -> None:
        if self.open_until == 0.0:
            self.trips += 1
        self.open_until = self.clock() + self.cooldown

    def success(self) -> None:
        self.open_until = 0.0
