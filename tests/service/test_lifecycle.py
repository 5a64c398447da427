"""Process lifecycle: CLI, env overrides, health, reflection, hot reload, SIGHUP, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from limiter.server import v1

from tests.service.conftest import ServiceProcess, request, rls_stub, wait_until

RULES = """
domain: app
descriptors:
  - key: user
    rate_limit: {unit: hour, requests_per_unit: LIMIT, name: per-user}
"""


def rules(limit: int) -> str:
    return RULES.replace("LIMIT", str(limit))


def remaining(target: str, user: str) -> int:
    with grpc.insecure_channel(target) as channel:
        answer = rls_stub(channel).ShouldRateLimit(request("app", {"user": user}), timeout=10)
    return answer.statuses[0].limit_remaining


def test_help_explains_every_option() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "limiter.server.cli", "serve", "--help"],
        capture_output=True, text=True, timeout=30,
    ).stdout  # fmt: skip
    for option in ("--config", "--redis", "--grpc-port", "--http-port", "--workers", "--headers",
                   "--drain-seconds", "--redis-batch-window", "LIMITER_GRPC_PORT", "SIGTERM",
                   "SIGHUP"):  # fmt: skip
        assert option in out, option


def test_bad_redis_batch_windows_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(rules(3))
    for bad in ("-1", "0.5", "nan", "soon"):
        run = subprocess.run(
            [sys.executable, "-m", "limiter.server.cli", "serve", "--config", str(path),
             "--redis-batch-window", bad], capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert run.returncode == 2 and "--redis-batch-window" in run.stderr, (bad, run.stderr)


def test_flags_win_over_the_environment_which_wins_over_defaults() -> None:
    from limiter.server import cli
    from limiter.server.settings import Settings

    from limiter.schema import FieldError

    args = cli.build_parser().parse_args(["serve", "--config", "r.yaml", "--grpc-port", "5"])
    env = {"LIMITER_GRPC_PORT": "6", "LIMITER_HTTP_PORT": "7", "LIMITER_HEADERS": "NONE",
           "LIMITER_ADMIN_ALLOW_REMOTE": "1", "LIMITER_REDIS_BATCH_WINDOW": ""}  # fmt: skip
    settings = cli.settings(args, env)
    assert (settings.grpc_port, settings.http_port, settings.headers) == (5, 7, "none")
    assert settings.admin_allow_remote and settings.redis_batch_window is None
    assert settings.max_keys == Settings("r.yaml").max_keys == 1_000_000
    for name, value, problem in (
        ("LIMITER_HTTP_PORT", "65536", "must be an integer in [0, 65535], got 65536"),
        ("LIMITER_DRAIN_SECONDS", "nan", "must be a number of seconds in [0, 86400]"),
        ("LIMITER_LOG_LEVEL", "loud", "'loud' is not one of debug, info, warning, error"),
        ("LIMITER_ADMIN_ALLOW_REMOTE", "yes", "must be true or false, got 'yes'"),
    ):
        with pytest.raises(FieldError, match=f"environment variable {name}: ") as info:
            cli.settings(args, {name: value})
        assert problem in str(info.value)


def test_bad_environment_values_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(rules(3))
    run = subprocess.run(
        [sys.executable, "-m", "limiter.server.cli", "serve", "--config", str(path)],
        capture_output=True, text=True, timeout=30,
        env={**os.environ, "LIMITER_WORKERS": "0"},
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert "environment variable LIMITER_WORKERS: must be an integer in [1, 1024]" in run.stderr


def test_workers_without_redis_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(rules(3))
    run = subprocess.run(
        [sys.executable, "-m", "limiter.server.cli", "serve", "--config", str(path), "--workers",
         "2"], capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert run.returncode == 2 and "--workers > 1 needs --redis" in run.stderr


def test_bad_config_at_start_exits_non_zero(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("domain: app\ndescriptors:\n  - key: a\n    rate_limit: {algorithm: nope}\n")
    run = subprocess.run(
        [sys.executable, "-m", "limiter.server.cli", "serve", "--config", str(path)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert run.returncode == 1 and "rate_limit.algorithm: 'nope'" in run.stderr


def test_env_overrides_health_reflection_reload_and_drain(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(rules(5))
    service = ServiceProcess(path, env={"LIMITER_HEADERS": "none", "LIMITER_LOG_LEVEL": "debug"})
    service.start()
    try:
        # Env override: LIMITER_HEADERS=none leaves only the level header.
        with grpc.insecure_channel(service.target) as channel:
            answer = rls_stub(channel).ShouldRateLimit(request("app", {"user": "h"}), timeout=10)
            assert list(answer.response_headers_to_add) == []
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", "envoy.service.ratelimit.v3.RateLimitService", v1.SERVICE_NAME):
                status = health.Check(health_pb2.HealthCheckRequest(service=name)).status
                assert status == health_pb2.HealthCheckResponse.SERVING
            db = ProtoReflectionDescriptorDatabase(channel)
            services = set(db.get_services())
            assert {"envoy.service.ratelimit.v3.RateLimitService", v1.SERVICE_NAME} <= services
            proto = db.FindFileContainingSymbol("limiter.v1.Limiter")
            assert proto.name == v1.PROTO_NAME and proto.package == "limiter.v1"

        # Hot reload on file change (a changed limit starts a fresh kernel).
        assert remaining(service.target, "a") == 4
        path.write_text(rules(50))
        assert wait_until(lambda: remaining(service.target, "b") == 48, timeout=10)

        # A bad file keeps the last good config; logs and metrics say so.
        path.write_text(rules(1).replace("unit: hour", "unit: eon"))
        assert wait_until(lambda: service.metric("limiter_config_last_reload_successful") == 0)
        assert service.metric("limiter_config_reloads_total", result="error") >= 1
        assert 40 < remaining(service.target, "c") < 50
        errors = [
            json.loads(x) for x in service.logs().splitlines() if '"config reload failed' in x
        ]
        assert errors and "rate_limit.unit" in errors[-1]["error"]

        # SIGHUP reloads at once even when the file looks unchanged.
        path.write_text(rules(7))
        service.signal(signal.SIGHUP)
        assert wait_until(lambda: remaining(service.target, "d") == 6, timeout=10)
        assert service.metric("limiter_config_last_reload_successful") == 1

        # SIGTERM under load: every RPC completes or is refused by the closing transport;
        # none fails inside the service (INTERNAL/UNKNOWN).
        outcomes: list[str] = []
        stop = threading.Event()

        def hammer() -> None:
            with grpc.insecure_channel(service.target) as channel:
                stub = rls_stub(channel)
                while not stop.is_set():
                    try:
                        stub.ShouldRateLimit(request("app", {"user": "load"}), timeout=5)
                        outcomes.append("ok")
                    except grpc.RpcError as exc:
                        outcomes.append(exc.code().name)
                        if exc.code() == grpc.StatusCode.UNAVAILABLE:
                            return

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        assert wait_until(lambda: len(outcomes) > 50)
        service.signal(signal.SIGTERM)
        assert service.proc is not None and service.proc.wait(timeout=15) == 0
        stop.set()
        for t in threads:
            t.join(timeout=10)
        assert set(outcomes) <= {"ok", "UNAVAILABLE", "CANCELLED"}, set(outcomes)
        messages = [json.loads(x)["msg"] for x in service.logs().splitlines() if x.startswith("{")]
        assert "draining" in messages and messages[-1] == "stopped"
    finally:
        service.stop()


@pytest.mark.parametrize("mode", ["ietf", "legacy"])
def test_header_modes(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(rules(1))
    service = ServiceProcess(path, "--headers", mode).start()
    try:
        with grpc.insecure_channel(service.target) as channel:
            stub = rls_stub(channel)
            stub.ShouldRateLimit(request("app", {"user": "m"}), timeout=10)
            answer = stub.ShouldRateLimit(request("app", {"user": "m"}), timeout=10)
        names = [h.key for h in answer.response_headers_to_add]
        if mode == "ietf":
            assert names == ["RateLimit-Policy", "RateLimit", "Retry-After"]
        else:
            assert names == ["X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset",
                             "Retry-After"]  # fmt: skip
    finally:
        assert service.stop() == 0


def test_stop_drains_in_flight_rpcs(tmp_path: Path) -> None:
    """An RPC in progress when the drain starts still completes (in-process server)."""
    from limiter.server.app import Service, Settings

    from limiter import config as config_rules

    path = tmp_path / "rules.yaml"
    path.write_text(rules(3))

    async def slow(request: bytes, context: object) -> bytes:
        await asyncio.sleep(0.5)
        return b"done"

    async def scenario() -> tuple[bytes, float]:
        settings = Settings(str(path), host="127.0.0.1", grpc_port=0, http_port=0)
        service = Service(settings, config_rules.load(path))
        handler = grpc.unary_unary_rpc_method_handler(slow)
        service.grpc.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("test.Slow", {"Sleep": handler}),)
        )
        await service.start()
        port = service.ports["grpc"]  # picked by the kernel
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/test.Slow/Sleep")(b"", timeout=10)
            await asyncio.sleep(0.1)
            started = time.monotonic()
            stopping = asyncio.create_task(service.stop())
            answer = await call
            await stopping
            return answer, time.monotonic() - started

    answer, took = asyncio.run(scenario())
    assert answer == b"done" and took >= 0.3


def test_a_sighup_landing_as_the_poll_interval_ends_is_not_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from limiter.server.metrics import Metrics
    from limiter.server.reload import Reloader

    path = tmp_path / "rules.yaml"
    path.write_text(rules(5))
    reloader = Reloader(str(path), lambda config: None, Metrics(), interval=0.01)
    reasons: list[str] = []
    monkeypatch.setattr(reloader, "reload", lambda reason: reasons.append(reason) or True)
    waits = 0

    def wait_that_times_out(timeout: float) -> bool:
        nonlocal waits
        waits += 1
        if waits == 1:
            reloader.request()  # the signal handler runs just as the wait times out
        if waits == 3:
            reloader._stop.set()
        return False

    monkeypatch.setattr(reloader._wake, "wait", wait_that_times_out)
    reloader._run()
    assert reasons == ["signal"]  # exactly one forced reload (the file did not change)
