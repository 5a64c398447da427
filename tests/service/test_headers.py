"""RateLimit headers serialise as valid Structured Fields, ``t`` stays within the quota's
window and Retry-After is exact (checked with an independent Structured Field parser)."""

from __future__ import annotations

import math

import http_sf
from hypothesis import given
from hypothesis import strategies as st

from limiter import headers
from limiter.headers import Quota


def parse_list(value: str) -> list[tuple[str, dict[str, object]]]:
    return [(member[0], dict(member[1])) for member in http_sf.parse(value.encode(), tltype="list")]


def test_policy_and_state_fields() -> None:
    quotas = [
        Quota("per-user", 100, 60, 0, 12.0, allowed=False, retry_after=11.2),
        Quota('we"ird\\name', 5, 1, 4, 0.5),
        Quota("conc", 3, 0, 1, 0, unit="concurrent-requests"),
    ]
    out = dict(headers.build(quotas, legacy=True))
    policy = parse_list(out["RateLimit-Policy"])
    assert policy[0] == ("per-user", {"q": 100, "w": 60})
    assert policy[1][0] == 'we"ird\\name'
    assert policy[2] == ("conc", {"q": 3, "w": 0, "qu": "concurrent-requests"})
    state = parse_list(out["RateLimit"])
    assert state[0] == ("per-user", {"r": 0, "t": 12})
    assert state[1] == ('we"ird\\name', {"r": 4, "t": 1})
    assert out["Retry-After"] == "12"
    assert (out["X-RateLimit-Limit"], out["X-RateLimit-Remaining"], out["X-RateLimit-Reset"]) == (
        "100", "0", "12",
    )  # fmt: skip


def test_no_quotas_no_headers_and_no_retry_after_when_allowed() -> None:
    assert headers.build([]) == []
    names = [k for k, _ in headers.build([Quota("a", 1, 1, 0, 0.3)])]
    assert names == ["RateLimit-Policy", "RateLimit"]


def test_non_ascii_names_stay_valid() -> None:
    out = dict(headers.build([Quota("utilisateur-é\n", 1, 1, 0, 1.0)]))
    assert parse_list(out["RateLimit"])[0][0] == "utilisateur-??"


@given(
    st.lists(
        st.tuples(
            st.integers(0, 10**18), st.floats(0, 1e7), st.integers(-5, 10**18),
            st.floats(0, 1e9), st.booleans(), st.floats(0, 1e9),
        ),
        min_size=1,
        max_size=5,
    )
)  # fmt: skip
def test_any_quota_parses_back_t_stays_in_its_window_and_retry_after_is_exact(rows) -> None:  # type: ignore[no-untyped-def]
    quotas = [
        Quota(f"q{i}", limit, window, remaining, reset, allowed, retry)
        for i, (limit, window, remaining, reset, allowed, retry) in enumerate(rows)
    ]
    out = dict(headers.build(quotas))
    policy = parse_list(out["RateLimit-Policy"])
    state = parse_list(out["RateLimit"])
    assert len(policy) == len(state) == len(quotas)
    for (_, rule), (_, params), q in zip(policy, state, quotas, strict=True):
        assert params["r"] == min(max(q.remaining, 0), headers.SF_MAX_INT)
        if rule["w"] > 0:  # type: ignore[operator]
            assert params["t"] <= rule["w"]  # type: ignore[operator]
        if not q.allowed:
            # Retry-After is when the refused request would pass, never earlier.
            assert int(out["Retry-After"]) >= q.retry_after - 1e-6
            assert params["t"] == min(math.ceil(q.retry_after - 1e-9), rule["w"] or 10**18)  # type: ignore[operator]
    assert ("Retry-After" in out) == any(not q.allowed for q in quotas)
