"""The admin JSON API under ``/v1/`` and the operations objects it exposes.

``build(sections, redis_url=...)`` wires the degradation/operations side from the
config sections (``alerts``, ``breakers``, ``degradation``, ``shedding``,
``switches``) into one ``Ops`` object, with a housekeeping thread that sweeps expired
switches, ends quiet throttling, refreshes levels and runs breaker health probes.
``install(service)`` plugs it into ``limiter serve`` (see ``limiter.server.app``).

The API is framework-free: ``handle(ops, method, target, headers, body)`` answers
one request, and ``routes(ops)`` lists ``(method, pattern, handler)`` for servers
that register routes. Every call needs ``Authorization: Bearer <token>`` (token from
``LIMITER_ADMIN_TOKEN`` or a token file, compared in constant time). Without a
configured token the API is disabled and answers 404 everywhere; a missing or wrong
token gets the same 401 for every path, existing or not, so a refusal reveals nothing.
On the service's port only loopback callers are served unless
``LIMITER_ADMIN_ALLOW_REMOTE=1``.

Endpoints (JSON in and out; errors are ``{"error": "..."}`` with 400, 404, 405, 413
or 503 when the shared switch store is unreachable):

- ``GET /v1/switches`` -> ``{"switches": [switch, ...]}`` (live ones only)
- ``GET /v1/switches/{id}`` -> switch, or 404
- ``PUT /v1/switches/{id}`` with ``{"action", "limit", "level", "ttl" | "expires_at",
  "who", "why"}`` -> the stored switch. Ids: ``global`` (kill switch: force_allow |
  force_deny), ``rule:<domain>/<rule>`` (force_allow | force_deny | shadow | override
  + ``limit``), ``level:<service>`` (``level``), ``breaker:<dependency>[/<partition>]``
  (force_open | force_closed). ``who`` and ``why`` are required; ``ttl`` in seconds.
- ``DELETE /v1/switches/{id}`` with optional ``{"who", "why"}`` -> ``{"deleted": switch}``
- ``GET /v1/audit?limit=100`` -> ``{"audit": [{"at", "op", "id", "who", "why",
  "before", "after"}, ...]}``, newest first (op: put, delete, expire)
- ``GET /v1/levels`` -> ``{"levels": [{"service", "level", "name", "computed",
  "forced", "max_level", "pressure", "signals"}]}``
- ``GET /v1/breakers`` -> ``{"breakers": [{"name", "state", "mode", "calls",
  "failures", "slow", "consecutive_failures", "rejected", "retry_after"}],
  "configured": [dependency, ...]}`` (breakers exist once used; ``configured`` names
  the dependencies of the ``breakers:`` section)
- ``GET /v1/blocked`` -> ``{"blocked": [{"client", "seconds_left"}]}``
- ``GET /v1/top/clients?rule=&n=10`` -> ``{"clients": [{"rule", "client", "count",
  "error", "share"}]}`` (all rules merged without ``rule``)
- ``GET /v1/top/rules?n=10`` -> ``{"rules": [{"rule", "over_limit", "total", "ratio",
  "throttling"}]}``, the rules throttling hardest (for autoscalers)
- ``GET /v1/events?since=0&limit=100`` -> ``{"events": [...]}``: alerts and changes of
  this replica, each with a ``seq`` to poll from
- ``GET /v1/rules?history=0&domain=`` -> ``{"rules": [{"key", "domain", "rule", "name",
  "id", "algorithm", "limit", "unit", "burst", "unlimited", "shadow_mode", "priority",
  "request_override", "total_hits", "over_limit", "near_limit", "within_limit",
  "shadow_hits", "backend_errors", "hits_per_s", "over_per_s", "adaptive", "switch",
  "history"?}], "step", "pid"}``: every rule of this process with its counters, its rates over
  the last ~1 s step (None until two samples), an adaptive rule's ``{"limit",
  "percentile", "observed", "target_latency", "mode", "in_flight"}``, the switch acting
  on it, and with ``history=N`` (<= 60) its last N per-step rates (configured rules
  only, not limits supplied by requests; see
  ``limiter.server.console``). Empty when the API runs without a service.
- ``GET /v1/status`` -> levels, kill switch, switch count, store health, throttling
  rules, webhook delivery counters
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import os
import re
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from limiter.server.console import RuleRates, rules_view, sample_engine

from limiter import Decision
from limiter import config as rules
from limiter.alerts import Alerts, AlertsConfig
from limiter.breaker import Breakers, State
from limiter.criticality import Criticality
from limiter.degradation import DegradationConfig, ServiceLevels
from limiter.errors import ConfigError, InvalidParameter
from limiter.shedding import AbnormalAccess, SheddingConfig, ThrottleWatch, TopClients
from limiter.switches import StoreUnavailable, Switch, Switches, SwitchesConfig, open_switches

__all__ = [
    "SECTIONS",
    "Ops",
    "Response",
    "Verdict",
    "build",
    "handle",
    "install",
    "load_token",
    "register_cli",
    "register_sections",
    "routes",
    "serve",
]

log = logging.getLogger("limiter.admin")

TOKEN_ENV = "LIMITER_ADMIN_TOKEN"
TOKEN_FILE_ENV = "LIMITER_ADMIN_TOKEN_FILE"
# Non-loopback callers are refused (as if admin were off) unless this is "1".
REMOTE_ENV = "LIMITER_ADMIN_ALLOW_REMOTE"
MIN_TOKEN_LENGTH = 16
MAX_BODY = 64 * 1024
# Largest weight a sketch counts at once (the kernels' MAX_COUNT).
MAX_WEIGHT = 1 << 40
# Counts many requests' clients of one rule: (clients, hits).
ClientCounter = Callable[[list[str], list[int]], None]
LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")

# Config sections this side owns: name -> parser(value, where), for register_section.
SECTIONS: dict[str, Callable[[Any, str], Any]] = {
    "alerts": AlertsConfig.parse,
    "breakers": Breakers.parse_config,
    "degradation": DegradationConfig.parse,
    "shedding": SheddingConfig.parse,
    "switches": SwitchesConfig.parse,
}


def register_sections() -> None:
    """Make ``limiter.config`` accept this side's sections (the CLI does this at start).

    Not done at import: code that only reads rules keeps rejecting unknown sections.
    """
    for name, parser in SECTIONS.items():
        rules.register_section(name, parser)


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


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the operations side says about one check before the rule's kernel is asked.

    ``decision``: answer this without asking the kernel (a forced allow/deny, a
    blocked or shed client). ``shadow``: ask the kernel but answer allowed (count the
    would-be rejection). ``limit``: an operator's limit override for the rule.
    """

    decision: Decision | None = None
    shadow: bool = False
    limit: int | None = None


@dataclass
class Ops:
    """Everything the service consults besides its rules, and the admin API's view of it.

    Per check the service calls ``before(rule, client, hits, limit, criticality)`` (None
    on the fast path: no switch, no cut) and ``after(rule, allowed, hits)``; the level comes from
    ``levels.level(service)``. ``rule`` is ``"<domain>/<rule label>"``, the name a
    ``rule:<domain>/<label>`` switch addresses.
    """

    switches: Switches
    alerts: Alerts
    levels: ServiceLevels
    breakers: Breakers
    throttle: ThrottleWatch
    clients: TopClients
    abnormal: AbnormalAccess | None
    token: str | None = None
    housekeeping_interval: float = 0.5
    # The service's engine (set by ``install``; read-only here) and its per-rule rates.
    engine: Any = None
    rates: RuleRates = field(default_factory=RuleRates)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _routes: list[tuple[str, str, Callable[[Request], Response]]] | None = None

    def before(
        self,
        rule: str,
        client: str,
        hits: int,
        limit: int,
        criticality: Criticality | str | None = None,
        level: int | None = None,
    ) -> Verdict | None:
        """Switches, tier shedding, abnormal-client blocks and top-client shedding.

        ``criticality`` is the check's tier (a ``Criticality`` or its name; None = not
        shed by tier): at a degradation level from which ``degradation.shed`` refuses that
        tier, the check is refused. ``level``: the default service's level if the caller
        read it already (once per request). Never raises for odd input: ``hits`` beyond
        the sketch's range count as its maximum.
        """
        verdict = self.before_rule(rule, limit, criticality, level)
        if verdict is not None:
            return verdict
        return self.before_client(rule, client, hits, limit, self.throttle.is_throttling(rule))

    def before_rule(
        self,
        rule: str,
        limit: int,
        criticality: Criticality | str | None = None,
        level: int | None = None,
    ) -> Verdict | None:
        """The part of ``before`` that is the same for every client of ``rule`` (a switch,
        tier shedding): a request with many checks of one rule asks it once. A verdict here
        skips the per-client part."""
        sw = self.switches.rule(rule)
        if sw is not None:
            action = sw.action
            if action == "force_allow":
                return Verdict(Decision(True, limit, limit, 0.0))
            if action == "force_deny":
                left = 1.0
                if sw.expires_at is not None:
                    left = min(max(sw.expires_at - self.switches.clock() / 1e9, 0.001), 3600.0)
                return Verdict(Decision(False, limit, 0, left, left))
            if action == "shadow":
                return Verdict(shadow=True)
            return Verdict(limit=sw.limit)
        if criticality is not None and self.levels.config.shed:
            if level is None:
                level = self.levels.level()
            if level and self.levels.config.sheds(Criticality.parse(criticality), level):
                return Verdict(Decision(False, limit, 0, 1.0, 1.0))
        return None

    def before_client(
        self, rule: str, client: str, hits: int, limit: int, pressure: bool
    ) -> Verdict | None:
        """The per-client part of ``before``: abnormal-client blocks, and top-client
        shedding while ``pressure`` (``throttle.is_throttling(rule)``)."""
        if not 1 <= hits <= MAX_WEIGHT:
            hits = 1 if hits < 1 else MAX_WEIGHT
        abnormal = self.abnormal
        if abnormal is not None and not abnormal.request(client, hits):
            left = max(abnormal.blocked_for(client), 0.001)
            return Verdict(Decision(False, limit, 0, left, left))
        if not self.clients.check(rule, client, hits, pressure=pressure):
            return Verdict(Decision(False, limit, 0, 1.0, 1.0))
        return None

    def client_counter(self, rule: str, pressure: bool) -> ClientCounter | None:
        """While ``before_client`` cannot refuse ``rule``'s clients (no ``pressure``, no
        abnormal-client blocks), it only counts them: this counts many in one call,
        ``(clients, hits)``. None when each client must be asked."""
        if pressure or self.abnormal is not None:
            return None
        return self.clients[rule].sketch.offer_many

    def after(self, rule: str, allowed: bool, hits: int) -> None:
        """Count the rule's answer (throttle start/stop alerts, top throttled rules)."""
        self.throttle.record(rule, allowed, hits)

    def _pressure(self) -> None:
        """Feed the default service's level with the share of breakers that are not closed.

        The service adds its own signals (utilisation, adaptive cuts) with
        ``levels["default"].observe(...)``. Throttling is deliberately not one: a
        per-client limit refusing one abuser says nothing about the service's health.
        """
        every = self.breakers.all()
        if every:
            opened = sum(b.state is not State.CLOSED for b in every) / len(every)
            self.levels["default"].observe(breakers=opened)

    def _sweep(self) -> None:
        """Remove expired switches; the replica that removes one announces it."""
        for sw in self.switches.sweep():
            self.alerts.emit(
                "switch_changed",
                {
                    "id": sw.id,
                    "op": "expire",
                    "who": "system",
                    "why": "expired",
                    "switch": sw.as_dict(),
                },
            )

    def _sample_rules(self) -> None:
        if self.engine is not None:
            sample_engine(self.engine, self.rates)

    def tick(self) -> None:
        """One round of housekeeping (also run by the background thread)."""
        for step in (
            self._sample_rules,
            self._pressure,
            self._sweep,
            self.throttle.tick,
            self.levels.refresh,
            self.breakers.run_probes,
        ):
            try:
                step()
            except StoreUnavailable:
                pass
            except Exception:
                log.exception("housekeeping step %s failed", getattr(step, "__name__", step))

    def start(self) -> Ops:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="limiter-ops", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.housekeeping_interval):
            self.tick()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.switches.close()
        self.alerts.close(timeout=2)


def build(
    sections: Mapping[str, Any] | None = None,
    *,
    redis_url: str | None = None,
    token: str | None = None,
    clock: Callable[[], int] | None = None,
    wall_clock: Callable[[], int] | None = None,
    start: bool = True,
) -> Ops:
    """Wire the operations side from parsed config sections (missing ones use defaults)."""
    sections = sections or {}

    def section(name: str) -> Any:
        value = sections.get(name)
        return SECTIONS[name](None, name) if value is None else value

    alerts = Alerts(section("alerts"), clock=wall_clock)
    switches = open_switches(section("switches"), redis_url, clock=wall_clock)
    shedding: SheddingConfig = section("shedding")
    levels = ServiceLevels(
        section("degradation"), clock=clock, override=switches.level, on_change=alerts.listener
    )
    breakers = Breakers(
        section("breakers"), clock=clock, on_change=alerts.listener, override=switches.breaker
    )

    def on_switch(switch_id: str, switch: Switch | None) -> None:
        if switch_id.startswith("level:"):
            levels[switch_id.split(":", 1)[1]].refresh()

    switches.subscribe(on_switch)
    for sw in switches.list():
        on_switch(sw.id, sw)
    clients = shedding.top_clients(clock)

    def throttle_event(event: str, fields: dict[str, Any]) -> None:
        """Throttling alerts carry the level and the rule's heaviest clients."""
        top = [(c["client"], c["count"]) for c in clients.top(fields["rule"], 5)]
        alerts.emit(event, {**fields, "level": levels.level(), "top_clients": top})

    ops = Ops(
        switches=switches,
        alerts=alerts,
        levels=levels,
        breakers=breakers,
        throttle=shedding.throttle_watch(clock, throttle_event),
        clients=clients,
        abnormal=(
            shedding.abnormal_access(clock, alerts.listener)
            if shedding.abnormal is not None
            else None
        ),
        token=token,
        rates=RuleRates(clock) if clock is not None else RuleRates(),
    )
    return ops.start() if start else ops


# -- HTTP-framework-free request handling ------------------------------------------------


@dataclass
class Response:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: bytes
    params: dict[str, str] = field(default_factory=dict)


def _json(status: int, data: Any, **headers: str) -> Response:
    body = json.dumps(data, separators=(",", ":"), default=str).encode()
    return Response(
        status, body, {"Content-Type": "application/json", "Cache-Control": "no-store", **headers}
    )


NOT_FOUND = _json(404, {"error": "not found"})
UNAUTHORIZED = _json(401, {"error": "unauthorized"}, **{"WWW-Authenticate": "Bearer"})


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


def _body(req: Request, required: bool) -> dict[str, Any]:
    if not req.body.strip():
        if required:
            raise InvalidParameter("body must be a JSON object")
        return {}
    try:
        data = json.loads(req.body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidParameter("body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidParameter("body must be a JSON object")
    return data


def routes(ops: Ops) -> list[tuple[str, str, Callable[[Request], Response]]]:
    """``(method, path pattern, handler)``; ``{id}`` matches the rest of the path."""

    def list_switches(req: Request) -> Response:
        return _json(200, {"switches": [s.as_dict() for s in ops.switches.list()]})

    def get_switch(req: Request) -> Response:
        sw = ops.switches.get(Switch.check_id(req.params["id"]))
        return NOT_FOUND if sw is None else _json(200, sw.as_dict())

    def put_switch(req: Request) -> Response:
        sw = Switch.from_request(req.params["id"], _body(req, True), ops.switches.clock())
        ops.switches.put(sw)
        ops.alerts.emit(
            "switch_changed",
            {"id": sw.id, "op": "put", "who": sw.who, "why": sw.why, "switch": sw.as_dict()},
        )
        return _json(200, sw.as_dict())

    def delete_switch(req: Request) -> Response:
        sid = Switch.check_id(req.params["id"])
        body = _body(req, False)
        who = body.get("who") if isinstance(body.get("who"), str) and body["who"] else "unknown"
        why = body.get("why") if isinstance(body.get("why"), str) and body["why"] else ""
        before = ops.switches.delete(sid, who[:200], why[:1000])
        if before is None:
            return NOT_FOUND
        ops.alerts.emit(
            "switch_changed",
            {"id": sid, "op": "delete", "who": who, "why": why, "switch": before.as_dict()},
        )
        return _json(200, {"deleted": before.as_dict()})

    def audit(req: Request) -> Response:
        return _json(200, {"audit": ops.switches.audit(_int(req.query, "limit", 100))})

    def levels(req: Request) -> Response:
        return _json(200, {"levels": ops.levels.snapshot()})

    def breakers(req: Request) -> Response:
        configured = sorted(ops.breakers.configs)
        return _json(200, {"breakers": ops.breakers.snapshot(), "configured": configured})

    def rules_list(req: Request) -> Response:
        history = _int(req.query, "history", 0, ops.rates.keep - 1)
        domain = req.query.get("domain")  # an empty value is dropped: all domains
        rows = []
        if ops.engine is not None:
            rows = rules_view(
                ops.engine, ops.rates, ops.switches.rule, history=history, domain=domain
            )
        # Each replica (and --workers process) counts its own checks: say whose these are.
        return _json(200, {"rules": rows, "step": ops.rates.step_ns / 1e9, "pid": os.getpid()})

    def blocked(req: Request) -> Response:
        return _json(200, {"blocked": [] if ops.abnormal is None else ops.abnormal.blocked()})

    def top_clients(req: Request) -> Response:
        n = _int(req.query, "n", 10, 1000)
        return _json(200, {"clients": ops.clients.top(req.query.get("rule"), n)})

    def top_rules(req: Request) -> Response:
        return _json(200, {"rules": ops.throttle.top(_int(req.query, "n", 10, 1000))})

    def events(req: Request) -> Response:
        rows = ops.alerts.recent(
            _int(req.query, "limit", 100, 10_000), _int(req.query, "since", 0, 10**9)
        )
        return _json(200, {"events": rows})

    def status(req: Request) -> Response:
        killed = ops.switches.killed()
        return _json(
            200,
            {
                "levels": ops.levels.snapshot(),
                "kill_switch": None if killed is None else killed.as_dict(),
                "switches": len(ops.switches.list()),
                "store_healthy": getattr(ops.switches, "healthy", True),
                "throttling": ops.throttle.throttling(),
                "alerts": ops.alerts.stats(),
            },
        )

    return [
        ("GET", "/v1/switches", list_switches),
        ("GET", "/v1/switches/{id}", get_switch),
        ("PUT", "/v1/switches/{id}", put_switch),
        ("DELETE", "/v1/switches/{id}", delete_switch),
        ("GET", "/v1/audit", audit),
        ("GET", "/v1/levels", levels),
        ("GET", "/v1/breakers", breakers),
        ("GET", "/v1/rules", rules_list),
        ("GET", "/v1/blocked", blocked),
        ("GET", "/v1/top/clients", top_clients),
        ("GET", "/v1/top/rules", top_rules),
        ("GET", "/v1/events", events),
        ("GET", "/v1/status", status),
    ]


def _match(pattern: str, path: str) -> dict[str, str] | None:
    if pattern.endswith("/{id}"):
        prefix = pattern[: -len("{id}")]
        if path.startswith(prefix) and len(path) > len(prefix):
            return {"id": urllib.parse.unquote(path[len(prefix) :])}
        return None
    return {} if path == pattern else None


def handle(ops: Ops, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Response:
    """Answer one admin request; ``target`` is the path with its query string.

    ``headers`` lookups must be case-insensitive for ``Authorization`` (a plain dict
    is checked under both spellings).
    """
    if ops.token is None:
        return NOT_FOUND
    auth = headers.get("Authorization") or headers.get("authorization")
    if not _authorized(ops.token, auth):
        return UNAUTHORIZED
    if len(body) > MAX_BODY:
        return _json(413, {"error": f"body larger than {MAX_BODY} bytes"})
    split = urllib.parse.urlsplit(target)
    query = dict(urllib.parse.parse_qsl(split.query))
    table = ops._routes
    if table is None:
        table = ops._routes = routes(ops)
    allowed = []
    for m, pattern, handler in table:
        params = _match(pattern, split.path)
        if params is None:
            continue
        if m != method:
            allowed.append(m)
            continue
        try:
            return handler(Request(method, split.path, query, body, params))
        except InvalidParameter as exc:
            return _json(400, {"error": str(exc)})
        except StoreUnavailable as exc:
            return _json(503, {"error": str(exc)})
        except Exception:
            log.exception("admin %s %s failed", method, split.path)
            return _json(500, {"error": "internal error"})
    if allowed:
        return _json(405, {"error": "method not allowed"}, Allow=", ".join(sorted(set(allowed))))
    return NOT_FOUND


# -- a small standalone server (tests, and deployments without the service's HTTP port) --


def serve(ops: Ops, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """Serve the admin API on ``host:port`` in a daemon thread; ``.server_address`` has the port."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0 or length > MAX_BODY:
                resp = _json(413, {"error": f"body larger than {MAX_BODY} bytes"})
            else:
                body = self.rfile.read(length) if length else b""
                resp = handle(ops, self.command, self.path, self.headers, body)
            self.send_response(resp.status)
            for k, v in resp.headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(resp.body)))
            self.end_headers()
            self.wfile.write(resp.body)

        do_GET = do_PUT = do_DELETE = do_POST = _answer

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("admin %s", format % args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.1},
        name="limiter-admin",
        daemon=True,
    ).start()
    return server


# -- plugging into the decision service (limiter.server.app EXTENSIONS) -------------------


def install(service: Any) -> Ops:
    """Wire the operations side into a ``limiter.server.app.Service`` before it starts.

    Builds ``Ops`` from the loaded config's sections and the service's Redis URL, makes
    it the engine's level source, mounts the admin API on the HTTP port under ``/v1/``
    and the ops console under ``/console/`` (both for loopback callers only unless
    ``LIMITER_ADMIN_ALLOW_REMOTE=1``, and only with a token) and closes it on stop.
    """
    import asyncio

    from limiter.server import console
    from limiter.server.http import Response as HttpResponse

    settings = service.settings
    token_file = getattr(settings, "admin_token_file", None) or os.environ.get(TOKEN_FILE_ENV)
    ops = build(
        service.engine.snapshot.config.sections,
        redis_url=getattr(settings, "redis", None),
        token=load_token(token_file or None),
    )
    allow_remote = os.environ.get(REMOTE_ENV) == "1"

    async def admin_api(request: Any) -> Any:
        if not allow_remote and request.client not in LOOPBACK:
            resp = NOT_FOUND
        else:
            target = urllib.parse.quote(request.path, safe="/:@")
            if request.query:
                target += "?" + request.query
            resp = await asyncio.to_thread(
                handle, ops, request.method, target, request.headers, request.body
            )
        extra = [(k, v) for k, v in resp.headers.items() if k != "Content-Type"]
        return HttpResponse(resp.status, resp.body, "application/json", extra)

    async def close() -> None:
        await asyncio.to_thread(ops.close)

    def reloaded(config: Any) -> None:
        if any(
            config.sections.get(n) != service.engine.snapshot.config.sections.get(n)
            for n in SECTIONS
        ):
            log.warning("ops sections (%s) changed: they apply on restart", ", ".join(SECTIONS))

    service.ops = ops
    ops.engine = service.engine
    service.engine.level_source = ops.levels
    service.engine.ops = ops  # read by the RLS and native servicers per check
    service.http.mount("/v1/", admin_api)
    # The console page: served where the admin API is, so only when it is enabled.
    console.mount(
        service.http,
        lambda client: ops.token is not None and (allow_remote or client in LOOPBACK),
    )
    service.on_stop.append(close)
    service.reloader.subscribe(reloaded)
    return ops


class _TokenFileAction(argparse.Action):
    """Hands ``serve --admin-token-file`` to ``install`` through the environment, which
    also carries it to the ``--workers`` processes."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        setattr(namespace, self.dest, values)
        os.environ[TOKEN_FILE_ENV] = str(values)


def register_cli(commands: Any) -> None:
    """Add ``limiter switch ...`` and ``serve --admin-token-file`` to the ``limiter`` CLI.

    Also registers the ops config sections, before ``serve``/``check-config`` load a file.
    """
    from limiter.server import switch_cli

    register_sections()
    switch_cli.register(commands)
    serve_parser = commands.choices.get("serve")
    if serve_parser is not None:
        serve_parser.add_argument(
            "--admin-token-file",
            action=_TokenFileAction,
            default=None,
            help="file holding the admin API bearer token; without it (or "
            f"{TOKEN_ENV}) the admin API under /v1/ is disabled [env {TOKEN_FILE_ENV}]",
        )


def main(argv: list[str] | None = None) -> int:
    """``python -m limiter.server.admin --port N [--redis URL] [--config FILE]``: admin only."""
    import signal

    parser = argparse.ArgumentParser(prog="limiter-admin", description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="HTTP port (default 8080)")
    parser.add_argument("--redis", default=None, help="Redis URL for shared switches")
    parser.add_argument("--config", default=None, help="YAML file with ops sections only")
    parser.add_argument("--admin-token-file", default=None, help="file holding the admin token")
    args = parser.parse_args(argv)
    sections: dict[str, Any] = {}
    if args.config:
        import yaml

        raw = yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) or {}
        for name, value in raw.items():
            if name not in SECTIONS:
                raise ConfigError(f"{args.config}: unknown section {name!r}")
            sections[name] = SECTIONS[name](value, f"{args.config}: {name}")
    ops = build(sections, redis_url=args.redis, token=load_token(args.admin_token_file))
    server = serve(ops, args.host, args.port)
    print(f"admin listening on {args.host}:{server.server_address[1]}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    server.shutdown()
    ops.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
