"""Rate-limit response headers: IETF RateLimit-Policy / RateLimit, legacy X-RateLimit-*.

Follows draft-ietf-httpapi-ratelimit-headers-10: both fields are Structured Field
Lists (RFC 9651) whose members are policy names (sf-strings) with parameters
``q`` (quota), ``w`` (window seconds), ``qu`` (quota unit) on the policy and ``r``
(remaining), ``t`` (seconds until quota returns) on the state. Used by the decision
service, the middleware and the interceptors, so every surface speaks the same headers.

One definition of a quota for every algorithm: ``q`` is the ``limit`` the decision
reports (a window's limit, a bucket's burst, an adaptive limit's current value), so
``r`` (remaining) never exceeds it; ``w`` is the time the quota takes to return in full
(a window's period; for a bucket, burst / rate). ``t`` never exceeds ``w``: a
sliding-window counter forgets a window's hits gradually over the next window, so its
own reset time can reach two windows; the header reports at most one. ``Retry-After``
is exact (when the refused request would pass, rounded up), even where that is later
than ``t``.
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
        """Seconds until quota returns (at most the window): until the request would pass
        when refused."""
        return _t(self.reset_after if self.allowed else self.retry_after, self.window)


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
    """Seconds for ``Retry-After``: the latest ``retry_after`` of the refused quotas."""
    refused = [_ceil(q.retry_after) for q in quotas if not q.allowed]
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
    wait = -1  # the latest retry_after among refused quotas
    for name, limit, window, remaining, reset_after, allowed, retry_after, unit in quotas:
        if allowed:
            t = _t(reset_after, window)
        else:
            retry = _ceil(retry_after)
            if retry > wait:
                wait = retry
            t = _t(retry_after, window)
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


def _t(seconds: float, window: float) -> int:
    """``t``: whole seconds until the quota returns, never beyond its window."""
    t = _ceil(seconds)
    if t > window > 0:
        w = _ceil(window)  # as RateLimit-Policy reports it
        if 0 < w < t:
            return w
    return t


def _ceil(seconds: float) -> int:
    if seconds != seconds or seconds <= 0:  # NaN or past
        return 0
    if seconds >= SF_MAX_INT:
        return SF_MAX_INT
    # Tolerate float noise so 2.0000000001 s still reads as 2.
    return math.ceil(seconds - 1e-9)
