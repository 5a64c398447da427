"""Envoy 1.40's rate-limit quota filter (``examples/envoy/rlqs.yaml``) against a probe RLQS
server (tests/envoy/rlqs_stub.py): what Envoy sends and how it enforces what it receives.
These pin down the Envoy side of the protocol that the service's RLQS server relies on."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.envoy.harness import EXAMPLES, Envoy, envoy_config
from tests.envoy.rlqs_stub import Bucket, RlqsStub, abandon

DOMAIN = "envoy-example"
_keys = itertools.count()


@pytest.fixture(scope="module")
def stub() -> Iterator[RlqsStub]:
    with RlqsStub() as server:
        yield server


@pytest.fixture
def envoy(stub: RlqsStub, tmp_path: Path) -> Iterator[Envoy]:
    """A fresh Envoy per test: its stream to the stub opens with its first bucket."""
    config = envoy_config(EXAMPLES / "rlqs.yaml", clusters={"limiter": stub.port})
    with Envoy(config, workdir=tmp_path) as proxy:
        yield proxy


def new_bucket(stub: RlqsStub, envoy: Envoy) -> Bucket:
    return Bucket(stub, envoy, f"key-{time.time_ns()}-{next(_keys)}")


def test_the_stream_opens_with_the_first_request_of_a_bucket(stub: RlqsStub, envoy: Envoy) -> None:
    opened = stub.streams_opened
    time.sleep(0.3)
    assert stub.streams_opened == opened  # nothing at start-up
    bucket = new_bucket(stub, envoy)
    # No assignment yet: no_assignment_behavior (ALLOW_ALL) decides.
    assert bucket.send().status == 200
    first = stub.wait_for(bucket.first + 1)[bucket.first]
    assert stub.streams_opened == opened + 1
    assert first.reports.domain == DOMAIN
    [usage] = first.reports.bucket_quota_usages
    assert dict(usage.bucket_id.bucket) == {"api_key": bucket.key}
    assert usage.time_elapsed.ToNanoseconds() == 0
    assert (usage.num_requests_allowed, usage.num_requests_denied) == (1, 0)
    # A request without the header matches no bucket: no report.
    assert envoy.request("/").status == 200
    time.sleep(0.2)
    assert len(stub.reports()) == bucket.first + 1


def test_deny_all_answers_with_the_deny_response_and_allow_all_lifts_it(
    stub: RlqsStub, envoy: Envoy
) -> None:
    bucket = new_bucket(stub, envoy).open()
    bucket.push(deny_all=True)
    assert bucket.until(429) is not None
    denied = bucket.send()
    assert (denied.status, denied.body) == (429, b"quota exceeded\n")
    assert denied.headers["retry-after"] == "1"
    # Another bucket is not touched.
    assert new_bucket(stub, envoy).send().status == 200
    bucket.push(allow_all=True)
    assert bucket.until(200) is not None


def test_a_token_bucket_admits_its_tokens_then_denies(stub: RlqsStub, envoy: Envoy) -> None:
    bucket = new_bucket(stub, envoy).open()
    # Deny first, so the first 200 afterwards shows the token bucket has taken over.
    bucket.push(deny_all=True)
    assert bucket.until(429) is not None
    bucket.push(token_bucket=(3, 3, 60))
    assert bucket.until(200) is not None
    assert [bucket.send().status for _ in range(5)] == [200, 200, 429, 429, 429]


def test_abandon_erases_the_bucket(stub: RlqsStub, envoy: Envoy) -> None:
    bucket = new_bucket(stub, envoy).open()
    bucket.push(deny_all=True)
    assert bucket.until(429) is not None
    before = len(bucket.usages())
    stub.push(abandon(bucket.id))
    assert bucket.until(200) is not None

    def restarted() -> bool:
        """A new first report of the bucket, covering no time."""
        return any(u.time_elapsed.ToNanoseconds() == 0 for _, u in bucket.usages()[before:])

    deadline = time.monotonic() + 5
    while not restarted() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert restarted()
