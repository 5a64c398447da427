"""Background work inside ``courteous()`` leaves the interpreter to the serving thread.

A thread that wakes from a short sleep needs the GIL back; while another thread computes
in pure Python, it waits for the interpreter's forced switch (the default switch interval,
5 ms). Inside ``courteous()`` the computing thread pauses after every short slice, so the
waking thread gets the interpreter at once. Both cases run in the same test, so a busy
host slows them alike.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator

from limiter.courtesy import courteous

WAKES = 200


def busy(stop: threading.Event) -> None:
    def work(n: int) -> int:
        return sum(i * i for i in range(n))

    while not stop.is_set():
        work(200)


def oversleep_beside(wrap: Callable[[], contextlib.AbstractContextManager[None]]) -> float:
    """Median seconds a 1 ms sleep overruns while another thread computes inside ``wrap``."""
    stop = threading.Event()

    def run() -> None:
        with wrap():
            busy(stop)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        time.sleep(0.05)
        late = []
        for _ in range(WAKES):
            start = time.perf_counter()
            time.sleep(0.001)
            late.append(time.perf_counter() - start - 0.001)
        return statistics.median(late)
    finally:
        stop.set()
        thread.join(timeout=10)


@contextlib.contextmanager
def plain() -> Iterator[None]:
    yield


def test_a_courteous_thread_leaves_the_interpreter_to_a_waking_one() -> None:
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    try:
        rude = oversleep_beside(plain)
        polite = oversleep_beside(courteous)
    finally:
        sys.setswitchinterval(interval)
    assert rude > 0.002, f"a busy thread should delay a wake by about the switch interval: {rude}"
    assert polite < rude / 3, (polite, rude)


def test_courteous_restores_the_previous_profile_hook() -> None:
    def hook(frame: object, event: str, arg: object) -> None:
        pass

    sys.setprofile(hook)
    try:
        with courteous():
            assert sys.getprofile() is not hook
        assert sys.getprofile() is hook
    finally:
        sys.setprofile(None)
