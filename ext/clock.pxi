# The kernels' default clock: CLOCK_MONOTONIC, read through the CPU's time-stamp counter.
#
# Why: on a fast decision the clock read was a third of the work (clock_gettime
# costs ~16 ns even through the vDSO; rdtsc ~7 ns). Where the kernel itself trusts
# the TSC (clocksource "tsc", invariant TSC), we convert ticks to nanoseconds with a
# rate measured against CLOCK_MONOTONIC and re-anchor on CLOCK_MONOTONIC every
# 10 ms, so the reading never drifts from it by more than the rate error over one
# short segment (sub-microsecond). Readings never go backwards: a re-anchor starts
# at or after the last value the previous segment could have returned. Callers hold
# the GIL, which serialises the re-anchoring.
# Anywhere else (other CPUs, other clock sources, LIMITER_CLOCK=monotonic) it is
# plain clock_gettime.

from libc.stdint cimport int64_t


cdef extern from *:
    """
    #include <stdint.h>
    #include <time.h>
    #if defined(__x86_64__)
    #include <x86intrin.h>
    #define LIM_HAVE_TSC 1
    static inline uint64_t lim_ticks(void) { return __rdtsc(); }
    #else
    #define LIM_HAVE_TSC 0
    static inline uint64_t lim_ticks(void) { return 0; }
    #endif

    #define LIM_RESYNC_NS 10000000LL      /* re-anchor on CLOCK_MONOTONIC every 10 ms */
    #define LIM_CALIBRATE_NS 20000000LL   /* first rate estimate after 20 ms */
    #define LIM_RATE_TOLERANCE 1e-4       /* a larger change means the TSC jumped */
    #define LIM_CLEAN_TICKS 20000ULL      /* a sample taking longer was interrupted */

    typedef struct {
        int allowed;            /* the platform checks passed */
        int ready;              /* calibrated: the fast path is on */
        uint64_t tick0;         /* current segment: anchor, length, rate */
        int64_t ns0;
        uint64_t resync_ticks;  /* 0 while not ready: every read takes the slow path */
        double seg_rate;
        double ns_per_tick;     /* calibrated rate, measured over a long baseline */
        uint64_t cal_tick;
        int64_t cal_ns;
        int64_t floor;          /* no reading is ever below this */
        int64_t wall_offset;    /* CLOCK_REALTIME - CLOCK_MONOTONIC at the last anchor */
        uint64_t resyncs;
    } lim_clock_t;

    static lim_clock_t lim_clock = {0};

    static inline int64_t lim_gettime(clockid_t id) {
        struct timespec ts;
        clock_gettime(id, &ts);
        return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    }

    static void lim_clock_restart(uint64_t t, int64_t ns) {
        lim_clock.ready = 0;
        lim_clock.resync_ticks = 0;
        lim_clock.cal_tick = t;
        lim_clock.cal_ns = ns;
    }

    /* Slow path: a new segment, or still calibrating (every read comes here then). */
    static int64_t lim_clock_resync(uint64_t t) {
        int64_t real = lim_gettime(CLOCK_MONOTONIC);
        /* (after, real) is the anchor: real was read no later than tick ``after``. A
           pair that took long (the thread was interrupted) is too loose to measure the
           rate with, but still a safe anchor: it can only put the clock behind. */
        uint64_t after = lim_ticks();
        int clean = after - t < LIM_CLEAN_TICKS;
        int64_t now, gap;
        lim_clock.resyncs++;
        lim_clock.wall_offset = lim_gettime(CLOCK_REALTIME) - real;
        if (lim_clock.ready) {
            /* The old segment returned at most its prediction for min(t, its end). */
            uint64_t d = t - lim_clock.tick0;
            if (d > lim_clock.resync_ticks) d = lim_clock.resync_ticks;
            int64_t predicted = lim_clock.ns0 + (int64_t)((double)d * lim_clock.seg_rate);
            if (predicted > lim_clock.floor) lim_clock.floor = predicted;
            if (clean && after <= lim_clock.cal_tick) {
                lim_clock_restart(after, real);     /* the counter went backwards */
            } else if (clean) {
                double rate = (double)(real - lim_clock.cal_ns) / (double)(after - lim_clock.cal_tick);
                double change = rate / lim_clock.ns_per_tick - 1.0;
                if (change > LIM_RATE_TOLERANCE || change < -LIM_RATE_TOLERANCE)
                    lim_clock_restart(after, real);
                else
                    lim_clock.ns_per_tick = rate;
            }
        } else if (clean && (lim_clock.cal_ns == 0 || after <= lim_clock.cal_tick)) {
            lim_clock_restart(after, real);
        } else if (clean && real - lim_clock.cal_ns >= LIM_CALIBRATE_NS) {
            lim_clock.ns_per_tick = (double)(real - lim_clock.cal_ns) / (double)(after - lim_clock.cal_tick);
            lim_clock.ready = 1;
        }
        now = real > lim_clock.floor ? real : lim_clock.floor;
        lim_clock.floor = now;
        if (lim_clock.ready) {
            /* Run this segment slow enough to absorb any lead over CLOCK_MONOTONIC. */
            gap = now - real;
            if (gap > LIM_RESYNC_NS / 2) gap = LIM_RESYNC_NS / 2;
            lim_clock.tick0 = after;
            lim_clock.ns0 = now;
            lim_clock.resync_ticks = (uint64_t)(LIM_RESYNC_NS / lim_clock.ns_per_tick);
            lim_clock.seg_rate = lim_clock.ns_per_tick * (1.0 - (double)gap / LIM_RESYNC_NS);
        }
        return now;
    }

    static inline int64_t lim_monotonic_ns(void) {
        if (lim_clock.allowed) {
            uint64_t t = lim_ticks();
            uint64_t d = t - lim_clock.tick0;   /* unsigned: a backwards step is huge */
            if (d < lim_clock.resync_ticks)
                return lim_clock.ns0 + (int64_t)((double)d * lim_clock.seg_rate);
            return lim_clock_resync(t);
        }
        return lim_gettime(CLOCK_MONOTONIC);
    }

    static inline int64_t lim_realtime_ns(void) {
        if (lim_clock.allowed && lim_clock.ready)
            return lim_monotonic_ns() + lim_clock.wall_offset;
        return lim_gettime(CLOCK_REALTIME);
    }
    """
    ctypedef struct lim_clock_t:
        int allowed
        int ready
        double ns_per_tick
        unsigned long long resyncs
    lim_clock_t lim_clock
    int LIM_HAVE_TSC
    long long lim_monotonic_ns() noexcept nogil
    long long lim_realtime_ns() noexcept nogil


cdef inline int64_t monotonic_ns() noexcept nogil:
    return lim_monotonic_ns()


cdef inline int64_t realtime_ns() noexcept nogil:
    return lim_realtime_ns()


def _tsc_trusted():
    """True when the OS itself keeps time with an invariant TSC (so may we)."""
    import os

    if not LIM_HAVE_TSC or os.environ.get("LIMITER_CLOCK", "") == "monotonic":
        return False
    try:
        with open("/sys/devices/system/clocksource/clocksource0/current_clocksource") as f:
            if f.read().strip() != "tsc":
                return False
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split()
                    return "constant_tsc" in flags and "nonstop_tsc" in flags
    except OSError:
        return False
    return False


lim_clock.allowed = 1 if _tsc_trusted() else 0


def clock_ns():
    """The kernels' default monotonic clock in int ns (CLOCK_MONOTONIC's time base)."""
    return monotonic_ns()


def wall_clock_ns():
    """The kernels' wall clock in int ns (CLOCK_REALTIME's time base), for aligned windows."""
    return realtime_ns()


def clock_source():
    """How the default clock is read: ``"tsc"`` (calibrated, once warm) or ``"clock_gettime"``."""
    return "tsc" if lim_clock.allowed else "clock_gettime"
