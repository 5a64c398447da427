"""A short demo of the engine (what `make serve` runs until the service lands)."""

from limiter import FixedWindow, TokenBucket


def main() -> None:
    tb = TokenBucket(rate=5.0, burst=3)
    for i in range(5):
        print("token bucket", i, tb.acquire("alice"))
    fw = FixedWindow(limit=2, period=1.0)
    for i in range(3):
        print("fixed window", i, fw.acquire("bob"))


if __name__ == "__main__":
    main()
