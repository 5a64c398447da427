"""A plain reference model of the weighted-priority queue, written from the spec.

Lists and linear scans, no bit tricks or heaps: slow and obviously right, so the
kernel is checked against it operation by operation.
"""

from __future__ import annotations


class QueueModel:
    def __init__(self, capacity: list[int], weights: list[int] | None, lifo: bool) -> None:
        self.n = len(capacity)
        self.capacity = capacity
        self.weights = weights
        self.lifo = lifo
        self.classes: list[list[int]] = [[] for _ in range(self.n)]
        # Expired items in the order they were found expired, with their deadline.
        self.expired: list[tuple[int, int, int]] = []  # (batch, deadline, id)
        self.info: dict[int, tuple[int, int]] = {}  # id -> (class, deadline)
        self.batch = 0
        self.cur = self.n - 1
        self.credit = 0

    def held(self, c: int) -> int:
        return len(self.classes[c]) + sum(1 for _, _, i in self.expired if self.info[i][0] == c)

    def can_push(self, c: int) -> bool:
        return self.held(c) < self.capacity[c]

    def push(self, item: int, c: int, deadline: int | None) -> None:
        self.info[item] = (c, deadline if deadline is not None else 2**63 - 1)
        self.classes[c].append(item)

    def reap(self, now: int) -> None:
        self.batch += 1
        for c in range(self.n):
            for item in list(self.classes[c]):
                if self.info[item][1] <= now:
                    self.classes[c].remove(item)
                    self.expired.append((self.batch, self.info[item][1], item))

    def pick(self) -> int | None:
        nonempty = [c for c in range(self.n) if self.classes[c]]
        if not nonempty:
            return None
        if self.weights is None:
            return min(nonempty)
        if self.credit > 0 and self.cur in nonempty:
            return self.cur
        for step in range(1, self.n + 1):
            c = (self.cur + step) % self.n
            if c in nonempty:
                return c
        raise AssertionError("unreachable")

    def head(self, c: int) -> int:
        return self.classes[c][-1] if self.lifo else self.classes[c][0]

    def pop(self, now: int) -> int:
        self.reap(now)
        c = self.pick()
        if c is None:
            return -1
        if self.weights is not None:
            if c != self.cur or self.credit <= 0:
                self.cur, self.credit = c, self.weights[c]
            self.credit -= 1
        item = self.head(c)
        self.classes[c].remove(item)
        del self.info[item]
        return item

    def expired_candidates(self, now: int) -> set[int]:
        """Ids ``pop_expired(now)`` may return: earliest batch, then earliest deadline."""
        self.reap(now)
        if not self.expired:
            return set()
        first = min((b, d) for b, d, _ in self.expired)
        return {i for b, d, i in self.expired if (b, d) == first}

    def take_expired(self, item: int) -> None:
        self.expired = [e for e in self.expired if e[2] != item]
        del self.info[item]

    def remove(self, item: int) -> bool:
        if item not in self.info:
            return False
        c, _ = self.info[item]
        if item in self.classes[c]:
            self.classes[c].remove(item)
        else:
            self.expired = [e for e in self.expired if e[2] != item]
        del self.info[item]
        return True

    def waiting(self) -> int:
        return sum(len(c) for c in self.classes)
