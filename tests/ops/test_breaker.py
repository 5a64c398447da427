"""Circuit breakers: triggers, half-open probes, modes, partitions, health probes."""

from __future__ import annotations

import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from limiter.errors import ConfigError, InvalidParameter
from limiter.ops.breaker import (
    BreakerConfig,
    Breakers,
    CircuitBreaker,
    Mode,
    State,
    grpc_health_probe,
    http_health_probe,
)
from limiter.ops.policy import OpsConfig
from limiter.schema import load


def breakers_config(section):
    """The ``breakers:`` section of a config file."""
    return load(OpsConfig, {"breakers": section}, "rules.yaml").breakers


def breaker(clock, events=None, **kw):
    cfg = BreakerConfig(**{"window": 10, "buckets": 10, "minimum_calls": 10, **kw})
    on_change = (lambda e, f: events.append((e, f))) if events is not None else None
    return CircuitBreaker("db", cfg, clock=clock, on_change=on_change)


def test_failure_ratio_needs_minimum_volume(clock):
    events = []
    b = breaker(clock, events, failure_ratio=0.5)
    for _ in range(4):
        b.record(failed=True)
    assert b.state is State.CLOSED  # 4 failures, but only 4 calls: below minimum_calls
    for _ in range(5):
        b.record(failed=False)
    b.record(failed=True)  # 5/10
    assert b.state is State.OPEN and not b.allow()
    assert events[0][0] == "breaker_opened" and "failure ratio 5/10" in events[0][1]["reason"]
    assert events[0][1]["counts"] == {"calls": 10, "failures": 5, "slow": 0}


def test_open_for_elapsed_while_another_thread_moves_the_breaker(clock):
    """The move to half-open is another thread's right now: this call is refused as while
    open, without waiting or asking again and again (it recursed until RecursionError)."""
    b = breaker(clock, consecutive_failures=1)
    b.record(failed=True)
    clock.advance(b.config.open_for + 1)
    with b._transition:  # held by the other thread
        assert b.allow() is False
    assert b.state is State.OPEN and b.allow() is True and b.state is State.HALF_OPEN


def test_window_is_time_based(clock):
    b = breaker(clock, failure_ratio=0.5)
    for _ in range(9):
        b.record(failed=True)
    clock.advance(10.5)  # those failures slid out of the window
    for _ in range(9):
        b.record(failed=False)
    b.record(failed=True)
    assert b.state is State.CLOSED
    assert b.snapshot()["calls"] == 10


def test_slow_calls_and_consecutive_failures(clock):
    b = breaker(clock, failure_ratio=0, slow_call_ratio=0.5, slow_call_duration=0.2)
    for i in range(10):
        b.record(0.3 if i % 2 else 0.01)
    assert b.state is State.OPEN
    c = breaker(clock, failure_ratio=0, consecutive_failures=3)
    c.record(failed=True)
    c.record(failed=True)
    c.record(failed=False)
    c.record(failed=True)
    c.record(failed=True)
    assert c.state is State.CLOSED
    c.record(failed=True)
    assert c.state is State.OPEN


def test_half_open_lets_n_probes_through(clock):
    events = []
    b = breaker(clock, events, consecutive_failures=1, open_for=5, half_open_probes=3)
    b.record(failed=True)
    assert not b.allow() and b.retry_after() == pytest.approx(5)
    clock.advance(5)
    assert [b.allow() for _ in range(5)] == [True, True, True, False, False]
    assert b.state is State.HALF_OPEN
    b.record(failed=False)
    b.record(failed=False)
    assert b.state is State.HALF_OPEN
    b.record(failed=False)
    assert b.state is State.CLOSED and b.allow()
    assert [e for e, _ in events] == ["breaker_opened", "breaker_half_open", "breaker_closed"]


def test_half_open_failure_reopens(clock):
    b = breaker(clock, consecutive_failures=1, open_for=5, half_open_probes=2)
    b.record(failed=True)
    clock.advance(5)
    assert b.allow()
    b.record(failed=True)
    assert b.state is State.OPEN and not b.allow()
    clock.advance(5)
    assert b.allow() and b.state is State.HALF_OPEN


def test_outcome_classification(clock):
    b = breaker(clock, consecutive_failures=2, failure_status=[503], ignore_status=[429])
    b.record(status=503)
    b.record(status=429)  # ignored: does not reset the streak
    assert b.state is State.CLOSED
    b.record(status=503)
    assert b.state is State.OPEN
    assert b.classify(status=200) == "success" and b.classify(status=429) == "ignore"
    c = breaker(clock, consecutive_failures=1, failure_status=[503])
    c.record(status=503, failed=False)  # failed wins over the status
    c.record()  # neither: a success
    assert c.state is State.CLOSED


def test_modes(clock):
    forced_open = breaker(clock, consecutive_failures=1, mode=Mode.FORCED_OPEN)
    assert not forced_open.allow()
    forced_closed = breaker(clock, consecutive_failures=1, mode="forced_closed")
    forced_closed.record(failed=True)
    assert forced_closed.allow() and forced_closed.state is State.CLOSED
    assert forced_closed.snapshot()["calls"] == 1  # counted, never tripped
    disabled = breaker(clock, consecutive_failures=1, mode="disabled")
    disabled.record(failed=True)
    assert disabled.allow() and disabled.snapshot()["calls"] == 0
    metrics_only = breaker(clock, consecutive_failures=1, mode="metrics_only")
    metrics_only.record(failed=True)
    # Reports open, still lets calls pass.
    assert metrics_only.state is State.OPEN and metrics_only.allow()
    metrics_only.reset()
    assert metrics_only.state is State.CLOSED


def test_partitions_are_independent_and_switches_force_them(clock):
    forced = {}
    events = []
    cfg = breakers_config({"default": {"consecutive_failures": 2}, "shards": {"open_for": 1}})
    reg = Breakers(
        cfg, clock=clock, override=forced.get, on_change=lambda e, f: events.append(f["breaker"])
    )
    bad, good = reg.get("shards", "7"), reg.get("shards", "8")
    bad.record(failed=True)
    bad.record(failed=True)
    assert not bad.allow() and good.allow()
    assert events == ["shards/7"]
    assert reg.get("shards", "7") is bad and reg.peek("shards", "8") is good
    assert bad.config.open_for == 1 and bad.config.consecutive_failures == 2
    forced["shards"] = "force_open"  # a switch on the dependency covers every partition
    assert not good.allow()
    forced["shards/8"] = "force_closed"  # a partition switch is more specific
    assert good.allow()
    del forced["shards"], forced["shards/8"]
    clock.advance(1)
    assert bad.allow()
    assert [s["name"] for s in reg.snapshot()] == ["shards/7", "shards/8"]
    with pytest.raises(InvalidParameter):
        reg.get("a/b")


def test_partition_cap_drops_closed_ones(clock):
    reg = Breakers(
        {"default": BreakerConfig(max_partitions=3, consecutive_failures=1)}, clock=clock
    )
    reg.get("d", "0").record(failed=True)
    for i in range(1, 6):
        reg.get("d", str(i))
    names = {b.name for b in reg.all()}
    assert len(names) == 3 and "d/0" in names  # the open one is kept


def test_hot_path_never_waits_for_a_transition(clock):
    b = breaker(clock, consecutive_failures=1)
    b._transition.acquire()  # another thread is mid-transition
    done = threading.Event()

    def caller():
        for _ in range(100):
            b.allow()
            b.record(failed=True)
        done.set()

    threading.Thread(target=caller, daemon=True).start()
    assert done.wait(2.0), "allow()/record() blocked on the transition lock"
    b._transition.release()
    b.record(failed=True)
    assert b.state is State.OPEN


def test_many_threads_keep_counts_consistent(clock):
    b = breaker(clock, failure_ratio=0, consecutive_failures=0, buckets=1)

    def worker():
        for _ in range(5000):
            if b.allow():
                b.record(failed=False)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Lock-free counting may lose an update under a rare thread switch; never gains.
    assert 19_000 <= b.snapshot()["calls"] <= 20_000


class Health(BaseHTTPRequestHandler):
    healthy = False

    def do_GET(self):
        self.send_response(200 if Health.healthy else 503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_http_health_probe_closes_without_user_calls(clock):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/health"
        events = []
        b = breaker(
            clock, events, consecutive_failures=1, open_for=2, health=url, health_interval=1
        )
        b.record(failed=True)
        assert b.probe() is None  # open_for not elapsed
        clock.advance(2)
        assert not b.allow()  # with a probe, user calls are not used as probes
        Health.healthy = False
        assert b.probe() is False and b.state is State.OPEN
        assert b.probe() is None  # health_interval not elapsed
        clock.advance(1)
        Health.healthy = True
        assert b.probe() is True and b.state is State.CLOSED and b.allow()
        assert events[-1][1]["reason"] == "health probe passed"
    finally:
        server.shutdown()
        server.server_close()
    assert http_health_probe(url, timeout=0.5)() is False  # server gone


def test_grpc_health_probe():
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        probe = grpc_health_probe(f"127.0.0.1:{port}", "db", timeout=1)
        servicer.set("db", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert probe() is False
        servicer.set("db", health_pb2.HealthCheckResponse.SERVING)
        assert probe() is True
        reg = Breakers(
            breakers_config(
                {
                    "db": {
                        "health": f"grpc://127.0.0.1:{port}/db",
                        "consecutive_failures": 1,
                        "open_for": 0,
                    }
                }
            )
        )
        b = reg.get("db")
        b.record(failed=True)
        assert b.state is State.OPEN
        assert reg.run_probes() == 1 and b.state is State.CLOSED
    finally:
        server.stop(0)


def test_config_errors():
    cfg = breakers_config({"default": {"open_for": 2, "ignore_status": [429]}, "db": {}})
    assert cfg["db"].open_for == 2 and cfg["db"].ignore_status == (429,)
    for section, match in (
        ({"db": {"failure_ratio": 2}}, r"rules.yaml: breakers\.db\.failure_ratio: must be a"),
        ({"db": {"buckets": 0}}, "buckets"),
        ({"db": {"bogus": 1}}, "unknown field 'bogus'"),
        ({"db": {"health": "ftp://x"}}, "health"),
        ({"db": {"mode": "sideways"}}, "mode: 'sideways' is not one of normal, disabled"),
        ({"a/b": {}}, "without '/'"),
        ({"db": {"failure_status": ["500"]}}, r"failure_status\[0\]: must be an integer"),
        ([1], "breakers: must be a mapping"),
    ):
        with pytest.raises(ConfigError, match=match):
            breakers_config(section)


def test_minimum_volume_reached_by_a_success_still_trips(clock):
    b = breaker(clock, failure_ratio=0.5, minimum_calls=10)
    for _ in range(5):
        b.record(failed=True)
    for _ in range(4):
        b.record(failed=False)
    assert b.state is State.CLOSED
    b.record(failed=False)  # 10th call, 5/10 failed
    assert b.state is State.OPEN
