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


@runtime_checkable
class Bound(Protocol):
    """One algorithm bound to a backend: decides for any key.

    Keys and costs arrive validated (str, 1 <= cost <= limit). Backend faults never
    raise from these methods: they become the rule's failure mode. Rate algorithms
    use ``acquire``, ``acquire_async``, ``acquire_batch`` and ``reset``; concurrency
    uses ``acquire_lease``/``acquire_lease_async`` -> (Decision, lease or None),
    ``release(key, cost, lease)`` (idempotent; an unreleased lease expires) and
    ``in_flight``.
    """

    def acquire(self, key: str, cost: int) -> Any: ...

    async def acquire_async(self, key: str, cost: int) -> Any: ...

    def acquire_batch(self, keys: Sequence[str], costs: Sequence[int] | None) -> list[Any]: ...

    def reset(self, key: str) -> None: ...


@runtime_checkable
class Backend(Protocol):
    """Shared state for many limiters."""

    def bind(self, spec: Spec) -> Bound: ...
