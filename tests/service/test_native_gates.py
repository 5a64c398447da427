"""One native Decide request with many checks: the operations policy's per-rule verdict is
asked once per rule and priority (``Decider._gate``), and every check still gets its own
rule's switch, limit override, tier cut and per-client checks."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest
from limiter.server import v1
from limiter.server.app import Service, Settings

from limiter import config as rules
from limiter.ops.switches import Switch
from tests.support import RedisServer

CONFIG = """
domain: web
descriptors:
  - key: a
    rate_limit: {unit: hour, requests_per_unit: 100, name: a}
  - key: b
    rate_limit: {unit: hour, requests_per_unit: 100, name: b}
"""
OK, OVER, UNKNOWN = v1.Result.OK, v1.Result.OVER_LIMIT, v1.Result.UNKNOWN_RULE
BACKEND_ERROR = v1.Result.BACKEND_ERROR
SHEDDABLE, CRITICAL = v1.Priority.Value("SHEDDABLE"), v1.Priority.Value("CRITICAL")


def _service(tmp_path: Path) -> Service:
    path = tmp_path / "rules.yaml"
    path.write_text(CONFIG)
    return Service(Settings(config=str(path), grpc_port=0, http_port=0), rules.load(str(path)))


async def _decide(service: Service, checks: list[tuple[str, str, int]]) -> list[tuple[bool, int]]:
    request = v1.DecideRequest(
        checks=[v1.Check(domain="web", rule=r, key=k, priority=p) for r, k, p in checks]
    )
    answer = await service.native.decide(request)
    return [(r.allowed, r.code) for r in answer.results]


def _switch(service: Service, target: str, **fields: object) -> None:
    service.ops.switches.put(
        Switch(id=target, who="test", why="test", created_at=time.time(), **fields)
    )


async def _each_rule_of_a_request_gets_its_own_switch(tmp_path: Path) -> None:
    service = _service(tmp_path)
    _switch(service, "rule:web/a", action="force_deny")
    _switch(service, "rule:web/b", action="override", limit=2)
    checks = [("a", "u", 0), ("b", "u", 0), ("nope", "u", 0), ("b", "u", 0), ("a", "v", 0)]
    checks += [("b", "u", 0)]
    assert await _decide(service, checks) == [
        (False, OVER), (True, OK), (True, UNKNOWN), (True, OK), (False, OVER), (False, OVER),
    ]  # fmt: skip
    _switch(service, "rule:web/b", action="shadow")
    service.ops.switches.delete("rule:web/a", "test", "done")
    assert await _decide(service, [("a", "w", 0), ("b", "u", 0)]) == [(True, OK), (True, OK)]


async def _priorities_in_one_request_are_shed_by_their_own_tier(tmp_path: Path) -> None:
    service = _service(tmp_path)
    _switch(service, "level:default", level=1)
    checks = [("a", "u", SHEDDABLE), ("a", "u", CRITICAL), ("a", "v", SHEDDABLE), ("a", "v", 0)]
    assert await _decide(service, checks) == [(False, OVER), (True, OK), (False, OVER), (True, OK)]


async def _every_check_still_asks_about_its_own_client(tmp_path: Path) -> None:
    """Under pressure (the rule is throttling) the top-client shedder is asked per check:
    a client with most of the rule's traffic is cut, the others are not."""
    service = _service(tmp_path)
    ops = service.ops
    for _ in range(200):  # make the rule throttle (refusals), then one heavy client
        ops.record("web/a", False, 1)
    assert ops.throttle.is_throttling("web/a")
    heavy = [("a", "hog", 0)] * 300
    answers = await _decide(service, [*heavy, ("a", "light", 0)])
    assert (False, OVER) in answers[:300] and answers[-1] == (True, OK)


MIXED = """
domain: web
descriptors:
  - key: tb
    rate_limit: {unit: hour, requests_per_unit: 5, algorithm: token_bucket, name: tb}
  - key: fw
    rate_limit: {unit: hour, requests_per_unit: 4, name: fw}
  - key: sw
    rate_limit: {unit: hour, requests_per_unit: 4, algorithm: sliding_window, name: sw}
  - key: sh
    shadow_mode: true
    rate_limit: {unit: hour, requests_per_unit: 2, name: sh}
  - key: free
    rate_limit: {unlimited: true, name: free}
"""


async def _runs_answer_and_count_like_single_checks(
    tmp_path: Path, redis: list[str | None]
) -> None:
    """The checks of one rule in a request go to its kernel (or as one backend batch),
    client sketch and counters together: answers, rule counters, throttle tallies and top
    clients must equal deciding each check in a request of its own. ``redis``: each
    service's backend (None: in memory)."""
    path = tmp_path / "mixed.yaml"
    path.write_text(MIXED)
    services = [
        Service(
            Settings(config=str(path), grpc_port=0, http_port=0, redis=url),
            rules.load(str(path)),
        )
        for url in redis
    ]
    rng = random.Random(5)
    names = ["tb", "tb", "tb", "fw", "fw", "sw", "sh", "free", "nope"]
    checks = []
    for _ in range(30):  # runs of 1 to 12 checks of one rule and priority
        rule, priority = rng.choice(names), rng.choice([0, 0, CRITICAL, SHEDDABLE])
        checks += [
            v1.Check(
                domain="web",
                rule=rule,
                key=rng.choice(["u1", "u2"]),
                cost=rng.choice([0, 1, 1, 2, 9]),  # 9: beyond every burst
                priority=priority,
            )
            for _ in range(rng.randint(1, 12))
        ]
    request = v1.DecideRequest(checks=checks)
    # Then long runs alone in a request (on Redis, one backend batch each), shadow and
    # refused checks among them.
    runs = [v1.Check(domain="web", rule=rule, key="u9") for rule in ("sh", "tb") for _ in range(10)]
    got, want = [], []
    for req in (request, v1.DecideRequest(checks=runs)):
        answer = await services[0].native.decide(req)
        got += [(r.allowed, r.code, r.limit, r.remaining) for r in answer.results]
        for check in req.checks:  # the reference: each check in a request of its own
            (r,) = (await services[1].native.decide(v1.DecideRequest(checks=[check]))).results
            want.append((r.allowed, r.code, r.limit, r.remaining))
    assert got == want
    assert got[-20:] == [
        (True, OK, 2, 1),
        *[(True, OK, 2, 0)] * 9,
        *[(True, OK, 5, n) for n in range(4, -1, -1)],
        *[(False, OVER, 5, 0)] * 5,
    ]
    assert {code for _, code, _, _ in got} == {OK, OVER, UNKNOWN}
    stats = [
        {name: vars(state.stats) for name, state in s.rulebook.snapshot.by_name.items()}
        for s in services
    ]
    assert stats[0] == stats[1]
    assert stats[0][("web", "sh")]["shadow_mode"] > 0
    assert stats[0][("web", "tb")]["near_limit"] > 0
    ops = [s.ops for s in services]
    # The throttle tallies decay with time, and the reference service decided later: on
    # a loaded host the decayed values part in the third digit.
    tops = [ops[i].throttle.top() for i in (0, 1)]
    assert tops[0] != [] and len(tops[0]) == len(tops[1])
    for a, b in zip(*tops, strict=True):
        assert (a["rule"], a["throttling"]) == (b["rule"], b["throttling"])
        for field in ("over_limit", "total", "ratio"):
            assert a[field] == pytest.approx(b[field], rel=0.01), (a, b)
    assert ops[0].clients.top() == ops[1].clients.top() != []


# The service binds gRPC to the running loop: each scenario builds it inside one.
def test_each_rule_of_a_request_gets_its_own_switch(tmp_path: Path) -> None:
    asyncio.run(_each_rule_of_a_request_gets_its_own_switch(tmp_path))


def test_priorities_in_one_request_are_shed_by_their_own_tier(tmp_path: Path) -> None:
    asyncio.run(_priorities_in_one_request_are_shed_by_their_own_tier(tmp_path))


def test_every_check_still_asks_about_its_own_client(tmp_path: Path) -> None:
    asyncio.run(_every_check_still_asks_about_its_own_client(tmp_path))


def test_runs_answer_and_count_like_single_checks(tmp_path: Path) -> None:
    asyncio.run(_runs_answer_and_count_like_single_checks(tmp_path, [None, None]))


def test_runs_on_redis_answer_and_count_like_single_checks(tmp_path: Path, redis_url: str) -> None:
    """The same on Redis: each service on its own database of one real redis-server."""
    databases = [redis_url.rsplit("/", 1)[0] + f"/{db}?timeout=1" for db in (0, 1)]
    asyncio.run(_runs_answer_and_count_like_single_checks(tmp_path, databases))


FAILING = """
domain: web
descriptors:
  - key: open
    rate_limit: {unit: hour, requests_per_unit: 100, name: open, failure_mode: allow}
  - key: closed
    rate_limit: {unit: hour, requests_per_unit: 100, name: closed, failure_mode: deny}
"""


async def _runs_on_a_dead_redis_answer_per_failure_mode(tmp_path: Path, redis: RedisServer) -> None:
    path = tmp_path / "failing.yaml"
    path.write_text(FAILING)
    service = Service(
        Settings(config=str(path), grpc_port=0, http_port=0, redis=f"{redis.url}?timeout=0.2"),
        rules.load(str(path)),
    )
    checks = [("open", "u", 0)] * 10 + [("closed", "u", 0)] * 10
    assert await _decide(service, checks) == [(True, OK)] * 20
    redis.kill()
    answers = await _decide(service, checks)
    assert answers == [(True, BACKEND_ERROR)] * 10 + [(False, BACKEND_ERROR)] * 10
    states = service.rulebook.snapshot.by_name
    # A request of one check takes the decider's short path: the same answers and counts.
    alone = [await _decide(service, [check]) for check in (("open", "v", 0), ("closed", "v", 0))]
    assert alone == [[(True, BACKEND_ERROR)], [(False, BACKEND_ERROR)]]
    assert states[("web", "open")].stats.backend_errors == 11
    assert states[("web", "closed")].stats.backend_errors == 11
    assert states[("web", "closed")].stats.over_limit == 11


def test_runs_on_a_dead_redis_answer_per_failure_mode(tmp_path: Path) -> None:
    """A run's backend batch fails: every check of it is answered per its rule's
    failure_mode, with code BACKEND_ERROR."""
    redis = RedisServer().start()
    try:
        asyncio.run(_runs_on_a_dead_redis_answer_per_failure_mode(tmp_path, redis))
    finally:
        redis.stop()
