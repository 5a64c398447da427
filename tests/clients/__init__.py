"""Tests of limiter.clients: SDK, interceptors, middleware, decorators (real servers)."""
