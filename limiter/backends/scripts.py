"""Server-side scripts: real ``.lua`` files, loaded once per server, run by SHA1."""

from __future__ import annotations

from dataclasses import dataclass, field
from hashlib import sha1
from pathlib import Path

LUA_DIR = Path(__file__).with_name("lua")


@dataclass(frozen=True)
class Script:
    """One Lua file; callers run it with EVALSHA and reload it on NOSCRIPT."""

    name: str
    source: bytes = field(repr=False)
    sha: bytes

    @classmethod
    def load(cls, name: str) -> Script:
        source = (LUA_DIR / f"{name}.lua").read_bytes()
        return cls(name, source, sha1(source).hexdigest().encode())


GCRA = Script.load("gcra")
WINDOWS = Script.load("windows")
LEASE_ACQUIRE = Script.load("lease_acquire")
LEASE_RELEASE = Script.load("lease_release")
ADAPTIVE_SYNC = Script.load("adaptive_sync")
QUOTA_SYNC = Script.load("quota_sync")
SCRIPTS = (GCRA, WINDOWS, LEASE_ACQUIRE, LEASE_RELEASE, ADAPTIVE_SYNC, QUOTA_SYNC)
