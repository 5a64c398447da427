"""Automatic batching: concurrent decisions share one pipelined round trip.

Flat combining instead of a timer: a caller that finds fewer than ``depth`` round
trips in flight becomes a leader and sends everything queued; callers arriving while
all leaders are busy queue up and go together in the next round trip, led by the
first of them. A lone caller therefore pays no added delay, under load the batch
grows with the concurrency. ``depth`` > 1 overlaps round trips (measured: no gain
while the client's CPU, not Redis, is the bottleneck, hence the default 1). The
requests of one ``run`` share a round trip, and a caller's next request starts after
its last one ended, so every caller sees its own requests in order.
An optional ``window`` (seconds) makes the leader wait a little to gather more, like
Envoy ratelimit's pipeline window. Asyncio callers enqueue without blocking; a
worker thread leads for them and hands results back to their event loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from _thread import allocate_lock
from collections.abc import Callable
from typing import Any


class Call:
    """One request in a batch; ``flush`` fills ``result`` or ``error``."""

    __slots__ = ("args", "batch", "error", "future", "group", "keys", "result", "slot", "waiter",
                 "width")  # fmt: skip

    def __init__(self, group: Any, keys: Any, args: Any, width: int, slot: int = 0) -> None:
        # Calls with the same group (a Codec) merge into one script run and carry their
        # keys and arguments RESP-encoded; other calls carry a whole command in ``args``.
        self.group = group
        self.keys = keys
        self.args = args
        self.width = width
        self.slot = slot
        self.result: Any = None
        self.error: BaseException | None = None
        self.waiter: Any = None  # lock a blocked caller sleeps on
        self.batch: list[Call] | None = None  # handed to a caller woken up to lead
        self.future: asyncio.Future | None = None


def _resolve(calls: list[Call]) -> None:
    for call in calls:
        fut = call.future
        if fut is not None and not fut.done():
            fut.set_result(None)


class Combiner:
    """Runs ``flush(calls)`` for queued calls, at most ``depth`` round trips at a time."""

    def __init__(
        self, flush: Callable[[list[Call]], None], window: float = 0.0, depth: int = 1
    ) -> None:
        self.flush = flush
        self.window = window
        self.depth = depth
        # Reentrant: a Permit collected by the garbage collector inside a critical section
        # posts its release from this very thread.
        self.mutex = threading.RLock()
        self.queue: list[Call] = []
        self.leaders = 0
        self.batches = 0
        self.worker_batches: list[list[Call]] = []
        self.worker_wake = threading.Semaphore(0)
        self.workers: list[threading.Thread] = []

    def run(self, calls: list[Call]) -> None:
        """Block until every call in ``calls`` has a result or an error."""
        first = calls[0]
        with self.mutex:
            self.queue.extend(calls)
            if self.leaders < self.depth:
                self.leaders += 1
                batch, self.queue = self.queue, []
            else:
                batch = None
                waiter = first.waiter = allocate_lock()
                waiter.acquire()
        if batch is None:
            waiter.acquire()  # released with our results, or with a batch to lead
            batch = first.batch
            if batch is None:
                return
            first.waiter = first.batch = None
        self._lead(batch)

    def submit(self, calls: list[Call], loop: asyncio.AbstractEventLoop) -> asyncio.Future:
        """Queue ``calls`` for an asyncio caller; the future completes when all are done."""
        fut = loop.create_future()
        calls[-1].future = fut
        self.post(calls)
        return fut

    def post(self, calls: list[Call]) -> None:
        """Queue ``calls`` without waiting for them (e.g. lease releases); never blocks."""
        with self.mutex:
            self.queue.extend(calls)
            if self.leaders < self.depth:
                self.leaders += 1
                batch, self.queue = self.queue, []
            else:
                batch = None
        if batch is not None:
            self._hand_to_worker(batch)

    def _hand_to_worker(self, batch: list[Call]) -> None:
        if len(self.workers) < self.depth:
            worker = threading.Thread(target=self._work, name="limiter-redis", daemon=True)
            self.workers.append(worker)
            worker.start()
        self.worker_batches.append(batch)
        self.worker_wake.release()

    def _work(self) -> None:
        while True:
            self.worker_wake.acquire()
            self._lead(self.worker_batches.pop(0))

    def _lead(self, batch: list[Call]) -> None:
        if self.window > 0:
            time.sleep(self.window)
            with self.mutex:
                batch += self.queue
                self.queue = []
        try:
            self.flush(batch)
        except BaseException as exc:  # handed to every caller, never lost
            for call in batch:
                if call.result is None and call.error is None:
                    call.error = exc
        self.batches += 1
        # Hand the lead on before waking this batch's callers, so that the next round
        # trip goes out while they run.
        with self.mutex:
            nxt = self.queue[0] if self.queue else None
            if nxt is None:
                self.leaders -= 1
            else:
                following, self.queue = self.queue, []
        if nxt is not None:
            if nxt.waiter is not None:
                nxt.batch = following
                nxt.waiter.release()
            else:
                self._hand_to_worker(following)
        loops: dict[asyncio.AbstractEventLoop, list[Call]] = {}
        for call in batch:
            if call.waiter is not None:
                call.waiter.release()
            elif call.future is not None:
                loops.setdefault(call.future.get_loop(), []).append(call)
        for loop, calls in loops.items():
            loop.call_soon_threadsafe(_resolve, calls)
