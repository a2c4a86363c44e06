"""Helpers of the tests of the brains on a provider's SDK (``anthropic``, ``openai``)."""

from __future__ import annotations

import pytest

from cofounder_server.executor.plugins import Brain, BrainError, Message
from standins.model_api import ModelApiStandIn

GOAL = Message(role="user", text="Build the landing page")


async def turn_error(brain: Brain) -> BrainError:
    """The error a turn of ``brain`` on :data:`GOAL` raises (the test fails if none)."""
    with pytest.raises(BrainError) as caught:
        await brain.think([GOAL], [])
    return caught.value


def assert_failed_once(
    error: BrainError, expected: tuple[bool, str], *, status: int, api_key: str, standin: ModelApiStandIn
) -> None:
    """``error`` says whether to retry and its signature as ``expected``, names ``status``
    but not the key, and came of one request: the executor retries, not the SDK."""
    assert (error.retryable, error.signature) == expected
    assert str(status) in str(error)
    assert api_key not in str(error)
    assert len(standin.requests) == 1
