"""An asyncio event loop that sends batched I/O when it is about to wait.

A Redis round trip costs the sender about the same CPU whether it carries one request or
thirty, so requests that arrive close together should share one. A fixed batch window buys
that with latency at every load, and asyncio's selector waits in whole milliseconds, so
even a short window lasts about 1 ms. This loop's selector runs the flushes of waiting
batches instead when the loop has nothing left to do (it is about to block): an idle
loop sends each request at once, and a busy loop, whose requests arrive while it works,
sends them together after the work already queued. A loop that stays busy still flushes
once the oldest waiting request is ``BUSY_DELAY`` old. Redis itself writes replies the
same way, just before it sleeps.

``new_event_loop`` makes such a loop (``asyncio.Runner(loop_factory=new_event_loop)``);
``flusher_of(loop)`` is its hook, or None for any other loop, whose callers then send at once.
"""

from __future__ import annotations

import asyncio
import selectors
import time
from collections.abc import Callable
from weakref import WeakKeyDictionary

__all__ = ["BUSY_DELAY", "IdleFlusher", "flusher_of", "new_event_loop"]

# The longest a request waits for a loop that never runs out of work.
BUSY_DELAY = 0.0005
# The longest wait right after flushes (see ``select``).
RECHECK = 0.001

_FLUSHERS: WeakKeyDictionary[asyncio.AbstractEventLoop, IdleFlusher] = WeakKeyDictionary()


class IdleFlusher(selectors.DefaultSelector):  # type: ignore[misc, valid-type]
    """The loop's selector: runs the flushes deferred since it last waited, before waiting."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.clock = clock
        self.pending: list[Callable[[], None]] = []
        self.since = 0.0

    def defer(self, flush: Callable[[], None]) -> None:
        """Run ``flush`` once, when the loop is next about to wait (or busy too long).
        The caller defers each batch once (it keeps its own "deferred" flag); ``flush``
        must not raise (it runs inside the loop's selector)."""
        if not self.pending:
            self.since = self.clock()
        self.pending.append(flush)

    def select(self, timeout: float | None = None) -> list:
        if self.pending and (
            timeout is None or timeout > 0 or self.clock() - self.since >= BUSY_DELAY
        ):
            flushes, self.pending = self.pending, []
            for flush in flushes:
                flush()
            # A flush that fails completes futures, whose callbacks the loop sees only after
            # this wait: bound it (a flush that sends just waits for the reply, as before).
            timeout = RECHECK if timeout is None else min(timeout, RECHECK)
        return super().select(timeout)


def new_event_loop(clock: Callable[[], float] = time.monotonic) -> asyncio.AbstractEventLoop:
    """A selector event loop whose waits first send the batches deferred to them."""
    flusher = IdleFlusher(clock)
    loop = asyncio.SelectorEventLoop(flusher)
    _FLUSHERS[loop] = flusher
    return loop


def flusher_of(loop: asyncio.AbstractEventLoop) -> IdleFlusher | None:
    """The idle hook of a loop made by ``new_event_loop``, else None."""
    return _FLUSHERS.get(loop)
