"""Real Redis processes for the Redis backend tests: a killable server and a 3-master cluster."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support import RedisServer, free_port, start_on_free_ports, wait_ready


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server this test alone uses, so it may SIGKILL and restart it."""
    with RedisServer() as server:
        yield server


class Cluster:
    """Three redis-server masters (each with ``replicas`` replicas) joined with
    ``redis-cli --cluster create``."""

    def __init__(self, *extra_args: str, replicas: int = 0, node_timeout_ms: int = 2000) -> None:
        args = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms), *extra_args)  # fmt: skip
        self.replicas = replicas
        # An explicit bus port: the default (port + 10000) overflows for high free ports.
        count = 3 * (1 + replicas)
        self.nodes = [RedisServer(*args, cluster_bus=True) for _ in range(count)]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def client(self, node: RedisServer) -> redis.Redis:
        return redis.Redis(port=node.port)

    def start(self) -> Cluster:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
        addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addrs, "--cluster-replicas", str(self.replicas),
             "--cluster-yes"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            states = [self.client(n).cluster("info")["cluster_state"] for n in self.nodes]
            # A replica that never synced would refuse to take over (its data is too old).
            links = [self.client(n).info("replication").get("master_link_status", "up")
                     for n in self.nodes]  # fmt: skip
            if all(s == "ok" for s in states) and all(link == "up" for link in links):
                return self
            time.sleep(0.05)
        raise TimeoutError("cluster did not reach cluster_state:ok with replicas in sync")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    try:
        yield c.start()
    finally:
        c.stop()


class SentinelProcess:
    """A real redis-sentinel watching ``master`` under the service name ``mymaster``.

    Short ``down_after_ms`` / ``failover_timeout_ms`` let a test see a failover within seconds.
    """

    def __init__(
        self, master: RedisServer, down_after_ms: int = 1000, failover_timeout_ms: int = 180_000
    ) -> None:
        self.master = master
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.dir = Path(tempfile.mkdtemp(prefix="limiter-sentinel-"))
        self.log = self.dir / "sentinel.log"
        start_on_free_ports(self._start)

    def _start(self) -> None:
        self.port = free_port()
        conf = self.dir / "sentinel.conf"  # rewritten by the sentinel: one per start
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
            f"sentinel monitor mymaster 127.0.0.1 {self.master.port} 1\n"
            f"sentinel down-after-milliseconds mymaster {self.down_after_ms}\n"
            f"sentinel failover-timeout mymaster {self.failover_timeout_ms}\n"
        )
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [binary, str(conf), "--sentinel"], stdout=log, stderr=subprocess.STDOUT
            )
        try:
            wait_ready(
                self.proc, self.log, "redis-sentinel", ports=[self.port], line="+monitor master"
            )
        except Exception:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2)

    def master_port(self) -> int:
        return int(self.client().sentinel_get_master_addr_by_name("mymaster")[1])

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def sentinel(own_redis: RedisServer) -> Iterator[SentinelProcess]:
    process = SentinelProcess(own_redis)
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def tls_files() -> Iterator[dict[str, str]]:
    """A throwaway CA and a server certificate for 127.0.0.1, made with openssl."""
    d = Path(tempfile.mkdtemp(prefix="limiter-tls-"))

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=30)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=limiter test CA")  # fmt: skip
    ssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf")  # fmt: skip
    yield {name: str(d / name) for name in ("ca.crt", "server.crt", "server.key")}
    shutil.rmtree(d, ignore_errors=True)
