"""Helpers shared by the test packages: deadlines and the external-service switches."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
RPC_TIMEOUT = 10.0

EXTERNAL_REDIS = os.environ.get("COFOUNDER_TEST_REDIS_URL", "")
EXTERNAL_DATABASE = os.environ.get("COFOUNDER_TEST_DATABASE_URL", "")


async def eventually(
    probe: Callable[[], Awaitable[T]], accept: Callable[[T], bool], *, within: float = 10.0
) -> T:
    """Poll ``probe`` until ``accept`` holds for its result; fail with the last result at the deadline."""
    deadline = time.monotonic() + within
    while True:
        result = await probe()
        if accept(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s; last result: {result!r}")
        await asyncio.sleep(0.005)
