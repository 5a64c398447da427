"""The configuration reference, docs/configuration.md, generated from the schema.

    python -m limiter.server.reference > docs/configuration.md    (or: make docs)

Each key's type, bounds, default and meaning come from its declaration
(``limiter.schema.setting``), each section's introduction from its class. The examples
below are loaded as ``serve`` would load them while the page is generated, so a stale
example fails the generation, and the test that the committed page is current.
"""

from __future__ import annotations

import dataclasses
import inspect
import shlex
import sys
import typing
from collections.abc import Iterator, Mapping

from limiter.server import cli
from limiter.server.settings import Settings

from limiter import schema
from limiter.config import Descriptor, Document, parse

INTRO = """\
# Configuration reference

Generated from the declarations in the source by `make docs`; a test checks it is current.

A config is a YAML file, or a directory of `*.yaml`/`*.yml` files, that `limiter serve
--config` loads (and reloads on change or SIGHUP) and `limiter check-config` validates. A file
holds one or more YAML documents (`---`). A document names a `domain` and its `descriptors`
in envoyproxy/ratelimit's format, so its files load unchanged; the operations sections
(`alerts`, `breakers`, `degradation`, `shedding`, `switches`) may stand in any document,
each once per config, and apply at start. Unknown keys are refused, and every error names
the file, the descriptor and the key.
"""

# Keyed by section path; each is loaded when the page is generated.
EXAMPLES = {
    "": """\
domain: edge
descriptors:
  - key: remote_address
    rate_limit: {name: per-ip, unit: second, requests_per_unit: 100}
---
degradation: {restore_after: 60}
""",
    "descriptors[]": """\
domain: edge
descriptors:
  - key: api_key
    rate_limit: {name: per-key, unit: second, requests_per_unit: 10}
    descriptors:
      - key: path
        value: /search
        rate_limit: {name: search, unit: minute, requests_per_unit: 600}
  - key: user_agent
    value: bot*
    shadow_mode: true
    rate_limit: {name: crawlers, unit: minute, requests_per_unit: 10}
""",
    "descriptors[].rate_limit": """\
domain: api
descriptors:
  - key: api_key
    rate_limit:
      name: per-key
      algorithm: token_bucket
      unit: second
      requests_per_unit: 10
      burst: 50
      priority: sheddable_plus
      failure_mode: deny
  - key: backend
    value: search
    rate_limit: {name: search-latency, algorithm: adaptive, unit: second,
                 requests_per_unit: 500, target_latency: 0.2, percentile: 0.95}
  - key: plan
    value: enterprise
    rate_limit: {unlimited: true, replaces: [{name: per-key}]}
""",
    "descriptors[].rate_limit.queue": """\
domain: api
descriptors:
  - key: tenant
    rate_limit:
      unit: second
      requests_per_unit: 100
      queue: {mode: weighted, weights: [8, 4, 2, 1], max_queue: 50, max_wait: 2}
""",
    "descriptors[].rate_limit.reserved": """\
domain: api
descriptors:
  - key: api
    rate_limit:
      unit: second
      requests_per_unit: 1000
      algorithm: token_bucket
      reserved: {fraction: 0.2, priority: critical, tenants: [acme]}
""",
    "alerts": """\
alerts:
  cooldown: 120
  webhooks:
    - url: https://hooks.example.com/limiter
      events: [breaker_opened, breaker_closed, level_changed]
    - {url: "http://chat.internal/hooks/ops", slack: true}
""",
    "breakers.<name>": """\
breakers:
  default: {failure_ratio: 0.5, minimum_calls: 20, open_for: 5}
  payments: {consecutive_failures: 3, health: "http://payments.internal/healthz"}
""",
    "degradation": """\
degradation:
  thresholds: [0.7, 0.9]
  names: [normal, reduced, essential-only]
  shed: {sheddable: 1, sheddable_plus: 2}
""",
    "shedding": """\
shedding:
  clients: {max_share: 0.2}
  abnormal: {burst: 500, cooldown: 300}
""",
    "switches": "switches: {store: redis, url: 'redis://switches.internal:6379/0'}\n",
}
SERVE_EXAMPLE = (
    "LIMITER_REDIS_URL=redis://redis:6379 limiter serve --config /etc/limiter --headers both"
)


def sections() -> Iterator[tuple[str, type[schema.Section]]]:
    """Every config class with its path: the document, its descriptors, then each section."""
    yield "", Document
    yield from _walk("descriptors[]", Descriptor)
    for path, cls in _walk("", Document):
        if cls is not Document:
            yield path, cls


def _walk(path: str, cls: type[schema.Section]) -> Iterator[tuple[str, type[schema.Section]]]:
    yield path, cls
    for f, hint, _ in schema.declared(cls):
        for arg, suffix in _nested(hint):
            if isinstance(arg, type) and issubclass(arg, schema.Section):
                yield from _walk(f"{path}.{f.name}{suffix}".lstrip("."), arg)


def _nested(hint: object) -> list[tuple[object, str]]:
    """The types a field's value may hold, with how a path names them."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (tuple, list):
        return [(args[0], "[]")]
    if origin in (dict, Mapping):
        return [(args[1], ".<name>")]
    return [(a, "") for a in args] or [(hint, "")]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;")


def _default(f: dataclasses.Field[object], meta: schema.Meta) -> str:
    if meta.required:
        return f"required {meta.required}"
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
        return "required"
    value = f.default_factory() if f.default is dataclasses.MISSING else f.default
    return "its keys' defaults" if isinstance(value, schema.Section) else f"`{schema.show(value)}`"


def _intro(cls: type) -> str:
    return " ".join(inspect.cleandoc(cls.__doc__ or "").split()).replace("``", "`")


def _table(cls: type[schema.Section], flags: bool = False) -> list[str]:
    head = "| flag | environment " if flags else "| key "
    rows = [head + "| value | default | meaning |", "|---" * (5 if flags else 4) + "|"]
    own = cls.__annotations__  # a class's own keys first, then those it inherits
    for f, hint, meta in sorted(schema.declared(cls), key=lambda d: d[0].name not in own):
        if meta.hidden:
            continue
        names = f"`{meta.flag}` | `{meta.env}`" if flags else f"`{f.name}`"
        if flags and not meta.flag:
            names = f"- | `{meta.env}`"
        value, default = _cell(schema.describe(hint, meta)), _default(f, meta)
        rows.append(f"| {names} | {value} | {_cell(default)} | {_cell(meta.doc)} |")
    return rows


def render() -> str:
    """The page; loading an example that fails raises (a ConfigError or FieldError)."""
    out = [INTRO]
    for path, cls in sections():
        out += [f"## {f'`{path}`' if path else 'A document'}", "", _intro(cls), ""]
        out += [*_table(cls), ""]
        example = EXAMPLES.get(path)
        if example is not None:
            parse(example, f"the example of {path or 'a document'}")
            out += ["```yaml", example.rstrip(), "```", ""]
    env, argv = [], shlex.split(SERVE_EXAMPLE)
    while "=" in argv[0]:
        env.append(argv.pop(0).split("=", 1))
    cli.settings(cli.build_parser().parse_args(argv[1:]), dict(env))
    out += ["## `limiter serve`", "", _intro(Settings) + " A flag on the command line wins "
            "over its environment variable, which wins over the default.", ""]  # fmt: skip
    out += [*_table(Settings, flags=True), "", "```sh", SERVE_EXAMPLE, "```", ""]
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(render())
