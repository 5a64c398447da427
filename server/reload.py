"""Config hot reload, off the decision loop: on file change (polled) and on demand (SIGHUP).

A thread watches the config path; a change (or ``request()``) loads and validates the
new config and builds its rule states there, then hands the result to ``apply``. A
reload that fails validation keeps the last good config serving; the failure is logged
with the ConfigError message and counted (``limiter_config_reloads{result="error"}``,
``limiter_config_last_reload_successful`` = 0).
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from limiter.server.metrics import Metrics

from limiter import config as rules
from limiter.courtesy import courteous

log = logging.getLogger("limiter.server")


# A file's identity and version: a change (a renewed certificate too) replaces or rewrites it.
Stamp = tuple[int, int, int]


def stamp(path: str | os.PathLike[str]) -> Stamp | None:
    """The inode, size and mtime of ``path``, or None when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def fingerprint(path: str | os.PathLike[str]) -> tuple[tuple[str, Stamp | None], ...]:
    """What changes when the config changes: the stamp of each file (and of a directory,
    as gaining or losing files changes its own)."""
    files = rules.config_files(path)
    if Path(path).is_dir():
        files.append(Path(path))
    return tuple((str(f), stamp(f)) for f in files)


class Reloader:
    """Watches ``path`` on its own thread; ``apply(config)`` swaps a valid new config in
    (called on the reloader's thread; it must be safe there)."""

    def __init__(
        self,
        path: str,
        apply: Callable[[rules.Config], None],
        metrics: Metrics,
        *,
        interval: float = 1.0,
    ) -> None:
        self.path = path
        self.apply = apply
        self.metrics = metrics
        self.interval = interval
        self._seen = fingerprint(path)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="limiter-reload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def request(self) -> None:
        """Reload soon (safe from a signal handler)."""
        self._wake.set()

    def _run(self) -> None:
        with courteous():  # reading a large config never holds up the decision loop
            self._watch()

    def _watch(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            # Cleared only when seen set: a request that lands as the wait times out is
            # kept for the next round instead of being cleared unseen.
            forced = self._wake.is_set()
            if forced:
                self._wake.clear()
            if self._stop.is_set():
                return
            seen = fingerprint(self.path)
            if forced or seen != self._seen:
                self._seen = seen
                self.reload("signal" if forced else "file change")

    def reload(self, reason: str) -> None:
        """Load, validate and apply the config; keeps the old one on any error."""
        # No cyclic GC while the config is read and built: its many short-lived objects
        # would trigger collections, each a pause of every thread (the decision loop's too).
        gc.disable()
        try:
            config = rules.load(self.path)
            self.apply(config)
        except Exception as exc:
            # Logged before the metrics move: whoever sees the metric finds the reason.
            log.error(
                "config reload failed; keeping the last good config",
                extra={"fields": {"reason": reason, "path": self.path, "error": str(exc)}},
            )
            self.metrics.config_reloads.labels("error").inc()
            self.metrics.config_ok.set(0)
            return
        finally:
            gc.enable()
        self.metrics.config_reloads.labels("success").inc()
        self.metrics.config_ok.set(1)
        self.metrics.config_loaded_at.set_to_current_time()
        log.info(
            "config reloaded",
            extra={"fields": {"reason": reason, "path": self.path, "rules": len(config.rules)}},
        )
