"""Envoy's Access Log Service (``envoy.service.accesslog.v3.AccessLogService/
StreamAccessLogs``): a codec that turns HTTP log entries into reports of finished calls.

Envoy's ``envoy.access_loggers.http_grpc`` logger streams batches of
``HTTPAccessLogEntry``; each entry becomes one ``Report`` (latency, status, whether it
failed on the way or never reached the upstream) with its route name, upstream
cluster, and the partition and client its request headers name (``access_log``
section), and goes to ``limiter.server.outcomes.Outcomes``. Nothing is decided here and
nothing is answered until the stream ends (the RPC's response is empty).

Bounds: ``access_log.max_streams`` streams open at once (one more is refused with
RESOURCE_EXHAUSTED) and ``access_log.max_entries`` entries per message (a larger message
ends its stream with RESOURCE_EXHAUSTED, none of its entries counted); the gRPC port's
own bound on a message's size applies too. Entries are fed on the decision loop, which
gets a turn back every ``YIELD_EVERY`` entries, so a large batch never holds decisions
up for long. TCP log entries are not read.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from limiter.server.metrics import Metrics
from limiter.server.outcomes import Outcomes

from limiter.ops.outcomes import AccessLogConfig, Report

SERVICE = als_pb2.DESCRIPTOR.services_by_name["AccessLogService"].full_name
# Entries fed between turns the decision loop gets back for its other work.
YIELD_EVERY = 64
# Longest header value taken as a client or a partition (the RLS bound on a descriptor
# value, so a client blocked here is the key its checks carry); longer ones are not used.
MAX_VALUE_CHARS = 4096
# Envoy's response flags that say the call failed on its way to or from the upstream.
FAILURE_FLAGS = frozenset((
    "no_healthy_upstream", "upstream_request_timeout", "upstream_remote_reset",
    "upstream_connection_failure", "upstream_connection_termination", "upstream_overflow",
    "upstream_max_stream_duration_reached", "upstream_protocol_error",
    "upstream_retry_limit_exceeded",
))  # fmt: skip


def _seconds(duration: Any) -> float:
    return duration.seconds + duration.nanos / 1e9


def _header(headers: Any, name: str) -> str:
    """The value of request header ``name``: "" for no name, no such header or a value
    longer than ``MAX_VALUE_CHARS``."""
    value = headers.get(name, "") if name else ""
    return value if len(value) <= MAX_VALUE_CHARS else ""


class AccessLogService(als_pb2_grpc.AccessLogServiceServicer):
    """The ALS v3 servicer (grpc.aio)."""

    def __init__(self, outcomes: Outcomes, config: AccessLogConfig, metrics: Metrics) -> None:
        self.outcomes = outcomes
        self.config = config
        self.metrics = metrics
        self.streams = 0
        self._fed = metrics.access_log_entries.labels("fed")
        self._unmatched = metrics.access_log_entries.labels("unmatched")

    async def StreamAccessLogs(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> Any:
        config = self.config
        if self.streams >= config.max_streams:
            self.metrics.access_log_refused.labels("max_streams").inc()
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.streams} access-log streams are open, the most the service takes "
                "(access_log.max_streams)",
            )
        self.streams += 1
        try:
            async for message in request_iterator:
                entries = message.http_logs.log_entry
                if len(entries) > config.max_entries:
                    self.metrics.access_log_refused.labels("max_entries").inc()
                    await context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"http_logs.log_entry: {len(entries)} entries in one message, more "
                        f"than {config.max_entries} (access_log.max_entries)",
                    )
                await self.feed(entries)
        finally:
            self.streams -= 1
        return als_pb2.StreamAccessLogsResponse()

    async def feed(self, entries: Any) -> None:
        """Deliver HTTP log entries, giving the loop a turn every ``YIELD_EVERY``."""
        fed = 0
        for i, entry in enumerate(entries):
            fed += self.feed_one(entry)
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
        self._fed.inc(fed)
        self._unmatched.inc(len(entries) - fed)

    def feed_one(self, entry: Any) -> bool:
        """Deliver one HTTPAccessLogEntry; False when nothing took it."""
        common = entry.common_properties
        failed = any(f.name in FAILURE_FLAGS for f, _ in common.response_flags.ListFields())
        reached = common.HasField("time_to_first_upstream_tx_byte")
        if self.config.latency == "upstream" and common.HasField("time_to_last_upstream_rx_byte"):
            latency = _seconds(common.time_to_last_upstream_rx_byte)
        elif common.HasField("time_to_last_downstream_tx_byte"):
            latency = _seconds(common.time_to_last_downstream_tx_byte)
        else:
            latency = _seconds(common.duration)
        report = Report(latency, entry.response.response_code.value, failed, reached)
        headers = entry.request.request_headers
        partition = _header(headers, self.config.partition_header)
        client = _header(headers, self.config.client_header)
        return self.outcomes.entry(
            common.route_name, common.upstream_cluster, report, partition, client
        )
