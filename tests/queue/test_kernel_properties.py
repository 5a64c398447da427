"""Property tests: the kernel against the reference model, plus the issue's laws directly."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from limiter._core import PriorityQueue
from tests.queue.model import QueueModel


class KernelMatchesModel(RuleBasedStateMachine):
    """Random pushes, pops, expiries and cancellations give the model's answers."""

    @initialize(
        capacity=st.lists(st.integers(1, 6), min_size=1, max_size=4),
        weighted=st.booleans(),
        weight_seed=st.lists(st.integers(1, 4), min_size=4, max_size=4),
        lifo=st.booleans(),
    )
    def setup(self, capacity, weighted, weight_seed, lifo):
        weights = weight_seed[: len(capacity)] if weighted else None
        self.q = PriorityQueue(capacity, weights=weights, lifo=lifo)
        self.model = QueueModel(capacity, weights, lifo)
        self.now = 0
        self.gone: list[int] = []

    @rule(c=st.integers(0, 3), ttl=st.one_of(st.none(), st.integers(-5, 60)))
    def push(self, c, ttl):
        c %= self.model.n
        deadline = None if ttl is None else max(0, self.now + ttl)
        item = self.q.push(c, deadline)
        if self.model.can_push(c):
            assert item >= 0 and item not in self.model.info
            self.model.push(item, c, deadline)
        else:
            assert item == -1

    @rule(dt=st.integers(0, 20))
    def advance(self, dt):
        self.now += dt

    @rule()
    def pop(self):
        live = [
            c
            for c in range(self.model.n)
            if any(self.model.info[i][1] > self.now for i in self.model.classes[c])
        ]
        class_of = {i: c for i, (c, _) in self.model.info.items()}
        expected = self.model.pop(self.now)
        item = self.q.pop(self.now)
        assert item == expected
        if item >= 0:
            self.gone.append(item)
            # The laws, stated directly rather than through the model's picking rule.
            assert class_of[item] in live
            if self.model.weights is None:
                assert class_of[item] == min(live)  # strict: nothing more important waits

    @rule()
    def peek(self):
        self.model.reap(self.now)
        c = self.model.pick()
        assert self.q.peek(self.now) == (-1 if c is None else self.model.head(c))

    @rule()
    def pop_expired(self):
        candidates = self.model.expired_candidates(self.now)
        item = self.q.pop_expired(self.now)
        if not candidates:
            assert item == -1
        else:
            assert item in candidates
            assert self.model.info[item][1] <= self.now
            self.model.take_expired(item)
            self.gone.append(item)

    @precondition(lambda self: self.model.info)
    @rule(data=st.data())
    def cancel(self, data):
        item = data.draw(st.sampled_from(sorted(self.model.info)))
        assert self.q.remove(item) is True
        assert self.model.remove(item)
        self.gone.append(item)

    @precondition(lambda self: self.gone)
    @rule(data=st.data())
    def cancel_stale(self, data):
        item = data.draw(st.sampled_from(self.gone))
        assert self.q.remove(item) is False

    @invariant()
    def sizes_agree(self):
        assert len(self.q) == self.model.waiting()
        for c in range(self.model.n):
            assert self.q.depth(c) == len(self.model.classes[c])
        deadlines = [self.model.info[i][1] for c in self.model.classes for i in c]
        finite = [d for d in deadlines if d < 2**63 - 1]
        assert self.q.next_deadline() == (min(finite) if finite else -1)


TestKernelMatchesModel = KernelMatchesModel.TestCase
TestKernelMatchesModel.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)


@settings(max_examples=200, deadline=None)
@given(
    weights=st.lists(st.integers(1, 6), min_size=1, max_size=6),
    cycles=st.integers(1, 8),
    extra=st.integers(0, 3),
    lifo=st.booleans(),
)
def test_weighted_serves_exactly_the_weights_per_full_cycle(weights, cycles, extra, lifo):
    """Every class backlogged: each cycle serves class i exactly weights[i] times, in order."""
    n, per_cycle = len(weights), sum(weights)
    q = PriorityQueue(cycles * max(weights) + extra + 1, weights=weights, lifo=lifo)
    cls = {}
    for c in range(n):
        for _ in range(cycles * weights[c] + extra + 1):
            cls[q.push(c)] = c
    served = [cls[q.pop(0)] for _ in range(cycles * per_cycle)]
    one_cycle = [c for c in range(n) for _ in range(weights[c])]
    assert served == one_cycle * cycles
    for c in range(n):
        assert served.count(c) == cycles * weights[c]


@settings(max_examples=200, deadline=None)
@given(
    weights=st.lists(st.integers(1, 5), min_size=2, max_size=5),
    present=st.lists(st.booleans(), min_size=5, max_size=5),
    cycles=st.integers(1, 5),
)
def test_weighted_ratio_with_some_classes_empty(weights, present, cycles):
    """Empty classes are skipped; the others keep exactly their weights per cycle."""
    n = len(weights)
    active = [c for c in range(n) if present[c]] or [0]
    q = PriorityQueue(100, weights=weights)
    cls = {}
    for c in active:
        for _ in range(cycles * weights[c] + 1):
            cls[q.push(c)] = c
    served = [cls[q.pop(0)] for _ in range(cycles * sum(weights[c] for c in active))]
    assert served == [c for c in active for _ in range(weights[c])] * cycles


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.integers(0, 3), st.one_of(st.none(), st.integers(0, 100)), st.booleans()),
        max_size=80,
    ),
    weighted=st.booleans(),
)
def test_never_serves_an_expired_item_and_loses_none(ops, weighted):
    """Whatever the schedule, a served item's deadline is after now; every item comes back once."""
    q = PriorityQueue(8, weights=(3, 2, 1, 1) if weighted else None, classes=4)
    deadline_of, seen, now = {}, set(), 0
    for c, ttl, serve in ops:
        now += 3
        item = q.push(c, None if ttl is None else now + ttl)
        if item >= 0:
            deadline_of[item] = None if ttl is None else now + ttl
        if serve:
            got = q.pop(now)
            if got >= 0:
                assert deadline_of[got] is None or deadline_of[got] > now
                assert got not in seen
                seen.add(got)
        while (gone := q.pop_expired(now)) >= 0:
            assert deadline_of[gone] is not None and deadline_of[gone] <= now
            assert gone not in seen
            seen.add(gone)
    now += 1000
    while (gone := q.pop_expired(now)) >= 0:
        seen.add(gone)
    while (got := q.pop(now)) >= 0:
        assert deadline_of[got] is None
        seen.add(got)
    assert seen == set(deadline_of)
    assert len(q) == 0


@settings(max_examples=200, deadline=None)
@given(capacity=st.lists(st.integers(1, 10), min_size=1, max_size=4), pushes=st.integers(0, 60))
def test_size_never_exceeds_capacity(capacity, pushes):
    q = PriorityQueue(capacity, classes=len(capacity))
    accepted = [0] * len(capacity)
    for i in range(pushes):
        c = i % len(capacity)
        if q.push(c, 10) >= 0:
            accepted[c] += 1
    assert accepted == [
        min(cap, sum(1 for i in range(pushes) if i % len(capacity) == c))
        for c, cap in enumerate(capacity)
    ]
    for c, cap in enumerate(capacity):
        assert q.depth(c) <= cap
