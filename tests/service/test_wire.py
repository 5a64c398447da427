"""limiter._wire against the generated protobuf classes: same messages both ways.

Requests: whatever protobuf parses (including merged and unknown fields), the codec reads
the same values; whatever protobuf refuses, the codec refuses with a WireError naming a
field. Responses: what the codec writes parses back to the message protobuf would build.
"""

from __future__ import annotations

import itertools
import math

import pytest
from envoy.service.ratelimit.v3 import rls_pb2
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from limiter._wire import (
    WireError,
    encode_decide_response,
    encode_rls_response,
    parse_decide_request,
    parse_rls_request,
)
from limiter.server import v1

Response = rls_pb2.RateLimitResponse
BIG = 1 << 30  # no bound on what one request may carry
PRIORITIES = frozenset(v1.Priority.values())
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
nonempty = text.filter(bool)
uint32 = st.integers(0, 2**32 - 1)
uint64 = st.integers(0, 2**64 - 1)


@st.composite
def rls_requests(draw: st.DrawFn) -> rls_pb2.RateLimitRequest:
    message = rls_pb2.RateLimitRequest(domain=draw(nonempty), hits_addend=draw(uint32))
    for _ in range(draw(st.integers(1, 4))):
        descriptor = message.descriptors.add()
        for key, value in draw(st.lists(st.tuples(nonempty, text), min_size=1, max_size=4)):
            descriptor.entries.add(key=key, value=value)
        if draw(st.booleans()):
            descriptor.limit.requests_per_unit = draw(uint32)
            descriptor.limit.unit = draw(st.integers(-(2**31), 2**31 - 1))
        if draw(st.booleans()):
            descriptor.hits_addend.value = draw(uint64)
    return message


def rls_view(message: rls_pb2.RateLimitRequest) -> tuple:
    """What parse_rls_request reads, taken from the protobuf object."""
    descriptors = []
    for d in message.descriptors:
        entries = tuple((e.key, e.value) for e in d.entries)
        limit = (d.limit.requests_per_unit, d.limit.unit) if d.HasField("limit") else None
        hits = d.hits_addend.value if d.HasField("hits_addend") else None
        descriptors.append((entries, "\x1f".join(v for _, v in entries), limit, hits))
    return message.domain, message.hits_addend, descriptors


def parsed_view(parsed: tuple) -> tuple:
    domain, hits, descriptors = parsed
    return domain, hits, [(d.entries, d.values, d.limit, d.hits) for d in descriptors]


def parse_rls(data: bytes) -> tuple:
    return parsed_view(parse_rls_request(data, BIG, BIG, BIG))


@SETTINGS
@given(rls_requests())
def test_rls_request_reads_what_protobuf_reads(message: rls_pb2.RateLimitRequest) -> None:
    assert parse_rls(message.SerializeToString()) == rls_view(message)


@SETTINGS
@given(rls_requests(), rls_requests())
def test_concatenated_rls_requests_merge_as_protobuf_merges(a, b) -> None:  # type: ignore[no-untyped-def]
    # Two serialised messages back to back are one message: scalars of the second win,
    # repeated fields append, singular sub-messages merge.
    data = a.SerializeToString() + b.SerializeToString()
    assert parse_rls(data) == rls_view(rls_pb2.RateLimitRequest.FromString(data))


@SETTINGS
@given(rls_requests(), st.binary(max_size=40))
def test_unknown_fields_are_skipped_like_protobuf(message, extra: bytes) -> None:  # type: ignore[no-untyped-def]
    # Field 15 (unknown to RateLimitRequest) in each wire type protobuf skips.
    data = message.SerializeToString()
    unknown = [b"\x78\x96\x01", b"\x79" + bytes(8), b"\x7d" + bytes(4)]
    unknown.append(b"\x7a" + bytes([len(extra)]) + extra)
    for field in unknown:
        assert parse_rls(field + data) == rls_view(message)
        assert parse_rls(data + field) == rls_view(message)


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=64))
@example(b"\x12\x04\x0a\x02\x0a\x00")  # an entry with an empty key
@example(b"\x0a\x02\xc3\x28")  # a domain that is not UTF-8
@example(b"\x0b\x0c")  # a group (skipped: then the domain is empty)
@example(b"\x5b\x5c\x0a\x01d")  # an unknown group, skipped
def test_random_bytes_are_read_or_refused_like_protobuf(data: bytes) -> None:
    try:
        reference = rls_pb2.RateLimitRequest.FromString(data)
    except DecodeError:
        reference = None
    try:
        got = parse_rls(data)
    except WireError as exc:
        # Refused: protobuf refuses too, or the request is one the service cannot answer.
        assert str(exc).startswith(("domain", "descriptors", "hits_addend", "request")), exc
        if reference is not None:
            view = rls_view(reference)
            unanswerable = not view[0] or not view[2]
            unanswerable |= any(not d[0] or any(not k for k, _ in d[0]) for d in view[2])
            assert unanswerable, (exc, view)
        return
    assert reference is not None
    assert got == rls_view(reference)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "domain: must not be empty"),
        (
            rls_pb2.RateLimitRequest(domain="d").SerializeToString(),
            "descriptors: must not be empty",
        ),
        (b"\x0a\x05ab", "domain: length 5 runs past the end of the message (at byte 2)"),
        (b"\x0a\x02\xc3\x28", "domain: not valid UTF-8"),
        (b"\x0a\x01d\x12\x00", "descriptors[0].entries: must not be empty"),
        (b"\x0a\x01d\x12\x04\x0a\x02\x12\x00", "descriptors[0].entries[0].key: must not be empty"),
        (b"\x0a\x01d\x12\x04\x0a\x03\x0a\x01", "descriptors[0].entries[0]: length 3 runs past"),
        (b"\x0b", "request: group 1 is not closed"),
        (b"\x0b\x14", "request: unexpected end of group 2"),
        (b"\x0b" * 101, "request: groups nested more than 100 deep"),
        (b"\x80" * 11, "request: varint longer than 10 bytes"),
    ],
)
def test_bad_rls_requests_name_the_field(data: bytes, message: str) -> None:
    with pytest.raises(WireError) as info:
        parse_rls_request(data, BIG, BIG, BIG)
    assert str(info.value).startswith(message), str(info.value)


def test_rls_bounds_name_the_field() -> None:
    def request(n: int, entries: int, chars: int) -> bytes:
        message = rls_pb2.RateLimitRequest(domain="d")
        for _ in range(n):
            d = message.descriptors.add()
            for _ in range(entries):
                d.entries.add(key="k", value="v" * chars)
        return message.SerializeToString()

    for data, message in [
        (request(3, 1, 1), "descriptors: 3 descriptors, at most 2 allowed"),
        (request(1, 3, 1), "descriptors[0].entries: 3 entries, at most 2 allowed"),
        (request(1, 1, 3), "descriptors[0].entries[0]: key and value must be at most 2 char"),
    ]:
        with pytest.raises(WireError, match=message.replace("[", r"\[").replace("]", r"\]")):
            parse_rls_request(data, 2, 2, 2)
    assert len(parse_rls_request(request(2, 2, 2), 2, 2, 2)[2]) == 2


status = st.one_of(
    st.tuples(st.sampled_from([0, 1, 2]), st.none(), uint32, st.just(0), st.just(0)),
    st.tuples(
        st.sampled_from([0, 1, 2]),
        st.tuples(uint32, st.integers(0, 7), text),
        uint32,
        st.integers(0, 10**12),
        st.integers(0, 999_999_999),
    ),
)
headers = st.lists(st.tuples(text, text), max_size=4)


@SETTINGS
@given(st.sampled_from([0, 1, 2]), st.lists(status, max_size=5), headers, headers)
def test_rls_response_is_what_protobuf_builds(overall, statuses, response_headers, request_headers):  # type: ignore[no-untyped-def]
    expected = Response(overall_code=overall)
    plain = []
    for code, limit, remaining, seconds, nanos in statuses:
        s = expected.statuses.add(code=code, limit_remaining=remaining)
        wire = None
        if limit is not None:
            rpu, unit, name = limit
            s.current_limit.CopyFrom(
                Response.RateLimit(requests_per_unit=rpu, unit=unit, name=name)
            )
            s.duration_until_reset.seconds = seconds
            s.duration_until_reset.nanos = nanos
            wire = s.current_limit.SerializeToString()
        plain.append((code, wire, remaining, seconds, nanos))
    for key, value in response_headers:
        expected.response_headers_to_add.add(key=key, value=value)
    for key, value in request_headers:
        expected.request_headers_to_add.add(key=key, value=value)
    data = encode_rls_response(overall, plain, response_headers, request_headers)
    assert Response.FromString(data) == expected
    # A status with a limit always carries its duration, even a zero one (as before).
    for got, (_, wire, *_) in zip(Response.FromString(data).statuses, plain, strict=True):
        assert got.HasField("duration_until_reset") == (wire is not None)


def test_encoders_refuse_values_that_are_not_plain() -> None:
    # Sizes are computed in one pass and bytes written in another: only exact types, whose
    # conversions run no Python code, may go in.
    class Shifty(int):
        def __index__(self) -> int:
            return 2**40

    with pytest.raises(TypeError, match=r"header\[1\]: int is not allowed"):
        encode_rls_response(1, [], [("RateLimit", 3)], [])
    with pytest.raises(TypeError, match=r"statuses\[0\]\[2\]: Shifty is not allowed"):
        encode_rls_response(1, [(1, None, Shifty(1), 0, 0)], [], [])
    with pytest.raises(TypeError, match=r"statuses\[0\]: expected a tuple"):
        encode_rls_response(1, [[1, None, 1, 0, 0]], [], [])
    with pytest.raises(TypeError, match=r"results\[0\]\[0\]: int is not allowed"):
        encode_decide_response([(1, 1, 0, 0, 0.0, 0.0, 0.0, None)], 0)


# --- limiter.v1 Decide -----------------------------------------------------------------

checks = st.builds(
    v1.Check,
    domain=text,
    rule=text,
    key=text,
    cost=uint64,
    priority=st.sampled_from(sorted(PRIORITIES)),
    max_wait=st.floats(0, 3600),
)


def check_view(c: object) -> tuple:
    return (c.domain, c.rule, c.key, c.cost, c.priority, c.max_wait)  # type: ignore[attr-defined]


def parse_decide(data: bytes) -> list[tuple]:
    return parse_decide_request(data, BIG, PRIORITIES, BIG, 3600.0)


@SETTINGS
@given(st.lists(checks, max_size=5), st.lists(checks, max_size=3))
def test_decide_request_reads_what_protobuf_reads(a, b) -> None:  # type: ignore[no-untyped-def]
    first = v1.DecideRequest(checks=a).SerializeToString()
    data = first + v1.DecideRequest(checks=b).SerializeToString()
    assert parse_decide(first) == [check_view(c) for c in a]
    assert parse_decide(data) == [check_view(c) for c in v1.DecideRequest.FromString(data).checks]


few = st.sampled_from(["", "a", "b", "ab", "é"])  # repeats, and same lengths that differ


@SETTINGS
@given(st.lists(st.builds(v1.Check, domain=few, rule=few, key=few), max_size=12))
def test_repeated_domains_and_rules_read_as_protobuf_reads(a) -> None:  # type: ignore[no-untyped-def]
    """A domain or rule equal to the previous check's is that same str (not decoded again)."""
    got = parse_decide(v1.DecideRequest(checks=a).SerializeToString())
    assert got == [check_view(c) for c in a]
    for before, after in itertools.pairwise(got):
        for field in (0, 1):
            if before[field] == after[field]:
                assert before[field] is after[field]


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=64))
@example(b"\n\x0b+\x01\x00\x00\x00\x00\x00\x00\x00\x00,")  # field 0 inside an unknown group
def test_random_decide_bytes_are_read_or_refused_like_protobuf(data: bytes) -> None:
    try:
        reference = [check_view(c) for c in v1.DecideRequest.FromString(data).checks]
    except DecodeError:
        reference = None
    try:
        got = parse_decide(data)
    except WireError as exc:
        assert str(exc).startswith(("checks", "request")), exc
        if reference is not None and ".tenant: " not in str(exc):
            # then only a value the service refuses (or the removed tenant field, which
            # protobuf now skips as unknown)
            assert any(c[4] not in PRIORITIES or not (0 <= c[5] <= 3600) for c in reference), (
                exc,
                reference,
            )
        return
    assert reference is not None
    assert len(got) == len(reference)
    for g, r in zip(got, reference, strict=True):
        assert g[:5] == r[:5] and (g[5] == r[5] or (math.isnan(g[5]) and math.isnan(r[5])))


@pytest.mark.parametrize(
    ("check", "message"),
    [
        (v1.Check(priority=9), "checks[1].priority: 9 is not a Priority"),
        (v1.Check(key="k" * 5), "checks[1].key: 5 characters, at most 4"),
        (v1.Check(max_wait=-1), "checks[1].max_wait: must be in [0, 3600] s, got -1.0"),
        (v1.Check(max_wait=math.nan), "checks[1].max_wait: must be in [0, 3600] s, got nan"),
    ],
)
def test_bad_checks_name_the_field(check: object, message: str) -> None:
    data = v1.DecideRequest(checks=[v1.Check(), check]).SerializeToString()
    with pytest.raises(WireError) as info:
        parse_decide_request(data, BIG, PRIORITIES, 4, 3600.0)
    assert str(info.value) == message
    with pytest.raises(WireError, match=r"checks: 2 checks, at most 1 allowed"):
        parse_decide_request(v1.DecideRequest(checks=[v1.Check()] * 2).SerializeToString(),
                             1, PRIORITIES, 4, 3600.0)  # fmt: skip


finite = st.floats(allow_nan=False, allow_infinity=False)
results = st.tuples(
    st.booleans(),
    st.integers(0, 5),
    st.integers(-5, 2**65),
    st.integers(-5, 2**65),
    finite,
    finite,
    finite,
    st.one_of(st.none(), text),
)


@SETTINGS
@given(st.lists(results, max_size=5), uint32)
def test_decide_response_is_what_protobuf_builds(plain, level) -> None:  # type: ignore[no-untyped-def]
    expected = v1.DecideResponse(level=level)
    for allowed, code, limit, remaining, reset, retry, waited, permit in plain:
        expected.results.add(
            allowed=allowed,
            code=code,
            limit=min(max(limit, 0), 2**64 - 1),  # uint64: clamped, never an error
            remaining=min(max(remaining, 0), 2**64 - 1),
            reset_after=reset,
            retry_after=retry,
            level=level,
            waited=waited,
            permit=permit or "",
        )
    got = v1.DecideResponse.FromString(encode_decide_response(plain, level))
    assert got.SerializeToString(deterministic=True) == expected.SerializeToString(
        deterministic=True
    )


def test_the_removed_tenant_field_is_refused_not_ignored() -> None:
    check = b"\x1a\x01k" + b"\x32\x04acme"  # key "k", then field 6 (the former tenant)
    with pytest.raises(WireError, match=r"checks\[0\]\.tenant: no longer part of limiter.v1"):
        parse_decide(b"\x0a" + bytes([len(check)]) + check)
    assert "tenant" not in v1.Check.DESCRIPTOR.fields_by_name
