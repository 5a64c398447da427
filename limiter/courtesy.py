"""Background work that leaves the interpreter to the thread serving decisions.

A thread doing pure-Python work (reading a config, rendering metrics, expiring permits)
keeps the GIL until the interpreter forces a switch, and a thread answering a request
needs the GIL many times per request: each time it waits for that forced switch. Inside
``courteous()``, the current thread sleeps briefly after every short slice of its own
work, so the serving thread finds the interpreter free instead. The background work
takes longer; the decisions beside it do not.

It is a profile hook of the current thread only (``sys.setprofile``): a profiler run
in the same thread replaces it for as long as it runs.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

# Seconds of work between pauses, and the pause: together the longest a decision waits for
# background work before the interpreter is free again, and the share of it left over.
WORK = 0.0002
PAUSE = 0.0002


@contextlib.contextmanager
def courteous(work: float = WORK, pause: float = PAUSE) -> Iterator[None]:
    """Run the block pausing ``pause`` seconds after each ``work`` seconds it computes."""
    clock = time.perf_counter
    sleep = time.sleep
    due = clock() + work

    def hook(frame: FrameType, event: str, arg: Any) -> None:
        nonlocal due
        if clock() >= due:
            sleep(pause)
            due = clock() + work

    previous = sys.getprofile()
    sys.setprofile(hook)
    try:
        yield
    finally:
        sys.setprofile(previous)
