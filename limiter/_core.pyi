# Type hints for the compiled core (ext/*.pxi). Keep in step with the Cython sources.
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

Clock = Callable[[], int]

class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    retry_after: float
    wait: float
    def __init__(
        self,
        allowed: bool,
        limit: int,
        remaining: int,
        reset_after: float,
        retry_after: float = 0.0,
        wait: float = 0.0,
    ) -> None: ...
    def __bool__(self) -> bool: ...
    def as_tuple(self) -> tuple[bool, int, int, float, float, float]: ...
    def as_dict(self) -> dict[str, Any]: ...
    def __enter__(self) -> Decision: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool: ...

class Permit(Decision):
    lease: object
    released: bool
    def release(self) -> None: ...

class KeyedLimiter:
    remote: object
    max_keys: int
    evictions: int
    def reset(self, key: str = "") -> None: ...
    def __len__(self) -> int: ...

class RateKernel(KeyedLimiter):
    def acquire(self, key: str = "", cost: int = 1) -> Decision: ...
    def allow(self, key: str = "", cost: int = 1) -> bool: ...
    def allow_batch(
        self, keys: Sequence[str] | npt.NDArray[np.object_], costs: npt.ArrayLike | None = None
    ) -> npt.NDArray[np.bool_]: ...

class TokenBucket(RateKernel):
    rate: float
    burst: int
    interval_ns: int
    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Clock | None = None,
        max_keys: int = 1_000_000,
        backend: object = None,
    ) -> None: ...

class LeakyBucket(RateKernel):
    rate: float
    burst: int
    interval_ns: int
    def __init__(
        self,
        rate: float,
        burst: int = 1,
        *,
        clock: Clock | None = None,
        max_keys: int = 1_000_000,
        backend: object = None,
    ) -> None: ...

class LeakyShaper(RateKernel):
    rate: float
    burst: int
    max_wait: float
    interval_ns: int
    def __init__(
        self,
        rate: float,
        burst: int = 1,
        *,
        max_wait: float = 1.0,
        clock: Clock | None = None,
        max_keys: int = 1_000_000,
        backend: object = None,
    ) -> None: ...

class _Window(RateKernel):
    limit: int
    period: float
    def __init__(
        self,
        limit: int,
        period: float,
        *,
        clock: Clock | None = None,
        max_keys: int = 1_000_000,
        backend: object = None,
    ) -> None: ...

class FixedWindow(_Window): ...
class SlidingWindow(_Window): ...

class ConcurrencyLimit(KeyedLimiter):
    limit: int
    def __init__(
        self, limit: int, *, max_keys: int = 1_000_000, backend: object = None
    ) -> None: ...
    def acquire(self, key: str = "", cost: int = 1) -> Permit: ...
    def in_flight(self, key: str = "") -> int: ...
