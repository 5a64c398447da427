"""``limiter switch ...``: flip manual switches through the admin API of a running service."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from limiter.server.admin import load_token

from limiter.errors import ConfigError

__all__ = ["main", "register", "run"]

DEFAULT_URL = "http://127.0.0.1:8080"
DESCRIPTION = """\
Flip manual switches through the admin API (/v1/switches) of a running service.

The token comes from --admin-token-file or $LIMITER_ADMIN_TOKEN and is sent only in
the Authorization header; the service URL from --url or $LIMITER_ADMIN_URL (default
http://127.0.0.1:8080). Every change records who and why in the audit log.
"""
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """``90``, ``90s``, ``10m``, ``2h``, ``1d`` -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: use e.g. 90s, 10m, 2h, 1d")
    return float(m.group(1)) * UNITS[m.group(2) or "s"]


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``switch`` command to an argparse ``subparsers`` object; returns its parser."""
    p = subparsers.add_parser(
        "switch",
        help="list, set or delete manual switches on a running service",
        description=DESCRIPTION,
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
    p.set_defaults(func=run)
    return p


def _who(value: str | None) -> str:
    if value:
        return value
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _request(args: argparse.Namespace, method: str, path: str, body: Any = None) -> tuple[int, Any]:
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


def run(args: argparse.Namespace) -> int:
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


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m limiter.server.switch_cli switch ...``)."""
    parser = argparse.ArgumentParser(prog="limiter")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
