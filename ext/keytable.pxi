# KeyTable: bounded key -> state-row map with LRU order, and the keyed-limiter base.

cdef int64_t NEVER_IDLE = 0x7FFFFFFFFFFFFFFF


cdef class KeyTable:
    """Bounded map from key to a fixed-width row of int64 state.

    Why: a flood of distinct keys must not exhaust memory, and a Python object per
    key would cost far more than the few integers an algorithm needs. Rows live in C
    arrays, a dict maps key -> row number, and rows are kept in LRU order. A row of
    zeros is a fresh key. Each row records ``idle_at``, the time after which its
    state is equivalent to a fresh key: such rows are dropped lazily, changing no
    answer. When the table is full, the least recently used row is evicted (its key
    starts fresh if it returns, counted in ``evictions``) unless ``can_evict_busy``
    is false, in which case the new key gets no row (``get`` returns -1).
    """

    cdef dict index
    cdef list keys
    cdef int64_t* rows
    cdef int64_t* idle_at
    cdef int32_t* prev
    cdef int32_t* next
    cdef int32_t width, capacity, size, max_keys, head, tail, free_head
    cdef bint can_evict_busy
    cdef readonly uint64_t evictions

    def __cinit__(self, int32_t width, int32_t max_keys, bint can_evict_busy=True):
        self.index = {}
        self.keys = []
        self.width = width
        self.max_keys = max_keys
        self.can_evict_busy = can_evict_busy
        self.capacity = 0
        self.size = 0
        self.head = self.tail = self.free_head = -1
        self.rows = NULL
        self.idle_at = NULL
        self.prev = NULL
        self.next = NULL
        self._grow()

    def __dealloc__(self):
        free(self.rows)
        free(self.idle_at)
        free(self.prev)
        free(self.next)

    def __len__(self):
        return self.size

    cdef int _grow(self) except -1:
        cdef int32_t cap = 64 if self.capacity == 0 else self.capacity * 2
        if cap > self.max_keys:
            cap = self.max_keys
        cdef int64_t* rows = <int64_t*>realloc(self.rows, <size_t>cap * self.width * sizeof(int64_t))
        if rows == NULL:
            raise MemoryError()
        self.rows = rows
        cdef int64_t* idle = <int64_t*>realloc(self.idle_at, <size_t>cap * sizeof(int64_t))
        if idle == NULL:
            raise MemoryError()
        self.idle_at = idle
        cdef int32_t* p = <int32_t*>realloc(self.prev, <size_t>cap * sizeof(int32_t))
        if p == NULL:
            raise MemoryError()
        self.prev = p
        cdef int32_t* n = <int32_t*>realloc(self.next, <size_t>cap * sizeof(int32_t))
        if n == NULL:
            raise MemoryError()
        self.next = n
        self.capacity = cap
        return 0

    cdef inline void _unlink(self, int32_t slot) noexcept:
        cdef int32_t p = self.prev[slot], n = self.next[slot]
        if p >= 0:
            self.next[p] = n
        else:
            self.head = n
        if n >= 0:
            self.prev[n] = p
        else:
            self.tail = p

    cdef inline void _push_front(self, int32_t slot) noexcept:
        self.prev[slot] = -1
        self.next[slot] = self.head
        if self.head >= 0:
            self.prev[self.head] = slot
        self.head = slot
        if self.tail < 0:
            self.tail = slot

    cdef inline int32_t find(self, object key) except -2:
        """Row of ``key`` or -1; does not touch LRU order."""
        cdef PyObject* obj = PyDict_GetItem(self.index, key)
        if obj == NULL:
            return -1
        return <int32_t><object>obj

    cdef inline int32_t get(self, object key, int64_t now) except -2:
        """Row of ``key``, created fresh if absent; marks it most recently used."""
        cdef PyObject* obj = PyDict_GetItem(self.index, key)
        cdef int32_t slot
        if obj != NULL:
            slot = <int32_t><object>obj
            if slot != self.head:
                self._unlink(slot)
                self._push_front(slot)
            return slot
        return self._insert(key, now)

    cdef int32_t _insert(self, object key, int64_t now) except -2:
        cdef int32_t slot, i
        # Reclaim a couple of idle rows per insert so memory shrinks as keys go quiet.
        for i in range(2):
            if self.tail >= 0 and self.idle_at[self.tail] <= now:
                self.remove(self.tail)
        if self.size >= self.max_keys:
            if not self.can_evict_busy or self.tail < 0:
                return -1
            self.remove(self.tail)
            self.evictions += 1
        if self.free_head >= 0:
            slot = self.free_head
            self.free_head = self.next[slot]
            self.keys[slot] = key
        else:
            slot = <int32_t>len(self.keys)
            if slot >= self.capacity:
                self._grow()
            self.keys.append(key)
        for i in range(self.width):
            self.rows[<Py_ssize_t>slot * self.width + i] = 0
        self.idle_at[slot] = 0
        self._push_front(slot)
        PyDict_SetItem(self.index, key, slot)
        self.size += 1
        return slot

    cdef int remove(self, int32_t slot) except -1:
        key = self.keys[slot]
        self.keys[slot] = None
        PyDict_DelItem(self.index, key)
        self._unlink(slot)
        self.next[slot] = self.free_head
        self.free_head = slot
        self.size -= 1
        return 0

    cdef inline int64_t* row(self, int32_t slot) noexcept:
        return self.rows + <Py_ssize_t>slot * self.width

    def clear(self):
        self.index.clear()
        self.keys.clear()
        self.size = 0
        self.head = self.tail = self.free_head = -1


cdef inline object check_key(object key):
    if type(key) is not str and not isinstance(key, str):
        raise InvalidParameter(f"key must be a str, got {type(key).__name__}: {key!r:.80}")
    return key


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
        check_key(key)
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

    def acquire(self, key="", cost=1):
        """Take ``cost`` units for ``key`` if they are available; returns a Decision."""
        cdef int64_t c = cost_arg(cost, self.max_cost)
        check_key(key)
        if self.remote is not None:
            return self.remote.acquire(key, c)
        cdef int64_t now = self._now()
        cdef Outcome o
        self._decide(key, c, now, &o)
        return make_decision(o.allowed, self.limit_value, o.remaining, o.reset_ns,
                             o.retry_ns, o.wait_ns)

    def allow(self, key="", cost=1):
        """Like ``acquire`` but returns only a bool (no Decision is built)."""
        cdef int64_t c = cost_arg(cost, self.max_cost)
        check_key(key)
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
        seq = keys if isinstance(keys, (list, tuple)) else list(keys)
        for i in range(n):
            check_key(seq[i])
        if self.remote is not None:
            return np.fromiter(
                (d.allowed for d in self.remote.acquire_batch(seq, None if not has_costs else cv)),
                dtype=np.bool_, count=n)
        cdef int64_t now = self._now()
        for i in range(n):
            if has_costs:
                c = cv[i]
            self._decide(seq[i], c, now, &o)
            out[i] = o.allowed
        return out.view(np.bool_)
