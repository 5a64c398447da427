"""``make dist`` builds an sdist and a wheel that installs and runs where users run it.

The wheel (built once per session) goes into a fresh virtualenv with no Cython and no
compiler needed: its dependencies come as wheels from the machine's package index
(pip's cache is reused). There it must validate the example config, serve (health check
answered) and run the README's in-process quick start; its tags must fit this interpreter.
"""

from __future__ import annotations

import email
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.tags import sys_tags
from packaging.utils import parse_wheel_filename

from tests.service.conftest import ServiceProcess

ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTION = "limiter-engine"
CORE = ("_core", "_wire", "_relay")  # the compiled modules, from ext/
pytestmark = pytest.mark.timeout(900)  # a cold pip cache downloads every dependency once


def only(paths: list[Path]) -> Path:
    assert len(paths) == 1, paths
    return paths[0]


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        ["make", "-C", str(ROOT), "dist", f"DIST={out}"],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def wheel(dist: Path) -> Path:
    return only(list(dist.glob("*.whl")))


@pytest.fixture(scope="session")
def sdist(dist: Path) -> Path:
    return only(list(dist.glob("*.tar.gz")))


@pytest.fixture(scope="session")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel installed (binary dependencies only)."""
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    install = [
        sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
        "install", "-q", "--only-binary", ":all:", str(wheel),
    ]  # fmt: skip
    done = subprocess.run(install, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return venv


def run_in(venv: Path, *args: str, cwd: Path) -> str:
    """Run a command of ``venv`` outside the source tree (so nothing imports from it)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    done = subprocess.run(
        [str(venv / "bin" / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def test_wheel_is_for_this_interpreter_and_platform(wheel):
    name, _, _, tags = parse_wheel_filename(wheel.name)
    assert name == DISTRIBUTION
    here = f"cp{sys.version_info.major}{sys.version_info.minor}"
    assert {(t.interpreter, t.abi) for t in tags} == {(here, here)}
    assert all(t.platform.startswith(("linux_", "manylinux")) for t in tags), tags
    assert set(tags) & set(sys_tags()), f"{wheel.name} does not install on this interpreter"


def test_wheel_states_the_supported_pythons(wheel):
    _, version, _, _ = parse_wheel_filename(wheel.name)
    with zipfile.ZipFile(wheel) as z:
        meta = email.message_from_bytes(z.read(f"limiter_engine-{version}.dist-info/METADATA"))
    requires = SpecifierSet(meta["Requires-Python"])
    assert str(requires) == ">=3.11"
    versions = [
        c.rsplit(" ", 1)[1]
        for c in meta.get_all("Classifier")
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    ]
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert here in versions  # the version this test runs on is one the wheel claims
    assert all(requires.contains(f"{v}.0") for v in versions), versions
    assert "Operating System :: POSIX :: Linux" in meta.get_all("Classifier")


def test_wheel_holds_the_compiled_core(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    assert {f"limiter/{m}{suffix}" for m in CORE} <= names
    for data in ("limiter/server/static/console.js", "limiter/server/v1/limiter.proto",
                 "limiter/backends/lua/gcra.lua", "limiter/py.typed"):  # fmt: skip
        assert data in names
    assert not [n for n in names if n.endswith((".pyx", ".pxi", ".c"))]


def test_sdist_holds_every_source(sdist):
    """Every tracked file a build needs, and nothing generated or compiled."""
    tracked = subprocess.run(
        ["git", "ls-files", "limiter", "server", "clients", "ext", "examples", "deploy"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    with tarfile.open(sdist) as tar:
        top = sdist.name.removesuffix(".tar.gz")
        names = {n.removeprefix(top + "/") for n in tar.getnames()}
    needed = {*tracked, "setup.py", "pyproject.toml", "README.md", "MANIFEST.in"}
    missing = sorted(needed - names)
    assert not missing, f"not in the sdist (see MANIFEST.in): {missing}"
    assert not [n for n in names if n.endswith((".so", ".c", ".o"))]


def test_installed_wheel_has_no_cython_and_imports_from_the_venv(venv, tmp_path):
    out = run_in(
        venv,
        "python",
        "-c",
        "import importlib.util, limiter, limiter._core, limiter.server.app\n"
        "print(importlib.util.find_spec('Cython'), limiter.__file__)",
        cwd=tmp_path,
    )
    spec, path = out.split()
    assert spec == "None"
    assert Path(path).is_relative_to(venv)


def test_installed_wheel_checks_the_example_config(venv, tmp_path):
    config = shutil.copy(ROOT / "examples" / "ratelimit.yaml", tmp_path)
    out = run_in(venv, "limiter", "check-config", str(config), cwd=tmp_path)
    assert out.strip() == f"{config}: OK (1 domains, 7 rules)"


def readme_quick_start() -> str:
    """The README's in-process quick start: its first Python block."""
    found = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert found, "README.md has no ```python block"
    return found.group(1)


def test_installed_wheel_runs_the_readme_quick_start(venv, tmp_path):
    script = tmp_path / "quick_start.py"
    script.write_text(readme_quick_start())
    run_in(venv, "python", str(script), cwd=tmp_path)


def test_installed_wheel_serves(venv, tmp_path):
    config = Path(shutil.copy(ROOT / "examples" / "ratelimit.yaml", tmp_path))
    service = ServiceProcess(config, program=[str(venv / "bin" / "limiter")])
    service.start()
    try:
        assert service.http("GET", "/healthcheck") == (200, b"OK\n")
        body = (
            b'{"domain": "edge", "descriptors": [{"entries": [{"key": "api_key", "value": "k"}]}]}'
        )
        status, answer = service.http("POST", "/json", body)
        assert status == 200 and b'"OK"' in answer
    finally:
        assert service.stop() == 0
