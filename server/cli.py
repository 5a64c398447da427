"""The ``limiter`` command: ``serve`` the decision service, ``check-config`` a rules file,
``switch`` manual switches of a running service (through its admin API).

The ``serve`` options are built from ``Settings`` (``limiter.server.settings``): each
may also come from its environment variable (LIMITER_..., listed in ``--help`` and
docs/configuration.md); a flag on the command line wins.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from limiter.server.settings import Settings

from limiter import schema
from limiter.errors import ConfigError

DESCRIPTION = """\
limiter: adaptive rate-limiting decision service.

It speaks Envoy's rate limit service protocol (envoy.service.ratelimit.v3, a drop-in
for envoyproxy/ratelimit and its YAML rules) and limiter's native API (limiter.v1)
on the gRPC port, and serves /healthcheck, /metrics (Prometheus) and /json on the
HTTP port.
"""
SWITCH_DESCRIPTION = """\
Flip manual switches through the admin API (/v1/switches) of a running service.

The token comes from --admin-token-file or $LIMITER_ADMIN_TOKEN and is sent only in
the Authorization header; the service URL from --url or $LIMITER_ADMIN_URL (default
http://127.0.0.1:8080). Every change records who and why in the audit log.
"""
DEFAULT_URL = "http://127.0.0.1:8080"
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _add_settings(parser: argparse.ArgumentParser) -> None:
    """One option per ``Settings`` field with a flag; unset options stay None, so that
    ``settings`` can tell them from the environment's and the defaults."""
    for f, hint, meta in schema.declared(Settings):
        if not meta.flag:
            continue

        def parse(text: str, hint: Any = hint, meta: schema.Meta = meta) -> Any:
            try:
                return schema.from_text(hint, meta, text)
            except schema.FieldError as exc:
                raise argparse.ArgumentTypeError(exc.problem) from None

        notes = [schema.describe(hint, meta)]
        if notes[0] in ("a string", "true or false"):
            notes = []  # the flag's name and doc say it
        if f.default is not dataclasses.MISSING:
            notes.append(f"default {schema.show(f.default)}")
        text = f"{meta.doc} ({'; '.join(notes)})" if notes else meta.doc
        text += f" [env {meta.env}]"
        parser.add_argument(
            meta.flag, dest=f.name, type=parse, metavar=meta.metavar or None,
            help=text.replace("%", "%%"),
        )  # fmt: skip


def settings(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    """``serve``'s settings: each from its flag, else its environment variable, else the
    default; raises FieldError naming the flag or variable."""
    values: dict[str, Any] = {"reuse_port": args.reuse_port}
    for f, hint, meta in schema.declared(Settings):
        value = getattr(args, f.name, None)
        raw = environ.get(meta.env, "") if meta.env else ""
        if value is None and raw:
            try:
                value = schema.from_text(hint, meta, raw)
            except schema.FieldError as exc:
                raise schema.FieldError(f"environment variable {meta.env}", exc.problem) from None
        if value is not None:
            values[f.name] = value
        elif f.default is dataclasses.MISSING:
            raise schema.FieldError("", f"serve needs {meta.flag} (or {meta.env})")
    return Settings(**values)


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
    _add_settings(serve)
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

    _add_switch(commands)
    return parser


def cmd_check_config(args: argparse.Namespace) -> int:
    from limiter import config as rules

    try:
        config = rules.load(args.file)
    except ConfigError as exc:
        print(f"limiter: invalid config: {exc}", file=sys.stderr)
        return 1
    if not config.domains and not config.sections:
        warning = "empty config: no domains and no sections, so nothing is limited"
        print(f"limiter: warning: {args.file}: {warning}", file=sys.stderr)
    print(f"{args.file}: OK ({len(config.domains)} domains, {len(config.rules)} rules)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from limiter.server import logs
    from limiter.server.admin import TOKEN_ENV, load_token

    from limiter import config as rules

    try:
        s = settings(args, os.environ)
    except schema.FieldError as exc:
        print(f"limiter serve: error: {exc}", file=sys.stderr)
        return 2
    if not s.reuse_port:
        s = dataclasses.replace(s, stats_dir="")  # only workers share their metrics
    logs.setup(s.log_level)
    try:
        config = rules.load(s.config)
        env = {} if s.admin_token is None else {TOKEN_ENV: s.admin_token}
        s = dataclasses.replace(s, admin_token=load_token(s.admin_token_file, env))
    except ConfigError as exc:
        print(f"limiter: invalid config: {exc}", file=sys.stderr)
        return 1
    if s.workers > 1:
        from limiter.server.workers import supervise

        return supervise(s.workers, args.argv)
    try:
        tracing = _tracing(s) if s.otel else None
        # The idle-flushing loop: Redis requests share a round trip while the loop is busy.
        from limiter.backends.idle_loop import new_event_loop

        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(_serve(s, config, tracing))
    except (ValueError, ConfigError) as exc:
        print(f"limiter: cannot start: {exc}", file=sys.stderr)
        return 1
    except (RuntimeError, OSError) as exc:
        print(f"limiter: cannot serve: {exc}", file=sys.stderr)
        return 1
    return 0


def _tracing(settings: Settings) -> Any:
    """``--otel``: spans exported over OTLP, or a ConfigError when the extra is missing."""
    try:
        from limiter.server.tracing import Tracing
    except ImportError as exc:
        raise ConfigError(
            f"--otel needs the [otel] extra: pip install 'limiter-engine[otel]' ({exc})"
        ) from None
    return Tracing.exporting(settings.redis)


async def _serve(settings: Settings, config: Any, tracing: Any) -> None:
    """Build the service inside the running loop (gRPC aio binds to it) and run it."""
    from limiter.server.app import Service

    await Service(settings, config, tracing).run()


def duration(text: str) -> float:
    """``90``, ``90s``, ``10m``, ``2h``, ``1d`` -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: use e.g. 90s, 10m, 2h, 1d")
    return float(m.group(1)) * UNITS[m.group(2) or "s"]


def _add_switch(commands: Any) -> None:
    """The ``switch`` command, among ``commands`` (the subparsers of ``limiter``)."""
    p = commands.add_parser(
        "switch",
        help="list, set or delete manual switches on a running service",
        description=SWITCH_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "switch ids: global (kill switch: force_allow | force_deny), rule:<domain>/<rule> "
            "(a rule of the service's config; force_allow | force_deny | shadow | override "
            "--limit N), level:<service> "
            "(--level N), breaker:<dependency>[/<partition>] (force_open | force_closed)\n"
            "examples:\n"
            "  limiter switch set rule:api/per_user --action force_deny --ttl 10m --why 'abuse'\n"
            "  limiter switch set level:checkout --level 2 --why 'db failover'\n"
            "  limiter switch delete rule:api/per_user --why 'resolved'"
        ),
    )
    p.add_argument(
        "--url",
        default=None,
        help=f"service HTTP base URL (env LIMITER_ADMIN_URL, default {DEFAULT_URL})",
    )
    p.add_argument(
        "--admin-token-file",
        default=None,
        help="file holding the admin token (default: env LIMITER_ADMIN_TOKEN)",
    )
    p.add_argument("--timeout", type=float, default=5.0, help="request timeout in seconds")
    sub = p.add_subparsers(dest="switch_command", required=True, metavar="ACTION")
    sub.add_parser("list", help="active switches")
    g = sub.add_parser("get", help="one switch")
    g.add_argument("id")
    s = sub.add_parser("set", help="create or replace a switch")
    s.add_argument("id")
    s.add_argument(
        "--action", help="force_allow, force_deny, shadow, override, force_open, force_closed"
    )
    s.add_argument("--limit", type=int, help="the limit for --action override")
    s.add_argument("--level", type=int, help="forced level for a level:<service> switch")
    s.add_argument("--ttl", type=duration, help="expiry, e.g. 15m (default: until deleted)")
    s.add_argument("--why", required=True, help="reason, kept in the audit log")
    s.add_argument("--who", default=None, help="who sets it (default: your login name)")
    d = sub.add_parser("delete", help="remove a switch")
    d.add_argument("id")
    d.add_argument("--why", default="", help="reason, kept in the audit log")
    d.add_argument("--who", default=None, help="who removes it (default: your login name)")
    a = sub.add_parser("audit", help="recent switch changes")
    a.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_switch)


def _who(value: str | None) -> str:
    if value:
        return value
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _request(args: argparse.Namespace, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    from limiter.server.admin import load_token

    base = (args.url or os.environ.get("LIMITER_ADMIN_URL") or DEFAULT_URL).rstrip("/")
    token = load_token(args.admin_token_file)
    if token is None:
        raise ConfigError("no admin token: set LIMITER_ADMIN_TOKEN or pass --admin-token-file")
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=args.timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            payload = json.loads(exc.read() or b"null")
        except ValueError:
            payload = None
        return exc.code, payload


def cmd_switch(args: argparse.Namespace) -> int:
    """Execute a parsed ``switch`` command; prints JSON; returns the exit status."""
    cmd = args.switch_command
    quoted = urllib.parse.quote(getattr(args, "id", "") or "", safe=":/")
    try:
        if cmd == "list":
            status, data = _request(args, "GET", "/v1/switches")
        elif cmd == "get":
            status, data = _request(args, "GET", f"/v1/switches/{quoted}")
        elif cmd == "set":
            body: dict[str, Any] = {"who": _who(args.who), "why": args.why}
            for key in ("action", "limit", "level", "ttl"):
                if getattr(args, key) is not None:
                    body[key] = getattr(args, key)
            status, data = _request(args, "PUT", f"/v1/switches/{quoted}", body)
        elif cmd == "delete":
            body = {"who": _who(args.who), "why": args.why}
            status, data = _request(args, "DELETE", f"/v1/switches/{quoted}", body)
        else:
            status, data = _request(args, "GET", f"/v1/audit?limit={max(0, args.limit)}")
    except (OSError, ConfigError) as exc:
        print(f"limiter switch: {exc}", file=sys.stderr)
        return 1
    if status >= 400:
        message = data.get("error") if isinstance(data, dict) else None
        print(f"limiter switch: HTTP {status}: {message or 'request refused'}", file=sys.stderr)
        return 1
    print(json.dumps(data, indent=2, sort_keys=True))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
