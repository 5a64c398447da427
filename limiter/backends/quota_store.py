"""RLQS buckets shared by service replicas: each bucket's instances kept in Redis.

Each replica writes, per bucket, its own Envoy instances (``limiter.quota.Entry``: the demand
of a live stream, or the grant an ended stream still holds, each entry expiring with the
instance's lease) and reads the other replicas' entries back, in one script run per bucket
(``lua/quota_sync.lua``). The store does I/O only: the split itself is
``limiter.quota.QuotaPool``'s, the same on every replica.

Connection, batching and the breaker are the ``RedisBackend``'s; a failure is answered in
place of the bucket's view (``None``), never raised, and logged as the backend logs its
failures. Calls block for one round trip: run :meth:`QuotaStore.exchange` on a worker
thread, never on an event loop.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

from redis.crc import key_slot

from limiter.backends.combiner import Call
from limiter.backends.keys import hash_tag
from limiter.backends.redis import REDIS_FAULTS, RedisBackend
from limiter.backends.scripts import QUOTA_SYNC
from limiter.backends.transport import Unavailable
from limiter.errors import InvalidParameter
from limiter.quota import Entry

# Entries one bucket keeps in Redis, over all replicas (more are counted by their own
# replica only).
MAX_ENTRIES = 1000


@dataclass(frozen=True)
class Remote:
    """The other replicas' instances of one bucket: live demands by entry name (None: not
    measured yet) and the sum of the grants their ended streams hold."""

    demands: dict[str, float | None]
    held: float


class QuotaStore:
    """One replica's side of the shared buckets. ``replica`` names this process's entries
    (default: random, so a restarted replica never takes over a dead one's entries)."""

    def __init__(
        self, backend: RedisBackend, *, replica: str | None = None, max_entries: int = MAX_ENTRIES
    ) -> None:
        if max_entries < 1:
            raise InvalidParameter(f"max_entries must be >= 1, got {max_entries!r}")
        self.backend = backend
        self.replica = replica or os.urandom(8).hex()
        if "/" in self.replica:
            raise InvalidParameter(f"replica must not contain '/', got {self.replica!r}")
        self.max_entries = max_entries

    def key(self, domain: str, pairs: Sequence[tuple[str, str]]) -> bytes:
        """The Redis key of one bucket (the same on every replica)."""
        name = json.dumps([domain, sorted(pairs)], separators=(",", ":"))
        return self.backend.prefix + b"quota:" + hash_tag(name)

    def exchange(self, buckets: Sequence[tuple[bytes, Sequence[Entry]]]) -> list[Remote | None]:
        """Write each bucket's entries of this replica and read the others' (one pipelined
        round trip). Answers per bucket, in order; None where Redis failed."""
        calls = []
        for key, entries in buckets:
            args: list[bytes | str | int] = [b"EVALSHA", QUOTA_SYNC.sha, 1, key, self.replica]
            args.append(self.max_entries)
            for entry in entries:
                args += [entry.name, max(1, round(entry.lease * 1000)), _value(entry)]
            calls.append(Call(QUOTA_SYNC, (), tuple(args), 0, key_slot(key)))
        sent = [call for call in calls if self.backend.allow(call.slot)]
        if sent:
            try:
                self.backend.run(sent)
            except Unavailable as exc:
                for call in sent:
                    call.error = exc
        out: list[Remote | None] = []
        for call in calls:
            if call not in sent or call.error is not None or call.result is None:
                if call.error is not None and isinstance(call.error, REDIS_FAULTS):
                    self.backend.failed(call.error)
                out.append(None)
                continue
            out.append(_remote(call.result))
        return out


def _value(entry: Entry) -> str:
    if entry.held is not None:
        return f"h {entry.held!r}"
    if entry.demand is None:
        return "n 0"
    return f"d {entry.demand!r}"


def _remote(reply: list[bytes]) -> Remote:
    demands: dict[str, float | None] = {}
    held = 0.0
    for i in range(0, len(reply) - 1, 2):
        name = reply[i].decode(errors="replace")
        try:
            _, kind, text = reply[i + 1].split(b" ", 2)
            number = float(text)
        except ValueError:
            continue  # not written by this module: ignored rather than trusted
        if not 0 <= number < math.inf:
            continue
        if kind == b"h":
            held += number
        elif kind == b"n":
            demands[name] = None
        elif kind == b"d":
            demands[name] = number
    return Remote(demands, held)
