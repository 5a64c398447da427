"""limiter.clients: how applications use limiter, in-process or through the service.

- SDK clients of the decision service: ``LimiterClient`` / ``AsyncLimiterClient``
  (native ``limiter.v1`` API) and ``RlsClient`` / ``AsyncRlsClient`` (Envoy RLS v3),
  with a per-call deadline, a failure mode and client-side adaptive throttling.
- gRPC: ``RateLimitInterceptor`` / ``AioRateLimitInterceptor`` (server side) and
  ``PushbackRetryInterceptor`` / ``AioPushbackRetryInterceptor`` (client side).
- HTTP: ``limiter.clients.asgi.RateLimitMiddleware`` and
  ``limiter.clients.wsgi.RateLimitMiddleware`` with key functions in ``keys``.
- ``current_level()``: the degradation level of the request being handled.
"""

from limiter.clients.fallback import ClientDecision
from limiter.clients.gate import current_decision, current_level
from limiter.clients.interceptors import (
    AioRateLimitInterceptor,
    CallInfo,
    RateLimitInterceptor,
    by_metadata,
    by_method,
    by_peer,
)
from limiter.clients.native import AsyncLimiterClient, LimiterClient, RemotePermit
from limiter.clients.pushback import (
    AioPushbackRetryInterceptor,
    PushbackRetryInterceptor,
    retry_delay,
)
from limiter.clients.rls import AsyncRlsClient, RlsAnswer, RlsClient
from limiter.clients.throttle import AdaptiveThrottle

__all__ = [
    "AdaptiveThrottle",
    "AioPushbackRetryInterceptor",
    "AioRateLimitInterceptor",
    "AsyncLimiterClient",
    "AsyncRlsClient",
    "CallInfo",
    "ClientDecision",
    "LimiterClient",
    "PushbackRetryInterceptor",
    "RateLimitInterceptor",
    "RemotePermit",
    "RlsAnswer",
    "RlsClient",
    "by_metadata",
    "by_method",
    "by_peer",
    "current_decision",
    "current_level",
    "retry_delay",
]
