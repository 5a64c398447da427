"""What a finished call means to each consumer (``limiter.ops.outcomes.judge``), and
breakers looked up without being made (``Breakers.peek``)."""

from __future__ import annotations

import pytest

from limiter.ops.breaker import Breakers
from limiter.ops.outcomes import Judged, Report, judge


@pytest.mark.parametrize(
    ("report", "judged"),
    [
        (Report(0.01, 200), Judged("ok", False, 200)),
        (Report(0.01, 0), Judged("ok", False, None)),
        (Report(0.01, 404), Judged("ignored", False, 404)),
        (Report(0.01, 503), Judged("dropped", True, 503)),
        # A timeout or reset fails the call whatever Envoy answered, reached or not.
        (Report(2.0, 504, failed=True), Judged("dropped", True, 504)),
        (Report(0.001, 503, failed=True, reached=False), Judged("dropped", True, 503)),
        # A local reply (a rate-limited 429, failure_mode_deny's 500) says nothing upstream.
        (Report(0.001, 429, reached=False), Judged(None, None, None)),
        (Report(0.001, 500, reached=False), Judged(None, None, None)),
    ],
)
def test_judge(report: Report, judged: Judged) -> None:
    assert judge(report) == judged


def test_peek_finds_breakers_that_counted_a_call_or_are_forced_open() -> None:
    forced: dict[str, str] = {"db/forced": "force_open", "cache": "force_open"}
    breakers = Breakers(override=forced.get)
    assert breakers.peek("db", "quiet") is None and breakers.all() == []
    breakers.get("db", "seen").record(0.01, failed=True)
    assert breakers.peek("db", "seen") is breakers.get("db", "seen")
    # A switch on a partition, or on the whole dependency, makes the breaker to refuse.
    assert not breakers.peek("db", "forced").allow()
    assert not breakers.peek("cache", "any").allow()
    assert sorted(b.name for b in breakers.all()) == ["cache/any", "db/forced", "db/seen"]
