# cython: language_level=3
"""Wire codecs of the decision service: request bytes in, response bytes out.

Envoy RLS v3 (``RateLimitRequest`` → ``RateLimitResponse``) and limiter.v1 ``Decide``
(``DecideRequest`` → ``DecideResponse``).

Why: the decision service answers from the raw request bytes. Building and reading
protobuf objects field by field from Python cost more than the decision itself (~1 µs
per message touched); reading the few fields a check needs straight from the wire, and
writing the answer in one pass, takes a fraction of that.

It follows the protobuf wire format as protobuf's own parser does: unknown fields (and known
fields with an unexpected wire type) are skipped, the last value of a scalar wins, repeated
messages append, and a singular message given twice is merged; unknown groups (wire types
3 and 4, deprecated) are skipped to their end. Strings must be valid UTF-8 (proto3).
Field numbers are those of envoy/service/ratelimit/v3/rls.proto,
envoy/extensions/common/ratelimit/v3/ratelimit.proto and server/v1/limiter.proto; the
tests check every message both ways against the generated protobuf classes.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8


cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object text, Py_ssize_t* size) except NULL
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy

ctypedef const unsigned char* cptr

cdef enum:
    MAX_GROUP_DEPTH = 100  # as protobuf's default recursion limit


class WireError(ValueError):
    """Bytes that are not a well-formed message; the text names the field and offset."""


cdef class Descriptor:
    """One request descriptor: ``entries`` as (key, value) pairs; ``values``, the entries'
    values joined by U+001F (the rule's key); ``limit`` as (requests_per_unit, unit) or
    None; ``hits`` (the descriptor's hits_addend) or None."""

    cdef readonly tuple entries
    cdef readonly str values
    cdef readonly object limit
    cdef readonly object hits

    def __repr__(self):
        return f"Descriptor(entries={self.entries!r}, limit={self.limit!r}, hits={self.hits!r})"


# --- reading ------------------------------------------------------------------------------


cdef struct Cursor:
    cptr start  # the whole request: offsets in errors count from here
    cptr p
    cptr end


cdef int _fail(Cursor* c, str what) except -1:
    raise WireError(f"{what} (at byte {c.p - c.start})")


# Field names in errors are built outwards: "descriptors[0]" + ".entries[1]" + ".key: ...".


cdef uint64_t _varint(Cursor* c, str field) except? 0xFFFFFFFFFFFFFFFF:
    cdef uint64_t value = 0
    cdef int shift = 0
    cdef unsigned char byte
    while True:
        if c.p >= c.end:
            _fail(c, f"{field}: truncated varint")
        byte = c.p[0]
        c.p += 1
        if shift < 64:
            value |= (<uint64_t>(byte & 0x7F)) << shift
        if not (byte & 0x80):
            return value
        shift += 7
        if shift >= 70:
            _fail(c, f"{field}: varint longer than 10 bytes")


cdef Cursor _sub(Cursor* c, str field) except *:
    """The length-delimited payload at the cursor, as a cursor of its own (c skips it)."""
    cdef uint64_t size = _varint(c, field)
    cdef Cursor sub
    if size > <uint64_t>(c.end - c.p):
        _fail(c, f"{field}: length {size} runs past the end of the message")
    sub.start = c.start
    sub.p = c.p
    sub.end = c.p + size
    c.p += size
    return sub


cdef str _string(Cursor* c, str field):
    cdef Cursor sub = _sub(c, field)
    try:
        return PyUnicode_DecodeUTF8(<const char*>sub.p, sub.end - sub.p, NULL)
    except UnicodeDecodeError:
        _fail(c, f"{field}: not valid UTF-8")


cdef class _Last:
    """The last string read for one field, with its bytes in the message being parsed:
    the checks of a batch mostly repeat their domain and rule, and a repeat returns the
    same str (no decode, no new object, its hash already computed)."""
    cdef cptr p
    cdef Py_ssize_t n
    cdef str value


cdef str _string_like(Cursor* c, str field, _Last last):
    """``_string``, returning ``last.value`` when the bytes are the same as last time."""
    cdef Cursor sub = _sub(c, field)
    cdef Py_ssize_t n = sub.end - sub.p
    if last.value is not None and n == last.n and memcmp(sub.p, last.p, n) == 0:
        return last.value
    try:
        value = PyUnicode_DecodeUTF8(<const char*>sub.p, n, NULL)
    except UnicodeDecodeError:
        _fail(c, f"{field}: not valid UTF-8")
    last.p, last.n, last.value = sub.p, n, value
    return value


cdef int _skip(Cursor* c, uint32_t tag, str field, int depth=0) except -1:
    """Skip one unknown field. A group (wire types 3 and 4, deprecated) is skipped to its
    matching end, as protobuf does, nested at most MAX_GROUP_DEPTH deep."""
    cdef int wire_type = tag & 7
    cdef uint32_t inner
    cdef uint64_t raw
    if wire_type == 0:
        _varint(c, field)
    elif wire_type == 2:
        _sub(c, field)
    elif wire_type == 1 or wire_type == 5:
        if c.end - c.p < (8 if wire_type == 1 else 4):
            _fail(c, f"{field}: truncated fixed-width value")
        c.p += 8 if wire_type == 1 else 4
    elif wire_type == 3:
        if depth >= MAX_GROUP_DEPTH:
            _fail(c, f"{field}: groups nested more than {MAX_GROUP_DEPTH} deep")
        while True:
            if c.p >= c.end:
                _fail(c, f"{field}: group {tag >> 3} is not closed")
            # Inside an unknown group protobuf refuses only a zero tag, not field 0.
            raw = _varint(c, field)
            if raw == 0 or raw > 0xFFFFFFFF:
                _fail(c, f"{field}: invalid field tag {raw}")
            inner = <uint32_t>raw
            if inner == (tag & ~7u) | 4:
                return 0
            _skip(c, inner, field, depth + 1)
    else:
        _fail(c, f"{field}: unexpected end of group {tag >> 3}")
    return 0


cdef uint32_t _tag(Cursor* c, str message) except? 0xFFFFFFFF:
    cdef uint64_t tag = _varint(c, message)
    if tag > 0xFFFFFFFF or (tag >> 3) == 0:
        _fail(c, f"{message}: invalid field tag {tag}")
    return <uint32_t>tag


# --- writing ------------------------------------------------------------------------------


cdef inline Py_ssize_t _varint_size(uint64_t value) noexcept:
    cdef Py_ssize_t size = 1
    while value >= 0x80:
        value >>= 7
        size += 1
    return size


cdef inline unsigned char* _put_varint(unsigned char* out, uint64_t value) noexcept:
    while value >= 0x80:
        out[0] = <unsigned char>(value | 0x80)
        out += 1
        value >>= 7
    out[0] = <unsigned char>value
    return out + 1


cdef inline unsigned char* _put_bytes(
    unsigned char* out, uint32_t tag, const char* data, Py_ssize_t size
) noexcept:
    out = _put_varint(out, tag)
    out = _put_varint(out, <uint64_t>size)
    memcpy(out, data, size)
    return out + size


# --- Envoy RLS v3 -------------------------------------------------------------------------


cdef tuple _entry(Cursor* c, Py_ssize_t max_chars):
    cdef Cursor sub = _sub(c, "")
    cdef uint32_t tag
    cdef str key = "", value = ""
    while sub.p < sub.end:
        tag = _tag(&sub, "")
        if tag == (1 << 3 | 2):
            key = _string(&sub, ".key")
        elif tag == (2 << 3 | 2):
            value = _string(&sub, ".value")
        else:
            _skip(&sub, tag, "")
    if not key:
        raise WireError(".key: must not be empty")
    if len(key) > max_chars or len(value) > max_chars:
        raise WireError(
            f": key and value must be at most {max_chars} characters "
            f"(got {len(key)} and {len(value)})"
        )
    return (key, value)


cdef tuple _limit(Cursor* c, str field, tuple merged):
    """RateLimitOverride{requests_per_unit = 1, unit = 2} merged into an earlier one."""
    cdef Cursor sub = _sub(c, field)
    cdef uint32_t tag
    requests, unit = merged if merged is not None else (0, 0)
    while sub.p < sub.end:
        tag = _tag(&sub, "")
        if tag == (1 << 3 | 0):
            requests = <uint32_t>_varint(&sub, field + ".requests_per_unit")
        elif tag == (2 << 3 | 0):
            unit = <int32_t>_varint(&sub, field + ".unit")
        else:
            _skip(&sub, tag, field)
    return (requests, unit)


cdef object _uint64_value(Cursor* c, str field, object merged):
    """google.protobuf.UInt64Value{value = 1} merged into an earlier one."""
    cdef Cursor sub = _sub(c, field)
    cdef uint32_t tag
    value = merged if merged is not None else 0
    while sub.p < sub.end:
        tag = _tag(&sub, "")
        if tag == (1 << 3 | 0):
            value = _varint(&sub, field + ".value")
        else:
            _skip(&sub, tag, field)
    return value


cdef Descriptor _descriptor(Cursor* c, Py_ssize_t max_entries, Py_ssize_t max_chars):
    cdef Cursor sub = _sub(c, "")
    cdef uint32_t tag
    cdef Descriptor d = Descriptor.__new__(Descriptor)
    entries = []
    while sub.p < sub.end:
        tag = _tag(&sub, "")
        if tag == (1 << 3 | 2):
            try:
                entries.append(_entry(&sub, max_chars))
            except WireError as exc:
                raise WireError(f".entries[{len(entries)}]{exc}") from None
        elif tag == (2 << 3 | 2):
            d.limit = _limit(&sub, ".limit", d.limit)
        elif tag == (3 << 3 | 2):
            d.hits = _uint64_value(&sub, ".hits_addend", d.hits)
        else:
            _skip(&sub, tag, "")
    if not entries:
        raise WireError(".entries: must not be empty")
    if len(entries) > max_entries:
        raise WireError(f".entries: {len(entries)} entries, at most {max_entries} allowed")
    d.entries = tuple(entries)
    d.values = entries[0][1] if len(entries) == 1 else "\x1f".join([e[1] for e in entries])
    return d


def parse_rls_request(
    bytes data not None, Py_ssize_t max_descriptors, Py_ssize_t max_entries,
    Py_ssize_t max_chars,
):
    """``RateLimitRequest`` bytes → (domain, hits_addend, [Descriptor, ...]).

    Raises WireError naming the field: for bytes protobuf would refuse (with the byte
    offset), and for a request the service cannot answer: an empty domain, key or entry
    list, no descriptors, or more descriptors, entries or characters than allowed.
    """
    cdef Cursor c
    cdef uint32_t tag
    c.start = c.p = <cptr>PyBytes_AS_STRING(data)
    c.end = c.p + PyBytes_GET_SIZE(data)
    domain = ""
    hits_addend = 0
    descriptors = []
    while c.p < c.end:
        tag = _tag(&c, "request")
        if tag == (1 << 3 | 2):
            domain = _string(&c, "domain")
        elif tag == (2 << 3 | 2):
            try:
                descriptors.append(_descriptor(&c, max_entries, max_chars))
            except WireError as exc:
                raise WireError(f"descriptors[{len(descriptors)}]{exc}") from None
        elif tag == (3 << 3 | 0):
            hits_addend = <uint32_t>_varint(&c, "hits_addend")
        else:
            _skip(&c, tag, "request")
    if not domain:
        raise WireError("domain: must not be empty")
    if not descriptors:
        raise WireError("descriptors: must not be empty")
    if len(descriptors) > max_descriptors:
        raise WireError(
            f"descriptors: {len(descriptors)} descriptors, at most {max_descriptors} allowed"
        )
    return domain, hits_addend, descriptors


cdef Py_ssize_t _duration_size(int64_t seconds, int32_t nanos) noexcept:
    cdef Py_ssize_t size = 0
    if seconds:
        size += 1 + _varint_size(<uint64_t>seconds)
    if nanos:
        size += 1 + _varint_size(<uint64_t><int64_t>nanos)
    return size


cdef bytes _utf8(object text, str field):
    if type(text) is not str:
        raise TypeError(f"{field}: expected str, got {type(text).__name__}")
    return (<str>text).encode("utf-8")


cdef const char* _text(object text, str field, Py_ssize_t* size) except NULL:
    """``text``'s UTF-8 bytes, borrowed from the str object itself (no copy)."""
    if type(text) is not str:
        raise TypeError(f"{field}: expected str, got {type(text).__name__}")
    return PyUnicode_AsUTF8AndSize(text, size)


cdef int _refuse(object values, tuple kinds, str field) except -1:
    """Raise the TypeError naming the first value of ``values`` not of exactly its kind.

    Sizes are computed in one pass and bytes written in another, so nothing read twice may
    run Python code (an ``__index__``, ``__float__`` or ``__iter__``) that could answer
    differently the second time: only exact types go in.
    """
    cdef Py_ssize_t k
    if type(values) is not tuple or len(values) != len(kinds):
        raise TypeError(f"{field}: expected a tuple of {len(kinds)} values")
    for k in range(len(kinds)):
        kind = kinds[k]
        if type(values[k]) is not kind and not (type(kind) is tuple and type(values[k]) in kind):
            raise TypeError(f"{field}[{k}]: {type(values[k]).__name__} is not allowed here")
    return 0


cdef inline bint _number(object value) noexcept:
    return type(value) is float or type(value) is int


STATUS_KINDS = (int, (bytes, type(None)), int, int, int)
HEADER_KINDS = (str, str)
RESULT_KINDS = (bool, int, int, int, (float, int), (float, int), (float, int), (str, type(None)))


cdef inline Py_ssize_t _header_size(Py_ssize_t key_size, Py_ssize_t value_size) noexcept:
    """A HeaderValue{key = 1, value = 2}'s encoded size."""
    return 2 + _varint_size(key_size) + key_size + _varint_size(value_size) + value_size


def encode_rls_response(
    int overall_code, list statuses not None, list response_headers not None,
    list request_headers not None,
):
    """The ``RateLimitResponse`` bytes for an answer given as plain values.

    ``statuses``: (code, current_limit, limit_remaining, seconds, nanos) per descriptor,
    where ``current_limit`` is an encoded ``RateLimitResponse.RateLimit`` (bytes, the
    rule's constant) or None for a descriptor no rule limited (then the status carries no
    limit and no duration_until_reset). Headers are (key, value) string pairs.
    """
    cdef Py_ssize_t size = 0, status_size, i, n_statuses = len(statuses)
    cdef int code
    cdef uint32_t remaining
    cdef int64_t seconds
    cdef int32_t nanos
    cdef bytes limit_wire
    cdef list sizes = [None] * n_statuses
    cdef Py_ssize_t key_size, value_size, header_size
    cdef const char* key_text
    cdef const char* value_text
    if overall_code:
        size += 1 + _varint_size(<uint64_t><int64_t>overall_code)
    for i in range(n_statuses):
        status = statuses[i]
        if not (type(status) is tuple and len(<tuple>status) == 5
                and type((<tuple>status)[0]) is int
                and ((<tuple>status)[1] is None or type((<tuple>status)[1]) is bytes)
                and type((<tuple>status)[2]) is int and type((<tuple>status)[3]) is int
                and type((<tuple>status)[4]) is int):
            _refuse(status, STATUS_KINDS, f"statuses[{i}]")
        code, limit, remaining, seconds, nanos = status
        status_size = 0
        if code:
            status_size += 1 + _varint_size(<uint64_t><int64_t>code)
        if limit is not None:
            limit_wire = limit
            status_size += 1 + _varint_size(len(limit_wire)) + len(limit_wire)
            status_size += 1 + _varint_size(_duration_size(seconds, nanos))
            status_size += _duration_size(seconds, nanos)
        if remaining:
            status_size += 1 + _varint_size(remaining)
        sizes[i] = status_size
        size += 1 + _varint_size(status_size) + status_size
    for headers in (response_headers, request_headers):
        for header in headers:
            if not (type(header) is tuple and len(<tuple>header) == 2
                    and type((<tuple>header)[0]) is str and type((<tuple>header)[1]) is str):
                _refuse(header, HEADER_KINDS, "header")
            key, value = header
            _text(key, "header key", &key_size)
            _text(value, "header value", &value_size)
            header_size = _header_size(key_size, value_size)
            size += 1 + _varint_size(header_size) + header_size
    out_bytes = PyBytes_FromStringAndSize(NULL, size)
    cdef unsigned char* out = <unsigned char*>PyBytes_AS_STRING(out_bytes)
    if overall_code:
        out = _put_varint(out, 1 << 3 | 0)
        out = _put_varint(out, <uint64_t><int64_t>overall_code)
    for i in range(n_statuses):
        code, limit, remaining, seconds, nanos = statuses[i]
        out = _put_varint(out, 2 << 3 | 2)
        out = _put_varint(out, <Py_ssize_t>sizes[i])
        if code:
            out = _put_varint(out, 1 << 3 | 0)
            out = _put_varint(out, <uint64_t><int64_t>code)
        if limit is not None:
            limit_wire = limit
            out = _put_bytes(out, 2 << 3 | 2, PyBytes_AS_STRING(limit_wire), len(limit_wire))
        if remaining:
            out = _put_varint(out, 3 << 3 | 0)
            out = _put_varint(out, remaining)
        if limit is not None:
            out = _put_varint(out, 4 << 3 | 2)
            out = _put_varint(out, <uint64_t>_duration_size(seconds, nanos))
            if seconds:
                out = _put_varint(out, 1 << 3 | 0)
                out = _put_varint(out, <uint64_t>seconds)
            if nanos:
                out = _put_varint(out, 2 << 3 | 0)
                out = _put_varint(out, <uint64_t><int64_t>nanos)
    for tag, headers in ((3 << 3 | 2, response_headers), (4 << 3 | 2, request_headers)):
        for key, value in headers:
            key_text = _text(key, "header key", &key_size)
            value_text = _text(value, "header value", &value_size)
            out = _put_varint(out, tag)
            out = _put_varint(out, <uint64_t>_header_size(key_size, value_size))
            out = _put_bytes(out, 1 << 3 | 2, key_text, key_size)
            out = _put_bytes(out, 2 << 3 | 2, value_text, value_size)
    return out_bytes


# --- limiter.v1 Decide ------------------------------------------------------------------


cdef double _double(Cursor* c, str field) except? -1.0:
    """A fixed64 double (protobuf is little-endian on the wire, whatever the host)."""
    cdef uint64_t bits = 0
    cdef double value
    cdef int k
    if c.end - c.p < 8:
        _fail(c, f"{field}: truncated double")
    for k in range(8):
        bits |= (<uint64_t>c.p[k]) << (8 * k)
    c.p += 8
    memcpy(&value, &bits, 8)
    return value


cdef tuple _check(Cursor* c, frozenset priorities, Py_ssize_t max_key_chars,
                  double max_wait_limit, _Last last_domain, _Last last_rule):
    cdef Cursor sub = _sub(c, "")
    cdef uint32_t tag
    cdef str domain = "", rule = "", key = ""
    cdef uint64_t cost = 0
    cdef int32_t priority = 0
    cdef double max_wait = 0.0
    while sub.p < sub.end:
        tag = _tag(&sub, "")
        if tag == (1 << 3 | 2):
            domain = _string_like(&sub, ".domain", last_domain)
        elif tag == (2 << 3 | 2):
            rule = _string_like(&sub, ".rule", last_rule)
        elif tag == (3 << 3 | 2):
            key = _string(&sub, ".key")
        elif tag == (4 << 3 | 0):
            cost = _varint(&sub, ".cost")
        elif tag == (5 << 3 | 0):
            priority = <int32_t>_varint(&sub, ".priority")
        elif tag == (6 << 3 | 2):
            # Removed from limiter.v1 (the field number is reserved): an old client's
            # tenant must not be dropped silently.
            raise WireError(".tenant: no longer part of limiter.v1; a tenant is part of "
                            "the check's key, or a rule of its own")
        elif tag == (7 << 3 | 1):
            max_wait = _double(&sub, ".max_wait")
        else:
            _skip(&sub, tag, "")
    if priority not in priorities:
        raise WireError(f".priority: {priority} is not a Priority")
    if len(key) > max_key_chars:
        raise WireError(f".key: {len(key)} characters, at most {max_key_chars}")
    if not (0.0 <= max_wait <= max_wait_limit):  # also refuses NaN
        raise WireError(f".max_wait: must be in [0, {max_wait_limit:g}] s, got {max_wait!r}")
    return (domain, rule, key, cost, priority, max_wait)


def parse_decide_request(
    bytes data not None, Py_ssize_t max_checks, frozenset priorities not None,
    Py_ssize_t max_key_chars, double max_wait_limit,
):
    """``DecideRequest`` bytes → [(domain, rule, key, cost, priority, max_wait)].

    Checks repeating the previous check's domain or rule share its str object.

    Raises WireError naming the field: for bytes protobuf would refuse (with the byte
    offset), more than ``max_checks`` checks, a priority not in ``priorities``, a key
    longer than ``max_key_chars`` or a max_wait outside [0, ``max_wait_limit``] s.
    """
    cdef Cursor c
    cdef uint32_t tag
    c.start = c.p = <cptr>PyBytes_AS_STRING(data)
    c.end = c.p + PyBytes_GET_SIZE(data)
    checks = []
    cdef _Last last_domain = _Last(), last_rule = _Last()
    while c.p < c.end:
        tag = _tag(&c, "request")
        if tag == (1 << 3 | 2):
            try:
                checks.append(
                    _check(&c, priorities, max_key_chars, max_wait_limit, last_domain, last_rule))
            except WireError as exc:
                raise WireError(f"checks[{len(checks)}]{exc}") from None
        else:
            _skip(&c, tag, "request")
    if len(checks) > max_checks:
        raise WireError(f"checks: {len(checks)} checks, at most {max_checks} allowed")
    return checks


cdef inline uint64_t _u64(object value) except? 0xFFFFFFFFFFFFFFFF:
    """A uint64 field's value: negative (never expected) as 0, beyond 2**64 - 1 clamped."""
    if value <= 0:
        return 0
    if value >= 0xFFFFFFFFFFFFFFFF:
        return 0xFFFFFFFFFFFFFFFF
    return <uint64_t>value


cdef inline int _present(double value) noexcept:
    """A proto3 double is written unless its bits are all zero (-0.0 is written)."""
    cdef uint64_t bits
    memcpy(&bits, &value, 8)
    return bits != 0


cdef Py_ssize_t _result_size(tuple r, uint32_t level, uint64_t limit, uint64_t remaining,
                             Py_ssize_t permit_size):
    cdef Py_ssize_t size = 0
    cdef int64_t code = r[1]
    if r[0]:
        size += 2
    if code:
        size += 1 + _varint_size(<uint64_t>code)
    if limit:
        size += 1 + _varint_size(limit)
    if remaining:
        size += 1 + _varint_size(remaining)
    size += 9 * (_present(r[4]) + _present(r[5]) + _present(r[6]))
    if level:
        size += 1 + _varint_size(level)
    if permit_size:
        size += 1 + _varint_size(permit_size) + permit_size
    return size


cdef inline unsigned char* _put_double(unsigned char* out, uint32_t tag, double value) noexcept:
    cdef uint64_t bits
    cdef int k
    out = _put_varint(out, tag)
    memcpy(&bits, &value, 8)
    for k in range(8):
        out[k] = <unsigned char>(bits >> (8 * k))
    return out + 8


def encode_decide_response(list results not None, uint32_t level):
    """The ``DecideResponse`` bytes for results given as plain values.

    ``results``: (allowed, code, limit, remaining, reset_after, retry_after, waited,
    permit or None, ...) per check, in request order (a tuple or a NamedTuple such as
    the decider's ``Outcome``; fields past the eighth are not encoded); every Result and
    the response carry ``level``.
    """
    cdef Py_ssize_t size = 0, n = len(results), i, result_size, permit_size
    cdef tuple r
    cdef uint64_t limit, remaining
    cdef int64_t code
    cdef double value
    cdef list permits = [None] * n
    cdef list sizes = [None] * n
    for i in range(n):
        value_ = results[i]
        if not (isinstance(value_, tuple) and len(<tuple>value_) >= 8):
            _refuse(value_, RESULT_KINDS, f"results[{i}]")
        r = <tuple>value_
        if not (type(r[0]) is bool and isinstance(r[1], int) and type(r[2]) is int
                and type(r[3]) is int and _number(r[4]) and _number(r[5]) and _number(r[6])
                and (r[7] is None or type(r[7]) is str)):
            _refuse(r, RESULT_KINDS, f"results[{i}]")
        permit = r[7]
        permit_size = 0
        if permit:
            permit = permits[i] = _utf8(permit, "permit")
            permit_size = len(<bytes>permit)
        result_size = _result_size(r, level, _u64(r[2]), _u64(r[3]), permit_size)
        sizes[i] = result_size
        size += 1 + _varint_size(result_size) + result_size
    if level:
        size += 1 + _varint_size(level)
    out_bytes = PyBytes_FromStringAndSize(NULL, size)
    cdef unsigned char* out = <unsigned char*>PyBytes_AS_STRING(out_bytes)
    for i in range(n):
        r = <tuple>results[i]
        out = _put_varint(out, 1 << 3 | 2)
        out = _put_varint(out, <Py_ssize_t>sizes[i])
        if r[0]:
            out = _put_varint(out, 1 << 3 | 0)
            out = _put_varint(out, 1)
        code = r[1]
        if code:
            out = _put_varint(out, 2 << 3 | 0)
            out = _put_varint(out, <uint64_t>code)
        limit = _u64(r[2])
        if limit:
            out = _put_varint(out, 3 << 3 | 0)
            out = _put_varint(out, limit)
        remaining = _u64(r[3])
        if remaining:
            out = _put_varint(out, 4 << 3 | 0)
            out = _put_varint(out, remaining)
        value = r[4]
        if _present(value):
            out = _put_double(out, 5 << 3 | 1, value)
        value = r[5]
        if _present(value):
            out = _put_double(out, 6 << 3 | 1, value)
        if level:
            out = _put_varint(out, 7 << 3 | 0)
            out = _put_varint(out, level)
        value = r[6]
        if _present(value):
            out = _put_double(out, 8 << 3 | 1, value)
        permit = permits[i]
        if permit is not None:
            out = _put_bytes(out, 9 << 3 | 2, PyBytes_AS_STRING(permit), len(<bytes>permit))
    if level:
        out = _put_varint(out, 2 << 3 | 0)
        out = _put_varint(out, level)
    return out_bytes
