"""Priority: who keeps capacity when it is short (Google SRE criticality tiers).

One type for every surface, converted at the edges: config names (``critical_plus``
... ``sheddable``, any case, ``-`` or ``_``), the limiter.v1 wire enum (``from_proto``)
and the admission queues' classes (``rank``, 0 = served first). A larger value is more
important: CRITICAL_PLUS, CRITICAL (the default), SHEDDABLE_PLUS (batch), SHEDDABLE.
"""

from __future__ import annotations

from enum import IntEnum

from limiter.errors import InvalidParameter, brief

__all__ = ["Priority"]


class Priority(IntEnum):
    """Ordered so that a larger value is more important."""

    SHEDDABLE = 0
    SHEDDABLE_PLUS = 1
    CRITICAL = 2
    CRITICAL_PLUS = 3

    @classmethod
    def parse(cls, value: object, field: str = "priority") -> Priority:
        """A tier from a Priority, a name (any case, ``-`` or ``_``) or 0..3; None is CRITICAL."""
        if value is None:
            return cls.CRITICAL
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            name = value.strip().upper().replace("-", "_")
            if name in cls.__members__:
                return cls[name]
        elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 3:
            return cls(value)
        names = ", ".join(m.lower() for m in cls.__members__)
        raise InvalidParameter(f"{field} must be one of {names}, got {brief(value)}")

    @classmethod
    def from_proto(cls, value: int) -> Priority | None:
        """From limiter.v1 ``Priority`` (1 CRITICAL_PLUS .. 4 SHEDDABLE); 0 (unspecified)
        is None: the rule's own priority."""
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 4:
            raise InvalidParameter(f"priority must be a limiter.v1 Priority 0..4, got {value!r}")
        return None if value == 0 else cls(4 - value)

    @property
    def proto(self) -> int:
        """The limiter.v1 wire value."""
        return 4 - int(self)

    @property
    def rank(self) -> int:
        """0 for the most important tier: the order admission queues serve in."""
        return 3 - int(self)

    @property
    def label(self) -> str:
        """The config and metrics name, e.g. ``critical_plus``."""
        return self.name.lower()


# Most important first: the order of per-priority config lists (queue weights, sizes).
BY_RANK = tuple(sorted(Priority, reverse=True))
