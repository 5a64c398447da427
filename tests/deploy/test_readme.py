"""What the README tells a new user about running the service holds for the code."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def make_serve_args() -> list[str]:
    """The arguments ``make serve`` gives ``limiter`` (from make's dry run)."""
    dry = subprocess.run(
        ["make", "-n", "-C", str(ROOT), "serve"], capture_output=True, text=True, check=True
    ).stdout
    line = next(line for line in dry.splitlines() if "/limiter serve" in line)
    words = shlex.split(line)
    return words[words.index("serve") :]


def bound_host(args: list[str], env: dict[str, str]) -> str:
    """The address ``limiter`` would bind with ``args`` and ``env``, as its parser reads them
    (in a child: building the parser registers the ops config sections process-wide)."""
    code = "import os, sys; from limiter.server.cli import build_parser, settings; "
    code += "print(settings(build_parser().parse_args(sys.argv[1:]), os.environ).host)"
    done = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_make_serve_listens_on_every_interface() -> None:
    env = {k: v for k, v in os.environ.items() if k != "LIMITER_HOST"}
    assert bound_host(make_serve_args(), env) == "0.0.0.0"
    assert "(0.0.0.0)" in README


def test_limiter_host_binds_make_serve_to_loopback() -> None:
    assert "`LIMITER_HOST=127.0.0.1 make serve`" in README
    env = {**os.environ, "LIMITER_HOST": "127.0.0.1"}
    assert bound_host(make_serve_args(), env) == "127.0.0.1"
