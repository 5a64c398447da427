# Shared C imports, the clock and parameter validation used by every kernel.

cimport cython
from cpython.dict cimport PyDict_GetItem, PyDict_SetItem, PyDict_DelItem
from cpython.object cimport PyObject
from libc.math cimport ceil, floor, isfinite, isnan
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy
from posix.mman cimport MADV_HUGEPAGE, madvise

import numpy as np

cimport numpy as cnp


cdef extern from "Python.h":
    long long PyLong_AsLongLongAndOverflow(object obj, int* overflow) except? -1

from limiter.errors import InvalidParameter, RateLimited

cnp.import_array()

cdef int64_t NS_PER_S = 1000000000
# Upper bound for any count, burst or limit: keeps every product with a nanosecond
# interval far from int64 overflow.
cdef int64_t MAX_COUNT = 1 << 40
# Longest period or horizon accepted (about 10 years).
cdef double MAX_SECONDS = 10.0 * 366 * 86400


cdef inline int64_t read_clock(object clock, bint wall) except? -1:
    """Now in ns: the injected ``clock()`` if any, else the C clock (wall or monotonic)."""
    if clock is None:
        return realtime_ns() if wall else monotonic_ns()
    value = clock()
    if type(value) is not int:
        try:
            value = value.__index__()
        except AttributeError:
            raise TypeError(f"clock() must return integer nanoseconds, got {value!r}") from None
    if value < 0:
        raise InvalidParameter(f"clock() returned a negative time: {value!r}")
    return value


cdef inline object check_clock(object clock):
    if clock is not None and not callable(clock):
        raise InvalidParameter(f"clock must be a callable returning int nanoseconds, got {clock!r}")
    return clock


cdef double check_positive(str name, object value, double maximum) except -1:
    """A finite number in (0, maximum]; bools and strings are refused, not coerced."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidParameter(f"{name} must be a number, got {value!r}")
    cdef double v = value
    if isnan(v) or not isfinite(v) or v <= 0 or v > maximum:
        raise InvalidParameter(f"{name} must be a finite number in (0, {maximum:g}], got {value!r}")
    return v


cdef int64_t check_count(str name, object value, int64_t minimum, int64_t maximum) except -1:
    """An integer in [minimum, maximum]; floats with a fractional part are refused."""
    if isinstance(value, bool):
        raise InvalidParameter(f"{name} must be an integer, got {value!r}")
    if isinstance(value, float):
        if not isfinite(value) or value != floor(value):
            raise InvalidParameter(f"{name} must be an integer, got {value!r}")
        value = int(value)
    try:
        value = value.__index__()
    except AttributeError:
        raise InvalidParameter(f"{name} must be an integer, got {value!r}") from None
    if value < minimum or value > maximum:
        raise InvalidParameter(f"{name} must be in [{minimum}, {maximum}], got {value!r}")
    return value


cdef size_t HUGE_PAGE = 1 << 21


cdef extern from "stdlib.h" nogil:
    int posix_memalign(void** memptr, size_t alignment, size_t size)


cdef void* big_alloc(size_t n) noexcept nogil:
    """malloc, but an array of 2 MiB or more is 2 MiB-aligned and asks for huge pages.

    Why: keyed lookups land on random rows and index entries; with 4 KiB pages most of
    them also miss the TLB once a table passes a few MiB, and huge pages remove that.
    """
    cdef void* p = NULL
    if n < HUGE_PAGE:
        return malloc(n)
    n = (n + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1)
    if posix_memalign(&p, HUGE_PAGE, n) != 0:
        return NULL
    madvise(p, n, MADV_HUGEPAGE)
    return p


cdef inline int64_t seconds_to_ns(double seconds) noexcept nogil:
    return <int64_t>ceil(seconds * NS_PER_S)


cdef inline double ns_to_seconds(int64_t ns) noexcept nogil:
    return ns / 1e9
