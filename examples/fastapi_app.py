"""An embedded FastAPI app: limiter in-process as ASGI middleware, no service needed.

    pip install fastapi uvicorn
    python examples/fastapi_app.py            # serves http://127.0.0.1:8000
    curl -i http://127.0.0.1:8000/articles/1  # RateLimit headers; 429 past the limit

Each client IP gets a token bucket (5/s, bursts of 10); the whole app sits behind
an adaptive concurrency limit that follows its latency, and the article endpoint
drops its comments when the degradation level says the backend is under pressure.
"""

from __future__ import annotations

import argparse
import asyncio

from fastapi import FastAPI, Request
from limiter.clients.asgi import RateLimitMiddleware
from limiter.clients.keys import client_ip

from limiter import AdaptiveLimiter, TokenBucket

adaptive = AdaptiveLimiter(target_latency=0.05, percentile=0.9, mode="concurrency", max_limit=64)


def level() -> int:
    """0 while the adaptive limit is roomy, 1 once it has been cut below 8 in flight."""
    return 1 if adaptive.current_limit < 8 else 0


app = FastAPI()


@app.get("/articles/{article_id}")
async def article(article_id: int, request: Request) -> dict:
    await asyncio.sleep(0.005)  # the "database"
    body = {"id": article_id, "title": f"Article {article_id}"}
    if request.scope["limiter.level"] == 0:  # degrade: skip the secondary feature
        body["comments"] = ["first!", "nice article"]
    return body


@app.get("/healthz")
async def healthz() -> dict:
    return {"ok": True}


# Outermost first: the per-client bucket rejects floods before they take a slot of
# the adaptive limit. Behind one trusted proxy, use client_ip("X-Forwarded-For").
app.add_middleware(
    RateLimitMiddleware, limiter=adaptive, key=lambda r: "app", level=level, policy="adaptive"
)
app.add_middleware(
    RateLimitMiddleware,
    limiter=TokenBucket(rate=5.0, burst=10),
    key=client_ip(),
    policy="per-ip",
    exempt={"/healthz"},
)

if __name__ == "__main__":
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    # proxy_headers=False: the middleware, not uvicorn, decides whom to trust.
    uvicorn.run(app, host="127.0.0.1", port=args.port, proxy_headers=False, log_level="warning")
