"""Redis key names: one hash slot per user key, safe for any key text.

The user key becomes the hash tag, so every Redis key of one decision (and every rule
on the same user key) lands in one cluster slot. Keys that are long or contain braces
(which would change the hash tag) are replaced by a digest; short plain keys stay
readable. The two forms cannot collide: they start with different marker bytes.
"""

from __future__ import annotations

from hashlib import blake2b

MAX_PLAIN_BYTES = 64


def hash_tag(key: str) -> bytes:
    """The ``{...}`` part: readable for short keys, a 128-bit digest otherwise."""
    raw = key.encode("utf-8", "surrogatepass")
    if len(raw) <= MAX_PLAIN_BYTES and b"{" not in raw and b"}" not in raw:
        return b"{=" + raw + b"}"
    return b"{#" + blake2b(raw, digest_size=16).hexdigest().encode() + b"}"
