"""What a limit answers when its shared store cannot: the failure mode.

One setting for every limit that lives in a shared store (a rule of the service, or a
limiter built with ``backend=``), with one vocabulary and one default:

- ``local`` (the default): decide with this process's own kernel of the same algorithm
  and parameters until the store is back. Each replica then enforces the whole limit by
  itself, so N replicas admit at most N times the limit: bounded, and no outage;
- ``allow``: admit everything (fail open, as Envoy's rate-limit filter does by default);
- ``deny``: refuse everything (fail closed), with ``retry_after`` = the time until the
  store is tried again.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from limiter._core import Decision
from limiter.errors import InvalidParameter, brief


class FailureMode(StrEnum):
    LOCAL = "local"
    ALLOW = "allow"
    DENY = "deny"

    @classmethod
    def parse(cls, value: object, field: str = "failure_mode") -> FailureMode:
        if isinstance(value, cls):
            return value
        if isinstance(value, str) and value.lower() in cls._value2member_map_:
            return cls(value.lower())
        names = ", ".join(m.value for m in cls)
        raise InvalidParameter(f"{field} must be one of {names}, got {brief(value)}")


DEFAULT = FailureMode.LOCAL


def fallback(
    mode: FailureMode, local: Any, key: str, cost: int, limit: int, retry_after: float
) -> Any:
    """The answer of ``mode`` for one check whose store failed; ``local`` is the in-process
    kernel with the limit's own parameters (its ``acquire`` answers ``local``)."""
    if mode is FailureMode.LOCAL:
        return local.acquire(key, cost)
    if mode is FailureMode.ALLOW:
        return Decision(True, limit, limit, 0.0)
    return Decision(False, limit, 0, retry_after, retry_after)
