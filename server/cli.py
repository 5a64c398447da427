"""The ``limiter`` command: ``serve`` the decision service, ``check-config`` a rules file.

Every ``serve`` option may also come from an environment variable (a flag on the
command line wins): LIMITER_CONFIG, LIMITER_REDIS_URL, LIMITER_HOST,
LIMITER_GRPC_PORT, LIMITER_HTTP_PORT, LIMITER_WORKERS, LIMITER_HEADERS,
LIMITER_DRAIN_SECONDS, LIMITER_RELOAD_INTERVAL, LIMITER_MAX_KEYS,
LIMITER_PERMIT_TTL, LIMITER_REDIS_BATCH_WINDOW, LIMITER_LOG_LEVEL.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from limiter.errors import ConfigError

# Seconds a Redis check waits for others to share its round trip. None by default: checks
# arriving while a round trip is on the wire share the next one anyway, and a window
# costs latency (RLS on Redis, quiet machine: 81% of a no-op server's calls/s with 1 ms
# but p50/p99 3.2/6.1 ms at half load; 74% and 1.9/4.6 ms without; results/service.md).
DEFAULT_BATCH_WINDOW = 0.0

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


def _batch_window(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 0.1:  # also refuses NaN
        raise ValueError(text)
    return value


def with_batch_window(url: str | None, window: float) -> str | None:
    """``url`` with ``batch_window`` set, unless it sets its own (or is not Redis)."""
    if not url or not url.startswith(("redis", "rediss")) or "batch_window=" in url:
        return url
    return f"{url}{'&' if '?' in url else '?'}batch_window={window:g}"


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 86400:  # also refuses NaN
        raise ValueError(text)
    return value


def _env_option(
    parser: argparse.ArgumentParser,
    flag: str,
    default: Any,
    kind: Callable[[str], Any] | None = None,
    *,
    env: str | None = None,
    help: str,
    **options: Any,
) -> None:
    """A ``serve`` option that environment variable ``env`` (by default LIMITER_ and the
    flag's name, e.g. LIMITER_GRPC_PORT) may also give."""
    env = env or "LIMITER_" + flag.removeprefix("--").upper().replace("-", "_")
    parser.add_argument(
        flag,
        type=kind,
        default=_env(env, default, kind or str),
        help=f"{help} [env {env}]",
        **options,
    )


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
    option = functools.partial(_env_option, serve)
    option(
        "--config",
        None,
        help="rules file or directory of *.yaml (envoyproxy/ratelimit format plus "
        "limiter extensions)",
    )
    option(
        "--redis",
        None,
        env="LIMITER_REDIS_URL",
        metavar="URL",
        help="share limiter state through this backend (redis://, rediss://, "
        "redis+cluster://, redis+sentinel://); default: in-process memory",
    )
    option(
        "--redis-batch-window",
        DEFAULT_BATCH_WINDOW,
        _batch_window,
        metavar="SECONDS",
        help="how long concurrent checks gather into one Redis round trip, like Envoy "
        "ratelimit's pipeline window (0: no window; checks go out when the service has "
        "nothing else to do, so they share a round trip only while it is busy; a batch_window "
        f"in the --redis URL wins; default {DEFAULT_BATCH_WINDOW})",
    )
    option("--host", "0.0.0.0", help="address both ports bind to (default 0.0.0.0)")
    option(
        "--grpc-port",
        8081,
        _port,
        help="gRPC port: RLS v3, limiter.v1, health, reflection (default 8081)",
    )
    option(
        "--http-port", 8080, _port, help="HTTP port: /healthcheck, /metrics, /json (default 8080)"
    )
    option(
        "--workers",
        1,
        _positive_int,
        help="processes serving the same ports (SO_REUSEPORT); more than 1 needs --redis "
        "so they share limits (default 1)",
    )
    option(
        "--headers",
        "ietf",
        choices=("ietf", "legacy", "both", "none"),
        help="rate-limit headers in RLS responses: IETF RateLimit-Policy/RateLimit, legacy "
        "X-RateLimit-*, both or none; Retry-After is added when over limit (default ietf)",
    )
    option(
        "--drain-seconds",
        5.0,
        _seconds,
        help="on SIGTERM, how long in-flight RPCs may finish (default 5)",
    )
    option(
        "--reload-interval",
        1.0,
        _seconds,
        help="seconds between config file change checks (default 1)",
    )
    option(
        "--max-keys",
        1_000_000,
        _positive_int,
        help="keys tracked per rule in memory; the least recently used is evicted beyond "
        "(default 1000000)",
    )
    option(
        "--permit-ttl",
        60.0,
        _seconds,
        help="seconds a concurrency permit from Decide is held if Release never comes (default 60)",
    )
    option(
        "--log-level",
        "info",
        choices=("debug", "info", "warning", "error"),
        help="JSON logs on stderr at this level (default info)",
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
        redis=with_batch_window(args.redis, args.redis_batch_window),
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
        # The idle-flushing loop: Redis requests share a round trip while the loop is busy.
        from limiter.backends.idle_loop import new_event_loop

        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(_serve(settings, config))
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
