"""Local over-limit cache: a key known to be refused is answered without a round trip.

A refusal for ``cost`` at server time t with ``retry_after`` r means every request of
that cost or more is refused until t + r: the algorithms refuse larger costs for at
least as long, and other clients can only consume more. The deadline is counted from
when the request was *sent* (before the server decided), so it never ends later than
the server's own; the cache can only answer "refused" where Redis would too.
"""

from __future__ import annotations

from time import monotonic_ns

from limiter._core import Decision
from limiter.backends.algorithms import decision


class OverLimitCache:
    """key -> (refused until, smallest refused cost, limit, remaining, reset at), in local ns."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self.entries: dict[str, tuple[int, int, int, int, int]] = {}
        self.hits = 0

    def get(self, key: str, cost: int) -> Decision | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        until, min_cost, limit, remaining, reset_at = entry
        now = monotonic_ns()
        if now >= until:
            self.entries.pop(key, None)
            return None
        if cost < min_cost:
            return None
        self.hits += 1
        return decision(False, limit, remaining, reset_at - now, until - now)

    def put(self, key: str, cost: int, sent_ns: int, refused: Decision) -> None:
        if refused.retry_after <= 0.0:
            return
        if len(self.entries) >= self.max_entries:
            self.entries.clear()
        self.entries[key] = (
            sent_ns + int(refused.retry_after * 1e9) - 1000,  # float rounding margin
            cost,
            refused.limit,
            refused.remaining,
            sent_ns + int(refused.reset_after * 1e9),
        )

    def discard(self, key: str) -> None:
        self.entries.pop(key, None)
