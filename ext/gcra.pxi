# GCRA family: token bucket, leaky bucket as a meter, leaky bucket as a shaper.
#
# All three keep one integer per key, the theoretical arrival time ``tat``: the
# instant the bucket would be back to full. With emission interval T = 1/rate (ns,
# rounded up so the admitted rate never exceeds the configured one) and tolerance
# tau = burst * T, a request of cost c conforms at ``now`` when
#     max(tat, now) + c*T - tau <= now.
# A token bucket with continuous refill and a GCRA leaky-bucket meter are the same
# automaton seen from two sides (tokens left = (tau - (tat - now)) / T), so both are
# this one kernel; the shaper instead admits a late request and tells it how long to
# wait, up to ``max_wait``.

cdef class _Gcra(RateKernel):
    cdef readonly double rate
    cdef readonly int64_t burst
    cdef int64_t interval
    cdef int64_t tolerance

    cdef _setup_gcra(self, str algorithm, object rate, object burst, object clock,
                     object max_keys, object backend, int64_t max_wait_ns=0):
        self.rate = check_positive("rate", rate, 1e9)
        self.burst = check_count("burst", burst, 1, MAX_COUNT)
        self.interval = <int64_t>ceil(NS_PER_S / self.rate)
        if self.interval > (<int64_t>1 << 62) // self.burst:
            raise InvalidParameter(
                f"burst / rate too large: burst={burst!r} at rate={rate!r} spans more than 146 years")
        self.tolerance = self.burst * self.interval
        self.limit_value = self.burst
        self.max_cost = self.burst
        spec = Spec(algorithm, limit=self.burst, interval_ns=self.interval, max_wait_ns=max_wait_ns)
        self._setup(1, max_keys, clock, False, backend, spec)

    @cython.cdivision(True)  # operands are never negative and divisors never zero
    cdef int _decide_row(self, int32_t slot, int64_t cost, int64_t now, Outcome* out) except -1:
        cdef int64_t* row = self.table.row(slot)
        cdef int64_t tat = row[0] if row[0] > now else now
        cdef int64_t new_tat = tat + cost * self.interval
        cdef int64_t allow_at = new_tat - self.tolerance
        out.wait_ns = 0
        if allow_at > now:
            out.allowed = False
            if out.detail:
                out.remaining = (self.tolerance - (tat - now)) // self.interval
                out.reset_ns = tat - now
                out.retry_ns = allow_at - now
            return 0
        row[0] = new_tat
        self.table.set_idle(slot, new_tat)
        out.allowed = True
        if out.detail:
            out.remaining = (self.tolerance - (new_tat - now)) // self.interval
            out.reset_ns = new_tat - now
            out.retry_ns = 0
        return 0

    @property
    def interval_ns(self):
        """Emission interval in ns (1/rate rounded up to a whole ns)."""
        return self.interval


@cython.final
cdef class TokenBucket(_Gcra):
    """Token bucket: ``rate`` tokens per second accrue continuously up to ``burst``.

    Quiet periods save up to ``burst`` tokens for a later burst; a request costs
    ``cost`` tokens. ``clock`` (optional) returns monotonic int nanoseconds.
    """

    def __init__(self, rate, burst, *, clock=None, max_keys=1_000_000, backend=None):
        self._setup_gcra("token_bucket", rate, burst, clock, max_keys, backend)

    def __repr__(self):
        return f"TokenBucket(rate={self.rate!r}, burst={self.burst})"


@cython.final
cdef class LeakyBucket(_Gcra):
    """Leaky bucket as a meter (GCRA): admits exactly ``rate``/s with ``burst`` tolerance.

    The bucket holds at most ``burst`` units and drains at ``rate`` per second; a
    request that would overflow it is refused with the exact time it would fit.
    """

    def __init__(self, rate, burst=1, *, clock=None, max_keys=1_000_000, backend=None):
        self._setup_gcra("leaky_bucket", rate, burst, clock, max_keys, backend)

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
    cdef int64_t max_wait_ns

    def __init__(self, rate, burst=1, *, max_wait=1.0, clock=None, max_keys=1_000_000,
                 backend=None):
        if isinstance(max_wait, (int, float)) and not isinstance(max_wait, bool) and max_wait == 0:
            self.max_wait = 0.0
        else:
            self.max_wait = check_positive("max_wait", max_wait, MAX_SECONDS)
        self.max_wait_ns = seconds_to_ns(self.max_wait)
        self._setup_gcra("leaky_shaper", rate, burst, clock, max_keys, backend, self.max_wait_ns)
        # A wait is bounded by max_wait, not by the burst: the largest cost that can
        # ever pass is what a full bucket can schedule within max_wait.
        self.max_cost = min(MAX_COUNT, self.max_wait_ns // self.interval + self.burst)

    @cython.cdivision(True)  # operands are never negative and divisors never zero
    cdef int _decide_row(self, int32_t slot, int64_t cost, int64_t now, Outcome* out) except -1:
        cdef int64_t* row = self.table.row(slot)
        cdef int64_t tat = row[0] if row[0] > now else now
        cdef int64_t new_tat = tat + cost * self.interval
        cdef int64_t wait = new_tat - self.tolerance - now
        if wait < 0:
            wait = 0
        if wait > self.max_wait_ns:
            out.allowed = False
            out.remaining = 0
            out.reset_ns = tat - now
            out.retry_ns = wait - self.max_wait_ns
            out.wait_ns = 0
            return 0
        row[0] = new_tat
        self.table.set_idle(slot, new_tat)
        out.allowed = True
        out.remaining = (self.tolerance - (new_tat - now)) // self.interval
        out.reset_ns = new_tat - now
        out.retry_ns = 0
        out.wait_ns = wait
        return 0

    def __repr__(self):
        return f"LeakyShaper(rate={self.rate!r}, burst={self.burst}, max_wait={self.max_wait!r})"
