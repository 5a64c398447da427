"""The small interface between limiters and shared-state backends."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Spec:
    """What a backend needs to run one algorithm for many keys.

    ``algorithm`` is one of token_bucket, leaky_bucket, leaky_shaper, fixed_window,
    sliding_window, concurrency. Integer nanoseconds throughout, as in the kernels.
    """

    algorithm: str
    limit: int  # burst for the GCRA family, limit for windows and concurrency
    interval_ns: int = 0  # GCRA emission interval (1/rate)
    period_ns: int = 0  # window length
    max_wait_ns: int = 0  # shaper only
    # Units of ``limit`` this binding leaves untouched (a reserve for more important
    # traffic): it decides on the same keys as the binding without one.
    reserve: int = 0


@runtime_checkable
class Bound(Protocol):
    """One algorithm bound to a store: decides for any key (``limiter.shared`` uses it).

    Keys and costs arrive validated (str, 1 <= cost <= limit). A store fault is never
    raised: the exception is answered in place of the Decision, and the caller applies
    its failure mode. Rate algorithms use ``decide``, ``decide_async``,
    ``decide_batch``, ``decide_batch_async`` and ``reset``; concurrency uses
    ``lease``/``lease_async`` -> (Decision, lease or None), ``release(key, cost,
    lease)`` (an unreleased lease expires) and ``in_flight``. ``retry_after`` is how long
    a failed store stays failed (what a fail-closed refusal tells the caller).
    """

    retry_after: float

    def decide(self, key: str, cost: int) -> Any: ...

    async def decide_async(self, key: str, cost: int) -> Any: ...

    def decide_batch(self, keys: Sequence[str], costs: Sequence[int]) -> list[Any]: ...

    async def decide_batch_async(self, keys: Sequence[str], costs: Sequence[int]) -> list[Any]: ...

    def reset(self, key: str) -> None: ...


@runtime_checkable
class Backend(Protocol):
    """Shared state for many limiters."""

    def bind(self, spec: Spec, **options: Any) -> Bound: ...
