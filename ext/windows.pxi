# Windowed request counters: fixed window and sliding-window counter.
#
# Windows are aligned to the period on the clock's epoch (by default the wall
# clock, as envoyproxy/ratelimit aligns to unix time), so every replica and every
# restart agrees on where a window starts: start = now - now % period.
#
# ``window_outcome`` turns one step into an answer; the in-memory kernels and the Redis
# backend (``window_decision``, on what its Lua script returns) both call it.


@cython.cdivision(True)
cdef void window_outcome(bint sliding, bint allowed, int64_t limit, int64_t P, int64_t cur,
                         int64_t prev, int64_t elapsed, int64_t cost, Outcome* out) noexcept:
    """The answer to a request of ``cost`` that found ``cur`` counted in this window (and
    ``prev`` in the previous one), ``elapsed`` ns into it."""
    cdef double estimate, need, at
    out.allowed = allowed
    out.wait_ns = 0
    out.retry_ns = 0
    if not sliding:
        out.reset_ns = P - elapsed
        if allowed:
            out.remaining = limit - cur - cost
        else:
            out.remaining = limit - cur
            out.retry_ns = out.reset_ns
        return
    # The previous window's count is weighted by how much of it still overlaps.
    estimate = prev * (<double>(P - elapsed) / P) + cur
    if allowed:
        out.remaining = <int64_t>floor(limit - estimate - cost)
        out.reset_ns = 2 * P - elapsed
        return
    out.remaining = <int64_t>floor(limit - estimate)
    out.reset_ns = (2 * P if cur > 0 else P) - elapsed
    need = limit - cur - cost
    if need >= 0 and prev > 0:
        # The previous window's weight decays linearly; find when it fits.
        at = P * (1.0 - need / prev)
    else:
        # Only the next window can fit it, once this one's weight decays.
        at = P + (P * (1.0 - <double>(limit - cost) / cur) if cur > 0 else 0)
    out.retry_ns = <int64_t>ceil(at) - elapsed
    if out.retry_ns < 1:
        out.retry_ns = 1


def window_decision(bint sliding, bint allowed, int64_t limit, int64_t period_ns, int64_t cur,
                    int64_t prev, int64_t elapsed, int64_t cost):
    """The Decision for one window step decided elsewhere (the Redis script)."""
    cdef Outcome o
    window_outcome(sliding, allowed, limit, period_ns, cur, prev, elapsed, cost, &o)
    return make_decision(o.allowed, limit, o.remaining, o.reset_ns, o.retry_ns, 0)


cdef class _Window(RateKernel):
    cdef readonly int64_t limit
    cdef readonly double period
    cdef readonly int64_t period_ns

    cdef _setup_window(self, object limit, object period, object clock, object max_keys,
                       int32_t width):
        self.limit = check_count("limit", limit, 1, MAX_COUNT)
        self.period = check_positive("period", period, MAX_SECONDS)
        self.period_ns = seconds_to_ns(self.period)
        self.limit_value = self.limit
        self.max_cost = self.limit
        self._setup(width, max_keys, clock, True)

    def reserving(self, reserve):
        """This kernel's state seen with a limit ``reserve`` lower: a request through the
        view passes only if it leaves ``reserve`` units of the window, so traffic that may
        not touch a reserve is refused once only the reserve is left. Keys and clock are
        shared with this kernel."""
        cdef int64_t r = check_count("reserve", reserve, 0, self.limit - 1)
        cdef _Window view = type(self).__new__(type(self))
        view.table = self.table
        view.clock = self.clock
        view.wall = self.wall
        view.period = self.period
        view.period_ns = self.period_ns
        view.limit = self.limit - r
        view.limit_value = view.limit
        view.max_cost = view.limit
        return view


@cython.final
cdef class FixedWindow(_Window):
    """At most ``limit`` units per aligned window of ``period`` seconds.

    Row: [window start, count]. Refused requests are not counted.
    """

    def __init__(self, limit, period, *, clock=None, max_keys=1_000_000):
        self._setup_window(limit, period, clock, max_keys, 2)

    @cython.cdivision(True)  # operands are never negative and divisors never zero
    cdef int _decide_row(self, int32_t slot, int64_t cost, int64_t now, Outcome* out) except -1:
        cdef int64_t* row = self.table.row(slot)
        cdef int64_t start = now - now % self.period_ns
        if row[0] != start:
            row[0] = start
            row[1] = 0
        cdef int64_t cur = row[1]
        cdef bint allowed = cur + cost <= self.limit
        if allowed:
            row[1] = cur + cost
            self.table.set_idle(slot, start + self.period_ns)
        window_outcome(False, allowed, self.limit, self.period_ns, cur, 0, now - start, cost, out)
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

    def __init__(self, limit, period, *, clock=None, max_keys=1_000_000):
        self._setup_window(limit, period, clock, max_keys, 3)

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
        cdef bint allowed = not (prev * (<double>(P - elapsed) / P) + cur + cost > self.limit)
        if allowed:
            row[1] = cur + cost
            self.table.set_idle(slot, start + 2 * P)
        if out.detail:
            window_outcome(True, allowed, self.limit, P, cur, prev, elapsed, cost, out)
        else:
            out.allowed = allowed
        return 0

    def __repr__(self):
        return f"SlidingWindow(limit={self.limit}, period={self.period!r})"
