# KeyIndex: an open-addressing hash map from str keys to int32 row numbers.
#
# Why not a dict: a dict lookup of a cold key touches the dict's index, its entry and
# then the int object holding the row number, each a likely cache miss. Here one
# probe reads hash, key pointer and row number from a single 16-byte entry, and no
# int object exists per key (about half the memory per key).

from cpython.ref cimport Py_DECREF, Py_INCREF


cdef extern from "Python.h":
    ctypedef Py_ssize_t Py_hash_t
    Py_hash_t PyObject_Hash(object obj) except? -1


cdef extern from *:
    void prefetch "__builtin_prefetch" (const void* p) noexcept nogil


cdef struct IndexEntry:
    PyObject* key      # NULL = empty
    int32_t hash32     # low bits of the key's hash, to skip most string compares
    int32_t slot


@cython.final
cdef class KeyIndex:
    """str -> int32 with linear probing and backward-shift deletion (no tombstones).

    Holds a strong reference to every key. Load factor stays at or below 1/2.
    """

    cdef IndexEntry* entries
    cdef size_t mask
    cdef Py_ssize_t count

    def __cinit__(self):
        self.count = 0
        self.mask = 0
        self.entries = NULL
        self._resize(64)

    def __dealloc__(self):
        self._release_keys()
        free(self.entries)

    cdef void _release_keys(self) noexcept:
        cdef size_t i
        if self.entries == NULL:
            return
        for i in range(self.mask + 1):
            if self.entries[i].key != NULL:
                Py_DECREF(<object>self.entries[i].key)
                self.entries[i].key = NULL
        self.count = 0

    cdef int _resize(self, size_t capacity) except -1:
        cdef IndexEntry* old = self.entries
        cdef size_t old_size = self.mask + 1 if old != NULL else 0
        cdef IndexEntry* fresh = <IndexEntry*>big_alloc(capacity * sizeof(IndexEntry))
        if fresh == NULL:
            raise MemoryError()
        cdef size_t i, j
        for i in range(capacity):
            fresh[i].key = NULL
        self.entries = fresh
        self.mask = capacity - 1
        for i in range(old_size):
            if old[i].key != NULL:
                j = (<size_t>PyObject_Hash(<object>old[i].key)) & self.mask
                while fresh[j].key != NULL:
                    j = (j + 1) & self.mask
                fresh[j] = old[i]
        free(old)
        return 0

    cdef inline Py_ssize_t _probe(self, object key, Py_hash_t h) except -2:
        """Index of ``key``'s entry, or of the empty entry where it would go."""
        cdef size_t i = (<size_t>h) & self.mask
        cdef IndexEntry* e
        while True:
            e = &self.entries[i]
            if e.key == NULL:
                return i
            if e.key == <PyObject*>key:
                return i
            if e.hash32 == <int32_t>h and (<str>e.key) == (<str>key):
                return i
            i = (i + 1) & self.mask

    cdef inline int32_t get(self, object key) except -2:
        """Row of ``key`` or -1 (``key`` must be an exact str)."""
        return self.get_hashed(key, PyObject_Hash(key))

    cdef inline int32_t get_hashed(self, object key, Py_hash_t h) except -2:
        """``get`` with the key's hash already known."""
        cdef Py_ssize_t i = self._probe(key, h)
        return -1 if self.entries[i].key == NULL else self.entries[i].slot

    cdef inline void prefetch(self, Py_hash_t h) noexcept:
        """Start loading the entry a lookup of hash ``h`` probes first."""
        prefetch(&self.entries[(<size_t>h) & self.mask])

    cdef int put(self, object key, int32_t slot) except -1:
        """Map ``key`` (absent) to ``slot``."""
        cdef Py_hash_t h = PyObject_Hash(key)
        if (self.count + 1) * 2 > <Py_ssize_t>(self.mask + 1):
            self._resize((self.mask + 1) * 2)
        cdef Py_ssize_t i = self._probe(key, h)
        Py_INCREF(key)
        self.entries[i].key = <PyObject*>key
        self.entries[i].hash32 = <int32_t>h
        self.entries[i].slot = slot
        self.count += 1
        return 0

    cdef int delete(self, object key) except -1:
        """Remove ``key`` if present, shifting later entries of its run back."""
        cdef Py_ssize_t i = self._probe(key, PyObject_Hash(key))
        if self.entries[i].key == NULL:
            return 0
        cdef PyObject* gone = self.entries[i].key
        cdef size_t hole = i, j = i, home
        while True:
            j = (j + 1) & self.mask
            if self.entries[j].key == NULL:
                break
            home = (<size_t>PyObject_Hash(<object>self.entries[j].key)) & self.mask
            # Move j into the hole unless its home lies cyclically in (hole, j].
            if (hole <= j and (home <= hole or home > j)) or (hole > j and home <= hole and home > j):
                self.entries[hole] = self.entries[j]
                hole = j
        self.entries[hole].key = NULL
        self.count -= 1
        Py_DECREF(<object>gone)
        return 0

    cdef void clear(self) noexcept:
        self._release_keys()
