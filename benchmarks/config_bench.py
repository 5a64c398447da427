"""How long loading a large rules file takes: YAML, then limiter's validation.

    python benchmarks/config_bench.py [--rules 2000] [--baseline DIR]   # writes results/config.md

Generates one domain of ``--rules`` rules (fixed window, token bucket, sliding window and
adaptive in turn) and reports, best of ``--repeat`` runs, the time of parsing the YAML
with the loader the checkout's ``limiter.config`` uses, and of validating the parsed
documents into rules. With ``--baseline DIR`` (another built checkout) it measures that
checkout's ``limiter.config`` too, in the same run, each in its own interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from machine import cpu_model, git_revision

MEASURE = """
import json, sys, time
root, n, repeat = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sys.path.insert(0, root)
import yaml
from limiter import config
algorithms = ["fixed_window", "token_bucket", "sliding_window", "adaptive"]
lines = ["domain: bench", "descriptors:"]
for i in range(n):
    lines.append(f"  - key: k{i}\\n    value: v{i}\\n    rate_limit: {{name: r{i}, unit: second, "
                 f"requests_per_unit: {100 + i}, algorithm: {algorithms[i % 4]}}}")
text = "\\n".join(lines)

def best(fn):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)

# The loader each checkout's limiter.config uses (libyaml's C loader where it has one).
loader = getattr(config, "LOADER", yaml.SafeLoader)
yaml_s = best(lambda: list(yaml.load_all(text, Loader=loader)))
(doc,) = yaml.load_all(text, Loader=loader)
# The validation of parsed YAML alone (the step both versions have under this name).
validate_s = best(lambda: config._parse_document(config.Config(), doc, "bench"))
assert len(config.parse(text).rules) == n
print(json.dumps({"module": config.__file__, "loader": loader.__name__, "yaml_s": yaml_s,
                  "validate_s": validate_s}))
"""


def measure(root: Path, rules: int, repeat: int) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(root), str(rules), str(repeat)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rules", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--baseline", type=Path, help="another built checkout to compare")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "config.md"))
    args = parser.parse_args()
    roots = {f"this checkout ({git_revision()})": Path(__file__).resolve().parents[1]}
    if args.baseline:
        roots[f"baseline {args.baseline}"] = args.baseline.resolve()
    rows = ["| checkout | YAML loader | YAML | validation |", "|---|---|---|---|"]
    for name, root in roots.items():
        r = measure(root, args.rules, args.repeat)
        rows.append(
            f"| {name} | {r['loader']} | {r['yaml_s'] * 1e3:.1f} ms "
            f"| {r['validate_s'] * 1e3:.1f} ms |"
        )
        print(rows[-1], flush=True)
    load = os.getloadavg()
    text = [
        "# Config loading: a large rules file",
        "",
        f"`python benchmarks/config_bench.py --rules {args.rules}"
        f"{f' --baseline {args.baseline}' if args.baseline else ''}` on {cpu_model()}, "
        f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load "
        f"average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (other jobs shared "
        "the machine).",
        "",
        f"One domain of {args.rules} rules (fixed window, token bucket, sliding window, adaptive",
        f"in turn); best of {args.repeat} runs of each step, each checkout in its own interpreter.",
        "",
        *rows,
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(text))


if __name__ == "__main__":
    main()
