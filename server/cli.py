"""The ``limiter`` command: ``serve`` the decision service, ``check-config`` a rules file.

Every ``serve`` option may also come from an environment variable (a flag on the
command line wins): LIMITER_CONFIG, LIMITER_REDIS_URL, LIMITER_HOST,
LIMITER_GRPC_PORT, LIMITER_HTTP_PORT, LIMITER_WORKERS, LIMITER_HEADERS,
LIMITER_DRAIN_SECONDS, LIMITER_RELOAD_INTERVAL, LIMITER_MAX_KEYS,
LIMITER_PERMIT_TTL, LIMITER_LOG_LEVEL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from limiter.errors import ConfigError

DESCRIPTION = """\
limiter: adaptive rate-limiting decision service.

It speaks Envoy's rate limit service protocol (envoy.service.ratelimit.v3, a drop-in
for envoyproxy/ratelimit and its YAML rules) and limiter's native API (limiter.v1)
on the gRPC port, and serves /healthcheck, /metrics (Prometheus) and /json on the
HTTP port.
"""


def _env(name: str, default: Any, kind: Callable[[str], Any] = str) -> Any:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return kind(raw)
    except ValueError:
        raise SystemExit(f"limiter: environment variable {name}={raw!r} is invalid") from None


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(text)
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 86400:  # also refuses NaN
        raise ValueError(text)
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="limiter",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the decision service",
        description="Run the decision service until SIGTERM/SIGINT (in-flight RPCs are "
        "drained); SIGHUP or a change to the config file reloads the rules, keeping the "
        "last good config if the new one is invalid.",
    )
    serve.add_argument(
        "--config",
        default=_env("LIMITER_CONFIG", None),
        help="rules file or directory of *.yaml (envoyproxy/ratelimit format plus "
        "limiter extensions) [env LIMITER_CONFIG]",
    )
    serve.add_argument(
        "--redis",
        metavar="URL",
        default=_env("LIMITER_REDIS_URL", None),
        help="share limiter state through this backend (redis://, rediss://, "
        "redis+cluster://, redis+sentinel://); default: in-process memory "
        "[env LIMITER_REDIS_URL]",
    )
    serve.add_argument(
        "--host",
        default=_env("LIMITER_HOST", "0.0.0.0"),
        help="address both ports bind to (default 0.0.0.0) [env LIMITER_HOST]",
    )
    serve.add_argument(
        "--grpc-port",
        type=_port,
        default=_env("LIMITER_GRPC_PORT", 8081, _port),
        help="gRPC port: RLS v3, limiter.v1, health, reflection (default 8081) "
        "[env LIMITER_GRPC_PORT]",
    )
    serve.add_argument(
        "--http-port",
        type=_port,
        default=_env("LIMITER_HTTP_PORT", 8080, _port),
        help="HTTP port: /healthcheck, /metrics, /json (default 8080) [env LIMITER_HTTP_PORT]",
    )
    serve.add_argument(
        "--workers",
        type=_positive_int,
        default=_env("LIMITER_WORKERS", 1, _positive_int),
        help="processes serving the same ports (SO_REUSEPORT); more than 1 needs --redis "
        "so they share limits (default 1) [env LIMITER_WORKERS]",
    )
    serve.add_argument(
        "--headers",
        choices=("ietf", "legacy", "both", "none"),
        default=_env("LIMITER_HEADERS", "ietf"),
        help="rate-limit headers in RLS responses: IETF RateLimit-Policy/RateLimit, legacy "
        "X-RateLimit-*, both or none; Retry-After is added when over limit (default ietf) "
        "[env LIMITER_HEADERS]",
    )
    serve.add_argument(
        "--drain-seconds",
        type=_seconds,
        default=_env("LIMITER_DRAIN_SECONDS", 5.0, _seconds),
        help="on SIGTERM, how long in-flight RPCs may finish (default 5) "
        "[env LIMITER_DRAIN_SECONDS]",
    )
    serve.add_argument(
        "--reload-interval",
        type=_seconds,
        default=_env("LIMITER_RELOAD_INTERVAL", 1.0, _seconds),
        help="seconds between config file change checks (default 1) [env LIMITER_RELOAD_INTERVAL]",
    )
    serve.add_argument(
        "--max-keys",
        type=_positive_int,
        default=_env("LIMITER_MAX_KEYS", 1_000_000, _positive_int),
        help="keys tracked per rule in memory; the least recently used is evicted beyond "
        "(default 1000000) [env LIMITER_MAX_KEYS]",
    )
    serve.add_argument(
        "--permit-ttl",
        type=_seconds,
        default=_env("LIMITER_PERMIT_TTL", 60.0, _seconds),
        help="seconds a concurrency permit from Decide is held if Release never comes "
        "(default 60) [env LIMITER_PERMIT_TTL]",
    )
    serve.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default=_env("LIMITER_LOG_LEVEL", "info"),
        help="JSON logs on stderr at this level (default info) [env LIMITER_LOG_LEVEL]",
    )
    # Set by the supervisor for its worker processes.
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)

    check = commands.add_parser(
        "check-config",
        help="validate a rules file and exit (non-zero with the error on failure)",
        description="Validate a rules file or directory exactly as `serve` loads it.",
    )
    check.add_argument("file", help="rules file or directory of *.yaml")
    check.set_defaults(func=cmd_check_config)

    from limiter.server.app import extensions

    for module in extensions():
        register = getattr(module, "register_cli", None)
        if register is not None:
            register(commands)
    return parser


def cmd_check_config(args: argparse.Namespace) -> int:
    from limiter import config as rules

    try:
        config = rules.load(args.file)
    except ConfigError as exc:
        print(f"limiter: invalid config: {exc}", file=sys.stderr)
        return 1
    print(f"{args.file}: OK ({len(config.domains)} domains, {len(config.rules)} rules)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from limiter.server import logs
    from limiter.server.app import Settings
    from limiter.server.rls import HeaderOptions

    from limiter import config as rules

    if not args.config:
        print("limiter: serve needs --config FILE (or LIMITER_CONFIG)", file=sys.stderr)
        return 2
    if args.workers > 1 and not args.redis:
        print(
            "limiter: --workers > 1 needs --redis: in-memory limits are per process, so N "
            "workers would allow N times every limit",
            file=sys.stderr,
        )
        return 2
    logs.setup(args.log_level)
    try:
        config = rules.load(args.config)
    except ConfigError as exc:
        print(f"limiter: invalid config: {exc}", file=sys.stderr)
        return 1
    if args.workers > 1:
        from limiter.server.workers import supervise

        return supervise(args.workers, args.argv)
    settings = Settings(
        config=args.config,
        redis=args.redis,
        host=args.host,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        reuse_port=args.reuse_port,
        headers=HeaderOptions.parse(args.headers),
        drain_seconds=args.drain_seconds,
        reload_interval=args.reload_interval,
        max_keys=args.max_keys,
        permit_ttl=args.permit_ttl,
        worker=os.environ.get("LIMITER_WORKER", ""),
        stats_dir=os.environ.get("LIMITER_STATS_DIR", "") if args.reuse_port else "",
    )
    try:
        asyncio.run(_serve(settings, config))
    except (ValueError, ConfigError) as exc:
        print(f"limiter: cannot start: {exc}", file=sys.stderr)
        return 1
    except (RuntimeError, OSError) as exc:
        print(f"limiter: cannot serve: {exc}", file=sys.stderr)
        return 1
    return 0


async def _serve(settings: Any, config: Any) -> None:
    """Build the service inside the running loop (gRPC aio binds to it) and run it."""
    from limiter.server.app import Service

    await Service(settings, config).run()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
