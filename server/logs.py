"""Structured logs: one JSON object per line on stderr.

Call sites pass machine-readable context as ``extra={"fields": {...}}``; every line
carries time, level, logger, message and pid (workers share one stream).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import IO


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
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def setup(level: str = "info", stream: IO[str] | None = None) -> None:
    """Route the ``limiter`` loggers to JSON lines at ``level``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("limiter")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
