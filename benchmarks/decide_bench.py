"""The decision path without gRPC: CPU per call of a codec and the decider, bytes in, bytes out.

``service_bench.py`` measures the served call, where the gRPC transport is most of the
cost and two runs of the same commits differ by several percent. This one calls the
servicers' byte-level entries (``RateLimitService.answer``, ``LimiterService.answer``)
in-process, on the service ``limiter serve`` builds (memory, or ``--redis URL`` with the
service's Redis options), for the shapes of ``service_bench.py``: RLS with one
descriptor, native Decide with 1 and 100 checks of one rule, and 100 checks over four
rules and priorities. Each (checkout, shape) is a fresh process that measures ``ROUNDS``
rounds of calls; checkouts are measured interleaved, ``--repeats`` times, and each number
is the least CPU time per call over all rounds (the one least disturbed by the rest of the
machine). Calls are sequential,
one at a time; on Redis each awaits its own round trip.

``--baseline DIR`` also measures another checkout (e.g. a git worktree of an older commit,
built with ``python setup.py build_ext --inplace``): its limiter package and its
``server/`` as ``limiter.server``, as ``service_bench.py --baseline`` runs it.
Run: ``.venv/bin/python benchmarks/decide_bench.py [--baseline DIR] [--redis auto|URL]``.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"rls": 20_000, "x1": 20_000, "x100": 2_000, "mixed": 1_000}  # calls per round
ROUNDS = 5  # per process; the least CPU per call of them is its number


def child(root: Path, shape: str, redis: str | None) -> None:
    """Measure one shape on ``root``'s service; prints CPU µs per call."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import checkout

    checkout.use(str(root))
    sys.path.insert(0, str(ROOT))  # this checkout's benchmarks (limiter is imported already)
    from limiter.server.app import Service, Settings

    from benchmarks.service_bench import CONFIG, mixed_requests, native_requests, rls_requests
    from limiter.config import load

    async def run() -> float:
        path = Path(tempfile.mkdtemp(prefix="limiter-decide-")) / "rules.yaml"
        path.write_text(CONFIG)
        settings = Settings(config=str(path), redis=redis)
        service = Service(settings, load(str(path)))
        native = service.native
        # The byte-level entry: ``answer`` now, ``_decide`` before the decider.
        decide = getattr(native, "answer", None) or native._decide
        if shape == "rls":
            requests = [r.SerializeToString() for r in rls_requests()]

            def call(b: bytes) -> Any:
                return service.rls.answer(b)
        else:
            made = {"x1": lambda: native_requests(1), "x100": lambda: native_requests(100),
                    "mixed": lambda: mixed_requests(100)}[shape]()  # fmt: skip
            requests = [r.SerializeToString() for r in made]

            def call(b: bytes) -> Any:
                return decide(b, None)

        n = SHAPES[shape]
        for i in range(n // 4):  # warm: keys in the tables, code paths taken
            await call(requests[i % len(requests)])
        least = float("inf")
        for _ in range(ROUNDS):
            start = time.process_time()
            for i in range(n):
                await call(requests[i % len(requests)])
            least = min(least, (time.process_time() - start) / n)
        return least

    from limiter.backends.idle_loop import new_event_loop

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        print(f"{runner.run(run()) * 1e6:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, help="another checkout to measure alike")
    parser.add_argument(
        "--redis", help="measure on Redis instead of in memory: a URL, or 'auto' (start one)"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), args.child[1], args.redis)
        return 0
    redis_server = None
    if args.redis == "auto":
        sys.path.insert(0, str(ROOT))
        from tests.support import RedisServer

        redis_server = RedisServer().start()
        args.redis = redis_server.url
    try:
        return compare(args)
    finally:
        if redis_server is not None:
            redis_server.stop()


def compare(args: argparse.Namespace) -> int:
    roots = {"this checkout": ROOT}
    if args.baseline:
        roots["baseline"] = args.baseline.resolve()
    shapes = args.shapes.split(",")
    best: dict[tuple[str, str], float] = {}
    for repeat in range(args.repeats):
        for shape in shapes:
            for name, root in roots.items():
                command = [sys.executable, __file__, "--child", str(root), shape]
                if args.redis:
                    command += ["--redis", args.redis]
                done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
                if done.returncode != 0:
                    print(done.stdout + done.stderr, file=sys.stderr)
                    return 1
                value = float(done.stdout.split()[-1])
                best[(shape, name)] = min(best.get((shape, name), value), value)
                print(f"[{repeat + 1}/{args.repeats}] {shape:6} {name:14} {value:8.1f} µs/call")
    store = f"Redis ({args.redis})" if args.redis else "memory"
    runs = f"least of {args.repeats} interleaved runs x {ROUNDS} rounds"
    print(f"\nCPU µs per call, {runs}, {store}:\n")
    print("| shape | " + " | ".join(roots) + (" | ratio |" if args.baseline else " |"))
    print("|---|" + "---:|" * (len(roots) + (1 if args.baseline else 0)))
    for shape in shapes:
        row = [f"{best[(shape, name)]:.1f}" for name in roots]
        if args.baseline:
            row.append(f"{best[(shape, 'this checkout')] / best[(shape, 'baseline')]:.2f}")
        print(f"| {shape} | " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
