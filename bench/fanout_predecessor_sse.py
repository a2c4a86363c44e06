"""The predecessor's event feed, rebuilt for comparison: FastAPI Server-Sent Events over Redis pub/sub.

``GET /api/jobs/{job_id}/events`` does what the FastAPI backend this project replaces did: each
connection opens its own Redis pub/sub subscription on ``job:{job_id}:events`` and forwards every
message as an SSE ``data:`` line. No event ids, no replay: what is published while a client is not
subscribed is gone.

Run (from the repo root): ``BENCH_REDIS_URL=redis://127.0.0.1:PORT/0 uvicorn
bench.fanout_predecessor_sse:app --workers 1``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.responses import StreamingResponse
from redis.asyncio import Redis


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """One pooled client for the process, as the predecessor's app factory did."""
    url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    # Every SSE connection holds a pub/sub connection from this pool for its whole life.
    # redis-py 8 caps a pool at 100 by default, which fails the 101st watcher; the cap is
    # raised so the design can be measured at all (BENCH_MAX_CONNECTIONS, default 10,000).
    limit = int(os.environ.get("BENCH_MAX_CONNECTIONS", "10000"))
    client = Redis.from_url(url, decode_responses=True, max_connections=limit)
    app.state.redis = client
    try:
        yield
    finally:
        await client.aclose()


app = FastAPI(title="predecessor SSE event feed", lifespan=lifespan)


def get_redis(request: Request) -> Redis:
    """The shared client (the predecessor's ``app.db.redis.get_redis`` dependency)."""
    client: Redis = request.app.state.redis
    return client


@app.get("/api/jobs/{job_id}/events")
async def job_events(job_id: str, redis: Annotated[Redis, Depends(get_redis)]) -> StreamingResponse:
    """Subscribe this connection to the job's channel and stream each message as SSE."""

    async def stream() -> AsyncIterator[str]:
        pubsub = redis.pubsub()
        await pubsub.subscribe(f"job:{job_id}:events")
        try:
            async for message in pubsub.listen():
                if message["type"] == "message":
                    yield f"data: {message['data']}\n\n"
        finally:
            await pubsub.aclose()

    return StreamingResponse(stream(), media_type="text/event-stream")
