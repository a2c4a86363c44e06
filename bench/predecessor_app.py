"""The predecessor's status endpoint, rebuilt for comparison: FastAPI + redis.asyncio.

``GET /api/jobs/{job_id}/status`` does what the FastAPI backend this project replaces did on a
page reload: three sequential Redis GETs (state, budget_pct, wake_at) through a pooled
``redis.asyncio`` client injected with ``Depends(get_redis)``, answered as a Pydantic model.

Run (from the repo root): ``BENCH_REDIS_URL=redis://127.0.0.1:PORT/0 uvicorn
bench.predecessor_app:app --workers 1``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Request
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
    # 64 requests in flight each hold a connection for their three GETs; redis-py 8 caps a
    # pool at 100 by default, which is enough, so the cap is spelt out only to make that visible.
    client = Redis.from_url(url, decode_responses=True, max_connections=100)
    app.state.redis = client
    try:
        yield
    finally:
        await client.aclose()


app = FastAPI(title="predecessor status endpoint", lifespan=lifespan)


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
