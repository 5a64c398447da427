"""The small interface between limiters and shared-state backends."""

from __future__ import annotations

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
    """One algorithm bound to a backend: decides for any key."""

    def acquire(self, key: str, cost: int) -> Any: ...


@runtime_checkable
class Backend(Protocol):
    """Shared state for many limiters."""

    def bind(self, spec: Spec) -> Bound: ...
