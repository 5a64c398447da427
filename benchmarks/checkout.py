"""Another checkout's limiter in this interpreter, for a benchmark's ``--baseline``.

An install maps the repository's ``server/`` to ``limiter.server``; a checkout built in
place (``python setup.py build_ext --inplace``) is mapped the same way here. Call ``use``
before anything imports limiter.
"""

from __future__ import annotations

import sys


def use(root: str) -> None:
    """Import limiter from ``root``: its package, with its ``server/`` as limiter.server."""
    sys.path.insert(0, root)
    import limiter

    limiter.__path__.append(root)
