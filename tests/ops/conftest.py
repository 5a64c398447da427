"""Fixtures of the ops area: a hand-driven clock and a real local webhook receiver."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


class Clock:
    """Integer nanoseconds that move only when the test says so."""

    def __init__(self, start: int = 1_000_000_000_000) -> None:
        self.now = start

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1e9)


@pytest.fixture
def clock() -> Clock:
    return Clock()


class Receiver:
    """A real HTTP server on 127.0.0.1 recording webhook POSTs.

    ``mode``: "ok" answers 200, "fail" answers 500, "slow" sleeps ``delay`` seconds
    before answering 200; ``fail_first`` answers 500 to the first N requests.
    """

    def __init__(self) -> None:
        self.mode = "ok"
        self.delay = 1.0
        self.fail_first = 0
        self.requests: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.cond:
                    n = len(receiver.requests)
                    receiver.requests.append(
                        {"body": body, "headers": dict(self.headers), "at": time.monotonic()}
                    )
                    receiver.cond.notify_all()
                if receiver.mode == "slow":
                    time.sleep(receiver.delay)
                failing = receiver.mode == "fail" or n < receiver.fail_first
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def wait_for(self, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        with self.cond:
            self.cond.wait_for(lambda: len(self.requests) >= n, timeout)
            return list(self.requests)

    def payloads(self) -> list[dict[str, Any]]:
        return [json.loads(r["body"]) for r in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()
