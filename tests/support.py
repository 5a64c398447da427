"""Real processes for tests: child servers on ports that are theirs, and redis-server.

A port picked free and handed to a child can be taken by another process before the
child binds it (a busy CI machine opens connections all the time). So a child server
is started, its output kept in a file, and waited for while it lives: if it exits
having failed to bind, it is started again on fresh ports; any other failure shows
its log.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

# What a child prints when a port picked for it was taken meanwhile (any case).
PORT_TAKEN = ("address already in use", "failed to bind")
START_ATTEMPTS = 5
# A Redis timeout (s) a loaded 2-core machine always meets, for tests that count exact
# answers or need Redis up at start: at the 20 ms default a stalled round trip is
# answered by the failure mode instead. Timeouts are tested with Redis killed.
PATIENT = 1.0


class PortTaken(RuntimeError):
    """A child server exited because a port picked for it was taken meanwhile."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (someone may take it
    before it is used: start a child on it with ``start_on_free_ports``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A port that refuses every connection for as long as the block runs: bound by
    this process and never listening, so no other process can take it meanwhile."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def wait_ready(
    proc: subprocess.Popen,
    log: Path,
    what: str,
    *,
    ports: Sequence[int] = (),
    line: str | None = None,
    count: int = 1,
    timeout: float = 20.0,
) -> None:
    """Wait until ``proc`` has printed ``line`` (if given; ``count`` times, e.g. once per
    worker) to ``log`` and accepts connections on every port in ``ports``, checking all
    the while that it lives.

    Raises ``PortTaken`` if it exited after failing to bind, otherwise RuntimeError
    with its log (it exited, or was not ready within ``timeout`` seconds).
    """
    deadline = time.monotonic() + timeout
    pending = list(ports)
    while True:
        if proc.poll() is not None:
            text = log.read_text(errors="replace")
            if any(marker in text.lower() for marker in PORT_TAKEN):
                raise PortTaken(f"{what} lost a port to another process:\n{text}")
            raise RuntimeError(f"{what} exited with code {proc.returncode}:\n{text}")
        if line is not None and log.read_text(errors="replace").count(line) >= count:
            line = None
        while line is None and pending:
            try:
                with socket.create_connection(("127.0.0.1", pending[0]), timeout=0.2):
                    pending.pop(0)
            except OSError:
                break
        if line is None and not pending:
            return
        if time.monotonic() > deadline:
            waiting = f"line {line!r}" if line is not None else f"port {pending[0]}"
            text = log.read_text(errors="replace")
            raise RuntimeError(f"{what}: no {waiting} after {timeout:g}s; its log:\n{text}")
        time.sleep(0.02)


def start_on_free_ports(start: Callable[[], T], attempts: int = START_ATTEMPTS) -> T:
    """``start()`` picks fresh ports each time it is called; a start that lost a port
    to another process (``PortTaken``) is tried again, up to ``attempts`` times."""
    for _ in range(attempts - 1):
        try:
            return start()
        except PortTaken:
            pass
    return start()


class RedisServer:
    """A redis-server on a port of its own that a test can kill (SIGKILL) and restart.

    The first start picks the port (with ``cluster_bus`` also the cluster bus port;
    with ``tls`` the port is the TLS port and plain TCP is off), and picks again if
    another process took one first; restarts reuse them, so clients reconnect to the
    same URL. ``port`` fixes the port instead. Its log is ``self.log``.
    """

    def __init__(
        self,
        *extra_args: str,
        port: int | None = None,
        cluster_bus: bool = False,
        tls: bool = False,
    ) -> None:
        self.binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.path.exists(self.binary):
            raise RuntimeError("redis-server is not installed; run `make test` to install it")
        self.port = port or 0
        self.bus_port = 0
        self.cluster_bus = cluster_bus
        self.tls = tls
        self.extra_args = list(extra_args)
        self.dir = Path(tempfile.mkdtemp(prefix="limiter-redis-"))
        self.log = self.dir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._ports_fixed = port is not None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        if self._ports_fixed:
            self._spawn()
        else:
            start_on_free_ports(self._first_start)
        return self

    def _first_start(self) -> None:
        self.port = free_port()
        if self.cluster_bus:
            self.bus_port = free_port()
        self._spawn()
        self._ports_fixed = True

    def _spawn(self) -> None:
        listen = (
            ["--port", "0", "--tls-port", str(self.port)]
            if self.tls
            else ["--port", str(self.port)]
        )
        bus = ["--cluster-port", str(self.bus_port)] if self.cluster_bus else []
        args = [
            self.binary,
            *listen,
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
            *bus,
            *self.extra_args,
        ]  # fmt: skip
        with self.log.open("w") as log:  # the child writes to its own copy of the file
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_ready(
                self.proc,
                self.log,
                f"redis-server on port {self.port}",
                ports=[self.port],
                line="Ready to accept connections",
            )
        except Exception:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL, as a crash would: no clean shutdown."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> RedisServer:
        self.kill()
        return self.start()

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_process(proc: subprocess.Popen, timeout: float) -> int:  # type: ignore[type-arg]
    """SIGTERM, then SIGKILL if ``proc`` has not exited within ``timeout`` s; its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def untyped_samples(exposition: str) -> list[str]:
    """The samples of a Prometheus text exposition that no ``# TYPE`` line types: in the
    text format a TYPE line names its samples exactly (a counter's ``name_total``), or, for
    a histogram or summary, their ``_bucket`` / ``_sum`` / ``_count`` stem."""
    typed: dict[str, str] = {}
    untyped = []
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            typed[name] = kind
            continue
        if not line or line.startswith("#"):
            continue
        name = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0)  # type: ignore[union-attr]
        stem, _, suffix = name.rpartition("_")
        if name in typed or (typed.get(stem) in ("histogram", "summary") and suffix in
                             ("bucket", "sum", "count")):  # fmt: skip
            continue
        untyped.append(name)
    return untyped
