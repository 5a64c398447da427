# Concurrency (in-flight) counter: +1 on start, -1 on finish, refuse above a limit.

# Not tracked by the cyclic GC: a permit refers only to its limiter and key, which never
# refer back, so it can be in no cycle; a service may hold hundreds of thousands, and
# tracked they would lengthen every full collection (a pause of the whole process).
@cython.no_gc
cdef class Permit(Decision):
    """A Decision from ConcurrencyLimit that holds ``cost`` in-flight slots until released.

    Release it exactly once (``release()`` or leaving a ``with`` block); extra
    releases are ignored, and a permit garbage-collected unreleased gives its slots
    back, so a forgotten permit cannot leak capacity forever.
    """

    cdef ConcurrencyLimit owner
    cdef object key
    cdef int64_t cost
    cdef readonly bint released

    def release(self):
        """Give the slots back; idempotent."""
        if self.allowed and not self.released:
            self.released = True
            self.owner._release(self.key, self.cost)

    def __exit__(self, exc_type, exc, tb):
        self.release()
        return False

    def __dealloc__(self):
        if self.allowed and not self.released and self.owner is not None:
            self.released = True
            self.owner._release(self.key, self.cost)


@cython.final
cdef class ConcurrencyLimit(KeyedLimiter):
    """At most ``limit`` units in flight per key; ``acquire`` returns a Permit.

    Only keys with work in flight occupy a row, so ``max_keys`` bounds the number
    of distinct keys busy at once; a new key beyond it is refused rather than
    evicting someone's in-flight count.
    """

    cdef readonly int64_t limit

    def __init__(self, limit, *, max_keys=1_000_000):
        self.limit = check_count("limit", limit, 1, MAX_COUNT)
        self.limit_value = self.limit
        self.max_cost = self.limit
        self._setup(1, max_keys, None, False, False)

    cdef int _decide(self, object key, int64_t cost, int64_t now, Outcome* out) except -1:
        cdef int32_t slot = self.table.get(key, now)
        out.reset_ns = 0
        out.retry_ns = 0
        out.wait_ns = 0
        if slot < 0:
            out.allowed = False
            out.remaining = 0
            return 0
        cdef int64_t* row = self.table.row(slot)
        if row[0] + cost > self.limit:
            out.allowed = False
            out.remaining = self.limit - row[0]
            return 0
        row[0] += cost
        self.table.set_idle(slot, NEVER_IDLE)
        out.allowed = True
        out.remaining = self.limit - row[0]
        return 0

    cdef int _release(self, object key, int64_t cost) except -1:
        cdef int32_t slot = self.table.find(key)
        if slot < 0:
            return 0
        cdef int64_t* row = self.table.row(slot)
        row[0] -= cost
        if row[0] <= 0:
            self.table.remove(slot)
        return 0

    def acquire(self, key="", cost=1):
        """Take ``cost`` in-flight slots for ``key``; returns a Permit (check ``allowed``)."""
        cdef int64_t c = cost_arg(cost, self.max_cost)
        key = check_key(key)
        cdef Outcome o
        o.detail = True
        cdef Permit p = Permit.__new__(Permit)
        self._decide(key, c, 0, &o)
        p.allowed = o.allowed
        p.limit = self.limit
        p.remaining = o.remaining
        p.owner = self
        p.key = key
        p.cost = c
        return p

    def in_flight(self, key=""):
        """Units currently held for ``key``."""
        key = check_key(key)
        cdef int32_t slot = self.table.find(key)
        return 0 if slot < 0 else self.table.row(slot)[0]

    def __repr__(self):
        return f"ConcurrencyLimit(limit={self.limit})"
