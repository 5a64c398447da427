"""Queued admission: wait for a limiter's permit in priority order, never past a deadline.

Why: refusing a burst outright wastes capacity the backend would have a moment later
(the brief's "delay" behaviour). An ``AdmissionQueue`` sits in front of anything that
answers ``acquire(key, cost) -> Decision``. A request the limiter refuses waits in a
bounded per-class queue (the ``PriorityQueue`` kernel, one per key with waiters) and is
admitted, most important first (strict or weighted), as soon as the limiter lets it
pass: when the refusal's ``retry_after`` has elapsed, or when a permit is released. A
full class is refused at once (``QueueFull``); a request whose deadline passes while it
waits gets ``DeadlineExceeded`` ("busy"), never late service.

Waiting is pull-based: whoever touches the queue (a new request, a released permit,
a timer, or ``poll()``) serves what is due, under one short lock that never spans a
wait, so neither threads nor the event loop block on each other. Timers fire at the
next retry time or deadline: a ``call_later`` on each event loop with waiters, and one
lazily started thread while threads are blocked in ``acquire``. With a manual clock
pass ``auto_poll=False`` and drive the queue with ``poll()`` / ``next_wake()``.

Cancellation: a cancelled task (or interrupted thread) leaves the queue; if it had just
been admitted, its permit is released. Tokens a rate limiter granted are not refunded.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import heapq
import itertools
import logging
import math
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from limiter._core import Decision, PriorityQueue
from limiter.errors import InvalidParameter, LimiterError, RateLimited

__all__ = [
    "WAIT_BUCKETS",
    "AdmissionQueue",
    "DeadlineExceeded",
    "QueueFull",
    "QueuedPermit",
]

log = logging.getLogger(__name__)

# Upper bounds (seconds) of the wait-time histogram; a last bucket counts the rest.
WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A refusal without retry_after (e.g. a concurrency limit) is normally lifted by a
# release, which wakes the queue; this recheck covers capacity freed elsewhere.
RECHECK_NS = 20_000_000
# The timer thread exits after this long with nothing to wait for.
TIMER_IDLE_S = 5.0
MAX_WAIT_S = 10.0 * 366 * 86400

_WAITING, _ADMITTED, _EXPIRED, _FAILED, _CANCELLED = range(5)


class QueueFull(RateLimited):
    """Refused at once: the request's priority class is full (or too many keys wait)."""

    def __init__(self, decision: Any, priority: int, message: str | None = None) -> None:
        self.priority = priority
        self.waited = 0.0
        super().__init__(decision, message or f"admission queue full for priority {priority}")


class DeadlineExceeded(RateLimited):
    """Busy: the request's deadline passed before it was admitted; it was not served."""

    def __init__(self, decision: Any, priority: int, waited: float, message: str = "") -> None:
        self.priority = priority
        self.waited = waited
        super().__init__(
            decision, message or f"busy: not admitted within {waited:.3f}s (priority {priority})"
        )


class QueuedPermit:
    """A releasable admission (e.g. a ``ConcurrencyLimit`` permit) obtained through a queue.

    Giving it back (``release()``, leaving ``with`` / ``async with``, or dropping it)
    frees the slot and wakes the next waiter. Leaving a block goes through the permit's
    own ``__exit__``, so an adaptive permit still reports the outcome; a dropped one is
    finalised by its own rules. Other attributes are the wrapped ``permit``'s; calling
    one of its methods (``success()``, ``dropped()``, ...) may free capacity too, so it
    also wakes the queue.
    """

    __slots__ = ("_key", "_queue", "_released", "permit")

    def __init__(self, permit: Any, queue: AdmissionQueue, key: str) -> None:
        self.permit = permit
        self._queue = queue
        self._key = key
        self._released = False

    def release(self) -> None:
        """Give the slot back and wake the next waiter; idempotent."""
        if not self._released:
            self._released = True
            try:
                self.permit.release()
            finally:
                self._queue._notify(self._key)

    @property
    def released(self) -> bool:
        return self._released or bool(getattr(self.permit, "released", False))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "permit":
            raise AttributeError(name)
        value = getattr(self.permit, name)
        if not callable(value) or name in ("as_dict", "as_tuple"):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return value(*args, **kwargs)
            finally:
                self._queue._notify(self._key)

        return call

    def __bool__(self) -> bool:
        return bool(self.permit)

    def __enter__(self) -> QueuedPermit:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if self._released:
            return False
        self._released = True
        try:
            leave = getattr(self.permit, "__exit__", None)
            if leave is None:
                self.permit.release()
                return False
            return bool(leave(exc_type, exc, tb))
        finally:
            self._queue._notify(self._key)

    async def __aenter__(self) -> QueuedPermit:
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        return self.__exit__(exc_type, exc, tb)

    def __del__(self) -> None:
        if not self._released:
            self._released = True
            # Dropping our reference lets the permit's own finaliser give the slot back
            # (without inventing an outcome); then the next waiter can have it.
            self.permit = None
            self._queue._notify(self._key)

    def __repr__(self) -> str:
        return f"QueuedPermit({self.permit!r}, released={self.released})"


class _Waiter:
    __slots__ = (
        "cost",
        "deadline",
        "enqueued",
        "future",
        "gate",
        "item",
        "key",
        "lane",
        "loop_thread",
        "priority",
        "state",
        "value",
        "waited",
    )

    def __init__(self, key: str, cost: int, priority: int, deadline: int | None, now: int):
        self.key = key
        self.cost = cost
        self.priority = priority
        self.deadline = deadline
        self.enqueued = now
        self.state = _WAITING
        self.value: Any = None
        self.waited = 0.0
        self.gate: Any = None
        self.future: asyncio.Future[None] | None = None
        self.loop_thread = 0
        self.item = -1
        self.lane: _Lane | None = None


class _Lane:
    """The waiters of one key: they share the limiter's state, so they are served in order."""

    __slots__ = ("key", "queue", "refusal", "retry_at", "waiters", "wake")

    def __init__(self, key: str, queue: PriorityQueue) -> None:
        self.key = key
        self.queue = queue
        self.waiters: dict[int, _Waiter] = {}
        self.refusal: Any = None
        self.retry_at: int | None = None
        self.wake: int | None = None


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class AdmissionQueue:
    """Hold requests a limiter refuses and admit them by priority before their deadline.

    ``limiter`` is anything with ``acquire(key, cost) -> Decision`` (TokenBucket,
    LeakyBucket, windows, ConcurrencyLimit, adaptive limiters); give it the same clock.
    Priority 0 is the most important. ``weights=None`` serves strictly by priority
    over ``classes`` classes; ``weights=(3, 2, 1)`` serves 3, 2 and 1 per turn so no
    class starves. ``max_queue`` bounds each class per key (int, or one per class);
    ``max_keys`` bounds how many keys may have waiters. ``lifo=True`` serves the
    freshest request of a class first. ``max_wait`` (seconds, None = unbounded) caps
    every wait; a call's ``timeout`` (seconds) or ``deadline`` (clock ns) may shorten it.

    ``acquire`` blocks the calling thread; ``acquire_async`` awaits. Both return the
    limiter's Decision (a releasable one wrapped as ``QueuedPermit``) or raise
    ``QueueFull`` / ``DeadlineExceeded`` (both ``RateLimited``); ``admit_async`` also
    returns the seconds waited, and ``waiting(key)`` says whether a newcomer would queue.

    The limiter is called inline under the queue's short lock, so it should be an
    in-process one: a shared backend's network round trip would hold the lock (and, from
    ``acquire_async``, the event loop) for its duration.
    """

    def __init__(
        self,
        limiter: Any,
        *,
        weights: Sequence[int] | None = None,
        classes: int | None = None,
        max_queue: int | Sequence[int] = 100,
        lifo: bool = False,
        max_wait: float | None = 1.0,
        clock: Callable[[], int] | None = None,
        max_keys: int = 10_000,
        auto_poll: bool = True,
        wait_buckets: Sequence[float] = WAIT_BUCKETS,
    ) -> None:
        if not callable(getattr(limiter, "acquire", None)):
            raise InvalidParameter(
                f"limiter must have acquire(key, cost) -> Decision, got {limiter!r:.80}"
            )
        if clock is not None and not callable(clock):
            raise InvalidParameter(f"clock must be a callable returning int ns, got {clock!r}")
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
            raise InvalidParameter(f"max_keys must be a positive int, got {max_keys!r}")
        self._kernel_args = {"weights": weights, "classes": classes, "lifo": lifo}
        self._max_queue = max_queue
        # Builds one kernel up front so bad weights/classes/max_queue fail here.
        try:
            proto = self._new_kernel()
        except InvalidParameter as exc:
            # The kernel calls the bound "capacity"; here the caller wrote max_queue.
            msg = str(exc).replace("capacities", "max_queue entries")
            raise InvalidParameter(msg.replace("capacity", "max_queue")) from None
        self.limiter = limiter
        self.classes: int = proto.classes
        self.weights: tuple[int, ...] | None = proto.weights
        self.max_queue: tuple[int, ...] = proto.capacity
        self.lifo = bool(lifo)
        self.max_wait = _check_max_wait(max_wait)
        self._max_wait_ns = None if self.max_wait is None else round(self.max_wait * 1e9)
        self.max_keys = max_keys
        self.wait_buckets = _check_buckets(wait_buckets)
        self._clock = clock if clock is not None else time.monotonic_ns
        self._auto_poll = bool(auto_poll)
        self._lock = threading.Lock()
        self._lanes: dict[str, _Lane] = {}
        self._wakes: list[tuple[int, int, _Lane]] = []
        self._seq = itertools.count()
        self._notes: deque[str] = deque()
        self._releasable: dict[type, bool] = {}
        self._closed = False
        n, nb = self.classes, len(self.wait_buckets) + 1
        self._depth = [0] * n
        self._admitted = [0] * n
        self._rejected = [0] * n
        self._expired = [0] * n
        self._cancelled = [0] * n
        self._wait_counts = [[0] * nb for _ in range(n)]
        self._wait_sum = [0.0] * n
        # Who waits, so the right timers run: blocked threads need the timer thread;
        # each event loop with waiters gets a loop timer (no thread, no GIL hand-off).
        self._blocking = 0
        self._loops: dict[asyncio.AbstractEventLoop, list[int]] = {}  # loop -> [waiters, thread]
        self._loop_at: dict[asyncio.AbstractEventLoop, int] = {}
        self._loop_handles: dict[asyncio.AbstractEventLoop, asyncio.TimerHandle] = {}
        self._timer_cond = threading.Condition(threading.Lock())
        self._timer_at: int | None = None
        self._timer_thread: threading.Thread | None = None

    # --- public API -------------------------------------------------------------

    def acquire(
        self,
        key: str = "",
        cost: int = 1,
        *,
        priority: int = 0,
        timeout: float | None = None,
        deadline: int | None = None,
    ) -> Any:
        """Wait (blocking this thread) until admitted; returns the limiter's Decision."""
        entered = self._enter(key, cost, priority, timeout, deadline, None)
        if type(entered) is not _Waiter:
            return entered
        w = entered
        try:
            while not w.gate.acquire(timeout=self._gate_timeout(w)):
                self.poll()
        except BaseException:
            self._abandon(w)
            raise
        return self._outcome(w)

    async def acquire_async(
        self,
        key: str = "",
        cost: int = 1,
        *,
        priority: int = 0,
        timeout: float | None = None,
        deadline: int | None = None,
    ) -> Any:
        """Await admission without blocking the event loop; returns the limiter's Decision."""
        entered = self._enter(key, cost, priority, timeout, deadline, asyncio.get_running_loop())
        if type(entered) is not _Waiter:
            return entered
        return await self._settled(entered)

    async def admit_async(
        self,
        key: str = "",
        cost: int = 1,
        *,
        priority: int = 0,
        timeout: float | None = None,
        deadline: int | None = None,
    ) -> tuple[Any, float]:
        """``acquire_async`` that also says how long the request waited (seconds).

        The wait is measured on the queue's clock up to the admission decision, so it
        never exceeds the request's deadline (the caller's task may resume a little later).
        """
        entered = self._enter(key, cost, priority, timeout, deadline, asyncio.get_running_loop())
        if type(entered) is not _Waiter:
            return entered, 0.0
        return await self._settled(entered), entered.waited

    def waiting(self, key: str) -> bool:
        """True if requests for ``key`` are queued (a newcomer would line up behind them)."""
        return key in self._lanes

    def poll(self) -> int:
        """Serve everything due now (retries, expiries, releases); returns requests resolved."""
        resolved = 0
        try:
            with self._lock:
                now = self._clock()
                wakes = self._wakes
                while wakes and wakes[0][0] <= now:
                    at, _, lane = heapq.heappop(wakes)
                    if lane.wake == at and self._lanes.get(lane.key) is lane:
                        lane.wake = None
                        resolved += self._dispatch(lane, now)
        finally:
            self._after_unlock()
        return resolved

    def next_wake(self) -> int | None:
        """Clock time (ns) at which ``poll`` next has work, or None when nothing waits."""
        with self._lock:
            self._drop_stale_wakes()
            return self._wakes[0][0] if self._wakes else None

    def depth(self, priority: int | None = None) -> int:
        """Requests waiting in class ``priority`` (all classes if None), across keys."""
        if priority is None:
            return sum(self._depth)
        return self._depth[self._check_priority(priority)]

    def __len__(self) -> int:
        return sum(self._depth)

    @property
    def admitted(self) -> tuple[int, ...]:
        """Per class: requests admitted (at once or after waiting)."""
        return tuple(self._admitted)

    @property
    def rejected(self) -> tuple[int, ...]:
        """Per class: requests refused at once because the class (or key table) was full."""
        return tuple(self._rejected)

    @property
    def expired(self) -> tuple[int, ...]:
        """Per class: requests answered busy because their deadline passed."""
        return tuple(self._expired)

    @property
    def cancelled(self) -> tuple[int, ...]:
        """Per class: waiting requests whose caller gave up (task cancelled, interrupt)."""
        return tuple(self._cancelled)

    def wait_counts(self, priority: int) -> tuple[int, ...]:
        """Admissions of class ``priority`` per wait bucket (non-cumulative, +Inf last)."""
        return tuple(self._wait_counts[self._check_priority(priority)])

    def wait_sum(self, priority: int) -> float:
        """Total seconds waited by admitted requests of class ``priority``."""
        return self._wait_sum[self._check_priority(priority)]

    def stats(self) -> dict[str, Any]:
        """Snapshot of every metric, per class, for publishing."""
        with self._lock:
            return {
                "depth": list(self._depth),
                "admitted": list(self._admitted),
                "rejected": list(self._rejected),
                "expired": list(self._expired),
                "cancelled": list(self._cancelled),
                "wait_buckets": list(self.wait_buckets),
                "wait_counts": [list(c) for c in self._wait_counts],
                "wait_sum": list(self._wait_sum),
                "keys_waiting": len(self._lanes),
            }

    def close(self) -> None:
        """Answer every waiter busy, refuse new requests, and stop the timer thread."""
        try:
            with self._lock:
                self._closed = True
                now = self._clock()
                for lane in list(self._lanes.values()):
                    for w in list(lane.waiters.values()):
                        lane.queue.remove(w.item)
                        self._resolve(w, _EXPIRED, self._refusal(lane, now), now)
                    lane.waiters.clear()
                self._lanes.clear()
                self._wakes.clear()
        finally:
            self._after_unlock()
        with self._timer_cond:
            self._timer_cond.notify()

    def __enter__(self) -> AdmissionQueue:
        return self

    def __exit__(self, *exc: object) -> bool:
        self.close()
        return False

    def __repr__(self) -> str:
        mode = "strict" if self.weights is None else f"weights={self.weights}"
        return (
            f"AdmissionQueue({self.limiter!r}, classes={self.classes}, {mode}, "
            f"max_queue={self.max_queue}, lifo={self.lifo}, max_wait={self.max_wait!r})"
        )

    # --- entering and leaving ------------------------------------------------------

    def _enter(
        self,
        key: str,
        cost: int,
        priority: int,
        timeout: float | None,
        deadline: int | None,
        loop: asyncio.AbstractEventLoop | None,
    ) -> Any:
        """Admit at once, refuse at once, or return a queued ``_Waiter``."""
        c = priority
        if type(c) is not int or not 0 <= c < self.classes:
            c = self._check_priority(priority)
        if not isinstance(key, str):
            raise InvalidParameter(f"key must be a str, got {type(key).__name__}: {key!r:.80}")
        if isinstance(cost, bool) or not isinstance(cost, int) or cost < 1:
            raise InvalidParameter(f"cost must be a positive int, got {cost!r}")
        if timeout is not None or deadline is not None:
            _check_deadline_args(timeout, deadline)
        try:
            with self._lock:
                if self._closed:
                    raise LimiterError("admission queue is closed")
                now = self._clock()
                lane = self._lanes.get(key)
                fresh = lane is None
                if lane is None:
                    decision = self.limiter.acquire(key, cost)
                    if decision.allowed:
                        self._admitted[c] += 1
                        self._wait_counts[c][0] += 1
                        if self._releasable.get(type(decision)) is False:
                            return decision
                        return self._wrap(decision, key)
                    due = self._deadline(now, timeout, deadline)
                    if due is not None and due <= now:
                        self._expired[c] += 1
                        raise DeadlineExceeded(decision, c, 0.0)
                    if len(self._lanes) >= self.max_keys:
                        self._rejected[c] += 1
                        raise QueueFull(decision, c, f"admission queue: {self.max_keys} keys wait")
                    lane = _Lane(key, self._new_kernel())
                    self._note_refusal(lane, decision, now)
                else:
                    due = self._deadline(now, timeout, deadline)
                    if due is not None and due <= now:
                        self._expired[c] += 1
                        raise DeadlineExceeded(self._refusal(lane, now), c, 0.0)
                q = lane.queue
                item = q.push(c, due)
                if item < 0:
                    self._rejected[c] += 1
                    raise QueueFull(self._refusal(lane, now), c)
                w = _Waiter(key, cost, c, due, now)
                w.item = item
                w.lane = lane
                if loop is None:
                    w.gate = threading.Lock()
                    w.gate.acquire()
                    self._blocking += 1
                else:
                    w.future = loop.create_future()
                    w.loop_thread = threading.get_ident()
                    count = self._loops.get(loop)
                    if count is None:
                        self._loops[loop] = [1, w.loop_thread]
                    else:
                        count[0] += 1
                lane.waiters[item] = w
                self._depth[c] += 1
                if fresh:
                    self._lanes[key] = lane
                    self._schedule(lane, now)
                elif (
                    lane.retry_at is None
                    or lane.retry_at <= now
                    or q.peek(now) == item
                    or q.expired_pending
                ):
                    # The line may move: the head's refusal is stale, the newcomer is
                    # now first (a more important class, or LIFO), or peek found
                    # waiters whose deadline has passed: they are answered now.
                    self._dispatch(lane, now)
                else:
                    self._schedule(lane, now)  # its deadline may be the lane's next event
                return w
        finally:
            self._after_unlock()

    async def _settled(self, w: _Waiter) -> Any:
        """Await a queued waiter's answer; a cancelled task leaves the queue."""
        try:
            await w.future  # type: ignore[misc]
        except asyncio.CancelledError:
            self._abandon(w)
            raise
        return self._outcome(w)

    def _outcome(self, w: _Waiter) -> Any:
        if w.state == _ADMITTED:
            return w.value
        if w.state == _FAILED:
            raise w.value
        raise DeadlineExceeded(w.value, w.priority, w.waited)

    def _abandon(self, w: _Waiter) -> None:
        """The caller gave up: drop its place, or give back what it was just granted."""
        try:
            with self._lock:
                lane = w.lane
                if w.state == _WAITING and lane is not None:
                    lane.queue.remove(w.item)
                    del lane.waiters[w.item]
                    w.state = _CANCELLED
                    self._gone(w)
                    self._depth[w.priority] -= 1
                    self._cancelled[w.priority] += 1
                    if self._lanes.get(lane.key) is lane:
                        if lane.waiters:
                            # It may have been first in line, holding back the others.
                            self._dispatch(lane, self._clock())
                        else:
                            del self._lanes[lane.key]
                    return
                granted = w.value if w.state == _ADMITTED else None
        finally:
            self._after_unlock()
        if isinstance(granted, QueuedPermit):
            granted.release()

    def _notify(self, key: str) -> None:
        """A permit for ``key`` was released: serve its waiters (now, or via the lock holder)."""
        self._notes.append(key)
        self._drain_notes()

    # --- internals (called with self._lock held unless noted) --------------------

    def _dispatch(self, lane: _Lane, now: int) -> int:
        """Answer the lane's expired waiters, then admit in order while the limiter allows."""
        q, waiters, resolved = lane.queue, lane.waiters, 0
        item = q.pop_expired(now)
        while item >= 0:
            self._resolve(waiters.pop(item), _EXPIRED, self._refusal(lane, now), now)
            resolved += 1
            item = q.pop_expired(now)
        lane.retry_at = None
        item = q.peek(now)
        while item >= 0:
            w = waiters[item]
            try:
                decision = self.limiter.acquire(w.key, w.cost)
            except Exception as exc:
                q.remove(item)
                del waiters[item]
                self._resolve(w, _FAILED, exc, now)
            else:
                if not decision.allowed:
                    self._note_refusal(lane, decision, now)
                    break
                q.pop(now)
                del waiters[item]
                self._resolve(w, _ADMITTED, self._wrap(decision, w.key), now)
            resolved += 1
            item = q.peek(now)
        if waiters:
            self._schedule(lane, now)
        elif self._lanes.get(lane.key) is lane:
            del self._lanes[lane.key]
        return resolved

    def _resolve(self, w: _Waiter, state: int, value: Any, now: int) -> None:
        c = w.priority
        w.state = state
        w.value = value
        w.waited = (now - w.enqueued) / 1e9
        self._depth[c] -= 1
        self._gone(w)
        if state == _ADMITTED:
            self._admitted[c] += 1
            self._record_wait(c, w.waited)
        elif state == _EXPIRED:
            self._expired[c] += 1
        if w.gate is not None:
            w.gate.release()
            return
        future = w.future
        assert future is not None
        if threading.get_ident() == w.loop_thread:
            _set_done(future)
            return
        # If its loop is closed nobody reads the answer; a permit in it is released when
        # the waiter is garbage-collected.
        with contextlib.suppress(RuntimeError):
            future.get_loop().call_soon_threadsafe(_set_done, future)

    def _gone(self, w: _Waiter) -> None:
        """``w`` stopped waiting: update who the timers serve."""
        if w.gate is not None:
            self._blocking -= 1
            return
        assert w.future is not None
        loop = w.future.get_loop()
        count = self._loops[loop]
        count[0] -= 1
        if count[0] == 0:
            # A timer already set there fires once more, finding nothing to do.
            del self._loops[loop]
            self._loop_at.pop(loop, None)
            self._loop_handles.pop(loop, None)

    def _note_refusal(self, lane: _Lane, decision: Any, now: int) -> None:
        lane.refusal = decision
        ns = round(decision.retry_after * 1e9)
        lane.retry_at = now + (ns if ns > 0 else RECHECK_NS)

    def _refusal(self, lane: _Lane, now: int) -> Any:
        """What to tell a refused request: the lane's last refusal, retry_after from now."""
        last = lane.refusal
        retry = max(0, (lane.retry_at or now) - now) / 1e9
        if last is None:
            return Decision(False, 0, 0, retry, retry)
        return Decision(False, last.limit, last.remaining, last.reset_after, retry)

    def _schedule(self, lane: _Lane, now: int) -> None:
        """Remember when this lane next needs attention (a retry or the first deadline)."""
        wake = lane.retry_at
        first = lane.queue.next_deadline()
        if first >= 0 and (wake is None or first < wake):
            wake = first
        if wake == lane.wake:
            return
        lane.wake = wake
        if wake is None:
            return
        wakes = self._wakes
        if len(wakes) > 64 + 4 * len(self._lanes):
            # Mostly stale entries: rebuild in place (poll may be iterating this list).
            live = [ln for ln in self._lanes.values() if ln.wake is not None]
            wakes[:] = [(ln.wake, next(self._seq), ln) for ln in live]
            heapq.heapify(wakes)
            if self._lanes.get(lane.key) is not lane:
                heapq.heappush(wakes, (wake, next(self._seq), lane))
        else:
            heapq.heappush(wakes, (wake, next(self._seq), lane))

    def _drop_stale_wakes(self) -> None:
        wakes = self._wakes
        while wakes:
            at, _, lane = wakes[0]
            if lane.wake == at and self._lanes.get(lane.key) is lane:
                return
            heapq.heappop(wakes)

    def _after_unlock(self) -> None:
        """Run after releasing the lock: pending releases, then (re)arm the timer."""
        if self._notes:
            self._drain_notes()
        else:
            self._rearm()

    def _drain_notes(self) -> None:
        """Serve lanes whose permits were released. Not under the lock: it takes it."""
        while self._notes:
            if not self._lock.acquire(blocking=False):
                return  # the holder drains after releasing (see _after_unlock)
            try:
                now = self._clock()
                while self._notes:
                    lane = self._lanes.get(self._notes.popleft())
                    if lane is not None:
                        self._dispatch(lane, now)
            finally:
                self._lock.release()
        self._rearm()

    def _rearm(self) -> None:
        """Make sure a timer fires by the earliest pending wake time."""
        if not self._auto_poll:
            return
        try:
            at = self._wakes[0][0]  # read without the lock: a stale value only adds a wake-up
        except IndexError:
            return
        if self._blocking and (self._timer_at is None or at < self._timer_at):
            self._arm(at)
        for loop, (_, thread) in list(self._loops.items()):
            armed = self._loop_at.get(loop)
            if armed is None or at < armed:
                self._loop_at[loop] = at
                if thread == threading.get_ident():
                    self._arm_loop(loop, at)
                else:
                    with contextlib.suppress(RuntimeError):  # loop closed: nobody to wake
                        loop.call_soon_threadsafe(self._arm_loop, loop, at)

    def _record_wait(self, c: int, seconds: float) -> None:
        self._wait_counts[c][bisect.bisect_left(self.wait_buckets, seconds)] += 1
        self._wait_sum[c] += seconds

    def _wrap(self, decision: Any, key: str) -> Any:
        kind = type(decision)
        releasable = self._releasable.get(kind)
        if releasable is None:
            releasable = self._releasable[kind] = callable(getattr(decision, "release", None))
        return QueuedPermit(decision, self, key) if releasable else decision

    def _new_kernel(self) -> PriorityQueue:
        return PriorityQueue(self._max_queue, **self._kernel_args)

    def _check_priority(self, priority: int) -> int:
        if (
            isinstance(priority, int)
            and not isinstance(priority, bool)
            and 0 <= priority < self.classes
        ):
            return priority
        raise InvalidParameter(
            f"priority must be an int in [0, {self.classes - 1}], got {priority!r}"
        )

    def _deadline(self, now: int, timeout: float | None, deadline: int | None) -> int | None:
        """The request's deadline in clock ns (None = none): the earliest bound given."""
        due = None if self._max_wait_ns is None else now + self._max_wait_ns
        if timeout is not None and timeout < MAX_WAIT_S:
            t = now + round(timeout * 1e9)
            due = t if due is None else min(due, t)
        if deadline is not None:
            due = deadline if due is None else min(due, deadline)
        return due

    def _gate_timeout(self, w: _Waiter) -> float:
        """How long a blocked thread sleeps before checking the queue itself."""
        if not self._auto_poll:
            return -1  # driven by poll(): wait for it
        if w.deadline is None:
            return TIMER_IDLE_S
        return min(TIMER_IDLE_S, max(0.0, (w.deadline - self._clock()) / 1e9) + 0.05)

    # --- timers ---------------------------------------------------------------------

    def _arm_loop(self, loop: asyncio.AbstractEventLoop, at: int) -> None:
        """In ``loop``'s thread: (re)schedule its timer to poll at ``at``."""
        if self._loop_at.get(loop) != at:
            return  # superseded by an earlier wake time
        old = self._loop_handles.pop(loop, None)
        if old is not None:
            old.cancel()
        delay = max(0.0, (at - self._clock()) / 1e9)
        self._loop_handles[loop] = loop.call_later(delay, self._on_loop_timer, loop, at)

    def _on_loop_timer(self, loop: asyncio.AbstractEventLoop, at: int) -> None:
        if self._loop_at.get(loop) == at:
            del self._loop_at[loop]
            self._loop_handles.pop(loop, None)
        self.poll()

    def _arm(self, at: int) -> None:
        with self._timer_cond:
            if self._closed or (self._timer_at is not None and self._timer_at <= at):
                return
            self._timer_at = at
            if self._timer_thread is None:
                self._timer_thread = threading.Thread(
                    target=_timer_loop,
                    args=(weakref.ref(self),),
                    name="admission-timer",
                    daemon=True,
                )
                self._timer_thread.start()
            else:
                self._timer_cond.notify()


def _timer_loop(ref: weakref.ref[AdmissionQueue]) -> None:
    """Poll the queue at its next wake time; exit when idle, closed or collected."""
    while True:
        q = ref()
        if q is None:
            return
        with q._timer_cond:
            if q._closed:
                q._timer_thread = None
                return
            at = q._timer_at
            if at is None:
                if not q._timer_cond.wait(TIMER_IDLE_S) and q._timer_at is None:
                    q._timer_thread = None
                    return
                continue
            delay = (at - q._clock()) / 1e9
            if delay > 0:
                q._timer_cond.wait(delay)
                continue
            q._timer_at = None
        try:
            q.poll()
        except Exception:
            # Keep the timer alive (waiters still need their deadlines); say why it failed.
            log.exception("admission queue poll failed")
        del q


def _check_deadline_args(timeout: float | None, deadline: int | None) -> None:
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0
    ):
        raise InvalidParameter(f"timeout must be >= 0 seconds, got {timeout!r}")
    if deadline is not None and (
        isinstance(deadline, bool) or not isinstance(deadline, int) or deadline < 0
    ):
        raise InvalidParameter(f"deadline must be int ns on the queue clock, got {deadline!r}")


def _check_max_wait(value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidParameter(f"max_wait must be seconds (a number) or None, got {value!r}")
    if math.isnan(value) or not 0 <= value <= MAX_WAIT_S:
        raise InvalidParameter(f"max_wait must be in [0, {MAX_WAIT_S:g}] seconds, got {value!r}")
    return float(value)


def _check_buckets(buckets: Sequence[float]) -> tuple[float, ...]:
    try:
        out = tuple(float(b) for b in buckets)
    except (TypeError, ValueError):
        raise InvalidParameter(f"wait_buckets must be numbers, got {buckets!r:.80}") from None
    if not out or any(not math.isfinite(b) or b <= 0 for b in out) or list(out) != sorted(set(out)):
        raise InvalidParameter(
            f"wait_buckets must be increasing positive finite seconds, got {buckets!r:.80}"
        )
    return out
