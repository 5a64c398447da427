"""Baseline adaptive limits for the overload simulation, from their published formulas.

Each is a concurrency limit (calls in flight) fed one sample per completed call, as
Netflix's concurrency-limits and Envoy's adaptive_concurrency filter are. Formulas
and defaults: ../shared/REFERENCE.md ("Adaptive-limit baselines"), checked against
the published sources (Netflix AIMDLimit, VegasLimit with Log10RootFunction,
Gradient2Limit with ExpAvgMeasurement; Envoy GradientController::calculateNewLimit):
integer limits where they use them, Netflix's log10 helper max(1, int(log10 limit)),
Envoy's headroom sqrt(gradient x limit) and its minimum concurrency of 3. These are
written for the benchmark only; they are not part of the library.
"""

from __future__ import annotations

import math
import random


class ConcurrencyLimit:
    """Interface: ``limit`` (calls in flight) and ``update`` per completed call."""

    limit: float

    def update(self, now: float, rtt: float, in_flight: int, dropped: bool) -> None:
        raise NotImplementedError


class Aimd(ConcurrencyLimit):
    """Netflix AIMD: x0.9 on a drop/timeout, +1 when at least half the limit is used."""

    def __init__(self, initial: float = 20, min_limit: float = 20, max_limit: float = 200,
                 backoff: float = 0.9, timeout: float = 5.0) -> None:  # fmt: skip
        self.limit = initial
        self.min_limit, self.max_limit = min_limit, max_limit
        self.backoff, self.timeout = backoff, timeout

    def update(self, now: float, rtt: float, in_flight: int, dropped: bool) -> None:
        lim = int(self.limit)
        if dropped or rtt > self.timeout:
            new = max(1, min(lim - 1, int(lim * self.backoff)))
        elif in_flight * 2 >= lim:
            new = lim + 1
        else:
            return
        self.limit = min(self.max_limit, max(self.min_limit, new))


def log10_root(limit: float) -> int:
    """Netflix's Log10RootFunction: max(1, int(log10 n)) below 1000, int(sqrt n) above."""
    n = int(limit)
    return max(1, int(math.log10(n))) if 1 <= n < 1000 else (1 if n < 1 else int(math.sqrt(n)))


class Vegas(ConcurrencyLimit):
    """Netflix Vegas: estimate the queue from rtt_noload/rtt and steer it into [alpha, beta]."""

    def __init__(self, initial: float = 20, max_limit: float = 1000, probe: int = 30,
                 seed: int = 1) -> None:  # fmt: skip
        self.limit = float(initial)
        self.max_limit = max_limit
        self.probe = probe
        self.rtt_noload = 0.0
        self.rng = random.Random(seed)
        self.jitter = self.rng.uniform(0.5, 1.0)
        self.probe_count = 0

    def update(self, now: float, rtt: float, in_flight: int, dropped: bool) -> None:
        self.probe_count += 1
        if self.jitter * self.probe * self.limit <= self.probe_count:
            # Re-probe: the current sample becomes the no-load rtt.
            self.jitter = self.rng.uniform(0.5, 1.0)
            self.probe_count = 0
            self.rtt_noload = rtt
            return
        if self.rtt_noload == 0 or rtt < self.rtt_noload:
            self.rtt_noload = rtt
            return
        lim = self.limit
        log = log10_root(lim)
        queue = math.ceil(lim * (1 - self.rtt_noload / rtt))
        if dropped:
            new = lim - log
        elif in_flight * 2 < lim:
            return
        else:
            alpha, beta, threshold = 3 * log, 6 * log, log
            if queue <= threshold:
                new = lim + beta
            elif queue < alpha:
                new = lim + log
            elif queue > beta:
                new = lim - log
            else:
                return
        self.limit = min(self.max_limit, max(1.0, new))


class Gradient2(ConcurrencyLimit):
    """Netflix Gradient2: limit x clamp(1.5 longRtt/shortRtt, 0.5, 1) + queue, smoothed."""

    def __init__(self, initial: float = 20, min_limit: float = 20, max_limit: float = 200,
                 window: int = 600, tolerance: float = 1.5, queue: float = 4,
                 smoothing: float = 0.2) -> None:  # fmt: skip
        self.limit = initial
        self.min_limit, self.max_limit = min_limit, max_limit
        self.alpha = 2 / (window + 1)
        self.tolerance, self.queue, self.smoothing = tolerance, queue, smoothing
        self.long_rtt = 0.0
        self.warmup = 10  # ExpAvgMeasurement: a plain average of the first 10 samples
        self.count = 0

    def update(self, now: float, rtt: float, in_flight: int, dropped: bool) -> None:
        short = rtt
        self.count += 1
        if self.count <= self.warmup:
            self.long_rtt += (short - self.long_rtt) / self.count
        else:
            self.long_rtt += self.alpha * (short - self.long_rtt)
        if self.long_rtt / short > 2:
            # Back from a long overload: decay the baseline rather than wait for the average.
            self.long_rtt *= 0.9
        if in_flight < self.limit / 2:
            return
        gradient = max(0.5, min(1.0, self.tolerance * self.long_rtt / short))
        new = self.limit * gradient + self.queue
        new = self.limit * (1 - self.smoothing) + new * self.smoothing
        self.limit = min(self.max_limit, max(self.min_limit, new))


class EnvoyGradient(ConcurrencyLimit):
    """Envoy adaptive_concurrency: gradient = minRTT·(1+buffer)/sampleRTT on windowed p50.

    Every ``update_interval`` the p50 of that window's samples is the sampleRTT and,
    with g = clamp(gradient, 0.5, 2), new = int(g·limit + sqrt(g·limit)) within
    [3, 1000]. minRTT is measured at start and every ``min_rtt_interval`` s by
    pinning the limit to 3 for 50 samples.
    """

    def __init__(self, initial: float = 3, max_limit: float = 1000, buffer: float = 0.25,
                 update_interval: float = 0.1, min_rtt_interval: float = 60.0,
                 probe_concurrency: int = 3, probe_requests: int = 50) -> None:  # fmt: skip
        self.max_limit, self.buffer = max_limit, buffer
        self.update_interval, self.min_rtt_interval = update_interval, min_rtt_interval
        self.probe_concurrency, self.probe_requests = probe_concurrency, probe_requests
        self.work_limit = float(initial)
        self.min_rtt = math.inf
        self.samples: list[float] = []
        self.probing = True
        self.probe_samples: list[float] = []
        self.window_end = 0.0
        self.next_probe = 0.0

    @property
    def limit(self) -> float:
        return self.probe_concurrency if self.probing else self.work_limit

    def update(self, now: float, rtt: float, in_flight: int, dropped: bool) -> None:
        if self.probing:
            self.probe_samples.append(rtt)
            if len(self.probe_samples) >= self.probe_requests:
                self.probe_samples.sort()
                self.min_rtt = self.probe_samples[len(self.probe_samples) // 2]
                self.probe_samples = []
                self.probing = False
                self.next_probe = now + self.min_rtt_interval
                self.window_end = now + self.update_interval
            return
        self.samples.append(rtt)
        if now < self.window_end:
            return
        self.window_end = now + self.update_interval
        if now >= self.next_probe:
            self.probing = True
            self.samples = []
            return
        if not self.samples:
            return
        self.samples.sort()
        sample_rtt = self.samples[len(self.samples) // 2]
        self.samples = []
        gradient = max(0.5, min(2.0, self.min_rtt * (1 + self.buffer) / sample_rtt))
        scaled = gradient * self.work_limit
        new = int(scaled + math.sqrt(scaled))
        self.work_limit = float(min(self.max_limit, max(self.probe_concurrency, new)))
