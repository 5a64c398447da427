"""The ``limiter`` command: ``serve`` the decision service, ``check-config`` a rules file.

The ``serve`` options are built from ``Settings`` (``limiter.server.settings``): each
may also come from its environment variable (LIMITER_..., listed in ``--help`` and
docs/configuration.md); a flag on the command line wins.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
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

    from limiter.server import switch_cli

    switch_cli.register(commands)
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


async def _serve(settings: Settings, config: Any, tracing: Any = None) -> None:
    """Build the service inside the running loop (gRPC aio binds to it) and run it."""
    from limiter.server.app import Service

    await Service(settings, config, tracing).run()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
