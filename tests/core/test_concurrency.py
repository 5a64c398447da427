"""In-flight counter: permits, release paths, and bounded keys."""

from __future__ import annotations

import gc

import pytest

from limiter import ConcurrencyLimit, Permit, RateLimited


def test_acquire_release():
    lim = ConcurrencyLimit(limit=2)
    a, b, c = lim.acquire("k"), lim.acquire("k"), lim.acquire("k")
    assert isinstance(a, Permit)
    assert (a.allowed, b.allowed, c.allowed) == (True, True, False)
    assert (a.remaining, b.remaining, c.remaining) == (1, 0, 0)
    assert lim.in_flight("k") == 2
    a.release()
    a.release()  # idempotent
    assert lim.in_flight("k") == 1
    c.release()  # a refused permit holds nothing
    assert lim.in_flight("k") == 1
    b.release()
    assert lim.in_flight("k") == 0 and len(lim) == 0


def test_context_manager_releases_on_error_and_raises_when_refused():
    lim = ConcurrencyLimit(limit=1)
    with pytest.raises(ZeroDivisionError), lim.acquire("k"):
        assert lim.in_flight("k") == 1
        1 / 0  # noqa: B018
    assert lim.in_flight("k") == 0
    held = lim.acquire("k")
    with pytest.raises(RateLimited) as info, lim.acquire("k"):
        pass
    assert info.value.decision.allowed is False
    held.release()


def test_forgotten_permit_is_released_when_collected():
    lim = ConcurrencyLimit(limit=1)

    def leak() -> None:
        lim.acquire("k")

    leak()
    gc.collect()
    assert lim.in_flight("k") == 0
    assert lim.acquire("k").allowed


def test_cost_and_keys():
    lim = ConcurrencyLimit(limit=5)
    p = lim.acquire("a", cost=4)
    assert not lim.acquire("a", cost=2).allowed
    assert lim.acquire("b", cost=5).allowed is True
    p.release()
    assert lim.in_flight("a") == 0


def test_max_keys_refuses_new_keys_instead_of_dropping_in_flight_counts():
    lim = ConcurrencyLimit(limit=1, max_keys=2)
    held = [lim.acquire("a"), lim.acquire("b")]
    assert not lim.acquire("c").allowed
    assert lim.in_flight("a") == 1 and lim.in_flight("b") == 1
    held[0].release()
    assert lim.acquire("c").allowed
