# Windowed request counters: fixed window and sliding-window counter.
#
# Windows are aligned to the period on the clock's epoch (by default the wall
# clock, as envoyproxy/ratelimit aligns to unix time), so every replica and every
# restart agrees on where a window starts: start = now - now % period.

cdef class _Window(RateKernel):
    cdef readonly int64_t limit
    cdef readonly double period
    cdef int64_t period_ns

    cdef _setup_window(self, str algorithm, object limit, object period, object clock,
                       object max_keys, object backend, int32_t width):
        self.limit = check_count("limit", limit, 1, MAX_COUNT)
        self.period = check_positive("period", period, MAX_SECONDS)
        self.period_ns = seconds_to_ns(self.period)
        self.limit_value = self.limit
        self.max_cost = self.limit
        spec = Spec(algorithm, limit=self.limit, period_ns=self.period_ns)
        self._setup(width, max_keys, clock, True, backend, spec)


@cython.final
cdef class FixedWindow(_Window):
    """At most ``limit`` units per aligned window of ``period`` seconds.

    Row: [window start, count]. Refused requests are not counted.
    """

    def __init__(self, limit, period, *, clock=None, max_keys=1_000_000, backend=None):
        self._setup_window("fixed_window", limit, period, clock, max_keys, backend, 2)

    @cython.cdivision(True)  # operands are never negative and divisors never zero
    cdef int _decide_row(self, int32_t slot, int64_t cost, int64_t now, Outcome* out) except -1:
        cdef int64_t* row = self.table.row(slot)
        cdef int64_t start = now - now % self.period_ns
        if row[0] != start:
            row[0] = start
            row[1] = 0
        out.reset_ns = start + self.period_ns - now
        out.wait_ns = 0
        if row[1] + cost > self.limit:
            out.allowed = False
            out.remaining = self.limit - row[1]
            out.retry_ns = out.reset_ns
            return 0
        row[1] += cost
        self.table.set_idle(slot, start + self.period_ns)
        out.allowed = True
        out.remaining = self.limit - row[1]
        out.retry_ns = 0
        return 0

    def __repr__(self):
        return f"FixedWindow(limit={self.limit}, period={self.period!r})"


@cython.final
cdef class SlidingWindow(_Window):
    """Sliding-window counter: ``limit`` units per any ``period``-long window (estimated).

    Row: [current window start, current count, previous count]. The previous
    window's count is weighted by how much of it still overlaps the sliding window,
    which smooths the double burst a fixed window allows at its boundary at the
    cost of two integers per key.
    """

    def __init__(self, limit, period, *, clock=None, max_keys=1_000_000, backend=None):
        self._setup_window("sliding_window", limit, period, clock, max_keys, backend, 3)

    @cython.cdivision(True)  # operands are never negative and divisors never zero
    cdef int _decide_row(self, int32_t slot, int64_t cost, int64_t now, Outcome* out) except -1:
        cdef int64_t* row = self.table.row(slot)
        cdef int64_t P = self.period_ns
        cdef int64_t start = now - now % P
        if row[0] != start:
            row[2] = row[1] if row[0] + P == start else 0
            row[1] = 0
            row[0] = start
        cdef int64_t elapsed = now - start
        cdef int64_t cur = row[1], prev = row[2]
        cdef double estimate = prev * (<double>(P - elapsed) / P) + cur
        cdef double need, at
        out.wait_ns = 0
        if estimate + cost > self.limit:
            out.allowed = False
            if not out.detail:
                return 0
            out.remaining = <int64_t>floor(self.limit - estimate)
            out.reset_ns = start + (2 * P if cur > 0 else P) - now
            need = self.limit - cur - cost
            if need >= 0 and prev > 0:
                # The previous window's weight decays linearly; find when it fits.
                at = start + P * (1.0 - need / prev)
            else:
                # Only the next window can fit it, once this one's weight decays.
                at = start + P + (P * (1.0 - <double>(self.limit - cost) / cur) if cur > 0 else 0)
            out.retry_ns = <int64_t>ceil(at) - now
            if out.retry_ns < 1:
                out.retry_ns = 1
            return 0
        row[1] = cur + cost
        self.table.set_idle(slot, start + 2 * P)
        out.allowed = True
        out.remaining = <int64_t>floor(self.limit - estimate - cost)
        out.reset_ns = start + 2 * P - now
        out.retry_ns = 0
        return 0

    def __repr__(self):
        return f"SlidingWindow(limit={self.limit}, period={self.period!r})"
