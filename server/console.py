"""The ops console: the per-rule view it reads (``GET /v1/rules``) and the page itself.

Why rates are computed here and not in the page: every open console (and any script
polling ``/v1/rules``) then sees the same numbers, a freshly opened page has a
minute of history at once, and the arithmetic is unit-tested with an injected clock.
``RuleRates`` samples the engine's counters about once a second (from the ops
housekeeping thread); it keeps the last ``keep`` samples per rule.

The page (``static/console.*``) is served under ``/console/`` on the service's HTTP
port. It holds no secret, so it is served without the token; every data call it
makes goes to the admin API with ``Authorization: Bearer <token>``. Only files that
exist in ``static/`` at start-up are served (no path is ever joined from a request).
"""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["PREFIX", "Assets", "RuleRates", "mount", "rules_view"]

PREFIX = "/console/"
STATIC = Path(__file__).resolve().parent / "static"
INDEX = "console.html"
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# The page loads only its own files and talks only to its own origin.
SECURITY_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Cache-Control", "no-cache"),
)


@dataclass(frozen=True, slots=True)
class Sample:
    at: int  # clock ns
    hits: int
    over: int
    limit: float | None  # adaptive rules: the current limit
    observed: float | None  # adaptive rules: the latency percentile the limiter sees


def _finite(value: Any) -> float | None:
    """JSON has no NaN: an adaptive limiter without samples reports its percentile as None."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class RuleRates:
    """Hits/s and over-limit/s per rule from periodic samples of cumulative counters.

    ``sample(rows)`` takes ``(key, total_hits, over_limit, adaptive_limit, observed)``
    for every live rule and records them if ``step`` seconds passed since the last
    sample; a rule missing from a sample is forgotten. A counter that went down (a
    reload gave the rule fresh counters) counts as a restart from zero.
    """

    def __init__(
        self, clock: Callable[[], int] = time.monotonic_ns, step: float = 1.0, keep: int = 61
    ) -> None:
        self.clock = clock
        self.step_ns = int(step * 1e9)
        self.keep = keep
        self._series: dict[str, deque[Sample]] = {}
        self._last: int | None = None

    def sample(self, rows: Iterable[tuple[str, int, int, float | None, float | None]]) -> bool:
        now = self.clock()
        # 5% slack: a housekeeping tick that lands just short of a step still samples.
        if self._last is not None and now - self._last < self.step_ns * 0.95:
            return False
        self._last = now
        series: dict[str, deque[Sample]] = {}
        for key, hits, over, limit, observed in rows:
            points = self._series.get(key) or deque(maxlen=self.keep)
            points.append(Sample(now, hits, over, _finite(limit), _finite(observed)))
            series[key] = points
        self._series = series
        return True

    @staticmethod
    def _rate(a: Sample, b: Sample, field: str) -> float:
        seconds = (b.at - a.at) / 1e9
        before, after = getattr(a, field), getattr(b, field)
        delta = after - before if after >= before else after
        return round(delta / seconds, 3) if seconds > 0 else 0.0

    def view(self, key: str, history: int = 0) -> dict[str, Any]:
        """``hits_per_s``/``over_per_s`` over the last step (None before two samples),
        plus the last ``history`` per-step points (oldest first) when asked."""
        points = list(self._series.get(key, ()))
        pairs = list(itertools.pairwise(points))
        out: dict[str, Any] = {
            "hits_per_s": self._rate(*pairs[-1], "hits") if pairs else None,
            "over_per_s": self._rate(*pairs[-1], "over") if pairs else None,
        }
        if history > 0:
            recent = pairs[-history:]
            out["history"] = {
                "hits_per_s": [self._rate(a, b, "hits") for a, b in recent],
                "over_per_s": [self._rate(a, b, "over") for a, b in recent],
                "limit": [b.limit for _, b in recent],
                "observed": [b.observed for _, b in recent],
            }
        return out


def _key(state: Any) -> str:
    return f"{state.domain}/{state.rule.id}"


def _adaptive(state: Any) -> tuple[float | None, float | None]:
    kernel = state.kernel
    if state.rule.limit.algorithm != "adaptive" or kernel is None:
        return None, None
    return _finite(kernel.current_limit), _finite(kernel.current_percentile)


def sample_rules(rulebook: Any, rates: RuleRates) -> None:
    """Feed ``rates`` from the rulebook's live rule states (read-only)."""
    rows = []
    for state in rulebook.all_states():
        limit, observed = _adaptive(state)
        rows.append((_key(state), state.stats.total_hits, state.stats.over_limit, limit, observed))
    rates.sample(rows)


def rules_view(
    rulebook: Any,
    rates: RuleRates,
    switch_for: Callable[[str], Any],
    *,
    history: int = 0,
    domain: str | None = None,
) -> list[dict[str, Any]]:
    """One row per rule: configuration, cumulative counters, rates and adaptive state.

    ``switch_for(rule)`` is the live switch acting on ``rule`` (``domain/label``), or None.
    """
    # list() copies in one step: the event loop may add request overrides meanwhile.
    overrides = {id(s) for s in list(rulebook.overrides.values())}
    rows = []
    for state in rulebook.all_states():
        if domain is not None and state.domain != domain:
            continue
        lim = state.rule.limit
        stats = state.stats
        row: dict[str, Any] = {
            "key": _key(state),
            "domain": state.domain,
            "rule": state.ops_name,
            "name": state.name,
            "id": state.rule.id,
            "algorithm": lim.algorithm,
            "limit": state.limit,
            "unit": lim.unit,
            "burst": lim.burst,
            "unlimited": state.unlimited,
            "shadow_mode": state.shadow,
            "priority": state.priority.label,
            "request_override": id(state) in overrides,
            "total_hits": stats.total_hits,
            "over_limit": stats.over_limit,
            "near_limit": stats.near_limit,
            "within_limit": stats.within_limit,
            "shadow_hits": stats.shadow_mode,
            "backend_errors": stats.backend_errors,
            "adaptive": None,
            "switch": None,
        }
        if lim.algorithm == "adaptive":
            current, observed = _adaptive(state)
            row["adaptive"] = {
                "limit": current,
                "percentile": lim.percentile,
                "observed": observed,
                "target_latency": lim.target_latency,
                "mode": lim.mode,
                "in_flight": getattr(state.kernel, "in_flight", None),
            }
        switch = switch_for(state.ops_name)
        if switch is not None:
            row["switch"] = switch.as_dict()
        # Up to 1024 request-supplied limits may exist: no per-second history for them.
        row.update(rates.view(row["key"], 0 if row["request_override"] else history))
        rows.append(row)
    return rows


# -- the page --------------------------------------------------------------------------


class Assets:
    """The console's files, read once: ``name -> (body, content type)``."""

    def __init__(self, directory: Path = STATIC) -> None:
        self.files: dict[str, tuple[bytes, str]] = {}
        for path in sorted(directory.glob("console*")):
            kind = TYPES.get(path.suffix)
            if kind is not None and path.is_file():
                self.files[path.name] = (path.read_bytes(), kind)
        if INDEX not in self.files:
            raise FileNotFoundError(f"console page {directory / INDEX} is missing")

    def get(self, path: str) -> tuple[bytes, str] | None:
        """The file for a request path under ``PREFIX`` (``/console/`` is the page)."""
        if not path.startswith(PREFIX):
            return None
        name = path[len(PREFIX) :] or INDEX
        return self.files.get(name)


def mount(http: Any, allowed: Callable[[str], bool]) -> None:
    """Serve the page on ``http`` (a ``limiter.server.http.HttpServer``) under ``/console/``.

    ``allowed(client)`` says whether this caller may see it (the same rule as the
    admin API: admin enabled, loopback unless remote callers are allowed); otherwise 404.
    """
    from limiter.server.http import Response

    files = Assets()
    not_found = Response(404, b"not found\n")

    async def redirect(request: Any) -> Any:
        if not allowed(request.client):
            return not_found
        return Response(301, b"", headers=[("Location", PREFIX)])

    async def page(request: Any) -> Any:
        if not allowed(request.client):
            return not_found
        if request.method not in ("GET", "HEAD"):
            return Response(405, b"method not allowed\n", headers=[("Allow", "GET, HEAD")])
        found = files.get(request.path)
        if found is None:
            return not_found
        body, kind = found
        return Response(200, body, kind, list(SECURITY_HEADERS))

    http.route("GET", PREFIX.rstrip("/"), redirect)
    http.mount(PREFIX, page)
