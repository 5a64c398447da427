"""One exception hierarchy for the whole engine.

Messages name the offending parameter or field and its value, so a bad config or
call can be fixed from the message alone.
"""

from __future__ import annotations

from typing import Any


class LimiterError(Exception):
    """Base of every error limiter raises on purpose."""


class InvalidParameter(LimiterError, ValueError):
    """A constructor or call argument is out of range or of the wrong kind."""


class ConfigError(LimiterError, ValueError):
    """A configuration document is invalid; the message names file, path and field."""


class RateLimited(LimiterError):
    """Raised by context managers and decorators when a request is refused.

    Carries the ``Decision`` so callers can honour ``retry_after``.
    """

    def __init__(self, decision: Any, message: str | None = None) -> None:
        self.decision = decision
        super().__init__(message or f"rate limited; retry after {decision.retry_after:.3f}s")

    @property
    def retry_after(self) -> float:
        return self.decision.retry_after
