# Weighted-priority queue: integer ids in N priority classes, each with a deadline.
#
# Items live in a slot pool of C arrays. A slot is on exactly one doubly linked list
# (its class's queue, or the expired list) and, when it has a deadline, in an indexed
# min-heap keyed by deadline. Push, pop and cancel are O(1) list operations plus
# O(log n) heap work, with no tombstones to sweep. A bitmask of non-empty classes
# makes choosing the next class O(1) (hence at most 64 classes).
#
# Expiry is lazy but exact: every peek/pop first moves each item whose deadline is
# <= now from its class to the expired list, so an expired item is never served; the
# caller collects it with ``pop_expired`` and answers it "busy". Until then it still
# counts against its class's bound, so memory stays bounded by the sum of capacities.

from libc.stdint cimport uint8_t

cdef extern from *:
    int __builtin_ctzll(unsigned long long x) nogil

cdef int64_t NO_DEADLINE = 0x7FFFFFFFFFFFFFFF
cdef int32_t MAX_QUEUE_SLOTS = 0x3FFFFFFF
cdef int64_t MAX_WEIGHT = 1000000

cdef enum:
    MAX_CLASSES = 64
    SLOT_FREE = 0
    SLOT_WAITING = 1
    SLOT_EXPIRED = 2


cdef inline int64_t int_arg(str name, object value, int64_t maximum) except -1:
    """A non-negative int up to ``maximum``; fast for exact ints, explicit error otherwise."""
    cdef int64_t v
    cdef int overflow = 0
    if type(value) is int:
        v = PyLong_AsLongLongAndOverflow(value, &overflow)
        if overflow == 0 and 0 <= v <= maximum:
            return v
    return check_count(name, value, 0, maximum)


@cython.final
cdef class PriorityQueue:
    """Bounded multi-class queue of integer ids with deadlines, served pull-based.

    Class 0 is the most important. ``weights=None`` is strict priority: a class is
    served only while every more important class is empty. With ``weights`` (e.g.
    ``(3, 2, 1)``) classes take turns in order, class i being served up to
    ``weights[i]`` items per turn; an empty class is skipped and takes its next turn
    in the same order, so no non-empty class starves. Within a class items leave
    first-in-first-out, or last-in-first-out with ``lifo=True`` (freshest first under
    overload). ``capacity`` bounds each class (an int for all, or one per class).

    ``push`` returns an id (or -1 when the class is full); ``pop(now)`` returns the
    next id to serve and never one whose deadline is <= now; such items are handed
    back by ``pop_expired(now)``; ``remove(id)`` cancels. Times are integer ns.
    """

    cdef readonly int classes
    cdef readonly bint strict
    cdef readonly bint lifo
    cdef int64_t weight[MAX_CLASSES]
    cdef int32_t cap[MAX_CLASSES]
    cdef int32_t size[MAX_CLASSES]
    cdef int32_t held[MAX_CLASSES]
    cdef int32_t head[MAX_CLASSES]
    cdef int32_t tail[MAX_CLASSES]
    cdef uint64_t mask
    cdef int cur
    cdef int64_t credit
    cdef int32_t exp_head, exp_tail, n_waiting, n_expired
    # Slot pool: grows by doubling up to pool_max (sum of capacities).
    cdef int32_t pool_cap, pool_max, pool_used, free_head, heap_n
    cdef int32_t* nxt
    cdef int32_t* prv
    cdef int32_t* hpos
    cdef int32_t* heap
    cdef int64_t* dl
    cdef uint32_t* gen
    cdef uint8_t* cls
    cdef uint8_t* state

    def __cinit__(self):
        self.nxt = self.prv = self.hpos = self.heap = NULL
        self.dl = NULL
        self.gen = NULL
        self.cls = self.state = NULL

    def __init__(self, capacity, *, weights=None, classes=None, lifo=False):
        cdef int n, i
        cdef int64_t total = 0
        caps = capacity if isinstance(capacity, (list, tuple)) else None
        if weights is not None:
            if not isinstance(weights, (list, tuple)) or not weights:
                raise InvalidParameter(f"weights must be a non-empty sequence of ints, got {weights!r:.80}")
            n = len(weights)
        elif caps is not None:
            n = len(caps)
        elif classes is not None:
            n = check_count("classes", classes, 1, MAX_CLASSES)
        else:
            n = 1
        if classes is not None and check_count("classes", classes, 1, MAX_CLASSES) != n:
            raise InvalidParameter(f"classes={classes!r} does not match {n} weights/capacities")
        if n < 1 or n > MAX_CLASSES:
            raise InvalidParameter(f"number of classes must be in [1, {MAX_CLASSES}], got {n}")
        if caps is not None and len(caps) != n:
            raise InvalidParameter(f"capacity has {len(caps)} entries for {n} classes: {capacity!r:.80}")
        self.classes = n
        self.strict = weights is None
        self.lifo = bool(lifo)
        for i in range(n):
            self.weight[i] = 1 if weights is None else check_count(
                f"weights[{i}]", weights[i], 1, MAX_WEIGHT)
            self.cap[i] = check_count("capacity" if caps is None else f"capacity[{i}]",
                                      capacity if caps is None else caps[i], 1, MAX_QUEUE_SLOTS)
            total += self.cap[i]
            self.size[i] = self.held[i] = 0
            self.head[i] = self.tail[i] = -1
        if total > MAX_QUEUE_SLOTS:
            raise InvalidParameter(f"total capacity {total} exceeds {MAX_QUEUE_SLOTS}")
        self.mask = 0
        self.cur = n - 1
        self.credit = 0
        self.exp_head = self.exp_tail = -1
        self.n_waiting = self.n_expired = 0
        self.pool_max = <int32_t>total
        self.pool_cap = self.pool_used = self.heap_n = 0
        self.free_head = -1
        self._grow()

    def __dealloc__(self):
        free(self.nxt)
        free(self.prv)
        free(self.hpos)
        free(self.heap)
        free(self.dl)
        free(self.gen)
        free(self.cls)
        free(self.state)

    cdef int _grow(self) except -1:
        cdef int32_t n = 16 if self.pool_cap == 0 else self.pool_cap * 2
        if n > self.pool_max:
            n = self.pool_max
        cdef size_t c = <size_t>n
        cdef void* p
        p = realloc(self.nxt, c * sizeof(int32_t))
        if p == NULL:
            raise MemoryError()
        self.nxt = <int32_t*>p
        p = realloc(self.prv, c * sizeof(int32_t))
        if p == NULL:
            raise MemoryError()
        self.prv = <int32_t*>p
        p = realloc(self.hpos, c * sizeof(int32_t))
        if p == NULL:
            raise MemoryError()
        self.hpos = <int32_t*>p
        p = realloc(self.heap, c * sizeof(int32_t))
        if p == NULL:
            raise MemoryError()
        self.heap = <int32_t*>p
        p = realloc(self.dl, c * sizeof(int64_t))
        if p == NULL:
            raise MemoryError()
        self.dl = <int64_t*>p
        p = realloc(self.gen, c * sizeof(uint32_t))
        if p == NULL:
            raise MemoryError()
        self.gen = <uint32_t*>p
        p = realloc(self.cls, c * sizeof(uint8_t))
        if p == NULL:
            raise MemoryError()
        self.cls = <uint8_t*>p
        p = realloc(self.state, c * sizeof(uint8_t))
        if p == NULL:
            raise MemoryError()
        self.state = <uint8_t*>p
        self.pool_cap = n
        return 0

    # --- ids: slot in the low 32 bits, the slot's generation above (stale ids miss) ---

    cdef inline int64_t _id(self, int32_t slot) noexcept:
        return ((<int64_t>(self.gen[slot] & 0x7FFFFFFF)) << 32) | slot

    cdef inline int32_t _slot(self, int64_t item) noexcept:
        """Slot of a live item id, or -1 if the id is unknown or already gone."""
        if item < 0:
            return -1
        cdef int64_t slot = item & 0xFFFFFFFF
        if slot >= self.pool_used or self.state[slot] == SLOT_FREE:
            return -1
        if <int64_t>(self.gen[slot] & 0x7FFFFFFF) != (item >> 32):
            return -1
        return <int32_t>slot

    # --- lists ---

    cdef inline void _link_class(self, int32_t s, int c) noexcept:
        self.nxt[s] = -1
        self.prv[s] = self.tail[c]
        if self.tail[c] >= 0:
            self.nxt[self.tail[c]] = s
        else:
            self.head[c] = s
        self.tail[c] = s
        self.size[c] += 1
        self.n_waiting += 1
        self.mask |= (<uint64_t>1) << c

    cdef inline void _unlink_class(self, int32_t s) noexcept:
        cdef int c = self.cls[s]
        cdef int32_t p = self.prv[s], n = self.nxt[s]
        if p >= 0:
            self.nxt[p] = n
        else:
            self.head[c] = n
        if n >= 0:
            self.prv[n] = p
        else:
            self.tail[c] = p
        self.size[c] -= 1
        self.n_waiting -= 1
        if self.size[c] == 0:
            self.mask &= ~((<uint64_t>1) << c)

    cdef inline void _link_expired(self, int32_t s) noexcept:
        self.nxt[s] = -1
        self.prv[s] = self.exp_tail
        if self.exp_tail >= 0:
            self.nxt[self.exp_tail] = s
        else:
            self.exp_head = s
        self.exp_tail = s
        self.state[s] = SLOT_EXPIRED
        self.n_expired += 1

    cdef inline void _unlink_expired(self, int32_t s) noexcept:
        cdef int32_t p = self.prv[s], n = self.nxt[s]
        if p >= 0:
            self.nxt[p] = n
        else:
            self.exp_head = n
        if n >= 0:
            self.prv[n] = p
        else:
            self.exp_tail = p
        self.n_expired -= 1

    cdef inline void _free(self, int32_t s) noexcept:
        self.held[self.cls[s]] -= 1
        self.state[s] = SLOT_FREE
        self.gen[s] += 1
        self.nxt[s] = self.free_head
        self.free_head = s

    # --- deadline heap (indexed, so a cancelled item leaves it in O(log n)) ---

    cdef inline void _heap_set(self, int32_t i, int32_t s) noexcept:
        self.heap[i] = s
        self.hpos[s] = i

    cdef void _sift_up(self, int32_t i) noexcept:
        cdef int32_t s = self.heap[i], parent
        cdef int64_t d = self.dl[s]
        while i > 0:
            parent = (i - 1) >> 1
            if self.dl[self.heap[parent]] <= d:
                break
            self._heap_set(i, self.heap[parent])
            i = parent
        self._heap_set(i, s)

    cdef void _sift_down(self, int32_t i) noexcept:
        cdef int32_t s = self.heap[i], child
        cdef int64_t d = self.dl[s]
        while True:
            child = 2 * i + 1
            if child >= self.heap_n:
                break
            if child + 1 < self.heap_n and self.dl[self.heap[child + 1]] < self.dl[self.heap[child]]:
                child += 1
            if self.dl[self.heap[child]] >= d:
                break
            self._heap_set(i, self.heap[child])
            i = child
        self._heap_set(i, s)

    cdef inline void _heap_push(self, int32_t s) noexcept:
        self.heap_n += 1
        self._heap_set(self.heap_n - 1, s)
        self._sift_up(self.heap_n - 1)

    cdef void _heap_remove(self, int32_t s) noexcept:
        cdef int32_t i = self.hpos[s]
        if i < 0:
            return
        self.hpos[s] = -1
        self.heap_n -= 1
        if i == self.heap_n:
            return
        self._heap_set(i, self.heap[self.heap_n])
        if i > 0 and self.dl[self.heap[i]] < self.dl[self.heap[(i - 1) >> 1]]:
            self._sift_up(i)
        else:
            self._sift_down(i)

    # --- scheduling ---

    cdef inline void _reap(self, int64_t now) noexcept:
        """Move every item whose deadline is <= now out of its class."""
        cdef int32_t s
        while self.heap_n > 0 and self.dl[self.heap[0]] <= now:
            s = self.heap[0]
            self._heap_remove(s)
            self._unlink_class(s)
            self._link_expired(s)

    cdef inline int _pick(self) noexcept:
        """Class the next pop serves, or -1 when every class is empty (no state change)."""
        cdef uint64_t m = self.mask, later
        if m == 0:
            return -1
        if self.strict:
            return __builtin_ctzll(m)
        if self.credit > 0 and (m >> self.cur) & 1:
            return self.cur
        # The next non-empty class after the current one, wrapping around.
        later = m & ~(((<uint64_t>2) << self.cur) - 1)
        return __builtin_ctzll(later if later else m)

    cdef inline int32_t _head_of(self, int c) noexcept:
        return self.tail[c] if self.lifo else self.head[c]

    # --- Python API ---

    def push(self, priority, deadline=None):
        """Queue a new item in class ``priority``; returns its id, or -1 if the class is full.

        ``deadline`` (int ns, None = never) is the last instant the item may wait:
        from ``now >= deadline`` on it is expired rather than served.
        """
        cdef int64_t c = int_arg("priority", priority, self.classes - 1)
        cdef int64_t d = NO_DEADLINE if deadline is None else int_arg("deadline", deadline, NO_DEADLINE - 1)
        if self.held[c] >= self.cap[c]:
            return -1
        cdef int32_t s
        if self.free_head >= 0:
            s = self.free_head
            self.free_head = self.nxt[s]
        else:
            if self.pool_used == self.pool_cap:
                self._grow()
            s = self.pool_used
            self.pool_used += 1
            self.gen[s] = 0
        self.cls[s] = <uint8_t>c
        self.state[s] = SLOT_WAITING
        self.dl[s] = d
        self.held[c] += 1
        self._link_class(s, <int>c)
        if d != NO_DEADLINE:
            self._heap_push(s)
        else:
            self.hpos[s] = -1
        return self._id(s)

    def peek(self, now):
        """Id that ``pop(now)`` would return, or -1; expires due items but serves none."""
        self._reap(int_arg("now", now, NO_DEADLINE))
        cdef int c = self._pick()
        return -1 if c < 0 else self._id(self._head_of(c))

    def pop(self, now):
        """Serve the next item: its id, or -1 when no unexpired item is waiting."""
        self._reap(int_arg("now", now, NO_DEADLINE))
        cdef int c = self._pick()
        if c < 0:
            return -1
        if not self.strict:
            if c != self.cur or self.credit <= 0:
                self.cur = c
                self.credit = self.weight[c]
            self.credit -= 1
        cdef int32_t s = self._head_of(c)
        cdef int64_t item = self._id(s)
        self._heap_remove(s)
        self._unlink_class(s)
        self._free(s)
        return item

    def pop_expired(self, now):
        """Hand back one item whose deadline passed, or -1.

        Items come back in the order they were found expired (earliest deadline first
        among those found together).
        """
        self._reap(int_arg("now", now, NO_DEADLINE))
        cdef int32_t s = self.exp_head
        if s < 0:
            return -1
        cdef int64_t item = self._id(s)
        self._unlink_expired(s)
        self._free(s)
        return item

    def remove(self, item):
        """Cancel a waiting (or expired, not yet handed back) item; False if unknown or gone."""
        if isinstance(item, bool) or not isinstance(item, int):
            raise InvalidParameter(f"item must be an int id, got {item!r:.80}")
        cdef int overflow = 0
        cdef int64_t i = PyLong_AsLongLongAndOverflow(item, &overflow)
        cdef int32_t s = -1 if overflow else self._slot(i)
        if s < 0:
            return False
        if self.state[s] == SLOT_WAITING:
            self._heap_remove(s)
            self._unlink_class(s)
        else:
            self._unlink_expired(s)
        self._free(s)
        return True

    def next_deadline(self):
        """Earliest deadline among waiting items (int ns), or -1 if none has one."""
        return self.dl[self.heap[0]] if self.heap_n > 0 else -1

    def depth(self, priority):
        """Items waiting in class ``priority`` (expired ones not included)."""
        return self.size[int_arg("priority", priority, self.classes - 1)]

    def __len__(self):
        return self.n_waiting

    @property
    def expired_pending(self):
        """Expired items not yet handed back by ``pop_expired``."""
        return self.n_expired

    @property
    def capacity(self):
        return tuple(self.cap[i] for i in range(self.classes))

    @property
    def weights(self):
        """Per-class weights, or None in strict-priority mode."""
        return None if self.strict else tuple(self.weight[i] for i in range(self.classes))

    def __repr__(self):
        mode = "strict" if self.strict else f"weights={self.weights}"
        return (f"PriorityQueue(capacity={self.capacity}, {mode}, lifo={self.lifo}, "
                f"waiting={self.n_waiting})")
