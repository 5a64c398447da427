"""Rate-limit response headers: IETF RateLimit-Policy / RateLimit, legacy X-RateLimit-*.

Follows draft-ietf-httpapi-ratelimit-headers-10: both fields are Structured Field
Lists (RFC 9651) whose members are policy names (sf-strings) with parameters
``q`` (quota), ``w`` (window seconds), ``qu`` (quota unit) on the policy and ``r``
(remaining), ``t`` (seconds until quota returns) on the state. ``Retry-After`` is
never earlier than the ``t`` of any exhausted quota. Used by the decision service,
the middleware and the interceptors, so every surface speaks the same headers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import NamedTuple

# Structured Field integers have at most 15 digits.
SF_MAX_INT = 999_999_999_999_999
QUOTA_UNITS = ("requests", "content-bytes", "concurrent-requests")


class Quota(NamedTuple):
    """One policy's limit and current state, as a client should see it.

    ``window`` and ``reset_after`` / ``retry_after`` are seconds; ``allowed`` is the
    decision for this request under this policy. (A NamedTuple: built per response.)
    """

    name: str
    limit: int
    window: float
    remaining: int
    reset_after: float
    allowed: bool = True
    retry_after: float = 0.0
    unit: str = "requests"

    @property
    def t(self) -> int:
        """Seconds until quota returns: until the request would pass when refused."""
        return _ceil(self.reset_after if self.allowed else self.retry_after)


@lru_cache(maxsize=4096)
def sf_string(text: str) -> str:
    """Serialise ``text`` as an sf-string; characters it cannot carry become '?'."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            out.append("?")
    return '"' + "".join(out) + '"'


def sf_int(value: float) -> str:
    return str(max(-SF_MAX_INT, min(SF_MAX_INT, int(value))))


def policy_field(quotas: Iterable[Quota]) -> str:
    """``RateLimit-Policy``: ``"name";q=100;w=60`` per quota (``qu`` if not requests)."""
    return ", ".join([_policy_member(q.name, q.limit, q.window, q.unit) for q in quotas])


@lru_cache(maxsize=4096)
def _policy_member(name: str, limit: int, window: float, unit: str) -> str:
    member = f"{sf_string(name)};q={sf_int(limit)};w={sf_int(_ceil(window))}"
    if unit != "requests":
        member += f';qu="{unit}"'
    return member


def ratelimit_field(quotas: Iterable[Quota]) -> str:
    """``RateLimit``: ``"name";r=0;t=12`` per quota."""
    return ", ".join(
        f"{sf_string(q.name)};r={sf_int(max(q.remaining, 0))};t={sf_int(q.t)}" for q in quotas
    )


def retry_after(quotas: Iterable[Quota]) -> int | None:
    """Seconds for ``Retry-After``: the latest ``t`` of the refused quotas, else None."""
    refused = [q.t for q in quotas if not q.allowed]
    return max(refused) if refused else None


def build(
    quotas: Sequence[tuple[str, int, float, int, float, bool, float, str]],
    *,
    ietf: bool = True,
    legacy: bool = False,
) -> list[tuple[str, str]]:
    """Every header for a response, in a stable order; empty when there are no quotas.

    ``quotas``: ``Quota`` objects, or plain tuples in ``Quota``'s field order (all eight:
    the decision service builds one per answered check, and a plain tuple costs a fifth of
    a NamedTuple). One pass over the quotas.
    """
    if not quotas:
        return []
    policy: list[str] = []
    state: list[str] = []
    wait = -1  # the latest t among refused quotas
    for name, limit, window, remaining, reset_after, allowed, retry_after, unit in quotas:
        t = _ceil(reset_after if allowed else retry_after)
        if not allowed and t > wait:
            wait = t
        if ietf:
            policy.append(_policy_member(name, limit, window, unit))
            r = remaining if 0 <= remaining <= SF_MAX_INT else sf_int(max(remaining, 0))
            state.append(f"{sf_string(name)};r={r};t={t}")
    headers: list[tuple[str, str]] = []
    if ietf:
        headers.append(("RateLimit-Policy", ", ".join(policy)))
        headers.append(("RateLimit", ", ".join(state)))
    if legacy:
        # One number each: the quota closest to exhaustion, as envoyproxy/ratelimit picks.
        tight = Quota(*min(quotas, key=lambda q: (q[5], q[3])))
        headers.append(("X-RateLimit-Limit", sf_int(tight.limit)))
        headers.append(("X-RateLimit-Remaining", sf_int(max(tight.remaining, 0))))
        headers.append(("X-RateLimit-Reset", sf_int(tight.t)))
    if wait >= 0:
        headers.append(("Retry-After", str(wait)))
    return headers


def _ceil(seconds: float) -> int:
    if seconds != seconds or seconds <= 0:  # NaN or past
        return 0
    if seconds >= SF_MAX_INT:
        return SF_MAX_INT
    # Tolerate float noise so 2.0000000001 s still reads as 2.
    return math.ceil(seconds - 1e-9)
