"""Config hot reload: on file change (polled) and on demand (SIGHUP).

A reload that fails validation keeps the last good config serving; the failure is
logged with the ConfigError message and counted (``limiter_config_reloads{result=
"error"}``, ``limiter_config_last_reload_successful`` = 0). Other modules that own
config sections subscribe to receive each new ``Config`` after it is swapped in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

from limiter.server.engine import Engine
from limiter.server.metrics import Metrics

from limiter import config as rules

log = logging.getLogger("limiter.server")


def fingerprint(path: str | os.PathLike[str]) -> tuple[tuple[str, int, int, int], ...]:
    """What changes when the config changes: name, inode, size and mtime of each file."""
    out = []
    for f in rules.config_files(path):
        try:
            st = f.stat()
        except OSError:
            continue
        out.append((str(f), st.st_ino, st.st_size, st.st_mtime_ns))
    try:
        # A directory gaining or losing files changes its own mtime.
        st = Path(path).stat()
        out.append((str(path), st.st_ino, 0, st.st_mtime_ns if Path(path).is_dir() else 0))
    except OSError:
        pass
    return tuple(out)


class Reloader:
    """Watches ``path`` and swaps valid new configs into ``engine``."""

    def __init__(
        self, path: str, engine: Engine, metrics: Metrics, *, interval: float = 1.0
    ) -> None:
        self.path = path
        self.engine = engine
        self.metrics = metrics
        self.interval = interval
        self.listeners: list[Callable[[rules.Config], None]] = []
        self._seen = fingerprint(path)
        self._wake = asyncio.Event()

    def subscribe(self, listener: Callable[[rules.Config], None]) -> None:
        """Call ``listener(config)`` after every successful reload."""
        self.listeners.append(listener)

    def request(self) -> None:
        """Reload soon (signal-safe: called from the loop's signal handler)."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            # Read and clear with no await between: a request that lands as the wait times
            # out is still seen (reading "forced" from the timeout lost such a SIGHUP).
            forced = self._wake.is_set()
            self._wake.clear()
            seen = fingerprint(self.path)
            if forced or seen != self._seen:
                self._seen = seen
                self.reload("signal" if forced else "file change")

    def reload(self, reason: str) -> bool:
        """Load, validate and swap in the config; keeps the old one on any error."""
        try:
            config = rules.load(self.path)
            self.engine.reload(config)
        except Exception as exc:
            self.metrics.config_reloads.labels("error").inc()
            self.metrics.config_ok.set(0)
            log.error(
                "config reload failed; keeping the last good config",
                extra={"fields": {"reason": reason, "path": self.path, "error": str(exc)}},
            )
            return False
        self.metrics.config_reloads.labels("success").inc()
        self.metrics.config_ok.set(1)
        self.metrics.config_loaded_at.set_to_current_time()
        log.info(
            "config reloaded",
            extra={"fields": {"reason": reason, "path": self.path, "rules": len(config.rules)}},
        )
        for listener in self.listeners:
            try:
                listener(config)
            except Exception:
                log.exception("config listener failed", extra={"fields": {"path": self.path}})
        return True
