"""``--workers N``: N service processes sharing the gRPC and HTTP ports (SO_REUSEPORT).

The supervisor starts each worker as ``limiter serve ... --workers 1 --reuse-port``
(a fresh interpreter: gRPC does not survive fork), forwards SIGTERM/SIGINT (drain)
and SIGHUP (reload) to all of them, restarts a worker that dies unexpectedly (at most
once a second), and exits when every worker has stopped. The kernel spreads new
connections across the workers; they share limits through the Redis backend, and
publish their metrics to a shared directory so a scrape of any of them covers all
(``metrics.SharedMetrics``).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

log = logging.getLogger("limiter.server")


def supervise(n: int, argv: Sequence[str]) -> int:
    command = [sys.executable, "-m", "limiter.server.cli", *argv, "--workers", "1", "--reuse-port"]
    workers: dict[int, subprocess.Popen[bytes]] = {}
    stopping = False
    # Where workers publish their metrics so any of them can answer /metrics for all.
    stats = tempfile.TemporaryDirectory(prefix="limiter-workers-")

    def spawn(index: int) -> None:
        env = {**os.environ, "LIMITER_WORKER": str(index), "LIMITER_STATS_DIR": stats.name}
        workers[index] = subprocess.Popen(command, env=env)
        log.info("worker started", extra={"fields": {"worker": index, "child": workers[index].pid}})

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for proc in workers.values():
            if proc.poll() is None:
                proc.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    for index in range(n):
        spawn(index)
    last_restart = 0.0
    while True:
        alive = 0
        for index, proc in list(workers.items()):
            code = proc.poll()
            if code is None:
                alive += 1
            elif not stopping and time.monotonic() - last_restart >= 1.0:
                log.error(
                    "worker died; restarting", extra={"fields": {"worker": index, "code": code}}
                )
                last_restart = time.monotonic()
                spawn(index)
                alive += 1
            elif not stopping:
                alive += 1  # restart on a later pass
        if stopping and alive == 0:
            stats.cleanup()
            return 0
        time.sleep(0.1)
