# GCRA family: token bucket, leaky bucket as a meter, leaky bucket as a shaper.
#
# All three keep one integer per key, the theoretical arrival time ``tat``: the
# instant the bucket would be back to full. With emission interval T = 1/rate (ns,
# rounded up so the admitted rate never exceeds the configured one) and tolerance
# tau = burst * T, a request of cost c conforms at ``now`` when
#     max(tat, now) + c*T - tau <= now + max_wait
# (max_wait is 0 for a meter). A token bucket with continuous refill and a GCRA
# leaky-bucket meter are the same automaton seen from two sides (tokens left =
# (tau - (tat - now)) / T), so both are this one kernel; the shaper instead admits a
# late request and tells it how long to wait, up to ``max_wait``.
#
# ``gcra_outcome`` turns one step into an answer. It is the only place that
# arithmetic lives: the in-memory kernels call it, the adaptive limiter's pacing calls
# it, and the Redis backend calls it (``gcra_decision``) on what its Lua script
# returns, so a decision through Redis equals the kernel's at the server's time.


cdef inline void gcra_outcome(bint allowed, int64_t d, int64_t cost, int64_t interval,
                              int64_t tau, int64_t max_wait, Outcome* out) noexcept:
    """The answer to a request of ``cost`` that found ``d`` = max(tat, now) - now."""
    cdef int64_t new = d + cost * interval
    out.allowed = allowed
    out.retry_ns = 0
    out.wait_ns = 0
    if allowed:
        out.remaining = (tau - new) // interval
        out.reset_ns = new
        if new > tau:
            out.wait_ns = new - tau  # a shaper's delay (a meter never admits past tau)
    else:
        out.remaining = 0 if max_wait else (tau - d) // interval
        out.reset_ns = d
        out.retry_ns = new - tau - max_wait


def gcra_decision(bint allowed, int64_t d, int64_t cost, int64_t interval, int64_t burst,
                  int64_t max_wait=0):
    """The Decision for one GCRA step decided elsewhere (the Redis script): ``d`` is
    max(tat, now) - now in ns when the request arrived."""
    cdef Outcome o
    gcra_outcome(allowed, d, cost, interval, burst * interval, max_wait, &o)
    return make_decision(o.allowed, burst, o.remaining, o.reset_ns, o.retry_ns, o.wait_ns)


cdef class _Gcra(RateKernel):
    cdef readonly double rate
    cdef readonly int64_t burst
    cdef int64_t interval
    cdef int64_t tolerance
    cdef readonly int64_t max_wait_ns

    cdef _setup_gcra(self, object rate, object burst, object clock, object max_keys):
        self.rate = check_positive("rate", rate, 1e9)
        self.burst = check_count("burst", burst, 1, MAX_COUNT)
        self.interval = <int64_t>ceil(NS_PER_S / self.rate)
        if self.interval > (<int64_t>1 << 62) // self.burst:
            raise InvalidParameter(
                f"burst / rate too large: burst={burst!r} at rate={rate!r} spans more than 146 years")
        self.tolerance = self.burst * self.interval
        self.limit_value = self.burst
        # A wait is bounded by max_wait, not by the burst: the largest cost that can
        # ever pass is what a full bucket can schedule within max_wait.
        self.max_cost = min(MAX_COUNT, self.max_wait_ns // self.interval + self.burst)
        self._setup(1, max_keys, clock, False)

    @cython.cdivision(True)  # operands are never negative and divisors never zero
    cdef int _decide_row(self, int32_t slot, int64_t cost, int64_t now, Outcome* out) except -1:
        cdef int64_t* row = self.table.row(slot)
        cdef int64_t d = row[0] - now if row[0] > now else 0
        cdef bint allowed = d + cost * self.interval - self.tolerance <= self.max_wait_ns
        if allowed:
            row[0] = now + d + cost * self.interval
            self.table.set_idle(slot, row[0])
        if out.detail:
            gcra_outcome(allowed, d, cost, self.interval, self.tolerance, self.max_wait_ns, out)
        else:
            out.allowed = allowed
        return 0

    @property
    def interval_ns(self):
        """Emission interval in ns (1/rate rounded up to a whole ns)."""
        return self.interval

    def reserving(self, reserve):
        """This kernel's state seen with ``reserve`` fewer units of burst: a request
        through the view passes only if it leaves ``reserve`` units in the bucket, so
        traffic that may not touch a reserve is refused while only the reserve is left,
        and the reserve refills first. Keys, clock and rate are shared with this kernel."""
        if self.max_wait_ns:
            raise InvalidParameter("a shaper keeps no reserve (its requests wait instead)")
        cdef int64_t r = check_count("reserve", reserve, 0, self.burst - 1)
        cdef _Gcra view = type(self).__new__(type(self))
        view.table = self.table
        view.clock = self.clock
        view.wall = self.wall
        view.rate = self.rate
        view.interval = self.interval
        view.max_wait_ns = 0
        view.burst = self.burst - r
        view.tolerance = view.burst * self.interval
        view.limit_value = view.burst
        view.max_cost = view.burst
        return view


@cython.final
cdef class TokenBucket(_Gcra):
    """Token bucket: ``rate`` tokens per second accrue continuously up to ``burst``.

    Quiet periods save up to ``burst`` tokens for a later burst; a request costs
    ``cost`` tokens. ``clock`` (optional) returns monotonic int nanoseconds.
    """

    def __init__(self, rate, burst, *, clock=None, max_keys=1_000_000):
        self._setup_gcra(rate, burst, clock, max_keys)

    def __repr__(self):
        return f"TokenBucket(rate={self.rate!r}, burst={self.burst})"


@cython.final
cdef class LeakyBucket(_Gcra):
    """Leaky bucket as a meter (GCRA): admits exactly ``rate``/s with ``burst`` tolerance.

    The bucket holds at most ``burst`` units and drains at ``rate`` per second; a
    request that would overflow it is refused with the exact time it would fit.
    """

    def __init__(self, rate, burst=1, *, clock=None, max_keys=1_000_000):
        self._setup_gcra(rate, burst, clock, max_keys)

    def __repr__(self):
        return f"LeakyBucket(rate={self.rate!r}, burst={self.burst})"


@cython.final
cdef class LeakyShaper(_Gcra):
    """Leaky bucket as a shaper: admits a request and says how long to wait first.

    Requests leave at ``rate`` per second (``burst`` may go at once); a request whose
    wait would exceed ``max_wait`` seconds is refused instead, so callers never queue
    longer than that. ``Decision.wait`` is the delay to honour before proceeding.
    """

    cdef readonly double max_wait

    def __init__(self, rate, burst=1, *, max_wait=1.0, clock=None, max_keys=1_000_000):
        if isinstance(max_wait, (int, float)) and not isinstance(max_wait, bool) and max_wait == 0:
            self.max_wait = 0.0
        else:
            self.max_wait = check_positive("max_wait", max_wait, MAX_SECONDS)
        self.max_wait_ns = seconds_to_ns(self.max_wait)
        self._setup_gcra(rate, burst, clock, max_keys)

    def __repr__(self):
        return f"LeakyShaper(rate={self.rate!r}, burst={self.burst}, max_wait={self.max_wait!r})"
