"""limiter.ops: the operations side, injected into the decider as one policy.

- ``policy``: ``Operations`` (what the decider asks) and ``build`` (from config sections);
- ``switches``: manual switches shared by every replica (Redis), with an audit log;
- ``degradation``: levels from pressure signals, with hysteresis, and the tiers they shed;
- ``shedding``: top-client shedding, abnormal-client blocks, throttled-rule tracking;
- ``breaker``: circuit breakers (per dependency and partition);
- ``fallback``: which rules are answered by their failure mode (events, a rate-limited log);
- ``alerts``: signed webhooks and the event list.
"""

from limiter.ops.policy import SECTIONS, Operations, OpsConfig, Verdict, build

__all__ = ["SECTIONS", "Operations", "OpsConfig", "Verdict", "build"]
