"""What a finished call says, wherever it is reported from: Envoy's access logs
(``access_log`` section) or a native caller's ``Observe``.

One call's report is a ``Report``: how long it took, its status code, whether it failed
on the way (a timeout, a reset, no healthy upstream), and whether it reached the
upstream at all. ``judge`` turns it into what each consumer takes: the adaptive
kernel's outcome (``ok``, ``dropped``, ``ignored``), the breaker's (failure, success,
nothing) and the status abnormal-access blocking counts. No I/O here: the service's
``limiter.server.outcomes`` delivers the verdicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from limiter.schema import FieldError, Section, setting

__all__ = ["AccessLogConfig", "Judged", "Report", "judge"]

# Largest number of entries one access-log message may carry, and of access-log
# streams open at once (Envoy opens one per worker thread and logger).
MAX_ENTRIES = 100_000
MAX_STREAMS = 10_000
# A request header name, as HTTP/2 carries it.
HEADER_CHARS = 256
HEADER_NAME = f"a lower-case header name of at most {HEADER_CHARS} characters"
HEADER_KIND = f"{HEADER_NAME}, or empty"


@dataclass(frozen=True)
class AccessLogConfig(Section):
    """Envoy's access logs fed back to the service (``access_log``): each HTTP entry
    reports one call to the adaptive rules whose ``outcomes`` match it, to the breaker
    of its upstream cluster (and partition) and, naming a client, to abnormal-access
    blocking (``shedding.abnormal``)."""

    client_header: str = setting(
        "", "the request header naming the client for abnormal-access blocking (the value "
        "the rules' checks carry as their key); empty: no client is counted", kind=HEADER_KIND,
    )  # fmt: skip
    partition_header: str = setting(
        "", "the request header naming the partition of the upstream cluster's breaker; "
        "empty: one breaker per cluster", kind=HEADER_KIND,
    )  # fmt: skip
    latency: str = setting(
        "upstream", "the latency an entry reports: upstream (until the last byte from the "
        "upstream) or duration (until the last byte to the client)",
        choices=("upstream", "duration"),
    )  # fmt: skip
    max_entries: int = setting(
        1000, "entries one access-log message may carry; a larger message ends its stream "
        "with RESOURCE_EXHAUSTED", low=1, high=MAX_ENTRIES,
    )  # fmt: skip
    max_streams: int = setting(
        64, "access-log streams open at once; one more is refused with RESOURCE_EXHAUSTED",
        low=1, high=MAX_STREAMS,
    )  # fmt: skip

    def check(self, given: frozenset[str] | None) -> None:
        for name in ("client_header", "partition_header"):
            value = getattr(self, name)
            if len(value) > HEADER_CHARS or value != value.strip().lower() or " " in value:
                raise FieldError(name, f"must be {HEADER_NAME}, got {value[:HEADER_CHARS]!r}")


class Report(NamedTuple):
    """One finished call. ``status``: its HTTP status (0: none); ``failed``: it failed
    on the way to or from the upstream (timeout, reset, connection failure, no healthy
    upstream); ``reached``: the request was sent upstream (a local reply, such as a
    rate-limited 429, says nothing about the upstream)."""

    latency: float
    status: int = 0
    failed: bool = False
    reached: bool = True


class Judged(NamedTuple):
    """What a report means to each consumer (None: nothing to say)."""

    adaptive: str | None  # the kernel's outcome: ok, dropped or ignored
    breaker_failed: bool | None  # True: a failure; False: a success
    client_status: int | None  # the status abnormal-access blocking counts


def judge(report: Report) -> Judged:
    """Failures on the way and 5xx answers are drops and breaker failures; a 4xx is an answer
    (a success to the breaker) that says nothing about the upstream's latency, and
    counts for the client; a call that never reached the upstream reports nothing."""
    status = report.status
    if report.failed:
        return Judged("dropped", True, status or None)
    if not report.reached:
        return Judged(None, None, None)
    if status >= 500:
        return Judged("dropped", True, status)
    if 400 <= status < 500:
        return Judged("ignored", False, status)
    return Judged("ok", False, status or None)
