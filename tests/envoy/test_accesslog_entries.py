"""What Envoy's gRPC access logger really sends, as the service reads it: a probe of Envoy's
side with a minimal recording AccessLogService (and an RLS that refuses one key), not the
service itself. ``limiter.server.accesslog`` relies on each of these."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from tests.envoy.harness import EXAMPLES, Envoy, Upstream, envoy_config
from tests.service.conftest import wait_until


class Recorder(als_pb2_grpc.AccessLogServiceServicer, rls_pb2_grpc.RateLimitServiceServicer):
    """Records access-log entries and the streams they came on; answers RLS checks OK,
    OVER_LIMIT for the API key ``refused``. A grpc.aio server on its own loop thread."""

    def __init__(self) -> None:
        self.entries: list[Any] = []
        self.streams = 0
        self.port = 0
        started = threading.Event()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self._run, args=(started,), daemon=True).start()
        started.wait(10)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = grpc.aio.server()
        als_pb2_grpc.add_AccessLogServiceServicer_to_server(self, self.server)
        rls_pb2_grpc.add_RateLimitServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.loop.run_until_complete(self.server.start())
        started.set()
        self.loop.run_forever()

    async def StreamAccessLogs(self, requests: Any, context: Any) -> Any:
        self.streams += 1
        async for message in requests:
            self.entries.extend(message.http_logs.log_entry)
        return als_pb2.StreamAccessLogsResponse()

    async def ShouldRateLimit(self, request: Any, context: Any) -> Any:
        refused = any(e.value == "refused" for d in request.descriptors for e in d.entries)
        code = rls_pb2.RateLimitResponse.OVER_LIMIT if refused else rls_pb2.RateLimitResponse.OK
        return rls_pb2.RateLimitResponse(overall_code=code)

    def entry(self, key: str) -> Any:
        found = [e for e in self.entries if e.request.request_headers.get("x-api-key") == key]
        assert len(found) == 1, [e.request.request_headers for e in self.entries]
        return found[0].common_properties, found[0].response.response_code.value

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(None), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    r = Recorder()
    yield r
    r.close()


@pytest.mark.timeout(120)
def test_entries_say_whether_the_upstream_was_reached_and_how_it_failed(
    recorder: Recorder,
) -> None:
    upstream = Upstream()
    upstream.statuses = {"failing": 503, "missing": 404}
    config = envoy_config(
        EXAMPLES / "als.yaml", clusters={"limiter": recorder.port, "backend": upstream.port}
    )
    # A route timeout shorter than the slow call below.
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    route = manager["typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0]
    route["route"]["timeout"] = "0.5s"
    try:
        with Envoy(config, concurrency=2) as envoy:
            for key, status in [("fine", 200), ("failing", 503), ("missing", 404),
                                ("refused", 429)]:  # fmt: skip
                assert envoy.request("/", {"x-api-key": key}).status == status
            upstream.delay = 2.0
            assert envoy.request("/", {"x-api-key": "slow"}).status == 504
            assert wait_until(lambda: len(recorder.entries) == 5, timeout=10)
    finally:
        upstream.close()
    for key, status in [("fine", 200), ("failing", 503), ("missing", 404)]:
        common, code = recorder.entry(key)
        assert code == status and common.route_name == "backend"
        assert common.upstream_cluster == "backend"
        assert common.HasField("time_to_first_upstream_tx_byte")
        assert common.HasField("time_to_last_upstream_rx_byte")
        assert not common.response_flags.ListFields()
    # A rate-limited request never reached the upstream: no upstream timings, no cluster.
    common, code = recorder.entry("refused")
    assert code == 429 and common.route_name == "backend" and common.upstream_cluster == ""
    assert not common.HasField("time_to_first_upstream_tx_byte")
    assert [f.name for f, _ in common.response_flags.ListFields()] == ["rate_limited"]
    # A timeout reached the upstream and never heard back: a flag says so.
    common, code = recorder.entry("slow")
    assert code == 504 and common.HasField("time_to_first_upstream_tx_byte")
    assert not common.HasField("time_to_last_upstream_rx_byte")
    assert common.HasField("time_to_last_downstream_tx_byte")
    assert [f.name for f, _ in common.response_flags.ListFields()] == ["upstream_request_timeout"]
    # One stream per Envoy worker thread that logged.
    assert 1 <= recorder.streams <= 2
