"""One service process: every part built once, here, and handed to what uses it.

The decision loop (the process's main event loop) runs the gRPC server (RLS v3,
limiter.v1, RLQS, the access-log service, health, reflection) and nothing else: the
HTTP port (health, metrics, ``/json``, the admin API and console), config reloads and
housekeeping (switch sweeps, levels and the pressure they follow, fallback alerts,
breaker probes, expired permits, shared metrics, renewed TLS certificates, Redis
restarts) each run on their own thread, and hand the decision loop finished work
(``on_decision_loop``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import resource
import signal
import sys
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from envoy.service.accesslog.v3 import als_pb2_grpc
from envoy.service.rate_limit_quota.v3 import rlqs_pb2_grpc
from envoy.service.ratelimit.v3 import rls_pb2
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from limiter.server import console, v1
from limiter.server.accesslog import SERVICE as ALS_SERVICE
from limiter.server.accesslog import AccessLogService
from limiter.server.admin import AdminApi
from limiter.server.admission import ServiceAdmission
from limiter.server.decider import Decider
from limiter.server.http import MAX_CONNECTIONS as MAX_HTTP_CONNECTIONS
from limiter.server.http import HttpServer, Request, Response
from limiter.server.metrics import CONTENT_TYPE, Metrics, SharedMetrics
from limiter.server.native import LimiterService
from limiter.server.outcomes import Outcomes
from limiter.server.pressure import ServicePressure
from limiter.server.quota import SERVICE as QUOTA_SERVICE
from limiter.server.quota import QuotaService
from limiter.server.reload import Reloader
from limiter.server.rls import SERVICE as RLS_SERVICE
from limiter.server.rls import HeaderOptions, RateLimitService
from limiter.server.rules import BadRequest, Rulebook
from limiter.server.settings import Settings
from limiter.server.tls import ServerTls

from limiter import config as rules
from limiter import ops as operations
from limiter.ops.outcomes import AccessLogConfig

if TYPE_CHECKING:
    from limiter.server.tracing import Tracing

log = logging.getLogger("limiter.server")
T = TypeVar("T")

# Largest /json body: 1,024 descriptors (the RLS bound) of a few short entries each.
MAX_JSON_BODY = 256 * 1024
# gRPC bounds besides the settings: RPCs in flight per connection, the largest request,
# the time a new connection has to complete its (TLS and HTTP/2) handshake, and how long
# a kept-alive client has to answer the service's ping.
GRPC_MAX_STREAMS = 1024
GRPC_MAX_MESSAGE = 4 << 20
GRPC_HANDSHAKE_TIMEOUT = 10.0
GRPC_PING_TIMEOUT = 20.0
# Files the process needs besides the gRPC connections: the HTTP port's, Redis, logs.
SPARE_FILES = MAX_HTTP_CONNECTIONS + 512
# How often the decision loop's thread gives the GIL to the others (and back): short,
# so a busy HTTP or reload thread delays a decision by at most about this much.
SWITCH_INTERVAL = 0.0005
# The gRPC services the port serves, as health checks and reflection name them.
SERVICES = (RLS_SERVICE, v1.SERVICE_NAME, QUOTA_SERVICE, ALS_SERVICE)


class Service:
    """A running decision service in this process (build it inside the running loop)."""

    def __init__(
        self, settings: Settings, config: rules.Config, tracing: Tracing | None = None
    ) -> None:
        self.settings = settings
        self.tracing = tracing
        self.loop = asyncio.get_running_loop()
        self.metrics = Metrics()
        backend: Any = None
        quota_store = None
        if settings.redis:
            from limiter.backends.quota_store import QuotaStore
            from limiter.backends.redis import RedisBackend

            backend = RedisBackend(settings.redis, batch_window=settings.redis_batch_window)
            quota_store = QuotaStore(backend)
        self.rulebook = Rulebook(
            config,
            backend=backend,
            max_keys=settings.max_keys,
            permit_ttl=settings.permit_ttl,
            max_permits_per_caller=settings.max_permits_per_caller,
            max_permits_per_rule=settings.max_permits_per_rule,
        )
        self.ops = operations.build(config.sections, redis_url=settings.redis, start=False)
        self.ops_sections = config.sections  # applied at start; a reload only warns
        self.admission = ServiceAdmission(
            self.rulebook,
            self.metrics.registry,
            max_per_caller=settings.max_held_per_caller,
            max_per_rule=settings.max_held_per_rule,
        )
        self.decider = Decider(self.rulebook, self.ops, self.admission)
        self.metrics.watch(self.rulebook, self.ops)
        self.metrics.config_reloads.labels("success").inc()
        self.metrics.config_ok.set(1)
        self.metrics.config_loaded_at.set_to_current_time()
        # With tracing on, the codecs see a decider that writes onto the call's span.
        decider = self.decider if tracing is None else tracing.decider(self.decider)
        self.rls = RateLimitService(decider, self.metrics, HeaderOptions.parse(settings.headers))
        self.outcomes = Outcomes(self.rulebook, self.ops)
        self.native = LimiterService(decider, self.metrics, self.outcomes)
        self.access_log = AccessLogService(
            self.outcomes, config.sections.get("access_log", AccessLogConfig()), self.metrics
        )
        self.quota = QuotaService(
            self.decider, ttl=settings.quota_ttl, store=quota_store, metrics=self.metrics
        )
        self.health = HealthServicer()
        self.reloader = Reloader(
            settings.config, self._apply, self.metrics, interval=settings.reload_interval
        )
        self.grpc = grpc.aio.server(
            interceptors=() if tracing is None else (tracing.interceptor(),),
            options=grpc_options(settings),
        )
        self.grpc.add_generic_rpc_handlers((self.rls.handler(),))
        v1.add_limiter_servicer(self.grpc, self.native)
        rlqs_pb2_grpc.add_RateLimitQuotaServiceServicer_to_server(self.quota, self.grpc)
        als_pb2_grpc.add_AccessLogServiceServicer_to_server(self.access_log, self.grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        reflection.enable_server_reflection(
            (*SERVICES, health_name, reflection.SERVICE_NAME), self.grpc
        )
        self.shared = (
            SharedMetrics(self.metrics, settings.stats_dir, settings.worker)
            if settings.stats_dir
            else None
        )
        self.admin = AdminApi(
            self.ops,
            token=settings.admin_token,
            rulebook=self.rulebook,
            allow_remote=settings.admin_allow_remote,
        )
        self.ops.steps.append(lambda: console.sample_rules(self.rulebook, self.admin.rates))
        self.pressure = ServicePressure(self.rulebook, self.ops.levels.config, self.ops.fallback)
        self.ops.steps.append(self.pressure.sample)
        self.ops.signals.append(self.pressure.signals)
        self.ops.steps.append(self.rulebook.expire_permits)
        self.redis_runs: dict[str, str] = {}  # each Redis server's run id, as last seen
        if backend is not None:
            self.ops.steps.append(self._watch_redis)
        if self.shared is not None:
            self.ops.steps.append(self.shared.publish)
        self.tls: ServerTls | None = None
        http_tls = None
        # Both or neither (Settings checks), but either may be given empty: then no TLS.
        if settings.tls_cert and settings.tls_key:
            self.tls = ServerTls(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
            self.ops.steps.append(self.tls.refresh)
            if settings.tls_ports in ("both", "http"):
                http_tls = self.tls.context
        self.http = HttpServer(tls=http_tls)
        self.http.route("GET", "/healthcheck", self._healthcheck)
        self.http.route("GET", "/metrics", self._metrics)
        self.http.route(
            "POST", "/json", self._json, max_body=MAX_JSON_BODY, content_type="application/json"
        )
        self.http.mount("/v1/", self.admin, guard=self.admin.guard)
        console.mount(self.http, self.admin.serves)
        self.serving = False
        self.ports: dict[str, int] = {}

    async def start(self) -> None:
        s = self.settings
        open_files(s.grpc_max_connections + SPARE_FILES)
        if s.max_permits_per_caller >= s.max_keys:
            log.warning(
                "--max-permits-per-caller is not below --max-keys: one caller can fill a "
                "concurrency rule's key table and leave no slot to the others",
                extra={"fields": {"max_permits_per_caller": s.max_permits_per_caller,
                                  "max_keys": s.max_keys}},
            )  # fmt: skip
        address = f"{s.host}:{s.grpc_port}"
        if self.tls is not None and s.tls_ports in ("both", "grpc"):
            self.ports["grpc"] = self.grpc.add_secure_port(address, self.tls.grpc_credentials())
        else:
            self.ports["grpc"] = self.grpc.add_insecure_port(address)
        await self.grpc.start()
        self.ports["http"] = self.http.start(s.host, s.http_port, reuse_port=s.reuse_port)
        for name in ("", *SERVICES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.reloader.start()
        self.ops.start()
        self._quota_refresh = asyncio.create_task(self.quota.run())
        self.serving = True
        sys.setswitchinterval(SWITCH_INTERVAL)
        # Everything built so far lives as long as the process: keep it out of the
        # cyclic GC's scans so collections triggered by per-RPC garbage stay cheap.
        gc.collect()
        gc.freeze()
        log.info(
            "serving",
            extra={
                "fields": {
                    **self.ports,
                    "config": s.config,
                    "tls": s.tls_ports if self.tls is not None else "none",
                    "backend": s.redis or "memory://",
                    "rules": len(self.rulebook.snapshot.config.rules),
                }
            },
        )

    async def stop(self) -> None:
        """Drain: report NOT_SERVING, let in-flight RPCs finish (up to drain_seconds), close."""
        if not self.serving:
            return
        self.serving = False
        log.info("draining", extra={"fields": {"grace": self.settings.drain_seconds}})
        await self.health.enter_graceful_shutdown()
        self.admission.close()  # held checks are answered busy now, not at the drain's end
        await self.grpc.stop(self.settings.drain_seconds)
        self._quota_refresh.cancel()
        await asyncio.to_thread(self._stop_threads)
        log.info("stopped")

    def _stop_threads(self) -> None:
        self.reloader.stop()
        self.http.stop()
        self.ops.close()
        if self.tracing is not None:
            self.tracing.shutdown()

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT (graceful drain); SIGHUP reloads the config."""
        done = asyncio.Event()
        self.loop.add_signal_handler(signal.SIGTERM, done.set)
        self.loop.add_signal_handler(signal.SIGINT, done.set)
        self.loop.add_signal_handler(signal.SIGHUP, self.reloader.request)
        await self.start()
        await done.wait()
        await self.stop()

    def _apply(self, config: rules.Config) -> None:
        """A valid new config (on the reloader's thread): rule states are built here, the
        swap is one assignment, and the admission queues follow on the decision loop."""
        self.rulebook.reload(config)
        # The new rules live until the next reload: out of the cyclic GC's full scans, as
        # everything built at start-up is (see start), so none of them pauses decisions.
        gc.freeze()
        self.loop.call_soon_threadsafe(self.admission.reloaded)
        old = self.ops_sections
        if any(config.sections.get(n) != old.get(n) for n in operations.SECTIONS):
            log.warning(
                "ops sections (%s) changed: they apply on restart",
                ", ".join(operations.SECTIONS),
            )

    def _watch_redis(self) -> None:
        """Housekeeping: a Redis server showing a new run id has restarted; without
        persistence (RDB or AOF) every window and counter it held started over."""
        from limiter.backends.redis import REDIS_FAULTS

        try:
            runs = self.rulebook.backend.run_ids()
        except REDIS_FAULTS:
            return  # unreachable now: the decisions' own failures are logged
        for node, run in runs.items():
            before = self.redis_runs.get(node)
            if before is not None and before != run:
                self.metrics.redis_restarts.inc()
                log.warning(
                    "Redis restarted: unless it persists its data, every shared window and "
                    "counter started over",
                    extra={"fields": {"node": node, "run_id": run, "previous_run_id": before}},
                )
        self.redis_runs.update(runs)

    async def on_decision_loop(self, work: Awaitable[T]) -> T:
        """Run ``work`` (a coroutine) on the decision loop and await its result from
        another loop (the HTTP thread's)."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, self.loop))

    async def _healthcheck(self, request: Request) -> Response:
        if self.serving:
            return Response.text("OK\n")
        return Response.text("draining\n", 500)

    async def _metrics(self, request: Request) -> Response:
        source = self.shared or self.metrics
        return Response(200, source.render(), CONTENT_TYPE)

    async def _json(self, request: Request) -> Response:
        """POST a RateLimitRequest as proto3 JSON: 200 (OK) or 429 (OVER_LIMIT) with the answer."""
        message = rls_pb2.RateLimitRequest()
        try:
            json_format.Parse(request.body.decode("utf-8"), message)
            data = message.SerializeToString()
            answer = rls_pb2.RateLimitResponse.FromString(
                await self.on_decision_loop(self.rls.answer(data, request.client))
            )
        except (json_format.ParseError, ValueError, RecursionError, BadRequest) as exc:
            self.metrics.invalid_requests.labels("json").inc()
            return Response.json({"error": str(exc)[:1000]}, 400)
        body = json_format.MessageToJson(answer, indent=None)
        status = 429 if answer.overall_code == rls_pb2.RateLimitResponse.OVER_LIMIT else 200
        return Response(status, body.encode(), "application/json")


def grpc_options(settings: Settings) -> list[tuple[str, int]]:
    """The gRPC server's channel arguments: its bounds and keep-alive."""
    return [
        ("grpc.so_reuseport", 1 if settings.reuse_port else 0),
        ("grpc.max_allowed_incoming_connections", settings.grpc_max_connections),
        ("grpc.max_connection_idle_ms", int(settings.grpc_idle_timeout * 1000)),
        ("grpc.keepalive_time_ms", int(settings.grpc_keepalive * 1000)),
        ("grpc.keepalive_timeout_ms", int(GRPC_PING_TIMEOUT * 1000)),
        ("grpc.server_handshake_timeout_ms", int(GRPC_HANDSHAKE_TIMEOUT * 1000)),
        ("grpc.max_concurrent_streams", GRPC_MAX_STREAMS),
        ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE),
    ]


def open_files(needed: int) -> None:
    """Raise the soft limit on open files to ``needed`` if it is lower and the hard limit
    allows, so the connection bounds are reached before the process runs out of files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        log.warning(
            "open-files limit is below what the connection bounds need",
            extra={"fields": {"limit": target, "needed": needed}},
        )
