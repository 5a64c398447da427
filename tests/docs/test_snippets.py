"""Every code block of the manual (docs/*.md) and of the README runs or is validated.

What each fenced block gets, by language and by the HTML comment on the line above it
(``<!-- snippet: ... -->``):

- ``python``: run in its own interpreter from the repository root; it must exit 0.
  ``snippet: redis``: a real redis-server is started and ``127.0.0.1:6379`` in the block
  points at it. ``snippet: service FILE``: a real ``limiter serve --config FILE`` (with
  ``LIMITER_ADMIN_TOKEN`` set, for the block too) is started, and ``127.0.0.1:8081`` /
  ``127.0.0.1:8080`` in the block point at its gRPC and HTTP ports. ``snippet: signatures
  MODULE``: ``def`` and ``class`` stubs compared with the real objects of MODULE
  (parameter names, kinds and defaults, ``async``, and annotations where written);
- ``yaml``: loaded as ``limiter serve`` loads a config file; ``snippet: excerpt PATH``: its
  lines must stand, in order and with the same relative indentation, in PATH instead;
- ``json``: must parse; ``sh``: ``bash -n`` must accept it, and each ``limiter`` command in it
  must be accepted by the command-line parser; ``text``: shown as is.

Any other language, or a block without one, fails: every block says what it is.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from limiter import config as rules
from limiter.errors import ConfigError
from tests.service.conftest import ServiceProcess
from tests.support import RedisServer

ROOT = Path(__file__).resolve().parents[2]
PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
MARKER = re.compile(r"<!--\s*snippet:\s*(.*?)\s*-->")
FENCE = re.compile(r"```(\S*)\s*")
ADMIN_TOKEN = "manual-snippet-token-0123456789"
REDIS_ADDRESS = "127.0.0.1:6379"
GRPC_ADDRESS = "127.0.0.1:8081"
HTTP_ADDRESS = "127.0.0.1:8080"
LANGUAGES = ("python", "yaml", "json", "sh", "text")


@dataclass(frozen=True)
class Snippet:
    page: Path
    line: int  # of the opening fence, from 1
    language: str
    text: str
    marker: tuple[str, ...]  # the words after "snippet:" above the block; () without one

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def snippets(page: Path) -> list[Snippet]:
    """The fenced blocks of ``page`` (top-level fences, as the manual writes them)."""
    lines = page.read_text().splitlines()
    found = []
    i = 0
    while i < len(lines):
        opening = FENCE.fullmatch(lines[i])
        if opening is None:
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and lines[i].rstrip() != "```":
            body.append(lines[i])
            i += 1
        assert i < len(lines), f"{page.name}:{start + 1}: a code block is never closed"
        above = MARKER.fullmatch(lines[start - 1].strip()) if start else None
        marker = tuple(above.group(1).split()) if above else ()
        found.append(Snippet(page, start + 1, opening.group(1), "\n".join(body) + "\n", marker))
        i += 1
    return found


ALL = [s for page in PAGES for s in snippets(page)]


def run_python(snippet: Snippet, text: str, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(
        [sys.executable, "-c", text],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, (
        f"{snippet.name} failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
    )


def pointed(snippet: Snippet, addresses: dict[str, str]) -> str:
    """The block's text with each placeholder address replaced by the real one."""
    text = snippet.text
    assert any(a in text for a in addresses), (
        f"{snippet.name}: the block names none of {sorted(addresses)}"
    )
    for placeholder, real in addresses.items():
        text = text.replace(placeholder, real)
    return text


def check_with_redis(snippet: Snippet) -> None:
    with RedisServer() as server:
        run_python(snippet, pointed(snippet, {REDIS_ADDRESS: f"127.0.0.1:{server.port}"}))


def check_with_service(snippet: Snippet, config: str, tmp_path: Path) -> None:
    copy = tmp_path / Path(config).name  # the service writes its log next to its config
    copy.write_text((ROOT / config).read_text())
    env = {"LIMITER_ADMIN_TOKEN": ADMIN_TOKEN}
    service = ServiceProcess(copy, env=env).start()
    try:
        addresses = {
            GRPC_ADDRESS: f"127.0.0.1:{service.grpc_port}",
            HTTP_ADDRESS: f"127.0.0.1:{service.http_port}",
        }
        run_python(snippet, pointed(snippet, addresses), env)
    finally:
        assert service.stop() == 0, service.logs()


# --- signatures ---------------------------------------------------------------------


def _annotation(text: object) -> str:
    return ast.unparse(ast.parse(str(text), mode="eval"))


def _written(node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[tuple[str, Any, Any, Any]]:
    """(name, kind, default expression or None, annotation or None) per written parameter."""
    a = node.args
    P = inspect.Parameter
    positional = [(p, P.POSITIONAL_ONLY) for p in a.posonlyargs]
    positional += [(p, P.POSITIONAL_OR_KEYWORD) for p in a.args]
    defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    pairs = zip(positional, defaults, strict=True)
    out = [(p.arg, kind, d, p.annotation) for (p, kind), d in pairs]
    if a.vararg:
        out.append((a.vararg.arg, P.VAR_POSITIONAL, None, a.vararg.annotation))
    for p, d in zip(a.kwonlyargs, a.kw_defaults, strict=True):
        out.append((p.arg, P.KEYWORD_ONLY, d, p.annotation))
    if a.kwarg:
        out.append((a.kwarg.arg, P.VAR_KEYWORD, None, a.kwarg.annotation))
    return out


def signature_problems(
    node: ast.FunctionDef | ast.AsyncFunctionDef, func: Any, namespace: dict[str, Any]
) -> list[str]:
    """How the stub ``node`` differs from ``func`` (empty: it matches)."""
    problems = []
    if isinstance(node, ast.AsyncFunctionDef) != inspect.iscoroutinefunction(func):
        problems.append("async differs")
    real = list(inspect.signature(func).parameters.values())
    written = _written(node)
    if [(p.name, p.kind) for p in real] != [(n, k) for n, k, _, _ in written]:
        shown = ", ".join(f"{p.name}:{p.kind.name}" for p in real)
        return [*problems, f"parameters are ({shown})"]
    for p, (name, _, default, annotation) in zip(real, written, strict=True):
        if (default is None) != (p.default is inspect.Parameter.empty):
            problems.append(f"{name}: default is {p.default!r}")
        elif default is not None:
            # The manual's own text, evaluated where the object is defined.
            value = eval(ast.unparse(default), namespace)
            if not (value is p.default or value == p.default):
                problems.append(f"{name}: default is {p.default!r}, written {ast.unparse(default)}")
        if annotation is not None and (
            p.annotation is inspect.Parameter.empty
            or _annotation(p.annotation) != ast.unparse(annotation)
        ):
            problems.append(f"{name}: annotation is {p.annotation}")
    if node.returns is not None:
        returns = inspect.signature(func).return_annotation
        if returns is inspect.Signature.empty or _annotation(returns) != ast.unparse(node.returns):
            problems.append(f"returns {returns}")
    return problems


def check_signatures(snippet: Snippet, module_name: str) -> None:
    module = importlib.import_module(module_name)
    namespace = vars(module)
    problems = []
    for node in ast.parse(snippet.text).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found = getattr(module, node.name, None)
            if found is None:
                problems.append(f"{node.name}: not in {module_name}")
                continue
            problems += [f"{node.name}: {p}" for p in signature_problems(node, found, namespace)]
        elif isinstance(node, ast.ClassDef):
            cls = getattr(module, node.name, None)
            if not isinstance(cls, type):
                problems.append(f"class {node.name}: not in {module_name}")
                continue
            for item in node.body:
                if not isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    problems.append(f"{node.name}: only methods may be written in a class")
                    continue
                where = f"{node.name}.{item.name}"
                if item.name == "__init__":  # any __init__ of the class's MRO may be the one
                    inits = [k.__init__ for k in cls.__mro__ if "__init__" in vars(k)]
                    if not any(not signature_problems(item, f, namespace) for f in inits):
                        found = signature_problems(item, inits[0], namespace)
                        problems += [f"{where}: {p}" for p in found]
                    continue
                method = getattr(cls, item.name, None)
                if method is None:
                    problems.append(f"{where}: no such method")
                    continue
                problems += [f"{where}: {p}" for p in signature_problems(item, method, namespace)]
        else:
            problems.append(f"line {node.lineno}: only def and class stubs may be written")
    assert not problems, f"{snippet.name} ({module_name}):\n" + "\n".join(problems)


# --- yaml, sh -------------------------------------------------------------------------


def check_config(snippet: Snippet) -> None:
    try:
        config = rules.parse(snippet.text, snippet.name)
    except ConfigError as exc:
        raise AssertionError(f"{snippet.name}: {exc}") from None
    assert config.domains or config.sections, f"{snippet.name}: an empty config"


def check_excerpt(snippet: Snippet, path: str) -> None:
    """The block's lines stand together in ``path``, each indented alike relative to the
    first (a YAML excerpt keeps its structure)."""
    lines = snippet.text.rstrip("\n").splitlines()
    source = (ROOT / path).read_text().splitlines()
    indent = len(lines[0]) - len(lines[0].lstrip())
    for i in range(len(source) - len(lines) + 1):
        head = source[i]
        shift = len(head) - len(head.lstrip()) - indent
        if shift < 0:
            continue
        if all(source[i + k].rstrip() == (" " * shift + line).rstrip() if line.strip()
               else not source[i + k].strip() for k, line in enumerate(lines)):  # fmt: skip
            return
    raise AssertionError(f"{snippet.name}: not an excerpt of {path}")


def limiter_commands(text: str) -> list[list[str]]:
    """The arguments of each ``limiter`` command line (after any VAR=value prefixes)."""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
            words.pop(0)
        if words and words[0] == "limiter":
            args = []
            for word in words[1:]:
                if word in ("|", "||", "&&", ";", "&"):
                    break
                args.append(word)
            commands.append(args)
    return commands


PARSE = """\
import json, sys
from limiter.server.cli import build_parser
parser = build_parser()
for args in json.loads(sys.argv[1]):
    try:
        parser.parse_args(args)
    except SystemExit:
        sys.exit(f"not accepted: limiter {' '.join(args)}")
"""


def check_shell(snippet: Snippet) -> None:
    done = subprocess.run(["bash", "-n"], input=snippet.text, capture_output=True, text=True)
    assert done.returncode == 0, f"{snippet.name}: {done.stderr}"
    commands = limiter_commands(snippet.text)
    if commands:
        done = subprocess.run(
            [sys.executable, "-c", PARSE, json.dumps(commands)],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, f"{snippet.name}: {done.stderr}"


@pytest.mark.parametrize("snippet", ALL, ids=[s.name for s in ALL])
def test_snippet(snippet: Snippet, tmp_path: Path) -> None:
    kind, *args = snippet.marker or ("",)
    language = snippet.language
    assert language in LANGUAGES, f"{snippet.name}: say the block's language ({LANGUAGES})"
    if language == "python" and kind == "":
        run_python(snippet, snippet.text)
    elif language == "python" and kind == "redis":
        check_with_redis(snippet)
    elif language == "python" and kind == "service" and len(args) == 1:
        check_with_service(snippet, args[0], tmp_path)
    elif language == "python" and kind == "signatures" and len(args) == 1:
        check_signatures(snippet, args[0])
    elif language == "yaml" and kind == "":
        check_config(snippet)
    elif language == "yaml" and kind == "excerpt" and len(args) == 1:
        check_excerpt(snippet, args[0])
    elif language == "json" and kind == "":
        json.loads(snippet.text)
    elif language == "sh" and kind == "":
        check_shell(snippet)
    elif language == "text" and kind == "":
        pass
    else:
        raise AssertionError(f"{snippet.name}: no check for a {language} block {snippet.marker}")


def test_the_manual_has_snippets_of_each_kind() -> None:
    """The collection above finds the blocks (a broken fence pattern would find none)."""
    kinds = {(s.language, s.marker[0] if s.marker else "") for s in ALL}
    wanted = [("python", ""), ("python", "service"), ("python", "redis"),
              ("python", "signatures"), ("yaml", ""), ("yaml", "excerpt"), ("sh", "")]  # fmt: skip
    for kind in wanted:
        assert kind in kinds, kind
    assert any(s.page.name == "README.md" for s in ALL)


def test_every_marker_stands_above_a_block() -> None:
    for page in PAGES:
        lines = page.read_text().splitlines()
        for i, line in enumerate(lines):
            if MARKER.fullmatch(line.strip()):
                below = lines[i + 1] if i + 1 < len(lines) else ""
                assert FENCE.fullmatch(below), f"{page.name}:{i + 1}: a marker with no block"


def test_every_page_of_the_manual_is_linked_from_its_index() -> None:
    index = (ROOT / "docs" / "README.md").read_text()
    for page in (ROOT / "docs").glob("*.md"):
        if page.name != "README.md":
            assert f"]({page.name})" in index, f"docs/README.md does not link {page.name}"
    assert "](docs/README.md)" in (ROOT / "README.md").read_text()


def slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it: lower case, punctuation dropped, spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_relative_link_finds_its_file_and_heading() -> None:
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # http(s) and mailto links are not checked here
            path, _, anchor = target.partition("#")
            found = (page.parent / path).resolve() if path else page
            if not found.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and found.suffix == ".md":
                headings = re.findall(r"^#+ (.*)$", found.read_text(), re.MULTILINE)
                if anchor not in {slug(h) for h in headings}:
                    broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken


@pytest.mark.parametrize(
    "text,module,fails",
    [
        ("def header(name, default=''): ...", "limiter.clients.keys", False),
        ("def header(name, default='x'): ...", "limiter.clients.keys", True),
        ("def header(name, *, default=''): ...", "limiter.clients.keys", True),
        ("async def header(name, default=''): ...", "limiter.clients.keys", True),
        ("def header(name: str, default: int = ''): ...", "limiter.clients.keys", True),
        ("class RequestInfo:\n    def header(self, key): ...", "limiter.clients.keys", True),
    ],
)
def test_the_signature_check_sees_a_difference(text: str, module: str, fails: bool) -> None:
    snippet = Snippet(ROOT / "docs" / "x.md", 1, "python", text, ("signatures", module))
    if fails:
        with pytest.raises(AssertionError):
            check_signatures(snippet, module)
    else:
        check_signatures(snippet, module)


def test_limiter_commands_are_found_behind_variables_and_continuations() -> None:
    text = "LIMITER_HOST=127.0.0.1 limiter serve \\\n  --config x.yaml  # run it\nmake test\n"
    assert limiter_commands(text) == [["serve", "--config", "x.yaml"]]
