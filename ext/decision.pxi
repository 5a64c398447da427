# Decision: the answer every limiter gives.

from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_SET_ITEM


@cython.freelist(256)
cdef class Decision:
    """May this request pass? Plus what a client needs to know to behave.

    ``limit`` and ``remaining`` are in the limiter's unit (requests or tokens);
    ``reset_after`` is seconds until the limiter is fully replenished for this key,
    ``retry_after`` seconds until the same request would pass (0 when allowed), and
    ``wait`` seconds a shaper asks the caller to wait before proceeding (0 otherwise).
    Used as a context manager it raises ``RateLimited`` when the request was refused.
    """

    cdef readonly bint allowed
    cdef readonly int64_t limit
    cdef readonly int64_t remaining
    cdef readonly double reset_after
    cdef readonly double retry_after
    cdef readonly double wait

    def __init__(self, bint allowed, int64_t limit, int64_t remaining, double reset_after,
                 double retry_after=0.0, double wait=0.0):
        self.allowed = allowed
        self.limit = limit
        self.remaining = remaining
        self.reset_after = reset_after
        self.retry_after = retry_after
        self.wait = wait

    def __bool__(self):
        return self.allowed

    def __repr__(self):
        return (f"{type(self).__name__}(allowed={self.allowed}, limit={self.limit}, "
                f"remaining={self.remaining}, reset_after={self.reset_after:.6f}, "
                f"retry_after={self.retry_after:.6f}, wait={self.wait:.6f})")

    def __eq__(self, other):
        if not isinstance(other, Decision):
            return NotImplemented
        return self.as_tuple() == (<Decision>other).as_tuple()

    def __hash__(self):
        return hash(self.as_tuple())

    def as_tuple(self):
        return (self.allowed, self.limit, self.remaining, self.reset_after,
                self.retry_after, self.wait)

    def as_dict(self):
        return {"allowed": self.allowed, "limit": self.limit, "remaining": self.remaining,
                "reset_after": self.reset_after, "retry_after": self.retry_after,
                "wait": self.wait}

    def __enter__(self):
        if not self.allowed:
            raise RateLimited(self)
        return self

    def __exit__(self, exc_type, exc, tb):
        return False


cdef inline Decision make_decision(bint allowed, int64_t limit, int64_t remaining,
                                   int64_t reset_ns, int64_t retry_ns, int64_t wait_ns):
    """Fast constructor for kernels (skips argument parsing)."""
    cdef Decision d = Decision.__new__(Decision)
    d.allowed = allowed
    d.limit = limit
    d.remaining = remaining if remaining > 0 else 0
    d.reset_after = ns_to_seconds(reset_ns) if reset_ns > 0 else 0.0
    d.retry_after = ns_to_seconds(retry_ns) if retry_ns > 0 else 0.0
    d.wait = ns_to_seconds(wait_ns) if wait_ns > 0 else 0.0
    return d


cdef extern from "Python.h":
    ctypedef struct PyTypeObject
    object PyType_GenericAlloc(PyTypeObject* kind, Py_ssize_t items)


def answers_of(type kind, list decisions, object rule, bint shadow, object ok, object refused):
    """One answer per rate Decision, as tuples of ``kind`` (a tuple subclass without a
    ``__dict__``, such as a NamedTuple): ``(allowed, code, limit, remaining,
    reset_after, retry_after, 0.0, None, rule)``, where a refusal is allowed (code
    ``ok``) when ``shadow``, else has code ``refused``; an allowed one has no retry.

    Built in C: a service batch builds thousands per request per second, and a tuple
    subclass built from Python costs more than the decision itself.
    """
    if not issubclass(kind, tuple) or kind.__basicsize__ != tuple.__basicsize__:
        raise TypeError(f"kind must be a tuple subclass without a __dict__, got {kind!r}")
    cdef Py_ssize_t n = len(decisions), i
    cdef list out = [None] * n
    cdef Decision d
    cdef object answer
    cdef object no = ok if shadow else refused
    cdef object zero = 0.0
    for i in range(n):
        d = <Decision?>decisions[i]
        answer = PyType_GenericAlloc(<PyTypeObject*>kind, 9)  # what tuple.__new__ does
        if d.allowed:
            _put(answer, 0, True)
            _put(answer, 1, ok)
            _put(answer, 5, zero)
        else:
            _put(answer, 0, True if shadow else False)
            _put(answer, 1, no)
            _put(answer, 5, d.retry_after)
        _put(answer, 2, d.limit)
        _put(answer, 3, d.remaining)
        _put(answer, 4, d.reset_after)
        _put(answer, 6, zero)
        _put(answer, 7, None)
        _put(answer, 8, rule)
        out[i] = answer
    return out


cdef inline void _put(object tuple_, Py_ssize_t at, object item):
    Py_INCREF(item)  # SET_ITEM steals a reference
    PyTuple_SET_ITEM(tuple_, at, item)
