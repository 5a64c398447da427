"""A minimal Rate Limit Quota Service (RLQS) that records what Envoy sends and answers what the
test tells it to: a probe of Envoy's side of the protocol, not a quota server.

It runs a grpc.aio server on its own event loop thread, so synchronous tests drive it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.service.rate_limit_quota.v3 import rlqs_pb2, rlqs_pb2_grpc
from envoy.type.v3 import ratelimit_strategy_pb2, token_bucket_pb2

from tests.envoy.harness import Envoy, Response

Reports = rlqs_pb2.RateLimitQuotaUsageReports
Assignments = rlqs_pb2.RateLimitQuotaResponse


@dataclass
class Received:
    at: float  # time.monotonic() when it arrived
    stream: int  # which stream (1 for the first Envoy opened)
    reports: Reports


def bucket_id(**entries: str) -> rlqs_pb2.BucketId:
    return rlqs_pb2.BucketId(bucket=entries)


def assignment(
    bucket: rlqs_pb2.BucketId,
    *,
    ttl: float = 60.0,
    allow_all: bool = False,
    deny_all: bool = False,
    token_bucket: tuple[int, int, float] | None = None,
) -> Assignments:
    """One bucket's assignment: a blanket rule or (max_tokens, tokens_per_fill, fill seconds)."""
    strategy = ratelimit_strategy_pb2.RateLimitStrategy()
    if allow_all or deny_all:
        strategy.blanket_rule = (
            ratelimit_strategy_pb2.RateLimitStrategy.DENY_ALL
            if deny_all
            else ratelimit_strategy_pb2.RateLimitStrategy.ALLOW_ALL
        )
    elif token_bucket is not None:
        max_tokens, per_fill, seconds = token_bucket
        bucket_spec = token_bucket_pb2.TokenBucket(max_tokens=max_tokens)
        bucket_spec.tokens_per_fill.value = per_fill
        bucket_spec.fill_interval.FromNanoseconds(round(seconds * 1e9))
        strategy.token_bucket.CopyFrom(bucket_spec)
    response = Assignments()
    action = response.bucket_action.add()
    action.bucket_id.CopyFrom(bucket)
    action.quota_assignment_action.assignment_time_to_live.FromNanoseconds(round(ttl * 1e9))
    action.quota_assignment_action.rate_limit_strategy.CopyFrom(strategy)
    return response


def abandon(bucket: rlqs_pb2.BucketId) -> Assignments:
    response = Assignments()
    action = response.bucket_action.add()
    action.bucket_id.CopyFrom(bucket)
    action.abandon_action.SetInParent()
    return response


class RlqsStub(rlqs_pb2_grpc.RateLimitQuotaServiceServicer):
    """``start()`` binds ``port`` on 127.0.0.1 (0: any; ``port`` is then the real one).
    ``on_report``, if set, is called with each message and may return a response to send at
    once."""

    def __init__(
        self, on_report: Callable[[Reports], Assignments | None] | None = None, port: int = 0
    ) -> None:
        self.on_report = on_report
        self.received: list[Received] = []
        self.port = port
        self.streams_opened = 0
        self._queues: dict[int, asyncio.Queue[Assignments]] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: grpc.aio.Server | None = None
        self._lock = threading.Lock()

    def start(self) -> RlqsStub:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._server = grpc.aio.server()
        rlqs_pb2_grpc.add_RateLimitQuotaServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port(f"127.0.0.1:{self.port}")
        await self._server.start()

    async def StreamRateLimitQuotas(self, request_iterator, context):  # type: ignore[no-untyped-def]
        with self._lock:
            self.streams_opened += 1
            stream = self.streams_opened
        queue: asyncio.Queue[Assignments] = asyncio.Queue()
        self._queues[stream] = queue

        async def read() -> None:
            async for reports in request_iterator:
                with self._lock:
                    self.received.append(Received(time.monotonic(), stream, reports))
                answer = self.on_report(reports) if self.on_report else None
                if answer is not None:
                    queue.put_nowait(answer)

        reader = asyncio.ensure_future(read())
        getter: asyncio.Future[Assignments] | None = None
        try:
            while not reader.done():
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    yield getter.result()
                    getter = None
        finally:
            for task in (reader, getter):
                if task is not None:
                    task.cancel()
            self._queues.pop(stream, None)

    def push(self, response: Assignments) -> int:
        """Send ``response`` on every open stream; returns how many streams got it."""
        queues = list(self._queues.values())
        for queue in queues:
            self._loop.call_soon_threadsafe(queue.put_nowait, response)
        return len(queues)

    def reports(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """The first ``count`` messages, waiting up to ``timeout`` seconds for them."""
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.received)} of {count} reports after {timeout}s")
            time.sleep(0.01)
        return self.reports()[:count]

    def stop(self) -> None:
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._server.stop(0), self._loop).result(10)
            self._server = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> RlqsStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Bucket:
    """The bucket ``{api_key: key}`` of one Envoy running ``examples/envoy/rlqs.yaml``, as a
    test drives it: requests with that ``x-api-key``, assignments pushed for it, its reports."""

    def __init__(self, stub: RlqsStub, envoy: Envoy, key: str) -> None:
        self.stub = stub
        self.envoy = envoy
        self.key = key
        self.id = bucket_id(api_key=key)
        self.first = len(stub.reports())  # where its reports start

    def open(self) -> Bucket:
        """Its first request, and wait for the report that follows at once."""
        self.send()
        self.stub.wait_for(self.first + 1)
        return self

    def send(self) -> Response:
        return self.envoy.request("/", {"x-api-key": self.key})

    def push(self, **strategy: Any) -> None:
        """Send it an assignment (the keywords of :func:`assignment`) on every stream."""
        self.stub.push(assignment(self.id, **strategy))

    def until(self, status: int, timeout: float = 5.0) -> float | None:
        """Seconds until a request gets ``status`` (None: not within ``timeout``): an
        assignment takes effect asynchronously."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.send().status == status:
                return time.monotonic() - start
            time.sleep(0.002)
        return None

    def usages(self) -> list[tuple[float, rlqs_pb2.RateLimitQuotaUsageReports.BucketQuotaUsage]]:
        """(arrival time, usage) of each report of this bucket so far."""
        return [
            (received.at, usage)
            for received in self.stub.reports()[self.first :]
            for usage in received.reports.bucket_quota_usages
            if usage.bucket_id == self.id
        ]
