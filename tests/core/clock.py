"""A manual clock for deterministic tests: integer nanoseconds, moved by hand."""

from __future__ import annotations

NS = 1_000_000_000


class ManualClock:
    def __init__(self, start_ns: int = 1_000 * NS) -> None:
        self.now = start_ns

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += round(seconds * NS)

    def advance_ns(self, ns: int) -> None:
        self.now += ns
