"""Structured logs: one JSON object per line on stderr.

Call sites pass machine-readable context as ``extra={"fields": {...}}``; every line
carries time, level, logger, message and pid (workers share one stream). Libraries'
warnings and errors (asyncio, gRPC) come out the same way. A line identical to
``REPEAT_BURST`` others of the last ``REPEAT_WINDOW`` seconds (same logger, level,
message, fields and exception type) is dropped; the next one let through says how many were
(``"suppressed"``), so a fault repeating thousands of times a second costs a few lines.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time

REPEAT_BURST = 5
REPEAT_WINDOW = 10.0
# Distinct lines tracked at once (beyond, the tracking starts over).
REPEAT_KEYS = 1024


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": os.getpid(),
        }
        doc.update(getattr(record, "fields", None) or {})
        suppressed = getattr(record, "suppressed", 0)
        if suppressed:
            doc["suppressed"] = suppressed
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class Repeats(logging.Filter):
    """Lets through at most ``REPEAT_BURST`` identical lines per ``REPEAT_WINDOW`` seconds
    (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: dict[tuple[str, int, str, str], list[float]] = {}  # [start, sent, dropped]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else ""
        fields = getattr(record, "fields", None)
        text = record.getMessage() if not fields else f"{record.getMessage()} {fields}"
        key = (record.name, record.levelno, text, error)
        now = time.monotonic()
        with self._lock:
            seen = self._seen.get(key)
            if seen is None or now - seen[0] >= REPEAT_WINDOW:
                if len(self._seen) >= REPEAT_KEYS:
                    self._seen.clear()
                if seen is not None and seen[2]:
                    record.suppressed = int(seen[2])
                self._seen[key] = [now, 1, 0]
                return True
            if seen[1] < REPEAT_BURST:
                seen[1] += 1
                return True
            seen[2] += 1
            return False


def setup(level: str) -> None:
    """JSON lines on stderr: the ``limiter`` loggers at ``level``, other libraries'
    warnings and errors; repeated lines dropped (``Repeats``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(Repeats())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    own = logging.getLogger("limiter")
    own.handlers[:] = []
    own.setLevel(level.upper())
    own.propagate = True


def serving_ports(line: str) -> dict[str, int] | None:
    """The ports a ``limiter serve`` log line says it serves on (``{"grpc": n, "http": n}``),
    or None for any other line. Started with port 0, the service binds free ports and
    this line is how a parent process learns which."""
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    if (
        not isinstance(doc, dict)
        or doc.get("msg") != "serving"
        or doc.get("logger") != "limiter.server"
    ):
        return None
    return {"grpc": int(doc["grpc"]), "http": int(doc["http"])}
