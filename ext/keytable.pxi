# KeyTable: a bounded map from str key to a row of int64 state, with CLOCK eviction.
#
# Why not a dict of objects: a flood of distinct keys must not exhaust memory, and a
# Python object per key costs far more than the few integers an algorithm needs.
# Why rows inside the hash table: a cold key's lookup and its state then share one
# entry (32 bytes for a token bucket), so a decision on a key out of cache waits for
# one memory load after the key's own hash, not for an index entry and then a row.

from cpython.ref cimport Py_DECREF, Py_INCREF
from cpython.sequence cimport PySequence_Fast_ITEMS
from cpython.unicode cimport PyUnicode_GET_LENGTH
from libc.string cimport memset

from hashlib import blake2b


cdef extern from "Python.h":
    ctypedef Py_ssize_t Py_hash_t


cdef extern from *:
    """
    /* An exact str caches its hash in the object: read it without a call. */
    static inline Py_hash_t lim_str_hash(PyObject* s) {
        Py_hash_t h = ((PyASCIIObject*)s)->hash;
        return h != -1 ? h : PyObject_Hash(s);
    }
    """
    Py_hash_t str_hash "lim_str_hash" (object key) except? -1


cdef extern from *:
    void prefetch "__builtin_prefetch" (const void* p) noexcept nogil


cdef int64_t NEVER_IDLE = 0x7FFFFFFFFFFFFFFF
# Keys longer than MAX_KEY_CHARS characters are kept as their first KEY_HEAD characters,
# "\x1f#" and the 32 hex digits of a 128-bit BLAKE2b digest of the whole key: a table of
# max_keys keys then holds a bounded number of bytes, however long the keys callers send
# (a digest of 128 bits makes two keys sharing one row a practical impossibility).
MAX_KEY_CHARS = 128
KEY_HEAD = 64
cdef Py_ssize_t _MAX_KEY_CHARS = MAX_KEY_CHARS
cdef object ONE = 1
# Entry words: [key pointer (0 = empty entry), low 32 bits of the key's hash with
# the CLOCK reference bit above them, idle_at, the algorithm's state...].
DEF HEADER = 3
cdef int64_t REFERENCED = (<int64_t>1) << 32
# Largest max_keys: the table's capacity (a power of two, at least twice the keys
# held) must stay addressable by an int32 position.
cdef int64_t MAX_KEYS = 1 << 30
# Live entries a full sweep looks past its eviction candidate for an idle row.
DEF IDLE_LOOKAHEAD = 64
# Requests per pass of allow_batch's prefetching loop.
DEF BATCH_CHUNK = 32


@cython.final
cdef class KeyTable:
    """Open addressing (linear probing, load <= 1/2, backward-shift deletion) whose
    entries hold the key, its hash, ``idle_at`` and a fixed-width row of state.

    A row of zeros is a fresh key. ``idle_at`` is the time after which a row's state
    equals a fresh key's: such rows are reclaimed lazily without changing any answer.
    When ``max_keys`` are held a victim is chosen by CLOCK (second chance), the
    constant-time approximation of LRU: a hit only sets a bit in the entry it already
    touched. An evicted key starts fresh if it returns (counted in ``evictions``),
    unless ``can_evict_busy`` is false, in which case the new key gets no row (-1).

    Positions are valid until the next insertion or removal (entries move when the
    table grows or a deletion shifts a probe run back); ``moves`` counts those events.
    """

    cdef int64_t* entries
    cdef size_t mask
    cdef int32_t width, stride, size, max_keys
    cdef size_t hand
    cdef bint can_evict_busy
    cdef readonly uint64_t evictions
    cdef uint64_t moves

    def __cinit__(self, int32_t width, int32_t max_keys, bint can_evict_busy=True):
        self.width = width
        self.stride = width + HEADER
        self.max_keys = max_keys
        self.can_evict_busy = can_evict_busy
        self.size = 0
        self.hand = 0
        self.entries = NULL
        self.mask = 0
        self._resize(16)

    def __dealloc__(self):
        self._release_keys()
        free(self.entries)

    def __len__(self):
        return self.size

    cdef inline int64_t* _at(self, size_t i) noexcept:
        return self.entries + <Py_ssize_t>i * self.stride

    cdef void _release_keys(self) noexcept:
        cdef size_t i
        cdef int64_t* e
        if self.entries == NULL:
            return
        for i in range(self.mask + 1):
            e = self._at(i)
            if e[0] != 0:
                Py_DECREF(<object><PyObject*><size_t>e[0])
                e[0] = 0

    cdef int _resize(self, size_t capacity) except -1:
        cdef int64_t* old = self.entries
        cdef size_t old_capacity = self.mask + 1 if old != NULL else 0
        cdef size_t entry_bytes = <size_t>self.stride * sizeof(int64_t)
        cdef int64_t* fresh = <int64_t*>big_alloc(capacity * entry_bytes)
        if fresh == NULL:
            raise MemoryError()
        memset(fresh, 0, capacity * entry_bytes)
        cdef size_t i, j, mask = capacity - 1
        cdef int64_t* e
        for i in range(old_capacity):
            e = old + <Py_ssize_t>i * self.stride
            if e[0] != 0:
                j = (<uint32_t>e[1]) & mask
                while fresh[<Py_ssize_t>j * self.stride] != 0:
                    j = (j + 1) & mask
                memcpy(fresh + <Py_ssize_t>j * self.stride, e, entry_bytes)
        free(old)
        self.entries = fresh
        self.mask = mask
        self.hand = 0
        self.moves += 1
        return 0

    cdef inline int32_t lookup(self, object key, Py_hash_t h) except -2:
        """Position of ``key`` (an exact str with hash ``h``) or -1."""
        cdef size_t i = (<uint32_t>h) & self.mask
        cdef int64_t* e
        while True:
            e = self._at(i)
            if e[0] == 0:
                return -1
            if e[0] == <int64_t><size_t><PyObject*>key:
                return <int32_t>i
            if <uint32_t>e[1] == <uint32_t>h and (
                    (<str><PyObject*><size_t>e[0]) == (<str>key)):
                return <int32_t>i
            i = (i + 1) & self.mask

    cdef inline void prefetch_home(self, Py_hash_t h) noexcept:
        """Start loading the entry a lookup of hash ``h`` probes first."""
        prefetch(self._at((<uint32_t>h) & self.mask))

    cdef inline int32_t find(self, object key) except -2:
        """Position of ``key`` or -1."""
        return self.lookup(key, str_hash(key))

    cdef inline int32_t get(self, object key, int64_t now) except -2:
        """Position of ``key``, created fresh if absent; marks it recently used."""
        cdef Py_hash_t h = str_hash(key)
        cdef int32_t pos = self.lookup(key, h)
        if pos >= 0:
            self.touch(pos)
            return pos
        return self._insert(key, h, now)

    cdef inline void touch(self, int32_t pos) noexcept:
        """Mark ``pos`` recently used (CLOCK's reference bit)."""
        self._at(pos)[1] |= REFERENCED

    cdef inline int64_t* row(self, int32_t pos) noexcept:
        """The algorithm's state at ``pos``."""
        return self._at(pos) + HEADER

    cdef inline void set_idle(self, int32_t pos, int64_t idle_at) noexcept:
        """From ``idle_at`` on, the row equals a fresh key and may be reclaimed."""
        self._at(pos)[2] = idle_at

    cdef bint _sweep(self, int64_t now, bint full) except -1:
        """Advance the clock hand over a few live entries, reclaiming idle rows; when
        ``full``, go on until one row is freed (returns whether one was).

        A busy row is evicted only if no idle row turns up within IDLE_LOOKAHEAD
        further entries: the hand's order is the table's, not the keys' age, so a
        quiet key is often just ahead of the busy candidate.
        """
        cdef size_t steps = 64 if not full else 2 * (self.mask + 1) + 1
        # Reclaim harder once the table is at its bound, before anything is evicted.
        cdef size_t visits = 8 if self.size >= self.max_keys else 2
        cdef size_t s, victim = 0, ahead = 0, live = 0
        cdef bint have_victim = False
        cdef int64_t* e
        while steps > 0 and self.size > 0:
            steps -= 1
            s = self.hand
            self.hand = (s + 1) & self.mask
            e = self._at(s)
            if e[0] == 0:
                continue
            live += 1
            if not full and live > visits:
                self.hand = s  # look at it next time
                break
            if e[2] <= now:
                self.remove(<int32_t>s)
                if full:
                    return True
            elif have_victim:
                ahead += 1
                if ahead >= IDLE_LOOKAHEAD:
                    break
            elif e[1] & REFERENCED:
                e[1] &= ~REFERENCED
            elif full and self.can_evict_busy:
                have_victim = True
                victim = s
        if have_victim:
            self.hand = victim
            self.remove(<int32_t>victim)
            self.evictions += 1
            return True
        return False

    cdef int32_t _insert(self, object key, Py_hash_t h, int64_t now) except -2:
        self._sweep(now, False)
        if self.size >= self.max_keys:
            # Rows that never go idle (in-flight counts) cannot be evicted: refuse at once.
            if not self.can_evict_busy or not self._sweep(now, True):
                return -1
        if (<size_t>self.size + 1) * 2 > self.mask + 1:
            self._resize((self.mask + 1) * 2)
        cdef size_t i = (<uint32_t>h) & self.mask
        cdef int64_t* e = self._at(i)
        while e[0] != 0:
            i = (i + 1) & self.mask
            e = self._at(i)
        Py_INCREF(key)
        e[0] = <int64_t><size_t><PyObject*>key
        e[1] = <int64_t><uint32_t>h | REFERENCED
        self.size += 1
        return <int32_t>i

    cdef int remove(self, int32_t pos) except -1:
        """Free ``pos``, shifting later entries of its probe run back (no tombstones)."""
        cdef size_t entry_bytes = <size_t>self.stride * sizeof(int64_t)
        cdef PyObject* gone = <PyObject*><size_t>self._at(pos)[0]
        cdef size_t hole = pos, j = pos, home
        cdef int64_t* e
        while True:
            j = (j + 1) & self.mask
            e = self._at(j)
            if e[0] == 0:
                break
            home = (<uint32_t>e[1]) & self.mask
            # Move j into the hole unless its home lies cyclically in (hole, j].
            if (hole <= j and (home <= hole or home > j)) or (hole > j and home <= hole and home > j):
                memcpy(self._at(hole), e, entry_bytes)
                hole = j
        memset(self._at(hole), 0, entry_bytes)
        self.size -= 1
        self.moves += 1
        Py_DECREF(<object>gone)
        return 0

    def clear(self):
        self._release_keys()
        memset(self.entries, 0, (self.mask + 1) * <size_t>self.stride * sizeof(int64_t))
        self.size = 0
        self.hand = 0
        self.moves += 1


cdef object long_key(str key):
    """The digest form of a key over MAX_KEY_CHARS characters (see MAX_KEY_CHARS)."""
    whole = key.encode("utf-8", "surrogatepass")
    return key[:KEY_HEAD] + "\x1f#" + blake2b(whole, digest_size=16).hexdigest()


cdef inline object check_key(object key):
    """Keys are exact str (a str subclass is copied to a plain str: its __hash__ or
    __eq__ could run Python code in the middle of an update) of at most MAX_KEY_CHARS
    characters (a longer one is kept as its digest form, ``long_key``)."""
    if type(key) is str:
        if PyUnicode_GET_LENGTH(key) <= _MAX_KEY_CHARS:
            return key
        return long_key(key)
    if isinstance(key, str):
        return check_key(str.__str__(key))
    raise InvalidParameter(f"key must be a str, got {type(key).__name__}: {key!r:.80}")


cdef int64_t cost_slow(object cost, int64_t maximum) except -1:
    return check_count("cost", cost, 1, maximum)


cdef inline int64_t cost_arg(object cost, int64_t maximum) except -1:
    """Fast path for the common small-int cost; the slow path explains what is wrong."""
    cdef int64_t c
    cdef int overflow = 0
    if cost is ONE:  # the default: CPython keeps one object for small ints
        return 1
    if type(cost) is int:
        c = PyLong_AsLongLongAndOverflow(cost, &overflow)
        if overflow == 0 and 1 <= c <= maximum:
            return c
    return cost_slow(cost, maximum)


cdef struct Outcome:
    bint detail  # set by the caller: false when only ``allowed`` will be read
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
    # The largest cost one request can ever be granted.
    cdef readonly int64_t max_cost

    cdef _setup(self, int32_t width, object max_keys, object clock, bint wall,
                bint can_evict_busy=True):
        cdef int64_t mk = check_count("max_keys", max_keys, 1, MAX_KEYS)
        self.table = KeyTable(width, mk, can_evict_busy)
        self.clock = check_clock(clock)
        self.wall = wall

    cdef int _decide(self, object key, int64_t cost, int64_t now, Outcome* out) except -1:
        raise NotImplementedError

    cdef inline int64_t _now(self) except? -1:
        if self.clock is None:
            return realtime_ns() if self.wall else monotonic_ns()
        return read_clock(self.clock, self.wall)

    def reset(self, key=""):
        """Forget ``key``'s state (it starts fresh)."""
        key = check_key(key)
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
        cdef int64_t now = self._now()
        cdef Outcome o
        o.detail = True
        self._decide_row(self.table.get(key, now), c, now, &o)
        return make_decision(o.allowed, self.limit_value, o.remaining, o.reset_ns,
                             o.retry_ns, o.wait_ns)

    def acquire_batch(self, keys, costs=None):
        """``acquire`` for many requests in order, at one clock reading: a list of
        Decisions. ``costs`` is None (all 1) or one int per key. Every key and cost is
        checked before any is counted, so a bad one refuses the batch and changes nothing.
        """
        cdef list ks = [check_key(k) for k in keys]
        cdef Py_ssize_t n = len(ks), i
        cdef list cs
        if costs is None:
            cs = [ONE] * n
        else:
            cs = [cost_arg(c, self.max_cost) for c in costs]
            if len(cs) != n:
                raise InvalidParameter(f"costs: {len(cs)} given for {n} keys")
        cdef int64_t now = self._now()
        cdef Outcome o
        o.detail = True
        cdef list out = [None] * n
        for i in range(n):
            self._decide(ks[i], <int64_t>cs[i], now, &o)
            out[i] = make_decision(o.allowed, self.limit_value, o.remaining, o.reset_ns,
                                   o.retry_ns, o.wait_ns)
        return out

    def allow(self, key="", cost=1):
        """Like ``acquire`` but returns only a bool (no Decision is built)."""
        cdef int64_t c = cost_arg(cost, self.max_cost)
        key = check_key(key)
        cdef int64_t now = self._now()
        cdef Outcome o
        o.detail = False
        self._decide_row(self.table.get(key, now), c, now, &o)
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
        o.detail = False
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
            if (type(<object>items[i]) is not str
                    or PyUnicode_GET_LENGTH(<object>items[i]) > _MAX_KEY_CHARS):
                seq = [check_key(k) for k in seq]
                items = PySequence_Fast_ITEMS(seq)
                break
        cdef int64_t now = self._now()
        cdef Py_hash_t hashes[BATCH_CHUNK]
        cdef int32_t slots[BATCH_CHUNK]
        cdef Py_ssize_t start, m, j
        cdef uint64_t moves
        cdef KeyTable table = self.table
        # In chunks, so the cache misses of many keys overlap instead of queueing one
        # after another: hash every key (touching its str) and prefetch its entry;
        # look the keys up; then decide in order. A position stays valid until an
        # entry moves (a new key's insertion may grow the table or reclaim idle rows),
        # after which the rest of the chunk takes the plain path.
        for start in range(0, n, BATCH_CHUNK):
            m = min(BATCH_CHUNK, n - start)
            for j in range(m):
                hashes[j] = str_hash(<object>items[start + j])
                table.prefetch_home(hashes[j])
            for j in range(m):
                slots[j] = table.lookup(<object>items[start + j], hashes[j])
            moves = table.moves
            for j in range(m):
                if has_costs:
                    c = cv[start + j]
                if slots[j] >= 0 and table.moves == moves:
                    table.touch(slots[j])
                    self._decide_row(slots[j], c, now, &o)
                else:
                    self._decide(<object>items[start + j], c, now, &o)
                out[start + j] = o.allowed
        return out.view(np.bool_)


def valid_key(key):
    """``key`` as the kernels keep it (an exact str of at most MAX_KEY_CHARS characters),
    or InvalidParameter naming it."""
    return check_key(key)


def valid_cost(cost, maximum):
    """``cost`` as an int in [1, ``maximum``], or InvalidParameter naming it."""
    return cost_arg(cost, maximum)
