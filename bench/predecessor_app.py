"""The predecessor's backend, rebuilt for comparison: FastAPI + redis.asyncio.

``GET /api/jobs/{job_id}/status`` does what the FastAPI backend this project replaces did on a
page reload: three sequential Redis GETs (state, budget_pct, wake_at) through a pooled
``redis.asyncio`` client injected with ``Depends(get_redis)``, answered as a Pydantic model.

``GET /api/jobs/{job_id}/events`` is its event feed: each connection opens its own Redis pub/sub
subscription on ``job:{job_id}:events`` and forwards every message as a Server-Sent Events
``data:`` line. No event ids, no replay: what is published while a client is not subscribed is
gone.

Run (from the repo root): ``BENCH_REDIS_URL=redis://127.0.0.1:PORT/0 uvicorn
bench.predecessor_app:app --workers 1``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from redis.asyncio import Redis

KEY_PREFIX = "cofounder:agent"


class JobStatusResponse(BaseModel):
    """The JSON the predecessor returned for a page reload."""

    state: str | None
    budget_pct: int | None
    wake_at: str | None


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open one pooled client for the process, as the predecessor's app factory did."""
    url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    # 64 status requests in flight each hold a connection for their three GETs: redis-py 8's
    # default cap of 100 is enough. Every SSE watcher holds a pub/sub connection for its whole
    # life, so the fan-out benchmark raises the cap (BENCH_MAX_CONNECTIONS) for the design to be
    # measurable at all past 100 watchers.
    limit = int(os.environ.get("BENCH_MAX_CONNECTIONS", "100"))
    client = Redis.from_url(url, decode_responses=True, max_connections=limit)
    app.state.redis = client
    try:
        yield
    finally:
        await client.aclose()


app = FastAPI(title="predecessor backend (status endpoint and SSE feed)", lifespan=lifespan)


def get_redis(request: Request) -> Redis:
    """The shared client (the predecessor's ``app.db.redis.get_redis`` dependency)."""
    client: Redis = request.app.state.redis
    return client


@app.get("/api/jobs/{job_id}/status")
async def job_status(job_id: str, redis: Annotated[Redis, Depends(get_redis)]) -> JobStatusResponse:
    """Three sequential GETs, one round trip each, exactly as the predecessor did them."""
    state = await redis.get(f"{KEY_PREFIX}:{job_id}:state")
    budget_pct = await redis.get(f"{KEY_PREFIX}:{job_id}:budget_pct")
    wake_at = await redis.get(f"{KEY_PREFIX}:{job_id}:wake_at")
    return JobStatusResponse(
        state=_text(state),
        budget_pct=int(budget_pct) if budget_pct is not None else None,
        wake_at=_text(wake_at),
    )


def _text(value: bytes | str | None) -> str | None:
    """GET's value as text; the client decodes responses, this only narrows the type."""
    return value.decode() if isinstance(value, bytes) else value


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
