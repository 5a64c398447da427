"""One service process: engine, gRPC (RLS v3 + limiter.v1 + health + reflection), HTTP, reload.

Extension points for other modules (all on a ``Service`` before ``start``):

- ``service.http``: ``route`` / ``mount`` endpoints (see ``limiter.server.http``);
- ``service.engine.level_source``: the degradation controller (``level() -> int``);
- ``service.admission``: queued admission (``Decide`` with ``max_wait``, RLS ``hold``);
- ``service.reloader.subscribe(fn)``: receive every newly loaded ``Config``;
- ``service.grpc``: add more servicers;
- ``service.on_stop``: coroutines awaited during shutdown (after draining RPCs).

Modules listed in ``EXTENSIONS`` are imported if present and their
``install(service)`` is called before the servers start; a module may also define
``register_cli(subparsers)`` to add a ``limiter`` subcommand (see ``cli``).
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import grpc
from envoy.service.ratelimit.v3 import rls_pb2
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from limiter.server import v1
from limiter.server.admission import ServiceAdmission
from limiter.server.engine import Engine
from limiter.server.http import HttpServer, Request, Response
from limiter.server.metrics import CONTENT_TYPE, Metrics, SharedMetrics
from limiter.server.native import LimiterService
from limiter.server.reload import Reloader
from limiter.server.rls import SERVICE as RLS_SERVICE
from limiter.server.rls import HeaderOptions, RateLimitService

from limiter import config as rules

log = logging.getLogger("limiter.server")

# Optional modules that plug into every service (and the CLI) when they exist.
EXTENSIONS = ("limiter.server.admin",)


@dataclass
class Settings:
    """Everything ``limiter serve`` configures (see ``cli`` for flags and env vars)."""

    config: str
    redis: str | None = None
    host: str = "0.0.0.0"
    grpc_port: int = 8081
    http_port: int = 8080
    reuse_port: bool = False
    headers: HeaderOptions = field(default_factory=HeaderOptions)
    drain_seconds: float = 5.0
    reload_interval: float = 1.0
    max_keys: int = 1_000_000
    permit_ttl: float = 60.0
    # --workers: this worker's index and the directory where workers share metrics
    worker: str = ""
    stats_dir: str = ""


def extensions() -> list[ModuleType]:
    """The EXTENSIONS modules that are installed."""
    found = []
    for name in EXTENSIONS:
        try:
            found.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
    return found


class Service:
    """A running decision service in this process."""

    def __init__(self, settings: Settings, config: rules.Config) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.engine = Engine(
            config,
            backend=settings.redis,
            max_keys=settings.max_keys,
            permit_ttl=settings.permit_ttl,
        )
        self.metrics.watch(self.engine)
        self.metrics.config_reloads.labels("success").inc()
        self.metrics.config_ok.set(1)
        self.metrics.config_loaded_at.set_to_current_time()
        self.admission = ServiceAdmission(self.engine, self.metrics.registry)
        self.rls = RateLimitService(
            self.engine, self.metrics, settings.headers, admission=self.admission
        )
        self.native = LimiterService(self.engine, self.metrics, admission=self.admission)
        self.health = HealthServicer()
        self.reloader = Reloader(
            settings.config, self.engine, self.metrics, interval=settings.reload_interval
        )
        self.reloader.subscribe(self.admission.reloaded)
        self.grpc = grpc.aio.server(
            options=[("grpc.so_reuseport", 1 if settings.reuse_port else 0)]
        )
        self.grpc.add_generic_rpc_handlers((self.rls.handler(),))
        v1.add_limiter_servicer(self.grpc, self.native)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        reflection.enable_server_reflection(
            (RLS_SERVICE, v1.SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"]
             .full_name, reflection.SERVICE_NAME),
            self.grpc,
        )  # fmt: skip
        self.shared = (
            SharedMetrics(self.metrics, settings.stats_dir, settings.worker)
            if settings.stats_dir
            else None
        )
        self.http = HttpServer()
        self.http.route("GET", "/healthcheck", self._healthcheck)
        self.http.route("GET", "/metrics", self._metrics)
        self.http.route("POST", "/json", self._json)
        self.on_stop: list[Callable[[], Awaitable[Any]]] = []
        self.serving = False
        self.ports: dict[str, int] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        for module in extensions():
            install = getattr(module, "install", None)
            if install is not None:
                install(self)

    async def start(self) -> None:
        s = self.settings
        self.ports["grpc"] = self.grpc.add_insecure_port(f"{s.host}:{s.grpc_port}")
        await self.grpc.start()
        self.ports["http"] = await self.http.start(s.host, s.http_port, reuse_port=s.reuse_port)
        for name in ("", RLS_SERVICE, v1.SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._tasks = [
            asyncio.create_task(self.reloader.run()),
            asyncio.create_task(self._every_second()),
        ]
        self.serving = True
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
                    "backend": s.redis or "memory://",
                    "rules": len(self.engine.snapshot.config.rules),
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
        for hook in self.on_stop:
            await hook()
        for task in self._tasks:
            task.cancel()
        await self.http.stop()
        log.info("stopped")

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT (graceful drain); SIGHUP reloads the config."""
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, done.set)
        loop.add_signal_handler(signal.SIGINT, done.set)
        loop.add_signal_handler(signal.SIGHUP, self.reloader.request)
        await self.start()
        await done.wait()
        await self.stop()

    async def _every_second(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.engine.expire_permits()
            if self.shared is not None:
                self.shared.publish()

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
            answer = await self.rls.decide(message)
        except (json_format.ParseError, ValueError) as exc:
            self.metrics.invalid_requests.labels("json").inc()
            return Response.json({"error": str(exc)}, 400)
        body = json_format.MessageToJson(answer, indent=None)
        status = 429 if answer.overall_code == rls_pb2.RateLimitResponse.OVER_LIMIT else 200
        return Response(status, body.encode(), "application/json")
