"""Errors a brain reports about a job's agent spec, shared by the registry and the brains."""

from __future__ import annotations


class PluginConfigError(ValueError):
    """A job's agent spec cannot be turned into a brain: unknown brain or bad config.

    ``field`` names the offending field as a path from the job, e.g. ``agent.brain`` or
    ``agent.config.turns[2].usage.input_tokens``, so SubmitJob can report it as an
    ``INVALID_ARGUMENT`` field violation and the executor as a failed job's detail.
    """

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


class UnknownBrainError(PluginConfigError):
    """No brain is registered under the requested name."""
