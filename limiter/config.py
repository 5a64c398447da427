"""Rule configuration: the envoyproxy/ratelimit YAML format plus limiter's extensions.

A config file holds one or more YAML documents (``---``); each names a ``domain`` and
its nested ``descriptors`` exactly as envoyproxy/ratelimit reads them, so existing
files load unchanged. Extensions live inside ``rate_limit`` (``algorithm``, ``burst``,
``priority``, ``failure_mode``, ``queue``, ``hold``); the other top-level sections
(``alerts``, ``breakers``, ``degradation``, ``shedding``, ``switches``) configure the
operations side (``limiter.ops``). Every key is declared once (``limiter.schema``), and
every error is a ``ConfigError`` naming the file, the descriptor path and the field.

Matching follows envoyproxy/ratelimit: a request descriptor's entries walk the tree one
level per entry; at each level an exact ``key``+``value`` wins over a ``value`` ending
in ``*`` (prefix wildcard), which wins over a key-only descriptor; only the node
reached at the request's own depth can supply the limit.
"""

from __future__ import annotations

import logging
import math
import os
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.resolver import Resolver

from limiter import schema
from limiter.errors import ConfigError, InvalidParameter, brief
from limiter.failure import DEFAULT as DEFAULT_FAILURE_MODE
from limiter.failure import FailureMode
from limiter.ops.policy import SECTIONS, OpsConfig
from limiter.priority import BY_RANK, Priority
from limiter.schema import FieldError, Section, required, setting

log = logging.getLogger("limiter.config")


def _event_loader() -> type:
    """libyaml's parser (several times faster than PyYAML's) under PyYAML's own composer.

    libyaml's composer builds a whole document in one C call that holds the interpreter
    throughout (tens of ms for thousands of rules), stalling the decision loop on every
    reload; taking its events one at a time keeps the speed and lets other threads run
    between them. Plain PyYAML when libyaml is missing.
    """
    try:
        from yaml._yaml import CParser
    except ImportError:
        return yaml.SafeLoader

    class EventLoader(CParser, Composer, SafeConstructor, Resolver):  # type: ignore[misc]
        check_node = Composer.check_node
        get_node = Composer.get_node
        get_single_node = Composer.get_single_node

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)

    return EventLoader


LOADER = _event_loader()

# Bounds on what a config may be: the bytes of all its files, its rules, and the nodes
# YAML aliases may add to a document by repeating others (a few aliases nested a few
# levels deep can stand for billions of nodes, which checking would then walk).
MAX_CONFIG_BYTES = 4 << 20
MAX_RULES = 10_000
MAX_ALIAS_NODES = 100_000

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
# Priority names, most important first (the order of per-priority lists such as queue weights).
PRIORITIES = tuple(p.label for p in BY_RANK)

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
# Extension fields only an adaptive rule takes.
ADAPTIVE_KEYS = ("target_latency", "percentile", "mode", "outcomes")
# Fields a rule with ``unlimited: true`` may not have.
UNLIMITED_REFUSES = (
    "unit", "requests_per_unit", "burst", "queue", "hold", "reserved", "outcomes", "breaker",
)  # fmt: skip
# The algorithms that take a ``burst``.
BUCKETS = ("token_bucket", "leaky_bucket")
# The algorithms whose kernels can keep part of their limit back (``reserved``).
RESERVABLE = ("token_bucket", "leaky_bucket", "fixed_window", "sliding_window")
# Bounds on a reserve's VIP tenants (``reserved.tenants``): how many one rule lists, and
# the length of each name (a longer RLS ``limiter.tenant`` value is refused, a longer
# native key can never match).
MAX_RESERVE_TENANTS = 1000
MAX_TENANT_CHARS = 256


@dataclass(frozen=True)
class Reserve(Section):
    """A share of a rule's limit kept for its more important traffic
    (``rate_limit.reserved``): checks of a tier below ``priority`` may use only the rest
    of the limit, so all of them are refused before a check at ``priority`` or above is.
    Checks of a tenant in ``tenants`` may use the reserve whatever their tier."""

    fraction: float = setting(
        doc="the share of the limit (a bucket's burst) kept back, rounded to whole units",
        low=0, high=1, open_low=True, open_high=True,
    )  # fmt: skip
    priority: Priority = setting(
        Priority.CRITICAL, "the least important tier that may use the reserve"
    )
    tenants: tuple[str, ...] = setting(
        (), f"VIP tenants whose checks may use the reserve whatever their tier (at most "
        f"{MAX_RESERVE_TENANTS} names of at most {MAX_TENANT_CHARS} characters); RLS: the "
        "descriptor entry limiter.tenant names a check's tenant, native API: the check's key",
        low=1,
    )  # fmt: skip

    def check(self, given: frozenset[str] | None) -> None:
        if len(self.tenants) > MAX_RESERVE_TENANTS:
            raise FieldError(
                "tenants", f"{len(self.tenants)} tenants, at most {MAX_RESERVE_TENANTS} allowed"
            )
        for i, name in enumerate(self.tenants):
            if len(name) > MAX_TENANT_CHARS:
                raise FieldError(
                    f"tenants[{i}]", f"{len(name)} characters, at most {MAX_TENANT_CHARS}"
                )

    def units(self, limit: Limit) -> int:
        """The reserve in the units of ``limit``'s kernel (requests or bucket tokens)."""
        return self.part(limit.max_cost)

    def part(self, whole: int) -> int:
        """The reserve out of ``whole`` units, rounded to the nearest unit."""
        return int(self.fraction * whole + 0.5)


@dataclass(frozen=True)
class QueueSpec(Section):
    """How the service holds checks of one rule that ask to wait (``rate_limit.queue``):
    a native Decide check with ``max_wait`` > 0 that would be refused waits in its
    priority's class instead, until admitted or ``max_wait`` passes."""

    mode: str = setting(
        "weighted",
        "weighted: each priority class gets its weight's share of turns, none starves; "
        "strict: a class waits until every more important one is empty",
        choices=QUEUE_MODES,
    )
    weights: tuple[int, ...] = setting(
        (8, 4, 2, 1), "each class's share of turns (mode weighted only)",
        low=1, high=MAX_QUEUE_WEIGHT, per_priority=True,
    )  # fmt: skip
    max_queue: tuple[int, ...] = setting(
        (100, 100, 100, 100), "checks waiting per class and key; a full class answers at once",
        low=1, high=MAX_QUEUE_DEPTH, per_priority=True,
    )  # fmt: skip
    order: str = setting("fifo", "which waiting check of a class goes first", choices=QUEUE_ORDERS)
    max_wait: float = setting(
        30.0, "the longest any check waits, whatever the caller asks",
        low=0, high=MAX_QUEUE_WAIT, open_low=True, seconds=True,
    )  # fmt: skip

    def check(self, given: frozenset[str] | None) -> None:
        if given is not None and "weights" in given and self.mode != "weighted":
            raise FieldError("weights", f"only mode 'weighted' takes weights (mode is {self.mode})")


@dataclass(frozen=True)
class Outcomes(Section):
    """Which of Envoy's access-log entries report on an adaptive rule
    (``rate_limit.outcomes``): an entry whose route name and upstream cluster match the
    ones given (one or both) feeds the rule its latency and outcome."""

    route: str | None = setting(None, "the route's name (route.name in Envoy's config)", low=1)
    cluster: str | None = setting(None, "the upstream cluster's name", low=1)

    def check(self, given: frozenset[str] | None) -> None:
        if self.route is None and self.cluster is None:
            raise FieldError("", "give route, cluster or both")


@dataclass(frozen=True)
class BreakerRef(Section):
    """The breaker a rule's checks follow (``rate_limit.breaker``; a dependency name alone
    is short for ``{dependency: name}``): while the dependency's breaker for the check's
    partition is open, the rule refuses the check at once."""

    dependency: str = setting(
        doc="the dependency (an upstream cluster, for breakers fed by access logs)", low=1
    )
    partition: str | None = setting(
        None, "the descriptor key whose value in the check names the partition (one of the "
        "rule's keys); none: the dependency's breaker without a partition", low=1,
    )  # fmt: skip

    def check(self, given: frozenset[str] | None) -> None:
        if "/" in self.dependency:
            raise FieldError("dependency", f"must not contain '/', got {self.dependency!r}")


@dataclass(frozen=True)
class Limit(Section):
    """What one rule enforces (``rate_limit``), in envoyproxy/ratelimit's keys (``unit``,
    ``requests_per_unit``, ``unlimited``, ``name``, ``replaces``) plus limiter's. Windows
    are aligned to the unit; ``unlimited`` rules enforce nothing."""

    requests_per_unit: int = setting(
        0, "requests per unit (adaptive: the ceiling; concurrency: requests in flight)",
        low=0, high=MAX_LIMIT, required="unless unlimited",
    )  # fmt: skip
    unit: str = setting(
        "second", "the unit of requests_per_unit (any case); a month is 30 days, a year 365",
        choices=tuple(UNIT_SECONDS), required="unless unlimited or concurrency",
    )  # fmt: skip
    algorithm: str = setting("fixed_window", "how the limit is enforced", choices=ALGORITHMS)
    burst: int | None = setting(
        None, "token_bucket: bucket size (default requests_per_unit); leaky_bucket: queue "
        "size (default 1)", low=1, high=MAX_LIMIT,
    )  # fmt: skip
    unlimited: bool = setting(False, "enforce nothing (only name and replaces may go with it)")
    name: str = setting("", "names the rule for the native API, metrics and switches")
    replaces: tuple[str, ...] = setting(
        (), "names of rules this one replaces when both match a request", low=1, item_key="name"
    )
    priority: Priority = setting(Priority.CRITICAL, "the tier of the rule's traffic")
    failure_mode: FailureMode = setting(
        DEFAULT_FAILURE_MODE, "the answer while the shared store cannot be reached (local: "
        "this replica's own kernel; allow; deny)",
    )  # fmt: skip
    target_latency: float = setting(
        0.1, "adaptive: the latency to keep the percentile under",
        low=0, high=3600, open_low=True, open_high=True, seconds=True,
    )  # fmt: skip
    percentile: float = setting(
        0.99, "adaptive: the latency percentile watched", low=0, high=1, open_low=True,
        open_high=True,
    )  # fmt: skip
    mode: str = setting(
        "rate", "adaptive: what is limited, requests per second or requests in flight",
        choices=("rate", "concurrency"),
    )  # fmt: skip
    queue: QueueSpec = setting(
        QueueSpec(), "how checks that ask to wait (native max_wait) are queued"
    )
    hold: float = setting(
        0.0, "how long an RLS check may wait for admission before it is answered "
        "(rate rules only; Envoy's default timeout is 20 ms)", low=0, high=MAX_HOLD, seconds=True,
    )  # fmt: skip
    reserved: Reserve | None = setting(
        None, "a share of the limit only checks of a tier at or above its priority may use "
        "(none: every tier uses the whole limit)",
    )  # fmt: skip
    outcomes: Outcomes | None = setting(
        None, "adaptive: the access-log entries that report on the rule (none: only native "
        "Observe calls do)",
    )  # fmt: skip
    breaker: BreakerRef | str | None = setting(
        None, "refuse checks at once while this dependency's breaker is open (a name, or a "
        "mapping below)",
    )  # fmt: skip

    def check(self, given: frozenset[str] | None) -> None:
        if isinstance(self.breaker, str):
            try:
                object.__setattr__(self, "breaker", BreakerRef(self.breaker))
            except FieldError as exc:
                raise exc.under("breaker") from None
        algorithm = self.algorithm
        if given is not None:
            if self.unlimited:
                for name in UNLIMITED_REFUSES:
                    if name in given:
                        raise FieldError(name, "not allowed together with 'unlimited: true'")
                return
            for name in ("requests_per_unit", "unit"):
                if name not in given and not (name == "unit" and algorithm == "concurrency"):
                    raise required(Limit, name)
            for name in ADAPTIVE_KEYS:
                if name in given and algorithm != "adaptive":
                    raise FieldError(
                        name, f"only algorithm 'adaptive' takes it (algorithm is {algorithm})"
                    )
        if self.burst is not None and algorithm not in BUCKETS:
            raise FieldError(
                "burst", f"only {' and '.join(BUCKETS)} take a burst (algorithm is {algorithm})"
            )
        permit = algorithm == "concurrency" or (algorithm == "adaptive" and self.mode != "rate")
        if self.hold and permit:
            raise FieldError(
                "hold", "an RLS check holds no concurrency slot, so there is nothing to wait "
                f"for (algorithm is {algorithm}); use the native API's max_wait instead",
            )  # fmt: skip
        if self.reserved is not None:
            self._check_reserve(self.reserved)
        if given is not None and self.requests_per_unit > 0:
            try:
                build_kernel(self, max_keys=1)
            except InvalidParameter as exc:
                raise FieldError("", str(exc)) from None

    def _check_reserve(self, reserved: Reserve) -> None:
        if self.algorithm not in RESERVABLE:
            raise FieldError(
                "reserved", f"only {', '.join(RESERVABLE)} keep a reserve "
                f"(algorithm is {self.algorithm})",
            )  # fmt: skip
        if self.unlimited or self.requests_per_unit == 0:
            return
        units, whole = reserved.units(self), self.max_cost
        if not 1 <= units < whole:
            raise FieldError(
                "reserved.fraction", f"{reserved.fraction:g} of {whole} reserves {units} "
                "units: a reserve must keep at least one and leave at least one",
            )  # fmt: skip

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


@dataclass(frozen=True)
class Descriptor(Section):
    """One entry of ``descriptors``. A request descriptor's entries walk the tree one level
    per entry: an exact ``key`` and ``value`` wins over a ``value`` prefix ending in ``*``,
    which wins over a key alone; only the level reached by the request's last entry can
    supply the limit."""

    key: str = setting(doc="the entry's key", low=1)
    value: str | int | float | None = setting(
        None, "the entry's value, exact or a prefix ending in `*`; none: any value"
    )
    rate_limit: Limit | None = setting(None, "the limit of requests whose descriptor ends here")
    descriptors: tuple[Any, ...] | None = setting(
        None, "descriptors for the request descriptor's next entry", kind="a list of descriptors"
    )
    shadow_mode: bool = setting(False, "count over-limit answers but answer OK")
    detailed_metric: bool = setting(False, "metrics per descriptor value (bounded)")

    def check(self, given: frozenset[str] | None) -> None:
        if self.value is not None:
            object.__setattr__(self, "value", str(self.value))


@dataclass(frozen=True)
class Document(OpsConfig):
    """A YAML document of a config file: a domain's rules, operations sections, or both
    (each section at most once in a whole config)."""

    domain: str | None = setting(None, "the domain the descriptors belong to", low=1)
    descriptors: tuple[Any, ...] | None = setting(
        None, "the domain's rules: a tree of descriptors", kind="a list of descriptors"
    )

    def check(self, given: frozenset[str] | None) -> None:
        super().check(given)
        if self.descriptors is not None and self.domain is None:
            raise FieldError("domain", "required next to 'descriptors'")


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

    def match_unordered(self, pairs: Mapping[str, str]) -> tuple[Rule | None, tuple[str, ...]]:
        """The rule for an unordered set of (key, value) pairs (an Envoy quota bucket), and
        the keys in the order the rule's descriptor nests them: the first path of the tree
        that uses every pair once, trying keys in name order at each level."""
        found = _unordered(self.root, dict(pairs), ())
        return found if found is not None else (None, ())


def _unordered(
    node: Node, left: dict[str, str], order: tuple[str, ...]
) -> tuple[Rule | None, tuple[str, ...]] | None:
    if not left:
        return (node.rule, order) if node.rule is not None else None
    for key in sorted(left):
        child = node.child((key, left[key]))
        if child is not None:
            rest = {k: v for k, v in left.items() if k != key}
            found = _unordered(child, rest, (*order, key))
            if found is not None:
                return found
    return None


@dataclass
class Config:
    """A whole loaded configuration: domains plus the operations sections given."""

    domains: dict[str, Domain] = field(default_factory=dict)
    sections: dict[str, Any] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)

    @property
    def rules(self) -> list[Rule]:
        return [rule for domain in self.domains.values() for rule in domain.rules]


def config_files(path: str | os.PathLike[str]) -> list[Path]:
    """The files a config path stands for: the file itself, or a directory's *.yaml/*.yml."""
    p = Path(path)
    if p.is_dir():
        return sorted(f for f in p.iterdir() if f.suffix in (".yaml", ".yml") and f.is_file())
    return [p]


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file or directory; raises ConfigError."""
    files = config_files(path)
    _warn_broken_links(path)
    if not files:
        raise ConfigError(f"{path}: no .yaml or .yml files in this directory")
    config = Config()
    room = MAX_CONFIG_BYTES
    for f in files:
        try:
            with f.open("rb") as stream:
                data = stream.read(room + 1)
            if len(data) > room:
                raise ConfigError(
                    f"{f}: the config's files hold more than {MAX_CONFIG_BYTES} bytes "
                    "(the most a config may hold)"
                )
            room -= len(data)
            text = data.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{f}: cannot read: {exc}") from None
        _parse_into(config, text, str(f))
    return config


def _warn_broken_links(path: str | os.PathLike[str]) -> None:
    """Say which *.yaml entries of a config directory are skipped as links to nothing
    (dangling, or a loop), so a missing rule file does not go unnoticed."""
    p = Path(path)
    if not p.is_dir():
        return
    for f in sorted(p.iterdir()):
        if f.suffix in (".yaml", ".yml") and f.is_symlink() and not f.exists():
            log.warning(
                "config file %s is a symbolic link to nothing (dangling or a loop): skipped",
                f,
                extra={"fields": {"path": str(f)}},
            )


def parse(text: str, source: str = "<string>") -> Config:
    """Validate config text (one or more YAML documents); raises ConfigError."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: more than {MAX_CONFIG_BYTES} characters")
    config = Config()
    _parse_into(config, text, source)
    return config


class _Loader(LOADER):  # type: ignore[misc, valid-type]
    """``LOADER`` refusing what PyYAML lets through: a key given twice in one mapping
    (the last one would silently win), and aliases adding more than ``MAX_ALIAS_NODES``
    nodes to a document or making it contain itself."""

    aliases = True  # the text may hold anchors, so the documents are checked for them

    def construct_document(self, node: yaml.Node) -> Any:
        if self.aliases:
            _check_aliases(node)
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # merged keys may be overridden: that is what merging is for
            key = self.construct_object(key_node, deep=deep)
            try:
                again = key in seen
            except TypeError:
                break  # unhashable: the base class says so
            if again:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {brief(key)}", key_node.start_mark,
                )  # fmt: skip
            seen.add(key)
        return super().construct_mapping(node, deep)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return node.value if isinstance(node, yaml.SequenceNode) else []


def _check_aliases(root: yaml.Node) -> None:
    """Refuse a document whose aliases add more than MAX_ALIAS_NODES nodes or loop: each
    node is counted once per place it appears, walking each distinct node once."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, closing = stack.pop()
        ident = id(node)
        if closing:
            open_.discard(ident)
            sizes[ident] = 1 + sum(sizes[id(c)] for c in _children(node))
            continue
        if ident in sizes:
            continue
        if ident in open_:
            raise yaml.composer.ComposerError(
                None, None, "an alias refers to a node that contains it", node.start_mark
            )
        open_.add(ident)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node))
    if sizes[id(root)] - len(sizes) > MAX_ALIAS_NODES:
        raise yaml.composer.ComposerError(
            None, None, f"aliases expand the document by more than {MAX_ALIAS_NODES} nodes",
            root.start_mark,
        )  # fmt: skip


def _documents(text: str) -> list[Any]:
    loader = _Loader(text)
    loader.aliases = "&" in text  # no anchor, no alias: nothing to check
    try:
        out = []
        while loader.check_data():
            out.append(loader.get_data())
        return out
    finally:
        loader.dispose()


def _parse_into(config: Config, text: str, source: str) -> None:
    config.sources.append(source)
    try:
        documents = [d for d in _documents(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{source}:{where}: invalid YAML: {problem}") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise ConfigError(f"{source}: invalid YAML: {brief(str(exc), 200)}") from None
    for index, doc in enumerate(documents):
        where = source if len(documents) == 1 else f"{source} (document {index + 1})"
        if not isinstance(doc, dict):
            raise ConfigError(f"{where}: a document must be a mapping, got {type(doc).__name__}")
        try:
            _parse_document(config, doc, where)
        except RecursionError:
            raise ConfigError(f"{where}: nested too deeply") from None


def _parse_document(config: Config, raw: dict[Any, Any], where: str) -> None:
    doc = schema.load(Document, raw, where)
    for name in SECTIONS:
        if name in raw:
            if name in config.sections:
                raise ConfigError(f"{where}: section {brief(name)} appears more than once")
            config.sections[name] = getattr(doc, name)
    if doc.domain is None:
        return
    name = doc.domain
    if name in config.domains:
        raise ConfigError(
            f"{where}: domain {brief(name)} is already defined in {config.domains[name].source}"
        )
    domain = Domain(name, where)
    at = f"{where}: domain {brief(name)}: descriptors"
    room = MAX_RULES - len(config.rules)
    _parse_level(domain, domain.root, doc.descriptors or (), (), at, room)
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
    items: Sequence[Any],
    path: tuple[tuple[str, str | None], ...],
    where: str,
    room: int,
) -> None:
    for i, item in enumerate(items):
        at = f"{where}[{i}]{_label(item)}"
        d = schema.load(Descriptor, item, at)
        key, value = d.key, typing.cast(str | None, d.value)
        node = Node()
        if value is None:
            if key in parent.keys:
                raise ConfigError(f"{at}: duplicate descriptor key {brief(key)} at this level")
            parent.keys[key] = node
        elif value.endswith("*"):
            prefix = value[:-1]
            if any(k == key and p == prefix for k, p, _ in parent.wild):
                raise ConfigError(
                    f"{at}: duplicate descriptor {_cut(key)}={_cut(value)} at this level"
                )
            parent.wild.append((key, prefix, node))
            parent.wild.sort(key=lambda w: -len(w[1]))
        else:
            if (key, value) in parent.exact:
                raise ConfigError(
                    f"{at}: duplicate descriptor {_cut(key)}={_cut(value)} at this level"
                )
            parent.exact[(key, value)] = node
        here = (*path, (key, value))
        if d.rate_limit is not None:
            if len(domain.rules) >= room:
                raise ConfigError(f"{at}: more than {MAX_RULES} rules (the most a config holds)")
            ref = d.rate_limit.breaker
            if isinstance(ref, BreakerRef) and ref.partition is not None:
                keys = [k for k, _ in here]
                if ref.partition not in keys:
                    raise ConfigError(
                        f"{at}: rate_limit.breaker.partition: {_cut(ref.partition)!r} is not "
                        f"one of the rule's descriptor keys ({', '.join(map(_cut, keys))})"
                    )
            node.rule = Rule(domain.name, here, d.rate_limit, d.shadow_mode, d.detailed_metric)
            domain.rules.append(node.rule)
        _parse_level(domain, node, d.descriptors or (), here, f"{at}.descriptors", room)


def _label(item: Any) -> str:
    """`` (key=k, value=v)``: how errors name a descriptor whose key is valid."""
    if not isinstance(item, dict) or not isinstance(item.get("key"), str) or not item["key"]:
        return ""
    value = item.get("value")
    if value is None or isinstance(value, bool) or not isinstance(value, str | int | float):
        return f" (key={_cut(item['key'])})"
    return f" (key={_cut(item['key'])}, value={_cut(str(value))})"


def _cut(text: str, limit: int = 80) -> str:
    """``text`` as a message quotes it: at most ``limit`` characters."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def build_kernel(limit: Limit, *, max_keys: int = 1_000_000) -> Any:
    """The in-process kernel enforcing ``limit`` (None for unlimited or zero limits)."""
    from limiter import _core

    if limit.unlimited or limit.requests_per_unit == 0:
        return None
    n, seconds = limit.requests_per_unit, limit.seconds
    if limit.algorithm == "fixed_window":
        return _core.FixedWindow(n, seconds, max_keys=max_keys)
    if limit.algorithm == "sliding_window":
        return _core.SlidingWindow(n, seconds, max_keys=max_keys)
    if limit.algorithm == "token_bucket":
        return _core.TokenBucket(n / seconds, limit.burst or n, max_keys=max_keys)
    if limit.algorithm == "leaky_bucket":
        return _core.LeakyBucket(n / seconds, limit.burst or 1, max_keys=max_keys)
    if limit.algorithm == "concurrency":
        return _core.ConcurrencyLimit(n, max_keys=max_keys)
    # Adaptive: the limit follows the latency this replica's callers report, and
    # requests_per_unit is its ceiling (and starting point: cut on the first slowdown).
    # (With --redis, the service shares rate-mode adaptive rules through Redis instead.)
    ceiling = n / seconds if limit.mode == "rate" else n
    return _core.AdaptiveLimiter(
        limit.target_latency,
        limit.percentile,
        limit.mode,
        min_limit=min(1.0, ceiling),
        max_limit=ceiling,
        initial_limit=ceiling,
    )


def quota_window(limit: Limit) -> float:
    """The time the quota takes to return in full (``w`` in RateLimit-Policy; see
    ``limiter.headers``): a window's period, or the time a bucket takes to refill."""
    if limit.algorithm in ("token_bucket", "leaky_bucket"):
        # Time for an empty bucket to refill completely.
        return math.ceil(
            (limit.burst or limit.requests_per_unit)
            * limit.seconds
            / max(limit.requests_per_unit, 1)
        )
    return limit.seconds
