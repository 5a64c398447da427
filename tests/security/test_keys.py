"""``--max-keys`` bounds memory, not only the count of keys: a long key is kept as a
fixed-size digest.

Attack: checks on ever new keys of 4,000 characters; each key was kept whole, so
200,000 of them took 860 MB, and the default of 1,000,000 keys per rule allowed
gigabytes.
"""

from __future__ import annotations

from pathlib import Path

import grpc
from limiter.server import v1

from tests.service.conftest import native_stub

CONFIG = """domain: d
descriptors:
  - key: user
    rate_limit: {algorithm: token_bucket, unit: hour, requests_per_unit: 10, name: users}
"""
KEYS = 30_000
KEY_CHARS = 3_000
BATCH = 1_000
# What a key may cost at most once kept (see SECURITY.md): its digest form (98 ASCII
# characters: a str of 147 bytes) and 2 to 4 table entries of 32 bytes, with room.
PER_KEY = 400
SLACK = 32 << 20  # the allocator keeps some of the requests' buffers


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def send(stub, rule: str, tag: str) -> None:  # type: ignore[no-untyped-def]
    for start in range(0, KEYS, BATCH):
        checks = [
            v1.Check(domain="d", rule=rule, key=f"{tag}{i:08d}".ljust(KEY_CHARS, "k"))
            for i in range(start, start + BATCH)
        ]
        stub.Decide(v1.DecideRequest(checks=checks), timeout=60)


def test_long_keys_cost_a_bounded_number_of_bytes(serve) -> None:  # type: ignore[no-untyped-def]
    service = serve(CONFIG, "--max-keys", str(KEYS))
    assert service.proc is not None
    with grpc.insecure_channel(service.target) as channel:
        stub = native_stub(channel)
        send(stub, "nothing", "warm")  # the same traffic to no rule: buffers, not keys
        before = rss(service.proc.pid)
        send(stub, "users", "key")
        grown = rss(service.proc.pid) - before
    kept = service.metric("limiter_rule_total_hits_total", domain="d", rule="users")
    assert kept == KEYS
    print(f"{KEYS} keys of {KEY_CHARS} characters: RSS grew {grown / KEYS:.0f} bytes a key")
    assert grown < KEYS * PER_KEY + SLACK, f"{grown / 1e6:.1f} MB for {KEYS} keys"
