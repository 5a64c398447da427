"""Rule configuration: the envoyproxy/ratelimit YAML format plus limiter's extensions.

A config file holds one or more YAML documents (``---``); each names a ``domain`` and
its nested ``descriptors`` exactly as envoyproxy/ratelimit reads them, so existing
files load unchanged. Extensions live inside ``rate_limit`` (``algorithm``, ``burst``,
``priority``, ``failure_mode``, ``queue``, ``hold``); other top-level sections (e.g.
``alerts``) are parsed by whoever registered them with ``register_section``. Every
error is a ``ConfigError`` naming the file, the descriptor path and the field.

Matching follows envoyproxy/ratelimit: a request descriptor's entries walk the tree one
level per entry; at each level an exact ``key``+``value`` wins over a ``value`` ending
in ``*`` (prefix wildcard), which wins over a key-only descriptor; only the node
reached at the request's own depth can supply the limit.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from limiter.errors import ConfigError, InvalidParameter

# Seconds per unit, and the RLS v3 enum numbers (RateLimitResponse.RateLimit.Unit).
UNIT_SECONDS = {
    "second": 1,
    "minute": 60,
    "hour": 3600,
    "day": 86400,
    "week": 7 * 86400,
    "month": 30 * 86400,
    "year": 365 * 86400,
}
UNIT_ENUM = {"second": 1, "minute": 2, "hour": 3, "day": 4, "month": 5, "year": 6, "week": 7}
UNIT_BY_ENUM = {v: k for k, v in UNIT_ENUM.items()}

ALGORITHMS = (
    "fixed_window",
    "sliding_window",
    "token_bucket",
    "leaky_bucket",
    "concurrency",
    "adaptive",
)
# Google SRE criticality tiers, most important first.
PRIORITIES = ("critical_plus", "critical", "sheddable_plus", "sheddable")
# What a rule answers when its backend fails: allow, deny, or decide in this process.
FAILURE_MODES = ("allow", "deny", "local")

# Largest limit accepted (the kernels' own bound).
MAX_LIMIT = 1 << 40
# Longest RLS hold (``hold``): Envoy's default rate-limit timeout is 20 ms; 5 ms are left
# for the decision itself and the transport, so a held check still answers in time.
MAX_HOLD = 0.015
# Queued admission (``queue``): bounds on what a rule may configure.
MAX_QUEUE_WAIT = 3600.0
MAX_QUEUE_DEPTH = 1_000_000
MAX_QUEUE_WEIGHT = 1_000_000
QUEUE_MODES = ("weighted", "strict")
QUEUE_ORDERS = ("fifo", "lifo")
_QUEUE_KEYS = {"mode", "weights", "max_queue", "order", "max_wait"}

_RATE_LIMIT_KEYS = {
    "unit",
    "requests_per_unit",
    "unlimited",
    "name",
    "replaces",
    "algorithm",
    "burst",
    "priority",
    "failure_mode",
    "target_latency",
    "percentile",
    "mode",
    "queue",
    "hold",
}
# Extension fields only an adaptive rule takes.
_ADAPTIVE_KEYS = ("target_latency", "percentile", "mode")
_DESCRIPTOR_KEYS = {"key", "value", "rate_limit", "descriptors", "shadow_mode", "detailed_metric"}


@dataclass(frozen=True)
class QueueSpec:
    """How the service holds checks of one rule that ask to wait (``max_wait`` > 0).

    One class per priority tier (``PRIORITIES`` order, most important first), served
    ``weighted`` (each class gets its weight's share of turns, none starves) or
    ``strict`` (a class waits until every more important one is empty); ``max_queue``
    bounds each class per key (a full class answers at once); ``max_wait`` caps every
    hold in seconds, whatever the caller asks.
    """

    mode: str = "weighted"
    weights: tuple[int, ...] = (8, 4, 2, 1)
    max_queue: tuple[int, ...] = (100, 100, 100, 100)
    order: str = "fifo"
    max_wait: float = 30.0


@dataclass(frozen=True)
class Limit:
    """What one rule enforces; ``unlimited`` rules enforce nothing."""

    requests_per_unit: int
    unit: str
    algorithm: str = "fixed_window"
    burst: int | None = None
    unlimited: bool = False
    name: str = ""
    replaces: tuple[str, ...] = ()
    priority: str = "critical"
    failure_mode: str = "allow"
    # adaptive only: the latency percentile to keep under target, and what is limited
    target_latency: float = 0.1
    percentile: float = 0.99
    mode: str = "rate"
    # queued admission (native Decide with max_wait) and the opt-in RLS hold, in seconds
    queue: QueueSpec = field(default_factory=QueueSpec)
    hold: float = 0.0

    @property
    def seconds(self) -> int:
        return UNIT_SECONDS[self.unit]

    @property
    def unit_enum(self) -> int:
        return UNIT_ENUM[self.unit]

    @property
    def max_cost(self) -> int:
        """The largest cost one request can ever be granted (the kernel's bound)."""
        if self.algorithm == "token_bucket":
            return self.burst or self.requests_per_unit
        if self.algorithm == "leaky_bucket":
            return self.burst or 1
        return self.requests_per_unit

    def fingerprint(self) -> tuple[Any, ...]:
        """What decides the kernel: equal fingerprints may share state across reloads."""
        return (
            self.algorithm,
            self.requests_per_unit,
            self.unit,
            self.burst,
            self.target_latency,
            self.percentile,
            self.mode,
        )


@dataclass(eq=False)
class Rule:
    """A descriptor path with a limit, as configured."""

    domain: str
    path: tuple[tuple[str, str | None], ...]
    limit: Limit
    shadow_mode: bool = False
    detailed_metric: bool = False

    @property
    def id(self) -> str:
        """Stable name used in metrics and headers: ``key_value.key`` as envoyproxy/ratelimit."""
        return ".".join(k if v is None else f"{k}_{v}" for k, v in self.path)

    @property
    def label(self) -> str:
        """The rule's name if it has one, else its path id."""
        return self.limit.name or self.id


class Node:
    """One level of a domain's descriptor tree."""

    __slots__ = ("exact", "keys", "rule", "wild")

    def __init__(self) -> None:
        self.exact: dict[tuple[str, str], Node] = {}
        self.wild: list[tuple[str, str, Node]] = []  # (key, value prefix, node), longest first
        self.keys: dict[str, Node] = {}
        self.rule: Rule | None = None

    def child(self, entry: tuple[str, str]) -> Node | None:
        """The node for one request entry, a (key, value) pair: exact, prefix, key-only."""
        node = self.exact.get(entry)
        if node is not None:
            return node
        key, value = entry
        for wkey, prefix, wnode in self.wild:
            if wkey == key and value.startswith(prefix):
                return wnode
        return self.keys.get(key)


@dataclass
class Domain:
    """The rules of one domain and how requests find them."""

    name: str
    source: str
    root: Node = field(default_factory=Node)
    rules: list[Rule] = field(default_factory=list)
    by_name: dict[str, Rule] = field(default_factory=dict)

    def match(self, entries: Sequence[tuple[str, str]]) -> Rule | None:
        """The rule for a request descriptor's (key, value) entries, or None (not limited)."""
        node = self.root
        for entry in entries:
            node = node.child(entry)
            if node is None:
                return None
        return node.rule


@dataclass
class Config:
    """A whole loaded configuration: domains plus registered extension sections."""

    domains: dict[str, Domain] = field(default_factory=dict)
    sections: dict[str, Any] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)

    @property
    def rules(self) -> list[Rule]:
        return [rule for domain in self.domains.values() for rule in domain.rules]


SectionParser = Callable[[Any, str], Any]
_SECTIONS: dict[str, SectionParser] = {}


def register_section(name: str, parser: SectionParser) -> None:
    """Let another module own a top-level YAML section (e.g. ``alerts``).

    ``parser(value, where)`` gets the raw YAML value and a location prefix for its
    error messages; it returns the parsed object (stored in ``Config.sections[name]``)
    or raises ``ConfigError``. The section may appear in at most one document.
    """
    if name in ("domain", "descriptors") or not name.isidentifier():
        raise InvalidParameter(f"section name {name!r} is reserved or not an identifier")
    _SECTIONS[name] = parser


def config_files(path: str | os.PathLike[str]) -> list[Path]:
    """The files a config path stands for: the file itself, or a directory's *.yaml/*.yml."""
    p = Path(path)
    if p.is_dir():
        return sorted(f for f in p.iterdir() if f.suffix in (".yaml", ".yml") and f.is_file())
    return [p]


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file or directory; raises ConfigError."""
    files = config_files(path)
    if not files:
        raise ConfigError(f"{path}: no .yaml or .yml files in this directory")
    config = Config()
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{f}: cannot read: {exc}") from None
        _parse_into(config, text, str(f))
    return config


def parse(text: str, source: str = "<string>") -> Config:
    """Validate config text (one or more YAML documents); raises ConfigError."""
    config = Config()
    _parse_into(config, text, source)
    return config


def _parse_into(config: Config, text: str, source: str) -> None:
    config.sources.append(source)
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{source}:{where}: invalid YAML: {problem}") from None
    for index, doc in enumerate(documents):
        where = source if len(documents) == 1 else f"{source} (document {index + 1})"
        if not isinstance(doc, dict):
            raise ConfigError(f"{where}: a document must be a mapping, got {_kind(doc)}")
        _parse_document(config, doc, where)


def _parse_document(config: Config, doc: dict[Any, Any], where: str) -> None:
    for key in doc:
        if key in ("domain", "descriptors"):
            continue
        if key not in _SECTIONS:
            known = ", ".join(sorted(["domain", "descriptors", *_SECTIONS]))
            raise ConfigError(f"{where}: unknown top-level field {key!r} (known: {known})")
        if key in config.sections:
            raise ConfigError(f"{where}: section {key!r} appears more than once")
        config.sections[key] = _SECTIONS[key](doc[key], f"{where}: {key}")
    if "domain" not in doc:
        if "descriptors" in doc:
            raise ConfigError(f"{where}: field 'domain' is required next to 'descriptors'")
        return
    name = doc["domain"]
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: field 'domain' must be a non-empty string, got {name!r}")
    if name in config.domains:
        raise ConfigError(
            f"{where}: domain {name!r} is already defined in {config.domains[name].source}"
        )
    domain = Domain(name, where)
    descriptors = doc.get("descriptors") or []
    if not isinstance(descriptors, list):
        raise ConfigError(
            f"{where}: domain {name!r}: field 'descriptors' must be a list, "
            f"got {_kind(descriptors)}"
        )
    _parse_level(domain, domain.root, descriptors, (), f"{where}: domain {name!r}: descriptors")
    names: dict[str, int] = {}
    for rule in domain.rules:
        if rule.limit.name:
            names[rule.limit.name] = names.get(rule.limit.name, 0) + 1
    # Names address rules from the native API; an ambiguous name addresses none.
    domain.by_name = {r.limit.name: r for r in domain.rules if names.get(r.limit.name) == 1}
    config.domains[name] = domain


def _parse_level(
    domain: Domain,
    parent: Node,
    items: list[Any],
    path: tuple[tuple[str, str | None], ...],
    where: str,
) -> None:
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{at}: a descriptor must be a mapping, got {_kind(item)}")
        _reject_unknown(item, _DESCRIPTOR_KEYS, at)
        key = item.get("key")
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{at}: field 'key' must be a non-empty string, got {key!r}")
        value = item.get("value")
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise ConfigError(
                    f"{at} (key={key}): field 'value' must be a string, got {value!r}"
                )
            value = str(value)
        at = f"{at} (key={key}" + ("" if value is None else f", value={value}") + ")"
        node = Node()
        if value is None:
            if key in parent.keys:
                raise ConfigError(f"{at}: duplicate descriptor key {key!r} at this level")
            parent.keys[key] = node
        elif value.endswith("*"):
            prefix = value[:-1]
            if any(k == key and p == prefix for k, p, _ in parent.wild):
                raise ConfigError(f"{at}: duplicate descriptor {key}={value} at this level")
            parent.wild.append((key, prefix, node))
            parent.wild.sort(key=lambda w: -len(w[1]))
        else:
            if (key, value) in parent.exact:
                raise ConfigError(f"{at}: duplicate descriptor {key}={value} at this level")
            parent.exact[(key, value)] = node
        here = (*path, (key, value))
        for flag in ("shadow_mode", "detailed_metric"):
            if flag in item and not isinstance(item[flag], bool):
                raise ConfigError(f"{at}: field {flag!r} must be true or false, got {item[flag]!r}")
        if item.get("rate_limit") is not None:
            limit = parse_limit(item["rate_limit"], f"{at}: rate_limit")
            node.rule = Rule(
                domain.name,
                here,
                limit,
                shadow_mode=bool(item.get("shadow_mode", False)),
                detailed_metric=bool(item.get("detailed_metric", False)),
            )
            domain.rules.append(node.rule)
        children = item.get("descriptors")
        if children is not None:
            if not isinstance(children, list):
                raise ConfigError(
                    f"{at}: field 'descriptors' must be a list, got {_kind(children)}"
                )
            _parse_level(domain, node, children, here, f"{at}.descriptors")


def parse_limit(raw: Any, where: str) -> Limit:
    """Validate one ``rate_limit`` mapping."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a mapping, got {_kind(raw)}")
    _reject_unknown(raw, _RATE_LIMIT_KEYS, where)
    name = raw.get("name", "") or ""
    if not isinstance(name, str):
        raise ConfigError(f"{where}.name: must be a string, got {name!r}")
    replaces = _parse_replaces(raw.get("replaces"), f"{where}.replaces")
    unlimited = raw.get("unlimited", False)
    if not isinstance(unlimited, bool):
        raise ConfigError(f"{where}.unlimited: must be true or false, got {unlimited!r}")
    priority = _choice(raw.get("priority", "critical"), PRIORITIES, f"{where}.priority")
    failure_mode = _choice(raw.get("failure_mode", "allow"), FAILURE_MODES, f"{where}.failure_mode")
    algorithm = _choice(raw.get("algorithm", "fixed_window"), ALGORITHMS, f"{where}.algorithm")
    if unlimited:
        for field_name in ("unit", "requests_per_unit", "burst", "queue", "hold"):
            if field_name in raw:
                raise ConfigError(
                    f"{where}.{field_name}: not allowed together with 'unlimited: true'"
                )
        return Limit(0, "second", algorithm, None, True, name, replaces, priority, failure_mode)
    rpu = raw.get("requests_per_unit")
    if isinstance(rpu, bool) or not isinstance(rpu, int) or not 0 <= rpu <= MAX_LIMIT:
        raise ConfigError(
            f"{where}.requests_per_unit: must be an integer in [0, {MAX_LIMIT}], got {rpu!r}"
        )
    if algorithm == "concurrency":
        unit = str(raw.get("unit", "second")).lower()
    else:
        if "unit" not in raw:
            raise ConfigError(f"{where}.unit: required (one of {', '.join(UNIT_SECONDS)})")
        unit = raw["unit"]
        if not isinstance(unit, str) or unit.lower() not in UNIT_SECONDS:
            raise ConfigError(
                f"{where}.unit: {unit!r} is not one of {', '.join(UNIT_SECONDS)} (case-insensitive)"
            )
        unit = unit.lower()
    if unit not in UNIT_SECONDS:
        raise ConfigError(f"{where}.unit: {unit!r} is not one of {', '.join(UNIT_SECONDS)}")
    burst = raw.get("burst")
    if burst is not None:
        if algorithm not in ("token_bucket", "leaky_bucket"):
            raise ConfigError(
                f"{where}.burst: only token_bucket and leaky_bucket take a burst "
                f"(algorithm is {algorithm})"
            )
        if isinstance(burst, bool) or not isinstance(burst, int) or not 1 <= burst <= MAX_LIMIT:
            raise ConfigError(
                f"{where}.burst: must be an integer in [1, {MAX_LIMIT}], got {burst!r}"
            )
    adaptive = _parse_adaptive(raw, algorithm, where)
    queue = _parse_queue(raw.get("queue"), f"{where}.queue")
    hold = _parse_hold(raw, algorithm, adaptive.get("mode", "rate"), where)
    limit = Limit(
        rpu,
        unit,
        algorithm,
        burst,
        False,
        name,
        replaces,
        priority,
        failure_mode,
        **adaptive,
        queue=queue,
        hold=hold,
    )
    if rpu > 0:
        try:
            build_limiter(limit, max_keys=1)
        except (InvalidParameter, ConfigError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return limit


def build_limiter(limit: Limit, *, backend: object = None, max_keys: int = 1_000_000) -> Any:
    """The engine kernel enforcing ``limit`` (None for unlimited or zero limits)."""
    import limiter

    if limit.unlimited or limit.requests_per_unit == 0:
        return None
    n, seconds = limit.requests_per_unit, limit.seconds
    kw: dict[str, Any] = {"max_keys": max_keys, "backend": backend}
    if limit.algorithm == "fixed_window":
        return limiter.FixedWindow(n, seconds, **kw)
    if limit.algorithm == "sliding_window":
        return limiter.SlidingWindow(n, seconds, **kw)
    if limit.algorithm == "token_bucket":
        return limiter.TokenBucket(n / seconds, limit.burst or n, **kw)
    if limit.algorithm == "leaky_bucket":
        return limiter.LeakyBucket(n / seconds, limit.burst or 1, **kw)
    if limit.algorithm == "concurrency":
        return limiter.ConcurrencyLimit(n, **kw)
    if limit.algorithm != "adaptive":
        raise ConfigError(f"algorithm {limit.algorithm!r} has no kernel")
    from limiter._core import AdaptiveLimiter

    # In this process: the limit follows the latency this replica's callers report, and
    # requests_per_unit is its ceiling (and starting point: cut on the first slowdown).
    # (With --redis, the service shares rate-mode adaptive rules through Redis instead:
    # limiter.server.engine.SharedAdaptive.)
    ceiling = n / seconds if limit.mode == "rate" else n
    return AdaptiveLimiter(
        limit.target_latency,
        limit.percentile,
        limit.mode,
        min_limit=min(1.0, ceiling),
        max_limit=ceiling,
        initial_limit=ceiling,
    )


def _parse_adaptive(raw: dict[str, Any], algorithm: str, where: str) -> dict[str, Any]:
    given = [k for k in _ADAPTIVE_KEYS if k in raw]
    if algorithm != "adaptive":
        if given:
            raise ConfigError(
                f"{where}.{given[0]}: only algorithm 'adaptive' takes it (algorithm is {algorithm})"
            )
        return {}
    out: dict[str, Any] = {}
    for name, low, high in (("target_latency", 0.0, 3600.0), ("percentile", 0.0, 1.0)):
        if name in raw:
            value = raw[name]
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not number or not low < value < high or math.isnan(value):
                raise ConfigError(
                    f"{where}.{name}: must be a number in ({low:g}, {high:g}), got {value!r}"
                )
            out[name] = float(value)
    if "mode" in raw:
        out["mode"] = _choice(raw["mode"], ("rate", "concurrency"), f"{where}.mode")
    return out


def _parse_queue(raw: Any, where: str) -> QueueSpec:
    """Validate a rule's ``queue`` mapping (absent: the defaults)."""
    if raw is None:
        return QueueSpec()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a mapping, got {_kind(raw)}")
    _reject_unknown(raw, _QUEUE_KEYS, where)
    n = len(PRIORITIES)
    mode = _choice(raw.get("mode", "weighted"), QUEUE_MODES, f"{where}.mode")
    order = _choice(raw.get("order", "fifo"), QUEUE_ORDERS, f"{where}.order")
    weights = QueueSpec.weights
    if "weights" in raw:
        if mode != "weighted":
            raise ConfigError(
                f"{where}.weights: only mode 'weighted' takes weights (mode is {mode})"
            )
        weights = _int_list(raw["weights"], n, 1, MAX_QUEUE_WEIGHT, f"{where}.weights")
    max_queue = QueueSpec.max_queue
    if "max_queue" in raw:
        value = raw["max_queue"]
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value] * n
        max_queue = _int_list(value, n, 1, MAX_QUEUE_DEPTH, f"{where}.max_queue")
    max_wait = QueueSpec.max_wait
    if "max_wait" in raw:
        max_wait = _seconds(raw["max_wait"], 0.0, MAX_QUEUE_WAIT, f"{where}.max_wait")
    return QueueSpec(mode, weights, max_queue, order, max_wait)


def _parse_hold(raw: dict[str, Any], algorithm: str, mode: str, where: str) -> float:
    """Validate ``hold``: how long an RLS check of this rule may wait for admission."""
    if "hold" not in raw:
        return 0.0
    hold = _seconds(raw["hold"], 0.0, MAX_HOLD, f"{where}.hold", low_open=False)
    holds_permit = algorithm == "concurrency" or (algorithm == "adaptive" and mode == "concurrency")
    if hold and holds_permit:
        raise ConfigError(
            f"{where}.hold: an RLS check holds no concurrency slot, so there is nothing to "
            f"wait for (algorithm is {algorithm}); use the native API's max_wait instead"
        )
    return hold


def _seconds(value: Any, low: float, high: float, where: str, low_open: bool = True) -> float:
    """A number of seconds in (low, high] (or [low, high] if not ``low_open``)."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    above = number and (value > low if low_open else value >= low)
    if not (above and value <= high):  # NaN fails both comparisons
        bracket = "(" if low_open else "["
        raise ConfigError(
            f"{where}: must be a number of seconds in {bracket}{low:g}, {high:g}], got {value!r}"
        )
    return float(value)


def _int_list(value: Any, n: int, low: int, high: int, where: str) -> tuple[int, ...]:
    names = ", ".join(PRIORITIES)
    if not isinstance(value, list) or len(value) != n:
        raise ConfigError(
            f"{where}: must be a list of {n} integers (one per priority: {names}), got {value!r}"
        )
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, int) or not low <= item <= high:
            raise ConfigError(
                f"{where}[{i}] ({PRIORITIES[i]}): must be an integer in [{low}, {high}], "
                f"got {item!r}"
            )
    return tuple(value)


def _parse_replaces(raw: Any, where: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: must be a list of {{name: ...}}, got {_kind(raw)}")
    names = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or set(item) != {"name"}:
            raise ConfigError(f"{where}[{i}]: must be a mapping with only 'name', got {item!r}")
        if not isinstance(item["name"], str) or not item["name"]:
            raise ConfigError(
                f"{where}[{i}].name: must be a non-empty string, got {item['name']!r}"
            )
        names.append(item["name"])
    return tuple(names)


def _reject_unknown(raw: dict[Any, Any], known: set[str], where: str) -> None:
    """A typo in a field name must fail loudly, not silently fall back to a default."""
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(
            f"{where}: unknown field {sorted(map(str, unknown))[0]!r} "
            f"(known: {', '.join(sorted(known))})"
        )


def _choice(value: Any, allowed: Iterable[str], where: str) -> str:
    allowed = tuple(allowed)
    if not isinstance(value, str) or value.lower() not in allowed:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(allowed)}")
    return value.lower()


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def window_seconds(limit: Limit) -> float:
    """The window a client should read the quota over (``w`` in RateLimit-Policy)."""
    if limit.algorithm in ("token_bucket", "leaky_bucket"):
        # Time for an empty bucket to refill completely.
        return math.ceil(
            (limit.burst or limit.requests_per_unit)
            * limit.seconds
            / max(limit.requests_per_unit, 1)
        )
    return limit.seconds
