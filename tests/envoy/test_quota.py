"""Quota allocation for RLQS (limiter.quota): property tests of the split of one global
limit across the Envoy instances that report a bucket, and of its Envoy token buckets."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from limiter import quota
from limiter.errors import InvalidParameter

limits = st.floats(0, 1e6, allow_nan=False)
rates = st.floats(0, 1e6, allow_nan=False)
demand_maps = st.dictionaries(st.text(min_size=1, max_size=4), rates | st.none(), max_size=12)
reserves = st.floats(0, 0.5)


def within(total: float, limit: float) -> bool:
    return total <= limit * (1 + 1e-9) + 1e-9


@given(limits, demand_maps, reserves)
def test_the_grants_never_sum_above_the_limit_and_leave_nothing_unused(limit, demands, reserve):  # type: ignore[no-untyped-def]
    grants = quota.allocate(limit, demands, reserve)
    assert set(grants) == set(demands)
    assert all(g >= 0 for g in grants.values())
    assert within(math.fsum(grants.values()), limit)
    if demands:
        assert math.fsum(grants.values()) == pytest.approx(limit, rel=1e-9, abs=1e-9)


@given(limits, demand_maps, reserves)
def test_an_instance_asking_at_most_an_equal_share_gets_all_it_asks(limit, demands, reserve):  # type: ignore[no-untyped-def]
    grants = quota.allocate(limit, demands, reserve)
    for name, demand in demands.items():
        if demand is not None and demand <= limit / len(demands):
            assert grants[name] >= demand * (1 - 1e-12)


@given(limits, demand_maps, reserves)
def test_an_instance_asking_less_than_another_never_gets_more(limit, demands, reserve):  # type: ignore[no-untyped-def]
    grants = quota.allocate(limit, demands, reserve)
    known = {k: d for k, d in demands.items() if d is not None}
    for a, da in known.items():
        for b, db in known.items():
            if da <= db:
                assert grants[a] <= grants[b] * (1 + 1e-12) + 1e-12


@given(limits, rates | st.none(), st.integers(1, 12), demand_maps, reserves)
def test_equal_demands_get_equal_shares(limit, demand, copies, others, reserve):  # type: ignore[no-untyped-def]
    demands = {**others, **{f"same-{i}": demand for i in range(copies)}}
    grants = quota.allocate(limit, demands, reserve)
    assert len({grants[f"same-{i}"] for i in range(copies)}) == 1


@given(limits, demand_maps, reserves)
def test_a_newcomer_gets_at_least_an_equal_share_and_so_its_reserve(limit, demands, reserve):  # type: ignore[no-untyped-def]
    demands = {**demands, "newcomer": None}
    grants = quota.allocate(limit, demands, reserve)
    n = len(demands)
    assert grants["newcomer"] >= limit / n * (1 - 1e-12)
    assert grants["newcomer"] >= reserve * limit / n * (1 - 1e-12)


@given(limits, demand_maps, reserves)
def test_an_idle_instance_keeps_its_reserve(limit, demands, reserve):  # type: ignore[no-untyped-def]
    demands = {**demands, "idle": 0.0}
    grants = quota.allocate(limit, demands, reserve)
    assert grants["idle"] >= reserve * limit / len(demands) * (1 - 1e-12)


def test_uneven_demand_three_to_one() -> None:
    # Under the limit: each gets its demand and the spare is split evenly.
    assert quota.allocate(100, {"a": 60, "b": 20}) == {"a": 70, "b": 30}
    # Over it: the light instance (under its equal share) is served in full.
    assert quota.allocate(100, {"a": 120, "b": 40}) == {"a": 60, "b": 40}
    # Both over their equal share: equal split.
    assert quota.allocate(100, {"a": 300, "b": 100}) == {"a": 50, "b": 50}


@given(st.floats(0.001, 1e6), st.sampled_from([1, 60, 3600, 86400]), demand_maps, reserves)
def test_token_buckets_stay_within_the_limit(limit, window, demands, reserve):  # type: ignore[no-untyped-def]
    seconds = quota.fill_seconds(limit, window)
    assert 1 <= seconds <= max(1, min(window, quota.MAX_FILL_SECONDS))
    buckets = [
        quota.token_bucket(g, seconds) for g in quota.allocate(limit, demands, reserve).values()
    ]
    tokens = sum(b.tokens_per_fill for b in buckets if b is not None)
    assert tokens <= limit * seconds * (1 + 1e-9)
    for bucket in buckets:
        if bucket is not None:
            assert bucket.max_tokens == bucket.tokens_per_fill >= 1
            assert bucket.fill_seconds == seconds


@given(rates, st.integers(1, 3600))
def test_a_token_bucket_never_admits_more_than_its_grant(grant, seconds):  # type: ignore[no-untyped-def]
    bucket = quota.token_bucket(grant, seconds)
    if grant * seconds < 1:
        assert bucket is None
    else:
        assert bucket is not None
        assert bucket.tokens_per_fill / seconds <= grant
        assert bucket.tokens_per_fill / seconds > grant - 1 / seconds


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


operations = st.lists(
    st.one_of(
        st.tuples(st.just("report"), st.sampled_from("abcde"), st.integers(0, 10_000),
                  st.integers(0, 10_000)),
        st.tuples(st.just("disconnect"), st.sampled_from("abcde")),
        st.tuples(st.just("release"), st.sampled_from("abcde")),
        st.tuples(st.just("limit"), st.floats(0, 5_000)),
        st.tuples(st.just("wait"), st.floats(0, 40)),
    ),
    max_size=40,
)  # fmt: skip


@given(operations, reserves)
def test_pool_grants_stay_within_the_limit_through_any_sequence(ops, reserve):  # type: ignore[no-untyped-def]
    clock = Clock()
    pool = quota.QuotaPool(1000, reserve=reserve, ttl=20, clock=clock)
    held: dict[str, tuple[float, float]] = {}  # ended streams: (grant, lease end)
    for op, *args in ops:
        before = pool.grants()
        if op == "report":
            changed = pool.report(*args)
            assert args[0] in changed
            held.pop(args[0], None)
        elif op == "disconnect":
            changed = pool.disconnect(args[0])
            if args[0] in before and args[0] not in held:
                held[args[0]] = (before[args[0]], math.inf)
        elif op == "release":
            changed = pool.release(args[0])
            held.pop(args[0], None)
        elif op == "limit":
            changed = pool.set_limit(args[0])
        else:
            clock.now += args[0]
            changed = {}
        grants = pool.grants()
        for name, grant in changed.items():
            assert grants[name] == grant
        # An ended stream's grant never changes (Envoy keeps it), and is gone after its lease.
        for name, (grant, _) in list(held.items()):
            if name in grants:
                assert grants[name] == grant
                assert name not in changed
            else:
                del held[name]
        live = math.fsum(g for n, g in grants.items() if n not in held)
        still_held = math.fsum(g for n, g in grants.items() if n in held)
        assert within(live, max(pool.limit - still_held, 0.0))


def test_an_ended_stream_keeps_its_grant_until_its_lease_runs_out() -> None:
    clock = Clock()
    pool = quota.QuotaPool(100, reserve=0, ttl=20, clock=clock)
    pool.report("a", 0, 0)
    pool.report("b", 0, 0)
    clock.now = 5
    assert pool.report("a", 500, 0) == {"a": 50}
    assert pool.grants() == {"a": 50, "b": 50}
    clock.now = 10
    assert pool.disconnect("b") == {}
    assert pool.report("a", 500, 0) == {"a": 50}  # b's 50 is still enforced by its Envoy
    clock.now = 31  # b's lease was sent at 0 and lasted 20 s
    assert pool.report("a", 500, 0) == {"a": 100}
    assert pool.grants() == {"a": 100}


def test_demand_is_measured_over_at_least_the_minimum_interval() -> None:
    clock = Clock()
    pool = quota.QuotaPool(100, reserve=0, clock=clock)
    pool.report("a", 1, 0)
    pool.report("b", 1, 0)
    clock.now = 0.01  # a report right after the first: too short to be a rate
    assert pool.report("a", 5, 0) == {"a": 50}
    clock.now = quota.MIN_INTERVAL
    pool.report("a", 5, 0)  # 10 requests over MIN_INTERVAL
    # a wants 10/s, b (not measured) an equal 50; the spare 40 is split evenly.
    assert pool.grants() == pytest.approx({"a": 10 / quota.MIN_INTERVAL + 20, "b": 70})


def test_a_pool_keeps_one_fill_interval_per_limit() -> None:
    pool = quota.QuotaPool(600 / 60, window=60, clock=Clock())
    assert pool.fill_seconds == quota.fill_seconds(10, 60) == 10
    pool.set_limit(1000)
    assert pool.fill_seconds == 1
    assert pool.set_limit(5e-324) == {} and pool.fill_seconds == 60  # no overflow
    assert quota.fill_seconds(0, 86400) == quota.MAX_FILL_SECONDS
    with pytest.raises(InvalidParameter, match="window"):
        quota.QuotaPool(1, window=0)


def test_a_limit_change_regrants_every_live_instance() -> None:
    clock = Clock()
    pool = quota.QuotaPool(100, reserve=0, clock=clock)
    pool.report("a", 0, 0)
    pool.report("b", 0, 0)
    clock.now = 5  # the interval is the pool's own, whatever Envoy says it was
    pool.report("a", 500, 100)  # denied requests are demand too
    pool.report("b", 200, 0)
    assert pool.grants() == {"a": 60, "b": 40}
    assert pool.set_limit(50) == {"a": 25, "b": 25}
    assert pool.set_limit(200) == {"a": 140, "b": 60}


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: quota.allocate(-1, {}), "limit"),
        (lambda: quota.allocate(10, {"a": 1}, reserve=1), "reserve"),
        (lambda: quota.allocate(10, {"a": -1.0}), "demand of 'a'"),
        (lambda: quota.fair_shares(math.nan, {}), "capacity"),
        (lambda: quota.fair_shares(1, {"x": -1}), "want of 'x'"),
        (lambda: quota.fill_seconds(10, 0), "window"),
        (lambda: quota.token_bucket(1, 0), "fill interval"),
        (lambda: quota.token_bucket(math.inf, 1), "grant"),
        (lambda: quota.QuotaPool(-5), "limit"),
        (lambda: quota.QuotaPool(5, ttl=0), "ttl"),
        (lambda: quota.QuotaPool(5).report("a", -1, 0), "allowed"),
        (lambda: quota.QuotaPool(5).report("a", 0, 2.5), "denied"),
        (lambda: quota.QuotaPool(5).set_limit(math.inf), "limit"),
    ],
)
def test_bad_input_names_the_field(call, field) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidParameter, match=field):
        call()


def test_a_pool_refuses_instances_beyond_its_bound() -> None:
    pool = quota.QuotaPool(10, max_instances=2, clock=Clock())
    pool.report("a", 0, 0)
    pool.report("b", 0, 0)
    with pytest.raises(InvalidParameter, match="max_instances=2"):
        pool.report("c", 0, 0)
    pool.report("a", 1, 0)  # a known instance still reports


def remote_view(pools: dict[str, quota.QuotaPool], me: str) -> tuple[dict, float]:
    """What the shared store answers ``me``: the other pools' live demands and held grants."""
    demands: dict[str, float | None] = {}
    held = 0.0
    for name, pool in pools.items():
        if name == me:
            continue
        for entry in pool.entries():
            if entry.held is None:
                demands[f"{name}/{entry.name}"] = entry.demand
            else:
                held += entry.held
    return demands, held


def sync(pools: dict[str, quota.QuotaPool]) -> None:
    for name, pool in pools.items():
        pool.set_remote(*remote_view(pools, name))


def replicas(limit: float, clock: Clock, n: int = 2, **kw: float) -> dict[str, quota.QuotaPool]:
    return {f"r{i}": quota.QuotaPool(limit, ttl=20, clock=clock, **kw) for i in range(n)}


def test_replicas_split_one_limit_over_all_their_instances() -> None:
    """Two replicas, one Envoy each, asking 3:1 over a limit of 40/s: after one exchange
    each replica grants its own Envoy its max-min share of the whole limit."""
    clock = Clock()
    pools = replicas(40, clock, reserve=0)
    pools["r0"].report("a", 0, 0)
    pools["r1"].report("b", 0, 0)
    sync(pools)
    assert pools["r0"].grants()["a"] + pools["r1"].grants()["b"] == pytest.approx(40)
    clock.now = 5
    pools["r0"].report("a", 225, 0)  # 45/s
    pools["r1"].report("b", 75, 0)  # 15/s
    sync(pools)
    sync(pools)  # the second replica saw the first one's new demand in the first round
    assert pools["r0"].grants() == pytest.approx({"a": 25})
    assert pools["r1"].grants() == pytest.approx({"b": 15})


def test_a_replica_cut_off_from_the_store_keeps_its_share() -> None:
    clock = Clock()
    pools = replicas(40, clock, reserve=0)
    pools["r0"].report("a", 0, 0)
    pools["r1"].report("b", 0, 0)
    clock.now = 5
    pools["r0"].report("a", 225, 0)
    pools["r1"].report("b", 75, 0)
    sync(pools)
    sync(pools)
    # The store is away: each keeps what it had; a newcomer shares its replica's part only.
    assert pools["r0"].isolate() == {}
    assert pools["r0"].isolate() == {}  # again: no change
    pools["r0"].report("c", 0, 0)
    r0 = pools["r0"].grants()
    assert math.fsum(r0.values()) == pytest.approx(25)
    assert pools["r1"].isolate() == {}
    assert pools["r1"].grants() == pytest.approx({"b": 15})
    sync(pools)  # back: one split over all three again
    sync(pools)
    total = math.fsum(pools["r0"].grants().values()) + math.fsum(pools["r1"].grants().values())
    assert total == pytest.approx(40)


def test_an_ended_stream_on_another_replica_holds_its_grant() -> None:
    clock = Clock()
    pools = replicas(100, clock, reserve=0)
    pools["r0"].report("a", 0, 0)
    pools["r1"].report("b", 0, 0)
    sync(pools)
    clock.now = 5
    pools["r1"].disconnect("b")
    sync(pools)
    assert pools["r0"].grants() == pytest.approx({"a": 50})  # b's 50 is still enforced
    clock.now = 21  # b's lease (sent at 0, 20 s) is over
    sync(pools)
    assert pools["r0"].grants() == pytest.approx({"a": 100})


replica_operations = st.lists(
    st.one_of(
        st.tuples(st.just("report"), st.sampled_from(["r0", "r1", "r2"]),
                  st.sampled_from("abcd"), st.integers(0, 10_000)),
        st.tuples(st.just("disconnect"), st.sampled_from(["r0", "r1", "r2"]),
                  st.sampled_from("abcd")),
        st.tuples(st.just("isolate"), st.sampled_from(["r0", "r1", "r2"])),
        st.tuples(st.just("wait"), st.floats(0, 30)),
    ),
    max_size=40,
)  # fmt: skip


@given(replica_operations, reserves)
def test_replicas_in_step_never_grant_more_than_the_limit(ops, reserve):  # type: ignore[no-untyped-def]
    """Whatever happened, once every replica has seen the others (two rounds of exchange),
    the live grants of all replicas sum to at most the limit less what ended streams hold;
    a replica cut off meanwhile keeps within what it had."""
    clock = Clock()
    pools = replicas(1000, clock, n=3, reserve=reserve)
    for op, *args in ops:
        if op == "report":
            pools[args[0]].report(args[1], args[2], 0)
        elif op == "disconnect":
            pools[args[0]].disconnect(args[1])
        elif op == "isolate":
            pools[args[0]].isolate()
        else:
            clock.now += args[0]
        sync(pools)
        sync(pools)
        live = held = 0.0
        for pool in pools.values():
            for entry in pool.entries():
                if entry.held is None:
                    live += pool.grants()[entry.name]
                else:
                    held += entry.held
        assert within(live, max(1000 - held, 0.0))
