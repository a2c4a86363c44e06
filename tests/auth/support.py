"""Credentials and helpers shared by the auth tests."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import job_pb2


def new_token() -> str:
    """A fresh random bearer token."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Caller:
    """A configured principal and the token it calls with."""

    principal: str
    role: str
    token: str

    def metadata(self, on_behalf_of: str | None = None) -> tuple[tuple[str, str], ...]:
        """Call metadata: the bearer token, and the end user for a service."""
        entries = [("authorization", f"Bearer {self.token}")]
        if on_behalf_of is not None:
            entries.append(("cofounder-on-behalf-of", on_behalf_of))
        return tuple(entries)


ALICE = Caller("alice", "user", new_token())
BOB = Caller("bob", "user", new_token())
BILLING = Caller("billing-backend", "service", new_token())
ONCALL = Caller("oncall", "operator", new_token())
CALLERS = (ALICE, BOB, BILLING, ONCALL)
"""The session server's principals: two users, a service and an operator (tokens made per run)."""


def principals_toml(callers: Iterable[Caller], certificates: Iterable[tuple[str, str, str]] = ()) -> str:
    """The principals file for ``callers`` plus ``(common_name, principal, role)`` certificate entries."""
    lines = []
    for caller in callers:
        digest = hashlib.sha256(caller.token.encode()).hexdigest()
        lines += [
            "[[tokens]]",
            f'sha256 = "{digest}"',
            f'principal = "{caller.principal}"',
            f'role = "{caller.role}"',
        ]
    for common_name, principal, role in certificates:
        lines += [
            "[[certificates]]",
            f'common_name = "{common_name}"',
            f'principal = "{principal}"',
            f'role = "{role}"',
        ]
    return "\n".join(lines) + "\n"


def write_principals(
    path: Path, callers: Iterable[Caller], certificates: Iterable[tuple[str, str, str]] = ()
) -> Path:
    """Write the principals file atomically (a reload never sees half a file)."""
    staging = path.with_suffix(".tmp")
    staging.write_text(principals_toml(callers, certificates))
    staging.replace(path)
    return path


class FakeMonotonic:
    """A monotonic clock for the rate limiter that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move forward by ``seconds``."""
        self.now += seconds


@dataclass(frozen=True)
class Failure:
    """What a failed call told the caller."""

    code: grpc.StatusCode
    message: str
    reason: str | None
    retry_delay: float | None
    quota_subjects: tuple[str, ...]
    field_violations: tuple[str, ...]
    resource: tuple[str, str] | None


def failure_of(error: grpc.aio.AioRpcError) -> Failure:
    """Decode the status and rich details of ``error``."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    reason = retry = resource = None
    subjects: list[str] = []
    fields: list[str] = []
    for detail in status.details if status else ():
        info = error_details_pb2.ErrorInfo()
        retry_info = error_details_pb2.RetryInfo()
        quota = error_details_pb2.QuotaFailure()
        bad = error_details_pb2.BadRequest()
        resource_info = error_details_pb2.ResourceInfo()
        if detail.Unpack(info):
            reason = info.reason
        elif detail.Unpack(retry_info):
            retry = retry_info.retry_delay.ToTimedelta().total_seconds()
        elif detail.Unpack(quota):
            subjects += [v.subject for v in quota.violations]
        elif detail.Unpack(bad):
            fields += [v.field for v in bad.field_violations]
        elif detail.Unpack(resource_info):
            resource = (resource_info.resource_type, resource_info.resource_name)
    return Failure(
        error.code(), error.details() or "", reason, retry, tuple(subjects), tuple(fields), resource
    )


SCRIPTED: dict[str, Any] = {"brain": "scripted", "config": {"turns": [{"text": "done"}]}}
"""A valid agent spec (as the client library takes it): a scripted brain with one turn."""


def submit_request(project_id: str, request_id: str = "") -> pb.SubmitJobRequest:
    """A valid SubmitJob request."""
    request = pb.SubmitJobRequest(
        request_id=request_id,
        project_id=project_id,
        goal="Ship it",
        daily_budget_microdollars=1_000_000,
        agent=job_pb2.AgentSpec(brain="scripted"),
    )
    request.agent.config.update(SCRIPTED["config"])
    return request
