"""On a server that runs agents, a bad agent config is refused at SubmitJob, before any agent
starts, and a valid one still runs to completion."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import job_pb2
from tests.support import RPC_TIMEOUT

from .support import finished, submit, turn


async def test_a_bad_config_never_becomes_a_failing_job(stub, project_id) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await submit(stub, project_id, {"turns": "oops"})

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(caught.value)
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert any(detail.Unpack(bad) for detail in status.details)
    assert [v.field for v in bad.field_violations] == ["agent.config.turns"]
    listed = await stub.ListJobs(pb.ListJobsRequest(project_id=project_id), timeout=RPC_TIMEOUT)
    assert list(listed.jobs) == []


async def test_a_valid_config_still_runs(stub, project_id) -> None:
    job = await submit(stub, project_id, {"turns": [turn("Thinking."), turn("Done.")], "loop": False})

    done = await finished(stub, job.job_id)

    assert done.status == job_pb2.JOB_STATUS_READY
    assert done.outcome == job_pb2.JOB_OUTCOME_COMPLETED
