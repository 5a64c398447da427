"""What ``limiter serve`` configures: each setting names its flag and environment variable.

``limiter.server.cli`` builds the ``serve`` options from these declarations; a flag on
the command line wins over the environment variable, which wins over the default.
"""

from __future__ import annotations

from dataclasses import dataclass

from limiter.server.admission import MAX_HELD_PER_CALLER, MAX_HELD_PER_RULE
from limiter.server.rules import MAX_PERMITS_PER_CALLER, MAX_PERMITS_PER_RULE

from limiter.schema import FieldError, Section, setting

HEADERS = ("ietf", "legacy", "both", "none")
TLS_PORTS = ("both", "grpc", "http")


@dataclass(frozen=True)
class Settings(Section):
    """The service's settings (``limiter serve``)."""

    config: str = setting(
        doc="rules file or directory of *.yaml (envoyproxy/ratelimit format plus limiter "
        "extensions)", flag="--config", env="LIMITER_CONFIG",
    )  # fmt: skip
    redis: str | None = setting(
        None, "share limiter state through this backend (redis://, rediss://, "
        "redis+cluster://, redis+sentinel://); none: in-process memory",
        flag="--redis", env="LIMITER_REDIS_URL", metavar="URL",
    )  # fmt: skip
    redis_batch_window: float | None = setting(
        None, "how long concurrent checks gather into one Redis round trip, like Envoy "
        "ratelimit's pipeline window; none: checks go out when the service has nothing else "
        "to do, so they share a round trip only while it is busy, which costs no latency",
        low=0, high=0.1, seconds=True,
        flag="--redis-batch-window", env="LIMITER_REDIS_BATCH_WINDOW", metavar="SECONDS",
    )  # fmt: skip
    host: str = setting("0.0.0.0", "address both ports bind to", flag="--host", env="LIMITER_HOST")
    grpc_port: int = setting(
        8081, "gRPC port: RLS v3, limiter.v1, health, reflection (0: any free port)",
        low=0, high=65535, flag="--grpc-port", env="LIMITER_GRPC_PORT",
    )  # fmt: skip
    http_port: int = setting(
        8080, "HTTP port: /healthcheck, /metrics, /json, admin API and console (0: any free "
        "port)", low=0, high=65535, flag="--http-port", env="LIMITER_HTTP_PORT",
    )  # fmt: skip
    grpc_max_connections: int = setting(
        10_000, "gRPC connections open at once; beyond, a new one is closed at accept (the "
        "open-files limit is raised to fit if the hard limit allows)", low=1, high=1 << 20,
        flag="--grpc-max-connections", env="LIMITER_GRPC_MAX_CONNECTIONS",
    )  # fmt: skip
    grpc_idle_timeout: float = setting(
        300.0, "a gRPC connection with no RPC for this long is closed (clients such as Envoy "
        "reconnect when they next need it)", low=0.1, high=86400, seconds=True,
        flag="--grpc-idle-timeout", env="LIMITER_GRPC_IDLE_TIMEOUT",
    )  # fmt: skip
    grpc_keepalive: float = setting(
        60.0, "the service pings a gRPC client after this long without traffic and closes "
        "the connection when no answer comes within 20 s (a vanished peer)",
        low=1, high=86400, seconds=True, flag="--grpc-keepalive", env="LIMITER_GRPC_KEEPALIVE",
    )  # fmt: skip
    workers: int = setting(
        1, "processes serving the same ports (SO_REUSEPORT); more than 1 needs --redis so "
        "they share limits", low=1, high=1024, flag="--workers", env="LIMITER_WORKERS",
    )  # fmt: skip
    headers: str = setting(
        "ietf", "rate-limit headers in RLS responses: IETF RateLimit-Policy/RateLimit, legacy "
        "X-RateLimit-*, both or none; Retry-After is added when over limit",
        choices=HEADERS, flag="--headers", env="LIMITER_HEADERS",
    )  # fmt: skip
    drain_seconds: float = setting(
        5.0, "on SIGTERM, how long in-flight RPCs may finish", low=0, high=86400, seconds=True,
        flag="--drain-seconds", env="LIMITER_DRAIN_SECONDS",
    )  # fmt: skip
    reload_interval: float = setting(
        1.0, "time between config file change checks", low=0, high=86400, seconds=True,
        flag="--reload-interval", env="LIMITER_RELOAD_INTERVAL",
    )  # fmt: skip
    max_keys: int = setting(
        1_000_000, "keys tracked per rule in memory; beyond, a cold key is evicted (CLOCK, an "
        "approximation of least recently used). A key costs at most about 370 bytes (ASCII) "
        "or 780 (any text): one over 128 characters is kept as a 98-character digest form",
        low=1, high=1 << 30,
        flag="--max-keys", env="LIMITER_MAX_KEYS",
    )  # fmt: skip
    permit_ttl: float = setting(
        60.0, "how long a concurrency permit from Decide is held if Release never comes",
        low=0, high=86400, seconds=True, flag="--permit-ttl", env="LIMITER_PERMIT_TTL",
    )  # fmt: skip
    quota_ttl: float = setting(
        30.0, "how long Envoy holds a quota assignment of the quota service (RLQS) after it "
        "was sent; well above Envoy's 5 s report period, so a live stream renews it in time",
        low=2, high=3600, seconds=True, flag="--quota-ttl", env="LIMITER_QUOTA_TTL",
    )  # fmt: skip
    max_permits_per_caller: int = setting(
        MAX_PERMITS_PER_CALLER, "concurrency permits one caller (its address) may hold at "
        "once over every rule; beyond, its checks are refused with the time until one of "
        "its permits expires", low=1, high=1 << 30,
        flag="--max-permits-per-caller", env="LIMITER_MAX_PERMITS_PER_CALLER",
    )  # fmt: skip
    max_permits_per_rule: int = setting(
        MAX_PERMITS_PER_RULE, "concurrency permits held at once per rule over every caller; "
        "beyond, new checks are refused with the time until one expires", low=1, high=1 << 30,
        flag="--max-permits-per-rule", env="LIMITER_MAX_PERMITS_PER_RULE",
    )  # fmt: skip
    max_held_per_caller: int = setting(
        MAX_HELD_PER_CALLER, "checks one caller (its address) may have held for admission at "
        "once (native max_wait, RLS hold); beyond, its checks are answered at once",
        low=0, high=1 << 30, flag="--max-held-per-caller", env="LIMITER_MAX_HELD_PER_CALLER",
    )  # fmt: skip
    max_held_per_rule: int = setting(
        MAX_HELD_PER_RULE, "checks held for admission at once per rule over every caller; "
        "beyond, checks are answered at once", low=0, high=1 << 30,
        flag="--max-held-per-rule", env="LIMITER_MAX_HELD_PER_RULE",
    )  # fmt: skip
    admin_token_file: str | None = setting(
        None, "file holding the admin API bearer token (at least 16 characters); without it "
        "or LIMITER_ADMIN_TOKEN the admin API under /v1/ and the console are off",
        flag="--admin-token-file", env="LIMITER_ADMIN_TOKEN_FILE", metavar="FILE",
    )  # fmt: skip
    admin_token: str | None = setting(
        None, "the admin API bearer token itself (the file wins)", env="LIMITER_ADMIN_TOKEN"
    )
    admin_allow_remote: bool = setting(
        False, "serve the admin API and console to non-loopback callers too",
        flag="--admin-allow-remote", env="LIMITER_ADMIN_ALLOW_REMOTE", metavar="0|1",
    )  # fmt: skip
    otel: bool = setting(
        False, "OpenTelemetry: a span per ShouldRateLimit and Decide call, child of the "
        "caller's traceparent, exported over OTLP as the standard OTEL_* variables say "
        "(needs the [otel] extra)", flag="--otel", env="LIMITER_OTEL", metavar="0|1",
    )  # fmt: skip
    tls_cert: str | None = setting(
        None, "PEM file of the server's certificate (and chain): the ports --tls-ports names "
        "serve TLS; a renewed file is picked up within a second, for new connections",
        flag="--tls-cert", env="LIMITER_TLS_CERT", metavar="FILE",
    )  # fmt: skip
    tls_key: str | None = setting(
        None, "PEM file of the certificate's private key", flag="--tls-key",
        env="LIMITER_TLS_KEY", metavar="FILE",
    )  # fmt: skip
    tls_client_ca: str | None = setting(
        None, "PEM file of the certificate authorities whose client certificates the TLS "
        "ports require and verify (mutual TLS); none: clients show no certificate",
        flag="--tls-client-ca", env="LIMITER_TLS_CLIENT_CA", metavar="FILE",
    )  # fmt: skip
    tls_ports: str = setting(
        "both", "which ports serve TLS when --tls-cert is given; the other stays plain",
        choices=TLS_PORTS, flag="--tls-ports", env="LIMITER_TLS_PORTS",
    )  # fmt: skip
    log_level: str = setting(
        "info", "JSON logs on stderr at this level", choices=("debug", "info", "warning", "error"),
        flag="--log-level", env="LIMITER_LOG_LEVEL",
    )  # fmt: skip
    # Set by the --workers supervisor for its workers: the port is shared, this worker's
    # index, and the directory where workers share metrics.
    reuse_port: bool = setting(False, hidden=True)
    worker: str = setting("", env="LIMITER_WORKER", hidden=True)
    stats_dir: str = setting("", env="LIMITER_STATS_DIR", hidden=True)

    def check(self, given: frozenset[str] | None) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise FieldError("tls_key", "--tls-cert and --tls-key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise FieldError("tls_client_ca", "--tls-client-ca needs --tls-cert and --tls-key")
        if self.workers > 1 and not self.redis:
            raise FieldError(
                "workers", "--workers > 1 needs --redis: in-memory limits are per process, so "
                "N workers would allow N times every limit",
            )  # fmt: skip
