# HeavyHitters: which keys send the most, over a sliding window, in bounded memory.
#
# Space-Saving (Metwally et al.) keeps ``capacity`` counters; a new key takes over
# the smallest counter and inherits its count as its error bound, so every key whose
# true count exceeds total/capacity is guaranteed to be tracked and counts are never
# underestimated by more than ``error``. The sliding window is a ring of ``buckets``
# sub-window summaries: a sub-window older than the window is wiped when its ring slot
# is reused, and queries merge the live ones, so the window covers between
# ``window - window/buckets`` and ``window`` seconds. Each summary keeps a min-heap of
# its counters, making an update O(log capacity).


@cython.final
cdef class HeavyHitters:
    """Top clients by weight over the last ``window`` seconds (Space-Saving sketch).

    ``offer(key, weight)`` counts and returns the key's estimated window count;
    ``share(key)`` is that estimate over the window total; ``top(n)`` lists the
    heaviest keys as ``(key, count, error)`` with ``count - error <= true <= count``.
    ``clock`` (optional) returns monotonic int nanoseconds.
    """

    cdef readonly int32_t capacity
    cdef readonly int32_t buckets
    cdef readonly double window
    cdef int64_t sub_ns
    cdef object clock
    cdef list index
    cdef list keys
    cdef int64_t* counts
    cdef int64_t* errors
    cdef int32_t* heap
    cdef int32_t* pos
    cdef int32_t* size
    cdef int64_t* epoch
    cdef int64_t* totals

    def __cinit__(self):
        self.counts = self.errors = self.epoch = self.totals = NULL
        self.heap = self.pos = self.size = NULL

    def __init__(self, capacity=64, window=10.0, buckets=5, *, clock=None):
        self.capacity = <int32_t>check_count("capacity", capacity, 1, 1 << 20)
        self.buckets = <int32_t>check_count("buckets", buckets, 1, 1024)
        self.window = check_positive("window", window, MAX_SECONDS)
        self.sub_ns = seconds_to_ns(self.window / self.buckets)
        if self.sub_ns < 1:
            raise InvalidParameter(f"window / buckets is under 1 ns: window={window!r}")
        self.clock = check_clock(clock)
        cdef Py_ssize_t cells = <Py_ssize_t>self.capacity * self.buckets
        self.counts = <int64_t*>malloc(cells * sizeof(int64_t))
        self.errors = <int64_t*>malloc(cells * sizeof(int64_t))
        self.heap = <int32_t*>malloc(cells * sizeof(int32_t))
        self.pos = <int32_t*>malloc(cells * sizeof(int32_t))
        self.size = <int32_t*>malloc(self.buckets * sizeof(int32_t))
        self.epoch = <int64_t*>malloc(self.buckets * sizeof(int64_t))
        self.totals = <int64_t*>malloc(self.buckets * sizeof(int64_t))
        if (self.counts == NULL or self.errors == NULL or self.heap == NULL or self.pos == NULL
                or self.size == NULL or self.epoch == NULL or self.totals == NULL):
            raise MemoryError()
        self.index = [{} for _ in range(self.buckets)]
        self.keys = [[None] * self.capacity for _ in range(self.buckets)]
        self.clear()

    def __dealloc__(self):
        free(self.counts)
        free(self.errors)
        free(self.heap)
        free(self.pos)
        free(self.size)
        free(self.epoch)
        free(self.totals)

    def clear(self):
        """Forget everything."""
        cdef int32_t b
        for b in range(self.buckets):
            self._wipe(b, -1)

    cdef int _wipe(self, int32_t b, int64_t epoch) except -1:
        (<dict>self.index[b]).clear()
        self.size[b] = 0
        self.totals[b] = 0
        self.epoch[b] = epoch
        return 0

    cdef inline int64_t _now(self) except? -1:
        if self.clock is None:
            return monotonic_ns()
        return read_clock(self.clock, False)

    cdef inline void _swap(self, Py_ssize_t base, int32_t i, int32_t j) noexcept:
        cdef int32_t a = self.heap[base + i], c = self.heap[base + j]
        self.heap[base + i] = c
        self.heap[base + j] = a
        self.pos[base + c] = i
        self.pos[base + a] = j

    cdef void _sift_down(self, Py_ssize_t base, int32_t n, int32_t i) noexcept:
        cdef int32_t left, right, smallest
        while True:
            left = 2 * i + 1
            right = left + 1
            smallest = i
            if left < n and self.counts[base + self.heap[base + left]] < self.counts[base + self.heap[base + smallest]]:
                smallest = left
            if right < n and self.counts[base + self.heap[base + right]] < self.counts[base + self.heap[base + smallest]]:
                smallest = right
            if smallest == i:
                return
            self._swap(base, i, smallest)
            i = smallest

    cdef void _sift_up(self, Py_ssize_t base, int32_t i) noexcept:
        cdef int32_t parent
        while i > 0:
            parent = (i - 1) // 2
            if self.counts[base + self.heap[base + parent]] <= self.counts[base + self.heap[base + i]]:
                return
            self._swap(base, i, parent)
            i = parent

    cdef int32_t _current(self, int64_t now) except -1:
        """Ring slot of the sub-window holding ``now``, wiped if it held an older one."""
        cdef int64_t e = now // self.sub_ns
        cdef int32_t b = <int32_t>(e % self.buckets)
        if self.epoch[b] != e:
            self._wipe(b, e)
        return b

    cdef inline bint _live(self, int32_t b, int64_t e_now) noexcept:
        return self.epoch[b] >= 0 and self.epoch[b] > e_now - self.buckets and self.epoch[b] <= e_now

    cdef int64_t _estimate(self, object key, int64_t now) except -1:
        cdef int64_t e_now = now // self.sub_ns, total = 0
        cdef int32_t b
        cdef PyObject* obj
        for b in range(self.buckets):
            if self._live(b, e_now):
                obj = PyDict_GetItem(<dict>self.index[b], key)
                if obj != NULL:
                    total += self.counts[<Py_ssize_t>b * self.capacity + <int32_t><object>obj]
        return total

    def offer(self, key, weight=1):
        """Count ``weight`` for ``key`` now; returns its estimated count in the window."""
        cdef int64_t w = 1 if weight == 1 and type(weight) is int else check_count(
            "weight", weight, 1, MAX_COUNT)
        key = check_key(key)
        cdef int64_t now = self._now()
        self._add(key, w, now)
        return self._estimate(key, now)

    def offer_many(self, keys, weights):
        """``offer`` each key with its weight, in order, at one clock reading, without
        the estimates (counting many requests' clients costs one call). Every key and
        weight is checked before any is counted."""
        cdef list ks = [check_key(k) for k in keys]
        cdef list ws = [check_count("weight", w, 1, MAX_COUNT) for w in weights]
        if len(ks) != len(ws):
            raise InvalidParameter(f"weights: {len(ws)} given for {len(ks)} keys")
        cdef int64_t now = self._now()
        cdef Py_ssize_t i
        for i in range(len(ks)):
            self._add(ks[i], <int64_t>ws[i], now)

    cdef int _add(self, object key, int64_t w, int64_t now) except -1:
        cdef int32_t b = self._current(now)
        cdef Py_ssize_t base = <Py_ssize_t>b * self.capacity
        cdef dict idx = <dict>self.index[b]
        cdef PyObject* obj = PyDict_GetItem(idx, key)
        cdef int32_t slot, n = self.size[b]
        if obj != NULL:
            slot = <int32_t><object>obj
            self.counts[base + slot] += w
            self._sift_down(base, n, self.pos[base + slot])
        elif n < self.capacity:
            slot = n
            self.size[b] = n + 1
            self.counts[base + slot] = w
            self.errors[base + slot] = 0
            self.heap[base + n] = slot
            self.pos[base + slot] = n
            (<list>self.keys[b])[slot] = key
            PyDict_SetItem(idx, key, slot)
            self._sift_up(base, n)
        else:
            slot = self.heap[base]
            PyDict_DelItem(idx, (<list>self.keys[b])[slot])
            self.errors[base + slot] = self.counts[base + slot]
            self.counts[base + slot] += w
            (<list>self.keys[b])[slot] = key
            PyDict_SetItem(idx, key, slot)
            self._sift_down(base, n, 0)
        self.totals[b] += w
        return 0

    def estimate(self, key):
        """Estimated count of ``key`` in the window (an upper bound; 0 if untracked)."""
        key = check_key(key)
        return self._estimate(key, self._now())

    def total(self):
        """Total weight offered in the window."""
        cdef int64_t e_now = self._now() // self.sub_ns, total = 0
        cdef int32_t b
        for b in range(self.buckets):
            if self._live(b, e_now):
                total += self.totals[b]
        return total

    def share(self, key):
        """``estimate(key) / total()`` (0.0 on an empty window)."""
        key = check_key(key)
        cdef int64_t now = self._now()
        cdef int64_t e_now = now // self.sub_ns, total = 0
        cdef int32_t b
        for b in range(self.buckets):
            if self._live(b, e_now):
                total += self.totals[b]
        if total == 0:
            return 0.0
        return self._estimate(key, now) / <double>total

    def top(self, n=10):
        """The ``n`` heaviest keys in the window as ``(key, count, error)``, heaviest first.

        A key absent from a full sub-window may have had up to that sub-window's
        smallest count there, so that amount is added to its error bound.
        """
        cdef int64_t limit = check_count("n", n, 0, 1 << 20)
        cdef int64_t e_now = self._now() // self.sub_ns
        cdef int32_t b, slot
        cdef Py_ssize_t base
        merged = {}
        live = [b for b in range(self.buckets) if self._live(b, e_now)]
        for b in live:
            base = <Py_ssize_t>b * self.capacity
            for key, slot in (<dict>self.index[b]).items():
                entry = merged.get(key)
                if entry is None:
                    merged[key] = [self.counts[base + slot], self.errors[base + slot]]
                else:
                    entry[0] += self.counts[base + slot]
                    entry[1] += self.errors[base + slot]
        for b in live:
            if self.size[b] == self.capacity:
                base = <Py_ssize_t>b * self.capacity
                floor_count = self.counts[base + self.heap[base]]
                idx = <dict>self.index[b]
                for key, entry in merged.items():
                    if key not in idx:
                        entry[0] += floor_count
                        entry[1] += floor_count
        ranked = sorted(merged.items(), key=lambda item: (-item[1][0], item[1][1], item[0]))
        return [(key, c, err) for key, (c, err) in ranked[:limit]]

    def __len__(self):
        """Keys tracked in the window (at most ``capacity * buckets``)."""
        cdef int64_t e_now = self._now() // self.sub_ns
        seen = set()
        for b in range(self.buckets):
            if self._live(b, e_now):
                seen.update((<dict>self.index[b]).keys())
        return len(seen)

    def __repr__(self):
        return (f"HeavyHitters(capacity={self.capacity}, window={self.window!r}, "
                f"buckets={self.buckets})")
