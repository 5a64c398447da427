"""Where limiter state lives: in-process kernels (default) or a shared backend.

Every limiter takes ``backend=``: ``None`` or ``"memory://"`` keeps state in the
Cython kernels of this process; a URL (``redis://``, ``rediss://``,
``redis+cluster://``, ``redis+sentinel://``) or a ``Backend`` object shares it.
``limiter.limits`` hands the algorithm's ``Spec`` to ``Backend.bind`` and gets back a
``Bound`` store that decides that one algorithm for any key.
"""

from __future__ import annotations

import re
from typing import Any

from limiter.backends.base import Backend, Bound, Spec
from limiter.errors import InvalidParameter

__all__ = ["Backend", "Bound", "Spec", "bind"]

# Kept here (not imported from .redis) so that importing limiter does not import redis-py.
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster", "redis+sentinel",
                 "rediss+sentinel")  # fmt: skip


def bind(backend: object, spec: Spec, **options: Any) -> Bound | None:
    """Resolve ``backend`` for ``spec``; None means: use the in-process kernel."""
    if backend is None or backend == "memory://":
        return None
    if isinstance(backend, str):
        scheme = backend.split("://", 1)[0] if "://" in backend else ""
        if scheme in REDIS_SCHEMES:
            from limiter.backends.redis import shared_backend

            return shared_backend(backend).bind(spec, **options)
        shown = re.sub(r"//[^@/]*@", "//***@", backend)  # never echo a password
        raise InvalidParameter(f"backend URL scheme {scheme!r} is not supported: {shown!r}")
    if isinstance(backend, Backend):
        return backend.bind(spec, **options)
    raise InvalidParameter(f"backend must be a URL or a Backend object, got {backend!r:.80}")
