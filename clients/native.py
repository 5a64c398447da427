"""SDK for the decision service's native API (``limiter.v1.Limiter``).

``Decide`` takes many checks per call, so both clients batch: ``decide_batch``
explicitly, and the asyncio client also coalesces every ``decide`` awaited in the
same event-loop turn into one RPC. ``Release`` and ``Observe`` are off the decision
path: the asyncio client sends them in the background in batches, the blocking
client releases at once and sends observations every ``observe_batch`` records.
Over-limit answers are data; RPC failures go to the failure mode.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from operator import attrgetter
from typing import Any

import grpc
from limiter.clients.connection import AioConnection, Connection
from limiter.clients.fallback import ClientDecision
from limiter.clients.policy import Call, CallPolicy
from limiter.clients.throttle import AdaptiveThrottle
from limiter.server import v1

from limiter.errors import InvalidParameter

INT64_MAX = 2**63 - 1
PRIORITIES = dict(v1.Priority.items())
SUCCESS = v1.Observation.Outcome.Value("SUCCESS")
DROPPED = v1.Observation.Outcome.Value("DROPPED")
IGNORED = v1.Observation.Outcome.Value("IGNORED")
# Release / Observe are not on a request's critical path: give them more time.
SIDE_TIMEOUT = 1.0


class RemotePermit(ClientDecision):
    """An admitted decision holding a concurrency permit on the service.

    ``release()`` (or leaving a ``with`` block) gives it back, once; a permit never
    released expires on the service by itself.
    """

    __slots__ = ("_release",)

    def release(self) -> None:
        release = getattr(self, "_release", None)
        self._release = None
        if release is not None:
            release(self.lease)

    def __exit__(self, *exc: Any) -> bool:
        self.release()
        return False


def priority_value(priority: object) -> int:
    """The wire value of a priority given by name (any case), Criticality or None."""
    if priority is None:
        return 0
    name = getattr(priority, "name", priority)
    if isinstance(name, str):
        value = PRIORITIES.get(name.strip().upper().replace("-", "_"))
        if value is not None:
            return value
    names = ", ".join(n for n in PRIORITIES if n != "PRIORITY_UNSPECIFIED")
    raise InvalidParameter(f"priority must be one of {names}, got {priority!r:.80}")


def _side_call(what: str, rpc: Any, request: Any, answer: Callable[[Any], int]) -> Call:
    """Release and Observe are off the decision path: never throttled, more time than a
    decision, and a failure is logged and counted as nothing done (0), never raised."""
    return Call(None, what, rpc, request, SIDE_TIMEOUT, answer, lambda _: 0)


class _NativeBase:
    """The sans-I/O part of both clients: options, checks, calls and their answers."""

    # ``record`` takes the call's key and status too (``limiter.clients.gate.Gate``).
    records_calls = True

    def __init__(
        self,
        target: str | grpc.Channel | grpc.aio.Channel,
        domain: str,
        *,
        rule: str = "",
        timeout: float = 0.020,
        failure_mode: object = "allow",
        throttle: AdaptiveThrottle | bool | None = True,
        priority: object = None,
        observe_batch: int = 64,
        observe_interval: float = 0.1,
    ) -> None:
        for name, value in (("domain", domain), ("rule", rule)):
            if not isinstance(value, str):
                raise InvalidParameter(f"{name} must be a str, got {value!r:.80}")
        if not domain:
            raise InvalidParameter("domain must be a non-empty str, got ''")
        if isinstance(observe_batch, bool) or not isinstance(observe_batch, int):
            raise InvalidParameter(f"observe_batch must be an integer >= 1, got {observe_batch!r}")
        if observe_batch < 1:
            raise InvalidParameter(f"observe_batch must be an integer >= 1, got {observe_batch!r}")
        self.domain = domain
        self.rule = rule
        self.priority = priority_value(priority)
        self.observe_batch = observe_batch
        self.observe_interval = observe_interval
        self.policy = CallPolicy(timeout, failure_mode, throttle)
        self._observations: list[Any] = []
        self._open(target)  # the I/O shell's
        self.stub = v1.LimiterStub(self.channel)

    def check(
        self,
        key: str = "",
        cost: int = 1,
        *,
        rule: str | None = None,
        priority: object = None,
        max_wait: float = 0.0,
    ) -> Any:
        """One ``limiter.v1.Check``, with this client's defaults filled in."""
        if not isinstance(key, str):
            raise InvalidParameter(f"key must be a str, got {type(key).__name__}: {key!r:.80}")
        if isinstance(cost, bool) or not isinstance(cost, int) or not 1 <= cost <= INT64_MAX:
            raise InvalidParameter(f"cost must be an integer >= 1, got {cost!r}")
        if isinstance(max_wait, bool) or not isinstance(max_wait, int | float) or max_wait < 0:
            raise InvalidParameter(f"max_wait must be a number of seconds >= 0, got {max_wait!r}")
        if rule is not None and not isinstance(rule, str):
            raise InvalidParameter(f"rule must be a str, got {rule!r:.80}")
        return v1.Check(
            domain=self.domain,
            rule=self.rule if rule is None else rule,
            key=key,
            cost=cost,
            priority=self.priority if priority is None else priority_value(priority),
            max_wait=max_wait,
        )

    def _checks(self, checks: Iterable[Any]) -> list[Any]:
        out = []
        for c in checks:
            if isinstance(c, Mapping):
                out.append(self.check(**c))
            elif isinstance(c, v1.Check):
                out.append(c)
            else:
                raise InvalidParameter(f"a check must be a mapping or a v1.Check, got {c!r:.80}")
        if not out:
            raise InvalidParameter("decide_batch needs at least one check")
        return out

    def _decide_call(self, checks: list[Any], release: Callable[[str], Any]) -> Call:
        """``Decide`` for ``checks``; admitted permits are given back through ``release``."""

        def answer(response: Any) -> list[ClientDecision]:
            return [self._decision(r, response.level, release) for r in response.results]

        def fallback(throttled: bool) -> list[ClientDecision]:
            return [
                self.policy.fallback_for(f"{c.domain}|{c.rule}|{c.key}", c.cost or 1, throttled)
                for c in checks
            ]

        return Call(
            self.policy,
            "Decide",
            self.stub.Decide,
            v1.DecideRequest(checks=checks),
            self.policy.timeout + max(c.max_wait for c in checks),
            answer,
            fallback,
        )

    def _decision(self, result: Any, level: int, release: Callable[[str], Any]) -> ClientDecision:
        cls = RemotePermit if result.permit else ClientDecision
        decision = cls(
            result.allowed,
            min(result.limit, INT64_MAX),
            min(result.remaining, INT64_MAX),
            result.reset_after,
            result.retry_after,
            level=max(result.level, level),
            lease=result.permit or None,
        )
        if result.permit:
            decision._release = release
        return decision

    def _release_call(self, permits: tuple[str, ...]) -> Call:
        what = f"Release of {len(permits)} permit(s)"
        request = v1.ReleaseRequest(permits=permits)
        return _side_call(what, self.stub.Release, request, attrgetter("released"))

    def _observe_call(self, batch: list[Any]) -> Call:
        what = f"Observe of {len(batch)} observation(s)"
        request = v1.ObserveRequest(observations=batch)
        return _side_call(what, self.stub.Observe, request, attrgetter("accepted"))

    def _observation(
        self, latency: float, ok: bool | None, key: str, rule: str | None, status: int
    ) -> Any:
        if isinstance(latency, bool) or not isinstance(latency, int | float) or not latency >= 0:
            raise InvalidParameter(f"latency must be a number of seconds >= 0, got {latency!r}")
        if isinstance(status, bool) or not isinstance(status, int) or not 0 <= status <= 999:
            raise InvalidParameter(f"status must be an HTTP status code or 0, got {status!r}")
        return v1.Observation(
            domain=self.domain,
            rule=self.rule if rule is None else rule,
            key=key,
            latency=latency,
            outcome=IGNORED if ok is None else SUCCESS if ok else DROPPED,
            status=status,
        )

    def _take_observations(self) -> list[Any]:
        batch, self._observations = self._observations, []
        return batch


class LimiterClient(_NativeBase, Connection):
    """Blocking client of ``limiter.v1``; thread-safe, one channel for its lifetime.

    ``acquire(key, cost)`` makes it usable wherever a limiter is (decorators,
    middleware, interceptors); ``record(latency_s, ok=)`` feeds adaptive rules.
    """

    def decide(self, key: str = "", cost: int = 1, **options: Any) -> ClientDecision:
        return self._decide([self.check(key, cost, **options)])[0]

    def acquire(self, key: str = "", cost: int = 1) -> ClientDecision:
        return self._decide([self.check(key, cost)])[0]

    def decide_batch(self, checks: Iterable[Mapping[str, Any] | Any]) -> list[ClientDecision]:
        """One RPC for many checks (mappings of ``check()`` arguments or v1.Check)."""
        return self._decide(self._checks(checks))

    def _decide(self, checks: list[Any]) -> list[ClientDecision]:
        return self.call(self._decide_call(checks, self.release))

    def release(self, *permits: str) -> int:
        """Give permits back now; returns how many the service found (0 on failure)."""
        return self.call(self._release_call(permits))

    def record(
        self,
        latency_s: float,
        ok: bool | None = True,
        *,
        key: str = "",
        rule: str | None = None,
        status: int = 0,
    ) -> None:
        """Report one protected call; sent in batches (``observe_batch`` or every
        ``observe_interval`` s, checked on the next record) and by ``flush()``.
        ``ok`` None: the call says nothing about the backend (a client error);
        ``key`` and ``status`` (its HTTP status) also feed the rule's breaker and
        abnormal-access blocking on the service."""
        observation = self._observation(latency_s, ok, key, rule, status)
        now = time.monotonic()
        if not self._observations:
            self._oldest = now
        self._observations.append(observation)
        if (
            len(self._observations) >= self.observe_batch
            or now - self._oldest >= self.observe_interval
        ):
            self.flush()

    def flush(self) -> int:
        """Send buffered observations now; returns how many the service accepted."""
        batch = self._take_observations()
        return self.call(self._observe_call(batch)) if batch else 0

    def close(self) -> None:
        self.flush()
        super().close()


class AsyncLimiterClient(_NativeBase, AioConnection):
    """asyncio client of ``limiter.v1``; create and use it inside one event loop.

    Every ``decide``/``acquire`` awaited in the same loop turn shares one ``Decide``
    RPC (up to ``max_batch`` checks). Releases and observations are sent by
    background tasks; ``flush()`` / ``close()`` wait for them. Other options as
    for ``LimiterClient``.
    """

    def __init__(
        self,
        target: str | grpc.aio.Channel,
        domain: str,
        *,
        max_batch: int = 512,
        observe_batch: int = 256,
        observe_interval: float = 0.05,
        **options: Any,
    ) -> None:
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise InvalidParameter(f"max_batch must be an integer >= 1, got {max_batch!r}")
        super().__init__(
            target,
            domain,
            observe_batch=observe_batch,
            observe_interval=observe_interval,
            **options,
        )
        self.max_batch = max_batch
        self._pending: list[tuple[Any, asyncio.Future]] = []
        self._permits: list[str] = []
        self._tasks: set[asyncio.Task] = set()
        self._observe_timer: asyncio.TimerHandle | None = None

    async def decide(self, key: str = "", cost: int = 1, **options: Any) -> ClientDecision:
        return await self._enqueue(self.check(key, cost, **options))

    async def acquire(self, key: str = "", cost: int = 1) -> ClientDecision:
        return await self._enqueue(self.check(key, cost))

    async def decide_batch(self, checks: Iterable[Mapping[str, Any] | Any]) -> list[ClientDecision]:
        return await self._decide(self._checks(checks))

    def _enqueue(self, check: Any) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((check, future))
        if len(self._pending) == 1:
            loop.call_soon(self._dispatch)
        elif len(self._pending) >= self.max_batch:
            self._dispatch()
        return future

    def _dispatch(self) -> None:
        batch, self._pending = self._pending, []
        if batch:
            self._spawn(self._send(batch))

    async def _send(self, batch: list[tuple[Any, asyncio.Future]]) -> None:
        try:
            decisions = await self._decide([check for check, _ in batch])
        except Exception as error:  # a bad request: every waiter gets the error
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, future), decision in zip(batch, decisions, strict=True):
            if not future.done():
                future.set_result(decision)
            elif isinstance(decision, RemotePermit):  # its caller was cancelled meanwhile
                decision.release()

    async def _decide(self, checks: list[Any]) -> list[ClientDecision]:
        return await self.call(self._decide_call(checks, self._release_later))

    def _release_later(self, permit: str) -> None:
        self._permits.append(permit)
        if len(self._permits) == 1:
            asyncio.get_running_loop().call_soon(self._send_releases)

    def _send_releases(self) -> None:
        permits, self._permits = self._permits, []
        if permits:
            self._spawn(self.release(*permits))

    async def release(self, *permits: str) -> int:
        return await self.call(self._release_call(permits))

    def record(
        self,
        latency_s: float,
        ok: bool | None = True,
        *,
        key: str = "",
        rule: str | None = None,
        status: int = 0,
    ) -> None:
        """Report one protected call (as ``LimiterClient.record``); never blocks (sent
        by a background task)."""
        self._observations.append(self._observation(latency_s, ok, key, rule, status))
        if len(self._observations) >= self.observe_batch:
            self._send_observations()
        elif self._observe_timer is None:
            loop = asyncio.get_running_loop()
            self._observe_timer = loop.call_later(self.observe_interval, self._send_observations)

    def _send_observations(self) -> None:
        if self._observe_timer is not None:
            self._observe_timer.cancel()
            self._observe_timer = None
        batch = self._take_observations()
        if batch:
            self._spawn(self.call(self._observe_call(batch)))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def flush(self) -> None:
        """Send pending decisions, releases and observations, and wait for them."""
        self._dispatch()
        self._send_releases()
        self._send_observations()
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        await self.flush()
        await super().close()
