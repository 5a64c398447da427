"""limiter.server: the decision service (``limiter serve``).

Thin adapters over the engine, one module per concern:

- ``cli``: the ``limiter`` command (serve, check-config), env overrides;
- ``app``: one service process (gRPC + HTTP + reload) and its extension points;
- ``workers``: ``--workers N`` processes on one port (SO_REUSEPORT);
- ``engine``: config rules bound to kernels; the degradation level's single source;
- ``rls``: Envoy RLS v3 with envoyproxy/ratelimit semantics (gRPC and ``/json``);
- ``native``: the ``limiter.v1`` API (``v1/limiter.proto``): Decide, Release, Observe;
- ``http``: the operational HTTP server (``route``/``mount`` registration);
- ``metrics``, ``logs``, ``reload``: Prometheus, JSON logs, hot reload.
"""
