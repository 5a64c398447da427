"""The admin JSON API under ``/v1/``: switches, levels, breakers, top-N, events, rules.

A thin layer over the operations policy (``limiter.ops.Operations``) and the rulebook,
mounted on the service's HTTP port (served off the decision loop). Every call needs
``Authorization: Bearer <token>`` (compared in constant time). Without a token the API
is off and answers 404 everywhere; a missing or wrong token gets the same 401 for
every path, existing or not, so a refusal reveals nothing. Only loopback callers are
served unless remote callers are allowed (``--admin-allow-remote``).

Endpoints (JSON in and out; errors are ``{"error": "..."}`` with 400, 404, 405 or 503
when the shared switch store is unreachable):

- ``GET /v1/switches`` -> ``{"switches": [switch, ...]}`` (live ones only)
- ``GET /v1/switches/{id}`` -> switch, or 404
- ``PUT /v1/switches/{id}`` with ``{"action", "limit", "level", "ttl" | "expires_at",
  "who", "why"}`` -> the stored switch. Ids: ``global`` (kill switch: force_allow |
  force_deny), ``rule:<domain>/<rule>`` (a rule of the config, or ``<domain>/_override``
  for the limits requests supply; force_allow | force_deny | shadow | override
  + ``limit``), ``level:<service>`` (``level``), ``breaker:<dependency>[/<partition>]``
  (force_open | force_closed). ``who`` and ``why`` are required; ``ttl`` in seconds (at least 1).
- ``DELETE /v1/switches/{id}`` with optional ``{"who", "why"}`` -> ``{"deleted": switch}``
- ``GET /v1/audit?limit=100`` -> ``{"audit": [{"at", "op", "id", "who", "why",
  "before", "after"}, ...]}``, newest first (op: put, delete, expire)
- ``GET /v1/levels`` -> ``{"levels": [{"service", "level", "name", "computed",
  "forced", "max_level", "pressure", "signals"}]}``
- ``GET /v1/breakers`` -> ``{"breakers": [...], "configured": [dependency, ...]}``
- ``GET /v1/blocked`` -> ``{"blocked": [{"client", "seconds_left"}]}``
- ``GET /v1/top/clients?rule=&n=10`` -> ``{"clients": [{"rule", "client", "count",
  "error", "share"}]}`` (all rules merged without ``rule``)
- ``GET /v1/top/rules?n=10`` -> ``{"rules": [{"rule", "over_limit", "total", "ratio",
  "throttling"}]}``, the rules throttling hardest (for autoscalers)
- ``GET /v1/events?since=0&limit=100`` -> ``{"events": [...]}`` with a ``seq`` to poll from
- ``GET /v1/rules?history=0&domain=`` -> ``{"rules": [...], "step", "pid"}``: every rule of
  this process with its counters, rates and adaptive state (``limiter.server.console``)
- ``GET /v1/status`` -> levels, kill switch, switch count, store health, throttling
  rules, rules answered by their failure mode (``fallback``), webhook delivery counters
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from limiter.server.console import RuleRates, rules_view
from limiter.server.http import Request, Response
from limiter.server.rules import OVERRIDES

from limiter.errors import ConfigError, InvalidParameter, brief
from limiter.ops import Operations
from limiter.ops.switches import StoreUnavailable, Switch

log = logging.getLogger("limiter.admin")

TOKEN_ENV = "LIMITER_ADMIN_TOKEN"
MIN_TOKEN_LENGTH = 16
LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")
JSON = "application/json"
NO_STORE = [("Cache-Control", "no-store")]


def load_token(
    token_file: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> str | None:
    """The admin token: ``token_file`` if given, else ``$LIMITER_ADMIN_TOKEN``, else None."""
    env = os.environ if env is None else env
    if token_file is not None:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"--admin-token-file {token_file}: cannot read: {exc.__class__.__name__}"
            ) from None
        source = f"--admin-token-file {token_file}"
    elif env.get(TOKEN_ENV):
        token, source = env[TOKEN_ENV].strip(), TOKEN_ENV
    else:
        return None
    if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in token):
        raise ConfigError(
            f"{source}: the admin token must be at least {MIN_TOKEN_LENGTH} characters "
            "without whitespace"
        )
    return token


def _json(status: int, data: Any, *headers: tuple[str, str]) -> Response:
    body = json.dumps(data, separators=(",", ":"), default=str).encode()
    return Response(status, body, JSON, [*NO_STORE, *headers])


NOT_FOUND = _json(404, {"error": "not found"})
UNAUTHORIZED = _json(401, {"error": "unauthorized"}, ("WWW-Authenticate", "Bearer"))


def _authorized(token: str, header: str | None) -> bool:
    """Constant-time check of ``Authorization: Bearer <token>`` (digests hide the length)."""
    given = ""
    if header and header[:7].lower() == "bearer ":
        given = header[7:].strip()
    want = hashlib.sha256(token.encode()).digest()
    got = hashlib.sha256(given.encode("utf-8", "surrogateescape")).digest()
    return hmac.compare_digest(want, got) and bool(given)


def _int(query: Mapping[str, str], name: str, default: int, maximum: int = 10_000) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    if not re.fullmatch(r"\d{1,9}", raw) or int(raw) > maximum:
        raise InvalidParameter(f"query parameter {name} must be an integer in [0, {maximum}]")
    return int(raw)


def _body(body: bytes, required: bool) -> dict[str, Any]:
    if not body.strip():
        if required:
            raise InvalidParameter("body must be a JSON object")
        return {}
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidParameter("body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidParameter("body must be a JSON object")
    return data


Route = Callable[[Mapping[str, str], dict[str, str], bytes], Response]


class AdminApi:
    """The ``/v1/`` handler: ``await api(request)`` (mounted) or ``api.handle(...)``."""

    def __init__(
        self,
        ops: Operations,
        *,
        token: str | None,
        rulebook: Any = None,
        rates: RuleRates | None = None,
        allow_remote: bool = False,
    ) -> None:
        self.ops = ops
        self.token = token
        self.rulebook = rulebook
        self.rates = rates or RuleRates()
        self.allow_remote = allow_remote
        self.table: list[tuple[str, str, Route]] = [
            ("GET", "/v1/switches", self.list_switches),
            ("GET", "/v1/switches/{id}", self.get_switch),
            ("PUT", "/v1/switches/{id}", self.put_switch),
            ("DELETE", "/v1/switches/{id}", self.delete_switch),
            ("GET", "/v1/audit", self.audit),
            ("GET", "/v1/levels", self.levels),
            ("GET", "/v1/breakers", self.breakers),
            ("GET", "/v1/rules", self.rules),
            ("GET", "/v1/blocked", self.blocked),
            ("GET", "/v1/top/clients", self.top_clients),
            ("GET", "/v1/top/rules", self.top_rules),
            ("GET", "/v1/events", self.events),
            ("GET", "/v1/status", self.status),
        ]

    def serves(self, client: str) -> bool:
        """Is the API (and the console) on for this caller?"""
        return self.token is not None and (self.allow_remote or client in LOOPBACK)

    def guard(self, request: Request) -> Response | None:
        """The refusal of a request on its head alone (mounted as the HTTP port's guard,
        so a caller without the token never gets a body read): 404 when the API is off
        for this caller, 401 without the right token; None to go on."""
        if not self.serves(request.client):
            return NOT_FOUND
        return self._refusal(request.headers)

    def _refusal(self, headers: Mapping[str, str]) -> Response | None:
        if self.token is None:
            return NOT_FOUND
        auth = headers.get("Authorization") or headers.get("authorization")
        return None if _authorized(self.token, auth) else UNAUTHORIZED

    async def __call__(self, request: Request) -> Response:
        if not self.serves(request.client):
            return NOT_FOUND  # the token is checked by ``handle``
        target = urllib.parse.quote(request.path, safe="/:@")
        if request.query:
            target += "?" + request.query
        return self.handle(request.method, target, request.headers, request.body)

    def handle(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Response:
        """Answer one request; ``target`` is the path with its query string; header names
        are looked up as given and lower-case."""
        refusal = self._refusal(headers)
        if refusal is not None:
            return refusal
        split = urllib.parse.urlsplit(target)
        query = dict(urllib.parse.parse_qsl(split.query))
        allowed = []
        for m, pattern, route in self.table:
            params = _match(pattern, split.path)
            if params is None:
                continue
            if m != method:
                allowed.append(m)
                continue
            try:
                return route(query, params, body)
            except InvalidParameter as exc:
                return _json(400, {"error": str(exc)})
            except StoreUnavailable as exc:
                return _json(503, {"error": str(exc)})
            except Exception:
                log.exception("admin %s %s failed", method, split.path)
                return _json(500, {"error": "internal error"})
        if allowed:
            return _json(
                405, {"error": "method not allowed"}, ("Allow", ", ".join(sorted(allowed)))
            )
        return NOT_FOUND

    # --- routes: (query, path params, body) -> Response ----------------------------

    def list_switches(self, query: Mapping[str, str], params: dict, body: bytes) -> Response:
        return _json(200, {"switches": [s.as_dict() for s in self.ops.switches.list()]})

    def get_switch(self, query: Mapping[str, str], params: dict, body: bytes) -> Response:
        sw = self.ops.switches.get(Switch.check_id(params["id"]))
        return NOT_FOUND if sw is None else _json(200, sw.as_dict())

    def put_switch(self, query: Mapping[str, str], params: dict, body: bytes) -> Response:
        ops = self.ops
        sw = Switch.from_request(params["id"], _body(body, True), ops.switches.clock())
        if sw.kind == "rule":
            self._check_rule(sw.target)
        ops.switches.put(sw)
        ops.announce(sw.id, "put", sw.who, sw.why, sw)
        return _json(200, sw.as_dict())

    def _check_rule(self, name: str) -> None:
        """A ``rule:`` switch must name a rule of this service (``<domain>/<rule>``): one
        naming nothing would be accepted and do nothing."""
        if self.rulebook is None:
            return
        snapshot = self.rulebook.snapshot
        known = {state.ops_name for state in snapshot.states.values()}
        known.update(f"{domain}/{OVERRIDES}" for domain in snapshot.config.domains)
        if name in known:
            return
        near = sorted(k for k in known if k.endswith("/" + name) or name in k)[:5]
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise InvalidParameter(
            f"no rule {brief(name)} in this service's config (rules are named "
            f"<domain>/<rule name or descriptor path>){hint}"
        )

    def delete_switch(self, query: Mapping[str, str], params: dict, body: bytes) -> Response:
        sid = Switch.check_id(params["id"])
        data = _body(body, False)
        who = data.get("who") if isinstance(data.get("who"), str) and data["who"] else "unknown"
        why = data.get("why") if isinstance(data.get("why"), str) and data["why"] else ""
        before = self.ops.switches.delete(sid, who[:200], why[:1000])
        if before is None:
            return NOT_FOUND
        self.ops.announce(sid, "delete", who, why, before)
        return _json(200, {"deleted": before.as_dict()})

    def audit(self, query: Mapping[str, str], params: dict, body: bytes) -> Response:
        return _json(200, {"audit": self.ops.switches.audit(_int(query, "limit", 100))})

    def levels(self, query: Mapping[str, str], params: dict, body: bytes) -> Response:
        return _json(200, {"levels": self.ops.levels.snapshot()})

    def breakers(self, query: Mapping[str, str], params: dict, body: bytes) -> Response:
        configured = sorted(self.ops.breakers.configs)
        return _json(200, {"breakers": self.ops.breakers.snapshot(), "configured": configured})

    def rules(self, query: Mapping[str, str], params: dict, body: bytes) -> Response:
        history = _int(query, "history", 0, self.rates.keep - 1)
        domain = query.get("domain")  # an empty value is dropped: all domains
        rows = []
        if self.rulebook is not None:
            rows = rules_view(
                self.rulebook, self.rates, self.ops.switches.rule, history=history, domain=domain
            )
        # Each replica (and --workers process) counts its own checks: say whose these are.
        return _json(200, {"rules": rows, "step": self.rates.step_ns / 1e9, "pid": os.getpid()})

    def blocked(self, query: Mapping[str, str], params: dict, body: bytes) -> Response:
        abnormal = self.ops.abnormal
        return _json(200, {"blocked": [] if abnormal is None else abnormal.blocked()})

    def top_clients(self, query: Mapping[str, str], params: dict, body: bytes) -> Response:
        n = _int(query, "n", 10, 1000)
        return _json(200, {"clients": self.ops.clients.top(query.get("rule"), n)})

    def top_rules(self, query: Mapping[str, str], params: dict, body: bytes) -> Response:
        return _json(200, {"rules": self.ops.throttle.top(_int(query, "n", 10, 1000))})

    def events(self, query: Mapping[str, str], params: dict, body: bytes) -> Response:
        limit = _int(query, "limit", 100, 10_000)
        return _json(200, {"events": self.ops.alerts.recent(limit, _int(query, "since", 0, 10**9))})

    def status(self, query: Mapping[str, str], params: dict, body: bytes) -> Response:
        ops = self.ops
        killed = ops.switches.killed()
        return _json(
            200,
            {
                "levels": ops.levels.snapshot(),
                "kill_switch": None if killed is None else killed.as_dict(),
                "switches": len(ops.switches.list()),
                "store_healthy": getattr(ops.switches, "healthy", True),
                "throttling": ops.throttle.throttling(),
                "fallback": ops.fallback.active(),
                "alerts": ops.alerts.stats(),
            },
        )


def _match(pattern: str, path: str) -> dict[str, str] | None:
    if pattern.endswith("/{id}"):
        prefix = pattern[: -len("{id}")]
        if path.startswith(prefix) and len(path) > len(prefix):
            return {"id": urllib.parse.unquote(path[len(prefix) :])}
        return None
    return {} if path == pattern else None
