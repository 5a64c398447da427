# Adaptive limit: the limit follows the backend's measured latency, like TCP's window.
#
# Two objects, as in Netflix's concurrency-limits: ``AdaptiveLimit`` only computes
# (fed each completed call's latency and outcome, it keeps the current limit) and
# ``AdaptiveLimiter`` enforces that limit, pacing admissions GCRA-style in "rate"
# mode or counting in-flight calls in "concurrency" mode.
#
# Control law, evaluated every ``interval`` (every ``probe_interval`` while in slow
# start, as TCP slow start grows per round trip; concurrency mode: not before the
# calls admitted since the limit last moved have reported, at most one interval
# later, so that with calls slower than the interval it never grows blind) on the
# P-th percentile of the freshest ``window_samples`` latencies seen since the last
# cut (at most ``horizon`` back, and no further than ``window_age`` once
# ``min_samples`` are in, from a Reservoir; a dropped or timed-out call counts as
# slower than any target, and calls admitted before the last cut are left out: they
# describe a limit no longer in force), and on the queue ratio q: the median of the
# freshest ``min_samples`` calls
# (concurrency mode: of those admitted since the limit last moved) over the no-load
# baseline (concurrency mode: measured by a probe, see ``_start_probe``; rate mode:
# the lowest fresh median seen). With r = percentile / target:
# - r > 1 with a slow call in this interval (or a queue now), overload: cut the
#   limit by 1/2 the first time, then 1/4, 1/8, ... down to
#   ``min_cut``, at most one cut per ``interval`` (as TCP cuts once per round trip).
#   A cut that did not cure the overload by the next evaluation means conditions
#   changed: the next cut doubles instead (1/8 -> 1/4 -> 1/2). Slow calls trigger
#   the evaluation early, as soon as there are enough of them to breach the
#   percentile, so a capacity drop is met before a queue builds. Rate mode, with a
#   standing queue: the first cut of a run takes the rate no lower than ``min_cut``
#   under what the backend delivered meanwhile (a rate over capacity queues, and
#   what a queued backend delivers is its capacity: a step under it drains the
#   queue without idling the backend, as a big cut would); a second cut in a row
#   follows the sequence alone (see ``_cut``);
# - concurrency mode with a probed baseline, no breach, at a saturated limit: the
#   limit follows the queue, limit x (1 + ``tolerance``) / q (at most half off, at
#   most ``growth`` up per step), as Envoy's gradient controller and Gradient2 do:
#   the queue in front of the backend stays short and the target stays the bound.
#   Each step comes as soon as the calls admitted since the last one are in (see
#   ``_follow_queue``), so the pace follows the service's own round trip. Before
#   the first probe, a standing queue (q > 1 + tolerance) brings the limit down by
#   the same factor (``_drain``), and the rules below apply;
# - r <= 1 - headroom (rate mode: or r <= 1 with no queue now: a percentile near the
#   target with the fresh median at the baseline is the tail of a backlog that is
#   gone), healthy and q <= 1 + tolerance: if the limit is the bottleneck (calls refused and
#   at least half of it in use) it grows: slow start (x ``growth`` per evaluation)
#   up to the level it was last cut from, then additively (``additive`` x that level
#   per evaluation). It never grows while it is not the bottleneck. Before there are
#   ``min_samples`` to estimate the percentile, slow start still grows if even the
#   slowest call so far is healthy;
# - queue drained (saturated, no breach, and the median of the freshest
#   sub-windows holding ``min_samples`` calls under 3/5 of the window's median at
#   the last evaluation that did not bring the limit down by more than an additive
#   step): healthy, whatever the percentile window says, which still holds slow
#   calls from before a capacity step (the median of a hundred fresh calls sees the
#   step at once).
#   Concurrency mode: the backend got faster, so re-arm and grow at once, even
#   mid-interval, by the speed-up the median shows (old / fresh, at least ``growth``,
#   at most ``growth`` squared: by Little's law the same calls in flight now go
#   through that much faster). Rate mode grows as on any healthy evaluation: a paced
#   stream also drains its queue whenever the rate dips under capacity (see
#   ``_drained``);
# - in between, near the target: hold; in the upper half of that band, with the
#   fresh median rising over the baseline (q > 1 + tolerance / 2), ease off by one
#   additive step (rate mode, with a standing queue: to no more than the backend
#   delivered). Stale calls in the window alone never ease the limit. This keeps
#   the percentile under the target without waiting for a breach, and ends an
#   open-ended slow start before it overshoots (as TCP HyStart does on delay), or a
#   slow start back to the level last cut from once that cut is two intervals old;
# - rate mode, backend-bound (calls refused, by the enforcer's in-flight guard or by
#   the pace with a standing queue, with the median rising, and the backend delivered
#   less than the rate; without a queue, or with nothing refused, fewer deliveries
#   only mean fewer arrivals, and the rate must not ratchet down to them while the
#   backend idles): latency stays flat up to capacity, so the knee shows as
#   throughput instead; the rate comes down to one additive step over
#   what was delivered (past slow start: at most one additive step lower per
#   evaluation) and slow start ends there (see ``_trim``);
# - the big cut re-arms (next cut 1/2, growth exponential again) once the limit
#   climbs clearly past its previous peak, after ``rearm_after`` healthy growth
#   evaluations at full use (the backend got faster), or after ``horizon`` seconds
#   without a cut;
# - rate mode, re-probe (re-armed by healthy growth, not by climbing past the peak):
#   a paced stream over capacity builds a queue within one probe interval, so the
#   first probe step is gentle (x (1 + 4 x ``additive``), just past the peak) and only
#   the steps after it multiply by ``growth``; a re-probe the backend could not
#   deliver is trimmed no lower than the level it started from (that level was
#   delivered over a full interval; the probe's own interval is too short to
#   measure the delivered rate well).

from libc.math cimport INFINITY, ldexp

cdef enum:
    OUTCOME_OK = 0
    OUTCOME_DROPPED = 1
    OUTCOME_IGNORED = 2

cdef enum:
    PHASE_SLOW_START = 0
    PHASE_ADDITIVE = 1

cdef enum:
    # Smallest default burst of the rate mode's pacing, in calls (see _burst_calls).
    MIN_BURST = 20
    # Fewest calls the rate mode's in-flight guard allows (when the burst allows as
    # many): Poisson arrivals holding three calls in flight on average exceed eight
    # under 1% of the time, so a rate whose queue_cap x target's worth is a call or
    # two is not serialised by the guard.
    MIN_GUARD = 8

cdef enum:
    # Calls in a Cohort: the first baseline probe's (later probes take half: a lower
    # reading moves the baseline only halfway), and those admitted after a step of
    # the limit whose median is the queue ratio the next step follows (see
    # _follow_queue). Fewer than BASE_MIN finished well (a timed-out probe) leave
    # the baseline as it was.
    COHORT_CALLS = 100
    PROBE_STAGES = 5
    BASE_MIN = 5
    # Calls behind the fresh median that measures the queue.
    FRESH_MIN = 20
    # Evaluation intervals at a refusing limit whose delivery rates are remembered.
    DELIVERY_INTERVALS = 4

OUTCOMES = {"ok": OUTCOME_OK, "dropped": OUTCOME_DROPPED, "ignored": OUTCOME_IGNORED}
MODES = ("rate", "concurrency")


cdef struct Cohort:
    # Calls admitted from ``start`` on, up to ``size`` of them (``closed``: when the
    # last was admitted or, counted by ``record`` alone, when ``size`` had finished;
    # -1 until then), and the latencies of those that finished well. A probe waits
    # for them all: the first calls to finish are the fast ones, and a median of
    # whatever finished first reads low.
    int64_t start
    int64_t closed
    int32_t size
    int32_t admitted  # 0 when the enforcer does not report its decisions
    int32_t finished
    int32_t n
    double samples[COHORT_CALLS]


cdef inline void cohort_open(Cohort* c, int32_t size, int64_t now) noexcept:
    c.start = now
    c.closed = -1
    c.size = size
    c.admitted = 0
    c.finished = 0
    c.n = 0


cdef inline void cohort_admit(Cohort* c, int64_t now, int64_t until) noexcept:
    """One admission: it joins until the cohort has ``size``, or ``until`` passed."""
    if c.closed >= 0:
        return
    if now > until:
        c.closed = until
        return
    c.admitted += 1
    if c.admitted == c.size:
        c.closed = now


cdef inline bint cohort_finish(Cohort* c, int64_t admitted_at, double latency, int outcome,
                               int64_t now) noexcept:
    """Count one finished call if the cohort admitted it (fed by ``record`` alone, the
    first ``size`` calls to finish after ``start``); returns whether it did."""
    if (admitted_at < c.start or c.finished == c.size
            or (c.closed >= 0 and admitted_at > c.closed + 1000)):
        return False
    c.finished += 1
    if outcome == OUTCOME_OK:
        c.samples[c.n] = latency
        c.n += 1
    if c.admitted == 0 and c.finished == c.size:
        c.closed = now
    return True


cdef inline bint cohort_complete(const Cohort* c) noexcept:
    return c.closed >= 0 and c.finished >= c.admitted and c.finished > 0


cdef double cohort_median(Cohort* c) noexcept:
    """Median of the cohort's calls, those not finished well (dropped, or still
    running) counted as slower than any; NaN when fewer than half finished well.
    Sorts the samples in place (few: insertion sort)."""
    cdef int32_t i, j
    cdef double x
    cdef double* v = c.samples
    cdef int32_t total = c.admitted if c.admitted > c.finished else c.finished
    for i in range(1, c.n):
        x = v[i]
        j = i - 1
        while j >= 0 and v[j] > x:
            v[j + 1] = v[j]
            j -= 1
        v[j + 1] = x
    if 2 * c.n <= total:
        return NAN
    return v[total // 2] if total % 2 else 0.5 * (v[total // 2 - 1] + v[total // 2])


cdef int parse_outcome(object ok, object outcome) except -1:
    if outcome is not None:
        if outcome not in OUTCOMES:
            raise InvalidParameter(
                f"outcome must be one of {sorted(OUTCOMES)}, got {outcome!r}")
        return OUTCOMES[outcome]
    if ok is True:
        return OUTCOME_OK
    if ok is False:
        return OUTCOME_DROPPED
    raise InvalidParameter(f"ok must be True or False, got {ok!r}")


cdef double check_latency(object latency) except -1:
    if isinstance(latency, bool) or not isinstance(latency, (int, float)):
        raise InvalidParameter(f"latency must be a number of seconds, got {latency!r}")
    cdef double v = latency
    if isnan(v) or v < 0 or v > MAX_SECONDS:
        raise InvalidParameter(f"latency must be in [0, {MAX_SECONDS:g}] seconds, got {latency!r}")
    return v


@cython.final
cdef class AdaptiveLimit:
    """The limit computation alone: feed it outcomes, read ``limit``.

    Knobs (see the control law at the top of ext/adaptive.pxi): ``interval`` between
    evaluations (``probe_interval`` in slow start, default interval / 2),
    ``horizon`` and ``subwindows`` x ``samples`` of the latency reservoir,
    ``min_samples`` before acting and ``window_samples`` per percentile, ``growth``
    per slow-start step (default 2 in rate mode, 1.5 in concurrency mode),
    ``additive`` step (fraction of the level last cut from), ``headroom`` below the
    target where growth stops (default 0.35 in concurrency mode, 0.2 in rate mode),
    ``min_cut`` (smallest cut), ``rearm_after`` healthy
    growth steps (0 = never; default 1), ``tolerance`` (the fresh median may rise
    this much over the no-load baseline before it counts as a standing queue;
    default 0.25), ``window_age`` (seconds: the percentile and median windows stop
    there once they hold ``min_samples`` calls; default 2 x interval),
    ``baseline_interval`` (seconds between baseline probes in concurrency mode;
    default ``horizon``), ``seed``.

    ``mode`` only says what the limit counts (admissions per second or calls in
    flight) for the saturation test; enforcing it is ``AdaptiveLimiter``'s job, so
    the same controller can sit behind any enforcer (or a simulation). Every method
    takes ``now`` in int ns (default: the injected ``clock`` or the monotonic clock).
    """

    cdef readonly double target_latency
    cdef readonly double percentile
    cdef readonly str mode
    cdef readonly double min_limit
    cdef readonly double max_limit
    cdef readonly double interval
    cdef readonly double probe_interval
    cdef readonly double growth
    cdef readonly double additive
    cdef readonly double headroom
    cdef readonly double min_cut
    cdef readonly int64_t min_samples
    cdef readonly int64_t window_samples
    cdef readonly int32_t rearm_after
    cdef readonly double tolerance
    cdef readonly double window_age
    cdef readonly double baseline_interval
    cdef int64_t window_age_ns
    cdef int64_t baseline_ns
    cdef double base
    cdef int64_t base_at
    cdef double queue_ratio
    cdef bint probing
    cdef double probe_restore
    cdef double probe_before
    cdef bint probed
    cdef int32_t probe_stage
    cdef double before_sum
    cdef int64_t before_n
    cdef Cohort probe
    cdef int64_t slow_interval
    cdef int32_t healthy_run
    cdef bint reprobe
    cdef bint gentle
    cdef double probe_base
    cdef int64_t completed
    cdef readonly int64_t cuts
    cdef readonly int64_t evaluations
    cdef bint rate_mode
    cdef double limit_value
    cdef double ceiling
    cdef double step
    cdef double last_percentile
    cdef double ref_median
    cdef double speedup
    cdef int32_t next_shift
    cdef int32_t max_shift
    cdef int32_t last_shift
    cdef int phase
    cdef bint last_was_cut
    cdef int64_t interval_ns
    cdef int64_t probe_ns
    cdef int64_t rearm_ns
    cdef int64_t last_eval
    cdef int64_t last_cut
    # Concurrency mode: the calls admitted since the limit last moved (see _follow_queue).
    cdef Cohort recent
    cdef double step_limit
    cdef int64_t quiet_since
    cdef int64_t admitted
    cdef int64_t rejected
    cdef int64_t guarded
    cdef int64_t slow
    cdef int64_t early_after
    cdef int64_t peak_in_flight
    cdef double delivery_rate[DELIVERY_INTERVALS]
    cdef int64_t delivery_time[DELIVERY_INTERVALS]
    cdef int32_t delivery_next
    cdef Reservoir evidence
    cdef object clock

    def __init__(self, target_latency=0.1, percentile=0.99, mode="rate", min_limit=1,
                 max_limit=100_000, initial_limit=None, clock=None, *, interval=0.5,
                 probe_interval=None, horizon=10.0, subwindows=40, samples=256, min_samples=None,
                 window_samples=None, growth=None,
                 additive=0.03, headroom=None, min_cut=0.03125, rearm_after=None,
                 tolerance=0.25, window_age=None, baseline_interval=None, seed=0):
        self.target_latency = check_positive("target_latency", target_latency, MAX_SECONDS)
        self.percentile = check_fraction("percentile", percentile)
        if mode not in MODES:
            raise InvalidParameter(f"mode must be 'rate' or 'concurrency', got {mode!r}")
        self.mode = mode
        self.rate_mode = mode == "rate"
        self.min_limit = check_positive("min_limit", min_limit, MAX_COUNT)
        self.max_limit = check_positive("max_limit", max_limit, MAX_COUNT)
        if self.min_limit > self.max_limit:
            raise InvalidParameter(
                f"min_limit must not exceed max_limit, got {min_limit!r} > {max_limit!r}")
        if initial_limit is None:
            self.limit_value = min(self.max_limit, max(self.min_limit, 100.0 if self.rate_mode else 20.0))
        else:
            self.limit_value = check_positive("initial_limit", initial_limit, MAX_COUNT)
            if not self.min_limit <= self.limit_value <= self.max_limit:
                raise InvalidParameter(
                    f"initial_limit must be within [min_limit, max_limit] = "
                    f"[{min_limit!r}, {max_limit!r}], got {initial_limit!r}")
        self.interval = check_positive("interval", interval, 3600.0)
        self.interval_ns = seconds_to_ns(self.interval)
        if probe_interval is None:
            probe_interval = self.interval / 2
        self.probe_interval = check_positive("probe_interval", probe_interval, 3600.0)
        if self.probe_interval > self.interval:
            raise InvalidParameter(
                f"probe_interval must not exceed interval ({interval!r} s), got {probe_interval!r}")
        self.probe_ns = seconds_to_ns(self.probe_interval)
        h = check_positive("horizon", horizon, 86400.0)
        if h < self.interval:
            raise InvalidParameter(
                f"horizon must be at least interval ({interval!r} s), got {horizon!r}")
        self.rearm_ns = seconds_to_ns(h)
        self.tolerance = check_positive("tolerance", tolerance, 100.0)
        if window_age is None:
            window_age = 2 * self.interval
        self.window_age = check_positive("window_age", window_age, h)
        self.window_age_ns = seconds_to_ns(self.window_age)
        if baseline_interval is None:
            baseline_interval = h
        if (isinstance(baseline_interval, (int, float)) and not isinstance(baseline_interval, bool)
                and baseline_interval == 0):
            self.baseline_interval = 0.0  # never probe
        else:
            self.baseline_interval = check_positive("baseline_interval", baseline_interval, 86400.0)
        if 0 < self.baseline_interval < self.interval:
            raise InvalidParameter(
                f"baseline_interval must be at least interval ({interval!r} s), "
                f"got {baseline_interval!r}")
        self.baseline_ns = seconds_to_ns(self.baseline_interval if self.baseline_interval > 0 else h)
        if growth is None:
            # Rate mode doubles per slow-start step, as TCP's slow start does: an
            # overshoot costs little there, the in-flight guard bounds the backlog
            # it builds (sized by the delivered rate while in slow start) and the
            # delivered rate trims it back (see _trim). Concurrency mode keeps the
            # gentler step: a limit over the knee puts every extra call it allows
            # into the backend's queue at once.
            growth = 2.0 if self.rate_mode else 1.5
        self.growth = check_positive("growth", growth, 16.0)
        if self.growth <= 1.0:
            raise InvalidParameter(f"growth must be > 1, got {growth!r}")
        self.additive = check_fraction("additive", additive)
        if headroom is None:
            # Concurrency mode stops growing well short of the target (the knee shows
            # as rising latency); rate mode finds the knee by the in-flight guard
            # and the delivered rate instead, so latency need only stay clear of it.
            headroom = 0.2 if self.rate_mode else 0.35
        if isinstance(headroom, (int, float)) and not isinstance(headroom, bool) and headroom == 0:
            self.headroom = 0.0
        else:
            self.headroom = check_fraction("headroom", headroom)
        self.min_cut = check_fraction("min_cut", min_cut)
        if self.min_cut > 0.5:
            raise InvalidParameter(f"min_cut must be at most 0.5, got {min_cut!r}")
        if rearm_after is None:
            # With calls in flight capped, latency well under the target at full use
            # means spare capacity. In rate mode latency stays flat right up to
            # capacity, but a re-probe starts gently and the guard and the delivered
            # rate bound its overshoot (see _grow and _trim), so one is enough there too.
            rearm_after = 1
        self.rearm_after = <int32_t>check_count("rearm_after", rearm_after, 0, 1_000_000)
        self.max_shift = 1
        while ldexp(1.0, -(self.max_shift + 1)) >= self.min_cut * (1 - 1e-12):
            self.max_shift += 1
        if min_samples is None:
            # At least one value beyond the percentile before acting on it.
            min_samples = max(20, <int64_t>ceil(1.0 / (1.0 - self.percentile)))
        self.min_samples = check_count("min_samples", min_samples, 1, MAX_COUNT)
        if window_samples is None:
            # Four values beyond the percentile (rank error ~ 0.5 points at P99):
            # fresh enough to see a drained queue within an interval or two.
            window_samples = <int64_t>ceil(4.0 / (1.0 - self.percentile))
        self.window_samples = check_count("window_samples", window_samples, 1, MAX_COUNT)
        # Slow calls that alone put the percentile of a full window over the target.
        self.early_after = max(1, <int64_t>ceil((1.0 - self.percentile) * self.window_samples))
        self.evidence = Reservoir(samples, h, subwindows, seed=seed)
        self.clock = check_clock(clock)
        self.next_shift = 1
        self.last_shift = 0
        self.phase = PHASE_SLOW_START
        self.ceiling = 0.0
        self.step = 0.0
        self.last_percentile = NAN
        self.ref_median = NAN
        self.base = NAN
        self.base_at = -1
        self.queue_ratio = 1.0
        self.last_eval = -1
        self.last_cut = -1
        cohort_open(&self.recent, COHORT_CALLS, -1)
        cohort_open(&self.probe, COHORT_CALLS, -1)
        self.step_limit = self.limit_value
        self.quiet_since = -1

    cdef inline int64_t _now(self, object now) except? -1:
        if now is None:
            return read_clock(self.clock, False)
        return check_count("now", now, 0, 0x7FFFFFFFFFFFFFFF)

    cdef inline double _clamp(self, double v) noexcept:
        return self.min_limit if v < self.min_limit else (self.max_limit if v > self.max_limit else v)

    cdef inline void _on_decision(self, bint allowed, int64_t in_flight, int64_t now,
                                  bint guarded=False) noexcept:
        if self.last_eval < 0:
            self.last_eval = now
        if allowed:
            self.admitted += 1
            if self.probing:
                # Calls admitted in the probe's first two intervals: each then has
                # the target's time to finish before the probe runs out of time
                # (see _end_probe).
                cohort_admit(&self.probe, now, self.probe.start + 2 * self.interval_ns)
            if in_flight > self.peak_in_flight:
                self.peak_in_flight = in_flight
        elif guarded:
            self.guarded += 1
        else:
            self.rejected += 1

    cdef int _update(self, double latency, int outcome, int64_t now) except -1:
        """One completed call; may trigger an evaluation."""
        if self.last_eval < 0:
            self.last_eval = now
        if outcome == OUTCOME_OK:
            self.completed += 1
        if outcome != OUTCOME_IGNORED:
            # A call admitted before the last cut says nothing about the new limit.
            if self.last_cut < 0 or now - seconds_to_ns(latency) >= self.last_cut:
                self.evidence._add(INFINITY if outcome == OUTCOME_DROPPED else latency, now)
                if outcome == OUTCOME_DROPPED or latency > self.target_latency:
                    self.slow += 1
                    self.slow_interval += 1
        cdef int64_t admitted_at = now - seconds_to_ns(latency)
        if self.probing:
            if (not cohort_finish(&self.probe, admitted_at, latency, outcome, now)
                    and outcome == OUTCOME_OK and self.probe_stage == 0 and not self.probed
                    and admitted_at < self.probe.start):
                # Admitted before the first probe: after a saturated start these
                # waited behind a queue still building, longer than the fresh median.
                self.before_sum += latency
                self.before_n += 1
            if cohort_complete(&self.probe) or now - self.probe.start >= (
                    2 * self.interval_ns + seconds_to_ns(self.target_latency)):
                self._end_probe(now)
            return 0
        cdef int64_t due = self.interval_ns if self.phase == PHASE_ADDITIVE else self.probe_ns
        if not self.rate_mode:
            cohort_finish(&self.recent, admitted_at, latency, outcome, now)
        if now - self.last_eval >= due and (
                self.rate_mode or self._reported() or now - self.last_eval >= 2 * due):
            # (Concurrency mode: once the calls admitted since the limit last moved
            # have reported, see _grow; at most one more interval.)
            self._evaluate(now)
        elif (self.probed and cohort_complete(&self.recent)
                and self.evidence._count(now) >= self.min_samples):
            # Concurrency mode: the calls admitted since the limit last moved are
            # in, and they describe it; follow the queue now (see _follow_queue).
            # (Not before the percentile can be estimated: that evaluation would
            # only wait, and the next call would trigger it again.)
            self._evaluate(now)
        elif self.slow >= self.early_after and (
                self.last_cut < 0 or now - self.last_cut >= self.interval_ns):
            self._check_overload(now)
        elif (not self.rate_mode and not self.probed and self.completed == self.min_samples
                and self.ref_median > 0 and self._saturated(now) and self._drained(now)):
            # Concurrency mode: the queue drained mid-interval (the backend got
            # faster), grow now.
            self._evaluate(now)
        return 0

    cdef int _check_overload(self, int64_t now) except -1:
        """Enough slow calls to breach the percentile: evaluate now, not at the interval.

        A capacity drop shows at once as slow calls; waiting out the interval lets a
        queue build that the cut must then drain. Only a breach acts early (growth
        and easing keep the interval), and never sooner than an interval after the
        last cut, so there is still at most one cut per interval.
        """
        self.slow = 0
        if self.evidence._count(now) < self.min_samples:
            return 0
        if self._window(self.percentile, now) > self.target_latency:
            self._evaluate(now)
        return 0

    cdef inline double _window(self, double p, int64_t now) noexcept:
        """The p-quantile of the freshest ``window_samples`` calls, no older than
        ``window_age`` once ``min_samples`` are in: at a low admission rate a count
        alone would reach back to calls from a queue long drained."""
        return self.evidence._quantile(p, now, self.window_samples, self.window_age_ns,
                                       self.min_samples)

    cdef double _queue_signal(self, int64_t now, bint saturated) noexcept:
        """Fresh median over the no-load baseline (1.0 when either is unknown).

        Rate mode (and concurrency mode without probes): the baseline is the lowest
        median of ``window_samples`` fresh calls seen, a small dip moving it a
        quarter of the way; after two ``baseline_interval`` without a lower one it
        may rise, by at most ``tolerance`` at a time (the backend got slower; a single
        queued median must not become the baseline). Concurrency mode: the first
        median seen, until a probe measures it (with calls in flight capped over the
        knee every call queues, so no passive median shows the no-load latency).
        """
        cdef double m = self.evidence._quantile(0.5, now, self.window_samples,
                                                self.window_age_ns, self.min_samples)
        # The queue now: the freshest min_samples calls (the baseline needs more).
        cdef double fresh = self.evidence._quantile(0.5, now, self.min_samples,
                                                    self.window_age_ns, FRESH_MIN)
        if not m > 0:
            return 1.0
        if not self.base > 0:
            self.base = m
            self.base_at = now - (self.baseline_ns if saturated else 0)
        elif m <= self.base and (self.rate_mode or self.baseline_interval == 0):
            # The lowest of many noisy medians is lower than the median it
            # estimates: a small dip moves the baseline a quarter of the way.
            if m * (1.0 + self.tolerance) < self.base:
                self.base = m
            else:
                self.base -= (self.base - m) / 4
            self.base_at = now
        elif now - self.base_at >= 2 * self.baseline_ns and (
                self.rate_mode or self.baseline_interval == 0):
            self.base = min(m, self.base * (1.0 + self.tolerance))
            self.base_at = now
        if not self.rate_mode and self._reported():
            # Concurrency mode: the calls admitted since the limit last moved, the
            # queue that limit holds (the freshest calls may have queued behind an
            # earlier one).
            fresh = cohort_median(&self.recent)
        return fresh / self.base

    cdef void _start_probe(self, int64_t now) noexcept:
        """Concurrency mode: measure the no-load latency, as Envoy's minRTT window does.

        With calls in flight capped above the backend's concurrency every call
        queues, median included, so nothing passive shows the latency without a
        queue. For a short while (``COHORT_CALLS`` calls admitted after the start,
        half as many once a baseline is known; at most two intervals and the target)
        the limit comes down by (1 + ``tolerance``) squared, then is restored; the
        median of the calls admitted meanwhile is the new baseline. At the limit the
        queue is followed to (the median ``tolerance`` over the baseline) that is
        under the backend's concurrency, and it keeps most of the throughput, where
        pinning the limit to a small constant, or halving it, would idle much of the
        backend for the probe's length. A limit still over the knee after the step
        overestimates the baseline: the median falls clearly, and the probe steps
        down again (see _end_probe).
        """
        self.probing = True
        self.probe_restore = self.limit_value
        self.probe_stage = 0
        self.before_sum = 0.0
        self.before_n = 0
        # The fresh median at the limit in force, as the evaluation that starts the
        # probe measured it.
        self.probe_before = self.queue_ratio * self.base
        self._next_stage(now)

    cdef void _next_stage(self, int64_t now) noexcept:
        """A probe stage starts: the limit steps down, the sample starts afresh."""
        cohort_open(&self.probe, COHORT_CALLS // 2 if self.probed else COHORT_CALLS, now)
        self.limit_value = self._clamp(self.limit_value / self._probe_step())

    cdef inline double _probe_step(self) noexcept:
        """What a probe stage divides the limit by: (1 + tolerance) squared."""
        return (1.0 + self.tolerance) * (1.0 + self.tolerance)

    cdef void _end_probe(self, int64_t now) noexcept:
        """The probe's calls are in (or its time is up): settle the baseline.

        If the median fell clearly when the calls in flight came down, the limit
        stood over a queue, and the new level may still: step down again (at most
        ``PROBE_STAGES`` times; not once the median is back within ``tolerance`` of
        a baseline an earlier probe measured). Once a step no longer lowers the
        median, that median is the no-load latency, and the level before the step was
        already free of queueing: the limit comes back to no more than one step over
        that (the queue is followed down from there, see _follow_queue).

        A stage's sample is the first calls it admits (when the enforcer reports its
        decisions; fed by ``record`` alone, the first calls to finish), and it ends
        when all of them are in (see Cohort). A stage that runs out of time (calls
        slower than the interval, or few arrivals) takes the median of the calls it
        admitted, those still running counted as the slowest.
        """
        cdef double median = cohort_median(&self.probe) if self.probe.n >= BASE_MIN else NAN
        if not median > 0:
            self.probing = False
            self.limit_value = self.probe_restore
            self.base_at = now
            self._new_step(now)
            self._next_interval(now)
            return
        if self.probe_stage == 0 and self.before_n > 0:
            self.probe_before = max(self.probe_before, self.before_sum / self.before_n)
        if (self.probe_before > median * (1.0 + self.tolerance) and self.probe_stage < PROBE_STAGES
                and self.limit_value > self.min_limit
                and not (self.probed and median <= (1.0 + self.tolerance) * self.base)):
            self.probe_stage += 1
            self.probe_before = median
            self._next_stage(now)
            return
        self.probing = False
        if self.probed and median < self.base:
            # Lower than the last probe's: a few dozen calls can read low by chance,
            # and a baseline read low holds the limit under the backend's concurrency
            # for a whole baseline interval, so meet the last one halfway. (Higher is
            # believed at once: a slower backend must not be queued into.)
            self.base = (self.base + median) / 2
        else:
            self.base = median
        self.probed = True
        self.base_at = now
        if self.probe_stage > 0:
            self.limit_value = min(self.probe_restore, self._clamp(
                self.limit_value * self._probe_step() * self._probe_step()))
            if self.ceiling < self.probe_restore:
                self.ceiling = self.probe_restore
                self.step = self.additive * self.ceiling
            self.phase = PHASE_ADDITIVE
        else:
            self.limit_value = self.probe_restore
        self._new_step(now)
        self._next_interval(now)

    cdef bint _saturated(self, int64_t now) noexcept:
        """Is the limit the bottleneck? Refusals and at least half of it in use.

        Not while the backend is (``_backend_bound``).
        """
        if self.rejected == 0 or self._backend_bound(now):
            return False
        cdef double elapsed = ns_to_seconds(now - self.last_eval)
        if self.rate_mode:
            return elapsed > 0 and self.admitted >= 0.5 * self.limit_value * elapsed
        return self.peak_in_flight >= 0.5 * self.limit_value

    cdef bint _backend_bound(self, int64_t now) noexcept:
        """Rate mode: calls queue at the backend (the in-flight guard refused some, or
        the pace refused some with the fresh median standing over the baseline) and it
        delivered clearly less than the rate, so the backend, not the rate, is the
        bottleneck. Without a queue, delivering less than the rate only means fewer
        calls arrived; so it does with nothing refused at all (every call that came
        was admitted), whatever the median says: at a low rate a median of a few
        dozen calls over the lowest median seen reads as a queue by chance, and the
        rate must not ratchet down to the arrivals on it."""
        if not self.rate_mode or (self.guarded == 0 and not (
                self.rejected > 0 and self._queued())):
            return False
        if self.queue_ratio <= 1.0 + self.tolerance / 2:
            return False
        cdef double elapsed = ns_to_seconds(now - self.last_eval)
        return elapsed > 0 and self.completed / elapsed * (1.0 + self.additive) < self.limit_value

    cdef inline bint _queued(self) noexcept:
        return self.queue_ratio > 1.0 + self.tolerance

    cdef int _evaluate(self, int64_t now) except -1:
        if self.probing:
            return 0
        cdef int64_t n = self.evidence._count(now)
        self.queue_ratio = self._queue_signal(now, self.rejected > 0) if n >= self.min_samples else 1.0
        cdef bint saturated = self._saturated(now)
        if n < self.min_samples:
            if (saturated and n > 0 and n * 5 >= self.min_samples
                    and self.evidence._quantile(1.0, now) <= (1.0 - self.headroom) * self.target_latency):
                # Too few calls to estimate the percentile, but even the slowest is
                # well under the target: nothing to cut, so keep probing upward
                # (a slow-start at a low initial limit would otherwise idle).
                self.last_was_cut = False
                self._grow(self.growth)
                self._next_interval(now)
            elif now - self.last_eval >= 4 * self.interval_ns:
                self._next_interval(now)
            return 0
        cdef double pct = self._window(self.percentile, now)
        cdef double before = self.limit_value
        cdef double median = self._window(0.5, now)
        self.last_percentile = pct
        self.evaluations += 1
        cdef double ratio = pct / self.target_latency
        cdef bint drained = ratio <= 1.0 and saturated and self._drained(now)
        if drained and ratio > 1.0 - self.headroom:
            # The window still holds calls from before the queue drained.
            ratio = 1.0 - self.headroom
        if ratio > 1.0 and self.slow_interval == 0 and not self._queued():
            # Breached only by calls from before this interval, and no queue now:
            # those calls describe a backlog that is gone.
            ratio = 1.0 - self.headroom / 2
        if ratio > 1.0:
            if self.last_cut < 0 or now - self.last_cut >= self.interval_ns:
                self._cut(now)
        elif not self.rate_mode and not self._reported():
            # Concurrency mode: too few of the calls admitted since the limit last
            # moved have finished to say what it does (slow calls, or few): hold. A
            # step now would act on calls from an earlier limit, and would start the
            # sample over.
            pass
        elif (not self.rate_mode and saturated and self.probed):
            # The no-load latency is known: the limit follows the queue (once the
            # interval's own calls are enough to show it).
            self.last_was_cut = False
            self.healthy_run = 0
            self._follow_queue(now)
        elif not self.rate_mode and saturated and self._queued():
            # A standing queue at the limit: come down by its share.
            self.last_was_cut = False
            self.healthy_run = 0
            self._drain()
        elif self._backend_bound(now):
            # The in-flight guard refused calls: the backend, not the rate, was the
            # bottleneck, so the rate is above what it delivers. Come down to that.
            self.last_was_cut = False
            self.healthy_run = 0
            self._trim(now)
        else:
            self.last_was_cut = False
            if self.quiet_since < 0:
                self.quiet_since = now
            if now - self.quiet_since >= self.rearm_ns:
                self.next_shift = 1
            if (ratio <= 1.0 - self.headroom and not drained and self.phase == PHASE_SLOW_START
                    and self.queue_ratio > 1.0 + self.tolerance / 2):
                # Latency rising over the baseline: the knee is near. Slow start
                # ends (as TCP HyStart ends it on delay).
                self.healthy_run = 0
                if saturated:
                    self._end_slow_start(now)
            elif ratio <= 1.0 - self.headroom and not drained and self._queued():
                self.healthy_run = 0
            elif ratio <= 1.0 - self.headroom or (
                    self.rate_mode and ratio <= 1.0 and self.base > 0 and self.evaluations > 1
                    and self.queue_ratio <= 1.0 + self.tolerance / 2):
                # (Rate mode: a percentile near the target with the fresh median at
                # the baseline is the slow tail of a backlog that is gone, or the
                # service's own tail; the queue, not the tail, says when to stop.)
                if saturated:
                    if drained and not self.rate_mode:
                        # Calls in flight capped and the queue gone: the backend
                        # got faster.
                        self._rearm(False)
                        self._grow(self.speedup)
                    else:
                        self._grow(self.growth)
                else:
                    self.healthy_run = 0
            else:
                self.healthy_run = 0
                self._end_slow_start(now)
                if (ratio > 1.0 - self.headroom / 2 and saturated
                        and self.queue_ratio > 1.0 + self.tolerance / 2):
                    self._ease(now)
        # The reference for _drained, unless the limit came down by more than one
        # additive step (a cut drains the queue by itself).
        if self.limit_value < before * (1.0 - self.additive) * (1.0 - 1e-9):
            median = NAN
        self.ref_median = median
        if (not self.rate_mode and saturated and (self.limit_value >= before or not self.probed)
                and self.baseline_interval > 0
                and self.base > 0 and now - self.base_at >= self.baseline_ns):
            self._next_interval(now)
            self._start_probe(now)
            return 0
        self._next_interval(now)
        return 0

    cdef bint _drained(self, int64_t now) noexcept:
        """The queue drained: the freshest calls wait much less than the window's.

        The freshest sub-windows holding ``min_samples`` calls have a median under 3/5
        of the window's at the last evaluation (a queue wait gone, not noise: the
        median of a hundred calls varies by a few percent). A P99 window needs
        hundreds of fresh calls before the slow ones from before a capacity step age
        out; the median of a hundred sees the step at once. Sets ``speedup``, the growth step for
        concurrency mode (see the control law).
        """
        if not self.ref_median > 0:
            return False
        cdef double fresh = self.evidence._quantile(0.5, now, self.min_samples)
        if not fresh <= 0.6 * self.ref_median:
            return False
        self.speedup = min(self.growth * self.growth, max(self.growth, self.ref_median / fresh))
        return True

    cdef void _cut(self, int64_t now) noexcept:
        """Cut by the sequence's next fraction (1/2 when armed, down to ``min_cut``).

        Rate mode, the first cut of a run with a standing queue: no lower than
        ``min_cut`` under what the backend delivered since the last evaluation (at
        most the rate). Over capacity a paced stream queues, and what a queued
        backend delivers is its capacity: a step under it drains the queue (the
        in-flight guard keeps it short) without idling the backend, where halving a
        rate that overshot by a few percent idles it until slow start climbs back.
        Without a queue the delivered rate says nothing of the capacity (the calls
        are slow, not waiting). A breach the step does not cure is a capacity drop
        or a slower backend: the next cut, in a row, follows the sequence alone (and
        cuts harder, see the control law).
        """
        cdef int32_t shift = self.next_shift
        if self.last_was_cut:
            # The previous cut did not cure it: conditions changed, cut harder.
            shift = self.last_shift - 1 if self.last_shift > 1 else 1
        cdef double f = ldexp(1.0, -shift)
        cdef double new = self.limit_value * (1.0 - f)
        cdef double elapsed = ns_to_seconds(now - self.last_eval)
        cdef double delivered
        if (self.rate_mode and not self.last_was_cut and self._queued() and elapsed > 0
                and self.completed > 0):
            delivered = min(self.limit_value, self.completed / elapsed)
            if delivered * (1.0 - self.min_cut) > new:
                new = delivered * (1.0 - self.min_cut)
        self.ceiling = self.limit_value
        self.step = self.additive * self.ceiling
        self.limit_value = self._clamp(new)
        self.last_shift = shift
        self.next_shift = shift + 1 if shift < self.max_shift else self.max_shift
        self.phase = PHASE_SLOW_START
        self.last_was_cut = True
        self.last_cut = now
        self.quiet_since = -1
        self.healthy_run = 0
        self.cuts += 1
        self.reprobe = False
        self.gentle = False
        self.evidence._clear()

    cdef void _grow(self, double factor) noexcept:
        cdef double new
        cdef bint past_peak
        if not self.rate_mode and not self._reported():
            # Concurrency mode: not before the calls admitted since the limit last
            # moved have reported (once per round trip, as TCP grows): with calls
            # slower than the interval, growing on older calls overshoots blind.
            return
        if self.phase == PHASE_SLOW_START:
            if self.gentle:
                new = self.limit_value * (1.0 + 4 * self.additive)
                self.gentle = False
            else:
                new = self.limit_value * factor
            if self.ceiling > 0 and self.limit_value < self.ceiling <= new:
                new = self.ceiling
                self.phase = PHASE_ADDITIVE
                self.healthy_run = 0
        else:
            new = self.limit_value + self.step
            self.healthy_run += 1
            past_peak = new > self.ceiling * (1.0 + 4 * self.additive)
            if past_peak or 0 < self.rearm_after <= self.healthy_run:
                # Clearly past the previous peak, or comfortably fast at full use for
                # a while: the backend got faster. In rate mode a re-probe on healthy
                # growth alone starts gently (see the control law).
                self._rearm(self.rate_mode and not past_peak)
        self.limit_value = self._clamp(new)

    cdef void _rearm(self, bint gentle) noexcept:
        """The backend got faster: probe exponentially again (open-ended slow start)
        and meet the next overload with a big cut."""
        self.reprobe = gentle
        self.gentle = gentle
        self.probe_base = self.limit_value
        self.next_shift = 1
        self.phase = PHASE_SLOW_START
        self.ceiling = 0.0
        self.healthy_run = 0

    cdef void _end_slow_start(self, int64_t now) noexcept:
        """Latency rising toward the target: the knee is near, stop doubling.

        Like TCP HyStart, leaving slow start on a delay increase rather than on loss
        avoids overshooting into the SLO breach that a cut would then have to undo.
        Right after a cut, slow start returns to the level it was cut from, whatever
        the backlog left by the overload says; once that backlog has drained (two
        intervals on), latency near the target means the knee is below that level.
        """
        self.reprobe = False
        self.gentle = False
        if self.phase == PHASE_SLOW_START and (
                self.ceiling == 0 or now - self.last_cut >= 2 * self.interval_ns):
            self.phase = PHASE_ADDITIVE
            if self.ceiling == 0 or self.ceiling > self.limit_value:
                self.ceiling = self.limit_value
                self.step = self.additive * self.ceiling

    cdef void _trim(self, int64_t now) noexcept:
        """Rate mode, backend-bound: limit to one additive step over the delivered rate.

        Ends slow start there (the knee is found, as HyStart ends it on delay). Not a
        cut: the cut sequence does not advance and the evidence is kept. A re-probe
        comes down no lower than the level it started from. Past slow start (the
        rate is near the knee already) it comes down by at most one additive step
        per evaluation: a run of slow service times lowers what an interval
        delivers, not the capacity, and a deeper trim left the rate 8% under
        capacity for over a second.
        """
        cdef double elapsed = ns_to_seconds(now - self.last_eval)
        if elapsed <= 0 or self.completed == 0:
            return
        cdef double level = self.completed / elapsed * (1.0 + self.additive)
        if (self.reprobe and self.phase == PHASE_SLOW_START and self.ceiling == 0
                and level < self.probe_base):
            level = self.probe_base
        if self.phase == PHASE_ADDITIVE and level < self.limit_value * (1.0 - self.additive):
            level = self.limit_value * (1.0 - self.additive)
        self.reprobe = False
        self.gentle = False
        if level < self.limit_value:
            self.limit_value = self._clamp(level)
        if self.phase == PHASE_SLOW_START:
            self.phase = PHASE_ADDITIVE
            self.ceiling = self.limit_value
            self.step = self.additive * self.ceiling

    cdef void _ease(self, int64_t now) noexcept:
        """Close to the target: step back a little before the target is breached.

        One additive step down (not a cut: the cut sequence does not advance). In
        rate mode also admit no more than the backend delivered: above capacity a
        paced stream builds a queue that only a cut would drain, and the completion
        rate of a saturated backend is its capacity.
        """
        cdef double new = self.limit_value - self.additive * self.limit_value
        cdef double elapsed = ns_to_seconds(now - self.last_eval)
        cdef double delivered
        if self.rate_mode and elapsed > 0 and self._queued():
            delivered = self.completed / elapsed * (1.0 - self.additive)
            if delivered < new:
                new = delivered
        self.limit_value = self._clamp(new)

    cdef void _drain(self) noexcept:
        """Concurrency mode, a standing queue (fresh median over the baseline by more
        than ``tolerance``): by Little's law the same throughput needs the limit
        times (1 + tolerance) / ratio in flight, at most half off. Not a cut (the
        cut sequence does not advance); slow start ends and the level the queue was
        seen at becomes the ceiling, as after a cut."""
        cdef double new = self.limit_value * (1.0 + self.tolerance) / self.queue_ratio
        if new < self.limit_value / 2:
            new = self.limit_value / 2
        if self.ceiling < self.limit_value:
            self.ceiling = self.limit_value
            self.step = self.additive * self.ceiling
        self.phase = PHASE_ADDITIVE
        self.reprobe = False
        self.gentle = False
        self.limit_value = self._clamp(new)

    cdef void _follow_queue(self, int64_t now) noexcept:
        """Concurrency mode with a probed baseline, at a saturated limit and under the
        target: the limit times (1 + tolerance) / queue ratio, the calls in flight
        that keep the median ``tolerance`` over the no-load latency (Little's law,
        as Envoy's gradient controller does), at most half off and at most
        ``growth`` times up per step. Under it the backend idles, over it calls
        queue; the target stays the bound (a breach is cut, not followed).

        The queue ratio is the median of the calls admitted since the limit last
        moved, and the step comes as soon as ``COHORT_CALLS`` of them are in (or at
        the interval, once ``_reported``): the freshest calls to finish may
        have been admitted under the previous limit, and a step on them overshoots
        (after a step up) or takes the limit under the backend's concurrency (after
        a step down, they still queued behind the higher limit). Waiting for the
        step's own calls scales the pace with the service: every few dozen
        milliseconds on a fast busy one, every few seconds on a slow quiet one."""
        cdef double new = self.limit_value * (1.0 + self.tolerance) / self.queue_ratio
        if new < self.limit_value / 2:
            new = self.limit_value / 2
        elif new > self.limit_value * self.growth:
            new = self.limit_value * self.growth
        if new < self.limit_value and self.ceiling < self.limit_value:
            self.ceiling = self.limit_value
            self.step = self.additive * self.ceiling
        self.phase = PHASE_ADDITIVE
        self.reprobe = False
        self.gentle = False
        self.limit_value = self._clamp(new)

    cdef void _next_interval(self, int64_t now) noexcept:
        if (self.rejected > 0 or self.guarded > 0) and self.completed > 0 and now > self.last_eval:
            # Calls were refused, so demand exceeded what passed: what the backend
            # completed meanwhile says what it can deliver (at a limit that refuses
            # nothing, completions only follow the arrivals).
            self.delivery_rate[self.delivery_next] = self.completed / ns_to_seconds(now - self.last_eval)
            self.delivery_time[self.delivery_next] = now
            self.delivery_next = (self.delivery_next + 1) % DELIVERY_INTERVALS
        self.slow_interval = 0
        self.last_eval = now
        self.admitted = 0
        self.rejected = 0
        self.guarded = 0
        self.completed = 0
        self.slow = 0
        self.peak_in_flight = 0
        if self._reported() or self.limit_value != self.step_limit:
            self._new_step(now)

    cdef inline bint _reported(self) noexcept:
        """Concurrency mode: the calls admitted since the limit last moved say what it
        does: ``min_samples`` of them (at most ``FRESH_MIN``) finished well, and more
        than half of those that finished."""
        return ((self.recent.n >= FRESH_MIN or self.recent.n >= self.min_samples)
                and cohort_median(&self.recent) > 0)

    cdef inline void _new_step(self, int64_t now) noexcept:
        """Concurrency mode: the step sample starts afresh (see _follow_queue)."""
        cohort_open(&self.recent, COHORT_CALLS, now)
        self.step_limit = self.limit_value

    cdef double _delivered(self, int64_t now) noexcept:
        """The most the backend completed per second in the last few evaluation
        intervals that refused calls, within ``horizon``; 0 when there is none."""
        cdef double best = 0.0
        cdef int32_t i
        for i in range(DELIVERY_INTERVALS):
            if self.delivery_time[i] > 0 and now - self.delivery_time[i] <= self.rearm_ns:
                if self.delivery_rate[i] > best:
                    best = self.delivery_rate[i]
        return best

    @property
    def limit(self):
        """Current limit: admissions per second (rate) or calls in flight (concurrency)."""
        return self.limit_value

    @property
    def current_percentile(self):
        """The percentile (seconds) at the last evaluation; NaN before the first."""
        return self.last_percentile

    @property
    def next_cut(self):
        """Fraction the next cut will take off (1/2 when armed)."""
        return ldexp(1.0, -self.next_shift)

    @property
    def baseline(self):
        """The no-load median latency (seconds) the queue is measured against; NaN
        before any."""
        return self.base

    @property
    def state(self):
        return {"limit": self.limit_value, "ceiling": self.ceiling,
                "phase": "slow_start" if self.phase == PHASE_SLOW_START else "additive",
                "next_cut": self.next_cut, "percentile": self.last_percentile,
                "cuts": self.cuts, "evaluations": self.evaluations,
                "baseline": self.base, "queue_ratio": self.queue_ratio,
                "probing": self.probing}

    def on_decision(self, allowed, in_flight=0, now=None, *, guarded=False):
        """Tell the controller about one admission decision (for the saturation test).

        ``guarded``: refused by an in-flight guard rather than by the limit itself
        (rate mode: the backend, not the rate, was the bottleneck).
        """
        self._on_decision(bool(allowed), check_count("in_flight", in_flight, 0, MAX_COUNT),
                          self._now(now), bool(guarded))

    def record(self, latency, ok=True, *, outcome=None, now=None):
        """One completed call: ``latency`` in seconds; ``ok=False`` for dropped/timed out.

        ``outcome`` ("ok", "dropped", "ignored") overrides ``ok``; an ignored call
        (failed for reasons unrelated to load) is not a latency sample.
        """
        cdef double v = check_latency(latency)
        cdef int o = parse_outcome(ok, outcome)
        self._update(v, o, self._now(now))

    def evaluate(self, now=None):
        """Evaluate now if an interval has passed (``record`` does this by itself)."""
        cdef int64_t t = self._now(now)
        if self.last_eval < 0:
            self.last_eval = t
        elif t - self.last_eval >= self.interval_ns:
            self._evaluate(t)

    def summary(self, now=None):
        """What this controller knows, mergeable with other replicas' summaries.

        ``values``/``weights`` are the evidence reservoir's weighted sample (merge
        replicas with ``weighted_quantile``); the counts are those of the current
        evaluation interval.
        """
        cdef int64_t t = self._now(now)
        values, weights = self.evidence.snapshot(t)
        return {"limit": self.limit_value, "percentile": self.last_percentile,
                "target_latency": self.target_latency, "quantile": self.percentile,
                "values": values, "weights": weights, "admitted": self.admitted,
                "rejected": self.rejected}

    def __repr__(self):
        return (f"AdaptiveLimit(target_latency={self.target_latency!r}, "
                f"percentile={self.percentile!r}, mode={self.mode!r}, "
                f"limit={self.limit_value:.3f})")


# Not tracked by the cyclic GC, for the reason Permit is not (concurrency.pxi).
@cython.no_gc
cdef class AdaptivePermit(Decision):
    """A Decision from AdaptiveLimiter that measures its call and reports the outcome.

    Finish it once: ``success()`` (alias ``release()``), ``dropped()`` (timed out or
    shed downstream) or ``ignore()`` (failed for a reason unrelated to load). As a
    context manager (``with`` or ``async with``) it does so itself: a clean exit is
    a success, ``TimeoutError`` or ``RateLimited`` a drop, any other exception is
    ignored. A permit garbage-collected unfinished frees its slot without a sample.
    """

    cdef AdaptiveLimiter owner
    cdef int64_t start
    cdef int64_t cost
    cdef readonly bint released

    cdef int _finish(self, int outcome) except -1:
        if self.allowed and not self.released:
            self.released = True
            self.owner._finish(self.start, self.cost, outcome)
        return 0

    def success(self):
        self._finish(OUTCOME_OK)

    def release(self):
        self._finish(OUTCOME_OK)

    def dropped(self):
        self._finish(OUTCOME_DROPPED)

    def ignore(self):
        self._finish(OUTCOME_IGNORED)

    cdef int _exit(self, object exc_type) except -1:
        if exc_type is None:
            self._finish(OUTCOME_OK)
        elif issubclass(exc_type, (TimeoutError, RateLimited)):
            self._finish(OUTCOME_DROPPED)
        else:
            self._finish(OUTCOME_IGNORED)
        return 0

    def __exit__(self, exc_type, exc, tb):
        self._exit(exc_type)
        return False

    async def __aenter__(self):
        return self.__enter__()

    async def __aexit__(self, exc_type, exc, tb):
        self._exit(exc_type)
        return False

    def __dealloc__(self):
        if self.allowed and not self.released and self.owner is not None:
            self.released = True
            self.owner._free(self.cost)


cpdef double pacing_burst(double burst, double target_latency, double limit) noexcept:
    """Calls that may pass at once above a rate mode's pace of ``limit`` per second:
    ``burst`` seconds' worth when set (> 0), else the default. Poisson arrivals at 90%
    of a paced rate overflow a bucket of about 20 calls 1% of the time, whatever the
    rate (an M/D/1 queue's length); half the target's worth at the limit queues at most
    half the target. The default never exceeds one second's worth (at least one call):
    a limit of a few calls per second, or per hour, is not passed 20 at once. Shared by
    the in-memory and the Redis-shared adaptive limiters."""
    if burst > 0:
        return burst * limit
    return max(1.0, min(max(MIN_BURST, 0.5 * target_latency * limit), limit))


@cython.final
cdef class AdaptiveLimiter:
    """A limit that follows the backend's latency; ``acquire`` -> AdaptivePermit.

    ``mode="rate"`` paces admissions at ``current_limit`` per second (GCRA with
    ``burst`` seconds' worth of tolerance; default None: half the target latency's
    worth, at least ``MIN_BURST`` calls and at most one second's worth: see
    ``pacing_burst``) and, for calls made through permits, refuses while more than
    rate x target_latency x ``queue_cap`` (default 0.4; at least ``MIN_GUARD`` calls,
    or the whole burst if smaller) are in flight (a backlog the backend is not
    draining; 0 disables; the controller hears of these refusals: see ``_trim``; in
    slow start the rate here is at most what the backend delivered while calls were
    refused, see ``AdaptiveLimit._delivered``); ``mode="concurrency"`` admits while fewer than
    ``current_limit`` calls are in flight. One limit guards the whole
    backend, so every key shares it (keys are validated for uniformity with the
    other limiters). Feed it outcomes by using the permit (``with``/``async with``)
    or with ``record()``. Controller knobs (``interval``, ``horizon``, ``growth``,
    ...) are those of ``AdaptiveLimit``; ``limit_model`` supplies one ready-made.
    One limit shared by many processes through Redis is
    ``limiter.backends.shared_adaptive.SharedAdaptiveLimiter``.
    """

    cdef readonly AdaptiveLimit controller
    cdef readonly str mode
    cdef double burst_s
    cdef readonly double queue_cap
    cdef bint rate_mode
    cdef int64_t tat
    cdef int64_t in_flight_count
    cdef object clock

    def __init__(self, target_latency=0.1, percentile=0.99, mode="rate", min_limit=1,
                 max_limit=100_000, initial_limit=None, clock=None, *, burst=None,
                 queue_cap=None, limit_model=None, **controller):
        self.clock = check_clock(clock)
        if limit_model is not None:
            if not isinstance(limit_model, AdaptiveLimit):
                raise InvalidParameter(
                    f"limit_model must be an AdaptiveLimit, got {limit_model!r:.80}")
            self.controller = limit_model
        else:
            self.controller = AdaptiveLimit(target_latency, percentile, mode, min_limit,
                                            max_limit, initial_limit, clock, **controller)
        self.mode = self.controller.mode
        self.rate_mode = self.mode == "rate"
        self.burst_s = 0.0 if burst is None else check_positive("burst", burst, 60.0)
        if queue_cap is None:
            queue_cap = 0.4
        if isinstance(queue_cap, (int, float)) and not isinstance(queue_cap, bool) and queue_cap == 0:
            self.queue_cap = 0.0
        else:
            self.queue_cap = check_positive("queue_cap", queue_cap, 1000.0)
        self.tat = 0
        self.in_flight_count = 0

    cdef inline int64_t _now(self) except? -1:
        return read_clock(self.clock, False)

    cdef inline double _burst_calls(self, double lim) noexcept:
        """Calls that may pass at once above the pace at rate ``lim``."""
        return pacing_burst(self.burst_s, self.controller.target_latency, lim)

    @property
    def burst(self):
        """Burst tolerance in seconds' worth of the limit, None for the default."""
        return self.burst_s if self.burst_s > 0 else None

    def acquire(self, key="", cost=1):
        """Ask to start a call; returns an AdaptivePermit (check ``allowed``)."""
        check_key(key)
        cdef int64_t c = cost_arg(cost, MAX_COUNT)
        cdef int64_t now = self._now()
        cdef AdaptiveLimit ctl = self.controller
        cdef double lim = ctl.limit_value
        cdef int64_t interval, tolerance, d, cap
        cdef double tokens
        cdef AdaptivePermit p = AdaptivePermit.__new__(AdaptivePermit)
        cdef double latency, delivered, paced, paced_tokens
        cdef bint guarded = False
        cdef Outcome o
        p.owner = self
        p.start = now
        p.cost = c
        if self.rate_mode:
            interval = <int64_t>ceil(NS_PER_S / lim)
            tokens = self._burst_calls(lim)
            tolerance = <int64_t>ceil(tokens)
            if tolerance < c:
                tolerance = c
            tolerance *= interval
            p.limit = <int64_t>ceil(lim)
            paced = lim
            paced_tokens = tokens
            if ctl.phase == PHASE_SLOW_START:
                delivered = ctl._delivered(now)
                if 0 < delivered < lim:
                    paced = delivered
                    paced_tokens = self._burst_calls(delivered)
            if self.queue_cap > 0 and self.in_flight_count + c > max(
                    1.0, min(paced_tokens, MIN_GUARD),
                    paced * ctl.target_latency * self.queue_cap):
                # Little's law: at this rate, more calls in flight than
                # queue_cap x target's worth means the backend is not keeping up;
                # pacing alone would let that queue grow without bound. In slow
                # start the rate counts for no more than the backend was seen to
                # deliver: a rate probing past capacity must not widen the backlog
                # it allows. (Not past slow start: there a slow but wide backend
                # delivers less only because the guard refused, and a bound taken
                # from that would shrink by itself.) The pace's burst does not
                # widen the bound (only MIN_GUARD calls of it count, for a low
                # rate): at capacity the rate stands just over what the backend
                # delivers (see AdaptiveLimit._trim), so the guard's backlog is
                # the standing queue, and the default burst's half a target's
                # worth of it leaves the percentile at the target's edge.
                p.allowed = False
                p.remaining = 0
                p.retry_after = ns_to_seconds(interval)
                guarded = True
            else:
                d = self.tat - now if self.tat > now else 0
                gcra_outcome(d + c * interval <= tolerance, d, c, interval, tolerance, 0, &o)
                p.allowed = o.allowed
                p.remaining = o.remaining if o.remaining > 0 else 0
                p.reset_after = ns_to_seconds(o.reset_ns)
                p.retry_after = ns_to_seconds(o.retry_ns) if o.retry_ns > 0 else 0.0
                if o.allowed:
                    self.tat = now + o.reset_ns
                    self.in_flight_count += c
        else:
            cap = <int64_t>floor(lim)
            if cap < 1:
                cap = 1
            p.limit = cap
            if self.in_flight_count + c > cap:
                p.allowed = False
                p.remaining = cap - self.in_flight_count if cap > self.in_flight_count else 0
                # A slot frees, on average, every latency / in-flight seconds.
                latency = ctl.last_percentile if ctl.last_percentile == ctl.last_percentile else ctl.target_latency
                p.retry_after = latency / cap
            else:
                self.in_flight_count += c
                p.allowed = True
                p.remaining = cap - self.in_flight_count
        ctl._on_decision(p.allowed, self.in_flight_count, now, guarded)
        return p

    cdef int _finish(self, int64_t start, int64_t cost, int outcome) except -1:
        cdef int64_t now = self._now()
        self._free(cost)
        self.controller._update(ns_to_seconds(now - start if now > start else 0), outcome, now)
        return 0

    cdef void _free(self, int64_t cost) noexcept:
        self.in_flight_count -= cost
        if self.in_flight_count < 0:
            self.in_flight_count = 0

    def record(self, latency, ok=True, *, outcome=None):
        """One completed call measured by the caller (seconds); ``ok=False`` = dropped."""
        cdef double v = check_latency(latency)
        cdef int o = parse_outcome(ok, outcome)
        self.controller._update(v, o, self._now())

    @property
    def current_limit(self):
        """Allowed admissions per second (rate) or calls in flight (concurrency)."""
        return self.controller.limit_value

    @property
    def current_percentile(self):
        """Latency percentile (seconds) the controller last acted on; NaN before any."""
        return self.controller.last_percentile

    @property
    def in_flight(self):
        """Calls admitted through permits and not yet finished."""
        return self.in_flight_count

    def summary(self):
        """The controller's mergeable summary (see ``AdaptiveLimit.summary``)."""
        return self.controller.summary(self._now())

    def __repr__(self):
        return (f"AdaptiveLimiter(mode={self.mode!r}, "
                f"target_latency={self.controller.target_latency!r}, "
                f"limit={self.controller.limit_value:.3f})")
