# KeyTable: bounded key -> state-row map with CLOCK eviction, and the keyed-limiter base.

from cpython.sequence cimport PySequence_Fast_ITEMS

cdef int64_t NEVER_IDLE = 0x7FFFFFFFFFFFFFFF
# Requests per pass of allow_batch's prefetching loop.
DEF BATCH_CHUNK = 32
# Per-row header before the algorithm's state: [idle_at, flags].
DEF HEADER = 2
cdef int64_t LIVE = 1
cdef int64_t REFERENCED = 2


cdef class KeyTable:
    """Bounded map from key to a fixed-width row of int64 state.

    Why: a flood of distinct keys must not exhaust memory, and a Python object per
    key would cost far more than the few integers an algorithm needs. Rows live in
    one C array and a KeyIndex maps key -> row number. A row of zeros is a fresh key.
    Each row records ``idle_at``, the time after which its state is equivalent to a
    fresh key: such rows are reclaimed lazily without changing any answer.

    When the table is full a victim is chosen by CLOCK (second chance), the
    classic constant-time approximation of LRU: a hit only sets a flag in the row it
    already touches, instead of relinking list neighbours scattered over memory.
    An evicted key starts fresh if it returns (counted in ``evictions``), unless
    ``can_evict_busy`` is false, in which case the new key gets no row (-1).
    """

    cdef KeyIndex index
    cdef PyObject** slot_keys  # borrowed from index, which owns the references
    cdef int64_t* rows
    cdef int32_t* free_next
    cdef int32_t width, stride, capacity, used, size, max_keys, hand, free_head
    cdef bint can_evict_busy
    cdef readonly uint64_t evictions
    # Bumped whenever a row is freed: a slot looked up earlier may now hold another key.
    cdef uint64_t removals

    def __cinit__(self, int32_t width, int32_t max_keys, bint can_evict_busy=True):
        self.index = KeyIndex()
        self.width = width
        self.stride = width + HEADER
        self.max_keys = max_keys
        self.can_evict_busy = can_evict_busy
        self.capacity = self.used = self.size = self.hand = 0
        self.free_head = -1
        self.rows = NULL
        self.free_next = NULL
        self.slot_keys = NULL
        self._grow()

    def __dealloc__(self):
        free(self.rows)
        free(self.free_next)
        free(self.slot_keys)

    def __len__(self):
        return self.size

    cdef int _grow(self) except -1:
        cdef int32_t cap = 64 if self.capacity == 0 else self.capacity * 2
        if cap > self.max_keys:
            cap = self.max_keys
        cdef size_t row_bytes = <size_t>self.stride * sizeof(int64_t)
        cdef int64_t* rows = <int64_t*>big_realloc(
            self.rows, <size_t>self.capacity * row_bytes, <size_t>cap * row_bytes)
        if rows == NULL:
            raise MemoryError()
        self.rows = rows
        cdef int32_t* nxt = <int32_t*>realloc(self.free_next, <size_t>cap * sizeof(int32_t))
        if nxt == NULL:
            raise MemoryError()
        self.free_next = nxt
        cdef PyObject** sk = <PyObject**>big_realloc(
            self.slot_keys, <size_t>self.capacity * sizeof(PyObject*), <size_t>cap * sizeof(PyObject*))
        if sk == NULL:
            raise MemoryError()
        self.slot_keys = sk
        self.capacity = cap
        return 0

    cdef inline int64_t* _base(self, int32_t slot) noexcept:
        return self.rows + <Py_ssize_t>slot * self.stride

    cdef inline int64_t* row(self, int32_t slot) noexcept:
        """The algorithm's state for ``slot``."""
        return self.rows + <Py_ssize_t>slot * self.stride + HEADER

    cdef inline void set_idle(self, int32_t slot, int64_t idle_at) noexcept:
        """From ``idle_at`` on, the row equals a fresh key and may be reclaimed."""
        self.rows[<Py_ssize_t>slot * self.stride] = idle_at

    cdef inline int32_t find(self, object key) except -2:
        """Row of ``key`` or -1."""
        return self.index.get(key)

    cdef inline int32_t get(self, object key, int64_t now) except -2:
        """Row of ``key``, created fresh if absent; marks it recently used."""
        cdef int32_t slot = self.index.get(key)
        if slot >= 0:
            self.touch(slot)
            return slot
        return self._insert(key, now)

    cdef inline void touch(self, int32_t slot) noexcept:
        """Mark ``slot`` recently used (CLOCK's reference bit)."""
        self.rows[<Py_ssize_t>slot * self.stride + 1] = LIVE | REFERENCED

    cdef inline void prefetch_row(self, int32_t slot) noexcept:
        prefetch(self.rows + <Py_ssize_t>slot * self.stride)

    cdef int32_t _sweep(self, int64_t now, bint full) except -2:
        """Advance the clock hand; reclaim idle rows, and pick a victim when ``full``."""
        cdef int32_t steps = 2 if not full else 2 * self.used + 1
        cdef int32_t s
        cdef int64_t* base
        while steps > 0 and self.used > 0:
            steps -= 1
            s = self.hand
            self.hand = s + 1 if s + 1 < self.used else 0
            base = self._base(s)
            if not (base[1] & LIVE):
                continue
            if base[0] <= now:
                self.remove(s)
                if full:
                    return s
            elif base[1] & REFERENCED:
                base[1] = LIVE
            elif full and self.can_evict_busy:
                self.remove(s)
                self.evictions += 1
                return s
        return -1

    cdef int32_t _insert(self, object key, int64_t now) except -2:
        cdef int32_t slot, i
        self._sweep(now, False)
        if self.size >= self.max_keys:
            # Rows that never go idle (in-flight counts) cannot be evicted: refuse at once.
            if not self.can_evict_busy or self._sweep(now, True) < 0:
                return -1
        if self.free_head >= 0:
            slot = self.free_head
            self.free_head = self.free_next[slot]
        else:
            slot = self.used
            if slot >= self.capacity:
                self._grow()
            self.used += 1
        self.slot_keys[slot] = <PyObject*>key
        cdef int64_t* base = self._base(slot)
        for i in range(self.stride):
            base[i] = 0
        base[1] = LIVE | REFERENCED
        self.index.put(key, slot)
        self.size += 1
        return slot

    cdef int remove(self, int32_t slot) except -1:
        self.removals += 1
        self.index.delete(<object>self.slot_keys[slot])
        self.slot_keys[slot] = NULL
        self._base(slot)[1] = 0
        self.free_next[slot] = self.free_head
        self.free_head = slot
        self.size -= 1
        return 0

    def clear(self):
        self.removals += 1
        self.index.clear()
        self.used = self.size = self.hand = 0
        self.free_head = -1


cdef inline object check_key(object key):
    """Keys are exact str (a str subclass is copied to a plain str: its __hash__ or
    __eq__ could run Python code in the middle of an update)."""
    if type(key) is str:
        return key
    if isinstance(key, str):
        return str.__str__(key)
    raise InvalidParameter(f"key must be a str, got {type(key).__name__}: {key!r:.80}")


cdef int64_t cost_slow(object cost, int64_t maximum) except -1:
    return check_count("cost", cost, 1, maximum)


cdef inline int64_t cost_arg(object cost, int64_t maximum) except -1:
    """Fast path for the common small-int cost; the slow path explains what is wrong."""
    cdef int64_t c
    cdef int overflow = 0
    if type(cost) is int:
        c = PyLong_AsLongLongAndOverflow(cost, &overflow)
        if overflow == 0 and 1 <= c <= maximum:
            return c
    return cost_slow(cost, maximum)


cdef struct Outcome:
    bint allowed
    int64_t remaining
    int64_t reset_ns
    int64_t retry_ns
    int64_t wait_ns


cdef class KeyedLimiter:
    """Base of every keyed limiter: key table, clock, and the per-key algorithm.

    Subclasses implement ``_decide`` (the algorithm on one row). Thread-safe under
    the GIL: no Python code runs while a row is being updated.
    """

    cdef KeyTable table
    cdef object clock
    cdef bint wall
    cdef int64_t limit_value
    cdef int64_t max_cost
    # Shared state (limiter.backends.Bound) when backend= names one; None = this process.
    cdef readonly object remote

    cdef _setup(self, int32_t width, object max_keys, object clock, bint wall, object backend,
                object spec, bint can_evict_busy=True):
        cdef int64_t mk = check_count("max_keys", max_keys, 1, 0x7FFFFFFF)
        self.table = KeyTable(width, mk, can_evict_busy)
        self.clock = check_clock(clock)
        self.wall = wall
        self.remote = bind_backend(backend, spec)

    cdef int _decide(self, object key, int64_t cost, int64_t now, Outcome* out) except -1:
        raise NotImplementedError

    cdef inline int64_t _now(self) except? -1:
        if self.clock is None:
            return realtime_ns() if self.wall else monotonic_ns()
        return read_clock(self.clock, self.wall)

    def reset(self, key=""):
        """Forget ``key``'s state (it starts fresh)."""
        key = check_key(key)
        if self.remote is not None:
            self.remote.reset(key)
            return
        cdef int32_t slot = self.table.find(key)
        if slot >= 0:
            self.table.remove(slot)

    def __len__(self):
        return self.table.size

    @property
    def max_keys(self):
        return self.table.max_keys

    @property
    def evictions(self):
        """Rows dropped while not yet idle because the table was full."""
        return self.table.evictions


cdef class RateKernel(KeyedLimiter):
    """A keyed limiter answering per request: ``acquire``, ``allow``, ``allow_batch``."""

    cdef int _decide(self, object key, int64_t cost, int64_t now, Outcome* out) except -1:
        return self._decide_row(self.table.get(key, now), cost, now, out)

    cdef int _decide_row(self, int32_t slot, int64_t cost, int64_t now, Outcome* out) except -1:
        """The algorithm on ``key``'s row (subclasses)."""
        raise NotImplementedError

    def acquire(self, key="", cost=1):
        """Take ``cost`` units for ``key`` if they are available; returns a Decision."""
        cdef int64_t c = cost_arg(cost, self.max_cost)
        key = check_key(key)
        if self.remote is not None:
            return self.remote.acquire(key, c)
        cdef int64_t now = self._now()
        cdef Outcome o
        self._decide(key, c, now, &o)
        return make_decision(o.allowed, self.limit_value, o.remaining, o.reset_ns,
                             o.retry_ns, o.wait_ns)

    async def acquire_async(self, key="", cost=1):
        """``acquire`` for asyncio code: a shared backend is awaited, never blocking the loop."""
        if self.remote is None:
            return self.acquire(key, cost)
        c = cost_arg(cost, self.max_cost)
        return await self.remote.acquire_async(check_key(key), c)

    def allow(self, key="", cost=1):
        """Like ``acquire`` but returns only a bool (no Decision is built)."""
        cdef int64_t c = cost_arg(cost, self.max_cost)
        key = check_key(key)
        if self.remote is not None:
            return self.remote.acquire(key, c).allowed
        cdef int64_t now = self._now()
        cdef Outcome o
        self._decide(key, c, now, &o)
        return o.allowed

    def allow_batch(self, keys, costs=None):
        """Decide many requests at one clock reading; returns a numpy bool array.

        ``keys`` is a sequence (list, tuple or object array) of str; ``costs`` is
        None (all 1) or an integer array of the same length. Requests are decided in
        order, so repeated keys consume from the same state.
        """
        cdef Py_ssize_t n = len(keys), i
        cdef cnp.ndarray[cnp.uint8_t, ndim=1] out = np.empty(n, dtype=np.bool_).view(np.uint8)
        cdef const int64_t[::1] cv
        cdef int64_t c = 1
        cdef Outcome o
        cdef bint has_costs = costs is not None
        if has_costs:
            arr = np.ascontiguousarray(costs)
            if arr.ndim != 1 or arr.shape[0] != n or arr.dtype.kind not in "iu":
                raise InvalidParameter(
                    f"costs must be a 1-D integer array of length {n}, got {costs!r:.80}")
            if n and (arr.min() < 1 or arr.max() > self.max_cost):
                raise InvalidParameter(
                    f"costs must be in [1, {self.max_cost}], got min {arr.min()} max {arr.max()}")
            cv = arr.astype(np.int64, copy=False)
        # The keys as a C array of object pointers, without copying a list or array.
        cdef PyObject** items
        if isinstance(keys, cnp.ndarray) and keys.ndim == 1 and keys.dtype == object:
            seq = np.ascontiguousarray(keys)
            items = <PyObject**>cnp.PyArray_DATA(seq)
        else:
            seq = keys if isinstance(keys, (list, tuple)) else list(keys)
            items = PySequence_Fast_ITEMS(seq)
        if len(seq) != n:
            raise InvalidParameter(f"keys changed length while read: {n} then {len(seq)}")
        for i in range(n):
            if type(<object>items[i]) is not str:
                seq = [check_key(k) for k in seq]
                items = PySequence_Fast_ITEMS(seq)
                break
        if self.remote is not None:
            return np.fromiter(
                (d.allowed for d in self.remote.acquire_batch(
                    list(seq), None if not has_costs else cv)),
                dtype=np.bool_, count=n)
        cdef int64_t now = self._now()
        cdef Py_hash_t hashes[BATCH_CHUNK]
        cdef int32_t slots[BATCH_CHUNK]
        cdef Py_ssize_t start, m, j
        cdef uint64_t removals
        cdef KeyTable table = self.table
        # In chunks, three passes so the cache misses of many keys overlap instead of
        # queueing one after another: hash every key (touching its str) and prefetch
        # its index entry; look the keys up and prefetch their rows; then decide in
        # order. A lookup stays valid until a row is freed (a new key's insertion may
        # reclaim idle rows), after which the chunk's rest takes the plain path.
        for start in range(0, n, BATCH_CHUNK):
            m = min(BATCH_CHUNK, n - start)
            for j in range(m):
                hashes[j] = PyObject_Hash(<object>items[start + j])
                table.index.prefetch(hashes[j])
            for j in range(m):
                slots[j] = table.index.get_hashed(<object>items[start + j], hashes[j])
                if slots[j] >= 0:
                    table.prefetch_row(slots[j])
            removals = table.removals
            for j in range(m):
                if has_costs:
                    c = cv[start + j]
                if slots[j] >= 0 and table.removals == removals:
                    table.touch(slots[j])
                    self._decide_row(slots[j], c, now, &o)
                else:
                    self._decide(<object>items[start + j], c, now, &o)
                out[start + j] = o.allowed
        return out.view(np.bool_)
