"""One exception hierarchy for the whole engine.

Messages name the offending parameter or field and its value, so a bad config or
call can be fixed from the message alone.
"""

from __future__ import annotations

import math
import reprlib
from typing import Any

# How much of a value an error message quotes: a few items of a few levels, so quoting a
# deeply nested or alias-expanded value costs no more than quoting a short one.
_QUOTE = reprlib.Repr()
_QUOTE.maxlevel = 3
_QUOTE.maxstring = _QUOTE.maxother = 80
_QUOTE.maxlong = 40
for _name in ("maxtuple", "maxlist", "maxarray", "maxdict", "maxset", "maxfrozenset", "maxdeque"):
    setattr(_QUOTE, _name, 4)


def brief(value: Any, limit: int = 80) -> str:
    """``repr(value)`` for an error message, at most ``limit`` characters, built without
    walking more of ``value`` than it shows."""
    try:
        text = _QUOTE.repr(value)
    except (ValueError, RecursionError):  # an int too long to print, a bad __repr__
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_number(
    value: Any,
    types: type | tuple[type, ...] = (int, float),
    low: float = -math.inf,
    high: float = math.inf,
) -> bool:
    """Is ``value`` an instance of ``types`` in ``[low, high]``? A bool never is (to
    Python it is an int, to a config or a request it is not a number), nor is NaN (it
    compares false with every bound)."""
    return not isinstance(value, bool) and isinstance(value, types) and low <= value <= high


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
