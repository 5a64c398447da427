"""limiter.server: the decision service (``limiter serve``).

The path of a check: a codec (``rls``, ``native``, ``/json`` in ``app``) reads the
request into ``decider.Checks``; the ``decider`` matches rules, asks the operations
policy (``limiter.ops``), decides through each rule's kernel or shared store
(``rules``), holds what may wait (``admission``) and counts; the codec writes the
``Outcome``s back. Around it: ``app`` (wiring, one process), ``cli`` (the ``limiter``
command), ``workers`` (``--workers N``), ``http`` (the operational port, on its own
thread), ``admin`` and ``console`` (the admin API and page), ``metrics``, ``reload``
and ``logs``. See ARCHITECTURE.md.
"""
